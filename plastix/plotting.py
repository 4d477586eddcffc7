"""Figures: the plasticity figure, one figure per mechanism, preactivation histograms."""

from __future__ import annotations

import io
import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
import numpy as np

from plastix import results

PANELS = (("train_accuracy", "train accuracy (end of task)"),
          ("dead_fraction", "dead-unit fraction"),
          ("param_norm", "parameter norm"))


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


def _save(fig, path: str) -> None:
  """Writes `fig` to `path` atomically (`results.write_bytes`), in the format its
  extension names (``.png``, ``.pdf``, ``.svg``, ...; PNG without one), and closes it."""
  buf = io.BytesIO()
  try:
    fig.savefig(buf, format=os.path.splitext(path)[1][1:].lower() or "png", dpi=110)
  finally:
    plt.close(fig)
  results.write_bytes(path, buf.getvalue())


save_figure = _save  # The public name, for modules that draw their own figures.


def _plot_curves(ax, rows, interventions, key, label):
  """Mean over seeds and min-max band per condition; NaN tasks (probe skipped) left out."""
  drawn = False
  for name in interventions:
    if not rows or key not in rows[0]:
      continue
    curves = results.healthy_curves(rows, name, key)
    if not curves.size:
      continue
    tasks = np.arange(curves.shape[1])
    measured = np.isfinite(curves).any(axis=0)
    if not measured.any():
      continue
    with np.errstate(all="ignore"):
      mean = np.nanmean(curves[:, measured], axis=0)
      low, high = np.nanmin(curves[:, measured], 0), np.nanmax(curves[:, measured], 0)
    (line,) = ax.plot(tasks[measured], mean, label=name, lw=1.8,
                      marker="o" if not measured.all() else None, ms=3)
    ax.fill_between(tasks[measured], low, high, color=line.get_color(), alpha=0.2, lw=0)
    drawn = True
  if not drawn:
    ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center",
            transform=ax.transAxes, color="0.5")
  ax.set_xlabel("task")
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_ylabel(label)
  ax.grid(alpha=0.3)


def plot_panels(rows: Sequence[dict], interventions: Sequence[str], panels, path: str,
                title: str = "") -> None:
  """Saves a row of panels, one per ``(column, label)``; per condition the mean over
  seeds and its min-max band. Seeds that diverged are left out, as they are
  from summary.json's means."""
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8))
  for ax, (key, label) in zip(np.atleast_1d(axes), panels):
    _plot_curves(ax, rows, interventions, key, label)
  # The legend goes on the first panel with curves (a figure's first probe may
  # not have run).
  drawn = [ax for ax in np.atleast_1d(axes) if ax.get_legend_handles_labels()[0]]
  if drawn:
    drawn[0].legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  _save(fig, path)


def plot_plasticity(rows: Sequence[dict], interventions: Sequence[str], path: str,
                    title: str = "") -> None:
  """Saves the 1x3 plasticity figure: accuracy, dead units and parameter norm per task."""
  plot_panels(rows, interventions, PANELS, path, title)


def plot_mechanisms(rows: Sequence[dict], interventions: Sequence[str], folder: str,
                    title: str = "") -> list[str]:
  """Saves ``mechanisms_<name>.png`` for each of `MECHANISM_FIGURES`; returns the paths."""
  paths = []
  for name, panels in MECHANISM_FIGURES.items():
    path = os.path.join(folder, f"mechanisms_{name}.png")
    plot_panels(rows, interventions, panels, path, title)
    paths.append(path)
  return paths


def _histogram_grid(edges, panels, path: str, color: str, panel_width: float) -> None:
  """Saves a grid of bar charts over the bins `edges`: ``panels[i][j]`` is
  ``(counts [bins], title)``; the first column's x axis is labelled."""
  rows, cols = len(panels), len(panels[0])
  fig, axes = plt.subplots(rows, cols, figsize=(panel_width * cols, 2.4 * rows), squeeze=False)
  centers, width = (edges[1:] + edges[:-1]) / 2, edges[1] - edges[0]
  for i, row in enumerate(panels):
    for j, (counts, title) in enumerate(row):
      axes[i, j].bar(centers, counts, width=width, color=color)
      axes[i, j].set_title(title, fontsize=7)
    axes[i, 0].set_xlabel("unit mean preactivation (layer 0)", fontsize=7)
  fig.tight_layout()
  _save(fig, path)


def _kept_seeds(counts: np.ndarray, name: str, exclude: Mapping[str, np.ndarray] | None):
  """`counts` ``[seed, ...]`` without the seeds `exclude` marks for condition `name`."""
  if exclude is None or name not in exclude:
    return counts
  return counts[~np.asarray(exclude[name], bool)]


def plot_histograms(histograms: dict, interventions: Sequence[str], path: str,
                    num_times: int = 4, exclude: Mapping[str, np.ndarray] | None = None) -> None:
  """Per condition (rows) the first layer's histogram of per-unit mean
  preactivations at `num_times` task ends spread over the run (columns),
  summed over seeds: how the preactivation distribution drifts. `exclude`
  (condition -> ``[seeds]`` bools, e.g. `results.diverged_seeds`) leaves
  seeds out of the sums, as the curves leave out diverged seeds."""
  names = [n for n in interventions if n in histograms]
  if not names:
    return
  num_tasks = histograms[names[0]].shape[1]
  times = sorted(set(np.linspace(0, num_tasks - 1, num_times).round().astype(int)))
  panels = [[(_kept_seeds(histograms[name], name, exclude)[:, t, 0].sum(axis=0),
              f"{name}, task {t}") for t in times]
            for name in names]
  _histogram_grid(histograms["edges"], panels, path, color="C0", panel_width=3.2)


def plot_within_task_histograms(histograms: dict, interventions: Sequence[str],
                                every: int, path: str, task: int = -1,
                                exclude: Mapping[str, np.ndarray] | None = None) -> None:
  """Per condition (rows) the first layer's histogram of per-unit mean
  preactivations after every `every` steps of one task (columns; default the
  last), summed over seeds (less those `exclude` marks, as in
  `plot_histograms`): the drift after a task switch."""
  names = [n for n in interventions if f"{n}/within_task" in histograms]
  if not names:
    return
  panels = []
  for name in names:
    counts = _kept_seeds(histograms[f"{name}/within_task"], name, exclude)[:, task]
    # counts: [seed, part, layer, bin]
    label = task if task >= 0 else histograms[name].shape[1] + task
    panels.append([(counts[:, j, 0].sum(axis=0), f"{name}, task {label}, step {(j + 1) * every}")
                   for j in range(counts.shape[1])])
  _histogram_grid(histograms["edges"], panels, path, color="C1", panel_width=2.6)
