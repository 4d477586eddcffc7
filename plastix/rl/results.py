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

With evaluation phases (``eval_steps > 0``), ``final_eval_return`` and
``auc_eval_return`` are the same numbers of ``eval_return`` (the mean return of
the evaluation episodes, epsilon ``eval_epsilon``). For a game with reference
scores (Atari, `plastix.rl.atari_scores`), ``<key>_hns`` is the
human-normalised value of each of these means,
``(x - random) / (human - random)``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from plastix import grid as grid_lib
from plastix import results as base

SUMMARY_KEYS = ("final_return", "auc_return")
EVAL_KEYS = ("final_eval_return", "auc_eval_return")


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
  """``(env_steps [W], values [seeds, W])`` of column `key` for one condition
  (NaN where a row lacks the column: one written before it existed)."""
  sel = [r for r in rows if base.condition(r) == condition]
  seeds = sorted({r["seed"] for r in sel})
  steps = sorted({r["env_steps"] for r in sel})
  out = np.full((len(seeds), len(steps)), np.nan)
  for r in sel:
    out[seeds.index(r["seed"]), steps.index(r["env_steps"])] = r.get(key, np.nan)
  return np.asarray(steps), out


def _finite_mean(values: np.ndarray) -> float | None:
  values = values[np.isfinite(values)]
  return float(values.mean()) if values.size else None


def _std(values: np.ndarray) -> float | None:
  values = values[np.isfinite(values)]
  return float(values.std()) if values.size else None


def _final_and_auc(returns: np.ndarray, bad: np.ndarray, name: str) -> dict:
  healthy = returns[~bad]
  final = healthy[:, -1] if healthy.size else np.zeros(0)
  auc = np.array([np.nan if (m := _finite_mean(r)) is None else m for r in healthy])
  return {f"final_{name}": _finite_mean(final), f"final_{name}_std": _std(final),
          f"auc_{name}": _finite_mean(auc), f"auc_{name}_std": _std(auc)}


def summarize(rows: Sequence[dict], conditions: Sequence[str],
              normalize: Callable[[float], float | None] | None = None,
              evaluated: bool | None = None) -> dict:
  """summary.json: per condition, the module docstring's numbers; `normalize`
  maps a return to its human-normalised score (None: no ``_hns`` keys);
  `evaluated`: the run had evaluation phases (None: some row has evaluation
  episodes), giving the ``eval_return`` keys (None where no episode finished)."""
  out = {}
  if evaluated is None:
    evaluated = any(float(r.get("eval_episodes") or 0) > 0 for r in rows)
  for condition in conditions:
    _, returns = curves(rows, condition, "episode_return")
    _, diverged = curves(rows, condition, "diverged_step")
    if not returns.size:
      continue
    bad = np.any(diverged >= 0, axis=1)
    entry = _final_and_auc(returns, bad, "return")
    keys = SUMMARY_KEYS
    if evaluated:
      entry.update(_final_and_auc(curves(rows, condition, "eval_return")[1], bad,
                                  "eval_return"))
      keys = keys + EVAL_KEYS
    if normalize is not None:
      for key in keys:
        entry[f"{key}_hns"] = None if entry[key] is None else normalize(entry[key])
    out[condition] = {**entry, "num_seeds": int(returns.shape[0]),
                      "num_diverged": int(bad.sum())}
  return out


def format_table(summary: dict) -> str:
  """The summary as a plain-text table (mean ± std over seeds, the mean alone
  over a single healthy seed; the evaluation and human-normalised columns when
  the summary has them)."""
  cell = lambda m, s: "-" if m is None else (f"{m:.2f}" if s is None else f"{m:.2f} ± {s:.2f}")
  first = next(iter(summary.values()), {})
  keys = [k for k in SUMMARY_KEYS + EVAL_KEYS if k in first]
  hns = [f"{k}_hns" for k in keys if f"{k}_hns" in first]
  width = max([len("condition")] + [len(c) for c in summary])
  lines = [f"{'condition':<{width}}  " + "  ".join(f"{k:>17}" for k in keys)
           + "".join(f"  {k:>21}" for k in hns) + "  diverged"]
  for condition, s in summary.items():
    one = s["num_seeds"] - s["num_diverged"] < 2  # no spread over a single seed
    lines.append(f"{condition:<{width}}  "
                 + "  ".join(f"{cell(s[k], None if one else s[f'{k}_std']):>17}" for k in keys)
                 + "".join(f"  {cell(s[k], None):>21}" for k in hns)
                 + f"  {s['num_diverged']}/{s['num_seeds']}")
  return "\n".join(lines)

