r"""The one program every learner runs: runs vmapped, periods scanned.

Every learner of plastix trains as the same compiled program: the supervised
learners of `plastix.engine` (classification, regression and the contextual
bandit, `plastix.learners`), whose period is a *task* of minibatch steps,
and the RL agents of `plastix.rl.loop` (DQN, C51, PQN, `plastix.rl.agents`),
whose period is an evaluation *window* of environment steps::

    run_periods(learner, states, hp, first, num)      # inside one jax.jit
      vmap over runs r (seeds x grid points)           # hp shared or per run
        state_r = learner.start(state_r, first)        # once per program
        scan over periods p = first .. first + num - 1:
          state_r, metrics_rp = learner.run_period(hp_r, state_r, p)

A learner is anything with the `PeriodicLearner` methods: `init_state` for one
run, and `run_period`, which does a period's steps (its own ``lax.scan``),
resets, probes and metrics, with the resets of `plastix.resets.HOOKS`, the
probes of `plastix.probe_suite` and the optimizer of
`plastix.optim.training_optimizer` that every learner shares. A new kind of
learner is a new object with these methods; nothing here changes.

The period number is the same for every run (it is not vmapped), so a
learner's ``lax.cond`` on it (an expensive probe's schedule, a reset period)
skips the work for every run at once. A program continues runs from any
period (``first``), which is how runs are cut into chunks for progress and
checkpoints without compiling again.

Traced hyperparameters `hp` are either shared by every run (scalar leaves) or
carry a leading run axis (a grid, vmapped beside the seeds): `run_axes` tells
which. With ``rows = b`` (``0 < b < R`` runs) the R runs are arranged as
``[b, R / b]``: the b rows are vmapped side by side and each row's runs go
one after another (``vmap`` of ``lax.map``), so only b runs' states are live
at a time; the results are those of the all-vmapped program.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp


class PeriodicLearner(Protocol):
  """What a learner brings to the program (module docstring)."""

  def init_state(self, hp: Any, rng: jax.Array) -> Any:
    """One run's state, from its key and its hyperparameters."""

  def run_period(self, hp: Any, state: Any, number: jax.Array) -> tuple[Any, Any]:
    """``(state, metrics)`` after period `number` (a shared int32 scalar)."""

  def start(self, state: Any, first: jax.Array) -> Any:
    """The state at the start of a program whose first period is `first`
    (e.g. environments outside the program restarted); `start_unchanged`
    for a learner that needs nothing."""


def start_unchanged(state: Any, first: jax.Array) -> Any:
  """The `PeriodicLearner.start` of a learner whose state carries over as it is."""
  del first
  return state


def stream(rng: jax.Array, stream_id: int, index) -> jax.Array:
  """An independent PRNG key: ``fold_in(fold_in(rng, stream_id), index)``, the
  key of stream `stream_id` (init, tasks, steps, resets, ...) at `index`."""
  return jax.random.fold_in(jax.random.fold_in(rng, stream_id), index)


def run_axes(hp: Any) -> Any:
  """vmap axes of `hp`: 0 for leaves with a leading run axis, None for shared scalars."""
  return jax.tree.map(lambda x: 0 if jnp.ndim(x) else None, hp)


def init_runs(learner: PeriodicLearner, rngs: jax.Array, hp: Any) -> Any:
  """``learner.init_state`` for each run of `rngs` (leading axis), `hp` shared or per run."""
  return jax.vmap(learner.init_state, in_axes=(run_axes(hp), 0))(hp, rngs)


def run_periods(learner: PeriodicLearner, states: Any, hp: Any, first, num_periods: int,
                rows: int = 0) -> tuple[Any, Any]:
  """Periods ``first .. first + num_periods - 1`` of every run of `states`.

  Args:
    learner: a `PeriodicLearner`.
    states: the runs' states, every leaf with a leading run axis.
    hp: shared by every run (scalar leaves) or per run (leading run axis).
    first: the first period's number (traced; the same for every run).
    num_periods: how many periods (static).
    rows: 0 (every run vmapped), or b dividing the R runs (module docstring).

  Returns:
    ``(states, metrics)``, the metrics with leading axes ``[run, period]``.
  """
  first = jnp.asarray(first, jnp.int32)
  numbers = first + jnp.arange(num_periods, dtype=jnp.int32)

  def one_run(state, run_hp):
    state = learner.start(state, first)
    return jax.lax.scan(lambda s, p: learner.run_period(run_hp, s, p), state, numbers)

  axes = run_axes(hp)
  num_runs = jax.tree.leaves(states)[0].shape[0]
  if not rows or rows >= num_runs:
    return jax.vmap(one_run, in_axes=(0, axes))(states, hp)
  if num_runs % rows:
    raise ValueError(f"parallel_runs={rows} must divide the {num_runs} runs")
  split = lambda x: x.reshape((rows, num_runs // rows) + x.shape[1:])
  merge = lambda x: x.reshape((num_runs,) + x.shape[2:])
  per_run_hp = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_runs,) + jnp.shape(x)[1:]), hp)
  row = lambda row_states, row_hp: jax.lax.map(lambda a: one_run(*a), (row_states, row_hp))
  out = jax.vmap(row)(jax.tree.map(split, states), jax.tree.map(split, per_run_hp))
  return jax.tree.map(merge, out)
