import json
import os
import stat

import chex
import numpy as np
import pytest

from plastix import engine, results


def _rows():
  # Two seeds x five tasks with accuracies chosen by hand.
  acc = {0: [0.9, 0.8, 0.7, 0.6, 0.5], 1: [0.7, 0.7, 0.7, 0.4, 0.4]}
  rows = []
  for seed, accs in acc.items():
    for task, a in enumerate(accs):
      rows.append({"intervention": "baseline", "seed": seed, "task": task,
                   "train_loss": 1.0, "train_accuracy": a, "dead_fraction": 0.1 * task,
                   "dormant_fraction": 0.0, "linearized_fraction": 0.0,
                   "effective_rank": 1.0, "srank": 1, "param_norm": 10.0 + seed,
                   "diverged": 0, "diverged_task": -1, "diverged_step": -1})
  return rows


def test_summary_by_hand():
  s = results.summarize(_rows(), ["baseline"])["interventions"]["baseline"]
  assert s["first_task_accuracy"] == pytest.approx(0.8)
  assert s["final_task_accuracy"] == pytest.approx(0.45)
  # seed 0: 0.9 - mean(0.7, 0.6, 0.5) = 0.3; seed 1: 0.7 - 0.5 = 0.2.
  assert s["plasticity_loss"] == pytest.approx(0.25)
  assert s["plasticity_loss_std"] == pytest.approx(0.05)
  assert s["dead_fraction_final"] == pytest.approx(0.4)
  assert s["param_norm_final"] == pytest.approx(10.5)
  assert s["num_seeds"] == 2 and s["num_tasks"] == 5
  # Spreads over the two seeds, ddof 0: half the distance between them.
  assert s["first_task_accuracy_std"] == pytest.approx(0.1)  # 0.9, 0.7
  assert s["final_task_accuracy_std"] == pytest.approx(0.05)  # 0.5, 0.4
  assert s["dead_fraction_final_std"] == pytest.approx(0.0)
  assert s["param_norm_final_std"] == pytest.approx(0.5)  # 10, 11
  for key in results.SUMMARY_KEYS:
    values = np.array([r[key] for r in _per_seed_summaries()])
    assert s[key + results.STD_SUFFIX] == pytest.approx(values.std())


def _per_seed_summaries():
  """Each seed summarised alone: the per-seed values the spreads are taken over."""
  rows = _rows()
  out = []
  for seed in (0, 1):
    alone = [r for r in rows if r["seed"] == seed]
    out.append(results.summarize(alone, ["baseline"])["interventions"]["baseline"])
  return out


def test_table_shows_mean_and_spread():
  s = results.summarize(_rows(), ["baseline"])
  lines = results.format_table(s).splitlines()
  assert lines[1].split() == ["baseline", "0.800±0.100", "0.450±0.050", "0.250±0.050",
                              "0.400±0.000", "10.500±0.500", "0/2"]
  assert lines[-1] == "mean ± standard deviation over seeds"
  one_seed = results.summarize([r for r in _rows() if r["seed"] == 0], ["baseline"])
  lines = results.format_table(one_seed).splitlines()
  assert lines[1].split() == ["baseline", "0.900", "0.500", "0.300", "0.400", "10.000", "0/1"]
  assert len(lines) == 2  # no spread to explain


def test_csv_round_trip_and_atomic_json(tmp_path):
  rows = _rows()
  rows[0]["extra"] = 3.5
  path = str(tmp_path / "m.csv")
  results.write_csv(path, rows)
  back = results.read_csv(path)
  assert list(back[0])[:len(results.BASE_COLUMNS)] == list(results.BASE_COLUMNS)
  assert back[0]["extra"] == 3.5 and back[1]["extra"] == ""
  assert back[3]["train_accuracy"] == pytest.approx(0.6) and back[3]["task"] == 3
  results.write_json(str(tmp_path / "s.json"), {"a": 1})
  assert json.loads((tmp_path / "s.json").read_text()) == {"a": 1}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "s.json"]  # no temp files


