import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import models


@pytest.mark.parametrize("norm", ["none", "layer"])
def test_mlp_exposes_every_hidden_layer(norm):
  model = models.MLP(hidden_sizes=(8, 6), num_outputs=3, norm=norm)
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 2, 2, 1))
  params = model.init(jax.random.PRNGKey(1), x)["params"]
  logits, pre, act = models.hidden_features(model, params, x)
  chex.assert_shape(logits, (5, 3))
  chex.assert_shape(pre, [(5, 8), (5, 6)])
  chex.assert_shape(act, [(5, 8), (5, 6)])
  for h, a in zip(pre, act):
    np.testing.assert_array_equal(a, jax.nn.relu(h))
  np.testing.assert_allclose(logits, model.apply({"params": params}, x), rtol=1e-6)
  assert ("norm_0" in params) == (norm == "layer")


def test_layer_norm_acts_on_preactivations_before_relu():
  model = models.MLP(hidden_sizes=(7,), num_outputs=2, norm="layer")
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 5)) * 10 + 3
  params = model.init(jax.random.PRNGKey(1), x)["params"]
  _, (pre,), _ = models.hidden_features(model, params, x)
  # Fresh LayerNorm (scale 1, bias 0): each example's preactivations are standardised.
  np.testing.assert_allclose(pre.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(pre.std(-1), 1.0, rtol=1e-3)
  dense = x @ params["dense_0"]["kernel"] + params["dense_0"]["bias"]
  ref = (dense - dense.mean(-1, keepdims=True)) / jnp.sqrt(dense.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(pre, ref, rtol=1e-4, atol=1e-5)


def test_unknown_norm_is_named():
  with pytest.raises(ValueError, match="unknown norm 'group'"):
    models.MLP(hidden_sizes=(4,), num_outputs=2, norm="group").init(
        jax.random.PRNGKey(0), jnp.ones((1, 3)))


def test_bfloat16_computes_in_bf16_and_returns_f32_logits():
  model = models.MLP(hidden_sizes=(8,), num_outputs=3, dtype="bfloat16")
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 5))
  params = model.init(jax.random.PRNGKey(1), x)["params"]
  assert params["dense_0"]["kernel"].dtype == jnp.float32
  logits, (pre,), _ = models.hidden_features(model, params, x)
  assert pre.dtype == jnp.bfloat16 and logits.dtype == jnp.float32
  ref = models.MLP(hidden_sizes=(8,), num_outputs=3).apply({"params": params}, x)
  np.testing.assert_allclose(logits, ref, rtol=0.05, atol=0.05)
