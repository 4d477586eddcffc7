"""The main job end to end, as a user runs it."""

import json
import math
import csv
import os
import subprocess
import sys

import pytest

from plastix import results, sharding
from tests.conftest import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.num_examples=200", "--config.num_tasks=4", "--config.steps_per_task=10",
        "--config.batch_size=16", "--config.num_seeds=2", "--config.tasks_per_chunk=2",
        "--config.model.width=16", "--config.probes.batch_size=32"]


def _run(*args, workdir=None):
  cmd = [sys.executable, "-m", "experiments.synthetic", "--config=configs/shift.py", *args]
  if workdir is not None:
    cmd.append(f"--workdir={workdir}")
  # On the CPU, whatever accelerator the machine has: the tests count CPU devices.
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_smoke_run_writes_every_output(tmp_path):
  workdir = tmp_path / "run"
  proc = _run(*TINY, "--config.interventions=baseline,layer_norm+weight_decay",
              workdir=workdir)
  assert proc.returncode == 0, proc.stderr
  assert "[baseline] task 2/4" in proc.stdout
  assert "[layer_norm+weight_decay] task 4/4" in proc.stdout
  assert str(workdir) in proc.stdout and "plast_loss" in proc.stdout
  for name in ("config.json", "run_info.json", "metrics.csv", "summary.json",
               "plasticity.png"):
    assert (workdir / name).stat().st_size > 0, name
  info = json.loads((workdir / "run_info.json").read_text())
  assert info["versions"]["jax"] and "git_revision" in info
  # config.cpu_devices = 0: the host split into devices for the 2 runs.
  split = sharding.forced_cpu_device_count() or sharding.cpu_device_count(
      2, sharding.host_cores())
  assert len(info["devices"]) == split
  assert f"2 seeds on {split} cpu device" in proc.stdout
  config = json.loads((workdir / "config.json").read_text())
  assert config["num_tasks"] == 4 and config["model"]["width"] == 16
  rows = results.read_csv(str(workdir / "metrics.csv"))
  assert len(rows) == 2 * 2 * 4
  for col in results.BASE_COLUMNS:
    assert col in rows[0], col
  summary = json.loads((workdir / "summary.json").read_text())
  assert set(summary["interventions"]) == {"baseline", "layer_norm+weight_decay"}
  for key in results.SUMMARY_KEYS:
    assert key in summary["interventions"]["baseline"]
  assert (workdir / "plasticity.png").read_bytes()[:4] == b"\x89PNG"


def test_one_cpu_device_gives_the_split_hosts_metrics(tmp_path):
  args = [*TINY, "--config.num_tasks=2", "--config.interventions=layer_norm"]
  split, single = tmp_path / "split", tmp_path / "single"
  for workdir, devices in ((split, 2), (single, 1)):
    proc = _run(*args, f"--config.cpu_devices={devices}", workdir=workdir)
    assert proc.returncode == 0, proc.stderr
    info = json.loads((workdir / "run_info.json").read_text())
    assert len(info["devices"]) == devices
  rows = [results.read_csv(str(w / "metrics.csv")) for w in (split, single)]
  assert len(rows[0]) == len(rows[1]) == 2 * 2
  for a, b in zip(*rows):
    assert a.keys() == b.keys()
    for key, value in a.items():
      if isinstance(value, float):
        assert value == pytest.approx(b[key], rel=2e-5, abs=1e-6, nan_ok=True), key
      else:
        assert value == b[key], key


def test_grid_run_writes_a_condition_per_point(tmp_path):
  workdir = tmp_path / "grid"
  proc = _run(*TINY, "--config.num_tasks=2", "--config.interventions=layer_norm",
              "--config.grid=optimizer.learning_rate=1e-3,1e-2", workdir=workdir)
  assert proc.returncode == 0, proc.stderr
  assert "grid of 2 points" in proc.stdout
  rows = results.read_csv(str(workdir / "metrics.csv"))
  assert len(rows) == 2 * 2 * 2
  assert {r["hparams"] for r in rows} == {"optimizer.learning_rate=0.001",
                                          "optimizer.learning_rate=0.01"}
  assert {r["optimizer.learning_rate"] for r in rows} == {1e-3, 1e-2}
  summary = json.loads((workdir / "summary.json").read_text())
  assert set(summary["interventions"]) == {"layer_norm [optimizer.learning_rate=0.001]",
                                           "layer_norm [optimizer.learning_rate=0.01]"}
  assert "layer_norm [optimizer.learning_rate=0.01]" in proc.stdout


