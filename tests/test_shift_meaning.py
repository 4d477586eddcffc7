"""Every shift and composition means what its name says under the default config.

Each test builds the shift exactly as the engine does from `configs/shift.py`
with only ``config.shift`` changed (the embedded Fashion-MNIST images and
every default parameter), walks a few task switches, and checks the labels,
inputs and held-out labels against what the name promises, counted by hand.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import shift as shift_config
from plastix import engine
from plastix import from_config
from plastix import objectives
from plastix import results
from plastix import shifts
from plastix import validation

C = 10


@functools.lru_cache(maxsize=None)
def _data():
  config = shift_config.get_config()
  config.probes.test_examples = 200
  return from_config.load_train_data(config)[0]


def _default(name: str, **shift_params):
  config = shift_config.get_config()
  config.shift = name
  if shifts.objective(name) == "regression":
    config.loss.name = "mse"
  if "target_scale" in shifts.parse_shift(name) and shifts.objective(name) != "regression":
    config.loss.name = "mse"
  config.shift_params.update(shift_params)
  validation.validate(config)
  return config


def _tasks(config, num_tasks=4, seed=0):
  """Tasks 0..num_tasks-1 of the config's shift, made as the engine makes them."""
  data = _data()
  spec = from_config.engine_spec(config, C, data.images.shape[1], data.image_shape)
  hp = from_config.hparams(config)
  shift = engine._shift(spec, hp, data)  # pylint: disable=protected-access
  key = jax.random.PRNGKey(seed)
  task = jax.jit(shift.init)(jax.random.fold_in(key, 0))
  tasks = [task]
  switch = jax.jit(shift.switch)
  for t in range(1, num_tasks):
    task = switch(jax.random.fold_in(key, t), jnp.int32(t), task)
    tasks.append(task)
  return tasks, np.asarray(data.labels)


def _is_permutation(p, n):
  return sorted(np.asarray(p).tolist()) == list(range(n))


@pytest.mark.parametrize("name", ["class_permutation", "pixel_permutation", "rotation_flip",
                                  "input_noise", "class_incremental", "growing_examples",
                                  "contextual_bandit", "noisy_labels"])
def test_task_zero_has_the_true_labels_for_every_shift_but_a_label_reset(name):
  tasks, y = _tasks(_default(name), num_tasks=1)
  np.testing.assert_array_equal(tasks[0].labels, y)
  assert bool(tasks[0].mapped)
  np.testing.assert_array_equal(tasks[0].class_map, np.arange(C))


def test_label_reset_starts_from_random_labels_and_relabels_eps():
  tasks, y = _tasks(_default("label_reset"))
  # Default eps = 1: every task is fresh uniform labels, task 0 included.
  for task in tasks:
    assert np.mean(np.asarray(task.labels) == y) == pytest.approx(0.1, abs=0.04)
    assert not bool(task.mapped)
  tasks, _ = _tasks(_default("label_reset", eps=0.1))
  for before, after in zip(tasks, tasks[1:]):
    changed = np.mean(np.asarray(before.labels) != np.asarray(after.labels))
    # 100 of 1000 relabelled, each to a new value with probability 0.9.
    assert changed == pytest.approx(0.09, abs=0.03)
  # initial_labels = "true" is honoured.
  tasks, y = _tasks(_default("label_reset", eps=0.1, initial_labels="true"), num_tasks=1)
  np.testing.assert_array_equal(tasks[0].labels, y)


def test_class_permutation_permutes_the_true_classes_at_every_task():
  tasks, y = _tasks(_default("class_permutation"), num_tasks=5)
  maps = []
  for task in tasks:
    assert _is_permutation(task.class_map, C) and bool(task.mapped)
    np.testing.assert_array_equal(task.labels, np.asarray(task.class_map)[y])
    maps.append(tuple(np.asarray(task.class_map).tolist()))
  assert len(set(maps[1:])) == 4  # a fresh permutation at every switch.


