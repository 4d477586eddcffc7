"""The study report on RL cells, from small workdirs written here with numbers known by hand."""

import csv
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from plastix import report
from plastix.rl import results as rl_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAN = math.nan
W = 6  # windows: the last third is windows 4 and 5.
COLUMNS = ("intervention", "seed", "window", "env_steps", "episode_return", "num_episodes",
           "loss", "td_error", "q_mean_abs", "q_max_mean", "dead_fraction", "dormant_fraction",
           "linearized_fraction", "preact_drift", "effective_rank", "srank", "param_norm",
           "sharpness", "epsilon", "game", "diverged_step", "num_reset", "diverged")

# Episode return per window, per (intervention, seed), in the breakout cell;
# final = the last window's, AUC = the mean over the finite windows.
RETURNS = {
    ("baseline", 0): [NAN, 1, 2, 3, 4, 5],      # final 5, AUC 15 / 5 = 3
    ("baseline", 1): [NAN, 1, 2, 3, 4, 7],      # final 7, AUC 17 / 5 = 3.4
    ("layer_norm", 0): [1, 2, 3, 4, 5, 9],      # final 9, AUC 24 / 6 = 4
    ("layer_norm", 1): [2, 3, 4, 5, 6, 10],     # final 10, AUC 30 / 6 = 5
    ("weight_decay", 0): [NAN, 1, 2, 3, 4, 6],  # final 6, AUC 16 / 5 = 3.2
    ("weight_decay", 1): [NAN, 1, 2, 3, 5, 6],  # final 6, AUC 17 / 5 = 3.4
    ("weight_decay", 2): [NAN, 1, 100, 100, 100, 100],  # diverged at window 2
    ("l2", 0): [1, 1, 1, 1, 1, 1],              # both seeds diverged
    ("l2", 1): [1, 1, 1, 1, 1, 1],
}
DIVERGED_FROM = {("weight_decay", 2): 2, ("l2", 0): 1, ("l2", 1): 3}
# Dead fraction: windows 0-3 are 0.9 (outside the last third), then windows 4 and 5.
DEAD_TAIL = {
    ("baseline", 0): (0.2, 0.4),       # 0.3
    ("baseline", 1): (0.4, 0.6),       # 0.5   -> baseline 0.4 ± 0.1
    ("layer_norm", 0): (0.0, 0.0),     # 0.0
    ("layer_norm", 1): (0.1, 0.1),     # 0.1   -> 0.05 ± 0.05: -0.35, moved
    ("weight_decay", 0): (0.3, 0.3),   # 0.3
    ("weight_decay", 1): (0.5, 0.7),   # 0.6   -> 0.45 ± 0.15: +0.05, not moved
    ("weight_decay", 2): (1.0, 1.0),
    ("l2", 0): (1.0, 1.0), ("l2", 1): (1.0, 1.0),
}
# Sharpness, measured on windows 2 and 5: the last third holds window 5 only.
SHARPNESS = {
    ("baseline", 0): (50.0, 10.0), ("baseline", 1): (50.0, 14.0),          # 12 ± 2
    ("layer_norm", 0): (50.0, 5.0), ("layer_norm", 1): (50.0, 3.0),        # 4 ± 1: -8, moved
    ("weight_decay", 0): (50.0, 11.0), ("weight_decay", 1): (50.0, 13.0),  # 12 ± 1: 0
    ("weight_decay", 2): (50.0, 99.0), ("l2", 0): (1.0, 1.0), ("l2", 1): (1.0, 1.0),
}


