"""Turning engine metrics into metrics.csv, steps.csv, summary.json and a printed table.

All files are written atomically (a temporary file in the same folder, then
``os.replace``), so a kill never leaves a truncated result. `load` reads a
workdir's table back in one line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from typing import Any, Iterable, Sequence

import numpy as np

from plastix import grid as grid_lib

BASE_COLUMNS = (
    "intervention", "seed", "task", "train_loss", "train_accuracy", "dead_fraction",
    "dormant_fraction", "linearized_fraction", "effective_rank", "srank", "param_norm",
)
SUMMARY_KEYS = ("first_task_accuracy", "final_task_accuracy", "plasticity_loss",
                "dead_fraction_final", "param_norm_final")
LAST_TASKS = 3  # plasticity_loss compares task 0 with the mean of this many last tasks.
# Held-out means in summary.json, each with its spread over seeds (_std).
HELD_OUT_KEYS = ("first_task_test_accuracy", "final_task_test_accuracy",
                 "first_task_test_loss", "final_task_test_loss")
# With probes.final_fit_steps, the final fit's values (on the last task's row),
# each with _std; final_fit_gap = final_fit_accuracy_new_network - final_fit_accuracy.
FINAL_FIT_KEYS = ("final_fit_accuracy", "final_fit_accuracy_new_network", "final_fit_gap",
                  "final_fit_loss", "final_fit_loss_new_network")
STD_SUFFIX = "_std"  # summary.json's spread over seeds of a SUMMARY_KEYS entry.
# steps.csv: the training loss and accuracy every `log_every_steps` steps.
STEP_COLUMNS = ("intervention", "seed", "task", "task_step", "step", "train_loss",
                "train_accuracy")
# Text columns of the tables (every other column is a number).
TEXT_COLUMNS = ("intervention", "hparams", "cell")
INT_COLUMNS = ("seed", "task", "task_step", "step")
TABLES = {"metrics": "metrics.csv", "steps": "steps.csv"}


def metrics_to_rows(intervention: str, metrics, seeds: Sequence[int],
                    points: Sequence[dict] = ({},)) -> list[dict]:
  """One row per (run, task) from `engine.TaskMetrics` with [run, task] axes.

  Run ``g * len(seeds) + s`` is grid point ``points[g]`` and seed ``seeds[s]``
  (without a grid, ``points = ({},)`` and runs are seeds). Per-layer values
  become extra columns ``param_norm_<module>``, ``grad_norm_<module>``,
  ``dead_fraction_layer<i>``, ``preact_drift_layer<i>`` and
  ``preact_mean_spread_layer<i>``, the top feature singular values
  ``feature_sv<i>``, and with within-task probes ``preact_drift_part<j>`` (after
  part j + 1 of K equal parts of the task); the preactivation histograms are
  not rows (see `histogram_arrays`);
  with a grid, each row also gets ``hparams`` (the point's `grid.label`) and
  one column per grid field.
  """
  m = {k: np.asarray(v) for k, v in metrics._asdict().items() if k not in _NOT_SCALAR}
  layer_norms = {k: np.asarray(v) for k, v in metrics.layer_param_norm.items()}
  grad_norms = {k: np.asarray(v) for k, v in metrics.layer_grad_norm.items()}
  per_layer = {prefix: np.asarray(getattr(metrics, field))
               for field, prefix in _PER_LAYER.items()}
  singular = np.asarray(metrics.feature_singular_values)
  within = np.asarray(metrics.within_task_drift)
  parts = within.shape[-1] if within.ndim == 3 else 1
  num_runs, num_tasks = m["train_loss"].shape
  if len(seeds) * len(points) != num_runs:
    raise ValueError(f"{len(seeds)} seeds x {len(points)} grid points for {num_runs} runs")
  rows = []
  for s in range(num_runs):
    point = points[s // len(seeds)]
    for t in range(num_tasks):
      row = {"intervention": intervention, "seed": int(seeds[s % len(seeds)]), "task": t}
      if point:
        row["hparams"] = grid_lib.label(point)
        row.update(point)
      row.update({k: v[s, t].item() for k, v in m.items()})
      row["diverged"] = int(row["diverged_task"] >= 0)
      row.update({f"param_norm_{k}": v[s, t].item() for k, v in layer_norms.items()})
      for prefix, values in per_layer.items():
        row.update({f"{prefix}{i}": values[s, t, i].item() for i in range(values.shape[-1])})
      row.update({f"grad_norm_{k}": v[s, t].item() for k, v in grad_norms.items()})
      row.update({f"feature_sv{i}": singular[s, t, i].item()
                  for i in range(singular.shape[-1])})
      if parts > 1:
        row.update({f"preact_drift_part{j}": within[s, t, j].item() for j in range(parts)})
      rows.append(row)
  return rows


_NOT_SCALAR = ("layer_param_norm", "layer_grad_norm", "layer_dead_fraction",
               "layer_preact_drift", "layer_preact_mean_spread",
               "feature_singular_values", "preact_histogram", "within_task_drift",
               "within_task_histogram", "step_loss", "step_accuracy")
_PER_LAYER = {"layer_dead_fraction": "dead_fraction_layer",
              "layer_preact_drift": "preact_drift_layer",
              "layer_preact_mean_spread": "preact_mean_spread_layer"}


def step_rows(intervention: str, metrics, seeds: Sequence[int], steps_per_task: int,
              points: Sequence[dict] = ({},), first_task: int = 0) -> list[dict]:
  """steps.csv's rows: one per (run, task, logged step) from the ``step_loss``
  and ``step_accuracy`` of `engine.TaskMetrics` (axes [run, task, S / k]).

  With k = ``log_every_steps`` (S / k values per task of S = `steps_per_task`
  steps), the j-th value of task t is the mean over the task's steps
  ``jk + 1 .. (j + 1) k`` (counted from 1), and its row says where that window
  ends: ``task_step = (j + 1) k`` within the task and ``step = t S + (j + 1) k``
  from the run's start. Tasks are numbered from `first_task`; runs, seeds and
  grid points as in `metrics_to_rows`. No rows where the steps were not kept.
  """
  if metrics.step_loss is None:
    return []
  loss, accuracy = np.asarray(metrics.step_loss), np.asarray(metrics.step_accuracy)
  num_runs, num_tasks, per_task = loss.shape
  if len(seeds) * len(points) != num_runs:
    raise ValueError(f"{len(seeds)} seeds x {len(points)} grid points for {num_runs} runs")
  every = steps_per_task // per_task
  rows = []
  for s in range(num_runs):
    point = points[s // len(seeds)]
    for t in range(num_tasks):
      task = first_task + t
      for j in range(per_task):
        row = {"intervention": intervention, "seed": int(seeds[s % len(seeds)]), "task": task,
               "task_step": (j + 1) * every, "step": task * steps_per_task + (j + 1) * every}
        if point:
          row["hparams"] = grid_lib.label(point)
          row.update(point)
        row["train_loss"] = loss[s, t, j].item()
        row["train_accuracy"] = accuracy[s, t, j].item()
        rows.append(row)
  return rows


def histogram_arrays(condition_metrics: dict, edges) -> dict[str, np.ndarray]:
  """histograms.npz's arrays: ``edges`` and, per condition, the histograms of
  per-unit mean preactivations at task ends, axes [seed, task, layer, bin], and
  as ``<condition>/within_task`` after each of the K parts of every task, axes
  [seed, task, part, layer, bin]."""
  out = {"edges": np.asarray(edges, np.float32)}
  for name, metrics in condition_metrics.items():
    out[name] = np.asarray(metrics.preact_histogram)
    out[f"{name}/within_task"] = np.asarray(metrics.within_task_histogram)
  return out


def columns(rows: Iterable[dict], base: Sequence[str] = BASE_COLUMNS) -> list[str]:
  """The `base` columns, then every other key in order of first appearance."""
  cols = list(base)
  for row in rows:
    cols.extend(k for k in row if k not in cols)
  return cols


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _atomic_write(path: str, content: str | bytes) -> None:
  """Writes `content` to a temporary file beside `path`, then renames it over
  `path`, with the permissions a plain ``open(path, "w")`` gives (0666 less
  the umask; `tempfile.mkstemp` makes 0600)."""
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
  try:
    binary = isinstance(content, bytes)
    with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
      f.write(content)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_csv(path: str, rows: Sequence[dict], base: Sequence[str] = BASE_COLUMNS) -> None:
  """Writes `rows` to `path` atomically, the `base` columns first; missing
  values are left empty."""
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=columns(rows, base), restval="",
                          lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  _atomic_write(path, buf.getvalue())


def write_npz(path: str, arrays: dict) -> None:
  """Writes numpy `arrays` to `path` (``np.savez``) atomically."""
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  _atomic_write(path, buf.getvalue())


def _leaf_names(metrics) -> tuple[list[str], Any]:
  import jax  # pylint: disable=g-import-not-at-top  (reading results needs no JAX)
  flat, treedef = jax.tree_util.tree_flatten_with_path(metrics)
  return [jax.tree_util.keystr(p, simple=True, separator="/") for p, _ in flat], treedef


def write_share(path: str, runs: np.ndarray, metrics) -> None:
  """One process's share of a multi-process job as an npz: ``runs`` (which
  runs of the job its rows are) and every leaf of `metrics` by its pytree path
  (``train_loss``, ``layer_param_norm/Dense_0``, ...)."""
  names, _ = _leaf_names(metrics)
  import jax  # pylint: disable=g-import-not-at-top
  arrays = dict(zip(names, jax.tree.leaves(metrics)))
  arrays["runs"] = np.asarray(runs)
  write_npz(path, {k: np.asarray(v) for k, v in arrays.items()})


def merge_shares(like, paths: Sequence[str], num_runs: int):
  """The whole job's metrics, rows in run order, from the `write_share` files
  `paths` of every process; `like` gives the pytree structure (any one
  process's metrics). Raises ValueError if some run is in no file."""
  names, treedef = _leaf_names(like)
  merged = [None] * len(names)
  covered = np.zeros(num_runs, bool)
  for path in paths:
    with np.load(path) as share:
      runs = share["runs"]
      for i, name in enumerate(names):
        values = share[name]
        if merged[i] is None:
          merged[i] = np.zeros((num_runs,) + values.shape[1:], values.dtype)
        merged[i][runs] = values
      covered[runs] = True
  if not covered.all():
    raise ValueError(f"runs {np.flatnonzero(~covered).tolist()} are in none of {list(paths)}")
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree_util.tree_unflatten(treedef, merged)


def write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` atomically (a figure, say)."""
  _atomic_write(path, data)


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` as indented JSON to `path` atomically."""
  _atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_csv(path: str) -> list[dict]:
  """Reads a metrics.csv (or steps.csv) back, numbers as floats (ints for
  seed, task, task_step and step); empty values stay ``""``."""
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  out = []
  for row in rows:
    parsed = {}
    for k, v in row.items():
      if k in ("intervention", "hparams") or v == "":
        parsed[k] = v
      elif k in INT_COLUMNS:
        parsed[k] = int(v)
      else:
        parsed[k] = float(v)
    out.append(parsed)
  return out


def load(workdir: str, table: str = "metrics"):
  """A workdir's results as one tidy table, one row per observation.

  ``table="metrics"``: metrics.csv, a row per (intervention, grid point, seed,
  task); ``table="steps"``: steps.csv, a row per (intervention, grid point,
  seed, logged step). For a study's folder (one holding ``cells/<cell>/``
  workdirs and no table of its own), every cell's rows, each with a ``cell``
  column naming it, cells in name order.

  Returns a ``pandas.DataFrame`` when pandas is installed (the ``pandas``
  extra), else a list of dicts; either way numbers are floats (ints for seed,
  task, task_step and step), text columns strings, and a value the run did
  not measure (an empty cell) NaN. Raises FileNotFoundError naming the file
  if neither the workdir nor any cell has it.
  """
  if table not in TABLES:
    raise ValueError(f"table {table!r}: choose one of {', '.join(TABLES)}")
  name = TABLES[table]
  path = os.path.join(workdir, name)
  if os.path.exists(path):
    rows = _tidy(read_csv(path))
  else:
    cells_dir = os.path.join(workdir, "cells")
    cells = sorted(c for c in (os.listdir(cells_dir) if os.path.isdir(cells_dir) else [])
                   if os.path.exists(os.path.join(cells_dir, c, name)))
    if not cells:
      raise FileNotFoundError(f"no {name} in {workdir} (nor in a study's cells/*/)")
    rows = [{"cell": cell, **row} for cell in cells
            for row in _tidy(read_csv(os.path.join(cells_dir, cell, name)))]
  try:
    import pandas as pd  # pylint: disable=g-import-not-at-top
  except ImportError:
    return rows
  return pd.DataFrame(rows, columns=columns(rows, ()))


def _tidy(rows: list[dict]) -> list[dict]:
  """`read_csv` rows with an empty number as NaN."""
  return [{k: (math.nan if v == "" and k not in TEXT_COLUMNS else v) for k, v in row.items()}
          for row in rows]


def condition(row: dict) -> str:
  """The row's intervention, with its grid point when there is one (`grid.condition`)."""
  return grid_lib.condition(row["intervention"], row.get("hparams", ""))


