"""The benchmarks' shared method (paired ratios, worker rounds), the matmul floor, and the
RL benchmark with its PyTorch reference."""

import platform
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import pairing
from benchmarks import rl_throughput
from benchmarks import throughput
from plastix import engine, from_config, sharding
from plastix.rl import from_config as rl_from_config
from tests.conftest import tiny_config

# Stand-ins for a worker process, speaking the worker protocol over stdin/stdout.
_ANSWERING_WORKER = f"""
import json, sys
say = lambda m: print({pairing.PROTOCOL!r} + json.dumps(m), flush=True)
print("a line that is not an answer", flush=True)
say({{"compile_s": 1.5}})
for line in sys.stdin:
  if line.strip() == "run":
    print("more noise"); say({{"run_s": 0.25}})
  elif line.strip() == "exit":
    say({{"peak_rss_mib": 7.0}}); break
"""
_SILENT_WORKER = "import time; time.sleep(120)"
_DYING_WORKER = "import sys; sys.stderr.write('first\\nout of memory\\n'); sys.exit(1)"


def test_paired_ratio_is_the_median_of_ratios_within_each_round():
  # The machine slows down in round 2: both modes take 3x longer there.
  cells = {"torch": {"times": [4.0, 12.0, 5.0]}, "engine": {"times": [2.0, 6.0, 2.0]},
           "jax_loop": {"error": "failed"}}
  median, low, high = pairing.paired_ratio(cells, "torch", "engine")
  assert (median, low, high) == (2.0, 2.0, 2.5)
  # Ratios of median times would mix rounds: 5.0 / 2.0.
  assert median != 5.0 / 2.0
  assert pairing.paired_ratio(cells, "torch", "jax_loop") is None
  assert pairing.paired_ratio(cells, "torch", "missing") is None
  # A mode that failed in its first round has no round to pair with.
  cells["torch_fused"] = {"times": [], "error": "round 1: boom"}
  assert pairing.paired_ratio(cells, "torch_fused", "engine") is None
  assert pairing.paired_ratio(cells, "engine", "torch_fused") is None


def test_round_order_rotates_and_reverses():
  modes = ["a", "b", "c"]
  assert pairing.round_order(modes, 0) == ["a", "b", "c"]
  assert pairing.round_order(modes, 1) == ["a", "c", "b"]  # [b, c, a] reversed
  assert pairing.round_order(modes, 2) == ["c", "a", "b"]
  orders = [pairing.round_order(modes, r) for r in range(6)]
  assert all(sorted(o) == modes for o in orders)
  assert {o[0] for o in orders} == {o[-1] for o in orders} == set(modes)
  # Every mode follows more than one other mode over the rounds.
  before = {m: {o[i - 1] for o in orders for i in range(1, 3) if o[i] == m} for m in modes}
  assert all(len(b) == 2 for b in before.values())
  assert pairing.round_order([], 3) == []


class FakeWorker:
  """A worker whose run times are known: mode `a` takes 1 s x the run number,
  `b` 2 s x; `flaky` fails its second run; `unprepared` cannot start."""
  closed = []

  def __init__(self, mode, width, num_seeds, steps, torch_device):
    del width, num_seeds, steps, torch_device
    if mode == "unprepared":
      raise pairing.WorkerError("cannot prepare")
    self.mode, self.runs, self.info = mode, 0, {"compile_s": 0.5}

  def run(self):
    self.runs += 1
    if self.mode == "flaky" and self.runs == 2:
      raise pairing.WorkerError("crashed")
    return {"a": 1.0, "b": 2.0, "flaky": 3.0}[self.mode] * self.runs

  def close(self):
    FakeWorker.closed.append(self.mode)
    return dict(self.info, peak_rss_mib=1.0)


def test_a_worker_that_fails_is_dropped_and_the_others_carry_on():
  FakeWorker.closed = []
  cells = throughput.paired_rounds(["a", "b", "flaky", "unprepared"], width=8, num_seeds=1,
                                   steps=300, rounds=4, pause_s=0.0, worker=FakeWorker)
  assert cells["a"]["times"] == [1.0, 2.0, 3.0, 4.0]
  assert cells["b"]["times"] == [2.0, 4.0, 6.0, 8.0]
  assert pairing.paired_ratio(cells, "b", "a") == (2.0, 2.0, 2.0)
  assert cells["flaky"]["times"] == [3.0]
  assert cells["flaky"]["error"].endswith("crashed") and "round" in cells["flaky"]["error"]
  assert cells["unprepared"] == {"error": "cannot prepare"}
  assert sorted(FakeWorker.closed) == ["a", "b", "flaky"]
  assert cells["a"]["compile_s"] == 0.5 and cells["a"]["peak_rss_mib"] == 1.0


