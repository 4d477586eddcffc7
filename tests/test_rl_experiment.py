"""The RL entry point end to end on MinAtar: outputs, resume, bad input."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import assert_bad_input, run_rl

from configs import rl_minatar
from plastix import sharding
from plastix.rl import experiment
from plastix.rl import from_config
from plastix.rl import results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.total_env_steps=240", "--config.eval_every_steps=80", "--config.num_envs=2",
        "--config.num_seeds=2", "--config.replay.learning_starts=40",
        "--config.replay.buffer_size=500", "--config.replay.batch_size=8",
        "--config.td.target_update_period=10", "--config.exploration.eps_decay_steps=100",
        "--config.probes.batch_size=16", "--config.probes.sharpness_every=2",
        "--config.probes.hessian_iters=2", "--config.windows_per_chunk=2"]


_run = run_rl


def _tiny_config(**overrides):
  config = rl_minatar.get_config()
  for arg in TINY:
    field, value = arg[len("--config."):].split("=")
    node = config
    *parents, leaf = field.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = type(node[leaf])(value)
  for k, v in overrides.items():
    config[k] = v
  return config


def test_tiny_minatar_run_from_the_command_line(tmp_path):
  workdir = tmp_path / "run"
  out = _run([f"--workdir={workdir}", "--config.interventions=baseline,layer_norm+weight_decay",
              *TINY])
  assert out.returncode == 0, out.stderr[-3000:]
  for name in ("config.json", "run_info.json", "metrics.csv", "summary.json", "returns.png",
               "probes.png"):
    assert (workdir / name).exists(), name
  with open(workdir / "metrics.csv") as f:
    rows = list(csv.DictReader(f))
  # 2 interventions x 2 seeds x 3 windows.
  assert len(rows) == 12
  for column in ("intervention", "seed", "env_steps", "episode_return", "num_episodes", "loss",
                 "td_error", "q_mean_abs", "dead_fraction", "dormant_fraction", "srank",
                 "param_norm", "sharpness"):
    assert column in rows[0], column
  assert sorted({int(r["env_steps"]) for r in rows}) == [80, 160, 240]
  # Sharpness every 2nd window only.
  sharp = {int(r["env_steps"]): r["sharpness"] for r in rows if r["seed"] == "0"}
  assert sharp[80] == "nan" and sharp[160] != "nan"
  summary = json.loads((workdir / "summary.json").read_text())
  assert set(summary) == {"baseline", "layer_norm+weight_decay"}
  for key in ("final_return", "final_return_std", "auc_return", "num_seeds", "num_diverged"):
    assert key in summary["baseline"], key
  assert summary["baseline"]["num_seeds"] == 2
  assert "final_return" in out.stdout


def _stop_after_first_chunk(line):
  if "env steps" in line and "/240" in line:
    raise KeyboardInterrupt


def test_resume_after_a_kill_gives_the_same_results(tmp_path):
  config = _tiny_config(interventions="baseline", windows_per_chunk=1)
  prepared = experiment.prepare(config)
  whole = experiment.run(prepared, str(tmp_path / "whole"), progress=lambda line: None)
  with pytest.raises(KeyboardInterrupt):
    experiment.run(prepared, str(tmp_path / "cut"), progress=_stop_after_first_chunk)
  lines = []
  resumed = experiment.run(prepared, str(tmp_path / "cut"), progress=lines.append)
  assert any("resumed from checkpoint after 80 env steps" in line for line in lines)
  assert whole == resumed
  read = lambda p: list(csv.DictReader(open(p)))
  a, b = read(tmp_path / "whole" / "metrics.csv"), read(tmp_path / "cut" / "metrics.csv")
  assert a == b


@pytest.mark.parametrize("override, field", [
    ("--config.agent=ppo", "agent:"),
    ("--config.env_name=pong_minatar", "env_name:"),
    ("--config.eval_every_steps=81", "eval_every_steps:"),
    ("--config.interventions=baseline,two_hot", "interventions:"),
    ("--config.grid=shift_params.eps=0.1,1", "grid:"),
    ("--config.cpu_devices=-1", "cpu_devices:"),
    ("--config.model.cnn_padding=valid", "model.cnn_padding:"),
])
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, override, field):
  out = _run([f"--workdir={tmp_path / 'bad'}", *TINY, override], timeout=120)
  assert_bad_input(out, field, tmp_path / "bad")


def test_summary_numbers_by_hand():
  def row(seed, steps, ret, diverged=-1):
    return {"intervention": "baseline", "seed": seed, "env_steps": steps,
            "episode_return": ret, "diverged_step": diverged}
  rows = [row(0, 10, 1.0), row(0, 20, 3.0), row(1, 10, float("nan")), row(1, 20, 5.0),
          row(2, 10, 9.0, diverged=4), row(2, 20, 9.0, diverged=4)]
  s = results.summarize(rows, ["baseline"])["baseline"]
  # Seed 2 diverged: left out. Final: mean(3, 5) = 4; AUC: mean(mean(1, 3), mean(5)) = 3.5.
  assert s["final_return"] == 4.0 and s["final_return_std"] == 1.0
  assert s["auc_return"] == 3.5 and s["auc_return_std"] == 1.5
  assert s["num_seeds"] == 3 and s["num_diverged"] == 1
  np.testing.assert_equal(results.curves(rows, "baseline", "episode_return")[0], [10, 20])


def _environment_without_forced_devices():
  """This environment without a forced CPU device count (the command's
  ``cpu_devices`` decides)."""
  env = dict(os.environ)
  env.pop("JAX_NUM_CPU_DEVICES", None)
  env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                            env.get("XLA_FLAGS", "")).strip()
  return env


def test_a_cpu_split_matches_one_device_and_never_hangs(tmp_path):
  """The runs split over CPU devices, each device's program on its share, every
  probe on (sharpness too), in each shape a user reaches: two devices for 3
  seeds (padded to 4 runs, 2 per device: the shape whose batched SVD once
  deadlocked a split host, `plastix.sharding`), and the default split
  (`sharding.cpu_device_count`: 3 devices of one run each on a 2-core host).
  Each in a subprocess with a timeout and the watchdog's stall limit, so a
  deadlock fails instead of hanging; each gives one device's metrics."""
  args = [*TINY, "--config.num_seeds=3", "--config.interventions=baseline",
          "--config.probes.sharpness_every=1", "--config.stall_timeout_s=120"]
  outs, infos = {}, {}
  for name, extra in (("one", ["--config.cpu_devices=1"]), ("two", ["--config.cpu_devices=2"]),
                      ("default", [])):
    out = subprocess.run([sys.executable, "-m", "experiments.rl",
                          f"--workdir={tmp_path / name}", *args, *extra], cwd=ROOT,
                         env=_environment_without_forced_devices(), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(tmp_path / name / "metrics.csv") as f:
      outs[name] = list(csv.DictReader(f))
    infos[name] = json.loads((tmp_path / name / "run_info.json").read_text())
  expected = {"one": 1, "two": 2, "default": sharding.cpu_device_count(3, sharding.host_cores())}
  for name, devices in expected.items():
    assert infos[name]["cpu_devices"] == devices, name
    assert infos[name]["layout"]["run_devices"] == devices, name
    assert len(outs[name]) == 9
  for name in ("two", "default"):
    for a, b in zip(outs["one"], outs[name]):
      assert (a["seed"], a["env_steps"]) == (b["seed"], b["env_steps"])
      for key in ("episode_return", "num_episodes", "loss", "td_error", "param_norm", "srank",
                  "sharpness"):
        np.testing.assert_allclose(float(a[key]), float(b[key]), rtol=1e-3, atol=1e-5,
                                   err_msg=f"{name}: {key}")


_ONE_PROGRAM = textwrap.dedent("""
    import jax
    from configs import rl_minatar
    from plastix.rl import experiment, from_config, loop
    config = rl_minatar.get_config()
    config.total_env_steps, config.eval_every_steps, config.num_envs = 160, 80, 2
    config.num_seeds, config.probes.batch_size = 3, 16
    config.replay.learning_starts, config.replay.buffer_size = 40, 500
    config.replay.batch_size = 8
    spec = from_config.spec(config)
    _, keys, hp, num_real = experiment.layout_runs(config, spec)
    states = experiment.init_runs(spec, keys, hp)
    by_run = jax.sharding.PartitionSpec("seeds")
    placed = all(x.sharding.spec == by_run for x in jax.tree.leaves(states))
    for window in range(2):
      states, _ = loop.run_windows(states, hp, spec=spec, num_windows=1, first_window=window)
    print(jax.device_count(), keys.shape[0], num_real, placed,
          loop.run_windows._cache_size())
""")


def test_split_runs_are_placed_by_run_and_compile_one_program():
  """On 2 devices (3 runs padded to 4) every leaf of the initial states is split
  by runs, as a chunk returns them, so the second chunk reuses the first's
  program instead of compiling one for other shardings."""
  env = _environment_without_forced_devices()
  env["XLA_FLAGS"] = f"{env['XLA_FLAGS']} --xla_force_host_platform_device_count=2".strip()
  out = subprocess.run([sys.executable, "-c", _ONE_PROGRAM], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.split("\n")[-2] == "2 4 3 True 1", out.stdout


def test_cpu_devices_for_a_config(monkeypatch):
  """`from_config.cpu_devices`: as given when set; else
  `sharding.cpu_device_count` for the runs (seeds x grid points) and cores; none
  for Atari (one ale-py env per process) or where the count is forced."""
  monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
  monkeypatch.setattr(sharding, "host_cores", lambda: 2)
  config = rl_minatar.get_config()
  assert config.cpu_devices == 0
  assert from_config.cpu_devices(config) == 3       # 3 seeds on 2 cores: one device each
  config.num_seeds = 8
  assert from_config.cpu_devices(config) == 2       # 8 seeds: 4 per device
  config.grid = "optimizer.learning_rate=1e-4,3e-4,1e-3"
  assert from_config.cpu_devices(config) == 2       # 24 runs
  config.num_seeds, config.grid = 1, ""
  assert from_config.cpu_devices(config) == 1
  config.cpu_devices = 4
  assert from_config.cpu_devices(config) == 4       # as given
  config.cpu_devices = 0
  config.suite = "atari"
  assert from_config.cpu_devices(config) is None
  config.suite = "minatar"
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  assert from_config.cpu_devices(config) is None


def test_a_split_asked_of_a_process_where_jax_already_runs():
  """In a process whose JAX backends are up (this one), the CPU device count is
  fixed: the automatic split falls back to JAX's devices, an asked-for count
  that differs is one line naming the field."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.numpy.zeros(1).block_until_ready()
  have = jax.local_device_count("cpu")
  config = rl_minatar.get_config()
  assert experiment.use_split(config, None) is None
  assert experiment.use_split(config, have) == have
  assert experiment.use_split(config, have + 1) is None     # automatic: JAX's own devices
  config.cpu_devices = have + 1
  with pytest.raises(experiment.UsageError,
                     match=f"^cpu_devices: JAX already runs on {have} CPU devices"):
    experiment.use_split(config, have + 1)


def test_added_fields_stand_in_for_old_workdirs_only_where_the_config_has_them(tmp_path):
  """A workdir written before `model.cnn_padding` and `cpu_devices` existed ran
  the padded conv: it resumes with SAME, not with today's unpadded default. A
  config without the field at all (Atari's Nature torso) is not blocked by it."""
  from plastix import experiment as base  # pylint: disable=g-import-not-at-top
  from configs import rl_atari  # pylint: disable=g-import-not-at-top
  now = json.loads(json.dumps(rl_minatar.get_config().to_dict()))
  saved = json.loads(json.dumps(now))
  del saved["model"]["cnn_padding"], saved["cpu_devices"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  with pytest.raises(base.UsageError, match=r"different config \(model.cnn_padding\)"):
    base.is_resumable(str(tmp_path), now, added_fields=experiment.ADDED_FIELDS)
  now["model"]["cnn_padding"] = "SAME"
  assert base.is_resumable(str(tmp_path), now, added_fields=experiment.ADDED_FIELDS)
  atari = json.loads(json.dumps(rl_atari.get_config("cpu").to_dict()))
  assert "cnn_padding" not in atari["model"]
  (tmp_path / "config.json").write_text(json.dumps(atari))
  assert base.is_resumable(str(tmp_path), atari, added_fields=experiment.ADDED_FIELDS)


def test_a_resumed_run_keeps_the_split_it_started_with():
  config = rl_minatar.get_config()
  new = from_config.cpu_devices(config)
  assert experiment.cpu_split(config, None) == new                     # a new run
  assert experiment.cpu_split(config, {"cpu_devices": 5}) == 5          # as it started
  assert experiment.cpu_split(config, {"cpu_devices": None}) is None    # JAX's devices
  assert experiment.cpu_split(config, {}) == new                       # run_info.json lost
  config.cpu_devices = 2
  assert experiment.cpu_split(config, {"cpu_devices": 5}) == 2          # set: as given


def test_a_grid_of_learning_rates_trains_beside_the_seeds():
  config = _tiny_config(interventions="baseline", num_seeds=2,
                        grid="optimizer.learning_rate=1e-4,1e-3")
  from plastix.rl import from_config
  points, hp = from_config.grid_hparams(config)
  np.testing.assert_allclose(hp.learning_rate, [1e-4, 1e-4, 1e-3, 1e-3], rtol=1e-6)
  keys = from_config.seed_keys(config, len(points))
  np.testing.assert_array_equal(keys[0], keys[2])  # seed 0 at both grid points.
  assert not np.array_equal(keys[0], keys[1])


def test_game_switches_are_read_from_the_game_column():
  from plastix.rl import plotting  # pylint: disable=g-import-not-at-top
  rows = [{"env_steps": s, "game": g, "seed": seed}
          for seed in (0, 1) for s, g in ((10, 0), (20, 0), (30, 1), (40, 1), (50, 0))]
  assert plotting.game_switches(rows) == [30, 50]
  assert plotting.game_switches([{"env_steps": 10, "game": 0}]) == []


def test_tiny_pqn_run_from_the_command_line(tmp_path):
  workdir = tmp_path / "pqn"
  out = _run([f"--workdir={workdir}", "--config.agent=pqn", "--config.interventions=layer_norm",
              "--config.pqn.rollout_steps=4", "--config.pqn.minibatches=2", *TINY])
  assert out.returncode == 0, out.stderr[-3000:]
  rows = list(csv.DictReader(open(workdir / "metrics.csv")))
  assert len(rows) == 2 * 3
  # Learning from the first rollout (no replay warm-up): a finite loss in every window.
  assert all(np.isfinite(float(r["loss"])) for r in rows)
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["layer_norm"]["num_seeds"] == 2


def test_pqn_settings_are_checked(tmp_path):
  out = _run([f"--workdir={tmp_path / 'bad'}", "--config.agent=pqn",
              "--config.pqn.rollout_steps=3", *TINY], timeout=120)
  assert out.returncode == 2
  assert out.stderr.strip().startswith("error: eval_every_steps: must be a multiple of a rollout")
