"""Study reports: ``report.md`` and its figures, read from workdirs alone.

A *study workdir* holds ``study.json`` (what the study tests, how it was run,
its cells and swept fields) and ``cells/<cell>/``, each cell a workdir of
``experiments.synthetic`` (``config.json``, ``metrics.csv``,
``summary.json``). A plain synthetic workdir (no ``study.json``) reads as a
study of one cell named after its config. A cell whose folder or
``summary.json`` is not there yet (a study still running) is listed as
missing; the report is built from the cells that are there.

Everything is computed from ``metrics.csv``, per seed, over the seeds that
never diverged (a seed is diverged when its ``diverged_task`` on the last task
is ``>= 0``, as in `plastix.results`). For one condition of one cell, with
seeds s and tasks t = 0..T-1:

* plasticity loss of seed s (`plasticity_loss`): on classification
  ``a_s[0] - mean_{t >= T-k} a_s[t]`` with a = train accuracy and
  ``k = min(3, T - 1)`` (summary.json's ``plasticity_loss``); on regression,
  whose accuracy is undefined, the same on the train loss with the sign
  turned, ``mean_{t >= T-k} l_s[t] - l_s[0]``, so higher is a larger loss of
  plasticity either way;
* final-fit gap of seed s (with ``probes.final_fit_steps``): a fresh
  network's accuracy on the final fit minus the trained network's (on
  regression the trained network's loss minus the fresh one's);
* an indicator of seed s (`last_measured`): its value at the last task where
  it is finite (expensive probes run every few tasks);
* mean and spread over seeds (`seed_stats`): ``mean_s v_s`` and the standard
  deviation ``sqrt(mean_s (v_s - mean v)^2)`` (ddof 0).

The mechanism table compares each condition's indicator means with the
baseline of the same cell and grid point, and marks a change as moved when it
is larger than the seeds' spread (`moved`, `MOVED_RULE`).

An *RL cell* (`RLCell`: its config.json has an ``agent``, or its metrics.csv
has ``episode_return`` and no ``task``; a workdir of ``experiments.rl``) has a
metrics.csv row per (condition, seed, evaluation window). Its seeds are
healthy when ``diverged_step < 0`` in every window (`rl_diverged`, as
`plastix.rl.results.summarize`); with R_s(w) seed s's mean episode return in
window w (NaN: no episode finished) and W windows:

* final return of seed s: ``R_s(W-1)``;
* AUC return of seed s: ``mean_w R_s(w)`` over the windows where it is finite
  (summary.json's ``final_return`` and ``auc_return`` are the means over
  healthy seeds of these two);
* a probe of seed s (`tail_mean`): its mean over the last ``ceil(W / 3)``
  windows (the run's last third), over the windows where it was measured.

The RL mechanism table compares AUC return and each probe that ran with the
baseline of the same cell and grid point by the same rule (`moved`).

Nothing here imports the engine: the report needs numpy, matplotlib and the
files.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import os
import re
from typing import Iterable, Mapping, NamedTuple, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
import numpy as np

from plastix import grid as grid_lib
from plastix import plotting
from plastix import results
from plastix.rl import plotting as rl_plotting
from plastix.rl import results as rl_results

STUDY_FILE = "study.json"
REPORT_FILE = "report.md"
BASELINE = "baseline"

# The mechanism indicators the table and the scatter plots compare: column ->
# how the report names it.
INDICATORS = (
    ("dead_fraction", "dead units"),
    ("linearized_fraction", "linearized units"),
    ("param_norm", "parameter norm"),
    ("sharpness", "sharpness"),
    ("effective_rank", "feature rank"),
    ("ntk_diagonal_share", "NTK diagonal share"),
)
MOVED_RULE = ("moved: |mean(intervention) − mean(baseline)| > "
              "max(std(intervention), std(baseline)), std over seeds (ddof 0)")
MIN_SEEDS_TO_MOVE = 2
REQUIRED_COLUMNS = ("intervention", "seed", "task")
RL_REQUIRED_COLUMNS = ("intervention", "seed", "env_steps", "episode_return")
# The probes the RL mechanism table compares, in its column order: column ->
# how the report names it.
RL_PROBES = (
    ("dead_fraction", "dead units"),
    ("dormant_fraction", "dormant units"),
    ("effective_rank", "feature rank"),
    ("srank", "feature srank"),
    ("param_norm", "parameter norm"),
    ("q_mean_abs", "Q magnitude"),
    ("td_error", "TD error"),
    ("sharpness", "sharpness"),
)
# A probe's value per seed is its mean over the last ceil(W / TAIL_PARTS) windows.
TAIL_PARTS = 3


class ReportError(ValueError):
  """A workdir cannot be read (the message names the path)."""


# --------------------------------------------------------------------------
# What a cell measures.


@dataclasses.dataclass(frozen=True)
class Measure:
  """What plasticity loss is read from: a train column, its held-out twin and
  the final fit's columns (trained network, fresh network)."""
  name: str
  column: str
  test_column: str
  higher_is_better: bool
  final_fit: tuple[str, str]


ACCURACY = Measure("accuracy", "train_accuracy", "test_accuracy", True,
                   ("final_fit_accuracy", "final_fit_accuracy_new_network"))
LOSS = Measure("train loss", "train_loss", "test_loss", False,
               ("final_fit_loss", "final_fit_loss_new_network"))


def num_classes(dataset: str) -> int:
  """Classes of a classification dataset: 100 for cifar100, 10 for every other."""
  return 100 if dataset == "cifar100" else 10


# --------------------------------------------------------------------------
# Loading workdirs.


@dataclasses.dataclass(frozen=True, eq=False)
class Cell:
  """One finished cell: its metrics.csv rows (NaN where a probe did not run),
  summary.json and config.json."""
  name: str
  path: str
  architecture: str
  overrides: Mapping[str, object]
  config: Mapping[str, object]
  rows: Sequence[dict]
  summary: Mapping[str, object]
  wall_time_s: float | None = None

  @property
  def conditions(self) -> list[str]:
    """Its conditions in summary.json's order (interventions, then grid
    points), else in metrics.csv's."""
    return list(self.summary.get("interventions") or self.by_condition)

  @functools.cached_property
  def by_condition(self) -> dict[str, list[dict]]:
    """Its rows grouped by condition (`results.condition`), in file order."""
    groups: dict[str, list[dict]] = {}
    for row in self.rows:
      groups.setdefault(results.condition(row), []).append(row)
    return groups

  @functools.cached_property
  def measure(self) -> Measure:
    """`ACCURACY`, or `LOSS` for a regression (no finite train accuracy)."""
    accuracy = [r.get("train_accuracy", math.nan) for r in self.rows]
    return ACCURACY if np.isfinite(np.asarray(accuracy, float)).any() else LOSS

  @property
  def chance(self) -> float | None:
    """Chance accuracy ``1 / classes``; None for a regression."""
    if self.measure is not ACCURACY:
      return None
    return 1.0 / num_classes(str(self.config.get("dataset", "")))


@dataclasses.dataclass(frozen=True, eq=False)
class RLCell:
  """One finished RL cell: its metrics.csv rows (one per condition, seed and
  evaluation window; NaN where a probe did not run), summary.json and
  config.json."""
  name: str
  path: str
  architecture: str
  overrides: Mapping[str, object]
  config: Mapping[str, object]
  rows: Sequence[dict]
  summary: Mapping[str, object]
  wall_time_s: float | None = None

  @property
  def agent(self) -> str:
    return str(self.config.get("agent", ""))

  @property
  def games(self) -> list[str]:
    """The games of ``env_name`` (several, ``+``-joined, for a sequence)."""
    return [g for g in str(self.config.get("env_name", "")).split("+") if g]

  @property
  def conditions(self) -> list[str]:
    """Its conditions in summary.json's order (it maps each to its numbers),
    else in metrics.csv's; only those with rows."""
    listed = [k for k, v in self.summary.items() if isinstance(v, Mapping)]
    return [c for c in listed if c in self.by_condition] or list(self.by_condition)

  @functools.cached_property
  def by_condition(self) -> dict[str, list[dict]]:
    """Its rows grouped by condition (`results.condition`), in file order."""
    groups: dict[str, list[dict]] = {}
    for row in self.rows:
      groups.setdefault(results.condition(row), []).append(row)
    return groups


