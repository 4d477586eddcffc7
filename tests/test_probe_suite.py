"""The probe set in the engine: values, schedule, and agreement with the probe functions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import engine, from_config, ntk, probe_suite, runner
from tests.conftest import tiny_config


def test_activation_probes_by_hand():
  # One layer, 2 examples, 3 units: unit 0 dead, unit 1 always on, unit 2 mixed.
  h = jnp.array([[-1.0, 2.0, 1.0], [-3.0, 4.0, -1.0]])
  a = jax.nn.relu(h)
  settings = probe_suite.ProbeSettings(linearized_threshold=1.5, top_singular_values=2,
                                       histogram_edges=(-4.0, -1.0, 2.0, 5.0))
  ref = (jnp.array([-2.0, 2.0, 0.0]),)
  out = probe_suite.activation_probes([h], [a], jnp.zeros((2, 4)), ref, settings)
  np.testing.assert_allclose(out["dead_fraction"], 1 / 3)
  np.testing.assert_allclose(out["linearized_fraction"], 1 / 3)
  # per-unit std over the batch: 1, 1, 1 -> all below 1.5
  np.testing.assert_allclose(out["linearized_fraction_smooth"], 1.0)
  # unit means -2, 3, 0: drift |0| + |1| + |0| over 3 units
  np.testing.assert_allclose(out["preact_drift"], 1 / 3, rtol=1e-6)
  np.testing.assert_allclose(out["preact_mean_spread"], np.std([-2.0, 3.0, 0.0]), rtol=1e-6)
  np.testing.assert_allclose(out["predictive_entropy"], np.log(4.0), rtol=1e-6)
  np.testing.assert_array_equal(out["preact_histogram"], [[1, 1, 1]])  # -2 | 0 | 3
  np.testing.assert_allclose(out["feature_singular_values"],
                             np.linalg.svd(np.asarray(a), compute_uv=False)[:2], rtol=1e-5)
  # Given the representation the head reads, the ranks are of it instead.
  features = jnp.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])  # singular values 2, 2, 0
  given = probe_suite.activation_probes([h], [a], jnp.zeros((2, 4)), ref, settings, features)
  np.testing.assert_allclose(given["feature_singular_values"], [2.0, 2.0], rtol=1e-6)
  np.testing.assert_allclose(given["effective_rank"], 2.0, rtol=1e-6)
  assert int(given["srank"]) == 2
  assert given["dead_fraction"] == out["dead_fraction"]  # the layer probes are unchanged


def test_expensive_probes_follow_their_schedule_and_match_the_functions():
  config = tiny_config()
  config.num_seeds = 1
  config.probes.sharpness_every = 2
  config.probes.ntk_every = 1
  config.probes.ntk_examples = 8
  data, num_classes = from_config.load_train_data(config)
  m = runner.run_intervention(config, "baseline", data, num_classes)
  assert np.isnan(m.sharpness[0, [0, 2]]).all() and np.isfinite(m.sharpness[0, [1, 3]]).all()
  assert np.isnan(m.gradient_alignment).all() and np.isnan(m.plasticity_probe_loss).all()
  assert np.isfinite(m.ntk_effective_rank).all()

  # The engine's NTK columns are ntk.ntk_stats of the network it probed.
  spec = from_config.engine_spec(config, num_classes, data.images.shape[1], data.image_shape)
  hp = from_config.hparams(config)
  state = engine.init_state(spec, hp, data, from_config.seed_keys(config)[0])
  values = engine.expensive_probes(spec, hp, data, state, jnp.int32(0))
  x, _ = engine._probe_batch(spec, state.task, data)
  apply_fn = lambda p, xs: spec.model.apply({"params": p}, xs)
  stats = ntk.ntk_stats(ntk.ntk_gram(apply_fn, state.params, x, num_examples=8))
  for key in ("diagonal_share", "effective_rank", "top_eigenvalue_share"):
    np.testing.assert_allclose(values[f"ntk_{key}"], stats[key], rtol=1e-4)
  assert np.isnan(values["sharpness"])  # task 0: (0 + 1) % 2 != 0


def test_plasticity_probe_fresh_networks_use_their_own_batch_statistics():
  config = tiny_config()
  config.model.norm = "batch"
  config.probes.plasticity_every = 1
  config.probes.plasticity_steps = 5
  data, num_classes = from_config.load_train_data(config)
  spec = from_config.engine_spec(config, num_classes, data.images.shape[1], data.image_shape)
  hp = from_config.hparams(config)
  state = engine.init_state(spec, hp, data, jax.random.PRNGKey(0))
  # Running statistics that drifted, as training moves them.
  drifted = state.replace(model_state=jax.tree.map(lambda v: v + 3.0, state.model_state))
  probe = jax.jit(lambda s: engine.expensive_probes(spec, hp, data, s, jnp.int32(0)))
  before, after = probe(state), probe(drifted)
  # The probed network's statistics change its probe loss and nothing else:
  # the fresh reference network runs with a fresh network's statistics.
  assert after["fresh_probe_loss"] == before["fresh_probe_loss"]
  assert after["probe_loss"] != before["probe_loss"]


def test_drift_is_measured_from_the_start_of_each_task():
  config = tiny_config()
  data, num_classes = from_config.load_train_data(config)
  spec = from_config.engine_spec(config, num_classes, data.images.shape[1], data.image_shape)
  hp = from_config.hparams(config)
  state = engine.init_state(spec, hp, data, jax.random.PRNGKey(0))
  # Before any training the network is where the task started: no drift.
  at_start = engine.probe(spec, state.params, state.task, data, state.model_state,
                          state.reference_means)
  assert float(at_start["preact_drift"]) == pytest.approx(0.0, abs=1e-7)
  after, metrics = engine.run_task(spec, hp, data, state)
  assert float(metrics.preact_drift) > 0
  # The next task's reference is the trained network's means on its inputs.
  again = engine.probe(spec, after.params, after.task, data, after.model_state,
                       after.reference_means)
  assert float(again["preact_drift"]) == pytest.approx(0.0, abs=1e-6)


def test_within_task_probes_leave_training_unchanged_and_end_at_the_task_end():
  config = tiny_config()
  config.num_seeds = 1
  data, num_classes = from_config.load_train_data(config)
  plain = runner.run_intervention(config, "baseline", data, num_classes)
  config.probes.within_task_every = 4  # 3 parts of the 12 steps
  parts = runner.run_intervention(config, "baseline", data, num_classes)
  np.testing.assert_array_equal(parts.train_loss, plain.train_loss)
  np.testing.assert_array_equal(parts.param_norm, plain.param_norm)
  assert parts.within_task_drift.shape == (1, config.num_tasks, 3)
  assert parts.within_task_histogram.shape[2] == 3
  # The last part ends where the task ends.
  np.testing.assert_allclose(parts.within_task_drift[..., -1], parts.preact_drift, rtol=1e-5)
  np.testing.assert_array_equal(parts.within_task_histogram[:, :, -1], parts.preact_histogram)
  assert plain.within_task_drift.shape == (1, config.num_tasks, 1)
