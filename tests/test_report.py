"""The study report, on small workdirs written here with numbers known by hand."""

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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAN = math.nan
EPS = "shift_params.eps"

# Train accuracy per task, per (intervention, eps, seed), in the mlp cell.
# Plasticity loss = acc[0] - mean(acc[1:]) (3 tasks: the window is the last 2).
ACCURACY = {
    ("baseline", 0.1, 0): [0.9, 0.8, 0.7],    # 0.9 - 0.75 = 0.15
    ("baseline", 0.1, 1): [0.9, 0.7, 0.7],    # 0.20
    ("baseline", 1.0, 0): [0.9, 0.6, 0.5],    # 0.35
    ("baseline", 1.0, 1): [0.8, 0.6, 0.2],    # 0.40
    ("layer_norm", 0.1, 0): [0.9, 0.9, 0.9],  # 0.00
    ("layer_norm", 0.1, 1): [0.8, 0.8, 0.7],  # 0.05
    ("layer_norm", 1.0, 0): [0.9, 0.8, 0.8],  # 0.10
    ("layer_norm", 1.0, 1): [0.9, 0.9, 0.7],  # 0.10
}
# Dead fraction on the last task: eps = 0.1 moves layer_norm (+0.30 against a
# spread of 0.05), eps = 1 does not (+0.05 against 0.1); the other eps's
# baseline would give other changes (+0.05 and +0.30).
DEAD = {
    ("baseline", 0.1, 0): 0.10, ("baseline", 0.1, 1): 0.20,
    ("layer_norm", 0.1, 0): 0.40, ("layer_norm", 0.1, 1): 0.50,
    ("baseline", 1.0, 0): 0.30, ("baseline", 1.0, 1): 0.50,
    ("layer_norm", 1.0, 0): 0.35, ("layer_norm", 1.0, 1): 0.55,
}


