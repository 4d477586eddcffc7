"""The dense matmul whose kernel gradient is formed in the kernel's layout."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import engine, from_config, matmul, models
from tests.conftest import tiny_config


def _arrays(x_shape, w_shape, seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=x_shape), dtype)
  w = jnp.asarray(rng.normal(size=w_shape) / np.sqrt(w_shape[0]), dtype)
  return x, w


def _loss(matmul_fn):
  # A nonlinear function of the product, so that g = dL/dy varies by element.
  return lambda x, w: jnp.sum(jnp.sin(matmul_fn(x, w)) * jnp.arange(w.shape[1]))


@pytest.mark.parametrize("x_shape", [(5, 3), (2, 5, 3)])  # a Dense on [B, n] and [B, T, n]
def test_gradients_match_the_closed_form_and_autodiff(x_shape):
  x, w = _arrays(x_shape, (3, 4))
  ours = jax.grad(_loss(matmul.kernel_layout_matmul), argnums=(0, 1))(x, w)
  plain = jax.grad(_loss(lambda a, b: a @ b), argnums=(0, 1))(x, w)
  # Closed form in numpy: g = cos(xW) * [0, 1, 2, 3]; dx = g W^T; dW = sum x^T g.
  xn, wn = np.asarray(x, np.float64), np.asarray(w, np.float64)
  g = np.cos(xn @ wn) * np.arange(4)
  dx = g @ wn.T
  dw = xn.reshape(-1, 3).T @ g.reshape(-1, 4)
  chex.assert_trees_all_close(ours, (dx, dw), rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(ours, plain, rtol=1e-5, atol=1e-6)
  chex.assert_shape(ours[1], w.shape)


def test_dense_dot_general_is_dense_and_falls_back_otherwise():
  x, w = _arrays((5, 3), (3, 4))
  dense = (((1,), (0,)), ((), ()))
  np.testing.assert_allclose(matmul.dense_dot_general(x, w, dense), x @ w, rtol=1e-6)
  # Contracting x's first axis with w's: not a Dense layer's product, lax's own.
  a, b = _arrays((3, 5), (3, 4))
  other = (((0,), (0,)), ((), ()))
  np.testing.assert_allclose(matmul.dense_dot_general(a, b, other), a.T @ b, rtol=1e-6)
  jaxpr = str(jax.make_jaxpr(lambda a, b: matmul.dense_dot_general(a, b, other))(a, b))
  assert "custom_vjp" not in jaxpr
  jaxpr = str(jax.make_jaxpr(lambda x, w: matmul.dense_dot_general(x, w, dense))(x, w))
  assert "custom_vjp" in jaxpr


def test_under_vmap_the_kernel_gradient_needs_no_transpose():
  """What the module is for: vmapped over seeds, autodiff forms g^T x ([m, n])
  and transposes it; `kernel_layout_matmul` forms the [n, m] product directly."""
  x, w = _arrays((1, 8, 3), (1, 3, 4))

  def transposes(matmul_fn):
    grad_w = jax.vmap(jax.grad(_loss(matmul_fn), argnums=1))
    return str(jax.make_jaxpr(grad_w)(x, w)).count("transpose[")

  assert transposes(lambda a, b: a @ b) >= 1
  assert transposes(matmul.kernel_layout_matmul) == 0
  grads = jax.vmap(jax.grad(_loss(matmul.kernel_layout_matmul), argnums=1))(x, w)
  plain = jax.vmap(jax.grad(_loss(lambda a, b: a @ b), argnums=1))(x, w)
  chex.assert_trees_all_close(grads, plain, rtol=1e-5, atol=1e-6)


def test_bfloat16_cotangents_keep_the_input_dtypes():
  x, w = _arrays((5, 3), (3, 4), dtype=jnp.bfloat16)
  loss = lambda x, w: _loss(matmul.kernel_layout_matmul)(x, w).astype(jnp.float32)
  dx, dw = jax.grad(loss, argnums=(0, 1))(x, w)
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
  assert jax.grad(loss, argnums=1)(x.astype(jnp.float32), w).dtype == jnp.bfloat16


def test_an_input_not_differentiated_gets_no_gradient_product():
  """A first layer's input is data: only the forward product and dL/dW run."""
  x, w = _arrays((5, 3), (3, 4))
  products = lambda argnums: str(jax.make_jaxpr(jax.grad(
      _loss(matmul.kernel_layout_matmul), argnums=argnums))(x, w)).count("dot_general")
  assert products(1) == 2
  assert products((0, 1)) == 3
  chex.assert_trees_all_close(jax.grad(_loss(matmul.kernel_layout_matmul), argnums=1)(x, w),
                              jax.grad(_loss(lambda a, b: a @ b), argnums=1)(x, w),
                              rtol=1e-5, atol=1e-6)


def test_reverse_over_reverse_works_and_forward_mode_is_refused():
  x, w = _arrays((5, 3), (3, 4))
  # The gradient-norm penalty differentiates a gradient: reverse over reverse.
  penalty = lambda f: (lambda w: jnp.sum(jax.grad(_loss(f), argnums=1)(x, w) ** 2))
  chex.assert_trees_all_close(jax.grad(penalty(matmul.kernel_layout_matmul))(w),
                              jax.grad(penalty(lambda a, b: a @ b))(w), rtol=1e-5, atol=1e-6)
  with pytest.raises(TypeError, match="forward-mode"):
    jax.jvp(lambda w: _loss(matmul.kernel_layout_matmul)(x, w), (w,), (w,))


