import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from plastix import curvature


def _quadratic(params, a):
  """0.5 x^T A x with x = concat(params["u"], params["w"]): its Hessian is A (the batch)."""
  x = jnp.concatenate([params["u"], params["w"][None]])
  return 0.5 * x @ a @ x


_PARAMS = {"u": jnp.array([0.3, -1.0]), "w": jnp.array(2.0)}
_top_quadratic = jax.jit(
    lambda a, k: curvature.hessian_max_eigenvalue(_quadratic, _PARAMS, a, k, 100))


@pytest.mark.parametrize("a, expected", [
    # [[2, 1], [1, 2]] has eigenvalues 3 and 1; with 0.5 appended, the largest is 3.
    ([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.5]], 3.0),
    # eigenvalues 3, 1, -5: the largest magnitude is -5, returned with its sign.
    ([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, -5.0]], -5.0),
])
def test_quadratic_by_hand(a, expected):
  value = _top_quadratic(jnp.asarray(a, jnp.float32), jax.random.PRNGKey(0))
  assert value == pytest.approx(expected, rel=1e-4)


def test_hessian_vector_product_on_quadratic():
  a = np.array([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, -5.0]], np.float32)
  flat, hvp = curvature.hessian_vector_product(_quadratic, _PARAMS, jnp.asarray(a))
  np.testing.assert_allclose(flat, [0.3, -1.0, 2.0])
  v = np.array([1.0, -2.0, 0.5], np.float32)
  np.testing.assert_allclose(hvp(jnp.asarray(v)), a @ v, rtol=1e-6)


def test_zero_hessian_gives_zero_and_iters_must_be_positive():
  linear = lambda p, _: jnp.sum(p["u"]) + 3 * p["w"]
  assert curvature.hessian_max_eigenvalue(linear, _PARAMS, None, jax.random.PRNGKey(0), 3) == 0.0
  with pytest.raises(ValueError):
    curvature.hessian_max_eigenvalue(linear, _PARAMS, None, jax.random.PRNGKey(0), 0)


class _MLP(nn.Module):
  """A 3 -> 4 -> 2 tanh MLP: 26 parameters."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(2, name="head")(jnp.tanh(nn.Dense(4, name="hidden")(x)))


def _mlp_loss(params, batch):
  x, y = batch
  return jnp.mean(jnp.square(_MLP().apply({"params": params}, x) - y))


def _mlp_problem(seed):
  """Parameters in `_MLP`'s layout and a regression batch, drawn with numpy (no compile)."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape, scale=1.0: (scale * rng.normal(size=shape)).astype(np.float32)
  params = {"hidden": {"kernel": normal(3, 4, scale=0.6), "bias": normal(4, scale=0.1)},
            "head": {"kernel": normal(4, 2, scale=0.5), "bias": normal(2, scale=0.1)}}
  return params, (normal(16, 3), normal(16, 2))


def _dense_top_eigenvalue(loss, params, batch):
  flat, unravel = ravel_pytree(params)
  h = jax.jit(jax.hessian(lambda f, b: loss(unravel(f), b)))(flat, batch)
  eig = np.linalg.eigvalsh(np.asarray(h, np.float64))
  return eig[np.argmax(np.abs(eig))], eig


def test_mlp_matches_dense_hessian_vmapped_over_seeds():
  problems = [_mlp_problem(seed) for seed in (0, 1)]
  params, batch = jax.tree.map(lambda *a: np.stack(a), *problems)
  keys = jax.random.split(jax.random.PRNGKey(7), 2)
  fn = lambda p, b, k: curvature.hessian_max_eigenvalue(_mlp_loss, p, b, k, 300)
  batched = jax.jit(jax.vmap(fn))(params, batch, keys)
  for i, (params_i, batch_i) in enumerate(problems):
    expected, eig = _dense_top_eigenvalue(_mlp_loss, params_i, batch_i)
    mags = np.sort(np.abs(eig))
    assert mags[-2] / mags[-1] < 0.9  # a gap, so 300 iterations converge.
    assert batched[i] == pytest.approx(expected, rel=1e-3)
