"""The one program every learner runs (plastix.program), on a learner worked by hand."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import program


class Doubler:
  """x_0 = a (its hyperparameter); period p: x <- 2 x + p, reporting (x, p).
  Every program starts by adding `bump` to x. Odd periods take the "expensive"
  branch of a lax.cond on the period number, which adds 0.5."""

  def __init__(self, bump=0.0):
    self.bump = bump

  def init_state(self, hp, rng):
    del rng
    return {"x": jnp.asarray(hp["a"], jnp.float32)}

  def run_period(self, hp, state, number):
    chex.assert_rank(number, 0)
    x = 2.0 * state["x"] + number
    x = jax.lax.cond(number % 2 == 1, lambda v: v + 0.5, lambda v: v, x)
    return {"x": x}, {"x": x, "period": number}

  def start(self, state, first):
    del first
    return {"x": state["x"] + self.bump}


def _by_hand(x, first, num, bump=0.0):
  x = x + bump
  out = []
  for p in range(first, first + num):
    x = 2.0 * x + p + (0.5 if p % 2 else 0.0)
    out.append(x)
  return out


def test_per_run_and_shared_hyperparameters():
  rngs = jax.random.split(jax.random.PRNGKey(0), 3)
  hp = {"a": jnp.array([1.0, 2.0, 3.0])}
  states = program.init_runs(Doubler(), rngs, hp)
  np.testing.assert_array_equal(states["x"], [1.0, 2.0, 3.0])
  states, metrics = program.run_periods(Doubler(), states, hp, first=5, num_periods=3)
  chex.assert_shape(metrics["x"], (3, 3))                 # [run, period]
  np.testing.assert_array_equal(metrics["period"], [[5, 6, 7]] * 3)
  for r, a in enumerate([1.0, 2.0, 3.0]):
    np.testing.assert_allclose(metrics["x"][r], _by_hand(a, 5, 3))
  np.testing.assert_allclose(states["x"], metrics["x"][:, -1])
  shared = {"a": jnp.float32(4.0)}
  assert program.run_axes(shared) == {"a": None} and program.run_axes(hp) == {"a": 0}
  states = program.init_runs(Doubler(), rngs, shared)
  _, metrics = program.run_periods(Doubler(), states, shared, first=0, num_periods=2)
  np.testing.assert_allclose(metrics["x"], [_by_hand(4.0, 0, 2)] * 3)


def test_start_runs_once_per_program_and_chunks_continue():
  """Two programs of one period each start twice; one of two periods once."""
  rngs = jax.random.split(jax.random.PRNGKey(0), 2)
  hp = {"a": jnp.array([1.0, -1.0])}
  learner = Doubler(bump=100.0)
  states = program.init_runs(learner, rngs, hp)
  whole, _ = program.run_periods(learner, states, hp, first=0, num_periods=2)
  np.testing.assert_allclose(whole["x"], [_by_hand(a, 0, 2, bump=100.0)[-1] for a in (1, -1)])
  part, _ = program.run_periods(learner, states, hp, first=0, num_periods=1)
  part, _ = program.run_periods(learner, part, hp, first=1, num_periods=1)
  expected = [_by_hand(_by_hand(a, 0, 1, 100.0)[-1], 1, 1, 100.0)[-1] for a in (1, -1)]
  np.testing.assert_allclose(part["x"], expected)
  # Without a start of its own, chunks equal the whole run.
  plain = Doubler()
  plain.start = program.start_unchanged
  whole, _ = program.run_periods(plain, states, hp, first=0, num_periods=2)
  part, _ = program.run_periods(plain, states, hp, first=0, num_periods=1)
  part, _ = program.run_periods(plain, part, hp, first=1, num_periods=1)
  np.testing.assert_array_equal(whole["x"], part["x"])


def test_rows_give_the_all_vmapped_results():
  rngs = jax.random.split(jax.random.PRNGKey(0), 4)
  hp = {"a": jnp.arange(4.0)}
  states = program.init_runs(Doubler(), rngs, hp)
  _, everything = program.run_periods(Doubler(), states, hp, first=0, num_periods=3)
  for rows in (1, 2, 4):
    _, by_rows = program.run_periods(Doubler(), states, hp, first=0, num_periods=3, rows=rows)
    np.testing.assert_array_equal(by_rows["x"], everything["x"])
  with pytest.raises(ValueError, match="parallel_runs=3 must divide the 4 runs"):
    program.run_periods(Doubler(), states, hp, first=0, num_periods=1, rows=3)


def test_the_period_number_is_shared_so_a_cond_on_it_stays_a_cond():
  """Under the run vmap a lax.cond on a batched predicate would become a
  select that runs both branches; the period number is not batched."""
  rngs = jax.random.split(jax.random.PRNGKey(0), 3)
  hp = {"a": jnp.arange(3.0)}
  states = program.init_runs(Doubler(), rngs, hp)
  jaxpr = jax.make_jaxpr(lambda s, h, f: program.run_periods(Doubler(), s, h, f, 2))(
      states, hp, jnp.int32(0))
  assert "cond[" in str(jaxpr)


def test_stream_folds_the_stream_then_the_index():
  key = jax.random.PRNGKey(7)
  expected = jax.random.fold_in(jax.random.fold_in(key, 3), 11)
  np.testing.assert_array_equal(program.stream(key, 3, 11), expected)
  assert not np.array_equal(program.stream(key, 3, 11), program.stream(key, 11, 3))