def test_pixel_permutation_keeps_the_true_labels_and_permutes_inputs():
  tasks, y = _tasks(_default("pixel_permutation"))
  for task in tasks:
    np.testing.assert_array_equal(task.labels, y)
  for task in tasks[1:]:
    assert _is_permutation(task.input_perm, 784)
    assert not np.array_equal(task.input_perm, np.arange(784))


def test_class_incremental_trains_true_labels_of_the_classes_in_play():
  tasks, y = _tasks(_default("class_incremental"))
  for t, task in enumerate(tasks):
    k = min(C, 2 + 2 * t)  # classes_first = classes_per_task = 2 by default.
    np.testing.assert_array_equal(task.labels, y)  # the fraction of true labels is 1, not 0.1
    active = np.asarray(task.example_order)[:int(task.num_active)]
    assert set(y[active].tolist()) == set(range(k))
    np.testing.assert_array_equal(task.class_active, np.arange(C) < k)


def test_noisy_labels_corrupt_the_true_labels_at_the_scheduled_rate_without_compounding():
  config = _default("noisy_labels")
  config.num_tasks = 5  # r_t = 0.5 t / 4: 0, 0.125, 0.25, 0.375, 0.5.
  tasks, y = _tasks(config, num_tasks=5)
  for t, task in enumerate(tasks):
    rate = 0.5 * t / 4
    wrong = np.mean(np.asarray(task.labels) != y)
    assert wrong == pytest.approx(rate * 0.9, abs=0.035), t
    np.testing.assert_array_equal(task.class_map, np.arange(C))


def test_noisy_labels_follow_a_class_permutation_in_either_order():
  for name in ("class_permutation+noisy_labels", "noisy_labels+class_permutation"):
    config = _default(name)
    config.num_tasks = 3  # rates 0, 0.25, 0.5
    tasks, y = _tasks(config, num_tasks=3)
    for t, task in enumerate(tasks):
      clean = np.asarray(task.class_map)[y]
      assert np.mean(np.asarray(task.labels) != clean) == pytest.approx(
          0.25 * t * 0.9, abs=0.04), (name, t)


def test_contextual_bandit_rewards_the_true_class():
  tasks, y = _tasks(_default("contextual_bandit"), num_tasks=2)
  for task in tasks:
    np.testing.assert_array_equal(task.labels, y)


def test_random_targets_have_the_default_mean_and_scale():
  tasks, _ = _tasks(_default("random_targets"), num_tasks=2)
  for task in tasks:
    targets = np.asarray(task.targets)
    assert targets.mean() == pytest.approx(0.0, abs=1e-4)
    assert targets.std() == pytest.approx(1.0, abs=1e-3)


def _distinct_pairs(y, labels):
  return len(set(zip(y.tolist(), np.asarray(labels).tolist())))


def test_label_reset_then_class_permutation_keeps_the_reset():
  # Each part acts on what the previous one produced, in the order written.
  for name in ("label_reset+class_permutation", "class_permutation+label_reset"):
    tasks, y = _tasks(_default(name, eps=0.5, initial_labels="true"), num_tasks=2)
    after = np.asarray(tasks[1].labels)
    # Of the 100 (true, label) pairs nearly all occur: not 10, the reset is not dropped.
    assert _distinct_pairs(y, after) >= 95, name
    # The labels of about half the examples (plus the resets that drew it)
    # follow the permutation of the true classes, the rest are uniform.
    pi = np.asarray(tasks[1].class_map)
    assert _is_permutation(pi, C)
    assert np.mean(after == pi[y]) == pytest.approx(0.55, abs=0.04), name
  # label_reset first: the permutation maps the reset labels too, so the labels
  # are pi of the labels after the reset.
  config = _default("label_reset+class_permutation", eps=0.5, initial_labels="true")
  data = _data()
  spec = from_config.engine_spec(config, C, data.images.shape[1], data.image_shape)
  shift = engine._shift(spec, from_config.hparams(config), data)  # pylint: disable=protected-access
  task0 = shift.init(jax.random.PRNGKey(0))
  key = jax.random.PRNGKey(5)
  both = shift.switch(key, jnp.int32(1), task0)
  k_reset, k_perm = jax.random.split(key)
  reset = shifts.label_reset(k_reset, 1, task0, shift.ctx)
  permuted = shifts.class_permutation(k_perm, 1, reset, shift.ctx)
  np.testing.assert_array_equal(both.labels, permuted.labels)
  pi = np.asarray(permuted.class_map)
  np.testing.assert_array_equal(both.labels, pi[np.asarray(reset.labels)])


