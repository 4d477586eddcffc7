"""Figures of an RL run: return and probes against environment steps.

Every curve is the mean over seeds with a band of ± one standard deviation
over seeds (the spread the summary table states), said on each figure; a
panel whose column was not measured (all NaN) is left out.
"""

from __future__ import annotations

from typing import Sequence
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from plastix import plotting
from plastix.rl import results

BAND = "mean over seeds, band ± 1 std"

PROBE_PANELS = (("loss", "training loss"), ("td_error", "|TD error| (replay batch)"),
                ("q_mean_abs", "|Q| (probe states)"), ("dead_fraction", "dead-unit fraction"),
                ("dormant_fraction", "dormant fraction"), ("effective_rank", "feature eff. rank"),
                ("srank", "feature srank"), ("param_norm", "parameter norm"),
                ("sharpness", "TD-loss sharpness"))


def _curve(ax, rows, condition: str, key: str, label: str | None = None,
           linestyle: str = "-", color=None):
  """Draws one condition's column; returns its line's colour (None: nothing to draw)."""
  steps, values = results.curves(rows, condition, key)
  if not values.size or not np.isfinite(values).any():
    return None
  with np.errstate(all="ignore"), warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # windows where no seed finished an episode
    mean, std = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
  ok = np.isfinite(mean)
  line, = ax.plot(steps[ok], mean[ok], marker="o", markersize=2.5, linestyle=linestyle,
                  color=color, label=condition if label is None else label)
  ax.fill_between(steps[ok], (mean - std)[ok], (mean + std)[ok], color=line.get_color(),
                  alpha=0.2, linewidth=0)
  return line.get_color()


def _measured(rows, key: str) -> bool:
  return any(key in r and r[key] is not None and np.isfinite(r[key]) for r in rows)


def game_switches(rows: Sequence[dict]) -> list[int]:
  """The ``env_steps`` of the first window whose game differs from the window
  before's (a sequence of games; [] for one game)."""
  games = {}
  for r in rows:
    if "game" in r:
      games.setdefault(int(r["env_steps"]), int(float(r["game"])))
  steps = sorted(games)
  return [b for a, b in zip(steps, steps[1:]) if games[a] != games[b]]


def plot_returns(rows: Sequence[dict], conditions: Sequence[str], path: str,
                 title: str = "") -> None:
  """``episode_return`` (training episodes) against environment steps, one
  curve per condition, and ``eval_return`` dashed where evaluation episodes
  finished."""
  fig, ax = plt.subplots(figsize=(6.5, 4))
  drawn = False
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for i, condition in enumerate(conditions):
    color = colors[i % len(colors)]  # a condition's training and evaluation curves alike
    drawn |= _curve(ax, rows, condition, "episode_return", color=color) is not None
    drawn |= _curve(ax, rows, condition, "eval_return", f"{condition} (evaluation)", "--",
                    color=color) is not None
  switches = game_switches(rows)
  for i, steps in enumerate(switches):
    ax.axvline(steps, color="0.4", linestyle=":", linewidth=1,
               label="game switch (in the window ending here)" if i == 0 else None)
  ax.set_xlabel("environment steps (per seed)")
  ax.set_ylabel("episode return")
  ax.set_title(f"{title}\n({BAND})" if title else BAND, fontsize=9)
  if drawn or switches:
    ax.legend(fontsize=7)
  if not drawn:
    ax.text(0.5, 0.5, "no episode finished in any window", transform=ax.transAxes,
            ha="center", va="center", fontsize=9, color="0.4")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  plotting.save_figure(fig, path)


def plot_probes(rows: Sequence[dict], conditions: Sequence[str], path: str,
                title: str = "") -> list[str]:
  """One panel per measured probe against environment steps; returns the panels drawn."""
  keys = [(k, label) for k, label in PROBE_PANELS if _measured(rows, k)]
  if not keys:
    return []
  cols = 3
  nrows = -(-len(keys) // cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
  for ax, (key, label) in zip(axes.flat, keys):
    for condition in conditions:
      _curve(ax, rows, condition, key)
    ax.set_title(label, fontsize=9)
    ax.set_xlabel("environment steps", fontsize=8)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(keys):]:
    ax.remove()
  axes.flat[0].legend(fontsize=7)
  fig.suptitle(f"{title} ({BAND})" if title else BAND, fontsize=10)
  fig.tight_layout()
  plotting.save_figure(fig, path)
  return [k for k, _ in keys]
