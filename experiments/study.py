r"""Runs a study: each of its cells into ``<workdir>/cells/<cell>/``.

  python -m experiments.study --config=configs/studies/abruptness.py[:cpu|:paper] \
      --workdir=DIR [--cell=K] [--config.FIELD=VALUE ...]

Every cell's folder is a workdir exactly like ``experiments.synthetic``'s
(config.json, metrics.csv, steps.csv, summary.json, figures, log.txt,
tensorboard/, checkpoints). The study writes ``DIR/study.json`` (the cells and
how they ran, for ``python -m experiments.report --workdir=DIR``) and
``DIR/log.txt`` (everything it prints); ``tensorboard --logdir=DIR`` shows every
cell's runs. DIR is a local path.

Without ``--cell`` every cell runs in turn, each in a process of its own
(a cell may split a CPU host into another number of devices); a finished cell
is skipped and an interrupted one resumes from its checkpoints, so the same
command after a kill continues the study. Progress lines show the whole
study's progress and an ETA. ``--cell=K`` runs cell K (in the order of the
cells' names) alone in this process: the way to spread a study over a cluster
scheduler's array jobs into one shared DIR. Without ``--cell``, the index of a
Slurm array task (``SLURM_ARRAY_TASK_ID``) is taken as ``--cell``.

Every cell's config is checked before anything runs: bad input prints one line
and exits with status 2.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as experiments.synthetic

import json
import logging
import re
import shlex
import subprocess
import sys
import time

from absl import app
from absl import flags

from experiments import cli

_CONFIG = cli.define_config_flag(None, "Study config file, e.g. "
                                 "configs/studies/abruptness.py:cpu.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The study's folder (required).")
_CELL = flags.DEFINE_integer("cell", None, "Run only this cell (0-based, in the order of "
                             "the cells' names); default: every cell, or the Slurm array "
                             "task's index.")
ARRAY_INDEX = "SLURM_ARRAY_TASK_ID"
# A progress line of a supervised cell ("[name] task 3/10") or an RL cell
# ("[name 1/4] env steps 2000/10000").
_TASK_LINE = re.compile(r"^\[(?P<name>[^\]\s]+)(?: \d+/\d+)?\] (?:task|env steps) "
                        r"(?P<done>\d+)/(?P<total>\d+)")


def _duration(seconds: float) -> str:
  """``"42s"``, ``"3m05s"``, ``"2h07m"`` (`plastix.runner.format_duration`)."""
  from plastix import runner  # pylint: disable=g-import-not-at-top
  return runner.format_duration(seconds)


def _check_cells(config):
  """The cells and their checked experiment configs; exits 2 on bad input."""
  from plastix import study  # pylint: disable=g-import-not-at-top
  try:
    cells = study.cells(config)
  except study.StudyError as e:
    cli.fail(str(e))
  configs = []
  for cell in cells:
    cell_config = study.cell_config(config, cell)
    experiment = study.experiment_module(cell_config)
    try:
      experiment.prepare(cell_config)
    except experiment.UsageError as e:
      cli.fail(f"cell {cell.name!r}: {e}")
    configs.append(cell_config)
  return cells, configs


def _is_complete(cell_dir: str, cell_config) -> bool:
  """A cell is done when its summary.json exists beside its own config."""
  path = os.path.join(cell_dir, "config.json")
  if not os.path.exists(os.path.join(cell_dir, "summary.json")) or not os.path.exists(path):
    return False
  with open(path) as f:
    saved = json.load(f)
  return saved == json.loads(json.dumps(cell_config.to_dict()))


def _write_record(workdir, config, cells, updates=None, wall_time=None):
  from plastix import results, study  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "study.json")
  previous = None
  if os.path.exists(path):
    try:
      with open(path) as f:
        previous = json.load(f)
    except (OSError, ValueError):
      previous = None
  command = " ".join(shlex.quote(a) for a in [
      "python", "-m", "experiments.study", *[a for a in (cli.ORIGINAL_ARGV or sys.argv)[1:]
                                            if not a.startswith("--cell")]])
  record = study.study_record(config, cells, command, previous)
  for entry in record["cells"]:
    entry.update((updates or {}).get(entry["name"], {}))
  if wall_time is not None:
    record["wall_time_s"] = wall_time
  results.write_json(path, record)
  return record


def _run_one(config, cells, configs, index: int, workdir: str, log) -> None:
  """Cell `index` in this process, into its folder (its log.txt there)."""
  from plastix import study  # pylint: disable=g-import-not-at-top
  if not 0 <= index < len(cells):
    cli.fail(f"--cell: {index} is not a cell of this study (0 to {len(cells) - 1}: "
             f"{', '.join(c.name for c in cells)})")
  cell, cell_config = cells[index], configs[index]
  experiment = study.experiment_module(cell_config)
  cell_dir = os.path.join(workdir, cell.dir)
  start = time.perf_counter()
  try:
    summary = experiment.run(experiment.prepare(cell_config), cell_dir, log=log)
  except experiment.UsageError as e:
    log.record(logging.ERROR, f"error: cell {cell.name!r}: {e}")
    cli.fail(f"cell {cell.name!r}: {e}")
  if summary is not None:
    _write_record(workdir, config, cells,
                  {cell.name: {"wall_time_s": time.perf_counter() - start, "complete": True}})
    log.say(f"cell {index} ({cell.name}) done in {_duration(time.perf_counter() - start)}; "
            f"results in {cell_dir}")


def _run_all(config, cells, configs, workdir: str, log) -> int:
  """Every unfinished cell in a process of its own; returns the exit status.
  What it prints goes to `log` too (``DIR/log.txt``)."""
  from plastix import study  # pylint: disable=g-import-not-at-top
  units = [study.units(c) for c in configs]
  total = sum(units)
  done_before = sum(u for u, c, cfg in zip(units, cells, configs)
                    if _is_complete(os.path.join(workdir, c.dir), cfg))
  record = _write_record(workdir, config, cells)
  start = time.perf_counter()
  trained = 0  # units trained by this process's children (for the ETA).
  failed = []
  log.say(f"study {config.study.name} ({config.study.scale}): {len(cells)} cells, "
          f"{done_before * 100 // max(total, 1)}% done before; results in {workdir}")
  for cell, cell_config, cell_units in zip(cells, configs, units):
    cell_dir = os.path.join(workdir, cell.dir)
    prefix = f"[cell {cell.index + 1}/{len(cells)} {cell.name}]"
    if _is_complete(cell_dir, cell_config):
      log.say(f"{prefix} done already")
      continue
    names = cell_config.interventions.split(",")
    per_intervention = cell_units // len(names)
    argv = [sys.executable, "-m", "experiments.study", *sys.argv[1:], f"--cell={cell.index}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=None, text=True, bufsize=1,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    seen = 0
    for line in proc.stdout:
      line = line.rstrip("\n")
      match = _TASK_LINE.match(line)
      if match and match["name"] in names:
        k = names.index(match["name"])
        now = k * per_intervention + per_intervention * int(match["done"]) // int(match["total"])
        if "resumed" not in line:
          trained += max(0, now - seen)
        seen = now
        elapsed = time.perf_counter() - start
        fraction = (done_before + seen) / max(total, 1)
        remaining = total - done_before - seen
        eta = _duration(elapsed / trained * remaining) if trained else "?"
        line = f"{prefix} {fraction:4.0%} of the study, ETA {eta} | {line}"
      else:
        line = f"{prefix} {line}"
      log.say(line)
    status = proc.wait()
    if status:
      failed.append(cell.name)
      log.warn(f"{prefix} failed with exit status {status}; rerun the same command to resume "
               "it")
      continue
    done_before += cell_units
  record = _write_record(workdir, config, cells, wall_time=(record.get("wall_time_s") or 0.0)
                         + time.perf_counter() - start)
  if failed:
    log.warn(f"error: cells {', '.join(failed)} failed; finished cells are kept, rerun the "
             "same command to resume the others")
    return 1
  log.say(f"study done in {_duration(time.perf_counter() - start)}; report with: "
          f"python -m experiments.report --workdir={workdir}")
  return 0


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}")
  if _CONFIG.value is None:
    cli.fail("--config: give a study config, e.g. --config=configs/studies/abruptness.py:cpu")
  if not _WORKDIR.value:
    cli.fail("--workdir: a study needs a folder for its cells")
  cli.default_verbosity()  # absl's -v / --verbosity, WARNING unless given.
  from plastix import experiment, joblog  # pylint: disable=g-import-not-at-top
  workdir = _WORKDIR.value
  try:
    experiment.check_local_workdir(workdir)
  except experiment.UsageError as e:
    cli.fail(str(e))
  config = _CONFIG.value
  cells, configs = _check_cells(config)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    cli.fail(f"--workdir {workdir!r} cannot be written ({e.strerror or e})")
  index = _CELL.value
  if index is None and os.environ.get(ARRAY_INDEX, "").strip():
    try:
      index = int(os.environ[ARRAY_INDEX])
    except ValueError:
      cli.fail(f"{ARRAY_INDEX}={os.environ[ARRAY_INDEX]!r} is not a cell index")
  with joblog.JobLog() as log:
    if index is not None:
      _run_one(config, cells, configs, index, workdir, log)
      return
    log.attach(os.path.join(workdir, joblog.LOG_FILE))
    status = _run_all(config, cells, configs, workdir, log)
  sys.exit(status)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
