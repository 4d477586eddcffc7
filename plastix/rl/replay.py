r"""A uniform replay buffer as a pytree: a ring over a fixed capacity.

The buffer is plain arrays (a leading axis of `capacity` on every leaf of the
stored transition), a write position and a fill count, so it lives inside the
agent's state: it is vmapped over seeds, sharded over devices, checkpointed and
restored like the parameters, and every operation is a pure function that runs
inside ``lax.scan``.

Why our own and not ``flashbax``: the agent adds one vector of transitions
(one per environment) per step and samples uniformly, which is ~20 lines of
``dynamic_update_slice`` and ``randint``; owning it keeps the state a
`flax.struct` dataclass we can vmap, shard and test directly (that a sample
only ever returns written entries), with no dependency whose state layout
changes between releases.

Writes go to positions ``(position + i) % capacity`` for the i-th transition
of a batch; once full, the oldest entries are overwritten first. `sample`
draws ``batch_size`` indices uniformly with replacement from the
``size = min(written, capacity)`` filled entries.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class Buffer:
  """``data``: the stored pytree, leading axis ``capacity``; ``position``: the next
  write index; ``size``: how many entries hold data (at most ``capacity``)."""
  data: Any
  position: jax.Array
  size: jax.Array

  @property
  def capacity(self) -> int:
    return jax.tree.leaves(self.data)[0].shape[0]


def init(capacity: int, example) -> Buffer:
  """An empty buffer of `capacity` entries shaped like `example` (one transition)."""
  if capacity < 1:
    raise ValueError(f"buffer_size: must be >= 1 (got {capacity})")
  data = jax.tree.map(lambda x: jnp.zeros((capacity,) + jnp.shape(x), jnp.asarray(x).dtype),
                      example)
  return Buffer(data=data, position=jnp.zeros([], jnp.int32), size=jnp.zeros([], jnp.int32))


def add(buffer: Buffer, batch) -> Buffer:
  """Writes a batch of transitions (leading axis n <= capacity) at the ring's position."""
  capacity = buffer.capacity
  n = jax.tree.leaves(batch)[0].shape[0]
  if n > capacity:
    raise ValueError(f"buffer_size: {capacity} is smaller than one step's {n} transitions")
  index = (buffer.position + jnp.arange(n)) % capacity
  data = jax.tree.map(lambda d, b: d.at[index].set(b.astype(d.dtype)), buffer.data, batch)
  return Buffer(data=data, position=(buffer.position + n) % capacity,
                size=jnp.minimum(buffer.size + n, capacity))


def sample(buffer: Buffer, key: jax.Array, batch_size: int):
  """``batch_size`` transitions drawn uniformly, with replacement, from the filled entries.

  On an empty buffer every index is 0 (the zeros it was created with); the
  agent never samples before ``learning_starts`` transitions are written.
  """
  index = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buffer.size, 1))
  return jax.tree.map(lambda d: d[index], buffer.data)
