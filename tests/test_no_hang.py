"""Every shape of runs a user can reach finishes: runs per CPU device, grids, probes.

Before the probes' singular values were computed one matrix per LAPACK call
(`plastix.probes.one_matrix_per_call`), a CPU host split into devices that
each held more than one run deadlocked in the batched SVD kernel: the command
printed its header and waited forever. Each shape below runs the command line
in a subprocess with a timeout; a deadlock shows as the watchdog's line (exit
status 3, ``stall_timeout_s`` below) or, failing that, as the timeout.

On a host with more cores than devices the kernel had threads to spare and
did not deadlock, so these reproduce the old failure only on small hosts
(the project's 2-core machines); they check that every shape finishes
everywhere.
"""

import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import probes
from plastix import results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Seconds a run may take here (each is 10-30 s on a busy 2-core machine).
TIMEOUT_S = 240
# Seconds of an idle process before the watchdog ends a stalled run: a
# deadlock fails fast with its line, and a working run never idles that long.
STALL_S = 60
# The old deadlock needed a batched kernel big enough for jaxlib to split it
# over threads (2e5 estimated FLOP per piece): the SVD of two 64 x 32 feature
# matrices is, of two 64 x 16 ones is not; so is the eigendecomposition of two
# 64 x 64 NTK matrices. Hence width 32, a probe batch of 64, 64 NTK examples.
TINY = ("--config.num_tasks=2", "--config.steps_per_task=10", "--config.batch_size=32",
        "--config.num_examples=200", "--config.probes.batch_size=64",
        "--config.probes.test_examples=0", "--config.model.depth=1",
        "--config.model.width=32", "--config.interventions=baseline",
        f"--config.stall_timeout_s={STALL_S}")
EXPENSIVE = ("--config.probes.sharpness_every=1", "--config.probes.ntk_every=1",
             "--config.probes.alignment_every=1", "--config.probes.plasticity_every=1",
             "--config.probes.hessian_iters=3", "--config.probes.ntk_examples=64",
             "--config.probes.alignment_examples=8", "--config.probes.plasticity_steps=4",
             "--config.probes.plasticity_batch=16")
README_GRID = "--config.grid=optimizer.learning_rate=1e-3,3e-4;shift_params.eps=0.1,1.0"