def per_seed_curves(rows: Sequence[dict], intervention: str, key: str) -> np.ndarray:
  """``[seeds, tasks]`` array of column `key` for one condition (see `condition`)."""
  sel = [r for r in rows if condition(r) == intervention]
  seeds = sorted({r["seed"] for r in sel})
  tasks = sorted({r["task"] for r in sel})
  out = np.full((len(seeds), len(tasks)), np.nan)
  for r in sel:
    out[seeds.index(r["seed"]), tasks.index(r["task"])] = r[key]
  return out


def diverged_seeds(rows: Sequence[dict], intervention: str) -> np.ndarray:
  """``[seeds]`` bools: which seeds of `intervention` diverged at some point."""
  return per_seed_curves(rows, intervention, "diverged_task")[:, -1] >= 0


def healthy_curves(rows: Sequence[dict], intervention: str, key: str) -> np.ndarray:
  """`per_seed_curves` restricted to the seeds that never diverged."""
  return per_seed_curves(rows, intervention, key)[~diverged_seeds(rows, intervention)]


def _mean(values: np.ndarray) -> float | None:
  """Mean as a float, or None (JSON null) when there is nothing to average or it
  is not finite (accuracy of a regression task)."""
  mean = float(values.mean()) if values.size else None
  return mean if mean is not None and math.isfinite(mean) else None


