"""The supervised learners (plastix.learners) against values worked by hand, and
the engine running a learner it has never seen."""

import dataclasses
import functools
import math
import types
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import engine, from_config, learners, validation
from plastix.learners import Bandit, Classification, Regression
from plastix.learners import base as learner_base
from tests.conftest import tiny_config


def _engine_parts(config):
  data, num_classes = from_config.load_train_data(config)
  spec = from_config.engine_spec(config, num_classes, data.images.shape[1], data.image_shape)
  return data, spec, from_config.hparams(config)


def test_the_registry_holds_the_three_learners_each_under_its_own_name():
  assert set(learners.LEARNERS) == {"classification", "regression", "bandit"}
  for name, cls in learners.LEARNERS.items():
    assert issubclass(cls, learners.Learner) and cls.name == name
  assert learners.for_shift("label_reset") is Classification
  assert learners.for_shift("class_permutation+target_scale") is Classification
  assert learners.for_shift("random_targets+target_scale") is Regression
  assert learners.for_shift("label_reset+contextual_bandit") is Bandit


def test_the_spec_carries_the_learner_with_its_settings():
  config = tiny_config()
  config.shift = "label_reset+contextual_bandit"
  config.shift_params.bandit_epsilon, config.shift_params.target_update_period = 0.25, 7
  config.shift_params.gamma = 0.5
  _, spec, hp = _engine_parts(config)
  assert spec.learner == Bandit(epsilon=0.25, target_update_period=7)
  assert spec.objective == "bandit"
  assert float(hp.learner.gamma) == 0.5
  config = tiny_config()
  config.shift, config.loss.name = "random_targets", "two_hot"
  config.loss.support_min, config.loss.support_max, config.loss.num_bins = -4.0, 4.0, 5
  _, spec, hp = _engine_parts(config)
  assert spec.learner == Regression(loss="two_hot", support=(-4.0, -2.0, 0.0, 2.0, 4.0),
                                    hl_gauss_sigma=0.75)
  assert hp.learner is None and spec.model.num_outputs == 5
  config = tiny_config()
  config.loss.label_smoothing = 0.1
  _, spec, _ = _engine_parts(config)
  assert spec.learner == Classification(loss="cross_entropy", label_smoothing=0.1)


# Two examples, two classes: logits (ln 3, 0) with label 0 and (0, 0) with label 1.
LOGITS = jnp.array([[math.log(3.0), 0.0], [0.0, 0.0]], jnp.float32)
LABELS = jnp.array([0, 1])


def _loss(learner, outputs, y, target_scale=1.0):
  state = types.SimpleNamespace(task=types.SimpleNamespace(target_scale=target_scale))
  loss, accuracy = learner.task_loss(None, None, None, state, None, outputs, y, None)
  return float(loss), float(accuracy)


def test_classification_loss_and_accuracy_by_hand():
  # p(0 | x_1) = 3/4 and p(1 | x_2) = 1/2; argmax (0, 0) -> one right of two.
  loss, accuracy = _loss(Classification(), LOGITS, LABELS)
  assert loss == pytest.approx((math.log(4 / 3) + math.log(2)) / 2, rel=1e-6)
  assert accuracy == 0.5
  # Smoothing a = 1/2 over K = 2: targets (3/4, 1/4) and (1/4, 3/4).
  loss, _ = _loss(Classification(label_smoothing=0.5), LOGITS, LABELS)
  first = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
  assert loss == pytest.approx((first + math.log(2)) / 2, rel=1e-6)
  # MSE to 2 * onehot: ((ln 3 - 2)^2 + 0) / 2 and (0 + 2^2) / 2.
  loss, accuracy = _loss(Classification(loss="mse"), LOGITS, LABELS, target_scale=2.0)
  assert loss == pytest.approx(((math.log(3) - 2) ** 2 / 2 + 2.0) / 2, rel=1e-6)
  assert accuracy == 0.5
  # The probes' loss has no smoothing.
  probe = float(Classification(label_smoothing=0.5).probe_loss(LOGITS, LABELS, 1.0))
  assert probe == pytest.approx((math.log(4 / 3) + math.log(2)) / 2, rel=1e-6)


def test_held_out_label_metrics_weigh_the_classes_in_play_by_hand():
  # Classes map 0 -> 1 and 1 -> 0; only class 0 of the dataset is in play.
  task = types.SimpleNamespace(class_map=jnp.array([1, 0]), mapped=jnp.asarray(True),
                               class_active=jnp.array([True, False]))
  outputs = jnp.array([[0.0, 1.0], [0.0, 2.0], [3.0, 0.0]])
  test_labels = jnp.array([0, 1, 0])  # labels 1, 0, 1; weights 1, 0, 1
  accuracy, loss = learner_base.held_out_label_metrics(
      outputs, task, test_labels, lambda out, labels: jnp.arange(3.0) + 1.0)
  assert float(accuracy) == 0.5  # argmax 1 right, 0 wrong; the second not counted
  assert float(loss) == pytest.approx((1.0 + 3.0) / 2)
  no_map = task.__class__(**{**vars(task), "mapped": jnp.asarray(False)})
  accuracy, loss = learner_base.held_out_label_metrics(
      outputs, no_map, test_labels, lambda out, labels: jnp.ones(3))
  assert np.isnan(float(accuracy)) and np.isnan(float(loss))