def _rows(returns=RETURNS, games=(0,) * W, hparams=""):
  rows = []
  for (name, seed), ret in returns.items():
    div = DIVERGED_FROM.get((name, seed))
    dead = DEAD_TAIL[(name, seed)]
    sharp = SHARPNESS[(name, seed)]
    for w in range(W):
      row = dict.fromkeys(COLUMNS, NAN)  # dormant, ranks, ...: never measured
      row.update(
          intervention=name, seed=seed, window=w, env_steps=1000 * (w + 1),
          episode_return=ret[w], num_episodes=0 if math.isnan(ret[w]) else 3, loss=0.5,
          td_error=0.1 * w,                                      # the same everywhere
          q_mean_abs=1.0,                                        # the same everywhere
          param_norm=(20.0 if name == "layer_norm" else 10.0) + seed / 2,
          dead_fraction=0.9 if w < 4 else dead[w - 4],
          sharpness={2: sharp[0], 5: sharp[1]}.get(w, NAN),
          epsilon=1.0 - w / 10, game=games[w],
          diverged_step=-1 if div is None or w < div else div * 1000,
          num_reset=0, diverged=int(div is not None and w >= div))
      if hparams:
        row["hparams"] = hparams
      rows.append(row)
  return rows


def _write_cell(folder, config, rows, summary=True):
  """config.json, metrics.csv (NaN as "nan", as the run writes it) and
  summary.json (written by hand from the numbers above, for its order)."""
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(config, f)
  with open(os.path.join(folder, "metrics.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
  if summary:
    conditions = list(dict.fromkeys(r["intervention"] for r in rows))
    with open(os.path.join(folder, "summary.json"), "w") as f:
      json.dump({c: {"final_return": None, "final_return_std": None, "auc_return": None,
                     "auc_return_std": None, "num_seeds": 2, "num_diverged": 0}
                 for c in conditions}, f)


def _config(name, env_name="breakout"):
  return {"name": name, "agent": "dqn", "env_name": env_name, "num_seeds": 2,
          "interventions": "baseline,layer_norm,weight_decay,l2", "model": {"name": "cnn"}}


def _supervised_cell(folder):
  """A supervised cell: layer_norm and baseline, 2 seeds, 2 tasks."""
  rows = []
  for name in ("baseline", "layer_norm"):
    for seed in range(2):
      for t in range(2):
        rows.append({"intervention": name, "seed": seed, "task": t, "train_loss": 1.0,
                     "train_accuracy": 0.9 - 0.1 * t, "dead_fraction": 0.1 * t,
                     "diverged_task": -1})
  os.makedirs(folder)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump({"name": "shift", "dataset": "fashion_mnist_small", "model": {"name": "mlp"}}, f)
  with open(os.path.join(folder, "metrics.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  with open(os.path.join(folder, "summary.json"), "w") as f:
    json.dump({"interventions": {"baseline": {}, "layer_norm": {}}}, f)


@pytest.fixture
def rl_study(tmp_path):
  """An RL study: breakout done, a game sequence without a baseline done,
  space_invaders still running (no summary.json yet)."""
  root = tmp_path / "rl"
  names = ("a_breakout", "b_space_invaders", "c_sequence")
  envs = ("breakout", "space_invaders", "breakout+space_invaders")
  record = {"study": "rl_minatar", "scale": "cpu", "title": "DQN on MinAtar",
            "description": "LayerNorm keeps value-based agents learning.",
            "command": "python -m experiments.study --config=configs/studies/rl_minatar.py:cpu",
            "machine": "x86_64, test, 2 cores", "sweeps": [],
            "cells": [{"name": n, "dir": f"cells/{n}", "overrides": {"env_name": e},
                       "architecture": "cnn", "wall_time_s": 600.0} for n, e in zip(names, envs)],
            "wall_time_s": 1800.0}
  os.makedirs(root)
  with open(root / "study.json", "w") as f:
    json.dump(record, f)
  _write_cell(root / "cells" / names[0], _config(f"rl_minatar/{names[0]}"), _rows())
  _write_cell(root / "cells" / names[1], _config(f"rl_minatar/{names[1]}", envs[1]), _rows(),
              summary=False)
  sequence = {k: v for k, v in RETURNS.items() if k[0] == "layer_norm"}
  _write_cell(root / "cells" / names[2], _config(f"rl_minatar/{names[2]}", envs[2]),
              _rows(sequence, games=(0, 0, 0, 1, 1, 1)))
  return str(root)


# ----------------------------------------------------------------------------
# Per-seed quantities.


def test_tail_windows_and_means_by_hand():
  assert [report.tail_windows(w) for w in (0, 1, 2, 3, 4, 6, 10)] == [0, 1, 1, 1, 2, 2, 4]
  curves = [[9.0, 9.0, 9.0, 1.0, 3.0, 5.0],      # 6 windows: the last 2 -> 4
            [9.0, 9.0, 9.0, 9.0, NAN, 2.0],      # measured once there -> 2
            [9.0, 9.0, 9.0, 9.0, NAN, NAN]]      # never there -> NaN
  np.testing.assert_allclose(report.tail_mean(curves), [4.0, 2.0, NAN])
  np.testing.assert_allclose(report.return_auc([[NAN, 1.0, 2.0, 6.0], [NAN] * 4]), [3.0, NAN])


def test_returns_and_probes_per_seed(rl_study):
  study = report.load_study(rl_study)
  assert [c.name for c in study.rl_cells] == ["a_breakout", "c_sequence"] and not study.cells
  cell = study.rl_cells[0]
  assert cell.agent == "dqn" and cell.games == ["breakout"]
  by_name = {c.condition: c for c in report.rl_condition_seeds(cell)}
  assert list(by_name) == ["baseline", "layer_norm", "weight_decay", "l2"]
  base, ln, wd, l2 = by_name.values()
  np.testing.assert_allclose(base.final_return, [5, 7])
  np.testing.assert_allclose(base.auc_return, [3.0, 3.4])
  np.testing.assert_allclose(ln.auc_return, [4.0, 5.0])
  # weight_decay's third seed diverged: left out of every per-seed array.
  assert (wd.num_seeds, wd.num_diverged, wd.num_windows) == (3, 1, W)
  np.testing.assert_allclose(wd.auc_return, [3.2, 3.4])
  np.testing.assert_allclose(wd.probes["dead_fraction"], [0.3, 0.6])
  assert l2.all_diverged and l2.auc_return.size == 0
  np.testing.assert_allclose(base.probes["dead_fraction"], [0.3, 0.5])  # not 0.9: windows 4-5
  np.testing.assert_allclose(base.probes["sharpness"], [10.0, 14.0])    # window 5 only
  assert np.isnan(base.probes["srank"]).all()
  assert report.ran_probes(by_name.values()) == [
      "dead_fraction", "param_norm", "q_mean_abs", "td_error", "sharpness"]


def test_returns_agree_with_the_runs_own_summary(rl_study):
  """The report's final and AUC returns are `plastix.rl.results.summarize`'s."""
  cell = report.load_study(rl_study).rl_cells[0]
  summary = rl_results.summarize(cell.rows, cell.conditions)
  table = report.rl_mechanism_table(report.rl_condition_seeds(cell))
  for row in table.rows:
    s = summary[row.condition.condition]
    assert (row.condition.num_seeds, row.condition.num_diverged) == (
        s["num_seeds"], s["num_diverged"])
    if row.condition.all_diverged:
      assert s["final_return"] is None and row.final_return.n == 0
      continue
    assert row.final_return.mean == pytest.approx(s["final_return"])
    assert row.final_return.std == pytest.approx(s["final_return_std"])
    assert row.auc_return.mean == pytest.approx(s["auc_return"])
    assert row.auc_return.std == pytest.approx(s["auc_return_std"])


# ----------------------------------------------------------------------------
# The tables.


def test_mechanism_table_numbers_and_marks(rl_study):
  cell = report.load_study(rl_study).rl_cells[0]
  table = report.rl_mechanism_table(report.rl_condition_seeds(cell))
  assert table.columns == ("auc_return", "dead_fraction", "param_norm", "q_mean_abs",
                           "td_error", "sharpness")
  rows = {r.condition.condition: r for r in table.rows}
  base = rows["baseline"]
  assert base.baseline == "baseline"
  auc = base.changes["auc_return"]
  assert (auc.mean, auc.std, auc.n) == (pytest.approx(3.2), pytest.approx(0.2), 2)
  assert (base.final_return.mean, base.final_return.std) == (pytest.approx(6), pytest.approx(1))
  ln = rows["layer_norm"].changes
  # AUC: 4.5 - 3.2 = +1.3 against max(0.5, 0.2): moved.
  assert ln["auc_return"].change == pytest.approx(1.3) and ln["auc_return"].moved
  # Dead units: 0.05 - 0.4 = -0.35 against max(0.05, 0.1): moved.
  assert ln["dead_fraction"].change == pytest.approx(-0.35) and ln["dead_fraction"].moved
  assert ln["sharpness"].change == pytest.approx(-8.0) and ln["sharpness"].moved
  assert ln["param_norm"].change == pytest.approx(10.0) and ln["param_norm"].moved
  # Equal means, no spread: not moved.
  assert ln["q_mean_abs"].change == 0.0 and not ln["q_mean_abs"].moved
  wd = rows["weight_decay"].changes
  # AUC: 3.3 - 3.2 = +0.1 against max(0.1, 0.2); dead: +0.05 against max(0.15, 0.1).
  assert wd["auc_return"].change == pytest.approx(0.1) and not wd["auc_return"].moved
  assert wd["dead_fraction"].change == pytest.approx(0.05) and not wd["dead_fraction"].moved
  assert wd["sharpness"].change == pytest.approx(0.0) and not wd["sharpness"].moved
  assert all(v is None for v in rows["l2"].changes.values())

  text = report.format_rl_mechanism_table(table)
  assert text.splitlines()[0] == ("| condition | seeds | Δ AUC return | Δ dead units | "
                                  "Δ parameter norm | Δ Q magnitude | Δ TD error | Δ sharpness |")
  assert "| `baseline` | 2 | *3.2 ± 0.2* | *0.4 ± 0.1* | *10.2 ± 0.25* |" in text
  assert "| `layer_norm` | 2 | **+1.3 ↑** | **-0.35 ↓** | **+10 ↑** | +0 | +0 | **-8 ↓** |" \
      in text
  assert "| `weight_decay` | 3 (1 diverged) | +0.1 | +0.05 | +0 | +0 | +0 | +0 |" in text
  assert "| `l2` | 2 (2 diverged) | diverged |  |  |  |  |  |" in text
  for absent in ("dormant", "srank", "feature rank"):
    assert absent not in text
  assert {line.count("|") for line in text.splitlines()} == {len(table.columns) + 3}

  returns = report.format_returns_table(table)
  assert returns.splitlines()[0] == "| condition | diverged / seeds | final return | AUC return |"
  assert "| `baseline` | 0/2 | 6 ± 1 | 3.2 ± 0.2 |" in returns
  assert "| `layer_norm` | 0/2 | 9.5 ± 0.5 | 4.5 ± 0.5 |" in returns
  assert "| `weight_decay` | 1/3 | 6 ± 0 | 3.3 ± 0.1 |" in returns
  assert "| `l2` | 2/2 | diverged | diverged |" in returns
  assert {line.count("|") for line in returns.splitlines()} == {5}


def _seeds(condition, auc, grid_label="", num_diverged=0):
  auc = np.asarray(auc, float)
  return report.RLConditionSeeds(
      cell="c", condition=report.grid_lib.condition(condition, grid_label),
      intervention=condition, grid_label=grid_label, num_seeds=len(auc) + num_diverged,
      num_diverged=num_diverged, num_windows=3, final_return=auc, auc_return=auc,
      probes={"srank": np.full(len(auc), NAN)})


def test_baseline_matched_by_grid_point_one_seed_and_no_baseline():
  lr = "optimizer.learning_rate"
  table = report.rl_mechanism_table([
      _seeds("baseline", [1.0, 1.2], f"{lr}=0.1"), _seeds("baseline", [4.0, 4.5], f"{lr}=1"),
      _seeds("layer_norm", [2.0, 2.2], f"{lr}=0.1"), _seeds("layer_norm", [4.25, 4.75], f"{lr}=1"),
      _seeds("redo", [9.0], f"{lr}=1", num_diverged=1)])
  assert table.probes == () and table.no_baseline == ()
  rows = {r.condition.condition: r for r in table.rows}
  low = rows[f"layer_norm [{lr}=0.1]"]
  assert low.baseline == f"baseline [{lr}=0.1]"
  assert low.changes["auc_return"].change == pytest.approx(1.0) and low.changes["auc_return"].moved
  high = rows[f"layer_norm [{lr}=1]"].changes["auc_return"]
  assert high.change == 0.25 and not high.moved  # 0.25 = max(0.25, 0.25): not larger
  # One healthy seed: far off, yet not marked moved.
  one = rows[f"redo [{lr}=1]"].changes["auc_return"]
  assert one.change == pytest.approx(4.75) and not one.moved
  table = report.rl_mechanism_table([_seeds("layer_norm", [1.0, 2.0])])
  assert table.no_baseline == ("",) and table.rows[0].changes["auc_return"] is None
  table = report.rl_mechanism_table([_seeds("baseline", [], num_diverged=2),
                                     _seeds("layer_norm", [1.0, 2.0])])
  assert table.diverged_baseline == ("",) and table.rows[1].changes["auc_return"] is None


def test_game_switches(rl_study):
  cell = report.load_study(rl_study).rl_cells[1]
  assert cell.games == ["breakout", "space_invaders"]
  assert report.game_switches(cell) == [(3000.0, 4000.0, 1)]
  assert report.game_switches(report.load_study(rl_study).rl_cells[0]) == []


# ----------------------------------------------------------------------------
# report.md and its figures.


def test_report_of_an_rl_study(rl_study, tmp_path):
  study = report.load_study(rl_study)
  out = tmp_path / "out"
  with open(report.write_report([study], str(out))) as f:
    text = f.read()
  assert text.startswith("# DQN on MinAtar\n")
  assert "- **wall time**: 30.0 min" in text and "- **machine**: x86_64, test, 2 cores" in text
  assert ("2 of 3 found; missing: `b_space_invaders` (not finished: no summary.json yet)"
          in text)
  assert "| `a_breakout` | cnn (dqn) | `env_name=breakout` | 4 | 10.0 min | done |" in text
  # No supervised section; the RL sections without the mixed study's suffix.
  assert "## Learning curves" not in text and "plasticity loss" not in text
  assert "\n## Returns\n" in text and "\n## Mechanism table\n" in text
  assert "### `a_breakout` (dqn, cnn, breakout)" in text
  assert f"Rule: {report.MOVED_RULE}" in text
  assert "switches to `space_invaders` between 3,000 and 4,000 environment steps" in text
  assert "No baseline condition in this cell" in text.split("### `c_sequence`")[-1]
  images = re.findall(r"^!\[[^\]]*\]\(([^)]+)\)$", text, re.MULTILINE)
  assert images == ["rl_minatar-a_breakout-returns.png", "rl_minatar-a_breakout-probes.png",
                    "rl_minatar-c_sequence-returns.png", "rl_minatar-c_sequence-probes.png"]
  assert sorted(images) == sorted(f for f in os.listdir(out) if f.endswith(".png"))


def test_all_diverged_cell_has_no_figure(tmp_path):
  diverged = {k: v for k, v in RETURNS.items() if k[0] == "l2"}
  _write_cell(tmp_path / "run", _config("dqn_l2"), _rows(diverged))
  study = report.load_study(str(tmp_path / "run"))
  assert study.name == "dqn_l2" and [c.name for c in study.rl_cells] == ["dqn_l2"]
  with open(report.write_report([study], str(tmp_path / "out"))) as f:
    text = f.read()
  assert "Every seed of every condition diverged." in text
  assert "Every seed of the baseline" not in text and "No baseline condition" in text
  assert os.listdir(tmp_path / "out") == ["report.md"]


def test_mixed_study(tmp_path):
  root = tmp_path / "mixed"
  _supervised_cell(root / "cells" / "sup")
  _write_cell(root / "cells" / "rl", _config("mixed/rl"), _rows())
  with open(root / "study.json", "w") as f:
    json.dump({"study": "mixed", "cells": [{"name": "sup"}, {"name": "rl"}]}, f)
  study = report.load_study(str(root))
  assert [c.name for c in study.cells] == ["sup"] and [c.name for c in study.rl_cells] == ["rl"]
  with open(report.write_report([study], str(root))) as f:
    text = f.read()
  assert "2 of 2 found" in text
  for heading in ("## Learning curves", "## Mechanism table", "## Returns: RL cells",
                  "## Mechanism table: RL cells"):
    assert f"\n{heading}\n" in text
  # The supervised table has its plasticity loss; the RL one its AUC return.
  supervised, rl = text.split("## Returns: RL cells")
  assert "| condition | seeds | plasticity loss | Δ dead units |" in supervised
  assert "Δ AUC return" in rl and "plasticity loss" not in rl
  assert os.path.isfile(root / "mixed-rl-returns.png")
  assert os.path.isfile(root / "mixed-sup-curves.png")


def test_rl_metrics_without_a_needed_column(tmp_path):
  rows = [{k: v for k, v in r.items() if k != "episode_return"} for r in _rows()]
  _write_cell(tmp_path / "run", _config("dqn"), rows)
  with pytest.raises(report.ReportError, match="has no column episode_return"):
    report.load_study(str(tmp_path / "run"))


def test_command_line_on_an_rl_study(rl_study, tmp_path):
  out = tmp_path / "report"
  result = subprocess.run(
      [sys.executable, "-m", "experiments.report", f"--workdir={rl_study}", f"--out={out}"],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  with open(out / "report.md") as f:
    text = f.read()
  images = re.findall(r"^!\[[^\]]*\]\(([^)]+)\)$", text, re.MULTILINE)
  assert len(images) == 4
  for image in images:
    with open(out / image, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert "**+1.3 ↑**" in text


def test_returns_table_adds_evaluation_and_human_normalised_columns():
  table = report.rl_mechanism_table([_seeds("baseline", [1.0, 3.0]),
                                     _seeds("layer_norm", [2.0, 4.0])])
  summary = {"baseline": {"final_eval_return": 2.5, "final_eval_return_std": 0.5,
                          "final_return_hns": -0.0625, "final_eval_return_hns": 0.0},
             "layer_norm": {"final_eval_return": None, "final_eval_return_std": None,
                            "final_return_hns": 0.125, "final_eval_return_hns": None}}
  lines = report.format_returns_table(table, summary).splitlines()
  assert lines[0] == ("| condition | diverged / seeds | final return | AUC return | "
                      "final eval return | final return (HNS) | final eval return (HNS) |")
  assert lines[2] == "| `baseline` | 0/2 | 2 ± 1 | 2 ± 1 | 2.5 ± 0.5 | -0.0625 | 0 |"
  assert lines[3] == "| `layer_norm` | 0/2 | 3 ± 1 | 3 ± 1 | n/a | 0.125 | n/a |"
  # One healthy seed: no spread, as in the other columns.
  one = report.rl_mechanism_table([_seeds("baseline", [1.0])])
  assert report.format_returns_table(one, summary).splitlines()[2] == (
      "| `baseline` | 0/1 | 1 | 1 | 2.5 | -0.0625 | 0 |")
  # Without those keys (MinAtar), the four columns alone.
  assert report.format_returns_table(table, {"baseline": {"final_return": 2.0}}).splitlines()[0] \
      == "| condition | diverged / seeds | final return | AUC return |"
