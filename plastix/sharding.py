"""Spreading the seed axis over devices with JAX's own sharding.

The engine's programs are ``jit(vmap(...))`` over a leading seed axis. Placing
the seed-batched state with a `NamedSharding` over a one-axis `Mesh` of all
devices makes XLA partition that axis: each device trains its share of the
seeds, with no change to the engine. On one device this is a no-op, so the
same code runs on a laptop CPU, 8 GPUs or a TPU slice.

Any number of runs trains on any number of devices: runs that do not split
evenly are padded to the next multiple of the devices with copies of the last
run (`pad_runs`), which train alongside the others and are dropped before
anything is reported (`unpad`), so 3 seeds on 4 devices give the metrics of 3
seeds on one device.

On a CPU, XLA splits each operation of one program over the cores, which for
an MLP's small operations is slower than training each core's share of the
runs as a separate device: `cpu_device_count` says how many devices to
split a host into for a given number of runs, and `use_cpu_devices` does it
(before JAX's first operation).

The devices of one process run their programs on a single shared pool of
``max(cores, devices)`` threads (XLA's CPU client). An operation that blocks
its pool thread until work it queued on the same pool is done deadlocks the
process as soon as every pool thread does so at once, which devices running
the same program in lockstep do: jaxlib 0.10's batched LAPACK kernels (SVD,
eigendecomposition, ...) are such operations, so the engine's programs call
LAPACK one matrix at a time (`plastix.probes.one_matrix_per_call`), and a
chunk that stalls anyway ends the job with one line (`plastix.watchdog`).

In a multi-process job each process holds only its devices' runs:
`process_rows` says which, `local_rows` copies them to the host without any
communication, and `from_local_rows` builds the global arrays back from every
process's rows (for checkpoints).
"""

from __future__ import annotations

import os
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

SEED_AXIS = "seeds"
# `cpu_device_count` makes at most this many devices per core before falling
# back to fewer devices than cores (measured on 2 cores: 4 devices per core ran
# about 11% slower than one per core, yet faster than one for the whole host).
MAX_DEVICES_PER_CORE = 4
_FORCED_DEVICES = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


