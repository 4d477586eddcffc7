import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import engine, from_config, interventions, results, runner, validation


def _setup(config, intervention="baseline"):
  resolved = interventions.apply(config, intervention)
  data, num_classes = from_config.load_train_data(resolved)
  spec = from_config.engine_spec(resolved, num_classes, data.images.shape[1])
  return resolved, data, num_classes, spec, from_config.hparams(resolved)


def test_metrics_shapes_and_ranges(config):
  metrics = runner.run_intervention(config, "baseline", *from_config.load_train_data(config))
  s, t = config.num_seeds, config.num_tasks
  for name in ("train_loss", "train_accuracy", "dead_fraction", "dormant_fraction",
               "linearized_fraction", "effective_rank", "srank", "param_norm"):
    chex.assert_shape(getattr(metrics, name), (s, t))
    assert np.all(np.isfinite(getattr(metrics, name))), name
  chex.assert_shape(metrics.layer_dead_fraction, (s, t, config.model.depth))
  assert set(metrics.layer_param_norm) == {"dense_0", "dense_1", "head"}
  assert np.all((metrics.train_accuracy >= 0) & (metrics.train_accuracy <= 1))
  assert np.all(metrics.srank <= config.model.width)
  # The global norm is the root of the sum of the squared per-layer norms.
  layer_sq = sum(np.square(v) for v in metrics.layer_param_norm.values())
  np.testing.assert_allclose(metrics.param_norm, np.sqrt(layer_sq), rtol=1e-5)


def test_more_tasks_compile_nothing_new(config):
  config.tasks_per_chunk = 2
  config.model.width = 11  # a structure no other test compiles
  before = engine.run_tasks._cache_size()
  data, num_classes = from_config.load_train_data(config)
  config.num_tasks = 2
  runner.run_intervention(config, "baseline", data, num_classes)
  after_first = engine.run_tasks._cache_size()
  config.num_tasks = 6  # three chunks of the same program
  runner.run_intervention(config, "baseline", data, num_classes)
  # weight decay is a traced value: same program as the baseline.
  runner.run_intervention(config, "weight_decay", data, num_classes)
  assert after_first - before == 1
  assert engine.run_tasks._cache_size() == after_first


def test_vmapped_seed_equals_that_seed_alone(config):
  _, data, _, spec, hp = _setup(config, "layer_norm+weight_decay")
  keys = from_config.seed_keys(config, 3)
  states = engine.init_states(keys, data, hp, spec=spec)
  _, together = engine.run_tasks(states, data, hp, spec=spec, num_tasks=3)
  alone_state = engine.init_states(keys[1:2], data, hp, spec=spec)
  _, alone = engine.run_tasks(alone_state, data, hp, spec=spec, num_tasks=3)
  chex.assert_trees_all_close(jax.tree.map(lambda a: a[1:2], together), alone,
                              rtol=2e-5, atol=1e-6)


def test_make_train_is_pure_and_vmappable(config):
  config.num_tasks = 2
  train = engine.make_train(config, "layer_norm")
  keys = from_config.seed_keys(config)
  batched = jax.jit(jax.vmap(train))(keys)
  single = jax.jit(train)(keys[0])
  chex.assert_shape(batched.train_accuracy, (config.num_seeds, 2))
  chex.assert_trees_all_close(jax.tree.map(lambda a: a[0], batched), single, rtol=2e-5,
                              atol=1e-6)
  # The runner, in chunks, gives the same numbers as the single scan.
  chunked = runner.run_intervention(config, "layer_norm", *from_config.load_train_data(config))
  chex.assert_trees_all_close(chunked, jax.device_get(batched), rtol=2e-5, atol=1e-6)


def test_same_seed_same_numbers(config):
  data = from_config.load_train_data(config)
  a = runner.run_intervention(config, "baseline", *data)
  b = runner.run_intervention(config, "baseline", *data)
  chex.assert_trees_all_equal(a, b)
  # Different seeds differ.
  assert not np.array_equal(a.train_loss[0], a.train_loss[1])