def test_atomic_writes_get_the_permissions_of_a_plain_write(tmp_path):
  old = os.umask(0o027)
  try:
    results.write_json(str(tmp_path / "s.json"), {"a": 1})
    results.write_bytes(str(tmp_path / "f.png"), b"\x89PNG")
    with open(tmp_path / "plain.txt", "w") as f:
      f.write("x")
  finally:
    os.umask(old)
  plain = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
  assert plain == 0o640
  for name in ("s.json", "f.png"):
    assert stat.S_IMODE((tmp_path / name).stat().st_mode) == plain, name


def test_metrics_to_rows_flattens_layers():
  z = np.zeros((2, 3))
  fields = dict(
      train_loss=z, train_accuracy=z + 0.5,
      layer_param_norm={"dense_0": z + 1, "head": z + 2},
      layer_grad_norm={"dense_0": z + 3, "head": z + 4},
      layer_dead_fraction=np.arange(12.0).reshape(2, 3, 2),
      layer_preact_drift=np.zeros((2, 3, 2)), layer_preact_mean_spread=np.ones((2, 3, 2)),
      feature_singular_values=np.arange(24.0).reshape(2, 3, 4),
      preact_histogram=np.zeros((2, 3, 2, 5)),
      diverged_task=np.array([[-1, -1, -1], [-1, 1, 1]]),
      diverged_step=np.array([[-1, -1, -1], [-1, 4, 4]]))
  metrics = engine.TaskMetrics(**{f: fields.get(f, z) for f in engine.TaskMetrics._fields})
  rows = results.metrics_to_rows("ln", metrics, [5, 6])
  assert len(rows) == 6
  assert rows[4]["seed"] == 6 and rows[4]["task"] == 1
  assert rows[4]["param_norm_head"] == 2.0 and rows[4]["grad_norm_dense_0"] == 3.0
  assert rows[4]["dead_fraction_layer1"] == 9.0  # [seed 1, task 1, layer 1]
  assert rows[4]["feature_sv2"] == 18.0  # [seed 1, task 1, value 2]
  assert rows[4]["preact_mean_spread_layer1"] == 1.0
  assert "preact_histogram" not in rows[4] and "sharpness" in rows[4]
  assert rows[4]["diverged"] == 1 and rows[4]["diverged_step"] == 4
  assert rows[3]["diverged"] == 0


def test_diverged_seeds_are_counted_and_excluded_from_means():
  rows = _rows()
  for r in rows:
    r["diverged_task"] = r["diverged_step"] = -1
    if r["seed"] == 1 and r["task"] >= 2:
      r["diverged_task"], r["diverged_step"] = 2, 17
  s = results.summarize(rows, ["baseline"])["interventions"]["baseline"]
  assert s["num_diverged"] == 1 and s["diverged"] == [{"seed": 1, "task": 2, "step": 17}]
  assert s["plasticity_loss"] == pytest.approx(0.3)  # seed 0 alone
  assert s["plasticity_loss_std"] == 0.0
  assert "±" not in results.format_table({"interventions": {"baseline": s}})  # one seed left
  assert s["first_task_accuracy"] == pytest.approx(0.9)
  for r in rows:
    r["diverged_task"] = 0
  s = results.summarize(rows, ["baseline"])["interventions"]["baseline"]
  assert s["num_diverged"] == 2 and s["plasticity_loss"] is None
  assert "n/a" in results.format_table({"interventions": {"baseline": s}})
  json.dumps(s, allow_nan=False)  # valid JSON: no NaN


