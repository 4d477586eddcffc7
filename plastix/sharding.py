"""Spreading the seed axis over devices with JAX's own sharding.

The engine's programs are ``jit(vmap(...))`` over a leading seed axis. Placing
the seed-batched state with a `NamedSharding` over a one-axis `Mesh` of all
devices makes XLA partition that axis: each device trains its share of the
seeds, with no change to the engine. On one device this is a no-op, so the
same code runs on a laptop CPU, 8 GPUs or a TPU slice.
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
  return _place(tree, NamedSharding(mesh, PartitionSpec(SEED_AXIS)))


def replicate(tree, mesh: Mesh):
  """Places a full copy of every leaf of `tree` on each device of `mesh`."""
  return _place(tree, NamedSharding(mesh, PartitionSpec()))


def to_host(tree):
  """Numpy copies of every leaf, gathered from all processes when an array spans several."""

  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(fetch, tree)