def test_gradual_moves_target_scale_and_input_noise_at_each_examples_step():
  config = _default("random_targets+target_scale+input_noise+gradual")
  tasks, _ = _tasks(config, num_tasks=2)
  new = tasks[1]
  n, d = new.labels.shape[0], new.input_perm.shape[0]
  idx = jnp.arange(n)
  x = jnp.zeros((n, d))
  xt, _, targets = shifts.apply_task(new, x, idx, False, jnp.int32(0), gradual=True,
                                     add_offset=True)
  waiting = np.asarray(new.switch_step) > 0
  assert waiting.mean() > 0.9  # drift_steps = 100: 99% switch after step 0.
  # A waiting example shows exactly the previous task's target, at its scale (1),
  # not the previous target at the new scale (2).
  np.testing.assert_allclose(np.asarray(targets)[waiting],
                             np.asarray(new.prev_targets)[waiting] * 1.0, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(targets)[~waiting],
                             np.asarray(new.targets)[~waiting] * 2.0, rtol=1e-6)
  pixel_waiting = np.asarray(new.pixel_switch_step) > 0
  np.testing.assert_allclose(np.asarray(xt)[0][pixel_waiting],
                             np.asarray(new.prev_input_offset)[pixel_waiting])
  np.testing.assert_allclose(np.asarray(xt)[0][~pixel_waiting],
                             np.asarray(new.input_offset)[~pixel_waiting])
  # At the last drift step everything has switched.
  xt, _, targets = shifts.apply_task(new, x, idx, False, jnp.int32(99), gradual=True)
  np.testing.assert_allclose(targets, np.asarray(new.targets) * 2.0, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(xt)[0], np.asarray(new.input_offset))


@pytest.mark.parametrize("name,field,overrides", [
    ("class_permutation", "shift_params.initial_labels", {"initial_labels": "random"}),
    ("noisy_labels", "shift_params.initial_labels", {"initial_labels": "random"}),
    ("class_incremental", "shift_params.initial_labels", {"initial_labels": "random"}),
    ("random_targets", "shift_params.initial_labels", {"initial_labels": "random"}),
    ("label_reset+noisy_labels", "shift", {}),
    ("label_reset+class_incremental", "shift", {}),
    ("class_incremental+gradual", "shift", {}),
    ("growing_examples+gradual", "shift", {}),
])
def test_combinations_without_a_meaning_are_refused(name, field, overrides):
  config = shift_config.get_config()
  config.shift = name
  if name == "random_targets":
    config.loss.name = "mse"
  config.shift_params.update(overrides)
  with pytest.raises(validation.ConfigError) as e:
    validation.validate(config)
  assert e.value.field == field


def test_a_distributional_support_that_cannot_hold_the_targets_is_refused():
  config = shift_config.get_config()
  config.shift, config.loss.name = "random_targets", "two_hot"
  config.shift_params.target_offset = 100.0
  with pytest.raises(validation.ConfigError) as e:
    validation.validate(config)
  assert e.value.field == "loss.support_max" and "103" in str(e.value)
  config.loss.support_min, config.loss.support_max = -10.0, 110.0
  validation.validate(config)
  assert validation.target_range(config) == (-3.0, 103.0)
  # The defaults (offset 0, scale 1) fit the default support [-10, 10].
  config = shift_config.get_config()
  config.shift, config.loss.name = "random_targets", "hl_gauss"
  validation.validate(config)


