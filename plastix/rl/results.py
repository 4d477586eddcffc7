r"""An RL run's metrics as rows (``metrics.csv``) and its summary (``summary.json``).

One row per (intervention, grid point, seed, evaluation window) with
``env_steps`` and every `plastix.rl.loop.WindowMetrics` field. Per condition
(an intervention at a grid point), over the seeds that never diverged:

  final_return  mean over seeds of R_s(last window),
  auc_return    mean over seeds of (1 / W) sum_w R_s(w)   (the mean return over the run),

where ``R_s(w)`` is seed s's mean return of the episodes that finished in
window w (windows where none finished are left out of a seed's mean); each
with ``_std``, the standard deviation over seeds (ddof 0), and ``num_seeds``
and ``num_diverged``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from plastix import grid as grid_lib
from plastix import results as base

SUMMARY_KEYS = ("final_return", "auc_return")


def metrics_to_rows(intervention: str, metrics, seeds: Sequence[int],
                    points: Sequence[dict] = ({},)) -> list[dict]:
  """One row per (run, window) from `WindowMetrics` with [run, window] axes;
  run ``g * len(seeds) + s`` is grid point ``points[g]``, seed ``seeds[s]``."""
  m = {k: np.asarray(v) for k, v in metrics._asdict().items()}
  num_runs, num_windows = m["episode_return"].shape
  if len(seeds) * len(points) != num_runs:
    raise ValueError(f"{len(seeds)} seeds x {len(points)} grid points for {num_runs} runs")
  rows = []
  for r in range(num_runs):
    point = points[r // len(seeds)]
    for w in range(num_windows):
      row = {"intervention": intervention, "seed": int(seeds[r % len(seeds)]), "window": w}
      if point:
        row["hparams"] = grid_lib.label(point)
        row.update(point)
      row.update({k: v[r, w].item() for k, v in m.items()})
      row["diverged"] = int(row["diverged_step"] >= 0)
      rows.append(row)
  return rows


def curves(rows: Sequence[dict], condition: str, key: str) -> tuple[np.ndarray, np.ndarray]:
  """``(env_steps [W], values [seeds, W])`` of column `key` for one condition."""
  sel = [r for r in rows if base.condition(r) == condition]
  seeds = sorted({r["seed"] for r in sel})
  steps = sorted({r["env_steps"] for r in sel})
  out = np.full((len(seeds), len(steps)), np.nan)
  for r in sel:
    out[seeds.index(r["seed"]), steps.index(r["env_steps"])] = r[key]
  return np.asarray(steps), out


def _finite_mean(values: np.ndarray) -> float | None:
  values = values[np.isfinite(values)]
  return float(values.mean()) if values.size else None


def _std(values: np.ndarray) -> float | None:
  values = values[np.isfinite(values)]
  return float(values.std()) if values.size else None


def summarize(rows: Sequence[dict], conditions: Sequence[str]) -> dict:
  """summary.json: per condition, the module docstring's numbers."""
  out = {}
  for condition in conditions:
    _, returns = curves(rows, condition, "episode_return")
    _, diverged = curves(rows, condition, "diverged_step")
    if not returns.size:
      continue
    bad = np.any(diverged >= 0, axis=1)
    healthy = returns[~bad]
    final = healthy[:, -1] if healthy.size else np.zeros(0)
    auc = np.array([np.nan if (m := _finite_mean(r)) is None else m for r in healthy])
    out[condition] = {
        "final_return": _finite_mean(final), "final_return_std": _std(final),
        "auc_return": _finite_mean(auc), "auc_return_std": _std(auc),
        "num_seeds": int(returns.shape[0]), "num_diverged": int(bad.sum()),
    }
  return out


def format_table(summary: dict) -> str:
  """The summary as a plain-text table (mean ± std over seeds)."""
  cell = lambda m, s: "-" if m is None else (f"{m:.2f}" if s is None else f"{m:.2f} ± {s:.2f}")
  width = max([len("condition")] + [len(c) for c in summary])
  lines = [f"{'condition':<{width}}  {'final_return':>16}  {'auc_return':>16}  diverged"]
  for condition, s in summary.items():
    lines.append(f"{condition:<{width}}  {cell(s['final_return'], s['final_return_std']):>16}  "
                 f"{cell(s['auc_return'], s['auc_return_std']):>16}  "
                 f"{s['num_diverged']}/{s['num_seeds']}")
  return "\n".join(lines)