def _std(values: np.ndarray) -> float | None:
  """Standard deviation over seeds (ddof 0), or None where `_mean` is None."""
  return _mean(np.atleast_1d(values.std())) if values.size else None


def summarize(rows: Sequence[dict], interventions: Sequence[str]) -> dict:
  """summary.json's content: per condition (an intervention, or with a grid
  ``"<intervention> [<grid point>]"``), means over seeds of

  * first_task_accuracy: train_accuracy on task 0;
  * final_task_accuracy: train_accuracy on the last task;
  * plasticity_loss: first_task_accuracy - mean train_accuracy over the last
    ``k = min(3, T - 1)`` tasks of T (computed per seed, then averaged): the
    last three tasks, or with 2-3 tasks every task after task 0, which the
    window never includes; null for a 1-task run. ``plasticity_loss_tasks``
    says k;
  * dead_fraction_final, param_norm_final: on the last task;
  * first_task_loss, final_task_loss: train_loss on task 0 and the last task
    (the measure for regression, whose accuracy is undefined: null);

  * first_task_test_accuracy, final_task_test_accuracy, first_task_test_loss,
    final_task_test_loss: test_accuracy and test_loss (held-out examples) on
    task 0 and the last task (null where undefined or not measured);
  * with a final fit (``probes.final_fit_steps``): final_fit_accuracy (the
    trained network on the fresh task), final_fit_accuracy_new_network (a
    fresh network on it), final_fit_gap (the second minus the first: the
    plasticity the sequence cost, on one yardstick for every condition),
    final_fit_loss and final_fit_loss_new_network;

  each of the first five, the held-out and the final-fit values with its spread over
  seeds ``<key>_std``, the
  standard deviation ``sqrt(mean_s (v_s - mean v)^2)`` (ddof 0: how far these
  seeds lie apart, not a standard error), plus ``num_seeds`` and the seeds that
  diverged (``num_diverged``, and ``diverged``: seed, task, step each). Means
  and spreads exclude diverged seeds (``means_exclude_diverged``); they are
  null when every seed diverged.
  """
  out = {}
  for name in interventions:
    div_task = per_seed_curves(rows, name, "diverged_task")[:, -1]
    div_step = per_seed_curves(rows, name, "diverged_step")[:, -1]
    seeds = sorted({r["seed"] for r in rows if condition(r) == name})
    ok = ~diverged_seeds(rows, name)
    curve = lambda key, name=name: healthy_curves(rows, name, key)
    acc = curve("train_accuracy")
    window = min(LAST_TASKS, acc.shape[1] - 1)
    loss = (acc[:, 0] - acc[:, -window:].mean(axis=1) if window
            else np.full(acc.shape[0], np.nan))
    per_seed = {
        "first_task_accuracy": acc[:, 0],
        "final_task_accuracy": acc[:, -1],
        "plasticity_loss": loss,
        "dead_fraction_final": curve("dead_fraction")[:, -1],
        "param_norm_final": curve("param_norm")[:, -1],
    }
    assert tuple(per_seed) == SUMMARY_KEYS
    held_out = {}
    if rows and "test_accuracy" in rows[0]:
      for key in ("test_accuracy", "test_loss"):
        values = curve(key)
        held_out[f"first_task_{key}"], held_out[f"final_task_{key}"] = (
            values[:, 0], values[:, -1])
    if rows and "final_fit_accuracy" in rows[0] and np.isfinite(
        curve("final_fit_loss")[:, -1]).any():
      final = {key: curve(key)[:, -1] for key in FINAL_FIT_KEYS[:2] + FINAL_FIT_KEYS[3:]}
      final["final_fit_gap"] = (final["final_fit_accuracy_new_network"]
                                - final["final_fit_accuracy"])
      final["final_fit_loss"] = curve("final_fit_loss")[:, -1]
      final["final_fit_loss_new_network"] = curve("final_fit_loss_new_network")[:, -1]
      held_out.update(final)
    out[name] = {
        **{key: _mean(values) for key, values in per_seed.items()},
        "first_task_loss": _mean(curve("train_loss")[:, 0]),
        "final_task_loss": _mean(curve("train_loss")[:, -1]),
        **{key + STD_SUFFIX: _std(values) for key, values in per_seed.items()},
        **{key: _mean(values) for key, values in held_out.items()},
        **{key + STD_SUFFIX: _std(values) for key, values in held_out.items()},
        "plasticity_loss_tasks": int(window),
        "num_seeds": len(seeds),
        "num_tasks": int(acc.shape[1]),
        "num_diverged": int((~ok).sum()),
        "means_exclude_diverged": True,
        "diverged": [{"seed": seeds[i], "task": int(div_task[i]), "step": int(div_step[i])}
                     for i in np.flatnonzero(~ok)],
    }
  return {"interventions": out}