def test_clipped_targets_are_counted():
  config = shift_config.get_config()
  config.shift, config.loss.name = "random_targets", "two_hot"
  config.loss.support_min, config.loss.support_max = -1.0, 1.0
  data = _data()
  spec = from_config.engine_spec(config, C, data.images.shape[1], data.image_shape)
  tasks, _ = _tasks(config, num_tasks=1)
  y = np.asarray(tasks[0].targets)
  expected = np.mean((y < -1.0) | (y > 1.0))
  assert 0.2 < expected < 0.45  # standardised targets: about 32% beyond one std.
  assert float(objectives.clipped_fraction(spec, tasks[0])) == pytest.approx(expected)
  config.loss.name = "mse"
  spec = from_config.engine_spec(config, C, data.images.shape[1], data.image_shape)
  assert np.isnan(objectives.clipped_fraction(spec, tasks[0]))


def test_held_out_labels_follow_the_label_map_and_the_classes_in_play():
  y = jnp.array([0, 1, 2, 3, 9])
  tasks, _ = _tasks(_default("class_permutation+class_incremental"), num_tasks=2)
  task = tasks[1]  # 4 classes in play
  labels, weights = shifts.held_out_labels(task, y)
  np.testing.assert_array_equal(labels, np.asarray(task.class_map)[np.asarray(y)])
  np.testing.assert_array_equal(weights, [1, 1, 1, 1, 0])
  tasks, _ = _tasks(_default("label_reset"), num_tasks=1)
  _, weights = shifts.held_out_labels(tasks[0], y)
  np.testing.assert_array_equal(weights, np.zeros(5))


def _held_out_by_hand(config, task, data, params, model_state):
  """test_accuracy and test_loss with numpy: the model's logits on the held-out
  inputs under the task's transform, labels through the label map."""
  spec = from_config.engine_spec(config, C, data.images.shape[1], data.image_shape)
  x = np.asarray(data.test_images, np.float32) / 255.0
  x = x[:, np.asarray(task.input_perm)] + np.asarray(task.input_offset)
  logits, _ = objectives.apply_model(spec, params, model_state, jnp.asarray(x), train=False)
  logits = np.asarray(logits, np.float64)
  y = np.asarray(data.test_labels)
  labels = np.asarray(task.class_map)[y]
  keep = np.asarray(task.class_active)[y]
  z = logits - logits.max(-1, keepdims=True)
  log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
  ce = -log_p[np.arange(len(y)), labels]
  acc = (logits.argmax(-1) == labels)
  return acc[keep].mean(), ce[keep].mean()


@pytest.mark.parametrize("name", ["class_permutation+pixel_permutation",
                                  "class_incremental+input_noise"])
def test_test_accuracy_and_loss_against_numpy(name):
  config = _default(name)
  config.probes.test_examples = 200
  data = _data()
  spec = from_config.engine_spec(config, C, data.images.shape[1], data.image_shape)
  hp = from_config.hparams(config)
  state = engine.init_state(spec, hp, data, jax.random.PRNGKey(3))
  tasks, _ = _tasks(config, num_tasks=3)
  for t in (1, 2):
    acc, loss = objectives.held_out_metrics(spec, state.params, state.model_state,
                                            tasks[t], data, jnp.int32(t))
    want_acc, want_loss = _held_out_by_hand(config, tasks[t], data, state.params,
                                            state.model_state)
    assert float(acc) == pytest.approx(want_acc, abs=1e-6)
    assert float(loss) == pytest.approx(want_loss, rel=1e-4)


