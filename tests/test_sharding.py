"""Seeds (and grid points) sharded over several devices give the single-device metrics."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from plastix import from_config, runner, sharding
from tests.conftest import tiny_config, xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import jax, numpy as np, chex
    from tests.conftest import tiny_config
    from plastix import engine, from_config, runner, sharding
    assert jax.device_count() == 4, jax.devices()
    config = tiny_config()
    config.num_seeds = 4
    data, num_classes = from_config.load_train_data(config)
    mesh = sharding.seed_mesh()
    keys = sharding.shard_seeds(from_config.seed_keys(config), mesh)
    assert len(keys.sharding.device_set) == 4
    hp = sharding.replicate(from_config.hparams(config), mesh)
    spec = from_config.engine_spec(config, num_classes, data.images.shape[1])
    states = engine.init_states(keys, sharding.replicate(data, mesh), hp, spec=spec)
    assert len(states.params["head"]["kernel"].sharding.device_set) == 4
    assert states.params["head"]["kernel"].addressable_shards[0].data.shape[0] == 1
    # Seeds and a grid's points (2 points x 2 seeds = 4 runs) are sharded alike.
    config.num_seeds = 2
    config.grid = "optimizer.learning_rate=1e-3,1e-2"
    # The runner trains the runs where the mesh puts them: over all 4 devices.
    placed, run_tasks = [], engine.run_tasks
    def recording_run_tasks(states, *args, **kwargs):
      placed.append(len(states.params["head"]["kernel"].sharding.device_set))
      return run_tasks(states, *args, **kwargs)
    engine.run_tasks = recording_run_tasks
    sharded = runner.run_intervention(config, "layer_norm", data, num_classes, mesh=mesh)
    engine.run_tasks = run_tasks
    assert placed and set(placed) == {4}, placed
    single = runner.run_intervention(config, "layer_norm", data, num_classes,
                                     mesh=sharding.seed_mesh(jax.devices()[:1]))
    assert sharded.train_loss.shape[0] == 4
    chex.assert_trees_all_close(sharded, single, rtol=2e-5, atol=1e-6)
    # Runs in rows (parallel_runs): 8 runs as 4 rows of 2 in sequence, a row per
    # device, give the all-side-by-side metrics with no cross-device traffic.
    config.num_seeds = 4
    config.parallel_runs = 4
    rows = runner.run_intervention(config, "baseline", data, num_classes, mesh=mesh)
    config.parallel_runs = 0
    flat = runner.run_intervention(config, "baseline", data, num_classes, mesh=mesh)
    assert rows.train_loss.shape[0] == 8
    chex.assert_trees_all_close(rows, flat, rtol=2e-5, atol=1e-6)
    config.grid, config.num_seeds, config.parallel_runs = "", 8, 4
    spec = from_config.engine_spec(config, num_classes, data.images.shape[1])
    keys = sharding.shard_seeds(from_config.seed_keys(config), mesh)
    data_r = sharding.replicate(data, mesh)
    states = engine.init_states(keys, data_r, hp, spec=spec)
    hlo = engine.run_tasks.lower(states, data_r, hp, spec=spec, num_tasks=1).compile().as_text()
    for collective in ("all-gather", "all-to-all", "collective-permute", "all-reduce"):
      assert collective not in hlo, collective
    # A process's rows: every row here (one process), read shard by shard, and
    # back to global arrays placed as shard_seeds places them.
    tree = {"a": np.arange(24.0).reshape(8, 3), "b": np.arange(8, dtype=np.int32)}
    placed = sharding.shard_seeds(tree, mesh)
    rows = sharding.process_rows(8, mesh)
    np.testing.assert_array_equal(rows, np.arange(8))
    np.testing.assert_array_equal(sharding.process_rows(8, None), np.arange(8))
    chex.assert_trees_all_equal(sharding.local_rows(placed, rows), tree)
    chex.assert_trees_all_equal(sharding.local_rows(placed, np.array([5, 1])),
                                jax.tree.map(lambda x: x[[5, 1]], tree))
    back = sharding.from_local_rows(tree, rows, 8, mesh)
    assert back["a"].sharding.is_equivalent_to(placed["a"].sharding, 2)
    chex.assert_trees_all_equal(jax.device_get(back), tree)
    # Padding rows: refilled as copies of the last real run, placed as before;
    # left out of a process's rows, they are saved as zeros; a real row never is.
    padded = sharding.shard_seeds({"a": np.arange(8.0).reshape(4, 2)}, mesh)
    filled = sharding.fill_padding(padded, 3, mesh)
    assert filled["a"].sharding.is_equivalent_to(padded["a"].sharding, 2)
    np.testing.assert_array_equal(filled["a"], [[0, 1], [2, 3], [4, 5], [4, 5]])
    three = {"a": np.arange(6.0).reshape(3, 2)}
    back = sharding.from_local_rows(three, np.arange(3), 4, mesh, num_real=3)
    np.testing.assert_array_equal(back["a"], [[0, 1], [2, 3], [4, 5], [0, 0]])
    try:
      sharding.from_local_rows(three, np.array([0, 1]), 4, mesh, num_real=3)
      raise SystemExit("a missing real row was not refused")
    except ValueError as e:
      assert "rows [2]" in str(e), e
    print("ok")
""")