def test_regression_losses_by_hand():
  outputs, targets = jnp.array([[1.0], [3.0]]), jnp.array([[0.0], [1.0]])
  loss, accuracy = _loss(Regression(), outputs, targets)
  assert loss == pytest.approx((1.0 + 4.0) / 2) and np.isnan(accuracy)
  # Two-hot over atoms (0, 1, 2) with p = (1/4, 1/2, 1/4): the target 0.5 is
  # half on atoms 0 and 1, 2.0 all on atom 2.
  logits = jnp.array([[0.0, math.log(2.0), 0.0]] * 2)
  two_hot = Regression(loss="two_hot", support=(0.0, 1.0, 2.0))
  loss, _ = _loss(two_hot, logits, jnp.array([[0.5], [2.0]]))
  assert loss == pytest.approx((0.5 * math.log(4) + 0.5 * math.log(2) + math.log(4)) / 2,
                               rel=1e-6)
  assert float(two_hot.probe_loss(logits, jnp.array([[0.5], [2.0]]), 9.0)) == pytest.approx(
      loss, rel=1e-6)
  # Targets times target_scale = 2: -2, 1, 6 and 2; outside [0, 2]: -2 and 6.
  task = types.SimpleNamespace(targets=jnp.array([[-1.0], [0.5], [3.0], [1.0]]),
                               target_scale=jnp.float32(2.0))
  assert float(two_hot.clipped_fraction(task)) == 0.5
  assert np.isnan(float(Regression().clipped_fraction(task)))
  assert Regression().targets(LABELS, outputs) is outputs
  assert Classification().targets(LABELS, outputs) is LABELS


def test_bandit_loss_and_probe_loss_by_hand():
  config = tiny_config()
  config.shift = "label_reset+contextual_bandit"
  config.shift_params.bandit_epsilon, config.shift_params.gamma = 0.0, 0.0
  data, spec, hp = _engine_parts(config)
  state = engine.init_state(spec, hp, data, jax.random.PRNGKey(0))
  shift = engine._shift(spec, hp, data)
  # Greedy actions 0 and 1 for label 0 both: rewards 1 and 0, and with gamma = 0
  # the target is the reward: ((0.5 - 1)^2 + (0.3 - 0)^2) / 2.
  q = jnp.zeros((2, spec.num_classes)).at[0, :2].set([0.5, 0.2]).at[1, :2].set([0.1, 0.3])
  loss, accuracy = spec.learner.task_loss(spec, hp, data, state, shift, q, jnp.array([0, 0]),
                                          jax.random.PRNGKey(1))
  assert float(loss) == pytest.approx((0.25 + 0.09) / 2, rel=1e-6)
  assert float(accuracy) == 0.5
  # Every action's value against its reward 1[a = y], averaged over 2 actions.
  probe = Bandit().probe_loss(jnp.array([[0.5, 0.0], [1.0, 1.0]]), LABELS, 5.0)
  assert float(probe) == pytest.approx(((0.25 + 0.0) / 2 + (1.0 + 0.0) / 2) / 2)


def test_bandit_target_syncs_exactly_every_target_update_period_steps_across_tasks():
  config = tiny_config()
  config.shift = "label_reset+contextual_bandit"
  config.steps_per_task = 6
  config.shift_params.target_update_period = 4
  data, spec, hp = _engine_parts(config)
  state = engine.init_state(spec, hp, data, jax.random.PRNGKey(0))
  step = jax.jit(functools.partial(engine.train_step, spec, hp, data))
  same = lambda a, b: all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))
  synced_at = []
  for s in range(1, 15):  # steps 1-6 of task 0, 1-6 of task 1, 1-2 of task 2
    if state.step_index == spec.steps_per_task:  # the task switch of run_task
      state = state.replace(task_index=state.task_index + 1,
                            step_index=jnp.zeros_like(state.step_index))
    before = state.learner_state.target_params
    state, _ = step(state, jax.random.PRNGKey(s))
    target = state.learner_state.target_params
    if same(target, state.params):
      assert not same(target, before)
      synced_at.append(s)
    else:
      assert same(target, before)
  assert synced_at == [4, 8, 12]