def _fake_worker(source, timeout_s=30.0):
  return pairing.Worker("fake", [sys.executable, "-c", source], timeout_s=timeout_s)


def test_worker_reads_answers_between_other_output():
  worker = _fake_worker(_ANSWERING_WORKER)
  assert worker.info == {"compile_s": 1.5}
  assert worker.run() == 0.25 and worker.run() == 0.25
  assert worker.close() == {"compile_s": 1.5, "peak_rss_mib": 7.0}
  assert worker._proc.returncode == 0


def test_a_silent_worker_times_out_and_is_killed(monkeypatch):
  started = []
  popen = subprocess.Popen
  monkeypatch.setattr(pairing.subprocess, "Popen",
                      lambda *a, **k: started.append(popen(*a, **k)) or started[-1])
  start = time.monotonic()
  try:
    _fake_worker(_SILENT_WORKER, timeout_s=0.5)
  except pairing.WorkerError as e:
    assert str(e) == "fake worker sent no answer in 0.5 s"
  else:
    raise AssertionError("a worker that never answers was waited for")
  assert time.monotonic() - start < 20  # not the 120 s of its sleep
  assert len(started) == 1 and started[0].returncode == -signal.SIGKILL


def test_a_worker_that_exits_reports_its_last_stderr_line():
  try:
    _fake_worker(_DYING_WORKER)
  except pairing.WorkerError as e:
    assert str(e) == "out of memory"
  else:
    raise AssertionError("a worker that exited was not reported")


def test_one_shot_returns_the_last_answer_or_the_last_stderr_line():
  answers = ("import json; p = " + repr(pairing.PROTOCOL) +
             "; print(p + json.dumps({'n': 1})); print('noise'); print(p + json.dumps({'n': 2}))")
  assert pairing.one_shot([sys.executable, "-c", answers]) == {"n": 2}
  try:
    pairing.one_shot([sys.executable, "-c", _DYING_WORKER])
  except pairing.WorkerError as e:
    assert str(e) == "out of memory"
  else:
    raise AssertionError("a measurement that exited with status 1 was not reported")


def test_the_unsteady_note_is_absent_for_steady_rounds():
  cells = {"a": {"times": [1.0, 1.4, 1.2]}, "b": {"times": [2.0, 2.0]}, "c": {"error": "x"}}
  assert pairing.unsteady_rounds(cells) == {} and pairing.unsteady_note(cells) is None
  cells["b"]["times"].append(3.2)  # 1.6x its fastest in round 3
  assert pairing.unsteady_note(cells) == ("1 of 3 (a mode over 1.5x its fastest time: "
                                          "round 3: b 1.6x)")


