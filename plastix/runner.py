"""Runs every intervention of a config through the engine, seeds vmapped.

`run_intervention` is the host loop: it compiles `engine.run_tasks` once per
model structure, runs the tasks in equal chunks (so progress can be printed
between them without new compilations) and returns numpy metrics;
`run_intervention_share` is the same loop returning only this process's runs,
for multi-process jobs. A chunk whose program stops making progress ends the
process with one line on stderr (`plastix.watchdog`, ``config.stall_timeout_s``).

A progress line tells the seconds spent compiling (tracing, lowering and
XLA's compiling, read from JAX's monitoring events) from those training: ``[name] task 5/20  train_accuracy 0.785
intervention 1/4  8400 seed-steps/s  compile 2.1s  train 4.3s  ETA 1m05s``,
the ETA for the whole job (`JobProgress`) at the training pace so far.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from plastix import checkpointing
from plastix import engine
from plastix import from_config
from plastix import grid as grid_lib
from plastix import interventions
from plastix import results
from plastix import sharding
from plastix import watchdog


def chunk_length(num_tasks: int, tasks_per_chunk: int) -> int:
  """The largest divisor of `num_tasks` that is at most `tasks_per_chunk`.

  Equal chunks mean a single compiled program covers the whole run.
  """
  return max(d for d in range(1, min(num_tasks, tasks_per_chunk) + 1) if num_tasks % d == 0)


def _concat_tasks(parts):
  return jax.tree.map(lambda *p: np.concatenate(p, axis=1), *parts)


@dataclasses.dataclass
class JobProgress:
  """Where a job of several interventions stands, for its progress lines.

  `index` is the intervention being trained (0-based) of `num_interventions`,
  each of `num_tasks` tasks; `tasks_trained` and `train_s` count the tasks
  this process has trained so far in the job (resumed ones not) and their
  seconds, compiling not included, which give the pace of the ETA:

    eta = ((num_interventions - index) num_tasks - done) train_s / tasks_trained,

  `done` being the current intervention's finished tasks.
  """
  num_interventions: int = 1
  num_tasks: int = 0
  index: int = 0
  tasks_trained: int = 0
  train_s: float = 0.0

  def eta_s(self, done: int) -> float | None:
    """Seconds left in the job after `done` tasks of the current intervention
    (None before any task was trained)."""
    if not self.tasks_trained:
      return None
    left = (self.num_interventions - self.index) * self.num_tasks - done
    return max(0, left) * self.train_s / self.tasks_trained


def format_duration(seconds: float | None) -> str:
  """``"42s"``, ``"3m05s"``, ``"2h07m"``; ``"?"`` for None."""
  if seconds is None:
    return "?"
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Chunk(NamedTuple):
  """Metrics of tasks ``first_task .. first_task + T - 1`` for the runs `runs`
  this process holds (numpy, axes [run, task]); `resumed`: restored from a
  checkpoint rather than trained now."""
  metrics: engine.TaskMetrics
  runs: np.ndarray
  first_task: int
  resumed: bool


class RunShare(NamedTuple):
  """The runs one process trained: `metrics` rows are runs `runs` of the job's
  `num_runs` (seeds x grid points)."""
  runs: np.ndarray
  metrics: engine.TaskMetrics
  num_runs: int


def run_intervention(config: ml_collections.ConfigDict, name: str, data: engine.TrainData,
                     num_classes: int,
                     progress: Callable[[str], None] | None = None,
                     checkpoint_dir: str | None = None,
                     mesh: jax.sharding.Mesh | None = None,
                     **options) -> engine.TaskMetrics:
  """Trains every seed of `config` under intervention `name`, at every grid point.

  With `checkpoint_dir`, the state and metrics are saved after every chunk of
  tasks and a later call continues from the newest checkpoint there; the
  result is the same, bit for bit, as a run never interrupted. With `mesh`
  (see `plastix.sharding`), the runs are split over its devices and the data
  replicated.

  Every (grid point, seed) pair of `config.grid` (see `plastix.grid`) is one
  run of the same program; seed s uses the same key at every grid point.

  Returns `engine.TaskMetrics` as numpy arrays with leading axes [run, task],
  run ``g * num_seeds + s`` for grid point g and seed s (just [seed, task]
  without a grid). In a multi-process job, where each process holds only its
  share of the runs, use `run_intervention_share`; `options` are its
  keyword arguments `job`, `on_chunk` and `on_stall`.
  """
  share = run_intervention_share(config, name, data, num_classes, progress=progress,
                                 checkpoint_dir=checkpoint_dir, mesh=mesh, **options)
  if not np.array_equal(share.runs, np.arange(share.num_runs)):
    raise ValueError(f"this process holds runs {share.runs.tolist()} only; "
                     "use run_intervention_share in a multi-process job")
  return share.metrics


def run_intervention_share(config: ml_collections.ConfigDict, name: str,
                           data: engine.TrainData, num_classes: int,
                           progress: Callable[[str], None] | None = None,
                           checkpoint_dir: str | None = None,
                           mesh: jax.sharding.Mesh | None = None,
                           job: JobProgress | None = None,
                           on_chunk: Callable[[Chunk], None] | None = None,
                           on_stall: Callable[[str], None] | None = None) -> RunShare:
  """`run_intervention`, returning only the runs this process's devices trained.

  With a `mesh` spanning several processes, each process copies back only its
  own runs' metrics (no gather), and checkpoints hold the metrics as global
  arrays that each process writes its share of. With one process (or no
  mesh), the share is every run.

  `job` places this intervention in a job of several for the progress lines
  (and is updated with the tasks trained); `on_chunk` is called with each
  `Chunk` of this process's runs as it arrives (the restored tasks of a
  resume first); `on_stall` with the watchdog's line before a stalled chunk
  ends the process.
  """
  resolved = interventions.apply(config, name)
  spec = engine.with_log_every(
      from_config.engine_spec(resolved, num_classes, data.images.shape[1], data.image_shape),
      resolved.get("log_every_steps", 0))
  job = job if job is not None else JobProgress(num_tasks=resolved.num_tasks)
  points = grid_lib.points(resolved.get("grid", ""))
  hp = from_config.stack_hparams(
      [from_config.hparams(grid_lib.apply_point(resolved, p)) for p in points],
      repeats=resolved.num_seeds)
  chunk = chunk_length(resolved.num_tasks, resolved.tasks_per_chunk)
  keys = jnp.tile(from_config.seed_keys(resolved), (len(points), 1))
  num_runs = num_rows = keys.shape[0]
  if spec.parallel_runs >= num_runs:  # every run side by side, padding included
    spec = dataclasses.replace(spec, parallel_runs=0)
  run_chunk = functools.partial(engine.run_tasks, spec=spec, num_tasks=chunk)
  if mesh is not None:
    # Padded to a multiple of the devices with copies of the last run, trained
    # and dropped: `runs` are the real runs this process holds.
    (keys, hp), _ = sharding.pad_runs((keys, hp), mesh.size)
    num_rows = keys.shape[0]
    keys, data, hp = (sharding.shard_seeds(keys, mesh), sharding.replicate(data, mesh),
                      sharding.shard_seeds(hp, mesh))
  runs = sharding.process_rows(num_rows, mesh)
  runs = runs[runs < num_runs]
  states = engine.init_states(keys, data, hp, spec=spec)
  if mesh is not None:
    # init_states leaves its constant leaves (zero biases and moments, counts)
    # replicated, while a chunk returns every leaf split by runs: placed alike,
    # every chunk runs one compiled program (not a second one from the second on).
    states = _place_runs(states, sharding.seed_sharding(mesh))
  chunks, done = [], 0
  ckpt = checkpointing.Checkpointer(checkpoint_dir) if checkpoint_dir else None
  if ckpt is not None and ckpt.latest_tasks_done() is not None:
    done = ckpt.latest_tasks_done()
    if done > resolved.num_tasks or done % chunk:
      raise ValueError(f"checkpoint in {checkpoint_dir} has {done} tasks, which does "
                       f"not fit {resolved.num_tasks} tasks in chunks of {chunk}")
    _, chunk_metrics = jax.eval_shape(run_chunk, states, data, hp)

    def saved_like(m):  # `done` tasks of m: numpy, or global arrays placed like the runs.
      shape = (m.shape[0], done) + m.shape[2:]
      if mesh is None:
        return np.zeros(shape, m.dtype)
      return jax.ShapeDtypeStruct(shape, m.dtype, sharding=sharding.seed_sharding(mesh))

    # A checkpoint padded for another device count is cut or zero-filled to
    # this one's rows, then its padding made copies of the last run again.
    states, restored = ckpt.restore(done, states, jax.tree.map(saved_like, chunk_metrics),
                                    num_runs=None if mesh is None else num_runs)
    if num_rows > num_runs:
      states = sharding.fill_padding(states, num_runs, mesh)
    chunks.append(sharding.local_rows(restored, runs))
    if on_chunk is not None:
      on_chunk(Chunk(chunks[-1], runs, 0, True))
    if progress is not None:
      progress(f"[{name}] resumed from checkpoint after task {done}/{resolved.num_tasks}")
  timeout_s = float(resolved.get("stall_timeout_s", watchdog.DEFAULT_STALL_TIMEOUT_S))
  platform, num_devices = _devices(mesh)
  slowest = None  # The slowest chunk so far, compilation included (seconds).
  compile_s = train_s = 0.0  # This intervention's seconds compiling and training.
  on_stall_then_exit = None
  if on_stall is not None:
    on_stall_then_exit = lambda line: (on_stall(line), watchdog.exit_stalled(line))
  with watchdog.Watchdog(on_stall=on_stall_then_exit) as dog, CompileClock() as compiling:
    while done < resolved.num_tasks:
      tasks = f"task {done + 1}" if chunk == 1 else f"tasks {done + 1}-{done + chunk}"
      what = (f"[{name}] the program for {tasks} of {resolved.num_tasks} ({num_runs} runs "
              f"on {num_devices} {platform} device{'s' if num_devices > 1 else ''})")
      chunk_start = time.perf_counter()
      # Compiling (the first time), running and copying back: a wait the
      # watchdog ends if it stalls (see `plastix.watchdog`).
      with dog.watching(watchdog.chunk_limits(timeout_s, platform, slowest), what,
                        stall_advice(checkpoint_dir, platform, done)):
        compiled_before = compiling.seconds
        states, metrics = run_chunk(states, data, hp, first_task=done)
        # Over every run, computed where the runs are (every process takes part).
        accuracy = _mean_final_accuracy(metrics.train_accuracy, num_runs)
        chunks.append(sharding.local_rows(metrics, runs))
        accuracy = float(accuracy.addressable_data(0))
      now = time.perf_counter()
      slowest = max(slowest or 0.0, now - chunk_start)
      chunk_compile_s = min(compiling.seconds - compiled_before, now - chunk_start)
      chunk_train_s = now - chunk_start - chunk_compile_s
      logging.info("[%s] %s: %.2fs compiling, %.2fs training", name, tasks, chunk_compile_s,
                   chunk_train_s)
      compile_s += chunk_compile_s
      train_s += chunk_train_s
      job.tasks_trained += chunk
      job.train_s += chunk_train_s
      done += chunk
      if ckpt is not None:
        so_far = _concat_tasks(chunks)
        ckpt.save(done, states, so_far if mesh is None else
                  sharding.from_local_rows(so_far, runs, num_rows, mesh, num_real=num_runs))
      if on_chunk is not None:
        on_chunk(Chunk(chunks[-1], runs, done - chunk, False))
      if progress is not None:
        rate = chunk * spec.steps_per_task * num_runs / max(chunk_train_s, 1e-9)
        progress(f"[{name}] task {done}/{resolved.num_tasks}  train_accuracy "
                 f"{accuracy:.3f}  intervention {job.index + 1}/{job.num_interventions}  "
                 f"{rate:.0f} seed-steps/s  compile {compile_s:.1f}s  train {train_s:.1f}s  "
                 f"ETA {format_duration(job.eta_s(done))}")
  if ckpt is not None:
    ckpt.close()
  return RunShare(runs, _concat_tasks(chunks), num_runs)


def merge_over_processes(share: RunShare, folder: str, num_runs: int):
  """The whole job's metrics on process 0, None on the others.

  Every process writes its share to ``<folder>/process_<i>.npz``
  (`results.write_share`); after all have written (a barrier), process 0
  reads and merges them (`results.merge_shares`). With one process, the share
  is the whole job and nothing is written.
  """
  if jax.process_count() == 1:
    return share.metrics
  os.makedirs(folder, exist_ok=True)
  path = lambda i: os.path.join(folder, f"process_{i}.npz")
  results.write_share(path(jax.process_index()), share.runs, share.metrics)
  multihost_utils.sync_global_devices(f"plastix shares in {folder}")
  if jax.process_index() != 0:
    return None
  return results.merge_shares(share.metrics, [path(i) for i in range(jax.process_count())],
                              num_runs)


@functools.partial(jax.jit, static_argnums=1)
def _place_runs(tree, placement):
  """`tree` with every leaf placed by `placement` (a copy; works across processes)."""
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, placement), tree)


# JAX's monitoring events of the time it spends turning a function into a program.
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


class CompileClock:
  """Adds up, while entered, the seconds JAX reports tracing, lowering and
  compiling (`COMPILE_EVENTS`, from `jax.monitoring`) in `seconds`."""

  def __init__(self):
    self.seconds = 0.0

  def _listen(self, event: str, duration: float, **_) -> None:
    if event in COMPILE_EVENTS:
      self.seconds += duration

  def __enter__(self) -> "CompileClock":
    jax.monitoring.register_event_duration_secs_listener(self._listen)
    return self

  def __exit__(self, *exc) -> None:
    jax.monitoring.unregister_event_duration_listener(self._listen)


@functools.partial(jax.jit, static_argnums=1)
def _mean_final_accuracy(train_accuracy: jax.Array, num_runs: int) -> jax.Array:
  """Mean over the first `num_runs` runs (the padding after them left out) of
  the accuracy on the chunk's last task."""
  return jnp.mean(train_accuracy[:num_runs, -1])


def _devices(mesh: jax.sharding.Mesh | None) -> tuple[str, int]:
  """``(platform, count)`` of the devices the runs train on (the default device without a mesh)."""
  if mesh is None:
    return jax.devices()[0].platform, 1
  return mesh.devices.flat[0].platform, mesh.size


def stall_advice(checkpoint_dir: str | None, platform: str, tasks_done: int) -> str:
  """What the watchdog's line advises when a chunk stalls after `tasks_done`
  tasks: what is saved, how to resume, and the settings to try."""
  if checkpoint_dir is None:
    saved = "no checkpoint is kept for this run"
  elif tasks_done:
    saved = (f"tasks 1-{tasks_done} are checkpointed in {checkpoint_dir} and the same "
             "command resumes from there")
  else:
    saved = "no task of this intervention had finished"
  split = ("; if it stalls again, try --config.cpu_devices=1 (one CPU device, in a new "
           "--workdir)" if platform == "cpu" else "")
  return f"{saved}{split}; --config.stall_timeout_s=N sets the wait (0: never stop)"
