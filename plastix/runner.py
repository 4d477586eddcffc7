"""Runs every intervention of a config through the engine, seeds vmapped.

`run_intervention` is the host loop: it compiles `engine.run_tasks` once per
model structure, runs the tasks in equal chunks (so progress can be printed
between them without new compilations) and returns numpy metrics.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import ml_collections
import numpy as np

from plastix import engine
from plastix import interventions


def chunk_length(num_tasks: int, tasks_per_chunk: int) -> int:
  """The largest divisor of `num_tasks` that is at most `tasks_per_chunk`.

  Equal chunks mean a single compiled program covers the whole run.
  """
  return max(d for d in range(1, min(num_tasks, tasks_per_chunk) + 1) if num_tasks % d == 0)


def run_intervention(config: ml_collections.ConfigDict, name: str, data: engine.TrainData,
                     num_classes: int,
                     progress: Callable[[str], None] | None = None) -> engine.TaskMetrics:
  """Trains every seed of `config` under intervention `name`.

  Returns `engine.TaskMetrics` as numpy arrays with leading axes [seed, task].
  """
  resolved = interventions.apply(config, name)
  spec = engine.engine_spec(resolved, num_classes, data.images.shape[1])
  hp = engine.hparams(resolved)
  chunk = chunk_length(resolved.num_tasks, resolved.tasks_per_chunk)
  start = time.perf_counter()
  states = engine.init_states(engine.seed_keys(resolved), data, hp, spec=spec)
  chunks = []
  for done in range(chunk, resolved.num_tasks + 1, chunk):
    states, metrics = engine.run_tasks(states, data, hp, spec=spec, num_tasks=chunk)
    chunks.append(jax.device_get(metrics))
    if progress is not None:
      acc = np.mean(chunks[-1].train_accuracy[:, -1])
      progress(f"[{name}] task {done}/{resolved.num_tasks}  train_accuracy {acc:.3f}  "
               f"{time.perf_counter() - start:.1f}s")
  return jax.tree.map(lambda *parts: np.concatenate(parts, axis=1), *chunks)