def test_table_rows_put_each_paired_ratio_in_its_column():
  cell = lambda times: {"times": times, "compile_s": 1.0, "peak_rss_mib": 100.0}
  cells = {"engine": dict(cell([2.0, 2.0, 2.0]), devices=2),
           "engine_noprobe": cell([1.9, 1.9, 1.9]),
           "jax_loop": cell([3.0, 3.0, 3.0]), "torch": cell([4.0, 4.0, 4.0]),
           "torch_fused": cell([3.0, 3.6, 3.3]),
           "matmul_floor": cell([1.6, 1.6, 1.6]), "engine_bf16": {"error": "boom"},
           "engine_one_device": dict(cell([2.5, 2.4, 3.0]), devices=1)}
  lines = throughput.table_lines(32, 2, 300, cells, peak=1e12)
  columns = [c.strip() for c in throughput.HEADER.strip("|").split("|")]
  rows = {line.split("|")[4].strip(): dict(zip(columns, (c.strip() for c in
                                                         line.strip("|").split("|"))))
          for line in lines}
  engine_row = rows["engine"]
  assert engine_row["devices"] == "2" and rows["torch"]["devices"] == ""
  assert engine_row["seed-steps/s"] == "300"  # 2 seeds x 300 steps in 2 s
  assert engine_row["vs torch"] == "2.00x (2.00-2.00)"
  assert engine_row["vs torch_fused"] == "1.65x (1.50-1.80)"  # 3.0/2, 3.6/2, 3.3/2
  assert rows["torch_fused"]["vs torch"] == "1.21x (1.11-1.33)"  # 4/3.3, 4/3.6, 4/3
  assert engine_row["vs jax_loop"] == "1.50x (1.50-1.50)"
  assert engine_row["of floor"] == "80% (80-80)"
  assert engine_row["MFU"] == f"{100 * 300 * throughput.model_flops_per_step(32) / 1e12:.1f}%"
  assert rows["torch"]["vs torch"] == "1.00x" and rows["matmul_floor"]["of floor"] == "100%"
  assert "n/a (boom)" in rows["engine_bf16"]["seed-steps/s"]
  assert "5.3% of training time" in rows["probe cost"]["seed-steps/s"]  # 2.0 / 1.9 - 1
  # One device's time over the split engine's, round by round: 1.25, 1.2, 1.5.
  assert rows["CPU split"]["seed-steps/s"].startswith("1.25x (1.20-1.50) the speed of one")
  assert rows["engine_one_device"]["devices"] == "1"
  assert not any("unsteady" in line for line in lines)  # every mode within 1.5x
  del cells["engine"]["devices"]  # an engine on one device: no split to report
  assert not any("CPU split" in line for line in throughput.table_lines(32, 2, 300, cells, 1e12))
  # A reference mode that failed in round 1, and a worker that never reported
  # its memory: n/a in their cells, the rest of the table as before.
  cells["torch"] = {"times": [], "error": "round 1: boom", "compile_s": 0.0}
  del cells["jax_loop"]["peak_rss_mib"]
  rows = {line.split("|")[4].strip(): line
          for line in throughput.table_lines(32, 2, 300, cells, 1e12)}
  assert "| n/a |" in rows["engine"] and "n/a (round 1: boom)" in rows["torch"]
  assert rows["jax_loop"].rstrip(" |").endswith("n/a")


def test_model_flops_count_every_layer_forward_and_backward():
  # 6 * batch * (784 * 32 + 32 * 32 + 32 * 10), worked out by hand.
  assert throughput.model_flops_per_step(32) == 6 * 128 * (25088 + 1024 + 320)


def _products(lowered) -> list[str]:
  return [line for line in lowered.as_text().splitlines() if "dot_general" in line]


def test_matmul_floor_has_the_engine_steps_products():
  program, (kernels, inputs) = throughput.matmul_floor_program(width=8, num_seeds=2, steps=3)
  chex.assert_shape(kernels, [(2, 784, 8), (2, 8, 8), (2, 8, 10)])
  chex.assert_shape(inputs, (2, 128, 784))  # every seed its own inputs, as in the engine
  floor = _products(program.lower(kernels, inputs))
  # Three forward products; backward, a kernel gradient per layer and an input
  # gradient for every layer but the first.
  assert len(floor) == 8
  assert all("batching_dims" in line for line in floor)  # each seed its own products
  out = program(kernels, inputs)
  chex.assert_trees_all_equal_shapes(out, kernels)
  assert all(bool(jnp.any(o != k)) for o, k in zip(out, kernels))  # the SGD updates ran

  # The engine's training step of the same MLP has exactly as many products.
  config = tiny_config()
  config.model.width, config.batch_size, config.probes.enabled = 8, 128, False
  data, num_classes = from_config.load_train_data(config)
  spec = from_config.engine_spec(config, num_classes, data.images.shape[1])
  hp = from_config.hparams(config)
  state = engine.init_state(spec, hp, data, jax.random.PRNGKey(0))
  step = jax.jit(lambda s, k: engine.train_step(spec, hp, data, s, k)[0])
  assert len(_products(step.lower(state, jax.random.PRNGKey(1)))) == len(floor)


