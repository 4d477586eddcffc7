"""Figures: the plasticity figure, one figure per mechanism, a bar chart of the
summary, preactivation histograms.

Every curve is a condition's mean over its seeds with a band of ± 1 standard
deviation over them, ``sqrt(mean_s (v_s - mean v)^2)`` (ddof 0: the spread
summary.json and the printed table give), seeds that diverged left out; each
figure says so under its title. Accuracy panels of a classification draw
chance, ``1 / classes``, as a dashed line. A panel whose probe did not run
(its column NaN in every run) or that holds one value in every run and task
(a probe that does not apply, e.g. near-constant units of a ReLU network) is
left out, and a note under the figure names it; a figure left with no panel
is not written.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
import numpy as np

from plastix import results

BAND = "mean ± 1 std over seeds (ddof 0)"  # What every curve's band is.

PANELS = (("train_accuracy", "train accuracy (end of task)"),
          ("dead_fraction", "dead-unit fraction"),
          ("param_norm", "parameter norm"))
# The plasticity figure's first panel where accuracy is undefined (regression).
LOSS_PANEL = ("train_loss", "train loss (end of task)")


MECHANISM_FIGURES = {
    "units": (("dead_fraction", "dead-unit fraction"),
              ("linearized_fraction", "linearized ReLU fraction"),
              ("linearized_fraction_smooth", "near-constant units")),
    "norm_sharpness": (("param_norm", "parameter norm"), ("sharpness", "top Hessian eigenvalue"),
                       ("plasticity_probe_loss", "plasticity probe (vs fresh)")),
    "ntk": (("ntk_diagonal_share", "NTK diagonal share"),
            ("ntk_effective_rank", "NTK effective rank"),
            ("ntk_top_eigenvalue_share", "NTK top-eigenvalue share")),
    "features": (("feature_sv0", "top feature singular value"),
                 ("effective_rank", "feature effective rank"),
                 ("predictive_entropy", "predictive entropy")),
    "preactivations": (("preact_drift", "preactivation drift in task"),
                       ("preact_mean_spread", "spread of unit means"),
                       ("gradient_alignment", "gradient alignment")),
}

# The bar chart's measures (summary.json keys, each with its _std).
BAR_MEASURES = (("plasticity_loss", "plasticity loss\n(task-0 accuracy − last tasks')"),
                ("final_task_accuracy", "final-task accuracy"))


def _save(fig, path: str) -> None:
  """Writes `fig` to `path` atomically (`results.write_bytes`), in the format its
  extension names (``.png``, ``.pdf``, ``.svg``, ...; PNG without one), and closes it."""
  buf = io.BytesIO()
  try:
    fig.savefig(buf, format=os.path.splitext(path)[1][1:].lower() or "png", dpi=110,
                bbox_inches="tight")
  finally:
    plt.close(fig)
  results.write_bytes(path, buf.getvalue())


save_figure = _save  # The public name, for modules that draw their own figures.


def chance_accuracy(shift: str, num_classes: int) -> float | None:
  """The accuracy of guessing as the shift's learner defines it
  (`plastix.learners.Learner.chance_accuracy`): ``1 / num_classes`` for a
  classification; None for a regression or the bandit."""
  from plastix import learners  # pylint: disable=g-import-not-at-top  (it imports JAX)
  return learners.for_shift(shift).chance_accuracy(num_classes)


def mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per column of ``values [seeds, ...]``: the mean over seeds and the standard
  deviation ``sqrt(mean_s (v_s - mean v)^2)`` (ddof 0), NaN seeds left out."""
  with np.errstate(all="ignore"), warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # a column of NaN: NaN
    return np.nanmean(values, axis=0), np.nanstd(values, axis=0)


def _count_text(counts: Sequence[int]) -> str:
  counts = sorted(set(counts))
  return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