def host_cores() -> int:
  """The CPU cores this process may run on (its affinity mask where the OS has one)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # macOS, Windows
    return os.cpu_count() or 1


def cpu_device_count(num_runs: int, cores: int, parallel_runs: int = 0,
                     max_devices: int | None = None) -> int:
  """How many CPU devices to split a host of `cores` cores into, for `num_runs`
  runs sharded over them.

  A program per device, each training ``num_runs / n`` of the runs, runs
  faster than one program whose every small matrix product and elementwise
  operation XLA splits over the cores (the devices' programs run concurrently
  on XLA's CPU threads). Measured with the default
  workload's MLPs on a 2-core CPU, against one device: 8 seeds on 2 devices
  1.25x faster at width 256 and 1.47x at width 32, on 4 and 8 devices 1.16x
  and 1.11x (width 256); 3 seeds on 3 devices 1.25x (see README, "Speed and
  scale"). Not for every model: a small CNN, 3 seeds on 3 devices, ran 2.3x
  slower than on one device in one A/B (`plastix.from_config.cpu_devices` splits only an
  MLP's host); other core counts are not measured.

  The count is the smallest divisor n of the runs with ``cores <= n <=
  MAX_DEVICES_PER_CORE * cores`` (every core busy), else the largest divisor
  up to `cores`. With runs in rows of `parallel_runs` (``0 < parallel_runs <
  num_runs``) n divides the rows too; it is at most `max_devices` (each device
  holds its own copy of the training data).
  """
  if num_runs < 1 or cores < 1:
    raise ValueError(f"need at least one run and one core (got {num_runs} runs, "
                     f"{cores} cores)")
  rows = parallel_runs if 0 < parallel_runs < num_runs else num_runs
  limit = num_runs if max_devices is None else max(1, max_devices)
  divisors = [n for n in range(1, min(num_runs, limit) + 1)
              if num_runs % n == 0 and rows % n == 0]
  busy = [n for n in divisors if cores <= n <= MAX_DEVICES_PER_CORE * cores]
  return min(busy) if busy else max(n for n in divisors if n <= cores)


def forced_cpu_device_count() -> int | None:
  """The CPU device count already asked for, by ``JAX_NUM_CPU_DEVICES`` (JAX's
  ``jax_num_cpu_devices``) or ``--xla_force_host_platform_device_count`` in
  ``XLA_FLAGS``; None where neither is set."""
  if jax.config.jax_num_cpu_devices >= 0:
    return jax.config.jax_num_cpu_devices
  forced = _FORCED_DEVICES.findall(os.environ.get("XLA_FLAGS", ""))
  return int(forced[-1]) if forced else None


def use_cpu_devices(num_devices: int) -> None:
  """Makes JAX's CPU backend `num_devices` devices (``jax_num_cpu_devices``).

  Only the CPU backend changes (a GPU or TPU host keeps its accelerators as
  the default devices). Call it before JAX's first operation: once the
  backends are initialised, JAX raises a RuntimeError for a new count (and
  ignores the count they already have).
  """
  if num_devices < 1:
    raise ValueError(f"num_devices must be at least 1 (got {num_devices})")
  jax.config.update("jax_num_cpu_devices", num_devices)


def seed_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A one-dimensional mesh named ``seeds`` over `devices` (default: all devices)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (SEED_AXIS,))


def seed_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (run) axis split over the mesh's devices, other axes whole."""
  return NamedSharding(mesh, PartitionSpec(SEED_AXIS))


def padded_count(num_runs: int, multiple: int) -> int:
  """The rows `num_runs` runs take on `multiple` devices: the smallest multiple
  of the devices that holds them, ``ceil(num_runs / multiple) * multiple``."""
  if num_runs < 1 or multiple < 1:
    raise ValueError(f"need at least one run and one device (got {num_runs} runs, "
                     f"{multiple} devices)")
  return -(-num_runs // multiple) * multiple


def pad_runs(tree, multiple: int):
  """Pads the leading (run) axis of every leaf to `padded_count` rows with
  copies of its last row; ``(padded tree, number of real runs)``.

  Row ``r`` of the padded tree is row ``min(r, R - 1)`` of `tree` (R real
  runs): a padding row trains the last run again (same key, same
  hyperparameters), alongside the others and independently of them, so the
  real runs' results do not change; `unpad` drops the copies. Every leaf must
  have the same leading length R.
  """
  leaves = jax.tree.leaves(tree)
  lengths = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
  if len(lengths) != 1 or None in lengths:
    raise ValueError(f"every leaf needs the same leading run axis (lengths {lengths})")
  (num_real,) = lengths
  rows = np.minimum(np.arange(padded_count(num_real, multiple)), num_real - 1)
  if len(rows) == num_real:
    return tree, num_real
  return jax.tree.map(lambda x: x[rows], tree), num_real


def unpad(tree, num_real: int):
  """The first `num_real` rows of every leaf's leading axis: the real runs of
  a `pad_runs` tree."""
  return jax.tree.map(lambda x: x[:num_real], tree)


def fill_padding(tree, num_real: int, mesh: Mesh):
  """`tree` (leaves placed by `shard_seeds` on `mesh`) with every row past the
  first `num_real` replaced by a copy of row ``num_real - 1``, placed as
  before: restores `pad_runs`'s padding where it was lost (a checkpoint of
  another padded length restored zero-filled or cut short)."""
  placement = seed_sharding(mesh)

  def fill(x):
    rows = jnp.minimum(jnp.arange(x.shape[0]), num_real - 1)
    return x[rows]

  return jax.jit(lambda t: jax.tree.map(fill, t), out_shardings=placement)(tree)


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


def from_local_rows(tree, rows: np.ndarray, num_rows: int, mesh: Mesh,
                    num_real: int | None = None):
  """The inverse of `local_rows`: global arrays of `num_rows` rows placed by
  `shard_seeds` on `mesh`, each process giving the rows `rows` it holds.

  With `num_real` (runs padded by `pad_runs`), `rows` may leave out the
  padding rows ``num_real ..`` (which hold nothing anyone reads): they are
  zeros. Raises ValueError if a row this process's devices hold is missing.
  """
  position = {int(r): i for i, r in enumerate(rows)}
  placement = seed_sharding(mesh)
  num_real = num_rows if num_real is None else num_real

  def place(x):
    x = np.asarray(x)

    def block(index):
      wanted = list(range(*index[0].indices(num_rows)))
      missing = [r for r in wanted if r not in position and r < num_real]
      if missing:
        raise ValueError(f"rows {missing} are on this process's devices but not given")
      out = np.zeros((len(wanted),) + x.shape[1:], x.dtype)
      for j, r in enumerate(wanted):
        if r in position:
          out[j] = x[position[r]]
      return out[(slice(None),) + tuple(index[1:])]

    return jax.make_array_from_callback((num_rows,) + x.shape[1:], placement, block)

  return jax.tree.map(place, tree)
