"""Spreading the seed axis over devices with JAX's own sharding.

The engine's programs are ``jit(vmap(...))`` over a leading seed axis. Placing
the seed-batched state with a `NamedSharding` over a one-axis `Mesh` of all
devices makes XLA partition that axis: each device trains its share of the
seeds, with no change to the engine. On one device this is a no-op, so the
same code runs on a laptop CPU, 8 GPUs or a TPU slice.

In a multi-process job each process holds only its devices' runs:
`process_rows` says which, `local_rows` copies them to the host without any
communication, and `from_local_rows` builds the global arrays back from every
process's rows (for checkpoints).
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

SEED_AXIS = "seeds"


def seed_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A one-dimensional mesh named ``seeds`` over `devices` (default: all devices)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (SEED_AXIS,))


def seed_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (run) axis split over the mesh's devices, other axes whole."""
  return NamedSharding(mesh, PartitionSpec(SEED_AXIS))


def check_divisible(num_runs: int, mesh: Mesh) -> None:
  """Raises ValueError unless the runs (seeds x grid points) split evenly over the mesh."""
  if num_runs % mesh.size:
    raise ValueError(f"{num_runs} runs (seeds x grid points) do not split evenly over "
                     f"{mesh.size} devices; use a multiple of {mesh.size}")


def _place(tree, sharding: NamedSharding):
  """`jax.device_put`, or, on a mesh spanning several processes, a global array
  built from the (identical) host value held by every process."""
  if sharding.is_fully_addressable:
    return jax.device_put(tree, sharding)

  def place_leaf(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(place_leaf, jax.device_get(tree))


def shard_seeds(tree, mesh: Mesh):
  """Places every leaf of `tree` split along its leading (seed) axis over `mesh`."""
  return _place(tree, seed_sharding(mesh))


def replicate(tree, mesh: Mesh):
  """Places a full copy of every leaf of `tree` on each device of `mesh`."""
  return _place(tree, NamedSharding(mesh, PartitionSpec()))


def process_rows(num_rows: int, mesh: Mesh | None) -> np.ndarray:
  """Indices, in order, of the leading-axis rows (runs) that this process's
  devices hold when an array of `num_rows` rows is placed by `shard_seeds` on
  `mesh`; every row without a mesh."""
  if mesh is None:
    return np.arange(num_rows)
  index_map = seed_sharding(mesh).addressable_devices_indices_map((num_rows,))
  return np.asarray(sorted({r for index in index_map.values()
                            for r in range(*index[0].indices(num_rows))}), np.int64)


def local_rows(tree, rows: np.ndarray):
  """Numpy copies of rows `rows` of every leaf's leading axis, read only from
  the shards this process holds (no communication); `rows` from `process_rows`."""
  position = {int(r): i for i, r in enumerate(rows)}

  def fetch(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(jax.device_get(x))[rows]
    out = np.empty((len(rows),) + x.shape[1:], x.dtype)
    filled = np.zeros(len(rows), bool)
    for shard in x.addressable_shards:
      lead, *rest = shard.index
      if any(s.indices(n) != (0, n, 1) for s, n in zip(rest, x.shape[1:])):
        raise ValueError(f"an array of shape {x.shape} is split along an axis other "
                         f"than the runs: {shard.index}")
      data = np.asarray(shard.data)
      for j, r in enumerate(range(*lead.indices(x.shape[0]))):
        if r in position:
          out[position[r]] = data[j]
          filled[position[r]] = True
    if not filled.all():
      raise ValueError(f"this process holds no copy of rows {rows[~filled].tolist()}")
    return out

  return jax.tree.map(fetch, tree)


def from_local_rows(tree, rows: np.ndarray, num_rows: int, mesh: Mesh):
  """The inverse of `local_rows`: global arrays of `num_rows` rows placed by
  `shard_seeds` on `mesh`, each process giving the rows `rows` it holds."""
  position = {int(r): i for i, r in enumerate(rows)}
  placement = seed_sharding(mesh)

  def place(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(
        (num_rows,) + x.shape[1:], placement,
        lambda index: x[[position[r] for r in range(*index[0].indices(num_rows))]][
            (slice(None),) + tuple(index[1:])])

  return jax.tree.map(place, tree)