def test_more_tasks_run_the_same_compiled_program():
  # Counted around both runs, so programs other tests compiled do not count.
  out = throughput.task_scaling(width=8, num_seeds=1, task_counts=(1, 3))
  assert out["compiled_programs_after_3_tasks"] == out["compiled_programs_after_1_tasks"] >= 1
  assert out["peak_rss_mib_after_3_tasks"] >= out["peak_rss_mib_after_1_tasks"] > 0
  memory = throughput.task_memory(width=8, num_seeds=1, num_tasks=2)
  assert list(memory) == ["peak_rss_mib_fresh_process_2_tasks", "host_metrics_mib_2_tasks"]
  assert memory["peak_rss_mib_fresh_process_2_tasks"] >= out["peak_rss_mib_after_3_tasks"]
  # The metrics of 2 tasks of one run: every TaskMetrics field, [1 run, 2 tasks, ...].
  config = throughput.scaling_config(width=8, num_seeds=1, num_tasks=2)
  data, num_classes = from_config.load_train_data(config)
  spec = from_config.engine_spec(config, num_classes, data.images.shape[1])
  hp = from_config.hparams(config)
  states = engine.init_states(from_config.seed_keys(config), data, hp, spec=spec)
  shapes = jax.eval_shape(lambda s: engine.run_tasks(s, data, hp, spec=spec, num_tasks=2)[1],
                          states)
  expected = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes)) / 2**20
  assert memory["host_metrics_mib_2_tasks"] == round(expected, 3) > 0


def test_workers_time_every_mode_in_every_round_and_report_failures(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # the workers count CPU devices
  modes = ["matmul_floor", "engine_noprobe", "engine_one_device"]
  cells = throughput.paired_rounds(modes + ["no_such_mode"], width=8, num_seeds=2, steps=300,
                                   rounds=3, pause_s=0.0)
  for mode in modes:
    assert len(cells[mode]["times"]) == 3 and all(t > 0 for t in cells[mode]["times"])
    assert cells[mode]["compile_s"] > 0 and cells[mode]["peak_rss_mib"] > 0
  assert cells["engine_noprobe"]["parallel_runs"] == 0
  # The engine and its floor on the CPU devices the experiment runner would use
  # for 2 runs here, the one-device mode on one.
  split = sharding.forced_cpu_device_count() or sharding.cpu_device_count(
      2, sharding.host_cores())
  assert cells["engine_noprobe"]["devices"] == cells["matmul_floor"]["devices"] == split
  assert cells["engine_noprobe"]["sharded"] == cells["matmul_floor"]["sharded"] == (split > 1)
  assert cells["engine_one_device"]["devices"] == 1
  assert "unknown mode 'no_such_mode'" in cells["no_such_mode"]["error"]


def test_cpu_model_reads_the_model_name_line(tmp_path):
  info = tmp_path / "cpuinfo"
  info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n"
                  "model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx512f\n")
  assert pairing.cpu_model(str(info)) == "Intel(R) Xeon(R) Processor"
  fallback = platform.processor() or platform.machine()
  assert pairing.cpu_model(str(tmp_path / "missing")) == fallback
  (tmp_path / "arm").write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")  # no model name line
  assert pairing.cpu_model(str(tmp_path / "arm")) == fallback


def test_rounds_where_a_mode_ran_far_slower_than_its_best_are_unsteady():
  cells = {"engine": {"times": [1.0, 1.1, 1.0, 1.05]},
           "torch": {"times": [3.0, 30.0, 3.2, 4.6]},  # rounds 2 and 4: load on the machine
           "jax_loop": {"times": [2.0, 2.0, 3.1, 2.0]}, "failed": {"error": "x"}}
  slow = pairing.unsteady_rounds(cells)
  assert list(slow) == [1, 2, 3]
  assert slow[1] == [("torch", 10.0)] and slow[2] == [("jax_loop", 3.1 / 2.0)]
  assert slow[3][0][0] == "torch" and abs(slow[3][0][1] - 4.6 / 3.0) < 1e-12
  cell = lambda c: dict(c, compile_s=0.0, peak_rss_mib=1.0)
  lines = throughput.table_lines(32, 1, 300, {m: cell(c) for m, c in cells.items()}, 1e12)
  note = [line for line in lines if "unsteady rounds" in line]
  assert len(note) == 1
  assert "3 of 4 (a mode over 1.5x its fastest time: round 2: torch 10.0x; " in note[0]
  assert "round 3: jax_loop 1.6x; round 4: torch 1.5x)" in note[0]