def band_note(rows: Sequence[dict], interventions: Sequence[str]) -> str:
  """What a figure's bands are: ``mean ± 1 std over 3 seeds (ddof 0)``, with
  the seeds each condition averages and whether diverged ones are left out."""
  kept, diverged = [], 0
  for name in interventions:
    marks = results.diverged_seeds(rows, name)
    if marks.size:
      kept.append(int((~marks).sum()))
      diverged += int(marks.sum())
  seeds = _count_text(kept) if kept else "0"
  note = BAND.replace("over seeds", f"over {seeds} seed{'' if seeds == '1' else 's'}")
  return note + ("; diverged seeds left out" if diverged else "")


def omission(curves: Sequence[np.ndarray]) -> str | None:
  """Why a panel of these curves (one ``[seeds, tasks]`` array per condition)
  is left out: ``"not measured in this run"`` when no value is finite (the
  probe did not run), ``"<v> in every run"`` when two or more values are all the same v (a
  probe that does not apply); None when it has something to show."""
  finite = np.concatenate([np.ravel(c) for c in curves] or [np.zeros(0)])
  finite = finite[np.isfinite(finite)]
  if not finite.size:
    return "not measured in this run"
  if finite.size > 1 and (finite == finite[0]).all():
    return f"{finite[0]:.3g} in every run"
  return None


def _curves(rows, interventions, key) -> dict[str, np.ndarray]:
  """Per condition its healthy seeds' ``[seeds, tasks]`` values of `key`."""
  if not rows or key not in rows[0]:
    return {}
  out = {}
  for name in interventions:
    curves = results.healthy_curves(rows, name, key)
    if curves.size:
      out[name] = curves
  return out