def test_task_sequence_is_shared_across_interventions(config):
  """Interventions see the same tasks and batches: common random numbers."""
  _, data, _, spec_a, hp = _setup(config, "baseline")
  _, _, _, spec_b, _ = _setup(config, "layer_norm")
  key = from_config.seed_keys(config, 1)[0]
  a = engine.init_state(spec_a, hp, data, key)
  b = engine.init_state(spec_b, hp, data, key)
  chex.assert_trees_all_equal(a.task, b.task)
  chex.assert_trees_all_equal(a.params["dense_0"], b.params["dense_0"])


def test_label_reset_engine_switches_labels_each_task(config):
  _, data, _, spec, hp = _setup(config)
  state = engine.init_state(spec, hp, data, from_config.seed_keys(config, 1)[0])
  labels = [np.asarray(state.task.labels)]
  for _ in range(2):
    state, _ = jax.jit(lambda s: engine.run_task(spec, hp, data, s))(state)
    labels.append(np.asarray(state.task.labels))
  assert int(state.task_index) == 2
  for prev, new in zip(labels, labels[1:]):
    assert 0.75 < np.mean(prev != new) < 1.0  # eps = 1: about 9/10 change


def test_presampled_minibatches_equal_step_by_step_draws(config, monkeypatch):
  """run_task draws a task's minibatch indices up front (short tasks) or step by
  step (past PRESAMPLE_LIMIT): the same indices, so the same training."""
  config.shift = "label_reset+pixel_permutation"
  _, data, _, spec, hp = _setup(config)
  state = engine.init_state(spec, hp, data, from_config.seed_keys(config, 1)[0])
  assert spec.steps_per_task * spec.batch_size <= engine.PRESAMPLE_LIMIT
  run = lambda: jax.jit(lambda s: engine.run_task(spec, hp, data, s))(state)
  presampled = run()
  monkeypatch.setattr(engine, "PRESAMPLE_LIMIT", 0)
  step_by_step = run()
  chex.assert_trees_all_equal(presampled, step_by_step)


