"""The watchdog: a stalled wait ends the job with one line; a busy or slow one never does."""

import os
import subprocess
import sys
import textwrap
import time

import pytest

from plastix import runner, validation, watchdog
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------
# The decisions, from made-up clock readings.


def test_chunk_limits():
  assert watchdog.chunk_limits(300, "cpu", None) == watchdog.Limits(300.0, None)
  assert watchdog.chunk_limits(300, "cpu", 50.0) == watchdog.Limits(300.0, None)
  # Accelerators: nothing to scale from before the first chunk, then
  # max(T, 20 x slowest): 300 against 20 x 10 = 200, and 20 x 100 = 2000 against 300.
  assert watchdog.chunk_limits(300, "gpu", None) == watchdog.Limits(None, None)
  assert watchdog.chunk_limits(300, "gpu", 10.0) == watchdog.Limits(None, 300.0)
  assert watchdog.chunk_limits(300, "tpu", 100.0) == watchdog.Limits(None, 2000.0)
  assert watchdog.chunk_limits(0, "cpu", 5.0) == watchdog.Limits(None, None)
  assert watchdog.chunk_limits(0, "gpu", 5.0) == watchdog.Limits(None, None)


def test_idle_time_accumulates_only_while_the_process_uses_no_cpu():
  clock = watchdog.start_clock(wall=100.0, cpu=7.0)
  # 1 s at 90% of a core: busy.
  clock = watchdog.advance_idle(clock, 101.0, 7.9)
  assert clock.idle_s == 0.0
  # 2 s with 0.01 s of CPU (0.5% < 2%): idle; then 1 s with 0.015 s (1.5%): idle.
  clock = watchdog.advance_idle(clock, 103.0, 7.91)
  assert clock.idle_s == pytest.approx(2.0)
  clock = watchdog.advance_idle(clock, 104.0, 7.925)
  assert clock.idle_s == pytest.approx(3.0)
  # 1 s at 3% of a core ends the idle run.
  clock = watchdog.advance_idle(clock, 105.0, 7.955)
  assert clock.idle_s == 0.0
  # No time passed: nothing changes.
  assert watchdog.advance_idle(clock, 105.0, 9.0) == clock
  assert clock.start == 100.0 and clock.last_wall == 105.0


def test_stall_message_names_the_wait_and_the_advice():
  clock = watchdog.Clock(start=0.0, last_wall=40.0, last_cpu=1.0, idle_s=29.0)
  limits = watchdog.Limits(idle_s=30.0, wall_s=None)
  assert watchdog.stall_message(clock, limits, 40.0, "[x] tasks 1-2", "try y") is None
  message = watchdog.stall_message(clock._replace(idle_s=30.0), limits, 41.0,
                                   "[x] tasks 1-2", "try y")
  assert message.startswith("error: [x] tasks 1-2 made no progress for 41s")
  assert "idle (no CPU use) for the last 30s" in message and message.endswith("try y")
  assert "\n" not in message
  # The wall-clock rule (accelerators), whatever the CPU did.
  wall = watchdog.Limits(idle_s=None, wall_s=60.0)
  assert watchdog.stall_message(clock, wall, 59.0, "w", "a") is None
  assert "no progress for 60s (the limit: 60s" in watchdog.stall_message(clock, wall, 60.0,
                                                                         "w", "a")
  assert watchdog.stall_message(clock, watchdog.Limits(None, None), 1e9, "w", "a") is None


def test_stall_advice():
  assert runner.stall_advice("/ck", "cpu", 4).startswith(
      "tasks 1-4 are checkpointed in /ck and the same command resumes from there; ")
  assert "--config.cpu_devices=1" in runner.stall_advice("/ck", "cpu", 0)
  assert "cpu_devices" not in runner.stall_advice("/ck", "gpu", 4)
  assert "no checkpoint" in runner.stall_advice(None, "cpu", 4)


# ----------------------------------------------------------------------------
# The thread, on real clocks.


def _stalled(seconds):
  """A fake chunk that never makes progress: it waits without using the CPU."""
  time.sleep(seconds)


def _busy(seconds):
  """A fake slow chunk: it computes the whole time."""
  end = time.monotonic() + seconds
  x = 0
  while time.monotonic() < end:
    x += 1
  return x


def test_a_stalled_wait_is_reported_once():
  lines = []
  with watchdog.Watchdog(on_stall=lines.append, poll_s=0.05) as dog:
    with dog.watching(watchdog.Limits(idle_s=0.3, wall_s=None), "[fake] chunk", "advice"):
      _stalled(1.2)
  assert len(lines) == 1
  assert lines[0].startswith("error: [fake] chunk made no progress for ")
  assert lines[0].endswith("; advice")


def test_a_busy_wait_is_never_reported():
  lines = []
  with watchdog.Watchdog(on_stall=lines.append, poll_s=0.05) as dog:
    with dog.watching(watchdog.Limits(idle_s=0.3, wall_s=None), "[fake] chunk", "advice"):
      _busy(1.2)
    # Idle time outside a watched wait counts for nothing.
    _stalled(0.6)
  assert lines == []