def _write_cell(folder, config, rows, empty_nan=False, summary=True):
  """Writes config.json, metrics.csv (NaN as "nan", or empty) and summary.json."""
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(config, f)
  columns = list(dict.fromkeys(k for r in rows for k in r))
  with open(os.path.join(folder, "metrics.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    for r in rows:
      writer.writerow({k: ("" if empty_nan else "nan")
                       if isinstance(v, float) and math.isnan(v) else v
                       for k, v in r.items()})
  if summary:
    conditions = list(dict.fromkeys(
        r["intervention"] + (f" [{r['hparams']}]" if r.get("hparams") else "") for r in rows))
    with open(os.path.join(folder, "summary.json"), "w") as f:
      json.dump({"interventions": {c: {"plasticity_loss": None, "num_seeds": 2}
                                   for c in conditions}}, f)


def _row(intervention, seed, task, eps=None, **values):
  row = {"intervention": intervention, "seed": seed, "task": task}
  if eps is not None:
    row.update({"hparams": f"{EPS}={eps:g}", EPS: eps})
  row.update({"train_loss": 1.0, "train_accuracy": NAN, "test_accuracy": NAN,
              "test_loss": NAN, "dead_fraction": NAN, "linearized_fraction": NAN,
              "effective_rank": NAN, "param_norm": NAN, "sharpness": NAN,
              "ntk_diagonal_share": NAN, "diverged_task": -1})
  row.update(values)
  return row


def _grid_rows(acc_shift=0.0, final_fit=False, diverged=()):
  """The grid cell's rows; `acc_shift` lowers tasks 1-2's accuracy (raising the
  plasticity loss by as much); `diverged` lists (intervention, eps, seed)."""
  rows = []
  for (name, eps, seed), acc in ACCURACY.items():
    div = (name, eps, seed) in diverged
    for t in range(3):
      rows.append(_row(
          name, seed, t, eps,
          train_accuracy=NAN if div and t else acc[t] - (acc_shift if t else 0.0),
          test_accuracy=acc[t] - 0.1,
          dead_fraction=DEAD[(name, eps, seed)] * t / 2,
          param_norm=10.0 + t + seed,
          ntk_diagonal_share=0.5 + seed / 10 if t == 1 else NAN,  # measured on task 1 only
          diverged_task=1 if div else -1,
          **({"final_fit_accuracy": 0.6 if t == 2 else NAN,
              "final_fit_accuracy_new_network": 0.9 if t == 2 else NAN} if final_fit else {})))
  return rows


def _config(name, model="mlp", dataset="fashion_mnist_small", grid=f"{EPS}=0.1,1"):
  return {"name": name, "dataset": dataset, "grid": grid, "num_tasks": 3,
          "interventions": "baseline,layer_norm", "model": {"name": model}}


@pytest.fixture
def grid_study(tmp_path):
  """A grid study over eps: cells mlp and cnn done, resnet not started, vit running."""
  root = tmp_path / "abruptness"
  cells = [("mlp", "mlp"), ("cnn", "cnn"), ("resnet", "resnet18"), ("vit", "vit_tiny")]
  record = {"study": "abruptness", "scale": "cpu", "title": "How abrupt a shift loses plasticity",
            "description": "Smaller eps is a gentler shift.",
            "command": "python -m experiments.study --config=configs/studies/abruptness.py:cpu",
            "machine": "x86_64, test, 2 cores", "sweeps": [EPS],
            "cells": [{"name": n, "dir": f"cells/{n}", "overrides": {"model.name": a},
                       "architecture": a, "wall_time_s": 12.0, "complete": n in ("mlp", "cnn")}
                      for n, a in cells],
            "wall_time_s": 30.0}
  os.makedirs(root)
  with open(root / "study.json", "w") as f:
    json.dump(record, f)
  _write_cell(root / "cells" / "mlp", _config("abruptness/mlp"), _grid_rows(final_fit=True))
  _write_cell(root / "cells" / "cnn", _config("abruptness/cnn", "cnn"),
              _grid_rows(acc_shift=0.05, diverged=[("layer_norm", 1.0, 0), ("layer_norm", 1.0, 1),
                                                   ("baseline", 0.1, 1)]),
              empty_nan=True)
  _write_cell(root / "cells" / "vit", _config("abruptness/vit", "vit_tiny"), _grid_rows(),
              summary=False)
  return str(root)


def _plain_workdir(folder, regression=False, offset=None):
  """A synthetic workdir without a grid or a baseline: layer_norm and
  weight_decay, 2 seeds, 3 tasks, no probe measured."""
  rows = []
  for i, name in enumerate(("layer_norm", "weight_decay")):
    for seed in range(2):
      for t in range(3):
        loss = 1.0 + t * (0.1 + i / 10 + seed / 10) + (offset or 0.0) * t / 100
        rows.append(_row(name, seed, t, train_loss=loss,
                         train_accuracy=NAN if regression else 0.9 - 0.1 * t * (1 + i)))
  _write_cell(folder, _config("shift", grid=""), rows)
  return str(folder)


# ----------------------------------------------------------------------------
# The per-seed computations.


def test_plasticity_loss_by_hand():
  acc = np.array([[0.9, 0.6, 0.5], [0.8, 0.6, 0.2]])
  np.testing.assert_allclose(report.plasticity_loss(acc), [0.35, 0.40])
  # Five tasks: the window is the last three.
  np.testing.assert_allclose(report.plasticity_loss([[1.0, 0.2, 0.4, 0.6, 0.8]]), [0.4])
  # A loss: its rise, mean(last) - first.
  np.testing.assert_allclose(report.plasticity_loss([[1.0, 1.2, 1.4]], False), [0.3])
  assert np.isnan(report.plasticity_loss([[0.9]])).all()


def test_per_seed_plasticity_loss_from_a_workdir(grid_study):
  study = report.load_study(grid_study)
  mlp = {c.condition: c for c in report.condition_seeds(study.cells[0])}
  np.testing.assert_allclose(mlp[f"baseline [{EPS}=0.1]"].plasticity_loss, [0.15, 0.20])
  np.testing.assert_allclose(mlp[f"baseline [{EPS}=1]"].plasticity_loss, [0.35, 0.40])
  np.testing.assert_allclose(mlp[f"layer_norm [{EPS}=0.1]"].plasticity_loss, [0.0, 0.05],
                             atol=1e-12)
  np.testing.assert_allclose(mlp[f"layer_norm [{EPS}=1]"].final_fit["gap"], [0.3, 0.3])
  # The cnn cell: 0.05 more loss; its diverged seed left out of every mean.
  cnn = {c.condition: c for c in report.condition_seeds(study.cells[1])}
  base = cnn[f"baseline [{EPS}=0.1]"]
  assert (base.num_seeds, base.num_diverged) == (2, 1)
  np.testing.assert_allclose(base.plasticity_loss, [0.20])
  assert cnn[f"layer_norm [{EPS}=1]"].all_diverged


def test_last_measured_and_stats():
  np.testing.assert_allclose(
      report.last_measured([[NAN, 2.0, NAN], [1.0, NAN, 3.0], [NAN] * 3]), [2.0, 3.0, NAN])
  s = report.seed_stats([0.1, 0.3, NAN])
  assert (s.n, s.mean) == (2, pytest.approx(0.2)) and s.std == pytest.approx(0.1)
  assert report.seed_stats([NAN]).n == 0


def test_pearson_by_hand():
  # x - mean = (-1, 0, 1), y - mean = (-7/3, -1/3, 8/3): r = 5 / sqrt(2 * 38/3).
  assert report.pearson([1, 2, 3, NAN], [2, 4, 7, 1]) == pytest.approx(5 / math.sqrt(76 / 3))
  assert math.isnan(report.pearson([1, 1, 1], [1, 2, 3]))
  assert math.isnan(report.pearson([1], [1]))


def test_moved_rule_on_both_sides_of_the_threshold():
  # |1.0 - 0.5| = 0.5 against max(0.1, 0.4) = 0.4: moved; against 0.6: not.
  assert report.moved(1.0, 0.1, 0.5, 0.4, 2, 2)
  assert not report.moved(1.0, 0.1, 0.5, 0.6, 2, 2)
  assert not report.moved(1.0, 0.6, 0.5, 0.1, 3, 3)  # the larger spread, on either side
  assert not report.moved(1.0, 0.0, 0.5, 0.5, 2, 2)  # equal is not larger
  assert report.moved(0.5, 0.0, 1.0, 0.4, 2, 2)  # a decrease
  # One seed on either side: no spread to compare with, never moved.
  assert not report.moved(1.0, 0.0, 0.0, 0.0, 1, 2)
  assert not report.moved(1.0, 0.0, 0.0, 0.0, 2, 1)
  assert report.format_change(report.Change(report.Stats(0.45, 0.05, 2), 0.31, True)) \
      == "**+0.31 ↑**"
  assert report.format_change(report.Change(report.Stats(0.45, 0.05, 2), -0.31, True)) \
      == "**-0.31 ↓**"
  assert report.format_change(report.Change(report.Stats(0.45, 0.05, 2), 0.05, False)) \
      == "+0.05"


def test_mechanism_table_matches_the_baseline_by_grid_label(grid_study):
  study = report.load_study(grid_study)
  table = report.mechanism_table(report.condition_seeds(study.cells[0]))
  rows = {r.condition.condition: r for r in table.rows}
  low = rows[f"layer_norm [{EPS}=0.1]"]
  assert low.baseline == f"baseline [{EPS}=0.1]"
  dead = low.indicators["dead_fraction"]
  assert dead.change == pytest.approx(0.30) and dead.moved  # 0.30 > max(0.05, 0.05)
  high = rows[f"layer_norm [{EPS}=1]"].indicators["dead_fraction"]
  assert high.change == pytest.approx(0.05) and not high.moved  # 0.05 < max(0.1, 0.1)
  # The baseline's own row holds its mean and std.
  base = rows[f"baseline [{EPS}=1]"].indicators["dead_fraction"]
  assert (base.mean, base.std) == (pytest.approx(0.4), pytest.approx(0.1))
  # ntk_diagonal_share ran on task 1 only: its last measured value is task 1's.
  ntk = rows[f"baseline [{EPS}=0.1]"].indicators["ntk_diagonal_share"]
  assert ntk.mean == pytest.approx(0.55)
  assert rows[f"layer_norm [{EPS}=0.1]"].plasticity_loss.mean == pytest.approx(0.025)
  assert rows[f"layer_norm [{EPS}=0.1]"].plasticity_loss.std == pytest.approx(0.025)
  text = report.format_mechanism_table(table)
  assert "**+0.3 ↑**" in text and "| +0.05 |" in text
  assert "0.6 ± 0" in text and "0.3 ± 0" in text  # final fit (trained) and its gap


def test_one_seed_and_diverged_conditions_in_the_table(grid_study):
  study = report.load_study(grid_study)
  table = report.mechanism_table(report.condition_seeds(study.cells[1]))
  rows = {r.condition.condition: r for r in table.rows}
  # baseline at eps = 0.1 kept one seed: nothing is marked moved against it,
  # though layer_norm's change (+0.35 = 0.45 - 0.10) is far beyond its spread.
  dead = rows[f"layer_norm [{EPS}=0.1]"].indicators["dead_fraction"]
  assert dead.change == pytest.approx(0.35) and not dead.moved
  text = report.format_mechanism_table(table)
  assert f"| `layer_norm [{EPS}=1]` | 2 (2 diverged) | diverged |" in text
  assert f"`baseline [{EPS}=0.1]` | 2 (1 diverged) | 0.2 |" in text


def _seeds(condition, dead, num_diverged=0):
  """A `ConditionSeeds` without a grid whose healthy seeds have dead fractions `dead`."""
  dead = np.asarray(dead, float)
  return report.ConditionSeeds(
      cell="c", condition=condition, intervention=condition, grid_label="",
      measure=report.ACCURACY, num_seeds=len(dead) + num_diverged,
      num_diverged=num_diverged, plasticity_loss=np.full(len(dead), 0.1),
      indicators={"dead_fraction": dead, "sharpness": np.full(len(dead), NAN)}, final_fit={})


def test_mechanism_table_without_a_healthy_baseline():
  table = report.mechanism_table([_seeds("baseline", [], num_diverged=2),
                                  _seeds("redo", [0.1, 0.3])])
  assert table.indicators == ("dead_fraction",) and table.diverged_baseline == ("",)
  assert table.rows[1].indicators["dead_fraction"] is None
  text = report.format_mechanism_table(table)
  assert "| `baseline` | 2 (2 diverged) | diverged |  |" in text
  assert "| `redo` | 2 | 0.1 ± 0 |  |" in text
  table = report.mechanism_table([_seeds("redo", [0.1, 0.3])])
  assert table.no_baseline == ("",) and table.rows[0].baseline is None


def test_probe_that_never_ran_has_no_column_and_no_panel(grid_study):
  study = report.load_study(grid_study)
  conditions = report.condition_seeds(study.cells[0])
  ran = report.ran_indicators(conditions)
  assert "sharpness" not in ran and {"dead_fraction", "ntk_diagonal_share"} <= set(ran)
  assert "sharpness" not in report.mechanism_table(conditions).indicators
  panels = [p[0] for p in report.scatter_panels(study, report.ACCURACY)]
  assert panels == ["dead_fraction", "param_norm", "ntk_diagonal_share"]
  # Every point of the dead-fraction panel: 2 cells x 4 conditions x 2 seeds,
  # less the cnn's 3 diverged seeds.
  key, x, y, names = report.scatter_panels(study, report.ACCURACY)[0]
  assert len(x) == len(y) == len(names) == 13
  out = report.write_report([study], os.path.join(grid_study, "out"))
  with open(out) as f:
    text = f.read()
  assert "sharpness" not in text and "Δ dead units" in text and "Δ NTK diagonal share" in text


def test_missing_cells_are_reported(grid_study):
  study = report.load_study(grid_study)
  assert [c.name for c in study.cells] == ["mlp", "cnn"]
  assert {m.name: m.reason for m in study.missing} == {
      "resnet": "no folder yet", "vit": "not finished: no summary.json yet"}
  # report.md says so: see test_command_line_writes_the_report.


def test_study_with_no_finished_cell(tmp_path):
  with open(tmp_path / "study.json", "w") as f:
    json.dump({"study": "early", "cells": [{"name": "mlp", "dir": "cells/mlp"}]}, f)
  study = report.load_study(str(tmp_path))
  assert not study.cells and study.missing == (report.MissingCell("mlp", "no folder yet"),)
  with open(report.write_report([study], str(tmp_path))) as f:
    text = f.read()
  assert "0 of 1 found; missing: `mlp` (no folder yet)" in text
  assert "No cell has finished yet" in text
  assert sorted(os.listdir(tmp_path)) == ["report.md", "study.json"]  # no figure


def test_dose_response_and_heatmap(grid_study):
  study = report.load_study(grid_study)
  lines = report.dose_response(study, EPS)
  base = lines[report.Line("accuracy", "baseline", "mlp")]
  assert report.Line("accuracy", "baseline", "mlp").label == "baseline, mlp"
  assert [x for x, _ in base] == [0.1, 1.0]
  assert base[0][1].mean == pytest.approx(0.175) and base[0][1].std == pytest.approx(0.025)
  assert base[1][1].mean == pytest.approx(0.375)
  # layer_norm at eps = 1 diverged in the cnn: one point.
  assert [x for x, _ in lines[report.Line("accuracy", "layer_norm", "cnn")]] == [0.1]
  gap = report.dose_response(study, EPS, "final_fit_gap")
  # Only the mlp ran a final fit: nothing else varies between its lines.
  assert list(gap) == [report.Line("accuracy", "baseline", ""),
                       report.Line("accuracy", "layer_norm", "")]
  rows, columns, values = report.heatmap(study, report.ACCURACY)
  assert columns == ["mlp", "cnn"] and rows[0] == f"baseline [{EPS}=0.1]"
  np.testing.assert_allclose(values[:, 0], [0.175, 0.375, 0.025, 0.1], atol=1e-12)
  np.testing.assert_allclose(values[:, 1], [0.2, 0.425, 0.075, NAN], atol=1e-12)


def test_cell_field_sweep_of_regressions(tmp_path):
  """A sweep over a cell field (target offset) of regression cells."""
  root = tmp_path / "target"
  cells = []
  for offset in (0.0, 10.0):
    name = f"offset{offset:g}"
    _plain_workdir(root / "cells" / name, regression=True, offset=offset)
    cells.append({"name": name, "dir": f"cells/{name}", "architecture": "mlp",
                  "overrides": {"shift_params.target_offset": offset}})
  with open(root / "study.json", "w") as f:
    json.dump({"study": "target", "sweeps": ["shift_params.target_offset"], "cells": cells}, f)
  study = report.load_study(str(root))
  assert all(c.measure is report.LOSS and c.chance is None for c in study.cells)
  lines = report.dose_response(study, "shift_params.target_offset")
  # layer_norm's loss rises by 0.1 t (seed 0) and 0.2 t (seed 1), plus offset t / 100:
  # plasticity loss = mean(l[1:]) - l[0] = 1.5 x the slope.
  points = lines[report.Line("train loss", "layer_norm", "")]
  assert [x for x, _ in points] == [0.0, 10.0]
  assert points[0][1].mean == pytest.approx(1.5 * 0.15)
  assert points[1][1].mean == pytest.approx(1.5 * 0.25)
  out = report.write_report([study], str(root))
  assert os.path.isfile(os.path.join(root, "target-dose-shift_params.target_offset.png"))
  assert os.path.isfile(out)


def test_plain_synthetic_workdir(tmp_path):
  study = report.load_study(_plain_workdir(tmp_path / "run"))
  assert study.name == "shift" and [c.name for c in study.cells] == ["shift"]
  assert study.cells[0].chance == pytest.approx(0.1)
  with open(report.write_report([study], str(tmp_path / "out"))) as f:
    text = f.read()
  assert "No baseline condition in this cell" in text
  assert "No mechanism indicator was measured." in text
  assert sorted(os.listdir(tmp_path / "out")) == ["report.md", "shift-shift-curves.png"]


def test_bad_workdirs(tmp_path):
  with pytest.raises(report.ReportError, match="does not exist"):
    report.load_study(str(tmp_path / "nowhere"))
  with pytest.raises(report.ReportError, match="neither study.json nor metrics.csv"):
    report.load_study(str(tmp_path))


# ----------------------------------------------------------------------------
# The command line.


def _run(*args):
  return subprocess.run([sys.executable, "-m", "experiments.report", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=120, check=False)


def test_command_line_writes_the_report(grid_study, tmp_path):
  plain = _plain_workdir(tmp_path / "run")
  out = tmp_path / "report"
  result = _run(f"--workdir={grid_study}", f"--workdir={plain}", f"--out={out}")
  assert result.returncode == 0, result.stderr
  with open(out / "report.md") as f:
    text = f.read()
  images = re.findall(r"^!\[[^\]]*\]\(([^)]+)\)$", text, re.MULTILINE)
  assert sorted(images) == sorted(f for f in os.listdir(out) if f.endswith(".png"))
  assert set(images) == {
      "abruptness-mlp-curves.png", "abruptness-cnn-curves.png",
      f"abruptness-dose-{EPS}.png", "abruptness-heatmap.png", "abruptness-mechanisms.png",
      "shift-shift-curves.png"}
  for image in images:
    with open(out / image, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert text.count("# How abrupt a shift loses plasticity") == 1 and "\n# shift\n" in text
  assert ("2 of 4 found; missing: `resnet` (no folder yet), "
          "`vit` (not finished: no summary.json yet)") in text
  assert f"Rule: {report.MOVED_RULE}" in text
  assert "changes against it are left empty" not in text.split("# shift")[0]
  assert "No baseline condition in this cell" in text.split("# shift")[1]


def test_command_line_bad_path_exits_2(tmp_path):
  bad = tmp_path / "nowhere"
  result = _run(f"--workdir={bad}")
  assert result.returncode == 2
  assert result.stderr.strip() == f"error: workdir {str(bad)!r} does not exist"
  assert not os.path.exists(bad)


def test_import_loads_no_jax():
  """plastix.report adds no JAX import to what plastix.results itself imports
  (and none at all once plastix.results imports none)."""
  code = ("import sys\n"
          "import plastix.results\n"
          "before = 'jax' in sys.modules\n"
          "import plastix.report, experiments.report\n"
          "print(before, 'jax' in sys.modules)\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
  results_imports_jax, report_imports_jax = result.stdout.split()
  if results_imports_jax == "True":
    pytest.skip("plastix.results imports jax at module level")
  assert report_imports_jax == "False"
