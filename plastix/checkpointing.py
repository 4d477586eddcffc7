"""Checkpoints of a run at task-chunk boundaries, with orbax-checkpoint.

A checkpoint holds everything needed to continue bit-for-bit: the seed-batched
`engine.TrainState` (parameters, optimizer state, current task, PRNG keys,
divergence marks) and the metrics of every task finished so far. orbax writes
into a temporary folder and renames it when complete, so a kill mid-save
leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

import os

import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores ``{"states", "metrics"}`` keyed by the number of tasks done."""

  def __init__(self, directory: str, max_to_keep: int = 1):
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             enable_async_checkpointing=False,
                                             create=True))

  def latest_tasks_done(self) -> int | None:
    """Tasks finished in the newest complete checkpoint (None: no checkpoint)."""
    return self._manager.latest_step()

  def save(self, tasks_done: int, states, metrics) -> None:
    self._manager.save(tasks_done, args=ocp.args.StandardSave(
        {"states": states, "metrics": metrics}))
    self._manager.wait_until_finished()

  def restore(self, tasks_done: int, states_like, metrics_like):
    """Restores into the structure, shapes, dtypes and placement of the `*_like`
    pytrees (arrays, or `jax.ShapeDtypeStruct`s with a sharding)."""
    target = {"states": states_like, "metrics": metrics_like}
    out = self._manager.restore(tasks_done, args=ocp.args.StandardRestore(target))
    return out["states"], out["metrics"]

  def close(self) -> None:
    self._manager.close()
