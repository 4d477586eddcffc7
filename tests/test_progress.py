"""The progress lines' numbers: the job's ETA, durations, compile time apart."""

import jax
import jax.numpy as jnp

from plastix import runner


def test_eta_covers_the_rest_of_the_job_at_the_pace_so_far():
  job = runner.JobProgress(num_interventions=4, num_tasks=20)
  assert job.eta_s(5) is None  # nothing trained yet
  job.index, job.tasks_trained, job.train_s = 1, 30, 60.0  # 2 s per task
  # Intervention 2 of 4 after 10 tasks: 10 of it and 2 x 20 after it are left.
  assert job.eta_s(10) == (10 + 40) * 2.0
  job.index = 3
  assert job.eta_s(20) == 0.0


def test_durations_read_at_a_glance():
  assert runner.format_duration(None) == "?"
  assert runner.format_duration(42.4) == "42s"
  assert runner.format_duration(185) == "3m05s"
  assert runner.format_duration(2 * 3600 + 7 * 60 + 30) == "2h07m"


def test_the_compile_clock_counts_compiling_not_running():
  @jax.jit
  def f(x):
    return jnp.sin(x) * 3.0 + 1.0

  x = jnp.arange(7.0)
  with runner.CompileClock() as clock:
    f(x).block_until_ready()  # traced, lowered and compiled here
    compiled = clock.seconds
    f(x).block_until_ready()  # cached: nothing to compile
  assert compiled > 0.0 and clock.seconds == compiled
  f(jnp.arange(5.0)).block_until_ready()  # a new shape compiles, but nobody listens
  assert clock.seconds == compiled
