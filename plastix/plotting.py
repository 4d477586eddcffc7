"""The plasticity figure: accuracy, dead units and parameter norm per task."""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
import numpy as np

from plastix import results

PANELS = (("train_accuracy", "train accuracy (end of task)"),
          ("dead_fraction", "dead-unit fraction"),
          ("param_norm", "parameter norm"))


def plot_plasticity(rows: Sequence[dict], interventions: Sequence[str], path: str,
                    title: str = "") -> None:
  """Saves a 1x3 figure: per intervention, the mean over seeds and its min-max band.

  Seeds that diverged are left out, as they are from summary.json's means.
  """
  fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.8))
  for ax, (key, label) in zip(axes, PANELS):
    for name in interventions:
      curves = results.healthy_curves(rows, name, key)
      if not curves.size:
        continue
      tasks = np.arange(curves.shape[1])
      mean = np.nanmean(curves, axis=0)
      (line,) = ax.plot(tasks, mean, label=name, lw=1.8)
      ax.fill_between(tasks, np.nanmin(curves, 0), np.nanmax(curves, 0),
                      color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlabel("task")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
