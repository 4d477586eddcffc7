"""TensorBoard event files of a running job: ``<folder>/<condition>/seed_<s>/``.

One TensorBoard run per (condition, seed), written with ``tensorboardX`` (no
TensorFlow needed) as each chunk of tasks arrives, so ``tensorboard
--logdir=DIR`` follows a running job. The x axis of every scalar is the
training step counted from the run's start, ``global step = task S + step``
for S = ``steps_per_task``:

* ``task/<column>``: every numeric column of metrics.csv (`results.metrics_to_rows`)
  at the task's end, ``(task + 1) S``; values not measured (NaN) are left out;
* ``step/train_loss``, ``step/train_accuracy``: steps.csv's means over each
  ``log_every_steps`` steps (`results.step_rows`), at the last step each mean covers.
"""

from __future__ import annotations

import glob
import math
import os
import re

# Identifiers and marks of a row, not scalars to chart.
_NOT_CHARTED = ("intervention", "seed", "task", "hparams", "diverged_task", "diverged_step",
                "step", "task_step")
STEP_TAGS = ("train_loss", "train_accuracy")


def run_name(condition: str, seed: int) -> str:
  """The run's folder under the log's: the condition with every character outside
  ``[A-Za-z0-9._+=-]`` made ``_``, then ``seed_<s>``."""
  safe = re.sub(r"[^A-Za-z0-9._+=-]+", "_", condition).strip("_") or "run"
  return f"{safe}/seed_{seed}"


class TensorBoardLog:
  """Writers of one job's runs, opened as their first values arrive."""

  def __init__(self, folder: str, steps_per_task: int):
    self.folder = folder
    self.steps_per_task = steps_per_task
    self._writers = {}

  def has_events(self, name: str) -> bool:
    """Whether run `name` already holds event files (a resumed job's)."""
    return bool(glob.glob(os.path.join(self.folder, name, "events.out.tfevents.*")))

  def _writer(self, name: str):
    if name not in self._writers:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self._writers[name] = tensorboardX.SummaryWriter(
          logdir=os.path.join(self.folder, name), filename_suffix=f".{os.getpid()}")
    return self._writers[name]

  def write(self, name: str, task_rows, step_rows=(), exclude=()) -> None:
    """Adds run `name`'s rows (of one seed): `task_rows` of metrics.csv and
    `step_rows` of steps.csv, then flushes. Columns in `exclude` (a grid's
    fields) are not charted."""
    writer = self._writer(name)
    skip = set(_NOT_CHARTED) | set(exclude)
    for row in task_rows:
      step = (row["task"] + 1) * self.steps_per_task
      for key, value in row.items():
        if key not in skip and _is_number(value):
          writer.add_scalar(f"task/{key}", float(value), global_step=step)
    for row in step_rows:
      for key in STEP_TAGS:
        if _is_number(row.get(key)):
          writer.add_scalar(f"step/{key}", float(row[key]), global_step=row["step"])
    writer.flush()

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()
    self._writers = {}


def _is_number(value) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))