def test_sharded_seeds_match_one_device():
  env = dict(os.environ, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=4"),
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "ok" in proc.stdout


# 3 runs (and a grid's 6) on 4 devices, padded with copies of the last run:
# the metrics of one device, and a checkpoint resumes on any device count (the
# saved padding cut off or zero-filled, then refilled with copies).
PADDED_SCRIPT = textwrap.dedent("""
    import tempfile
    import jax, numpy as np, chex
    from tests.conftest import tiny_config
    from plastix import checkpointing, from_config, runner, sharding
    assert jax.device_count() == 4, jax.devices()
    one, two, four = (sharding.seed_mesh(jax.devices()[:n]) for n in (1, 2, 4))
    config = tiny_config()
    config.num_seeds, config.num_tasks, config.tasks_per_chunk = 3, 2, 1
    data, num_classes = from_config.load_train_data(config)
    train = lambda mesh, **kw: runner.run_intervention(config, "baseline", data, num_classes,
                                                       mesh=mesh, **kw)
    whole = train(one)
    assert whole.train_loss.shape == (3, 2)
    for mesh in (four, two):
      chex.assert_trees_all_close(train(mesh), whole, rtol=2e-5, atol=1e-6)
    # parallel_runs = the 3 runs: every run side by side, the padding too.
    config.parallel_runs = 3
    chex.assert_trees_all_close(train(four), whole, rtol=2e-5, atol=1e-6)
    config.parallel_runs = 0
    # As if killed after task 1 (a 1-task job leaves the checkpoint a 2-task
    # job has after its first), resumed on the same and on other device counts.
    for first, then in ((four, four), (four, one), (one, four), (four, two)):
      folder = tempfile.mkdtemp()
      config.num_tasks = 1
      train(first, checkpoint_dir=folder)
      config.num_tasks = 2
      lines = []
      resumed = train(then, checkpoint_dir=folder, progress=lines.append)
      assert "resumed from checkpoint after task 1/2" in lines[0], lines
      chex.assert_trees_all_close(resumed, whole, rtol=2e-5, atol=1e-6)
    # A checkpoint of fewer runs than asked for is refused.
    config.num_seeds, config.num_tasks = 1, 1
    folder = tempfile.mkdtemp()
    train(one, checkpoint_dir=folder)
    config.num_seeds, config.num_tasks = 3, 2
    try:
      train(one, checkpoint_dir=folder)
      raise SystemExit("a checkpoint of 1 run resumed 3")
    except ValueError as e:
      assert "holds 1 runs, fewer than the 3" in str(e), e
    # A grid: 3 seeds x 2 points = 6 runs, padded to 8.
    config.grid = "optimizer.learning_rate=1e-3,1e-2"
    chex.assert_trees_all_close(train(four), train(one), rtol=2e-5, atol=1e-6)
    print("ok")
""")


def test_runs_padded_to_the_devices_match_one_device_and_resume_anywhere():
  env = dict(os.environ, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=4"),
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", PADDED_SCRIPT], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "ok" in proc.stdout


@pytest.mark.parametrize("runs, multiple, expected", [
    (3, 4, 4), (4, 4, 4), (5, 4, 8), (6, 4, 8), (1, 8, 8), (3, 1, 3), (7, 3, 9)])
def test_padded_count(runs, multiple, expected):
  assert sharding.padded_count(runs, multiple) == expected


def test_pad_runs_repeats_the_last_run_and_unpad_drops_the_copies():
  tree = {"keys": np.arange(6).reshape(3, 2), "hp": {"lr": np.array([0.1, 0.2, 0.3])}}
  padded, num_real = sharding.pad_runs(tree, 4)
  assert num_real == 3
  np.testing.assert_array_equal(padded["keys"], [[0, 1], [2, 3], [4, 5], [4, 5]])
  np.testing.assert_array_equal(padded["hp"]["lr"], [0.1, 0.2, 0.3, 0.3])
  padded, _ = sharding.pad_runs(tree, 2)  # 3 runs on 2 devices: 4 rows as well
  np.testing.assert_array_equal(padded["hp"]["lr"], [0.1, 0.2, 0.3, 0.3])
  padded, _ = sharding.pad_runs(tree, 8)
  np.testing.assert_array_equal(padded["hp"]["lr"], [0.1, 0.2] + [0.3] * 6)
  unpadded = sharding.unpad(padded, num_real)
  for got, want in zip(jax.tree.leaves(unpadded), jax.tree.leaves(tree)):
    np.testing.assert_array_equal(got, want)
  same, num_real = sharding.pad_runs(tree, 3)  # already a multiple: unchanged
  assert same is tree and num_real == 3


def test_pad_runs_needs_one_run_axis():
  with pytest.raises(ValueError, match="same leading run axis"):
    sharding.pad_runs({"a": np.zeros(3), "b": np.zeros(2)}, 4)
  with pytest.raises(ValueError, match="same leading run axis"):
    sharding.pad_runs({"a": np.zeros(3), "b": np.float32(1.0)}, 4)
  with pytest.raises(ValueError, match="at least one run and one device"):
    sharding.padded_count(3, 0)


@pytest.mark.parametrize("runs, cores, parallel_runs, max_devices, expected", [
    (1, 2, 0, None, 1),    # one run: one device
    (2, 2, 0, None, 2),    # a run per core
    (3, 2, 0, None, 3),    # 3 runs on 2 cores: 3 devices beat 1 (every core busy)
    (8, 2, 0, None, 2),    # the smallest divisor that fills the cores
    (8, 4, 0, None, 4),
    (3, 4, 0, None, 3),    # fewer runs than cores: a device per run
    (9, 2, 0, None, 3),
    (97, 2, 0, None, 1),   # a prime far above 4 devices per core: no split
    (7, 2, 0, None, 7),    # ... but within 4 per core
    (8, 4, 2, None, 2),    # rows of 2 runs must split over the devices too
    (8, 2, 8, None, 2),    # parallel_runs >= runs: every run side by side
    (8, 2, 0, 1, 1),       # the data's copies allow one device
    (12, 4, 0, 3, 3),
])
def test_cpu_device_count(runs, cores, parallel_runs, max_devices, expected):
  assert sharding.cpu_device_count(runs, cores, parallel_runs, max_devices) == expected


def test_cpu_device_count_refuses_no_runs():
  with pytest.raises(ValueError, match="at least one run"):
    sharding.cpu_device_count(0, 2)
  with pytest.raises(ValueError, match="at least 1"):
    sharding.use_cpu_devices(0)


@pytest.mark.skipif(jax.config.jax_num_cpu_devices >= 0, reason="JAX_NUM_CPU_DEVICES is set")
def test_forced_cpu_device_count_reads_xla_flags(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
  assert sharding.forced_cpu_device_count() is None
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4 --foo=1")
  assert sharding.forced_cpu_device_count() == 4


def test_config_cpu_devices(monkeypatch):
  monkeypatch.setattr(sharding, "host_cores", lambda: 2)
  monkeypatch.setattr(sharding, "forced_cpu_device_count", lambda: None)
  config = tiny_config()
  config.cpu_devices = 0
  assert from_config.cpu_devices(config, 3) == 3
  assert from_config.cpu_devices(config, 8) == 2
  # Each device holds a copy of the data: no more copies than fit the budget.
  assert from_config.cpu_devices(config, 8, data_bytes=from_config.DATA_COPIES_BYTES) == 1
  config.parallel_runs = 1  # rows of one run, which no two devices can split
  assert from_config.cpu_devices(config, 8) == 1
  config.parallel_runs = 0
  config.cpu_devices = 5  # as given
  assert from_config.cpu_devices(config, 8) == 5
  config.cpu_devices = 0
  config.shard_seeds = False  # runs not sharded: JAX's own choice
  assert from_config.cpu_devices(config, 8) is None
  config.shard_seeds, config.distributed.enabled = True, True
  assert from_config.cpu_devices(config, 8) is None
  config.distributed.enabled = False
  config.model.name = "cnn"  # measured slower split: one device
  assert from_config.cpu_devices(config, 8) is None
  config.model.name = "mlp"
  monkeypatch.setattr(sharding, "forced_cpu_device_count", lambda: 4)  # XLA_FLAGS says 4
  assert from_config.cpu_devices(config, 8) is None


SPLIT_SCRIPT = textwrap.dedent("""
    import jax
    from plastix import sharding
    sharding.use_cpu_devices(3)
    assert jax.device_count() == 3 and jax.default_backend() == "cpu", jax.devices()
    try:
      sharding.use_cpu_devices(2)
      raise SystemExit("the device count changed after JAX started")
    except RuntimeError as e:
      assert "before backends are initialized" in str(e), e
    print("ok")
""")

FORCED_SCRIPT = "from plastix import sharding; print(sharding.forced_cpu_device_count())"


def test_use_cpu_devices_splits_the_host_before_jax_starts():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SPLIT_SCRIPT], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "ok" in proc.stdout
  # JAX's own setting wins over XLA_FLAGS, as JAX makes the CPU client.
  env.update(JAX_NUM_CPU_DEVICES="5",
             XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=3"))
  proc = subprocess.run([sys.executable, "-c", FORCED_SCRIPT], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip() == "5"


def test_run_intervention_refuses_to_return_a_share_of_the_runs(monkeypatch):
  # Process 0 of a two-process job holds runs 0 and 1 of 4: not the whole job.
  share = runner.RunShare(np.array([0, 1]), "metrics of runs 0, 1", num_runs=4)
  monkeypatch.setattr(runner, "run_intervention_share", lambda *a, **k: share)
  with pytest.raises(ValueError, match=r"holds runs \[0, 1\] only"):
    runner.run_intervention(tiny_config(), "baseline", None, 10)
  whole = runner.RunShare(np.arange(4), "metrics of every run", num_runs=4)
  monkeypatch.setattr(runner, "run_intervention_share", lambda *a, **k: whole)
  assert runner.run_intervention(tiny_config(), "baseline", None, 10) == "metrics of every run"
