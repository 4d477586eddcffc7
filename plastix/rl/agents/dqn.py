r"""Double DQN (van Hasselt et al., 2016) with a Huber loss (Mnih et al., 2015).

For a transition ``(s, a, r, s', d)`` (``d = 1`` when the game ended),

  a* = argmax_b Q_online(s', b)
  y  = r + gamma (1 - d) Q_target(s', a*)
  delta = Q_online(s, a) - y
  loss  = huber(delta) = delta^2 / 2            if |delta| <= kappa
                         kappa (|delta| - kappa / 2)  otherwise

with ``y`` held fixed (no gradient through the target). ``double=False`` uses
``a* = argmax_b Q_target(s', b)`` (the 2015 DQN target).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class DQN:
  """Double DQN: the head outputs one value per action."""
  num_actions: int
  double: bool = True
  huber_kappa: float = 1.0

  @property
  def num_outputs(self) -> int:
    return self.num_actions

  @property
  def uses_next_online(self) -> bool:
    """Whether `td_loss` reads the online network's outputs on the next states."""
    return self.double

  def q_values(self, outputs: jax.Array) -> jax.Array:
    return outputs

  def td_loss(self, outputs, next_online, next_target, batch, gamma):
    """``(huber(delta) [B], delta [B])`` for a batch of transitions (module docstring)."""
    q = jnp.take_along_axis(outputs, batch.action[:, None], axis=-1)[:, 0]
    chooser = next_online if self.double else next_target
    best = jnp.argmax(chooser, axis=-1)
    next_q = jnp.take_along_axis(next_target, best[:, None], axis=-1)[:, 0]
    target = jax.lax.stop_gradient(batch.reward + gamma * (1.0 - batch.terminated) * next_q)
    delta = q - target
    return optax.huber_loss(delta, delta=self.huber_kappa), delta