def test_regression_test_loss_uses_the_tasks_network_on_held_out_inputs():
  config = _default("random_targets")
  data = _data()
  spec = from_config.engine_spec(config, C, data.images.shape[1], data.image_shape)
  tasks, _ = _tasks(config, num_tasks=2)
  task = tasks[1]
  train = objectives.model_inputs(data.images, data)
  # The held-out function of the training inputs is the training targets.
  again = shifts.regression_targets(task.target_key, 1, train, spec.shift_params,
                                    held_out=train)
  np.testing.assert_allclose(again, task.targets, rtol=1e-5, atol=1e-5)
  hp = from_config.hparams(config)
  state = engine.init_state(spec, hp, data, jax.random.PRNGKey(0))
  acc, loss = objectives.held_out_metrics(spec, state.params, state.model_state, task, data,
                                          jnp.int32(1))
  assert np.isnan(acc)
  test = objectives.model_inputs(data.test_images, data)
  targets = shifts.regression_targets(task.target_key, 1, train, spec.shift_params,
                                      held_out=test)
  out, _ = objectives.apply_model(spec, state.params, state.model_state, test, train=False)
  assert float(loss) == pytest.approx(float(np.mean((np.asarray(out) - targets) ** 2)),
                                      rel=1e-5)


def test_plasticity_loss_never_averages_task_zero_into_its_window():
  def rows(accs):
    return [{"intervention": "a", "seed": 0, "task": t, "train_accuracy": a,
             "train_loss": 0.0, "dead_fraction": 0.0, "param_norm": 1.0,
             "diverged_task": -1, "diverged_step": -1} for t, a in enumerate(accs)]
  s = results.summarize(rows([0.9, 0.5, 0.3]), ["a"])["interventions"]["a"]
  assert s["plasticity_loss"] == pytest.approx(0.9 - 0.4)
  assert s["plasticity_loss_tasks"] == 2
  s = results.summarize(rows([0.9, 0.7, 0.5, 0.3, 0.1]), ["a"])["interventions"]["a"]
  assert s["plasticity_loss"] == pytest.approx(0.9 - 0.3) and s["plasticity_loss_tasks"] == 3
  s = results.summarize(rows([0.9]), ["a"])["interventions"]["a"]
  assert s["plasticity_loss"] is None and s["plasticity_loss_tasks"] == 0


def test_every_shift_and_composition_validates_or_names_its_field_under_defaults():
  names = sorted(set(shifts.SHIFTS) - {"gradual"})
  for a in names:
    for b in names + ["gradual"]:
      if a == b:
        continue
      config = shift_config.get_config()
      config.shift = f"{a}+{b}"
      try:
        objective = shifts.objective(config.shift)
      except ValueError:  # refused as a name: one line naming config.shift
        with pytest.raises(validation.ConfigError) as e:
          validation.validate(config)
        assert e.value.field == "shift"
        continue
      if objective == "regression" or "target_scale" in config.shift:
        config.loss.name = "mse"
      try:
        validation.validate(config)
      except validation.ConfigError as e:
        assert e.field in ("shift", "shift_params.initial_labels", "shift_params.drift_steps"), (
            config.shift, e)


def test_held_out_columns_in_summary(tmp_path):
  del tmp_path
  rows = []
  for seed, (first, final) in enumerate([(0.8, 0.6), (0.6, 0.4)]):
    for t, acc in enumerate([first, 0.5, final]):
      rows.append({"intervention": "a", "seed": seed, "task": t, "train_accuracy": 0.9,
                   "train_loss": 0.1, "dead_fraction": 0.0, "param_norm": 1.0,
                   "test_accuracy": acc, "test_loss": 1.0 - acc,
                   "diverged_task": -1, "diverged_step": -1})
  s = results.summarize(rows, ["a"])["interventions"]["a"]
  assert s["first_task_test_accuracy"] == pytest.approx(0.7)
  assert s["first_task_test_accuracy_std"] == pytest.approx(0.1)
  assert s["final_task_test_accuracy"] == pytest.approx(0.5)
  assert s["final_task_test_loss"] == pytest.approx(0.5)
  assert s["first_task_test_loss_std"] == pytest.approx(0.1)
  chex.assert_trees_all_equal(tuple(k for k in results.HELD_OUT_KEYS if k in s),
                              results.HELD_OUT_KEYS)
