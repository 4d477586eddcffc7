"""Checkpoints of a run at task-chunk boundaries, with orbax-checkpoint.

A checkpoint holds everything needed to continue bit-for-bit: the seed-batched
`engine.TrainState` (parameters, optimizer state, current task, PRNG keys,
divergence marks) and the metrics of every task finished so far. orbax writes
into a temporary folder and renames it when complete, so a kill mid-save
leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

import os

from flax import serialization
import jax
import orbax.checkpoint as ocp


class VersionMismatch(ValueError):
  """A checkpoint whose state has other fields than this version's."""


class Checkpointer:
  """Saves and restores ``{"states", "metrics"}`` keyed by the number of tasks done."""

  def __init__(self, directory: str, max_to_keep: int = 1):
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             enable_async_checkpointing=False,
                                             create=True),
        item_handlers=ocp.StandardCheckpointHandler())  # also reads metadata before a restore

  def latest_tasks_done(self) -> int | None:
    """Tasks finished in the newest complete checkpoint (None: no checkpoint)."""
    return self._manager.latest_step()

  def save(self, tasks_done: int, states, metrics) -> None:
    self._manager.save(tasks_done, args=ocp.args.StandardSave(
        {"states": states, "metrics": metrics}))
    self._manager.wait_until_finished()

  def saved_runs(self, tasks_done: int) -> int:
    """The length of the saved run axis (the leading axis of every array)."""
    tree = self._manager.item_metadata(tasks_done).tree
    return min(leaf.shape[0] for leaf in jax.tree.leaves(
        tree, is_leaf=lambda x: hasattr(x, "shape")) if len(leaf.shape))

  def restore(self, tasks_done: int, states_like, metrics_like, num_runs: int | None = None):
    """Restores into the structure, shapes, dtypes and placement of the `*_like`
    pytrees (arrays, or `jax.ShapeDtypeStruct`s with a sharding).

    With `num_runs`, the saved run axis may be longer or shorter than the
    targets' (runs padded to a multiple of another device count,
    `plastix.sharding.pad_runs`), provided it holds the first `num_runs` runs:
    saved rows past the targets' are dropped and rows the checkpoint lacks come
    back as zeros (`plastix.sharding.fill_padding` makes them copies again).
    Raises ValueError if the checkpoint holds fewer than `num_runs` rows.
    """
    self._check_fields(tasks_done, states_like)
    strict = num_runs is None
    if not strict and self.saved_runs(tasks_done) < num_runs:
      raise ValueError(f"the checkpoint after {tasks_done} tasks holds "
                       f"{self.saved_runs(tasks_done)} runs, fewer than the {num_runs} "
                       "runs to resume")
    target = {"states": states_like, "metrics": metrics_like}
    out = self._manager.restore(tasks_done,
                                args=ocp.args.StandardRestore(target, strict=strict))
    return out["states"], out["metrics"]

  def _check_fields(self, tasks_done: int, states_like) -> None:
    """ValueError, one line, when the saved state's fields are not the target's
    (a checkpoint written by another version of plastix, whose state had other
    fields): say so rather than fail inside orbax."""
    saved = self._manager.item_metadata(tasks_done).tree
    saved = saved.get("states") if isinstance(saved, dict) else None
    target = serialization.to_state_dict(states_like)
    if not isinstance(saved, dict) or not isinstance(target, dict):
      return
    old, new = sorted(set(saved) - set(target)), sorted(set(target) - set(saved))
    if old or new:
      raise VersionMismatch(
          f"checkpoint {tasks_done} of this workdir was written by another version of plastix "
          f"(its state has {', '.join(old) or 'no other field'} where this one has "
          f"{', '.join(new) or 'no other field'}); resume it with that version, or start a "
          "new --workdir (the finished results in this one are kept)")

  def close(self) -> None:
    self._manager.close()
