"""Every intervention by name in the engine, with known answers where the engine wires them."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import engine, from_config, interventions, models, runner, validation
from tests.conftest import tiny_config

REGRESSION_ONLY = {"two_hot", "hl_gauss"}


def _config(name):
  config = tiny_config()
  config.num_tasks, config.tasks_per_chunk = 2, 2
  if REGRESSION_ONLY & set(interventions.parse(name)):
    config.shift = "random_targets"
    config.loss.support_min, config.loss.support_max, config.loss.num_bins = -3.0, 3.0, 11
  return config


# Every component, in few enough combinations to compile quickly.
COMBINATIONS = (
    "batch_norm+gelu+l2+grad_norm_penalty+label_smoothing+redo",
    "rms_norm+leaky_relu+l2_init+shrink_and_perturb+head_reset",
    "hybrid_norm+crelu+weight_decay+normalize_and_project+full_reset",
    "layer_norm+tanh+two_hot",
    "hl_gauss",
)


def test_the_combinations_cover_every_component():
  used = {part for name in COMBINATIONS for part in interventions.parse(name)}
  assert used | {"baseline"} == set(interventions.COMPONENTS)


@pytest.mark.parametrize("name", COMBINATIONS)
def test_every_intervention_runs_with_seeds_vmapped(name):
  config = _config(name)
  validation.validate(interventions.apply(config, name))
  m = runner.run_intervention(config, name, *from_config.load_train_data(config))
  chex.assert_shape(m.train_loss, (config.num_seeds, config.num_tasks))
  assert np.isfinite(m.train_loss).all() and (m.diverged_task == -1).all(), name
  assert not np.allclose(m.param_norm[0], m.param_norm[1])  # seeds differ


def _one_task(config, name):
  resolved = interventions.apply(config, name)
  data, num_classes = from_config.load_train_data(resolved)
  spec = from_config.engine_spec(resolved, num_classes, data.images.shape[1], data.image_shape)
  hp = from_config.hparams(resolved)
  state = engine.init_state(spec, hp, data, jax.random.PRNGKey(0))
  after, metrics = engine.run_task(spec, hp, data, state)
  return spec, hp, data, state, after, metrics


def test_normalize_and_project_keeps_every_kernel_at_its_init_norm():
  _, _, _, before, after, _ = _one_task(tiny_config(), "normalize_and_project")
  for layer in ("dense_0", "dense_1", "head"):
    np.testing.assert_allclose(jnp.linalg.norm(after.params[layer]["kernel"]),
                               jnp.linalg.norm(before.params[layer]["kernel"]), rtol=1e-5)
  assert not np.allclose(after.params["dense_0"]["kernel"], before.params["dense_0"]["kernel"])


def test_full_reset_leaves_the_fresh_network_of_the_reset_stream():
  spec, hp, _, before, after, _ = _one_task(tiny_config(), "full_reset")
  fresh, _ = engine._fresh_network(
      spec, engine._stream(before.rng, engine._RESET_STREAM, before.task_index))
  chex.assert_trees_all_equal(after.params, fresh)
  assert int(after.opt_state.count) == 0  # the optimizer starts again
  assert int(after.opt_state.inner_state[0].count) == 0


def test_head_reset_replaces_only_the_head_and_its_moments():
  spec, hp, data, before, after, _ = _one_task(tiny_config(), "head_reset")
  fresh, _ = engine._fresh_network(
      spec, engine._stream(before.rng, engine._RESET_STREAM, before.task_index))
  chex.assert_trees_all_equal(after.params["head"], fresh["head"])
  assert not np.allclose(after.params["dense_0"]["kernel"], before.params["dense_0"]["kernel"])
  adam = after.opt_state.inner_state[0]
  chex.assert_trees_all_equal(adam.mu["head"], jax.tree.map(jnp.zeros_like, fresh["head"]))
  assert int(adam.count) == spec.steps_per_task  # counts kept


def test_redo_recycles_exactly_the_dormant_units_the_probe_counts():
  config = tiny_config()
  config.steps_per_task = 40
  config.optimizer.learning_rate = 1e-2  # enough dead units to count
  config.resets.redo_tau = 0.1
  config.probes.dormant_tau = 0.1
  spec, hp, data, before, after, metrics = _one_task(config, "redo")
  units = config.model.depth * config.model.width
  assert int(metrics.num_reset) == round(float(metrics.dormant_fraction) * units)
  assert int(metrics.num_reset) > 0
  # The recycled network has fewer dormant units on the probe batch.
  again = engine.probe(spec, after.params, after.task, data, after.model_state)
  assert float(again["dormant_fraction"]) < float(metrics.dormant_fraction)


def test_no_resets_reports_minus_one():
  *_, metrics = _one_task(tiny_config(), "baseline")
  assert int(metrics.num_reset) == -1


def test_batch_norm_statistics_live_in_the_state_and_update():
  _, _, _, before, after, metrics = _one_task(tiny_config(), "batch_norm")
  assert set(before.model_state) == {"batch_stats"}
  moved = jax.tree.map(lambda a, b: not np.allclose(a, b), before.model_state,
                       after.model_state)
  assert all(jax.tree.leaves(moved))
  assert np.isfinite(float(metrics.dead_fraction))


@pytest.mark.parametrize("model", [
    dict(name="cnn", cnn_channels=(4, 8), depth=1, width=16),
    dict(name="resnet18", resnet_width=4, resnet_stage_sizes=(1, 1), norm="batch"),
    dict(name="vit_tiny", vit_patch_size=7, vit_dim=16, vit_depth=1, vit_heads=2,
         vit_mlp_dim=16),
])
def test_every_architecture_trains_in_the_engine(model):
  config = tiny_config()
  config.num_tasks, config.tasks_per_chunk, config.steps_per_task = 2, 2, 4
  config.probes.batch_size = 16
  for k, v in model.items():
    config.model[k] = v
  m = runner.run_intervention(config, "baseline", *from_config.load_train_data(config))
  assert np.isfinite(m.train_loss).all() and np.isfinite(m.effective_rank).all()


def test_bad_combinations_are_refused_by_name():
  config = tiny_config()
  config.interventions = "crelu+redo"
  with pytest.raises(validation.ConfigError, match="model.activation.*crelu.*'crelu\\+redo'"):
    validation.validate(config)
  config.interventions = "two_hot"
  with pytest.raises(validation.ConfigError, match="loss.name"):
    validation.validate(config)
  config = tiny_config()
  config.model.name = "resnet18"
  config.interventions = "redo"
  with pytest.raises(validation.ConfigError, match="model.name"):
    validation.validate(config)
  assert models.redo_layers  # the supported models come from the models module


def test_a_reset_intervention_on_a_config_that_runs_it_already_runs_it_once():
  config = tiny_config()
  config.resets.methods = "redo"
  assert interventions.apply(config, "redo").resets.methods == "redo"
  assert interventions.apply(config, "head_reset+redo").resets.methods == "redo+head_reset"
  config.resets.methods = "redo+redo"
  with pytest.raises(validation.ConfigError, match="resets.methods: lists 'redo' twice"):
    validation.validate(config)


@pytest.mark.parametrize("shift, loss", [("contextual_bandit", "auto"),
                                         ("random_targets", "auto"), ("label_reset", "mse")])
def test_label_smoothing_is_refused_where_there_is_no_cross_entropy_to_smooth(shift, loss):
  config = tiny_config()
  config.shift, config.loss.name = shift, loss
  validation.validate(config)  # without it, the config is fine
  config.interventions = "baseline,label_smoothing"
  with pytest.raises(validation.ConfigError,
                     match="loss.label_smoothing: applies to a classification cross-entropy "
                           "only.*under intervention 'label_smoothing'"):
    validation.validate(config)
  config.shift, config.loss.name = "label_reset", "auto"
  validation.validate(config)  # classification with cross-entropy: smoothed
