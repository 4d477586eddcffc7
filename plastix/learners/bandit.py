"""The contextual bandit: the network's outputs are the values of the actions (classes).

Selected by a ``contextual_bandit`` part in the shift's name (the other parts
keep shifting the labels). Each context is an image; the action is
epsilon-greedy in the Q-values (the outputs), the reward is 1 for the right
class, and the loss is the DQN-style squared TD error against a target network
the learner keeps in its own state and syncs every ``target_update_period``
steps.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections

from plastix import config_errors
from plastix import losses
from plastix import objectives
from plastix.learners import base


@flax.struct.dataclass
class BanditHParams:
  """The bandit's traced settings (``HParams.learner``)."""
  gamma: jax.Array  # float32: the TD target's discount.


@flax.struct.dataclass
class BanditState:
  """The bandit's own state (``TrainState.learner_state``)."""
  target_params: dict  # the TD target network.


@dataclasses.dataclass(frozen=True)
class Bandit(base.Learner):
  """Static settings: ``epsilon`` (the exploration rate) and
  ``target_update_period`` (steps between target-network syncs); traced:
  ``gamma`` (`BanditHParams`)."""
  name: ClassVar[str] = "bandit"
  losses: ClassVar[tuple[str, ...]] = ("auto",)
  default_loss: ClassVar[str] = "td"

  epsilon: float = 0.1
  target_update_period: int = 100

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> Bandit:
    sp = config.shift_params
    return cls(epsilon=float(sp.bandit_epsilon),
               target_update_period=int(sp.target_update_period))

  @classmethod
  def hparams(cls, config: ml_collections.ConfigDict) -> BanditHParams:
    return BanditHParams(gamma=jnp.asarray(config.shift_params.gamma, jnp.float32))

  @classmethod
  def check_settings(cls, config: ml_collections.ConfigDict) -> None:
    config_errors.check(config, "shift_params.target_update_period",
                        config_errors.positive_int, "must be a positive integer")
    config_errors.check(config, "shift_params.bandit_epsilon", lambda v: 0 <= v <= 1,
                        "must be in [0, 1]")
    config_errors.check(config, "shift_params.gamma", lambda v: 0 <= v < 1,
                        "must be in [0, 1)")

  @classmethod
  def check(cls, config: ml_collections.ConfigDict) -> None:
    """Also: no label smoothing (the loss is a squared TD error)."""
    super().check(config)
    base.refuse_label_smoothing(config, f"shift {config.shift!r} trains a squared TD error")

  def init_state(self, params) -> BanditState:
    """The target network starts as the online one."""
    return BanditState(target_params=params)

  def task_loss(self, spec, hp, data, state, shift, outputs, y, key):
    """The squared TD error of the taken actions, and the greedy accuracy.

    With ``q = outputs``, actions ``a`` epsilon-greedy in q (with probability
    ``epsilon`` uniform), rewards ``r = 1[a = y]`` and ``x'`` a fresh context
    drawn like the batch (`sample_indices`, under the same task)::

      loss = mean (q(x, a) - r - gamma * max_a' q_target(x', a'))^2,

    the target held constant (no gradient); accuracy ``mean 1[argmax q = y]``.
    """
    accuracy = jnp.mean(jnp.argmax(outputs, -1) == y)
    q = outputs
    key_explore, key_action, key_next = jax.random.split(key, 3)
    batch = y.shape[0]
    greedy = jnp.argmax(q, -1)
    explore = jax.random.uniform(key_explore, (batch,)) < self.epsilon
    action = jnp.where(explore, jax.random.randint(key_action, (batch,), 0, q.shape[-1]),
                       greedy)
    reward = (action == y).astype(jnp.float32)
    next_idx = self.sample_indices(spec, key_next, state.task, data, batch)
    x_next, _ = shift.apply(state.task, objectives.model_inputs(data.images[next_idx], data),
                            data.labels[next_idx], next_idx, state.step_index)
    q_next, _ = objectives.apply_model(spec, state.learner_state.target_params,
                                       state.model_state, x_next, train=False)
    target = jax.lax.stop_gradient(reward + hp.learner.gamma * jnp.max(q_next, -1))
    q_taken = jnp.take_along_axis(q, action[:, None], -1)[:, 0]
    return jnp.mean(jnp.square(q_taken - target)), accuracy

  def after_step(self, spec, state):
    """Syncs the target network to the online one after every
    ``target_update_period``-th step of the run, counted over tasks:
    after step ``s = task_index * steps_per_task + step_index`` (1-based) when
    ``s % target_update_period = 0``."""
    step = state.task_index * spec.steps_per_task + state.step_index
    sync = step % self.target_update_period == 0
    target = jax.tree.map(lambda p, t: jnp.where(sync, p, t), state.params,
                          state.learner_state.target_params)
    return state.replace(learner_state=state.learner_state.replace(target_params=target))

  def label_losses(self, outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """``[B]``: the squared error of every action's value to its reward
    ``1[a = y]`` (the TD target with gamma = 0), averaged over the actions."""
    return losses.mse(outputs, jax.nn.one_hot(labels, outputs.shape[-1], dtype=outputs.dtype))

  def probe_loss(self, outputs, y, target_scale):
    """The mean of `label_losses`."""
    del target_scale
    return jnp.mean(self.label_losses(outputs, y))

  def held_out_metrics(self, spec, outputs, inputs, task, data, task_index):
    """`base.held_out_label_metrics` (the greedy action's accuracy) with
    `label_losses`."""
    del spec, inputs, task_index
    return base.held_out_label_metrics(outputs, task, data.test_labels, self.label_losses)

  def final_fit_task(self, spec, ctx, key):
    """None: the bandit has no final fit (its metrics are NaN)."""
    del spec, ctx, key
    return None

  def target_network(self, learner_state):
    return learner_state.target_params

  def with_target_network(self, learner_state, target_params):
    return learner_state.replace(target_params=target_params)