def test_sgd_step_matches_closed_form(config):
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.5
  config.optimizer.weight_decay = 0.1
  _, data, _, spec, hp = _setup(config)
  state = engine.init_state(spec, hp, data, from_config.seed_keys(config, 1)[0])
  key = jax.random.PRNGKey(4)
  new_state, (loss, _) = engine.train_step(spec, hp, data, state, key)
  idx = jax.random.randint(key, (config.batch_size,), 0, data.images.shape[0])
  x = data.images[idx].astype(jnp.float32) / 255.0
  y = state.task.labels[idx]

  def loss_fn(p):
    logits = spec.model.apply({"params": p}, x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

  ref_loss, grads = jax.value_and_grad(loss_fn)(state.params)
  expected = jax.tree.map(lambda p, g: p - 0.5 * g - 0.5 * 0.1 * p, state.params, grads)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  chex.assert_trees_all_close(new_state.params, expected, rtol=1e-5, atol=1e-6)


def test_divergent_seed_is_frozen_and_marked_while_others_carry_on(config):
  _, data, _, spec, hp = _setup(config)
  keys = from_config.seed_keys(config, 2)
  states = engine.init_states(keys, data, hp, spec=spec)
  # Poison seed 0's head so its first loss is NaN.
  poisoned = states.replace(params=jax.tree_util.tree_map_with_path(
      lambda path, p: p.at[0].set(jnp.nan) if "head" in str(path) else p, states.params))
  frozen_params = jax.tree.map(lambda a: a[0], poisoned.params)
  new_states, metrics = engine.run_tasks(poisoned, data, hp, spec=spec, num_tasks=2)
  np.testing.assert_array_equal(metrics.diverged_task, [[0, 0], [-1, -1]])
  np.testing.assert_array_equal(metrics.diverged_step, [[0, 0], [-1, -1]])
  # Seed 0 took no step: its parameters are the ones it had, and its optimizer
  # saw zero gradients instead of the NaN ones (its moments stay finite).
  chex.assert_trees_all_equal(jax.tree.map(lambda a: a[0], new_states.params), frozen_params)
  chex.assert_tree_all_finite(jax.tree.map(lambda a: a[0], new_states.opt_state))
  # Seed 1 trained exactly as it does alone.
  alone = engine.init_states(keys[1:], data, hp, spec=spec)
  _, alone_metrics = engine.run_tasks(alone, data, hp, spec=spec, num_tasks=2)
  chex.assert_trees_all_close(jax.tree.map(lambda a: a[1:], metrics), alone_metrics,
                              rtol=2e-5, atol=1e-6)


def test_large_learning_rate_divergence_is_detected_mid_run(config):
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 1e6
  _, data, _, spec, hp = _setup(config)
  states = engine.init_states(from_config.seed_keys(config), data, hp, spec=spec)
  states, first = engine.run_tasks(states, data, hp, spec=spec, num_tasks=1)
  assert np.all(first.diverged_task[:, 0] == 0)
  assert np.all((first.diverged_step >= 0) & (first.diverged_step < config.steps_per_task))
  before = jax.device_get(states.params)
  states, later = engine.run_tasks(states, data, hp, spec=spec, num_tasks=1)
  np.testing.assert_array_equal(later.diverged_step, first.diverged_step)  # first mark kept
  chex.assert_trees_all_equal(jax.device_get(states.params), before)  # frozen


def test_non_finite_parameters_that_leave_the_loss_finite_are_caught_at_task_end(config):
  config.optimizer.weight_decay_mask = "kernels"  # 0 * -inf decay would turn it into NaN
  _, data, _, spec, hp = _setup(config)
  states = engine.init_states(from_config.seed_keys(config, 2), data, hp, spec=spec)
  # A -inf bias makes seed 0's unit 0 dead (relu(-inf) = 0) but leaves the loss finite.
  bias = states.params["dense_0"]["bias"].at[0, 0].set(-jnp.inf)
  states = states.replace(params={**states.params,
                                  "dense_0": {**states.params["dense_0"], "bias": bias}})
  _, metrics = engine.run_tasks(states, data, hp, spec=spec, num_tasks=1)
  assert np.all(np.isfinite(metrics.train_loss))
  np.testing.assert_array_equal(metrics.diverged_task[:, 0], [0, -1])
  np.testing.assert_array_equal(metrics.diverged_step[:, 0], [config.steps_per_task - 1, -1])


def test_bfloat16_matmuls_train(config):
  config.model.dtype = "bfloat16"
  config.shift, config.shift_params.initial_labels = "class_permutation", "true"
  config.num_tasks, config.steps_per_task, config.tasks_per_chunk = 2, 150, 1
  config.optimizer.learning_rate = 3e-3
  metrics = runner.run_intervention(config, "layer_norm", *from_config.load_train_data(config))
  assert np.all(np.isfinite(metrics.train_loss)) and np.all(metrics.diverged_task == -1)
  assert np.all(metrics.train_loss[:, 0] < 0.7 * np.log(10))  # well below chance: it learns
  assert np.all(metrics.train_accuracy[:, 0] > 0.5)


def test_probes_off_leave_every_probe_column_unmeasured(config):
  config.probes.enabled = False
  config.num_tasks = config.tasks_per_chunk = 2
  m = runner.run_intervention(config, "baseline", *from_config.load_train_data(config))
  assert np.isfinite(m.train_loss).all()
  for name in ("dead_fraction", "param_norm", "effective_rank", "preact_drift", "sharpness"):
    assert np.isnan(getattr(m, name)).all(), name
  assert (m.preact_histogram == -1).all()  # integer counts cannot be NaN
  rows = results.metrics_to_rows("baseline", m, list(range(config.num_seeds)))
  summary = results.summarize(rows, ["baseline"])["interventions"]["baseline"]
  assert summary["dead_fraction_final"] is None and summary["param_norm_final"] is None
  assert summary["final_task_accuracy"] is not None


def test_train_data_refuses_more_examples_than_the_split_holds(config):
  # Sliced to the split's 10,000 rows and reshaped to 20,000, the images would
  # silently come out half as wide, unmatched with their labels.
  config.num_examples = 20000
  with pytest.raises(validation.ConfigError, match="config.num_examples: 20000 is more than"):
    from_config.load_train_data(config)
  config.num_examples = 1000
  data, _ = from_config.load_train_data(config)
  chex.assert_shape([data.images, data.labels], [(1000, 784), (1000,)])