def condition_styles(interventions: Sequence[str]) -> dict[str, dict]:
  """Per condition its line's color and style, all different: tab10's colors
  for up to 10 conditions, else tab20's, then the same colors dashed, dotted
  and dash-dotted."""
  palette = plt.get_cmap("tab10" if len(interventions) <= 10 else "tab20").colors
  dashes = ("-", "--", ":", "-.")
  return {name: {"color": palette[i % len(palette)],
                 "ls": dashes[(i // len(palette)) % len(dashes)]}
          for i, name in enumerate(interventions)}


def _plot_curves(ax, curves: Mapping[str, np.ndarray], styles: Mapping[str, dict], key: str,
                 label: str, chance: float | None) -> None:
  """Per condition the mean over seeds and a band of ± 1 std; tasks where
  nothing was measured (an expensive probe skipped) left out."""
  for name, values in curves.items():
    tasks = np.arange(values.shape[1])
    measured = np.isfinite(values).any(axis=0)
    if not measured.any():
      continue
    mean, std = mean_std(values[:, measured])
    ax.plot(tasks[measured], mean, label=name, lw=1.8, **styles[name],
            marker="o" if not measured.all() or measured.sum() < 12 else None, ms=3)
    ax.fill_between(tasks[measured], mean - std, mean + std, color=styles[name]["color"],
                    alpha=0.2 if len(curves) <= 10 else 0.1, lw=0)
  if chance is not None and key.endswith("accuracy"):
    ax.axhline(chance, color="0.35", ls="--", lw=1.2,
               label=f"chance (1/{round(1 / chance)})")
  ax.set_xlabel("task")
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_ylabel(label)
  ax.grid(alpha=0.3)


def _legend(fig, axes) -> None:
  """One legend, right of the last panel, of every curve drawn on any panel."""
  handles, names = [], []
  for ax in axes:
    for h, n in zip(*ax.get_legend_handles_labels()):
      if n not in names:
        handles.append(h)
        names.append(n)
  if handles:
    axes[-1].legend(handles, names, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                    borderaxespad=0.0)


def _title(fig, title: str, band: str) -> None:
  fig.suptitle(f"{title}\n{band}" if title else band, fontsize=10)


def omitted_note(omitted: Sequence[tuple[str, str]]) -> str:
  """The note naming left-out panels ``(label, why)``, grouped by why:
  ``"not shown: not measured: a, b; 0 in every run: c"``."""
  groups: dict[str, list[str]] = {}
  for label, why in omitted:
    groups.setdefault(why, []).append(label)
  return "not shown: " + "; ".join(f"{why}: {', '.join(labels)}"
                                   for why, labels in groups.items())


def _omitted_note(fig, omitted: Sequence[tuple[str, str]]) -> None:
  """`omitted_note` under the figure (nothing when no panel was left out)."""
  if omitted:
    fig.text(0.01, -0.02, omitted_note(omitted), fontsize=8, color="0.35", ha="left",
             va="top", wrap=True)


def plot_panels(rows: Sequence[dict], interventions: Sequence[str], panels, path: str,
                title: str = "", chance: float | None = None) -> list[str]:
  """Saves a row of panels, one per ``(column, label)`` of `panels` with
  something to show (`omission`); per condition the mean over its seeds and a
  band of ± 1 std (seeds that diverged left out, as in summary.json's
  means), and on accuracy panels `chance` as a dashed line. Returns the
  columns drawn; with none, nothing is written."""
  styles = condition_styles(interventions)
  drawn, omitted = [], []
  for key, label in panels:
    curves = _curves(rows, interventions, key)
    why = omission(list(curves.values()))
    if why is None:
      drawn.append((key, label, curves))
    else:
      omitted.append((label, why))
  if not drawn:
    return []
  fig, axes = plt.subplots(1, len(drawn), figsize=(4.6 * len(drawn), 3.6), squeeze=False)
  axes = list(axes[0])
  for ax, (key, label, curves) in zip(axes, drawn):
    _plot_curves(ax, curves, styles, key, label, chance)
  _legend(fig, axes)
  _title(fig, title, band_note(rows, interventions))
  fig.tight_layout()
  _omitted_note(fig, omitted)
  _save(fig, path)
  return [key for key, _, _ in drawn]


def plot_plasticity(rows: Sequence[dict], interventions: Sequence[str], path: str,
                    title: str = "", chance: float | None = None) -> list[str]:
  """Saves the plasticity figure: accuracy (the train loss for a regression,
  whose accuracy is undefined), dead units and parameter norm per task, with
  `chance` (`chance_accuracy`) on the accuracy panel. Returns the columns drawn."""
  panels = list(PANELS)
  accuracy = _curves(rows, interventions, "train_accuracy")
  if not any(np.isfinite(c).any() for c in accuracy.values()):
    panels[0] = LOSS_PANEL
  return plot_panels(rows, interventions, panels, path, title, chance)


def plot_mechanisms(rows: Sequence[dict], interventions: Sequence[str], folder: str,
                    title: str = "") -> list[str]:
  """Saves ``mechanisms_<name>.png`` for each of `MECHANISM_FIGURES` with a
  panel to show (`plot_panels`); returns the paths written."""
  paths = []
  for name, panels in MECHANISM_FIGURES.items():
    path = os.path.join(folder, f"mechanisms_{name}.png")
    if plot_panels(rows, interventions, panels, path, title):
      paths.append(path)
  return paths


def summary_bars(rows: Sequence[dict], interventions: Sequence[str]
                 ) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
  """The bar chart's data: per `BAR_MEASURES` entry with a value for some
  condition ``(key, label, means [conditions], stds [conditions])`` from
  `results.summarize` (means and ddof-0 stds over the seeds that never
  diverged; NaN where undefined)."""
  summary = results.summarize(rows, interventions)["interventions"]
  out = []
  for key, label in BAR_MEASURES:
    means = np.array([np.nan if summary[n][key] is None else summary[n][key]
                      for n in interventions], float)
    stds = np.array([np.nan if summary[n][key + results.STD_SUFFIX] is None
                     else summary[n][key + results.STD_SUFFIX] for n in interventions], float)
    if np.isfinite(means).any():
      out.append((key, label, means, stds))
  return out


def plot_summary_bars(rows: Sequence[dict], interventions: Sequence[str], path: str,
                      title: str = "", chance: float | None = None) -> list[str]:
  """Saves a bar chart, a horizontal bar per condition, of plasticity loss and
  final-task accuracy (summary.json's values: the mean over seeds, error bars
  ± 1 std, diverged seeds left out), `chance` dashed on the accuracy panel.
  Returns the measures drawn; with none (a regression), nothing is written."""
  bars = summary_bars(rows, interventions)
  if not bars:
    return []
  height = 1.2 + 0.32 * len(interventions)
  fig, axes = plt.subplots(1, len(bars), figsize=(4.6 * len(bars), height), sharey=True,
                           squeeze=False)
  y = np.arange(len(interventions))
  colors = [style["color"] for style in condition_styles(interventions).values()]
  for ax, (key, label, means, stds) in zip(axes[0], bars):
    ax.barh(y, np.nan_to_num(means), xerr=np.nan_to_num(stds), color=colors, alpha=0.85,
            error_kw={"ecolor": "0.2", "capsize": 3, "lw": 1})
    for i in np.flatnonzero(~np.isfinite(means)):
      ax.text(0, y[i], " n/a", va="center", ha="left", fontsize=8, color="0.4")
    ax.axvline(0, color="0.2", lw=0.8)
    if chance is not None and key.endswith("accuracy"):
      ax.axvline(chance, color="0.35", ls="--", lw=1.2, label=f"chance (1/{round(1 / chance)})")
      ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    ax.set_xlabel(label)
    ax.grid(axis="x", alpha=0.3)
  axes[0, 0].set_yticks(y, list(interventions), fontsize=8)
  axes[0, 0].invert_yaxis()  # the first condition on top
  band = band_note(rows, interventions)
  _title(fig, title, "bars: " + band.replace(" ± 1 std", ", error bars ± 1 std"))
  fig.tight_layout()
  _save(fig, path)
  return [key for key, _, _, _ in bars]


def _kept_seeds(counts: np.ndarray, name: str, exclude: Mapping[str, np.ndarray] | None):
  """`counts` ``[seed, ...]`` without the seeds `exclude` marks for condition `name`."""
  if exclude is None or name not in exclude:
    return counts
  return counts[~np.asarray(exclude[name], bool)]


def _histogram_figure(edges, rows: Sequence[tuple[str, np.ndarray]], labels: Sequence[str],
                      path: str, title: str, colormap: str) -> None:
  """Saves a grid of histograms over the bins `edges`: a row per condition, a
  column per hidden layer, every panel on one y scale. ``rows[i]`` is
  ``(condition, counts [series, layer, bin])`` (NaN: no seed to show), each
  series an outline coloured along `colormap` and named by ``labels[series]``."""
  num_layers = rows[0][1].shape[1]
  fig, axes = plt.subplots(len(rows), num_layers, sharex=True, sharey=True, squeeze=False,
                           figsize=(3.4 * num_layers + 1.6, 0.6 + 1.45 * len(rows)))
  cmap = plt.get_cmap(colormap)
  shades = [cmap(0.35 + 0.65 * i / max(1, len(labels) - 1)) for i in range(len(labels))]
  for i, (name, counts) in enumerate(rows):
    for layer in range(num_layers):
      ax = axes[i, layer]
      if not np.isfinite(counts).any():
        ax.text(0.5, 0.5, "every seed diverged", transform=ax.transAxes, ha="center",
                va="center", fontsize=7, color="0.4")
      else:
        for series, (shade, label) in enumerate(zip(shades, labels)):
          ax.stairs(counts[series, layer], edges, color=shade, lw=1.3, label=label)
      ax.grid(alpha=0.25)
      ax.tick_params(labelsize=7)
      if i == 0:
        ax.set_title(f"hidden layer {layer + 1}", loc="right", fontsize=8)
      if i == len(rows) - 1:
        ax.set_xlabel(f"unit's mean preactivation, hidden layer {layer + 1}", fontsize=8)
    axes[i, 0].set_title(name, loc="left", fontsize=8)
  fig.supylabel("units per bin (mean over seeds)", fontsize=9)
  fig.suptitle(title, fontsize=10)
  handles, names = axes[0, -1].get_legend_handles_labels()
  for row in axes:  # a row whose seeds all diverged has no curves
    if handles:
      break
    handles, names = row[-1].get_legend_handles_labels()
  if handles:
    axes[0, -1].legend(handles, names, fontsize=7, loc="upper left",
                       bbox_to_anchor=(1.03, 1.0), borderaxespad=0.0)
  fig.tight_layout()
  _save(fig, path)


def _seed_mean(counts: np.ndarray) -> np.ndarray:
  """Mean over the leading (seed) axis; NaN where there is no seed."""
  if not counts.shape[0]:
    return np.full(counts.shape[1:], np.nan)
  return counts.mean(axis=0)


def _seeds_note(histograms: dict, names: Sequence[str], key: str,
                exclude: Mapping[str, np.ndarray] | None) -> str:
  """``"mean over 3 seeds"`` (the seeds each condition keeps), with whether
  diverged ones are left out."""
  kept = [_kept_seeds(histograms[key.format(name)], name, exclude).shape[0] for name in names]
  total = [histograms[key.format(name)].shape[0] for name in names]
  seeds = _count_text(kept)
  note = f"mean over {seeds} seed{'' if seeds == '1' else 's'}"
  return note + ("; diverged seeds left out" if sum(kept) < sum(total) else "")


def plot_histograms(histograms: dict, interventions: Sequence[str], path: str,
                    num_times: int = 4, exclude: Mapping[str, np.ndarray] | None = None) -> None:
  """Per condition (rows) and hidden layer (columns), the histogram of per-unit
  mean preactivations at the end of `num_times` tasks spread over the run
  (outlines, light to dark), averaged over seeds: how the distribution
  drifts. `exclude` (condition -> ``[seeds]`` bools, e.g.
  `results.diverged_seeds`) leaves seeds out, as the curves leave out
  diverged seeds."""
  names = [n for n in interventions if n in histograms]
  if not names:
    return
  num_tasks = histograms[names[0]].shape[1]
  times = sorted(set(np.linspace(0, num_tasks - 1, num_times).round().astype(int)))
  rows = [(name, _seed_mean(_kept_seeds(histograms[name], name, exclude)[:, times]))
          for name in names]
  _histogram_figure(histograms["edges"], rows, [f"end of task {t}" for t in times], path,
                    "per-unit mean preactivation over the probe batch, at task ends\n"
                    + _seeds_note(histograms, names, "{}", exclude), "viridis_r")


def plot_within_task_histograms(histograms: dict, interventions: Sequence[str],
                                every: int, path: str, task: int = -1,
                                exclude: Mapping[str, np.ndarray] | None = None) -> None:
  """Per condition (rows) and hidden layer (columns), the histogram of per-unit
  mean preactivations after every `every` steps of one task (outlines, light
  to dark; default the last task), averaged over seeds (less those `exclude`
  marks, as in `plot_histograms`): the drift after a task switch."""
  names = [n for n in interventions if f"{n}/within_task" in histograms]
  if not names:
    return
  rows = []
  for name in names:
    counts = _kept_seeds(histograms[f"{name}/within_task"], name, exclude)[:, task]
    rows.append((name, _seed_mean(counts)))  # counts: [seed, part, layer, bin]
  num_parts = rows[0][1].shape[0]
  label = task if task >= 0 else histograms[names[0]].shape[1] + task
  _histogram_figure(histograms["edges"], rows,
                    [f"step {(j + 1) * every}" for j in range(num_parts)], path,
                    f"per-unit mean preactivation over the probe batch, within task {label}\n"
                    + _seeds_note(histograms, names, "{}/within_task", exclude), "plasma_r")


STEP_PANELS = (("train_loss", "training loss"), ("train_accuracy", "training accuracy"))


def step_curves(step_rows: Sequence[dict], condition: str, key: str,
                exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """``(steps [P], values [seeds, P])`` of steps.csv's column `key` for one
  condition (`results.condition`), seeds in ascending order, less those
  `exclude` marks (bools over the same seeds)."""
  sel = [r for r in step_rows if results.condition(r) == condition]
  seeds = sorted({r["seed"] for r in sel})
  steps = np.array(sorted({r["step"] for r in sel}))
  values = np.full((len(seeds), len(steps)), np.nan)
  where = {s: i for i, s in enumerate(steps)}
  for r in sel:
    values[seeds.index(r["seed"]), where[r["step"]]] = r[key]
  if exclude is not None and len(exclude) == len(seeds):
    values = values[~np.asarray(exclude, bool)]
  return steps, values


def plot_step_curves(step_rows: Sequence[dict], interventions: Sequence[str], path: str,
                     steps_per_task: int, title: str = "",
                     exclude: Mapping[str, np.ndarray] | None = None,
                     chance: float | None = None) -> list[str]:
  """Saves steps.png: the training loss and accuracy against the training step
  (steps.csv, each point the mean over the ``log_every_steps`` steps it ends),
  per condition the mean over seeds and a band of ± 1 std, less the seeds
  `exclude` marks (those that diverged), a dotted line at every task switch
  and `chance` on the accuracy panel: how fast a network learns again after a
  switch. A panel with nothing to show (`omission`: accuracy of a regression)
  is left out and named; returns the columns drawn (none: nothing written)."""
  styles = condition_styles(interventions)
  exclude = exclude or {}
  drawn, omitted, kept = [], [], []
  for key, label in STEP_PANELS:
    curves = {}
    for name in interventions:
      steps, values = step_curves(step_rows, name, key, exclude.get(name))
      if values.size:
        curves[name] = (steps, values)
        if key == STEP_PANELS[0][0]:
          kept.append(values.shape[0])
    why = omission([v for _, v in curves.values()])
    if why is None:
      drawn.append((key, label, curves))
    else:
      omitted.append((label, why))
  if not drawn:
    return []
  fig, axes = plt.subplots(len(drawn), 1, figsize=(11, 3.2 * len(drawn)), sharex=True,
                           squeeze=False)
  axes = list(axes[:, 0])
  last = 0
  for ax, (key, label, curves) in zip(axes, drawn):
    for name, (steps, values) in curves.items():
      mean, std = mean_std(values)
      ax.plot(steps, mean, label=name, lw=1.2, **styles[name])
      ax.fill_between(steps, mean - std, mean + std, color=styles[name]["color"],
                      alpha=0.2 if len(curves) <= 10 else 0.1, lw=0)
      last = max(last, int(steps[-1]))
    if chance is not None and key.endswith("accuracy"):
      ax.axhline(chance, color="0.35", ls="--", lw=1.2,
                 label=f"chance (1/{round(1 / chance)})")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  switches = np.arange(steps_per_task, last, steps_per_task)
  if len(switches) <= 100:
    for ax in axes:
      for x in switches:
        ax.axvline(x, color="0.6", lw=0.6, ls=":", zorder=0)
  axes[-1].set_xlabel(f"training step (a new task every {steps_per_task} steps, dotted)")
  _legend(fig, axes)
  seeds = _count_text(kept) if kept else "0"
  band = BAND.replace("over seeds", f"over {seeds} seed{'' if seeds == '1' else 's'}")
  if any(np.asarray(marks, bool).any() for marks in exclude.values()):
    band += "; diverged seeds left out"
  _title(fig, title, band)
  fig.tight_layout()
  _omitted_note(fig, omitted)
  _save(fig, path)
  return [key for key, _, _ in drawn]
