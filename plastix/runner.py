"""Runs every intervention of a config through the engine, seeds vmapped.

`run_intervention` is the host loop: it compiles `engine.run_tasks` once per
model structure, runs the tasks in equal chunks (so progress can be printed
between them without new compilations) and returns numpy metrics.
"""

from __future__ import annotations

import functools
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from plastix import checkpointing
from plastix import engine
from plastix import grid as grid_lib
from plastix import interventions
from plastix import sharding


def chunk_length(num_tasks: int, tasks_per_chunk: int) -> int:
  """The largest divisor of `num_tasks` that is at most `tasks_per_chunk`.

  Equal chunks mean a single compiled program covers the whole run.
  """
  return max(d for d in range(1, min(num_tasks, tasks_per_chunk) + 1) if num_tasks % d == 0)


def _concat_tasks(parts):
  return jax.tree.map(lambda *p: np.concatenate(p, axis=1), *parts)


def run_intervention(config: ml_collections.ConfigDict, name: str, data: engine.TrainData,
                     num_classes: int,
                     progress: Callable[[str], None] | None = None,
                     checkpoint_dir: str | None = None,
                     mesh: jax.sharding.Mesh | None = None) -> engine.TaskMetrics:
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
  without a grid).
  """
  resolved = interventions.apply(config, name)
  spec = engine.engine_spec(resolved, num_classes, data.images.shape[1], data.image_shape)
  points = grid_lib.points(resolved.get("grid", ""))
  hp = engine.stack_hparams(
      [engine.hparams(grid_lib.apply_point(resolved, p)) for p in points],
      repeats=resolved.num_seeds)
  chunk = chunk_length(resolved.num_tasks, resolved.tasks_per_chunk)
  run_chunk = functools.partial(engine.run_tasks, spec=spec, num_tasks=chunk)
  start = time.perf_counter()
  keys = jnp.tile(engine.seed_keys(resolved), (len(points), 1))
  if mesh is not None:
    sharding.check_divisible(keys.shape[0], mesh)
    keys, data, hp = (sharding.shard_seeds(keys, mesh), sharding.replicate(data, mesh),
                      sharding.shard_seeds(hp, mesh))
  states = engine.init_states(keys, data, hp, spec=spec)
  chunks, done = [], 0
  ckpt = checkpointing.Checkpointer(checkpoint_dir) if checkpoint_dir else None
  if ckpt is not None and ckpt.latest_tasks_done() is not None:
    done = ckpt.latest_tasks_done()
    if done > resolved.num_tasks or done % chunk:
      raise ValueError(f"checkpoint in {checkpoint_dir} has {done} tasks, which does "
                       f"not fit {resolved.num_tasks} tasks in chunks of {chunk}")
    _, chunk_metrics = jax.eval_shape(run_chunk, states, data, hp)
    metrics_like = jax.tree.map(
        lambda m: np.zeros((m.shape[0], done) + m.shape[2:], m.dtype), chunk_metrics)
    states, restored = ckpt.restore(done, states, metrics_like)
    chunks.append(restored)
    if progress is not None:
      progress(f"[{name}] resumed from checkpoint after task {done}/{resolved.num_tasks}")
  while done < resolved.num_tasks:
    states, metrics = run_chunk(states, data, hp, first_task=done)
    chunks.append(sharding.to_host(metrics))
    done += chunk
    if ckpt is not None:
      ckpt.save(done, states, _concat_tasks(chunks))
    if progress is not None:
      acc = np.mean(chunks[-1].train_accuracy[:, -1])
      progress(f"[{name}] task {done}/{resolved.num_tasks}  train_accuracy {acc:.3f}  "
               f"{time.perf_counter() - start:.1f}s")
  if ckpt is not None:
    ckpt.close()
  return _concat_tasks(chunks)