def test_torch_floor_runs_the_same_eight_products_and_updates():
  torch = pytest.importorskip("torch")
  step, kernels = throughput.torch_floor_step(torch, width=8)
  assert [tuple(k.shape) for k in kernels] == [(784, 8), (8, 8), (8, 10)]
  before = [k.detach().clone() for k in kernels]
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    step()
  products = sum(e.count for e in prof.key_averages() if e.key == "aten::mm")
  # As matmul_floor: three forward, five backward (no input gradient for the first layer).
  assert products == 8
  assert all(bool(torch.any(k != b)) for k, b in zip(kernels, before))  # SGD ran


# ----------------------------------------------------------------------------
# The RL benchmark and its PyTorch reference.


def test_forward_macs_and_dqn_flops_by_hand():
  # Breakout: 10x10x4 observations, 3 actions; the unpadded 3x3 conv has 8x8
  # positions. conv 64 * 16 * 9 * 4 = 36,864; dense 1024 * 128 = 131,072; head
  # 128 * 3 = 384.
  assert rl_throughput.forward_macs((10, 10, 4), 3) == 36_864 + 131_072 + 384
  flops = rl_throughput.dqn_flops_per_env_step((10, 10, 4), 3)
  m = 168_320
  assert flops == {"update": 10 * m * 32, "act": 2 * m, "total": 10 * m * 32 + 2 * m}
  half = rl_throughput.dqn_flops_per_env_step((10, 10, 4), 3, updates_per_env_step=0.5)
  assert half["update"] == 5 * m * 32 and half["act"] == 2 * m


def test_rl_config_matches_the_reference_settings():
  config = rl_throughput.rl_config("breakout", "dqn", num_seeds=8, num_envs=1, steps=500,
                                   learning_starts=1200, buffer_size=4000)
  assert rl_throughput.warmup_rounds(1200, 500) == 3 and rl_throughput.warmup_rounds(0, 500) == 1
  assert config.total_env_steps == 4 * 500 and config.eval_every_steps == 500
  assert (config.num_seeds, config.num_envs, config.replay.train_every) == (8, 1, 1)
  assert config.replay.batch_size == 32 and config.replay.buffer_size == 4000
  assert config.replay.learning_starts == config.exploration.eps_decay_steps == 1200
  assert not config.probes.enabled and config.interventions == "baseline"
  spec, _ = rl_from_config.build(config)  # a valid config
  assert spec.window_steps == 500 and spec.num_envs == 1 and not spec.run_probes
  assert spec.model.channels == (16,) and spec.model.hidden_sizes == (128,)
  assert spec.model.kernel_size == 3 and spec.model.stride == 1
  assert spec.model.padding == "VALID"


def test_the_analytic_forward_flops_match_xlas_count():
  config = rl_throughput.rl_config("breakout", "dqn", 1, 1, 100, 100, 1000)
  spec, hp = rl_from_config.build(config)
  counted = rl_throughput.xla_flops(spec, hp)
  m = rl_throughput.forward_macs(spec.env.info.obs_shape, spec.env.info.num_actions)
  # The conv has no padding, so every tap is real: XLA counts the products
  # and adds the biases and ReLUs (about 2,300 FLOPs).
  conv = 64 * 16 * 9 * 4
  real = 2 * m
  assert abs(counted["xla_act_flops"] - real) / real < 0.01
  # The update runs at least the products the convention counts, less the conv
  # layer's input gradient, which no one computes.
  assert counted["xla_update_flops"] >= 0.98 * (10 * m - 2 * conv) * 32


def test_parse_mode():
  assert rl_throughput.parse_mode("plastix_8") == ("plastix", 8)
  assert rl_throughput.parse_mode("pqn_128") == ("pqn", 128)
  assert rl_throughput.parse_mode("torch") == ("torch", 0)
  assert rl_throughput.parse_mode("torch_1") == ("torch", 1)
  for bad in ("plastix", "plastix_0", "torch_0", "jax", "pqn_x", "torch_"):
    with pytest.raises(ValueError, match="unknown mode"):
      rl_throughput.parse_mode(bad)


def _rl_cells():
  info = {"obs_shape": [10, 10, 4], "num_actions": 3, "num_envs": 1, "compile_s": 2.0,
          "peak_rss_mib": 300.0}
  return {"plastix_8": dict(info, times=[1.0, 1.0, 2.0], seed_steps=800, num_seeds=8,
                            devices=2),
          "plastix_1": dict(info, times=[0.5, 0.5, 0.5], seed_steps=100, num_seeds=1),
          "torch": dict(info, times=[2.0, 4.0, 4.0], seed_steps=100, num_seeds=1,
                        compile_s=0.0),
          "pqn_128": {"error": "boom"}}


