"""Seeds (and grid points) sharded over several devices give the single-device metrics."""

import os
import subprocess
import sys
import textwrap

from tests.conftest import xla_flags

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
    sharded = runner.run_intervention(config, "layer_norm", data, num_classes, mesh=mesh)
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
    try:
      sharding.check_divisible(4, sharding.seed_mesh(jax.devices()[:3]))
      raise SystemExit("4 seeds on 3 devices were not refused")
    except ValueError as e:
      assert "do not split evenly over 3 devices" in str(e), e
    print("ok")
""")


def test_sharded_seeds_match_one_device():
  env = dict(os.environ, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=4"),
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "ok" in proc.stdout

