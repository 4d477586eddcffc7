import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from plastix import ntk

_RNG = np.random.default_rng(0)
_X = _RNG.normal(size=(6, 3)).astype(np.float32)


def test_scalar_linear_model_kernel_is_x_xt():
  w = jnp.array([0.5, -1.0, 2.0])
  apply_fn = lambda p, x: x @ p  # f(x) = w . x: grad_w f = x.
  gram = jax.jit(lambda p, x: ntk.ntk_gram(apply_fn, p, x))(w, _X)
  np.testing.assert_allclose(gram, _X @ _X.T, rtol=1e-5, atol=1e-5)


def test_multi_output_dense_kernel_traces_over_outputs():
  dense = nn.Dense(4)
  params = {"kernel": _RNG.normal(size=(3, 4)).astype(np.float32), "bias": np.zeros(4, np.float32)}
  apply_fn = lambda p, x: dense.apply({"params": p}, x)

  @jax.jit
  def grams(p, x):
    return (ntk.ntk_gram(apply_fn, p, x), ntk.ntk_gram(apply_fn, p, x, output=2),
            ntk.ntk_gram(apply_fn, p, x, num_examples=4, output=0))

  trace, single, sub = grams(params, _X)
  # grad of f_c wrt (W, b) is (x e_c^T, e_c): K^(c) = X X^T + 1, the trace adds 4 of them.
  np.testing.assert_allclose(single, _X @ _X.T + 1, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(trace, 4 * (_X @ _X.T + 1), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(sub, _X[:4] @ _X[:4].T + 1, rtol=1e-5, atol=1e-5)


class _MLP(nn.Module):
  """A 3 -> 5 -> 3 ReLU MLP."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(3, name="head")(nn.relu(nn.Dense(5, name="hidden")(x)))


def test_mlp_kernel_matches_dense_jacobian_and_vmaps_over_seeds():
  apply_fn = lambda p, x: _MLP().apply({"params": p}, x)
  make = lambda r: {"hidden": {"kernel": r.normal(size=(3, 5)), "bias": r.normal(size=5) * 0.1},
                    "head": {"kernel": r.normal(size=(5, 3)), "bias": r.normal(size=3) * 0.1}}
  seeds = [jax.tree.map(lambda a: a.astype(np.float32), make(np.random.default_rng(s)))
           for s in (1, 2)]
  stacked = jax.tree.map(lambda *a: np.stack(a), *seeds)
  fn = lambda p: ntk.ntk_gram(apply_fn, p, _X)
  batched = jax.jit(jax.vmap(fn))(stacked)
  for i, params in enumerate(seeds):
    flat, unravel = ravel_pytree(params)
    jac = jax.jit(jax.jacrev(lambda f: apply_fn(unravel(f), _X)))(flat)  # [n, C, P]
    expected = np.einsum("icp,jcp->ij", jac, jac)
    np.testing.assert_allclose(batched[i], expected, rtol=1e-4, atol=1e-4)


def test_stats_by_hand():
  stats = jax.jit(ntk.ntk_stats)(jnp.array([[2.0, 1.0], [1.0, 2.0]]))
  # sum|K| = 6, tr = 4; cosine |1| / sqrt(2 * 2); eigenvalues 3, 1.
  p = np.array([0.75, 0.25])
  assert stats["diagonal_share"] == pytest.approx(2 / 3)
  assert stats["off_diagonal_mass"] == pytest.approx(1 / 3)
  assert stats["off_diagonal_cosine"] == pytest.approx(0.5)
  assert stats["top_eigenvalue_share"] == pytest.approx(0.75, rel=1e-5)
  assert stats["effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-5)


@pytest.mark.parametrize("gram, expected", [
    # diagonal: all mass on the diagonal, flat spectrum.
    (np.diag([1.0, 1.0, 1.0, 1.0]), dict(diagonal_share=1.0, off_diagonal_mass=0.0,
                                          off_diagonal_cosine=0.0, effective_rank=4.0,
                                          top_eigenvalue_share=0.25)),
    # rank one (all ones): every pair perfectly aligned, one eigenvalue 3.
    (np.ones((3, 3)), dict(diagonal_share=1 / 3, off_diagonal_mass=2 / 3,
                           off_diagonal_cosine=1.0, effective_rank=1.0,
                           top_eigenvalue_share=1.0)),
    (np.zeros((3, 3)), dict(diagonal_share=0.0, off_diagonal_mass=0.0, off_diagonal_cosine=0.0,
                            effective_rank=0.0, top_eigenvalue_share=0.0)),
])
def test_stats_on_extreme_kernels(gram, expected):
  stats = jax.jit(ntk.ntk_stats)(jnp.asarray(gram, jnp.float32))
  for name, value in expected.items():
    assert stats[name] == pytest.approx(value, abs=1e-5), name