@pytest.mark.parametrize("override, field", [
    (["--config.interventions=baseline,redo_magic"], "config.interventions"),
    (["--config.dataset=cifar7"], "config.dataset"),
    (["--config.shift=rotate"], "config.shift"),
    (["--config.num_tasks=0"], "config.num_tasks"),
    (["--config.steps_per_task=-5"], "config.steps_per_task"),
    (["--config.num_seeds=0"], "config.num_seeds"),
    (["--config.batch_size=0"], "config.batch_size"),
    (["--config.num_examples=100", "--config.batch_size=128"], "config.batch_size"),
    (["--config.num_examples=20000"], "config.num_examples"),
    (["--config.model.norm=group"], "config.model.norm"),
    (["--config.model.name=resnet"], "config.model.name"),
    (["--config.model.dtype=float8"], "config.model.dtype"),
    (["--config.optimizer.name=adamax"], "config.optimizer.name"),
    (["--config.shift_params.eps=1.5"], "config.shift_params.eps"),
    (["--config.shift=contextual_bandit", "--config.loss.label_smoothing=0.1"],
     "config.loss.label_smoothing"),
    (["--config.shift=label_reset+gradual", "--config.steps_per_task=50"],
     "config.shift_params.drift_steps"),
    (["--config.num_tasks=three"], "num_tasks"),
    (["--config.grid=model.width=8,16"], "config.grid"),
    (["--config.grid=optimizer.learning_rate=1e-3,-1"], "config.grid"),
    (["--config.parallel_runs=2"], "config.parallel_runs"),  # 3 seeds: must divide 3
    (["--config.cpu_devices=-1"], "config.cpu_devices"),
    (["--config.cpu_devices=3", "--config.shard_seeds=False"], "config.cpu_devices"),
    (["--config.distributed.enabled=True", "--config.shard_seeds=False"], "config.shard_seeds"),
    (["--config.no_such_field=1"], "no_such_field"),
    (["--config.shift=class_permutation", "--config.shift_params.initial_labels=random"],
     "config.shift_params.initial_labels"),
    (["--config.shift=label_reset+noisy_labels"], "config.shift"),
    (["--config.shift=random_targets", "--config.loss.name=two_hot",
      "--config.shift_params.target_offset=100"], "config.loss.support_max"),
    (["--config.probes.test_examples=5000"], "config.probes.test_examples"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, override, field):
  workdir = tmp_path / "never"
  proc = _run(*override, workdir=workdir)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and field in lines[0] and "Traceback" not in proc.stderr, proc.stderr
  assert not workdir.exists()  # refused before anything was written or compiled


def test_missing_data_file_says_how_to_get_it(tmp_path):
  proc = _run("--config.dataset=mnist", f"--config.data_dir={tmp_path}",
              workdir=tmp_path / "w")
  assert proc.returncode == 2
  assert "missing dataset file" in proc.stderr and "train-images-idx3-ubyte.gz" in proc.stderr
  # The advice names the config's fields, not the data library's Python arguments.
  for option in ("--config.manual_dir", "--config.data_dir",
                 "--download to `python -m plastix.data mnist` first"):
    assert option in proc.stderr, proc.stderr
  assert "manual_dir=" not in proc.stderr and "download=True" not in proc.stderr


def test_the_manual_dir_is_where_originals_are_looked_for(tmp_path):
  manual = tmp_path / "originals"
  proc = _run("--config.dataset=mnist", f"--config.data_dir={tmp_path / 'data'}",
              f"--config.manual_dir={manual}", workdir=tmp_path / "w")
  assert proc.returncode == 2
  assert f"{manual} lacks train-images-idx3-ubyte.gz" in proc.stderr, proc.stderr


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  proc = _run(*TINY, workdir=blocker / "sub")
  assert proc.returncode == 2
  assert "--workdir" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_seeds_that_do_not_split_over_the_devices_run_padded(tmp_path):
  # 3 seeds on 2 devices: padded with a copy of the last seed, trained and
  # dropped (tests/test_no_hang.py compares the metrics with one device's).
  env = dict(os.environ, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=2"),
             JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "experiments.synthetic", *TINY, "--config.num_seeds=3",
         "--config.interventions=baseline", f"--workdir={tmp_path / 'w'}"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(tmp_path / "w" / "metrics.csv") as f:
    seeds = {row["seed"] for row in csv.DictReader(f)}
  assert seeds == {"0", "1", "2"}


def test_runs_from_any_directory_and_measures_held_out_accuracy(tmp_path):
  # Outside the repository: the default config, and the README's --config path,
  # are both found in the installed package.
  cwd = tmp_path / "elsewhere"
  cwd.mkdir()
  base = [sys.executable, "-m", "experiments.synthetic", *TINY, "--config.num_tasks=2",
          "--config.probes.test_examples=100", "--config.interventions=baseline"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  for i, extra in enumerate(([], ["--config=configs/shift.py"])):
    workdir = tmp_path / f"w{i}"
    proc = subprocess.run([*base, *extra, "--config.shift=class_permutation",
                           f"--workdir={workdir}"], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    rows = results.read_csv(str(workdir / "metrics.csv"))
    for row in rows:
      assert 0.0 <= row["test_accuracy"] <= 1.0 and row["test_loss"] > 0.0
    summary = json.loads((workdir / "summary.json").read_text())["interventions"]["baseline"]
    for key in results.HELD_OUT_KEYS:
      assert summary[key] is not None and summary[key + "_std"] is not None, key
  # Random labels (the default label reset) define no held-out label: NaN, and null.
  workdir = tmp_path / "reset"
  proc = subprocess.run([*base, f"--workdir={workdir}"], cwd=cwd, capture_output=True,
                        text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr
  rows = results.read_csv(str(workdir / "metrics.csv"))
  assert all(math.isnan(r["test_accuracy"]) for r in rows)
  summary = json.loads((workdir / "summary.json").read_text())["interventions"]["baseline"]
  assert summary["final_task_test_accuracy"] is None


def test_a_mistyped_field_names_the_closest_one(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "experiments.synthetic", "--config.num_task=3",
                         "--config.model.widht=8"], cwd=tmp_path, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip() == ("error: unknown config field 'num_task' (in "
                                 "--config.num_task=3); did you mean 'num_tasks'?")


def test_a_missing_config_file_is_one_line(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "experiments.synthetic",
                         "--config=configs/nope.py"], cwd=tmp_path, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "no config file 'configs/nope.py'" in lines[0], proc.stderr