@dataclasses.dataclass(frozen=True)
class MissingCell:
  """A cell the study lists whose results are not (yet) there."""
  name: str
  reason: str


@dataclasses.dataclass(frozen=True)
class Study:
  """A study workdir: what study.json says and its cells."""
  path: str
  name: str
  title: str
  scale: str | None
  machine: str | None
  command: str | None
  description: str
  sweeps: tuple[str, ...]
  wall_time_s: float | None
  cells: tuple[Cell, ...]
  missing: tuple[MissingCell, ...]
  rl_cells: tuple[RLCell, ...] = ()


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      out = json.load(f)
  except (OSError, ValueError) as e:
    raise ReportError(f"{path!r} cannot be read ({e})") from None
  if not isinstance(out, dict):
    raise ReportError(f"{path!r} does not hold a JSON object")
  return out


def _require_columns(path: str, rows: Sequence[dict], required: Sequence[str]) -> None:
  missing = [k for k in required if rows and k not in rows[0]]
  if missing:
    raise ReportError(f"{path!r} has no column {', '.join(missing)}")


def read_rows(path: str, required: Sequence[str] = REQUIRED_COLUMNS) -> list[dict]:
  """metrics.csv as `results.read_csv` reads it, empty values as NaN; raises
  `ReportError` when it lacks a `required` column."""
  try:
    rows = results.read_csv(path)
  except (OSError, ValueError, csv.Error) as e:
    raise ReportError(f"{path!r} cannot be read ({e})") from None
  _require_columns(path, rows, required)
  keep = ("intervention", "hparams")
  return [{k: (math.nan if v == "" and k not in keep else v) for k, v in r.items()}
          for r in rows]


def _architecture(config: Mapping) -> str:
  model = config.get("model", {})
  return str(model.get("name", "")) if isinstance(model, Mapping) else ""


def is_rl(config: Mapping, rows: Sequence[dict]) -> bool:
  """Whether a cell is an RL cell: its config has an ``agent``, or (without a
  config) its metrics.csv has ``episode_return`` and no ``task``."""
  if "agent" in config:
    return True
  return bool(rows) and "episode_return" in rows[0] and "task" not in rows[0]


def _load_cell(path: str, name: str, entry: Mapping) -> Cell | RLCell | MissingCell:
  """The cell in folder `path` (an `RLCell` when `is_rl`), or why it is missing."""
  if not os.path.isdir(path):
    return MissingCell(name, "no folder yet")
  for needed in ("summary.json", "metrics.csv"):
    if not os.path.isfile(os.path.join(path, needed)):
      return MissingCell(name, f"not finished: no {needed} yet")
  config_path = os.path.join(path, "config.json")
  config = _read_json(config_path) if os.path.isfile(config_path) else {}
  metrics_path = os.path.join(path, "metrics.csv")
  rows = read_rows(metrics_path, required=())
  kind = RLCell if is_rl(config, rows) else Cell
  _require_columns(metrics_path, rows,
                   RL_REQUIRED_COLUMNS if kind is RLCell else REQUIRED_COLUMNS)
  return kind(name=name, path=path,
              architecture=str(entry.get("architecture") or _architecture(config)),
              overrides=dict(entry.get("overrides") or {}), config=config, rows=rows,
              summary=_read_json(os.path.join(path, "summary.json")),
              wall_time_s=entry.get("wall_time_s"))


def load_study(path: str) -> Study:
  """Reads a study workdir (``study.json`` and ``cells/``) or a plain synthetic
  workdir (``metrics.csv`` directly inside: one cell named after
  ``config.json``'s ``name``). Raises `ReportError` naming the path when it is
  neither or a file cannot be read."""
  if not os.path.isdir(path):
    raise ReportError(f"workdir {path!r} does not exist")
  study_file = os.path.join(path, STUDY_FILE)
  if os.path.isfile(study_file):
    record = _read_json(study_file)
    entries = record.get("cells", [])
    if not isinstance(entries, list) or not all(
        isinstance(c, dict) and isinstance(c.get("name"), str) for c in entries):
      raise ReportError(f"{study_file!r}: 'cells' must be a list of objects with a 'name'")
    loaded = [_load_cell(os.path.join(path, c.get("dir") or os.path.join("cells", c["name"])),
                         c["name"], c) for c in entries]
    name = str(record.get("study", os.path.basename(os.path.normpath(path))))
    return Study(path=path, name=name, title=str(record.get("title") or name),
                 scale=record.get("scale"), machine=record.get("machine"),
                 command=record.get("command"),
                 description=str(record.get("description") or ""),
                 sweeps=tuple(record.get("sweeps") or ()),
                 wall_time_s=record.get("wall_time_s"),
                 cells=tuple(c for c in loaded if isinstance(c, Cell)),
                 missing=tuple(c for c in loaded if isinstance(c, MissingCell)),
                 rl_cells=tuple(c for c in loaded if isinstance(c, RLCell)))
  if os.path.isfile(os.path.join(path, "metrics.csv")):
    config_path = os.path.join(path, "config.json")
    config = _read_json(config_path) if os.path.isfile(config_path) else {}
    name = str(config.get("name") or os.path.basename(os.path.normpath(path)))
    info_path = os.path.join(path, "run_info.json")
    info = _read_json(info_path) if os.path.isfile(info_path) else {}
    argv = info.get("argv")
    cell = _load_cell(path, name, {})
    return Study(path=path, name=name, title=name, scale=None, machine=None,
                 command=" ".join(argv) if isinstance(argv, list) else None,
                 description="", sweeps=(), wall_time_s=None,
                 cells=(cell,) if isinstance(cell, Cell) else (),
                 missing=(cell,) if isinstance(cell, MissingCell) else (),
                 rl_cells=(cell,) if isinstance(cell, RLCell) else ())
  raise ReportError(f"workdir {path!r} holds neither {STUDY_FILE} nor metrics.csv")


# --------------------------------------------------------------------------
# Per-seed quantities.