def format_table(summary: dict) -> str:
  """A fixed-width table of summary.json for the terminal: each value as its
  mean over seeds ``±`` its standard deviation over them (the mean alone where
  fewer than two seeds are averaged)."""
  header = ("intervention", "first_acc", "final_acc", "plast_loss", "dead_final",
            "norm_final", "diverged")
  width = max([28] + [len(name) + 2 for name in summary["interventions"]])
  lines = [f"{header[0]:<{width}}" + "".join(f"{h:>14}" for h in header[1:])]
  for name, s in summary["interventions"].items():
    cells = [_cell(s[key], s.get(key + STD_SUFFIX) if _has_spread(s) else None)
             for key in SUMMARY_KEYS]
    lines.append(f"{name:<{width}}" + "".join(f"{c:>14}" for c in cells)
                 + f"{s['num_diverged']:>11d}/{s['num_seeds']}")
  if any(_has_spread(s) for s in summary["interventions"].values()):
    lines.append("mean ± standard deviation over seeds")
  if any(s["num_diverged"] for s in summary["interventions"].values()):
    lines.append("means exclude diverged seeds")
  return "\n".join(lines)


def _has_spread(s: dict) -> bool:
  """Whether a condition's means average two or more seeds."""
  return s["num_seeds"] - s["num_diverged"] >= 2


def _cell(mean: float | None, std: float | None) -> str:
  if mean is None or not math.isfinite(mean):
    return "n/a"
  return f"{mean:.3f}" if std is None else f"{mean:.3f}±{std:.3f}"