def _environment():
  """This environment on the CPU, without a forced CPU device count (the command's
  ``cpu_devices`` decides)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("JAX_NUM_CPU_DEVICES", None)
  env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                            env.get("XLA_FLAGS", "")).strip()
  return env


def _train(workdir, *extra):
  """Runs ``python -m experiments.synthetic`` on the tiny workload; the finished process."""
  command = [sys.executable, "-m", "experiments.synthetic", *TINY, *extra,
             f"--workdir={workdir}"]
  try:
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT_S, env=_environment())
  except subprocess.TimeoutExpired as e:
    out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    pytest.fail(f"no result after {TIMEOUT_S}s (a deadlock?): {' '.join(extra)}\n{out}")
  assert proc.returncode == 0, f"{' '.join(extra)}\n{proc.stdout}\n{proc.stderr}"
  return proc


def _header(proc) -> str:
  return proc.stdout.splitlines()[0]


@pytest.mark.parametrize("seeds,devices,extra", [
    # 2 runs per device: 1 seed at each of the README's 4 grid points.
    (1, 2, (README_GRID, "--config.interventions=layer_norm")),
    (6, 2, ()),            # 3 runs per device.
    (8, 2, EXPENSIVE),     # 4 runs per device, every expensive probe at every task.
    (16, 2, ()),           # 8 runs per device.
    (3, 3, ("--config.probes.enabled=False",)),  # 1 run per device, probes off.
], ids=["2_per_device_grid", "3_per_device", "4_per_device_expensive_probes",
        "8_per_device", "1_per_device_probes_off"])
def test_runs_per_device_finish(tmp_path, seeds, devices, extra):
  proc = _train(tmp_path / "run", f"--config.num_seeds={seeds}",
                f"--config.cpu_devices={devices}", *extra)
  assert f"{seeds} seeds on {devices} cpu devices" in _header(proc)
  assert "done in" in proc.stdout
  rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
  points = 4 if README_GRID in extra else 1
  assert len(rows) - 1 == seeds * points * 2  # a row per run and task.


def _numbers_close(a: list[dict], b: list[dict]) -> None:
  """Two metrics.csv tables hold the same rows, numbers to float tolerance."""
  assert len(a) == len(b)
  for row_a, row_b in zip(a, b):
    assert row_a.keys() == row_b.keys()
    for key, value in row_a.items():
      if isinstance(value, float):
        np.testing.assert_allclose(value, row_b[key], rtol=1e-4, atol=1e-5, err_msg=key)
      else:
        assert value == row_b[key], key


@pytest.mark.parametrize("extra, points", [
    ((), 1),  # 3 runs on 4 devices: one padding run.
    (("--config.grid=optimizer.learning_rate=1e-3,3e-4",), 2),  # 6 runs: two.
], ids=["3_seeds", "3_seeds_x_2_points"])
def test_runs_that_do_not_fill_the_devices_are_padded(tmp_path, extra, points):
  """A run count the devices do not divide runs, padded with copies of the last
  run that train and are dropped: the metrics of one device."""
  tables = {}
  for devices in (4, 1):
    proc = _train(tmp_path / f"on_{devices}", "--config.num_seeds=3",
                  f"--config.cpu_devices={devices}", *extra)
    assert f"3 seeds on {devices} cpu device" in _header(proc)
    tables[devices] = results.read_csv(str(tmp_path / f"on_{devices}" / "metrics.csv"))
  assert len(tables[4]) == 3 * points * 2  # a row per real run and task, no padding
  assert sorted({r["seed"] for r in tables[4]}) == [0, 1, 2]
  _numbers_close(tables[4], tables[1])


def test_singular_values_match_the_batched_kernel():
  """One LAPACK call per matrix gives the batched kernel's values exactly, and
  the same derivatives."""
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 64, 16))
  batched = np.asarray(jnp.linalg.svd(x, compute_uv=False))
  np.testing.assert_array_equal(np.asarray(jax.jit(jax.vmap(probes.singular_values))(x)),
                                batched)
  np.testing.assert_array_equal(np.asarray(probes.singular_values(x)), batched)
  gram = jnp.einsum("bij,bkj->bik", x, x)
  np.testing.assert_array_equal(
      np.asarray(jax.jit(jax.vmap(probes.symmetric_eigenvalues))(gram)),
      np.asarray(jnp.linalg.eigvalsh(gram)))
  # And jnp.linalg's derivatives: d sigma_i = u_i^T dA v_i, d lambda_i = v_i^T dA v_i.
  erank = lambda f: lambda a: probes.spectral_effective_rank(f(a))
  np.testing.assert_allclose(
      jax.vmap(jax.grad(erank(probes.singular_values)))(x),
      jax.vmap(jax.grad(erank(lambda a: jnp.linalg.svd(a, compute_uv=False))))(x),
      rtol=1e-4, atol=1e-7)
  square_sum = lambda f: lambda m: jnp.sum(f(m) ** 2)
  np.testing.assert_allclose(
      jax.vmap(jax.grad(square_sum(probes.symmetric_eigenvalues)))(gram),
      jax.vmap(jax.grad(square_sum(jnp.linalg.eigvalsh)))(gram), rtol=1e-4, atol=1e-3)


# Compiles the engine's chunk program of 4 runs split over 2 CPU devices, every
# probe on, all runs side by side and in rows of 2; prints, for each, the
# dimensions of every LAPACK call's first result and the collectives.
PROGRAM_REPORT = textwrap.dedent("""
    import functools, re
    import jax
    jax.config.update("jax_num_cpu_devices", 2)
    from tests.conftest import tiny_config
    from plastix import engine, from_config, interventions, sharding
    for rows in (0, 2):
      config = tiny_config()
      config.num_seeds, config.parallel_runs, config.model.width = 4, rows, 32
      config.probes.batch_size, config.probes.ntk_examples = 64, 64
      for name in ("sharpness", "ntk", "alignment", "plasticity"):
        config.probes[f"{name}_every"] = 1
      config.probes.hessian_iters = config.probes.plasticity_steps = 2
      resolved = interventions.apply(config, "baseline")
      data, num_classes = from_config.load_train_data(resolved)
      spec = from_config.engine_spec(resolved, num_classes, data.images.shape[1],
                                     data.image_shape)
      mesh = sharding.seed_mesh()
      keys = sharding.shard_seeds(from_config.seed_keys(resolved), mesh)
      data = sharding.replicate(data, mesh)
      hp = sharding.replicate(from_config.hparams(resolved), mesh)
      states = engine.init_states(keys, data, hp, spec=spec)
      hlo = engine.run_tasks.lower(states, data, hp, spec=spec,
                                   num_tasks=1).compile().as_text()
      calls = re.findall(r'= \\(?\\w+\\[([\\d,]*)\\][^\\n]*custom_call_target="(lapack_\\w+)"', hlo)
      collectives = [c for c in ("all-gather", "all-reduce", "all-to-all",
                                 "collective-permute") if c + "(" in hlo]
      print(rows, sorted(set(calls)), collectives)
""")


def test_the_split_program_calls_lapack_on_one_matrix_at_a_time_where_the_runs_are():
  """Every LAPACK kernel in the compiled chunk program (4 runs on 2 CPU devices,
  every probe on) gets one matrix, never a stack: the stacked kernels were the
  ones that waited on the shared thread pool. And each device works on its own
  runs' matrices: no collective moves them between devices. On any host."""
  proc = subprocess.run([sys.executable, "-c", PROGRAM_REPORT], cwd=ROOT, capture_output=True,
                        text=True, timeout=TIMEOUT_S, env=_environment())
  assert proc.returncode == 0, proc.stderr[-3000:]
  # The feature SVD (64 x 32) and the NTK's eigenvalues (64 x 64), per matrix.
  calls = "[('64,32', 'lapack_sgesdd_ffi'), ('64,64', 'lapack_ssyevd_ffi')]"
  assert proc.stdout.splitlines() == [f"0 {calls} []", f"2 {calls} []"]
