"""Running every intervention of a config into a workdir: the library behind the entry points.

`experiments.synthetic` (one config) and `experiments.study` (one cell of a
study at a time) are thin wrappers around two calls:

* `prepare(config)` checks the config and loads its data, before anything
  compiles; bad input raises `UsageError` (one line naming the field);
* `run(prepared, workdir)` lays the runs out over the devices, trains each
  intervention (`plastix.runner`), and writes the workdir:
  ``config.json``, ``run_info.json``, ``metrics.csv`` and ``steps.csv``
  (after every intervention, so finished work is kept), ``summary.json``, the
  figures, ``checkpoints/`` (deleted at the end with ``keep_checkpoints =
  False``), ``tensorboard/`` (as every chunk of tasks finishes, with
  ``tensorboard = True``) and, given a `joblog.JobLog`, ``log.txt``. The same
  call on a workdir holding the same config resumes it; a workdir holding a
  different config is refused.

Only process 0 of a multi-process job writes results, the log and prints; each
process writes the TensorBoard runs of the seeds it trains. Workdirs are
local paths (`check_local_workdir`).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, NamedTuple

import ml_collections

from plastix import data as data_lib
from plastix import from_config
from plastix import grid as grid_lib
from plastix import interventions
from plastix import joblog
from plastix import results
from plastix import validation


def _version_mismatch():
  from plastix import checkpointing  # pylint: disable=g-import-not-at-top
  return checkpointing.VersionMismatch


class UsageError(Exception):
  """Bad input: the entry point prints this one line and exits with status 2."""


class Prepared(NamedTuple):
  """A checked config with its data, ready to `run`."""
  config: ml_collections.ConfigDict
  names: list[str]                 # the interventions, in order.
  train_split: data_lib.Dataset
  test_split: data_lib.Dataset | None


def prepare(config: ml_collections.ConfigDict) -> Prepared:
  """Checks `config` and loads its splits; raises `UsageError` naming the field."""
  try:
    validation.validate(config)
    names = interventions.parse_list(config.interventions)
    train_split = from_config.load_dataset(config, "train")
    validation.validate_against_data(config, len(train_split.labels),
                                     train_split.num_classes, train_split.images.shape[1:])
    test_split = None
    if from_config.test_examples(config):
      test_split = from_config.load_dataset(config, "test")
      validation.validate_against_test(config, len(test_split.labels))
  except (validation.ConfigError, data_lib.DataError) as e:
    raise UsageError(str(e)) from None
  return Prepared(config, names, train_split, test_split)


def default_workdir(config: ml_collections.ConfigDict) -> str:
  """``runs/<config.name>-<timestamp>``."""
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return os.path.join("runs", f"{config.name}-{stamp}")


_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")


def check_local_workdir(path: str) -> None:
  """`UsageError` unless `path` is a local path (``gs://``, ``s3://`` and other
  URLs are refused: results, figures and logs are written with local file calls)."""
  match = _URL.match(path or "")
  if match:
    raise UsageError(f"--workdir {path!r}: local paths only ({match['scheme']}:// is not "
                     "supported); write to a local or mounted folder and copy it to the "
                     "bucket afterwards")


def _prepare_workdir(path: str) -> None:
  check_local_workdir(path)
  try:
    os.makedirs(path, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")  # unique per process
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    raise UsageError(f"--workdir {path!r} cannot be written ({e.strerror or e})") from None


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


# How the job is laid out over processes: differs between the processes of one
# job (process_id) and may change on resume (the runs then continue on the new
# layout, whose float rounding can differ; see `_resume_note`).
_LAYOUT_FIELDS = ("distributed.",)
# How long to wait for a stalled chunk (plastix.watchdog), and what is written
# besides the results: change nothing a run computes, so a run may resume with
# other values.
_WATCH_FIELDS = ("stall_timeout_s", "tensorboard", "keep_checkpoints")
# Fields added since a workdir may have been written, with the value that
# means what the older code did (cpu_devices: its run_info.json holds no split,
# so the run resumes on JAX's own devices, as it started; log_every_steps:
# its checkpoints hold no per-step metrics; model.cnn_padding: the CNN was SAME-padded).
_ADDED_FIELDS = {"cpu_devices": 0, "log_every_steps": 0, "model.cnn_padding": "SAME"}


def is_resumable(workdir: str, config_dict: dict, added_fields: dict | None = None) -> bool:
  """True if `workdir` already holds this config's run; `UsageError` on a different config.

  `added_fields`: fields added since a workdir may have been written, with the
  value that means what the older code did (default: this entry point's,
  `_ADDED_FIELDS`; another learner's config passes its own)."""
  added_fields = _ADDED_FIELDS if added_fields is None else added_fields
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return False
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise UsageError(f"--workdir {workdir!r} has an unreadable config.json ({e}); "
                     "use a new --workdir") from None
  new = _flatten(config_dict)
  # An added field stands in for the saved config only where this config has it.
  old = {**{k: v for k, v in added_fields.items() if k in new}, **_flatten(saved)}
  changed = sorted(k for k in old.keys() | new.keys()
                   if old.get(k) != new.get(k)
                   and not k.startswith(_LAYOUT_FIELDS + _WATCH_FIELDS))
  if changed:
    raise UsageError(f"--workdir {workdir!r} holds a run with a different config "
                     f"({', '.join(changed)}); use a new --workdir or the same config to "
                     "resume")
  return True


def _saved_run_info(workdir: str) -> dict:
  """The run_info.json of a resumed run ({} where it is missing or unreadable)."""
  try:
    with open(os.path.join(workdir, "run_info.json")) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def _resumed_split(config, split: int | None, saved: dict) -> int | None:
  """The CPU split of a resumed run: the one it started with (`saved` run_info;
  the core count may have changed), unless ``config.cpu_devices`` sets one or the
  job is now multi-process, where each process keeps JAX's own devices, or
  run_info.json is lost (`split`, as for a new run, in each case). A config
  without a ``distributed`` section (an RL config) is one process."""
  distributed = config.get("distributed")
  if config.get("cpu_devices", 0) or (distributed is not None and distributed.enabled) or not saved:
    return split
  return saved.get("cpu_devices")


def _layout(mesh) -> dict:
  """How the runs are laid out: processes, and devices the runs are split over."""
  import jax  # pylint: disable=g-import-not-at-top
  return {"processes": jax.process_count(), "run_devices": 1 if mesh is None else mesh.size}


def _resume_note(saved: dict, layout: dict) -> str | None:
  """A warning where a run resumes on another layout than it last ran on (None
  if the same, or unknown: a workdir from before run_info.json recorded it)."""
  before = (saved.get("resumes") or [saved])[-1].get("layout")
  if not before or before == layout:
    return None
  where = lambda l: (f"{l['processes']} process{'es' if l['processes'] > 1 else ''}, "
                     f"{l['run_devices']} device{'s' if l['run_devices'] > 1 else ''}")
  return (f"warning: this run last ran on {where(before)} and resumes on {where(layout)}: "
          "any remaining tasks train the same runs, but their float rounding can differ "
          "from an uninterrupted run's")


def run_info(cpu_devices: int | None, layout: dict) -> dict:
  """run_info.json: package versions, git revision, devices, the CPU split, layout, argv."""
  import importlib.metadata as md  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  versions = {}
  for pkg in ("jax", "jaxlib", "flax", "optax", "chex", "numpy", "ml_collections"):
    try:
      versions[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
      versions[pkg] = None
  try:
    revision = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
        cwd=os.path.dirname(os.path.abspath(__file__)), check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    revision = None
  return {"versions": versions, "git_revision": revision,
          "devices": [str(d) for d in jax.devices()], "cpu_devices": cpu_devices,
          "layout": layout, "argv": sys.argv}


def _devices_note(mesh) -> str:
  """"3 cpu devices": where the runs train (every run on one device without a mesh)."""
  import jax  # pylint: disable=g-import-not-at-top
  count = 1 if mesh is None else mesh.size
  return f"{count} {jax.default_backend()} device{'s' if count > 1 else ''}"


def initialize_distributed(config) -> None:
  """jax.distributed.initialize() from config.distributed (auto-detected where unset)."""
  import jax  # pylint: disable=g-import-not-at-top
  d = config.distributed
  # Cross-process collectives for CPU devices; GPUs and TPUs use their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(
        coordinator_address=d.coordinator_address or None,
        num_processes=None if d.num_processes < 0 else d.num_processes,
        process_id=None if d.process_id < 0 else d.process_id)
  except (ValueError, RuntimeError) as e:
    raise UsageError("config.distributed: cannot start a multi-process job "
                     f"({str(e).splitlines()[0]})") from None


def _layout_runs(config, num_runs: int, workdir: str, resuming: bool, examples_bytes: int):
  """Splits a CPU host into devices and makes the run mesh; ``(split, mesh, saved_info)``.

  Must run before JAX's first operation (the CPU device count is fixed then).
  """
  from plastix import sharding  # pylint: disable=g-import-not-at-top
  split = from_config.cpu_devices(config, num_runs, examples_bytes)
  saved_info = _saved_run_info(workdir) if resuming else {}
  if resuming:
    split = _resumed_split(config, split, saved_info)
  if split is not None:
    sharding.use_cpu_devices(split)
  mesh = sharding.seed_mesh() if config.shard_seeds else None
  if mesh is None:
    return split, mesh, saved_info
  # Runs that do not split evenly over the mesh are padded (plastix.sharding.pad_runs).
  try:
    validation.check_parallel_runs(config.parallel_runs, num_runs, mesh.size)
  except validation.ConfigError as e:
    raise UsageError(str(e)) from None
  return split, mesh, saved_info


def run(prepared: Prepared, workdir: str,
        progress: Callable[[str], None] | None = None,
        warn: Callable[[str], None] | None = None,
        initialize: bool = True,
        log: joblog.JobLog | None = None) -> dict | None:
  """Trains every intervention of ``prepared.config`` into `workdir` (see the module docstring).

  Args:
    prepared: from `prepare`.
    workdir: the output folder (a local path); a workdir of the same config is resumed.
    progress: called with each progress line (process 0 only); default
      ``log.say``, or print without a log.
    warn: called with warnings (a resume on another layout); default
      ``log.warn``, or stderr.
    initialize: start a multi-process job (``config.distributed.enabled``)
      with ``jax.distributed.initialize``; False where the caller has.
    log: the job's log, attached to ``<workdir>/log.txt`` on process 0 once
      the workdir is ready (discarded on the other processes).

  Returns:
    summary.json's content on process 0, None on the others.

  Raises:
    UsageError: bad input found while laying out the runs or the workdir.
  """
  config, names = prepared.config, prepared.names
  check_local_workdir(workdir)
  say_all = progress or (log.say if log else (lambda line: print(line, flush=True)))
  warn = warn or (log.warn if log else
                  (lambda line: print(line, file=sys.stderr, flush=True)))
  if config.distributed.enabled and initialize:
    initialize_distributed(config)
  import jax  # pylint: disable=g-import-not-at-top
  points = grid_lib.points(config.grid)
  num_runs = config.num_seeds * len(points)
  config_dict = json.loads(json.dumps(config.to_dict()))  # tuples as JSON lists
  resuming = is_resumable(workdir, config_dict)
  examples = prepared.train_split.images[:config.num_examples or None]
  split, mesh, saved_info = _layout_runs(config, num_runs, workdir, resuming, examples.nbytes)
  primary = jax.process_index() == 0  # Only process 0 writes results and prints.
  say = say_all if primary else (lambda line: None)
  _prepare_workdir(workdir)
  if log is not None:
    if primary:
      log.attach(os.path.join(workdir, joblog.LOG_FILE))
    else:
      log.discard()

  from plastix import plotting, runner  # pylint: disable=g-import-not-at-top
  layout = _layout(mesh)
  if primary and not resuming:
    results.write_json(os.path.join(workdir, "config.json"), config_dict)
    results.write_json(os.path.join(workdir, "run_info.json"), run_info(split, layout))
  elif primary:
    note = _resume_note(saved_info, layout)
    if note:
      warn(note)
    # After the start's record, each resume's: its layout, command and software.
    resume = {k: v for k, v in run_info(split, layout).items()
              if k in ("layout", "argv", "versions", "git_revision", "cpu_devices")}
    if not saved_info:  # run_info.json lost (a run killed before writing it)
      saved_info = {"unrecorded_start": True}
    saved_info.setdefault("resumes", []).append(resume)
    results.write_json(os.path.join(workdir, "run_info.json"), saved_info)

  data, num_classes = from_config.load_train_data(config, prepared.train_split,
                                                  prepared.test_split)
  grid_note = f", grid of {len(points)} points ({config.grid})" if config.grid else ""
  say(f"{config.name}: {config.dataset} ({data.images.shape[0]} examples), shift "
      f"{config.shift}, {config.num_tasks} tasks x {config.steps_per_task} steps, "
      f"{config.num_seeds} seeds on {_devices_note(mesh)}, interventions "
      f"{', '.join(names)}{grid_note}")
  start = time.perf_counter()
  rows, steps, by_condition = [], [], {}
  seeds = list(range(config.num_seeds))
  job = runner.JobProgress(num_interventions=len(names), num_tasks=config.num_tasks)
  events = None
  if config.get("tensorboard", False):
    from plastix import tensorboard_log  # pylint: disable=g-import-not-at-top
    events = tensorboard_log.TensorBoardLog(os.path.join(workdir, "tensorboard"),
                                            config.steps_per_task)
  on_stall = None
  if log is not None:
    on_stall = lambda line: log.record(logging.ERROR, line)
  try:
    for index, name in enumerate(names):
      job.index = index
      on_chunk = None
      if events is not None:
        on_chunk = lambda chunk, name=name: _write_events(events, name, chunk, seeds, points,
                                                          config.steps_per_task)
      try:
        share = runner.run_intervention_share(
            config, name, data, num_classes, progress=say,
            checkpoint_dir=os.path.join(workdir, "checkpoints", name), mesh=mesh, job=job,
            on_chunk=on_chunk, on_stall=on_stall)
      except _version_mismatch() as e:
        raise UsageError(f"--workdir {workdir!r}: {e}") from None
      # Each process writes its share; process 0 merges them (None elsewhere).
      metrics = runner.merge_over_processes(share, os.path.join(workdir, "shares", name),
                                            num_runs)
      if metrics is None:
        continue
      rows.extend(results.metrics_to_rows(name, metrics, seeds, points))
      steps.extend(results.step_rows(name, metrics, seeds, config.steps_per_task, points))
      for g, point in enumerate(points):
        runs = slice(g * len(seeds), (g + 1) * len(seeds))
        by_condition[grid_lib.condition(name, grid_lib.label(point))] = (
            metrics._replace(preact_histogram=metrics.preact_histogram[runs],
                             within_task_histogram=metrics.within_task_histogram[runs]))
      results.write_csv(os.path.join(workdir, "metrics.csv"), rows)  # Keep finished work.
      if steps:
        results.write_csv(os.path.join(workdir, "steps.csv"), steps, base=results.STEP_COLUMNS)
  finally:
    if events is not None:
      events.close()

  if not primary:
    return None
  conditions = grid_lib.conditions(names, config.grid)
  summary = results.summarize(rows, conditions)
  results.write_json(os.path.join(workdir, "summary.json"), summary)
  title = f"{config.name}: {config.shift} on {config.dataset}"
  chance = plotting.chance_accuracy(config.shift, num_classes)
  plotting.plot_plasticity(rows, conditions, os.path.join(workdir, "plasticity.png"),
                           title=title, chance=chance)
  plotting.plot_summary_bars(rows, conditions, os.path.join(workdir, "summary_bars.png"),
                             title=title, chance=chance)
  # The figures average the seeds that never diverged, as the curves do.
  diverged = {c: results.diverged_seeds(rows, c) for c in conditions}
  if steps:
    plotting.plot_step_curves(steps, conditions, os.path.join(workdir, "steps.png"),
                              config.steps_per_task, title=title, exclude=diverged,
                              chance=chance)
  if config.probes.enabled:
    edges = from_config.probe_settings(config).histogram_edges
    histograms = results.histogram_arrays(by_condition, edges)
    results.write_npz(os.path.join(workdir, "histograms.npz"), histograms)
    plotting.plot_mechanisms(rows, conditions, workdir, title=title)
    plotting.plot_histograms(histograms, conditions,
                             os.path.join(workdir, "preactivation_histograms.png"),
                             exclude=diverged)
    if config.probes.within_task_every:
      plotting.plot_within_task_histograms(
          histograms, conditions, config.probes.within_task_every,
          os.path.join(workdir, "within_task_histograms.png"), exclude=diverged)
  say(f"trained in {time.perf_counter() - start:.0f}s")
  if not config.get("keep_checkpoints", True):
    # Every process closed its checkpoints before the last share was merged.
    shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
    say("checkpoints deleted (config.keep_checkpoints = False)")
  return summary


def _write_events(events, name: str, chunk, seeds: list[int], points: list[dict],
                  steps_per_task: int) -> None:
  """Adds a `runner.Chunk` of intervention `name` to the TensorBoard log, one run
  per (condition, seed); a resumed chunk only for runs with no events yet."""
  from plastix import tensorboard_log  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  for i, run in enumerate(chunk.runs):
    g, s = divmod(int(run), len(seeds))
    seed, point = seeds[s], points[g]
    run_name = tensorboard_log.run_name(grid_lib.condition(name, grid_lib.label(point)), seed)
    if chunk.resumed and events.has_events(run_name):
      continue
    one = jax.tree.map(lambda x, i=i: x[i:i + 1], chunk.metrics)
    task_rows = results.metrics_to_rows(name, one, [seed], [point])
    for row in task_rows:
      row["task"] += chunk.first_task
    step_rows = results.step_rows(name, one, [seed], steps_per_task, [point],
                                  first_task=chunk.first_task)
    events.write(run_name, task_rows, step_rows, exclude=point)
