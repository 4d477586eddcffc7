"""The engine under every objective: classification, regression and the contextual bandit."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import engine, from_config, objectives, results, runner, shifts, validation
from tests.conftest import tiny_config


def _spec(config):
  data, num_classes = from_config.load_train_data(config)
  spec = from_config.engine_spec(config, num_classes, data.images.shape[1], data.image_shape)
  return data, num_classes, spec, from_config.hparams(config)


def test_td_loss_by_hand():
  config = tiny_config()
  config.shift = "label_reset+contextual_bandit"
  config.shift_params.bandit_epsilon = 0.0  # greedy actions
  config.shift_params.gamma = 0.5
  data, _, spec, hp = _spec(config)
  state = engine.init_state(spec, hp, data, jax.random.PRNGKey(0))
  # A target network different from the online one.
  state = state.replace(learner_state=state.learner_state.replace(
      target_params=jax.tree.map(lambda p: 2.0 * p, state.params)))
  shift = engine._shift(spec, hp, data)
  idx = jnp.arange(8)
  x, y = shift.apply(state.task, data.images[idx] / 255.0, data.labels[idx], idx)
  key = jax.random.PRNGKey(3)
  loss, (accuracy, _) = objectives.task_loss(spec, hp, data, state, shift, x, y, key, state.params)

  q = np.asarray(spec.model.apply({"params": state.params}, x))
  action = q.argmax(-1)
  reward = (action == np.asarray(y)).astype(np.float32)
  next_idx = shifts.sample_index(jax.random.split(key, 3)[2], state.task, 8)
  x_next, _ = shift.apply(state.task, data.images[next_idx] / 255.0, None, next_idx)
  q_next = np.asarray(spec.model.apply({"params": state.learner_state.target_params}, x_next))
  target = reward + 0.5 * q_next.max(-1)
  expected = np.mean((q[np.arange(8), action] - target) ** 2)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(accuracy, np.mean(action == np.asarray(y)))


def test_bandit_target_network_syncs_on_its_period():
  config = tiny_config()
  config.shift = "label_reset+contextual_bandit"
  config.shift_params.target_update_period = 5
  data, _, spec, hp = _spec(config)
  state = engine.init_state(spec, hp, data, jax.random.PRNGKey(0))
  init = state.params
  for i in range(1, 7):
    state, _ = engine.train_step(spec, hp, data, state, jax.random.PRNGKey(i))
    synced = jax.tree.map(np.array_equal, state.params, state.learner_state.target_params)
    if i == 5:
      assert all(jax.tree.leaves(synced))
    elif i < 5:
      chex.assert_trees_all_equal(state.learner_state.target_params, init)
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, state.params,
                                              state.learner_state.target_params)))


@pytest.mark.parametrize("method", ["full_reset", "head_reset", "shrink_and_perturb"])
def test_bandit_target_network_follows_resets_of_whole_layers(method):
  config = tiny_config()
  config.shift = "label_reset+contextual_bandit"
  config.resets.methods = method
  data, _, spec, hp = _spec(config)
  state = engine.init_state(spec, hp, data, jax.random.PRNGKey(0))
  # A trained agent: online and target networks apart from each other and from
  # any initialisation.
  state = state.replace(params=jax.tree.map(lambda p: p + 0.5, state.params),
                        learner_state=state.learner_state.replace(
                            target_params=jax.tree.map(lambda p: p - 0.5, state.params)))
  after, _ = engine._reset_at_task_end(spec, hp, data, state)
  same = lambda a, b: all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))
  if method == "full_reset":  # a fresh agent: its target is its own initialisation.
    chex.assert_trees_all_equal(after.learner_state.target_params, after.params)
    assert not same(after.params, state.params)
  elif method == "head_reset":  # the same fresh head; the rest keeps its own values.
    chex.assert_trees_all_equal(after.learner_state.target_params["head"], after.params["head"])
    assert not same(after.params["head"], state.params["head"])
    body = lambda p: {k: v for k, v in p.items() if k != "head"}
    chex.assert_trees_all_equal(body(after.learner_state.target_params),
                                body(state.learner_state.target_params))
  else:  # part of the network changed: the target waits for its next sync.
    assert not same(after.params, state.params)
    chex.assert_trees_all_equal(after.learner_state.target_params,
                                state.learner_state.target_params)


def test_bandit_learns_the_labels():
  config = tiny_config()
  config.shift = "contextual_bandit"
  config.shift_params.initial_labels = "true"
  config.num_tasks, config.steps_per_task, config.num_seeds = 1, 300, 1
  config.model.width = 64
  config.shift_params.bandit_epsilon = 0.2
  m = runner.run_intervention(config, "baseline", *from_config.load_train_data(config))
  assert float(m.train_accuracy[0, -1]) > 0.4  # chance is 0.1


def test_regression_targets_are_fit_and_summaries_use_the_loss():
  config = tiny_config()
  config.shift = "random_targets"
  config.shift_params.target_dim = 2
  config.shift_params.target_width = 8
  config.num_tasks, config.steps_per_task = 2, 150
  config.model.width = 64
  data, num_classes = from_config.load_train_data(config)
  _, _, spec, _ = _spec(config)
  assert spec.objective == "regression" and spec.model.num_outputs == 2
  m = runner.run_intervention(config, "baseline", data, num_classes)
  assert np.isnan(m.train_accuracy).all()
  # Targets have unit variance, so predicting the mean scores 1; the fit does better.
  assert float(m.train_loss.max()) < 0.9
  rows = results.metrics_to_rows("baseline", m, [0, 1])
  summary = results.summarize(rows, ["baseline"])["interventions"]["baseline"]
  assert summary["final_task_accuracy"] is None and summary["plasticity_loss"] is None
  assert summary["final_task_loss"] == pytest.approx(float(m.train_loss[:, -1].mean()))


def test_target_offset_makes_the_first_task_loss_large():
  config = tiny_config()
  config.shift = "random_targets"
  config.shift_params.target_offset = 100.0
  config.num_tasks, config.steps_per_task, config.num_seeds = 2, 20, 1
  m = runner.run_intervention(config, "baseline", *from_config.load_train_data(config))
  # 20 Adam steps from outputs near 0 do not reach a mean of 100.
  assert float(m.train_loss[0, 0]) > 100 * float(m.train_loss[0, 1])


def test_mse_with_target_scale_grows_the_loss():
  config = tiny_config()
  config.shift = "label_reset+target_scale"
  config.loss.name = "mse"
  config.shift_params.scale_growth = 10.0
  config.num_tasks, config.num_seeds = 3, 1
  m = runner.run_intervention(config, "baseline", *from_config.load_train_data(config))
  loss = np.asarray(m.train_loss[0])
  assert loss[2] > 10 * loss[1] > 100 * loss[0]


def test_class_incremental_trains_only_on_the_classes_in_play():
  config = tiny_config()
  config.shift = "class_incremental"
  config.shift_params.initial_labels = "true"
  config.shift_params.classes_first = 2
  config.shift_params.classes_per_task = 4
  data, _, spec, hp = _spec(config)
  state = engine.init_state(spec, hp, data, jax.random.PRNGKey(0))
  idx = shifts.sample_index(jax.random.PRNGKey(1), state.task, 256)
  assert set(np.asarray(data.labels)[np.asarray(idx)]) == {0, 1}
  state, _ = engine.run_task(spec, hp, data, state)
  idx = shifts.sample_index(jax.random.PRNGKey(1), state.task, 512)
  assert set(np.asarray(data.labels)[np.asarray(idx)]) == set(range(6))


@pytest.mark.parametrize("shift", ["noisy_labels+growing_examples+input_noise",
                                   "rotation_flip+label_reset+gradual"])
def test_every_other_shift_trains_in_the_engine(shift):
  config = tiny_config()
  config.shift = shift
  config.num_tasks, config.num_seeds = 2, 1
  config.shift_params.drift_steps = 6  # half of each task: a complete gradual switch
  validation.validate(config)
  m = runner.run_intervention(config, "baseline", *from_config.load_train_data(config))
  assert np.isfinite(m.train_loss).all() and (m.diverged_task == -1).all()