def test_the_wall_clock_rule_reports_a_long_wait_even_if_busy():
  lines = []
  with watchdog.Watchdog(on_stall=lines.append, poll_s=0.05) as dog:
    with dog.watching(watchdog.Limits(idle_s=None, wall_s=0.3), "[fake] gpu chunk", "a"):
      _busy(0.8)
  assert len(lines) == 1 and "[fake] gpu chunk" in lines[0]


# ----------------------------------------------------------------------------
# The config field.


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), True, "300"])
def test_a_bad_stall_timeout_is_refused(value):
  config = tiny_config()
  config.stall_timeout_s = 0.0
  validation.validate(config)  # 0 (never) is fine.
  config.unlock()
  del config["stall_timeout_s"]
  config.stall_timeout_s = value
  with pytest.raises(validation.ConfigError, match=r"^config\.stall_timeout_s: must be"):
    validation.validate(config)


def test_the_command_refuses_a_bad_stall_timeout_in_one_line():
  proc = subprocess.run([sys.executable, "-m", "experiments.synthetic",
                         "--config.stall_timeout_s=-5"], cwd=ROOT, capture_output=True,
                        text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: config.stall_timeout_s: must be a number of seconds >= 0 (0 = never stop "
      "a stalled run) (got -5.0)"]


# ----------------------------------------------------------------------------
# The command line, with a chunk that never finishes.

TINY = ["--config.num_tasks=2", "--config.tasks_per_chunk=1", "--config.steps_per_task=10",
        "--config.batch_size=32", "--config.num_examples=200", "--config.num_seeds=2",
        "--config.probes.batch_size=64", "--config.probes.test_examples=0",
        "--config.model.depth=1", "--config.model.width=32",
        "--config.interventions=baseline"]

# Runs experiments.synthetic with the engine's second chunk replaced by one
# that waits forever without using the CPU, as a deadlocked program does.
STALL_SECOND_CHUNK = textwrap.dedent("""
    import runpy, sys, time
    from plastix import engine
    real, calls = engine.run_tasks, []
    def stalled(*args, **kwargs):
      calls.append(1)
      if len(calls) > 1:
        time.sleep(3600)
      return real(*args, **kwargs)
    engine.run_tasks = stalled
    sys.argv = ["synthetic", *sys.argv[1:]]
    runpy.run_module("experiments.synthetic", run_name="__main__", alter_sys=True)
""")

# Runs experiments.synthetic with the probes' singular values from jaxlib's
# batched LAPACK kernel, as before the fix.
BATCHED_SVD = textwrap.dedent("""
    import runpy, sys
    import jax.numpy as jnp
    from plastix import probes
    probes.singular_values = lambda f: jnp.linalg.svd(f, compute_uv=False)
    sys.argv = ["synthetic", *sys.argv[1:]]
    runpy.run_module("experiments.synthetic", run_name="__main__", alter_sys=True)
""")


def _command(workdir, *extra, script=None):
  start = [sys.executable, "-c", script] if script else [sys.executable, "-m",
                                                         "experiments.synthetic"]
  return subprocess.run([*start, *TINY, *extra, f"--workdir={workdir}"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_a_stalled_chunk_ends_the_job_with_one_line_and_keeps_finished_tasks(tmp_path):
  workdir = tmp_path / "run"
  start = time.monotonic()
  proc = _command(workdir, "--config.stall_timeout_s=3", "--config.cpu_devices=1",
                  script=STALL_SECOND_CHUNK)
  assert proc.returncode == watchdog.STALL_EXIT_CODE, proc.stderr
  assert time.monotonic() - start < 200
  assert "[baseline] task 1/2" in proc.stdout
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith("error: [baseline] the program for task 2 of 2 (2 runs on 1 "
                             "cpu device) made no progress for ")
  assert f"tasks 1-1 are checkpointed in {workdir}/checkpoints/baseline" in lines[0]
  assert "--config.cpu_devices=1" in lines[0] and "--config.stall_timeout_s=N" in lines[0]
  assert (workdir / "checkpoints" / "baseline" / "1").is_dir()
  # The same command resumes after task 1 (the wait may be set anew) and finishes.
  proc = _command(workdir, "--config.stall_timeout_s=600", "--config.cpu_devices=1")
  assert proc.returncode == 0, proc.stderr
  assert "[baseline] resumed from checkpoint after task 1/2" in proc.stdout
  assert len((workdir / "metrics.csv").read_text().splitlines()) == 1 + 2 * 2


def test_the_old_batched_svd_deadlock_is_caught(tmp_path):
  """Before the fix, 2 runs on each of 2 CPU devices deadlocked in the probes' SVD
  (on a host of at most 2 cores): the watchdog ends it with its line."""
  proc = _command(tmp_path / "run", "--config.num_seeds=4", "--config.cpu_devices=2",
                  "--config.stall_timeout_s=5", script=BATCHED_SVD)
  if proc.returncode == 0:
    pytest.skip("the batched kernel did not deadlock here (more cores than devices, or a "
                "jaxlib that does not split LAPACK batches over threads)")
  assert proc.returncode == watchdog.STALL_EXIT_CODE, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      "error: [baseline] the program for task 1 of 2 (4 runs on 2 cpu devices) made no "
      "progress"), proc.stderr
  assert "the process idle (no CPU use)" in lines[0]