def test_rl_speed_ratios_compare_seed_steps_per_second_round_by_round():
  cells = _rl_cells()
  per_step = rl_throughput.per_step_cells(cells)
  assert per_step["plastix_8"]["times"] == [1 / 800, 1 / 800, 2 / 800]
  assert "pqn_128" not in per_step
  # Per round, (800 / t_plastix) / (100 / t_torch): 16, 32, 16.
  assert pairing.paired_ratio(per_step, "torch", "plastix_8") == (16.0, 16.0, 32.0)
  assert rl_throughput.seed_steps_per_s(cells["plastix_8"]) == 800.0
  assert rl_throughput.target_line(cells, 8) == (
      "target: plastix_8 at least 4x torch's seed-steps/s: 16.00x (16.00-32.00), met")
  cells["torch_1"] = dict(cells["torch"], times=[1.0, 1.0, 1.0])  # 100 steps/s: 8x, 8x, 4x
  assert rl_throughput.target_line(cells, 8, reference="torch_1").startswith(
      "target: plastix_8 at least 4x torch_1's seed-steps/s: 8.00x (4.00-8.00), met")
  del cells["torch_1"]
  cells["plastix_8"]["times"] = [100.0, 100.0, 100.0]  # 8 steps/s against torch's 25-50
  assert rl_throughput.target_line(cells, 8).endswith("not met")
  assert rl_throughput.target_line(cells, 3) is None


def test_rl_table_rows():
  cells = _rl_cells()
  peak = 1e11
  lines = rl_throughput.table_lines(cells, peak)
  columns = [c.strip() for c in rl_throughput.HEADER.strip("|").split("|")]
  rows = {line.split("|")[1].strip(): dict(zip(columns, (c.strip() for c in
                                                         line.strip("|").split("|"))))
          for line in lines}
  row = rows["plastix_8"]
  assert row["seed-steps/s"] == "800" and row["per seed"] == "100" and row["seeds"] == "8"
  assert row["devices"] == "2" and rows["torch"]["devices"] == "1"
  assert row["vs torch (paired)"] == "16.00x (16.00-32.00)"
  flops = 10 * 168_320 * 32 + 2 * 168_320  # per environment step (VALID conv: 8x8 maps)
  assert row["MFU"] == f"{100 * 800 * flops / peak:.1f}%"
  assert rows["torch"]["vs torch (paired)"] == "1.00x" and rows["torch"]["seed-steps/s"] == "25"
  assert "n/a (boom)" in rows["pqn_128"]["seed-steps/s"]
  assert "unsteady rounds" in rows  # plastix_8's round 3 took 2x its fastest


def test_rl_benchmark_refuses_bad_flags_with_one_line():
  for flag in ("--steps=0", "--game=pong", "--seeds=1,x", "--modes=plastix_1,jax",
               "--learning_starts=8", "--cpu_devices=-1"):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.rl_throughput", flag],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, (flag, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith(flag.split("=")[0] + ":")


def test_rl_benchmark_runs_tiny_end_to_end():
  pytest.importorskip("torch")
  pytest.importorskip("minatar")
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.rl_throughput", "--steps=40", "--learning_starts=40",
       "--rounds=2", "--seeds=2", "--buffer_size=200", "--pqn_envs=4"],
      capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = proc.stdout
  rows = {line.split("|")[1].strip(): line for line in out.splitlines()
          if line.startswith("| ") and "---" not in line}
  for mode in ("plastix_2", "torch"):
    assert mode in rows and "n/a (" not in rows[mode], out
    assert rows[mode].count("%") == 1  # its MFU
  assert "x (" in rows["plastix_2"]  # its paired ratio to the reference
  # Its runs on the CPU devices experiments.rl would split this host into.
  from plastix import sharding  # pylint: disable=g-import-not-at-top
  assert rows["plastix_2"].split("|")[4].strip() == str(
      sharding.cpu_device_count(2, sharding.host_cores()))
  assert "target: plastix_2 at least 4x torch's" in out
  assert "XLA's count of the compiled update" in out