@pytest.mark.parametrize("model", [
    models.MLP(hidden_sizes=(6, 5), num_outputs=3, norm="layer"),
    models.CNN(num_outputs=3, channels=(2,), hidden_sizes=(5,), input_shape=(4, 4, 1)),
])
def test_training_model_is_the_same_function_with_the_same_gradient(model):
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 16)), jnp.float32)
  params, _ = models.init_variables(model, jax.random.PRNGKey(0), x)
  trained = models.training_model(model)
  assert trained.dense_dot_general is matmul.dense_dot_general
  assert model.dense_dot_general is None  # the original is left as it was
  loss = lambda m: (lambda p: jnp.sum(jnp.tanh(m.apply({"params": p}, x))))
  chex.assert_trees_all_close(trained.apply({"params": params}, x),
                              model.apply({"params": params}, x), rtol=1e-6)
  chex.assert_trees_all_close(jax.grad(loss(trained))(params), jax.grad(loss(model))(params),
                              rtol=1e-5, atol=1e-6)


def test_training_model_leaves_models_without_the_option_alone():
  vit = models.ViT(num_outputs=3, patch_size=2, dim=8, depth=1, num_heads=2, mlp_dim=8,
                   input_shape=(4, 4, 1))
  assert models.training_model(vit) is vit


def test_the_engine_trains_with_the_training_model_and_probes_with_the_plain_one():
  config = tiny_config()
  config.probes.enabled = False
  data, num_classes = from_config.load_train_data(config)
  spec = from_config.engine_spec(config, num_classes, data.images.shape[1])
  hp = from_config.hparams(config)
  state = engine.init_state(spec, hp, data, jax.random.PRNGKey(0))
  step = jax.make_jaxpr(lambda s: engine.train_step(spec, hp, data, s, jax.random.PRNGKey(1)))
  # The kernel gradients come out in the kernels' layout: no transposes.
  assert "transpose[" not in str(step(state))
  # The plain model, which the probes differentiate, forms them transposed.
  assert spec.model.dense_dot_general is None
  x = jnp.zeros((4, data.images.shape[1]))
  plain = jax.make_jaxpr(jax.grad(lambda p: jnp.sum(spec.model.apply({"params": p}, x))))
  assert "transpose[" in str(plain(state.params))


@pytest.mark.parametrize("strides, padding", [((1, 1), "SAME"), ((2, 2), "SAME"),
                                              ((1, 1), "VALID"), ((2, 1), ((1, 0), (2, 1)))])
def test_patches_conv_is_lax_conv_and_so_is_its_kernel_gradient(strides, padding):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 10, 3))
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 2, 3, 5))
  dn = jax.lax.conv_dimension_numbers(x.shape, k.shape, ("NHWC", "HWIO", "NHWC"))
  conv = lambda f: (lambda x, k: f(x, k, strides, padding, dimension_numbers=dn))
  reference, ours = conv(jax.lax.conv_general_dilated), conv(matmul.patches_conv)
  chex.assert_trees_all_close(ours(x, k), reference(x, k), rtol=1e-5, atol=1e-5)
  loss = lambda f: (lambda x, k: jnp.sum(jnp.sin(f(x, k))))
  chex.assert_trees_all_close(jax.grad(loss(ours), argnums=(0, 1))(x, k),
                              jax.grad(loss(reference), argnums=(0, 1))(x, k),
                              rtol=1e-4, atol=1e-4)


def test_patches_conv_falls_back_for_grouped_convolutions():
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 5, 5, 4))
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 2, 4))
  dn = jax.lax.conv_dimension_numbers(x.shape, k.shape, ("NHWC", "HWIO", "NHWC"))
  args = ((1, 1), "SAME")
  chex.assert_trees_all_close(
      matmul.patches_conv(x, k, *args, dimension_numbers=dn, feature_group_count=2),
      jax.lax.conv_general_dilated(x, k, *args, dimension_numbers=dn, feature_group_count=2))


def test_patches_model_of_a_cnn_uses_patches_and_keeps_the_function():
  model = models.create({"name": "cnn", "depth": 1, "width": 8, "cnn_channels": (4, 6)}, 3,
                        (8, 8, 2))
  trained = models.patches_model(model)
  assert trained.conv_general_dilated is matmul.patches_conv
  assert trained.dense_dot_general is matmul.dense_dot_general
  assert models.training_model(model).conv_general_dilated is None
  x = jax.random.uniform(jax.random.PRNGKey(0), (5, 8, 8, 2))
  params = model.init(jax.random.PRNGKey(1), x)
  loss = lambda m: (lambda p: jnp.sum(jnp.square(m.apply(p, x))))
  chex.assert_trees_all_close(trained.apply(params, x), model.apply(params, x), rtol=1e-5,
                              atol=1e-6)
  chex.assert_trees_all_close(jax.grad(loss(trained))(params), jax.grad(loss(model))(params),
                              rtol=1e-4, atol=1e-6)