def test_shares_of_processes_merge_in_run_order(tmp_path):
  def metrics(runs):
    # Every leaf's value at run r is r (+ the layer's offset), so the merge is checkable.
    r = np.asarray(runs, np.float32)[:, None] * np.ones((1, 3), np.float32)
    fields = {f: r for f in engine.TaskMetrics._fields}
    fields["layer_param_norm"] = {"dense_0": r + 100, "head": r + 200}
    fields["layer_grad_norm"] = {}
    fields["diverged_task"] = r.astype(np.int32)
    return engine.TaskMetrics(**fields)

  # Two processes holding interleaved runs, written in any order.
  results.write_share(str(tmp_path / "process_1.npz"), np.array([1, 3]), metrics([1, 3]))
  results.write_share(str(tmp_path / "process_0.npz"), np.array([0, 2]), metrics([0, 2]))
  paths = [str(tmp_path / f"process_{i}.npz") for i in range(2)]
  merged = results.merge_shares(metrics([0, 2]), paths, num_runs=4)
  chex.assert_trees_all_equal(merged, metrics([0, 1, 2, 3]))
  assert merged.diverged_task.dtype == np.int32
  with pytest.raises(ValueError, match=r"runs \[1, 3\] are in none"):
    results.merge_shares(metrics([0, 2]), paths[:1], num_runs=4)


def _load_without_pandas(monkeypatch, *args, **kwargs):
  import sys  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
  return results.load(*args, **kwargs)


def test_load_returns_the_tidy_table_with_and_without_pandas(tmp_path, monkeypatch):
  pd = pytest.importorskip("pandas")
  rows = _rows()
  rows[1]["test_accuracy"] = 0.25  # measured on one row only: empty in the others
  results.write_csv(str(tmp_path / "metrics.csv"), rows)
  table = results.load(str(tmp_path))
  assert isinstance(table, pd.DataFrame) and len(table) == 10
  assert list(table.columns[:3]) == ["intervention", "seed", "task"]
  assert table["seed"].tolist() == [0] * 5 + [1] * 5 and table["seed"].dtype.kind == "i"
  assert table["train_accuracy"].tolist() == [r["train_accuracy"] for r in rows]
  assert table["test_accuracy"].isna().sum() == 9 and table["test_accuracy"][1] == 0.25
  # The mean over seeds of the last task, as summary.json has it.
  last = table[table["task"] == 4]
  assert last["train_accuracy"].mean() == pytest.approx(0.45)

  plain = _load_without_pandas(monkeypatch, str(tmp_path))
  assert isinstance(plain, list) and len(plain) == 10
  assert plain[1]["test_accuracy"] == 0.25 and np.isnan(plain[0]["test_accuracy"])
  assert {k: v for k, v in plain[3].items() if k != "test_accuracy"} == rows[3]


def test_load_reads_steps_and_a_studys_cells(tmp_path, monkeypatch):
  steps = [{"intervention": "baseline", "seed": 0, "task": 0, "task_step": 5, "step": 5,
            "train_loss": 2.5, "train_accuracy": 0.125}]
  for cell, seed in (("b_relu", 1), ("a_gelu", 0)):
    folder = tmp_path / "study" / "cells" / cell
    folder.mkdir(parents=True)
    results.write_csv(str(folder / "metrics.csv"), [dict(_rows()[0], seed=seed)])
    results.write_csv(str(folder / "steps.csv"), steps, base=results.STEP_COLUMNS)
  rows = _load_without_pandas(monkeypatch, str(tmp_path / "study"))
  assert [(r["cell"], r["seed"]) for r in rows] == [("a_gelu", 0), ("b_relu", 1)]
  step_rows = _load_without_pandas(monkeypatch, str(tmp_path / "study"), table="steps")
  assert step_rows == [{"cell": "a_gelu", **steps[0]}, {"cell": "b_relu", **steps[0]}]
  with pytest.raises(FileNotFoundError, match="no metrics.csv in"):
    results.load(str(tmp_path / "empty"))
  with pytest.raises(ValueError, match="table 'probes'"):
    results.load(str(tmp_path / "study"), table="probes")


def test_plastix_results_is_reachable_from_the_package_without_loading_jax():
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  code = ("import sys, plastix; load = plastix.results.load; "
          "print(callable(load), 'jax' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.stdout.split() == ["True", "False"], out.stderr