def test_reference_double_dqn_loss_by_hand():
  torch = pytest.importorskip("torch")
  from benchmarks import rl_reference  # pylint: disable=g-import-not-at-top
  q = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], requires_grad=True)
  next_online = torch.tensor([[0.0, 5.0, 1.0], [1.0, 0.0, 0.0]], requires_grad=True)
  next_target = torch.tensor([[10.0, 2.0, 3.0], [7.0, 7.0, 7.0]], requires_grad=True)
  args = (torch.tensor([2, 0]), torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0]), 0.9)
  # a* = [1, 0] (online), Q_target(s', a*) = [2, 7]; y = [1 + 0.9 * 2, 0.5] (the
  # second ended); deltas [3 - 2.8, 0 - 0.5] = [0.2, -0.5]: huber [0.02, 0.125].
  loss = rl_reference.double_dqn_loss(q, next_online, next_target, *args, kappa=1.0)
  assert abs(loss.item() - 0.0725) < 1e-6
  # kappa 0.3: 0.02 and 0.3 * (0.5 - 0.15) = 0.105.
  loss = rl_reference.double_dqn_loss(q, next_online, next_target, *args, kappa=0.3)
  assert abs(loss.item() - 0.0625) < 1e-6
  loss.backward()
  assert next_online.grad is None and next_target.grad is None  # the target is held fixed
  assert torch.allclose(q.grad, torch.tensor([[0.0, 0.0, 0.1], [-0.15, 0.0, 0.0]]))


def test_reference_epsilon_replay_and_network():
  pytest.importorskip("torch")
  from benchmarks import rl_reference  # pylint: disable=g-import-not-at-top
  s = rl_reference.Settings(eps_start=1.0, eps_end=0.1, eps_decay_steps=100)
  assert [rl_reference.epsilon(s, t) for t in (0, 50, 100, 500)] == [1.0, 0.55, 0.1, 0.1]
  buffer = rl_reference.ReplayBuffer(3, (1, 2, 2))
  for i in range(4):  # the fourth overwrites the first
    buffer.add(np.full((1, 2, 2), i % 2, bool), i, float(i), np.ones((1, 2, 2), bool), i == 3)
  assert (buffer.size, buffer.position) == (3, 1)
  assert list(buffer.actions) == [3, 1, 2] and list(buffer.terminated) == [1.0, 0.0, 0.0]
  obs, actions, rewards, next_obs, terminated = buffer.sample(np.random.default_rng(0), 50)
  assert obs.shape == (50, 1, 2, 2) and obs.dtype == next_obs.dtype == rl_reference.torch.float32
  assert set(actions.tolist()) <= {1, 2, 3} and torch_equal(rewards, actions.float())
  assert torch_equal(obs[:, 0, 0, 0], (actions % 2).float())
  net = rl_reference.q_network(4, 3)
  counts = [p.numel() for p in net.parameters()]
  assert counts == [16 * 4 * 9, 16, 1024 * 128, 128, 128 * 3, 3]  # 8x8x16 features
  assert tuple(net(rl_reference.torch.zeros(5, 4, 10, 10)).shape) == (5, 3)


def torch_equal(a, b) -> bool:
  return bool((a == b).all())


def test_reference_agent_updates_once_per_step_and_syncs_its_target():
  pytest.importorskip("torch")
  pytest.importorskip("minatar")
  from benchmarks import rl_reference  # pylint: disable=g-import-not-at-top
  settings = rl_reference.Settings(learning_starts=40, buffer_size=64, target_update_period=5,
                                   eps_decay_steps=40)
  agent = rl_reference.Agent(settings, seed=0)
  assert len(agent.actions) == 3  # breakout's minimal action set
  agent.run(39)
  assert agent.updates == 0 and agent.buffer.size == 39
  agent.run(30)  # the 40th transition's step takes the first update: 30 updates
  assert agent.updates == 30 and agent.buffer.size == 64 and agent.buffer.position == 69 % 64
  same = lambda: all(bool((p == q).all()) for p, q in zip(agent.net.parameters(),
                                                          agent.target.parameters()))
  assert same()  # synced after update 30
  agent.run(1)
  assert agent.updates == 31 and not same()
  assert np.isfinite(agent.last_loss)
  with pytest.raises(ValueError, match="game: choose one of"):
    rl_reference.Agent(rl_reference.Settings(game="pong"), seed=0)