def plasticity_loss(curves: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
  """Per-seed plasticity loss of a ``[seeds, tasks]`` array of end-of-task values.

  ``v[:, 0] - mean(v[:, T-k:], axis=1)`` with ``k = min(3, T - 1)`` (task 0
  never in the window), as `results.summarize` defines it on accuracy; with
  ``higher_is_better=False`` (a loss) the sign is turned. NaN for one task.
  """
  curves = np.asarray(curves, float)
  window = min(results.LAST_TASKS, curves.shape[1] - 1)
  if window < 1:
    return np.full(curves.shape[0], np.nan)
  drop = curves[:, 0] - curves[:, -window:].mean(axis=1)
  return drop if higher_is_better else -drop


def last_measured(curves: np.ndarray) -> np.ndarray:
  """Per seed, the value at the last task where ``[seeds, tasks]`` `curves` is
  finite; NaN for a seed never measured."""
  curves = np.asarray(curves, float)
  out = np.full(curves.shape[0], np.nan)
  for s, curve in enumerate(curves):
    finite = np.flatnonzero(np.isfinite(curve))
    if finite.size:
      out[s] = curve[finite[-1]]
  return out


@dataclasses.dataclass(frozen=True)
class Stats:
  """Mean and standard deviation (ddof 0) over `n` seeds' finite values."""
  mean: float
  std: float
  n: int


def seed_stats(values: Iterable[float]) -> Stats:
  """``mean_s v_s`` and ``sqrt(mean_s (v_s - mean v)^2)`` over the finite
  values; NaN for none."""
  v = np.asarray(list(values), float)
  v = v[np.isfinite(v)]
  if not v.size:
    return Stats(math.nan, math.nan, 0)
  return Stats(float(v.mean()), float(v.std()), int(v.size))


def moved(mean_a: float, std_a: float, mean_b: float, std_b: float,
          n_a: int, n_b: int) -> bool:
  """Whether condition a's mean moved away from condition b's beyond their seeds' spread.

  ``|mean_a - mean_b| > max(std_a, std_b)`` (stds over seeds, ddof 0); False
  when either side has fewer than 2 seeds (no spread to compare with) or a
  value is not finite.
  """
  if min(n_a, n_b) < MIN_SEEDS_TO_MOVE:
    return False
  if not all(math.isfinite(x) for x in (mean_a, std_a, mean_b, std_b)):
    return False
  return abs(mean_a - mean_b) > max(std_a, std_b)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
  """Pearson correlation over the pairs where both are finite,
  ``sum (x - mean x)(y - mean y) / sqrt(sum (x - mean x)^2 sum (y - mean y)^2)``;
  NaN for fewer than 2 pairs or a constant side."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  keep = np.isfinite(x) & np.isfinite(y)
  if keep.sum() < 2:
    return math.nan
  x, y = x[keep] - x[keep].mean(), y[keep] - y[keep].mean()
  denom = math.sqrt(float((x * x).sum() * (y * y).sum()))
  return float((x * y).sum() / denom) if denom > 0 else math.nan


def parse_point(label: str) -> dict[str, float]:
  """A grid label (`grid.label`: ``"a=0.1;b=1"``) back to ``{field: value}``."""
  out = {}
  for entry in filter(None, label.split(";")):
    field, _, value = entry.partition("=")
    out[field] = float(value)
  return out


@dataclasses.dataclass(frozen=True)
class ConditionSeeds:
  """One condition of one cell, per seed that never diverged.

  ``indicators`` holds, per `INDICATORS` column the cell has, each healthy
  seed's `last_measured` value; ``final_fit`` the trained and fresh networks'
  final-fit values and their gap, when the cell ran a final fit.
  """
  cell: str
  condition: str
  intervention: str
  grid_label: str
  measure: Measure
  num_seeds: int
  num_diverged: int
  plasticity_loss: np.ndarray
  indicators: Mapping[str, np.ndarray]
  final_fit: Mapping[str, np.ndarray]

  @property
  def point(self) -> dict[str, float]:
    """The condition's grid point (``{}`` without a grid)."""
    return parse_point(self.grid_label)

  @property
  def all_diverged(self) -> bool:
    return self.num_seeds > 0 and self.num_diverged == self.num_seeds


def healthy(rows: Sequence[dict], name: str, key: str) -> np.ndarray:
  """``[healthy seeds, tasks]`` of column `key` for condition `name` of `rows`
  (`results.healthy_curves`; every seed where there is no ``diverged_task``)."""
  if rows and "diverged_task" in rows[0]:
    return results.healthy_curves(rows, name, key)
  return results.per_seed_curves(rows, name, key)


def condition_seeds(cell: Cell) -> list[ConditionSeeds]:
  """Every condition of `cell` (summary.json's order), per healthy seed."""
  measure = cell.measure
  columns = cell.rows[0] if cell.rows else {}
  out = []
  for name in cell.conditions:
    sel = cell.by_condition.get(name)
    if not sel:
      continue
    seeds = {r["seed"] for r in sel}
    curves = healthy(sel, name, measure.column)
    final_fit = {}
    if all(k in columns for k in measure.final_fit):
      trained, fresh = (last_measured(healthy(sel, name, k)) for k in measure.final_fit)
      if np.isfinite(trained).any():
        gap = fresh - trained if measure.higher_is_better else trained - fresh
        final_fit = {"trained": trained, "fresh": fresh, "gap": gap}
    out.append(ConditionSeeds(
        cell=cell.name, condition=name, intervention=sel[0]["intervention"],
        grid_label=sel[0].get("hparams", "") or "", measure=measure,
        num_seeds=len(seeds), num_diverged=len(seeds) - curves.shape[0],
        plasticity_loss=plasticity_loss(curves, measure.higher_is_better),
        indicators={k: last_measured(healthy(sel, name, k))
                    for k, _ in INDICATORS if k in columns},
        final_fit=final_fit))
  return out


def ran_indicators(conditions: Iterable[ConditionSeeds]) -> list[str]:
  """The `INDICATORS` with a finite value for some seed (a probe that never
  ran is NaN everywhere and is left out)."""
  conditions = list(conditions)
  return [k for k, _ in INDICATORS
          if any(np.isfinite(c.indicators.get(k, np.array([]))).any() for c in conditions)]


# --------------------------------------------------------------------------
# The mechanism table.


@dataclasses.dataclass(frozen=True)
class Change:
  """An indicator's mean in a condition against the baseline's: ``change =
  mean - baseline.mean``, and whether it `moved`."""
  stats: Stats
  change: float
  moved: bool


@dataclasses.dataclass(frozen=True)
class TableRow:
  """One condition's row: plasticity loss, final fit, and per indicator its
  stats (the baseline's own row) or its `Change` (None without a baseline)."""
  condition: ConditionSeeds
  plasticity_loss: Stats
  final_fit: Mapping[str, Stats]
  baseline: str | None
  indicators: Mapping[str, Stats | Change | None]


@dataclasses.dataclass(frozen=True)
class MechanismTable:
  """One cell's table; `no_baseline` lists the grid labels without a baseline,
  `diverged_baseline` those whose baseline's seeds all diverged."""
  cell: str
  indicators: tuple[str, ...]
  has_final_fit: bool
  rows: tuple[TableRow, ...]
  no_baseline: tuple[str, ...]
  diverged_baseline: tuple[str, ...] = ()


def _against_baseline(conditions, columns: Sequence[str], stats: dict):
  """For each condition of one cell, ``(condition, baseline name or None,
  {column: its SeedStats (the baseline's own row) | Change | None})``, with
  the grid labels that have no baseline and those whose baseline's seeds all
  diverged: the comparison both mechanism tables make. `stats` maps
  ``condition -> column -> SeedStats``."""
  by_name = {c.condition: c for c in conditions}
  compared, no_baseline, diverged_baseline = [], [], []
  for c in conditions:
    base_name = grid_lib.condition(BASELINE, c.grid_label)
    base = by_name.get(base_name)
    if base is None and c.grid_label not in no_baseline:
      no_baseline.append(c.grid_label)
    if base is c and c.all_diverged:
      diverged_baseline.append(c.grid_label)
    changes = {}
    for k in columns:
      mine = stats[c.condition][k]
      if c is base:
        changes[k] = mine
      elif base is None or base.all_diverged or c.all_diverged:
        changes[k] = None
      else:
        ref = stats[base_name][k]
        changes[k] = Change(mine, mine.mean - ref.mean,
                            moved(mine.mean, mine.std, ref.mean, ref.std, mine.n, ref.n))
    compared.append((c, base_name if base is not None else None, changes))
  return compared, no_baseline, diverged_baseline


def mechanism_table(conditions: Sequence[ConditionSeeds]) -> MechanismTable:
  """Per condition of one cell, its plasticity loss and each indicator that
  ran, compared with the baseline condition of the same grid point
  (``"baseline"``, or ``"baseline [<grid label>]"``): the change of the
  indicator's mean over seeds and whether it `moved`."""
  indicators = tuple(ran_indicators(conditions))
  stats = {c.condition: {k: seed_stats(c.indicators[k]) for k in indicators}
           for c in conditions}
  compared, no_baseline, diverged_baseline = _against_baseline(conditions, indicators, stats)
  rows = [TableRow(condition=c, plasticity_loss=seed_stats(c.plasticity_loss),
                   final_fit={k: seed_stats(v) for k, v in c.final_fit.items()},
                   baseline=base_name, indicators=cells)
          for c, base_name, cells in compared]
  return MechanismTable(cell=conditions[0].cell if conditions else "",
                        indicators=indicators,
                        has_final_fit=any(r.final_fit for r in rows),
                        rows=tuple(rows), no_baseline=tuple(no_baseline),
                        diverged_baseline=tuple(diverged_baseline))


def _num(x: float) -> str:
  return "n/a" if not math.isfinite(x) else f"{x:.3g}"


def _mean_std(s: Stats) -> str:
  if s.n == 0:
    return "n/a"
  return _num(s.mean) if s.n < 2 else f"{_num(s.mean)} ± {_num(s.std)}"


def format_change(change: Change) -> str:
  """``+0.31`` or, when it moved, ``**+0.31 ↑**`` (``↓`` for a decrease)."""
  if not math.isfinite(change.change):
    return "n/a"
  text = f"{change.change + 0.0:+.3g}"  # + 0.0: no "-0"
  if change.moved:
    return f"**{text} {'↑' if change.change > 0 else '↓'}**"
  return text


def format_mechanism_table(table: MechanismTable) -> str:
  """The table as markdown: one row per condition."""
  names = dict(INDICATORS)
  header = ["condition", "seeds", "plasticity loss"]
  if table.has_final_fit:
    header += ["final fit (trained)", "final fit (fresh)", "final fit gap"]
  header += [f"Δ {names[k]}" for k in table.indicators]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in table.rows:
    c = row.condition
    seeds = f"{c.num_seeds}" + (f" ({c.num_diverged} diverged)" if c.num_diverged else "")
    if c.all_diverged:
      cells = [f"`{c.condition}`", seeds, "diverged"] + [""] * (len(header) - 3)
    else:
      cells = [f"`{c.condition}`", seeds, _mean_std(row.plasticity_loss)]
      if table.has_final_fit:
        cells += [_mean_std(row.final_fit[k]) if k in row.final_fit else ""
                  for k in ("trained", "fresh", "gap")]
      for k in table.indicators:
        value = row.indicators[k]
        if isinstance(value, Stats):
          cells.append(f"*{_mean_std(value)}*")
        elif isinstance(value, Change):
          cells.append(format_change(value))
        else:
          cells.append("")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


# --------------------------------------------------------------------------
# RL cells: per-seed returns and probes, and their mechanism table.


def tail_windows(num_windows: int) -> int:
  """How many of `num_windows` windows make the run's last third:
  ``ceil(W / TAIL_PARTS)`` (at least one window of a run that has any)."""
  return -(-num_windows // TAIL_PARTS)


def tail_mean(curves: np.ndarray) -> np.ndarray:
  """Per seed, the mean of ``[seeds, W]`` `curves` over its last
  `tail_windows` (W) windows, over the windows where it is finite (a probe
  measured every few windows); NaN for a seed with none there."""
  curves = np.asarray(curves, float)
  tail = curves[:, curves.shape[1] - tail_windows(curves.shape[1]):]
  out = np.full(curves.shape[0], np.nan)
  for s, values in enumerate(tail):
    values = values[np.isfinite(values)]
    if values.size:
      out[s] = values.mean()
  return out


def return_auc(returns: np.ndarray) -> np.ndarray:
  """Per seed, the mean of ``[seeds, W]`` episode `returns` over the windows
  where it is finite (windows where no episode finished are NaN): the AUC
  return ``(1 / W') sum_w R_s(w)``; NaN for a seed with none."""
  returns = np.asarray(returns, float)
  out = np.full(returns.shape[0], np.nan)
  for s, values in enumerate(returns):
    values = values[np.isfinite(values)]
    if values.size:
      out[s] = values.mean()
  return out


def rl_diverged(rows: Sequence[dict], name: str) -> np.ndarray:
  """Per seed of condition `name` (sorted by seed, as `rl_results.curves`),
  whether it diverged: ``diverged_step >= 0`` in some window (the
  ``diverged`` flag where there is no ``diverged_step``; none without either)."""
  columns = rows[0] if rows else {}
  for key in ("diverged_step", "diverged"):
    if key in columns:
      _, flags = rl_results.curves(rows, name, key)
      with np.errstate(invalid="ignore"):
        return ((flags >= 0) if key == "diverged_step" else (flags > 0)).any(axis=1)
  seeds = {r["seed"] for r in rows if results.condition(r) == name}
  return np.zeros(len(seeds), bool)


@dataclasses.dataclass(frozen=True)
class RLConditionSeeds:
  """One condition of one RL cell, per seed that never diverged: its final
  and AUC returns and, per `RL_PROBES` column the cell has, its `tail_mean`."""
  cell: str
  condition: str
  intervention: str
  grid_label: str
  num_seeds: int
  num_diverged: int
  num_windows: int
  final_return: np.ndarray
  auc_return: np.ndarray
  probes: Mapping[str, np.ndarray]

  @property
  def all_diverged(self) -> bool:
    return self.num_seeds > 0 and self.num_diverged == self.num_seeds


def rl_condition_seeds(cell: RLCell) -> list[RLConditionSeeds]:
  """Every condition of RL `cell` (summary.json's order), per healthy seed."""
  columns = cell.rows[0] if cell.rows else {}
  out = []
  for name in cell.conditions:
    sel = cell.by_condition[name]
    keep = ~rl_diverged(sel, name)
    _, returns = rl_results.curves(sel, name, "episode_return")
    returns = returns[keep]
    out.append(RLConditionSeeds(
        cell=cell.name, condition=name, intervention=sel[0]["intervention"],
        grid_label=sel[0].get("hparams", "") or "", num_seeds=len(keep),
        num_diverged=int((~keep).sum()), num_windows=returns.shape[1],
        final_return=returns[:, -1] if returns.shape[1] else np.full(len(returns), np.nan),
        auc_return=return_auc(returns),
        probes={k: tail_mean(rl_results.curves(sel, name, k)[1][keep])
                for k, _ in RL_PROBES if k in columns}))
  return out


def ran_probes(conditions: Iterable[RLConditionSeeds]) -> list[str]:
  """The `RL_PROBES` with a finite value for some healthy seed (a probe that
  never ran is NaN everywhere and is left out)."""
  conditions = list(conditions)
  return [k for k, _ in RL_PROBES
          if any(np.isfinite(c.probes.get(k, np.array([]))).any() for c in conditions)]


AUC_RETURN = "auc_return"


@dataclasses.dataclass(frozen=True)
class RLTableRow:
  """One condition's row: its final and AUC returns and, per compared
  quantity (``"auc_return"``, then each probe that ran), its stats (the
  baseline's own row) or its `Change` (None without a healthy baseline)."""
  condition: RLConditionSeeds
  final_return: Stats
  auc_return: Stats
  baseline: str | None
  changes: Mapping[str, Stats | Change | None]


@dataclasses.dataclass(frozen=True)
class RLMechanismTable:
  """One RL cell's table; `no_baseline` lists the grid labels without a
  baseline, `diverged_baseline` those whose baseline's seeds all diverged."""
  cell: str
  probes: tuple[str, ...]
  rows: tuple[RLTableRow, ...]
  no_baseline: tuple[str, ...]
  diverged_baseline: tuple[str, ...] = ()

  @property
  def columns(self) -> tuple[str, ...]:
    """The compared quantities: AUC return, then the probes."""
    return (AUC_RETURN,) + self.probes


def rl_mechanism_table(conditions: Sequence[RLConditionSeeds]) -> RLMechanismTable:
  """Per condition of one RL cell, its AUC return and each probe that ran
  compared with the baseline condition of the same grid point (``"baseline"``,
  or ``"baseline [<grid label>]"``): the change of the mean over healthy seeds
  and whether it `moved`."""
  probes = tuple(ran_probes(conditions))
  columns = (AUC_RETURN,) + probes
  values = lambda c, k: c.auc_return if k == AUC_RETURN else c.probes[k]
  stats = {c.condition: {k: seed_stats(values(c, k)) for k in columns} for c in conditions}
  compared, no_baseline, diverged_baseline = _against_baseline(conditions, columns, stats)
  rows = [RLTableRow(condition=c, final_return=seed_stats(c.final_return),
                     auc_return=stats[c.condition][AUC_RETURN], baseline=base_name,
                     changes=changes)
          for c, base_name, changes in compared]
  return RLMechanismTable(cell=conditions[0].cell if conditions else "", probes=probes,
                          rows=tuple(rows), no_baseline=tuple(no_baseline),
                          diverged_baseline=tuple(diverged_baseline))


def _seeds_text(num_seeds: int, num_diverged: int) -> str:
  return f"{num_seeds}" + (f" ({num_diverged} diverged)" if num_diverged else "")


# summary.json keys the returns table adds where a cell has them: evaluation
# returns (mean ± std over healthy seeds) and human-normalised scores (Atari).
SUMMARY_COLUMNS = (("final_eval_return", "final eval return", True),
                   ("final_return_hns", "final return (HNS)", False),
                   ("final_eval_return_hns", "final eval return (HNS)", False))


def format_returns_table(table: RLMechanismTable, summary: Mapping | None = None) -> str:
  """The returns as markdown: per condition, diverged / seeds, final return
  and AUC return (mean ± std over healthy seeds); with `summary` (the cell's
  summary.json), the `SUMMARY_COLUMNS` it has."""
  summary = summary or {}
  present = [(k, label, std) for k, label, std in SUMMARY_COLUMNS
             if any(isinstance(v, Mapping) and k in v for v in summary.values())]
  header = ["condition", "diverged / seeds", "final return", "AUC return"]
  header += [label for _, label, _ in present]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in table.rows:
    c = row.condition
    returns = (["diverged", "diverged"] if c.all_diverged else
               [_mean_std(row.final_return), _mean_std(row.auc_return)])
    entry = summary.get(c.condition, {})
    healthy = c.num_seeds - c.num_diverged
    for k, _, std in present:
      # A spread over fewer than 2 seeds is left out, as `_mean_std` does.
      value, spread = entry.get(k), entry.get(f"{k}_std") if std and healthy >= 2 else None
      returns.append("n/a" if value is None else
                     (f"{_num(value)} ± {_num(spread)}" if spread is not None else _num(value)))
    lines.append(f"| `{c.condition}` | {c.num_diverged}/{c.num_seeds} | "
                 + " | ".join(returns) + " |")
  return "\n".join(lines)


def format_rl_mechanism_table(table: RLMechanismTable) -> str:
  """The RL mechanism table as markdown: one row per condition."""
  names = dict(RL_PROBES, auc_return="AUC return")
  header = ["condition", "seeds"] + [f"Δ {names[k]}" for k in table.columns]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in table.rows:
    c = row.condition
    cells = [f"`{c.condition}`", _seeds_text(c.num_seeds, c.num_diverged)]
    if c.all_diverged:
      cells += ["diverged"] + [""] * (len(header) - 3)
    else:
      for k in table.columns:
        value = row.changes[k]
        if isinstance(value, Stats):
          cells.append(f"*{_mean_std(value)}*")
        elif isinstance(value, Change):
          cells.append(format_change(value))
        else:
          cells.append("")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def game_switches(cell: RLCell) -> list[tuple[float, float, int]]:
  """Where a sequence of games switches: ``(previous window's env steps,
  env steps, game)`` for each window whose ``game`` (the game its last step
  played) differs from the window before, read from the first condition's
  first seed; empty for one game."""
  if len(cell.games) < 2 or not cell.rows or "game" not in cell.rows[0]:
    return []
  name = cell.conditions[0]
  steps, games = rl_results.curves(cell.by_condition[name], name, "game")
  out = []
  for w in range(1, len(steps)):
    if np.isfinite(games[0, w]) and games[0, w] != games[0, w - 1]:
      out.append((float(steps[w - 1]), float(steps[w]), int(games[0, w])))
  return out


# --------------------------------------------------------------------------
# Dose-response, heatmap and scatter data.


def swept_value(cell: Cell, condition: ConditionSeeds, field: str) -> float | None:
  """The value of swept `field` for one condition: its grid point's, else the
  cell's override (None when neither sets it, or it is not a number)."""
  point = condition.point
  if field in point:
    return point[field]
  value = cell.overrides.get(field)
  if isinstance(value, bool):
    return None
  try:
    return float(value) if value is not None else None
  except (TypeError, ValueError):
    return None


def _others(cell: Cell, condition: ConditionSeeds, field: str) -> dict[str, object]:
  """Everything but `field` that sets a condition apart: the cell's
  architecture, its other overrides (``model.name`` is the architecture) and
  the other values of its grid point."""
  out = {"architecture": cell.architecture}
  out.update({k: v for k, v in cell.overrides.items() if k not in (field, "model.name")})
  out.update({k: v for k, v in condition.point.items() if k != field})
  return out


def _value_text(value) -> str:
  return grid_lib.format_value(value) if isinstance(value, float) else str(value)


class Line(NamedTuple):
  """A dose-response line: the plasticity measure, the intervention and what
  else sets it apart from other lines (``""`` when nothing does)."""
  measure: str
  intervention: str
  detail: str

  @property
  def label(self) -> str:
    return f"{self.intervention}, {self.detail}" if self.detail else self.intervention


def dose_response(study: Study, field: str, quantity: str = "plasticity_loss"
                  ) -> dict[Line, list[tuple[float, Stats]]]:
  """Per `Line`, the points ``(x, stats)`` sorted by x of `quantity`
  (``"plasticity_loss"`` or ``"final_fit_gap"``) against swept `field`, over
  every cell; conditions whose seeds all diverged are left out.

  A line's detail is whatever varies between the points besides the
  intervention and `field` (the architecture, another override, another grid
  value), so each line varies `field` alone.
  """
  points = []
  for cell in study.cells:
    for c in condition_seeds(cell):
      x = swept_value(cell, c, field)
      values = c.plasticity_loss if quantity == "plasticity_loss" else c.final_fit.get("gap")
      if x is None or values is None or c.all_diverged:
        continue
      stats = seed_stats(values)
      if stats.n:
        points.append((c, x, stats, _others(cell, c, field)))
  keys = list(dict.fromkeys(k for *_, others in points for k in others))
  varying = [k for k in keys
             if len({repr(others.get(k)) for *_, others in points}) > 1]
  lines: dict[Line, list[tuple[float, Stats]]] = {}
  for c, x, stats, others in points:
    detail = ", ".join(
        _value_text(others.get(k)) if k == "architecture"
        else f"{k.split('.')[-1]}={_value_text(others.get(k))}" for k in varying)
    lines.setdefault(Line(c.measure.name, c.intervention, detail), []).append((x, stats))
  return {k: sorted(v, key=lambda p: p[0]) for k, v in lines.items()}


def heatmap(study: Study, measure: Measure) -> tuple[list[str], list[str], np.ndarray]:
  """``(rows, columns, values)``: plasticity-loss means, rows the conditions
  (interventions, with their grid point), columns the cells measured by
  `measure`, headed by their architecture; NaN where a cell lacks the
  condition or its seeds all diverged."""
  cells = [c for c in study.cells if c.measure is measure]
  counts = {}
  for c in cells:
    counts[c.architecture] = counts.get(c.architecture, 0) + 1
  columns = [c.architecture if counts[c.architecture] == 1 and c.architecture
             else f"{c.architecture} ({c.name})" for c in cells]
  per_cell = [{s.condition: seed_stats(s.plasticity_loss).mean
               for s in condition_seeds(c)} for c in cells]
  rows = []
  for conditions in per_cell:
    rows += [name for name in conditions if name not in rows]
  values = np.array([[conditions.get(name, math.nan) for conditions in per_cell]
                     for name in rows], float).reshape(len(rows), len(cells))
  return rows, columns, values


# --------------------------------------------------------------------------
# Figures.

save_figure = plotting.save_figure


def _seed_count_text(counts: Iterable[int]) -> str:
  counts = sorted(set(counts))
  if not counts:
    return "0"
  return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


def plot_cell_curves(cell: Cell, path: str) -> bool:
  """Saves the cell's accuracy (train loss for a regression) per task: one
  column per grid point, a row for the held-out values where measured; per
  intervention the mean over healthy seeds and a band of ± 1 std over them;
  chance as a dashed line. Returns False (nothing saved) without curves."""
  measure = cell.measure
  conditions = [c for c in condition_seeds(cell) if not c.all_diverged]
  if not conditions:
    return False
  labels = list(dict.fromkeys(c.grid_label for c in conditions))
  keys = [measure.column]
  if cell.rows and measure.test_column in cell.rows[0] and np.isfinite(
      np.asarray([r[measure.test_column] for r in cell.rows], float)).any():
    keys.append(measure.test_column)
  colors = {name: f"C{i}" for i, name in
            enumerate(dict.fromkeys(c.intervention for c in conditions))}
  fig, axes = plt.subplots(len(keys), len(labels), squeeze=False,
                           figsize=(4.4 * len(labels), 3.2 * len(keys)))
  for i, key in enumerate(keys):
    for j, label in enumerate(labels):
      ax = axes[i, j]
      for c in (c for c in conditions if c.grid_label == label):
        curves = healthy(cell.by_condition[c.condition], c.condition, key)
        measured = np.isfinite(curves).any(axis=0)
        if not measured.any():
          continue
        tasks = np.arange(curves.shape[1])[measured]
        with np.errstate(all="ignore"):
          mean = np.nanmean(curves[:, measured], axis=0)
          std = np.nanstd(curves[:, measured], axis=0)
        ax.plot(tasks, mean, color=colors[c.intervention], lw=1.6, label=c.intervention,
                marker="o" if len(tasks) < 12 else None, ms=3)
        ax.fill_between(tasks, mean - std, mean + std, color=colors[c.intervention],
                        alpha=0.2, lw=0)
      if cell.chance is not None and key.endswith("accuracy"):
        ax.axhline(cell.chance, color="0.4", ls="--", lw=1, label="chance")
        ax.set_ylim(0.0, 1.02)
      ax.set_xlabel("task")
      ax.xaxis.set_major_locator(MaxNLocator(integer=True))
      ax.set_ylabel(key.replace("_", " ") + " (end of task)")
      if label:
        ax.set_title(label, fontsize=8)
      ax.grid(alpha=0.3)
  handles, names = axes[0, 0].get_legend_handles_labels()
  for ax in axes.flat:  # every intervention, whichever panel drew it
    for h, n in zip(*ax.get_legend_handles_labels()):
      if n not in names:
        handles.append(h)
        names.append(n)
  axes[0, -1].legend(handles, names, fontsize=7)
  seeds = _seed_count_text(c.num_seeds - c.num_diverged for c in conditions)
  fig.suptitle(f"{cell.name}: mean ± 1 std over {seeds} seeds", fontsize=10)
  fig.tight_layout()
  save_figure(fig, path)
  return True


def _x_scale(ax, xs: Sequence[float]) -> None:
  xs = np.asarray(xs, float)
  if xs.size and (xs > 0).all() and xs.max() / xs.min() >= 20:
    ax.set_xscale("log")


_LINE_STYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def plot_dose_response(study: Study, field: str, path: str) -> bool:
  """Saves plasticity loss (and the final-fit gap, where measured) against
  swept `field`: per line the mean over seeds with error bars of ± 1 std.
  Returns False (nothing saved) when no condition has a value of `field`."""
  panels = []
  for quantity, title in (("plasticity_loss", "plasticity loss"),
                          ("final_fit_gap", "final-fit gap (fresh − trained)")):
    lines = dose_response(study, field, quantity)
    for measure in dict.fromkeys(line.measure for line in lines):
      panels.append((f"{title}, {measure}",
                     {line: pts for line, pts in lines.items() if line.measure == measure}))
  if not panels:
    return False
  legend_cols = [-(-len(lines) // 25) if len(lines) > 8 else 0 for _, lines in panels]
  fig, axes = plt.subplots(1, len(panels), squeeze=False,
                           figsize=(5.2 * len(panels) + 3.2 * sum(legend_cols), 3.8))
  for ax, (title, lines) in zip(axes[0], panels):
    xs = []
    # Colour: the intervention; line style and marker: the rest of the line's detail.
    colors = {n: f"C{i % 10}" for i, n in enumerate(dict.fromkeys(l.intervention for l in lines))}
    details = list(dict.fromkeys(line.detail for line in lines))
    for line, points in lines.items():
      x = [p[0] for p in points]
      xs += x
      j = details.index(line.detail)
      ax.errorbar(x, [p[1].mean for p in points], yerr=[p[1].std for p in points],
                  color=colors[line.intervention], ls=_LINE_STYLES[j % len(_LINE_STYLES)],
                  marker=_MARKERS[j % len(_MARKERS)], ms=4, capsize=3, lw=1.4,
                  label=line.label)
    _x_scale(ax, xs)
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.set_xlabel(field)
    ax.set_ylabel(title)
    ax.grid(alpha=0.3)
    if len(lines) <= 8:
      ax.legend(fontsize=7)
    else:  # beside the panel, in columns of 25
      ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                ncol=-(-len(lines) // 25))
  fig.suptitle(f"{study.title}: mean ± 1 std over seeds", fontsize=10)
  fig.tight_layout()
  save_figure(fig, path)
  return True


def plot_heatmap(study: Study, measure: Measure, path: str) -> bool:
  """Saves the condition x architecture heatmap of mean plasticity loss (grey:
  not run, or every seed diverged). False (nothing saved) without cells."""
  rows, columns, values = heatmap(study, measure)
  if not rows or not columns:
    return False
  fig, ax = plt.subplots(figsize=(1.6 * len(columns) + 3.5, 0.45 * len(rows) + 1.6))
  cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.8")
  image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto")
  for i in range(len(rows)):
    for j in range(len(columns)):
      v = values[i, j]
      ax.text(j, i, f"{v:.3g}" if math.isfinite(v) else "–", ha="center", va="center",
              fontsize=8, color="w" if math.isfinite(v) else "0.3")
  ax.set_xticks(range(len(columns)), columns, fontsize=8)
  ax.set_yticks(range(len(rows)), rows, fontsize=8)
  fig.colorbar(image, ax=ax, label=f"plasticity loss ({measure.name})")
  ax.set_title(f"{study.title}: mean plasticity loss over seeds", fontsize=10)
  fig.tight_layout()
  save_figure(fig, path)
  return True


def scatter_panels(study: Study, measure: Measure
                   ) -> list[tuple[str, np.ndarray, np.ndarray, list[str]]]:
  """Per indicator that ran in the cells measured by `measure`:
  ``(indicator, x, y, interventions)``, one point per healthy seed of every
  condition: x its `last_measured` value, y its plasticity loss."""
  conditions = [c for cell in study.cells if cell.measure is measure
                for c in condition_seeds(cell) if not c.all_diverged]
  out = []
  for key in ran_indicators(conditions):
    xs, ys, names = [], [], []
    for c in conditions:
      if key in c.indicators:
        xs.append(c.indicators[key])
        ys.append(c.plasticity_loss)
        names += [c.intervention] * len(c.plasticity_loss)
    out.append((key, np.concatenate(xs), np.concatenate(ys), names))
  return out


def plot_mechanism_scatter(study: Study, measure: Measure, path: str) -> list[str]:
  """Saves plasticity loss against each indicator that ran, every cell and
  seed a point coloured by intervention, Pearson r in each title; returns the
  indicators drawn (none: nothing saved)."""
  panels = scatter_panels(study, measure)
  if not panels:
    return []
  names = dict(INDICATORS)
  order = list(dict.fromkeys(n for _, _, _, ns in panels for n in ns))
  cols = min(3, len(panels))
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.6 * rows), squeeze=False)
  for ax, (key, x, y, interventions) in zip(axes.flat, panels):
    interventions = np.asarray(interventions)
    for i, name in enumerate(order):
      pick = interventions == name
      if pick.any():
        ax.scatter(x[pick], y[pick], s=18, color=f"C{i % 10}", label=name, alpha=0.8)
    r = pearson(x, y)
    n = int((np.isfinite(x) & np.isfinite(y)).sum())
    ax.set_title(f"{names[key]}: r = {f'{r:.2f}' if math.isfinite(r) else 'n/a'} (n = {n})",
                 fontsize=9)
    ax.set_xlabel(f"{names[key]} (last measured)")
    ax.set_ylabel(f"plasticity loss ({measure.name})")
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(panels):]:
    ax.set_visible(False)
  axes[0, 0].legend(fontsize=7)
  fig.suptitle(f"{study.title}: one point per cell, condition and seed", fontsize=10)
  fig.tight_layout()
  save_figure(fig, path)
  return [key for key, _, _, _ in panels]


def healthy_rl_rows(cell: RLCell) -> list[dict]:
  """`cell`'s rows less those of its diverged seeds (`rl_diverged`)."""
  bad = set()
  for name, sel in cell.by_condition.items():
    seeds = sorted({r["seed"] for r in sel})
    bad.update((name, s) for s, d in zip(seeds, rl_diverged(sel, name)) if d)
  return [r for r in cell.rows if (results.condition(r), r["seed"]) not in bad]


def plot_rl_cell(cell: RLCell, returns_path: str, probes_path: str) -> tuple[bool, list[str]]:
  """Saves the cell's episode return (`rl_plotting.plot_returns`) and its
  probes (`rl_plotting.plot_probes`, which leaves out probes that never ran)
  against environment steps over the healthy seeds: per condition the mean
  and a band of ± 1 std. Returns whether the returns figure was saved (not
  when every seed diverged) and the probes drawn (none: nothing saved)."""
  rows = healthy_rl_rows(cell)
  names = {results.condition(r) for r in rows}
  conditions = [c for c in cell.conditions if c in names]
  if not conditions:
    return False, []
  title = f"{cell.name}: {cell.agent or 'agent'} on {'+'.join(cell.games) or 'env'}"
  rl_plotting.plot_returns(rows, conditions, returns_path, title)
  return True, rl_plotting.plot_probes(rows, conditions, probes_path, title)


# --------------------------------------------------------------------------
# report.md.


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "study"


def _duration(seconds) -> str:
  if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
    return "n/a"
  if seconds < 120:
    return f"{seconds:.0f} s"
  return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _overrides_text(overrides: Mapping) -> str:
  return ", ".join(f"`{k}={v}`" for k, v in overrides.items()) or "–"


def _header(study: Study) -> list[str]:
  listed = len(study.cells) + len(study.rl_cells) + len(study.missing)
  lines = [f"# {study.title}", ""]
  facts = [("study", f"`{study.name}`" + (f", scale `{study.scale}`" if study.scale else "")),
           ("workdir", f"`{study.path}`"),
           ("machine", study.machine or "n/a"),
           ("command", f"`{study.command}`" if study.command else "n/a"),
           ("wall time", _duration(study.wall_time_s)),
           ("cells", f"{len(study.cells) + len(study.rl_cells)} of {listed} found"
            + (f"; missing: {', '.join(f'`{m.name}` ({m.reason})' for m in study.missing)}"
               if study.missing else ""))]
  if study.sweeps:
    facts.append(("swept", ", ".join(f"`{s}`" for s in study.sweeps)))
  lines += [f"- **{k}**: {v}" for k, v in facts]
  if study.description:
    lines += ["", study.description.strip()]
  lines += ["", "| cell | architecture | overrides | conditions | wall time | status |",
            "|---|---|---|---|---|---|"]
  for cell in study.cells:
    lines.append(f"| `{cell.name}` | {cell.architecture or '–'} | "
                 f"{_overrides_text(cell.overrides)} | {len(cell.conditions)} | "
                 f"{_duration(cell.wall_time_s)} | done |")
  for cell in study.rl_cells:
    lines.append(f"| `{cell.name}` | {cell.architecture or '–'} ({cell.agent or 'RL'}) | "
                 f"{_overrides_text(cell.overrides)} | {len(cell.conditions)} | "
                 f"{_duration(cell.wall_time_s)} | done |")
  for m in study.missing:
    lines.append(f"| `{m.name}` | | | | | missing: {m.reason} |")
  return lines


def _measures(study: Study) -> list[Measure]:
  return list(dict.fromkeys(c.measure for c in study.cells))


def _image(title: str, name: str) -> list[str]:
  return [f"![{title}]({name})", ""]


def _suffix(measure: Measure, measures: Sequence[Measure]) -> str:
  """A figure name's suffix telling measures apart (none for a single one)."""
  return "" if len(measures) == 1 else f"-{_slug(measure.name)}"


def _curves_section(study: Study, out_dir: str, prefix: str) -> list[str]:
  lines = ["## Learning curves", "",
           "Per cell, train accuracy (and held-out accuracy where measured; the train "
           "loss for a regression) at the end of each task; line: mean over the seeds "
           "that never diverged, band: ± 1 standard deviation over them (ddof 0); "
           "dashed: chance (1 / classes). Conditions whose seeds all diverged are left out.",
           ""]
  for cell in study.cells:
    name = f"{prefix}-{_slug(cell.name)}-curves.png"
    lines += [f"### `{cell.name}`" + (f" ({cell.architecture})" if cell.architecture else ""),
              ""]
    if plot_cell_curves(cell, os.path.join(out_dir, name)):
      lines += _image(f"{cell.name} learning curves", name)
    else:
      lines += ["Every seed of every condition diverged.", ""]
  return lines


def _dose_section(study: Study, out_dir: str, prefix: str) -> list[str]:
  lines = []
  for field in study.sweeps:
    name = f"{prefix}-dose-{_slug(field)}.png"
    lines += [f"## Dose-response: `{field}`", ""]
    if plot_dose_response(study, field, os.path.join(out_dir, name)):
      lines += ["Plasticity loss (task 0's accuracy minus the mean over the last "
                "min(3, T−1) tasks, per seed; the train loss's rise for a regression) and, "
                "where measured, the final-fit gap, against the swept value: mean ± 1 std "
                "over seeds.", ""] + _image(f"dose-response {field}", name)
    else:
      lines += [f"No finished condition has a value of `{field}`.", ""]
  return lines


def _heatmap_section(study: Study, out_dir: str, prefix: str) -> list[str]:
  if len({c.architecture for c in study.cells}) < 2:
    return []
  lines = ["## Plasticity loss by intervention and architecture", ""]
  measures = _measures(study)
  for m in measures:
    name = f"{prefix}-heatmap{_suffix(m, measures)}.png"
    if plot_heatmap(study, m, os.path.join(out_dir, name)):
      lines += _image(f"heatmap, {m.name}", name)
  return lines + ["Mean over seeds; grey: not run, or every seed diverged.", ""]


def _scatter_section(study: Study, out_dir: str, prefix: str) -> list[str]:
  images = []
  measures = _measures(study)
  for m in measures:
    name = f"{prefix}-mechanisms{_suffix(m, measures)}.png"
    if plot_mechanism_scatter(study, m, os.path.join(out_dir, name)):
      images += _image(f"mechanisms, {m.name}", name)
  if not images:
    return ["## Mechanisms", "", "No mechanism indicator was measured.", ""]
  return ["## Mechanisms", "",
          "Plasticity loss per seed against each indicator's last measured value, "
          "every cell, condition and healthy seed one point; r: Pearson correlation. "
          "Indicators that never ran are left out.", ""] + images


def _quoted(labels: Iterable[str]) -> str:
  return ", ".join(f"`{label}`" for label in labels if label)


def _table_section(study: Study) -> list[str]:
  lines = ["## Mechanism table", "",
           "Per cell and condition: plasticity loss, mean ± std over the seeds that never "
           "diverged; per indicator that ran, its last measured value per seed, averaged "
           "over seeds, as a change against the baseline of the same cell and grid point "
           "(the baseline's own row: its mean ± std, in italics).", "",
           f"Rule: {MOVED_RULE}; marked **bold with an arrow**. With fewer than "
           f"{MIN_SEEDS_TO_MOVE} seeds on either side nothing is marked moved.", ""]
  for cell in study.cells:
    table = mechanism_table(condition_seeds(cell))
    lines += [f"### `{cell.name}`", ""]
    if table.no_baseline:
      where = _quoted(table.no_baseline)
      lines += [f"No baseline condition{f' at {where}' if where else ''} in this cell: "
                "its changes are left empty.", ""]
    if table.diverged_baseline:
      where = _quoted(table.diverged_baseline)
      lines += [f"Every seed of the baseline{f' at {where}' if where else ''} diverged: "
                "changes against it are left empty.", ""]
    lines += [format_mechanism_table(table), ""]
    few = [r.condition.condition for r in table.rows
           if r.plasticity_loss.n < MIN_SEEDS_TO_MOVE and not r.condition.all_diverged]
    if few:
      lines += [f"Fewer than {MIN_SEEDS_TO_MOVE} healthy seeds in {_quoted(few)}: "
                "no change involving it is marked moved.", ""]
  return lines


def _rl_heading(study: Study, title: str) -> str:
  """A section heading of the RL cells, said to be theirs in a mixed study."""
  return f"## {title}" + (": RL cells" if study.cells else "")


def _rl_cell_heading(cell: RLCell) -> str:
  detail = ", ".join(x for x in (cell.agent, cell.architecture, "+".join(cell.games)) if x)
  return f"### `{cell.name}`" + (f" ({detail})" if detail else "")


def _switches_text(cell: RLCell) -> list[str]:
  switches = game_switches(cell)
  if not switches:
    return []
  games = cell.games
  said = [f"to `{games[g] if 0 <= g < len(games) else g}` between {a:,.0f} and {b:,.0f}"
          for a, b, g in switches]
  return [f"A sequence of games starting with `{games[0]}`; it switches "
          + "; ".join(said) + " environment steps (per seed).", ""]


def _rl_returns_section(study: Study, tables: Sequence[RLMechanismTable], out_dir: str,
                        prefix: str) -> list[str]:
  lines = [_rl_heading(study, "Returns"), "",
           "Per RL cell and condition, over the seeds that never diverged (diverged: "
           "`diverged_step` set in some window): final return, the mean episode return of "
           "the last evaluation window, and AUC return, the mean over windows of each "
           "window's mean episode return (windows where no episode finished left out); "
           "mean ± std over seeds (ddof 0). Figures: episode return and each probe that ran "
           "against environment steps per seed, the mean over healthy seeds with a band of "
           "± 1 std; conditions whose seeds all diverged are left out.", ""]
  for cell, table in zip(study.rl_cells, tables):
    lines += [_rl_cell_heading(cell), ""] + _switches_text(cell)
    lines += [format_returns_table(table, cell.summary), ""]
    returns = f"{prefix}-{_slug(cell.name)}-returns.png"
    probes = f"{prefix}-{_slug(cell.name)}-probes.png"
    drawn, panels = plot_rl_cell(cell, os.path.join(out_dir, returns),
                                 os.path.join(out_dir, probes))
    if not drawn:
      lines += ["Every seed of every condition diverged.", ""]
      continue
    lines += _image(f"{cell.name} episode return", returns)
    if panels:
      lines += _image(f"{cell.name} probes", probes)
  return lines


def _rl_table_section(study: Study, tables: Sequence[RLMechanismTable]) -> list[str]:
  lines = [_rl_heading(study, "Mechanism table"), "",
           "Per RL cell and condition, against the baseline of the same cell and grid point: "
           "the change of AUC return and of each probe that ran, a probe taken per seed as "
           f"its mean over the run's last third of evaluation windows (the last ceil(W/"
           f"{TAIL_PARTS}) of W, over the windows where it was measured), then averaged over "
           "the seeds that never diverged (the baseline's own row: its mean ± std, in "
           "italics). Probes that never ran are left out. Q magnitude: mean |Q(s, a)| over "
           "the probe states; TD error: mean |TD error| on a fresh replay batch; sharpness: "
           "the TD loss's top Hessian eigenvalue (measured every few windows).", "",
           f"Rule: {MOVED_RULE}; marked **bold with an arrow**. With fewer than "
           f"{MIN_SEEDS_TO_MOVE} seeds on either side nothing is marked moved.", ""]
  for cell, table in zip(study.rl_cells, tables):
    lines += [f"### `{cell.name}`", ""]
    if table.no_baseline:
      where = _quoted(table.no_baseline)
      lines += [f"No baseline condition{f' at {where}' if where else ''} in this cell: "
                "its changes are left empty.", ""]
    if table.diverged_baseline:
      where = _quoted(table.diverged_baseline)
      lines += [f"Every seed of the baseline{f' at {where}' if where else ''} diverged: "
                "changes against it are left empty.", ""]
    lines += [format_rl_mechanism_table(table), ""]
    few = [r.condition.condition for r in table.rows if not r.condition.all_diverged
           and r.condition.num_seeds - r.condition.num_diverged < MIN_SEEDS_TO_MOVE]
    if few:
      lines += [f"Fewer than {MIN_SEEDS_TO_MOVE} healthy seeds in {_quoted(few)}: "
                "no change involving it is marked moved.", ""]
  return lines


def _study_section(study: Study, out_dir: str, prefix: str) -> list[str]:
  """report.md's section for one study; saves its figures into `out_dir`,
  their names starting with `prefix`."""
  lines = _header(study) + [""]
  if not study.cells and not study.rl_cells:
    return lines + ["No cell has finished yet: nothing to report."]
  if study.cells:
    lines += (_curves_section(study, out_dir, prefix)
              + _dose_section(study, out_dir, prefix)
              + _heatmap_section(study, out_dir, prefix)
              + _scatter_section(study, out_dir, prefix) + _table_section(study))
  if study.rl_cells:
    tables = [rl_mechanism_table(rl_condition_seeds(cell)) for cell in study.rl_cells]
    lines += (_rl_returns_section(study, tables, out_dir, prefix)
              + _rl_table_section(study, tables))
  return lines


def write_report(studies: Sequence[Study], out_dir: str) -> str:
  """Writes ``report.md`` and its PNG figures (atomically) into `out_dir`, one
  section per study; returns the report's path."""
  os.makedirs(out_dir, exist_ok=True)
  lines, prefixes = [], set()
  for study in studies:
    prefix = _slug(study.name)
    while prefix in prefixes:
      prefix += "_"
    prefixes.add(prefix)
    lines += _study_section(study, out_dir, prefix) + [""]
  path = os.path.join(out_dir, REPORT_FILE)
  results.write_bytes(path, ("\n".join(lines).rstrip() + "\n").encode())
  return path