def test_each_learner_check_names_the_bad_field():
  def field_of(check, **edits):
    config = tiny_config()
    for path, value in edits.items():
      node = config
      *parents, leaf = path.split("__")
      for p in parents:
        node = node[p]
      node[leaf] = value
    with pytest.raises(validation.ConfigError) as e:
      check(config)
    return e.value.field

  assert field_of(Classification.check, loss__label_smoothing=1.5) == "loss.label_smoothing"
  assert field_of(Classification.check, loss__name="two_hot") == "loss.name"
  assert field_of(Classification.check, loss__name="mse",
                  loss__label_smoothing=0.1) == "loss.label_smoothing"
  assert field_of(Classification.check, shift="label_reset+target_scale") == "loss.name"
  regression = dict(shift="random_targets")
  assert field_of(Regression.check, loss__num_bins=1, **regression) == "loss.num_bins"
  assert field_of(Regression.check, loss__hl_gauss_sigma=0.0, **regression) == (
      "loss.hl_gauss_sigma")
  assert field_of(Regression.check, loss__name="cross_entropy", **regression) == "loss.name"
  assert field_of(Regression.check, loss__label_smoothing=0.1, **regression) == (
      "loss.label_smoothing")
  assert field_of(Regression.check, loss__name="two_hot", shift_params__target_offset=50.0,
                  **regression) == "loss.support_max"
  bandit = dict(shift="contextual_bandit")
  assert field_of(Bandit.check, shift_params__bandit_epsilon=1.5, **bandit) == (
      "shift_params.bandit_epsilon")
  assert field_of(Bandit.check, shift_params__target_update_period=0, **bandit) == (
      "shift_params.target_update_period")
  assert field_of(Bandit.check, shift_params__gamma=1.0, **bandit) == "shift_params.gamma"
  assert field_of(Bandit.check, loss__name="mse", **bandit) == "loss.name"
  assert field_of(Bandit.check, loss__label_smoothing=0.1, **bandit) == "loss.label_smoothing"
  # A learner not in use still checks its own fields (every config carries them).
  assert field_of(validation.validate, shift_params__gamma=-0.5) == "shift_params.gamma"
  for learner in learners.LEARNERS.values():
    config = tiny_config()
    config.shift = {"regression": "random_targets", "bandit": "contextual_bandit"}.get(
        learner.name, "label_reset")
    learner.check(config)  # the defaults pass


@dataclasses.dataclass(frozen=True)
class _Counting(learners.Learner):
  """A learner the engine has never seen: squared error to one-hot labels, and
  a state that counts its steps."""
  name: ClassVar[str] = "counting"
  increment: int = 1

  @classmethod
  def from_config(cls, config):
    del config
    return cls()

  def init_state(self, params):
    del params
    return jnp.zeros([], jnp.int32)

  def task_loss(self, spec, hp, data, state, shift, outputs, y, key):
    onehot = jax.nn.one_hot(y, outputs.shape[-1])
    return (jnp.mean(jnp.square(outputs - onehot)),
            jnp.mean(jnp.argmax(outputs, -1) == y))

  def after_step(self, spec, state):
    return state.replace(learner_state=state.learner_state + self.increment)

  def probe_loss(self, outputs, y, target_scale):
    return jnp.mean(jnp.square(outputs - jax.nn.one_hot(y, outputs.shape[-1])))

  def held_out_metrics(self, spec, outputs, inputs, task, data, task_index):
    return jnp.float32(jnp.nan), jnp.mean(jnp.square(outputs))


def test_a_new_learner_runs_through_the_engine_unchanged(monkeypatch):
  monkeypatch.setitem(learners.LEARNERS, _Counting.name, _Counting)
  config = tiny_config()
  config.shift, config.shift_params.initial_labels = "class_permutation", "true"
  config.resets.methods = "head_reset"
  config.probes.test_examples = 20
  config.probes.final_fit_steps = 4
  config.probes.sharpness_every, config.probes.hessian_iters = 1, 2
  validation.validate(config)
  data, spec, hp = _engine_parts(config)
  spec = dataclasses.replace(spec, learner=learners.LEARNERS["counting"].from_config(config),
                             final_fit_task=1)
  assert spec.objective == "counting"
  states = engine.init_states(from_config.seed_keys(config), data, hp, spec=spec)
  states, m = engine.run_tasks(states, data, hp, spec=spec, num_tasks=2)
  np.testing.assert_array_equal(states.learner_state, [2 * config.steps_per_task] * 2)
  # Its squared error to one-hot labels (about 1/K = 0.1 from a fresh network,
  # where the default cross-entropy would be near ln 10 = 2.3).
  assert (m.train_loss < 0.5).all() and np.isfinite(m.train_accuracy).all()
  assert np.isnan(m.test_accuracy).all() and np.isfinite(m.test_loss).all()
  # The probes differentiate its probe loss (gradient norms, sharpness).
  assert np.isfinite(m.sharpness).all()
  assert all(np.isfinite(g).all() and (g > 0).all() for g in m.layer_grad_norm.values())
  assert np.isfinite(m.final_fit_loss[:, 1]).all() and np.isnan(m.final_fit_loss[:, 0]).all()
  assert (m.diverged_task == -1).all()
