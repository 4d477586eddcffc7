import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import gradients

_alignment = jax.jit(gradients.gradient_alignment)


def _brute_force(g):
  g = np.asarray(g, np.float64)
  norms = np.linalg.norm(g, axis=1)
  cos = [g[i] @ g[j] / (norms[i] * norms[j]) if norms[i] * norms[j] > 0 else 0.0
         for i, j in itertools.permutations(range(len(g)), 2)]
  return np.mean(cos)


def test_alignment_by_hand():
  g = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
  # cosines: (0, 1) = 0, (0, 2) = (1, 2) = 1 / sqrt(2): mean over 3 pairs = sqrt(2) / 3.
  assert _alignment(g) == pytest.approx(np.sqrt(2) / 3, rel=1e-6)
  # The same gradients split over two leaves of a pytree.
  assert _alignment({"a": g[:, :1], "b": g[:, 1:]}) == pytest.approx(np.sqrt(2) / 3, rel=1e-6)
  assert _alignment(np.array([[1.0, 2.0], [2.0, 4.0]], np.float32)) == pytest.approx(1.0)
  assert _alignment(np.array([[1.0, 2.0], [-2.0, -4.0]], np.float32)) == pytest.approx(-1.0)
  # A zero gradient is orthogonal to everything: only pair (0, 1) has cosine 1.
  assert _alignment(np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 0.0]], np.float32)) == (
      pytest.approx(1 / 3))
  with pytest.raises(ValueError):
    gradients.gradient_alignment(np.ones((1, 3), np.float32))


def test_alignment_matches_brute_force():
  g = np.random.default_rng(0).normal(size=(9, 5)) + 0.5
  assert _alignment(g.astype(np.float32)) == pytest.approx(_brute_force(g), rel=1e-5)


def _squared_error(params, batch):
  x, y = batch
  return jnp.mean(jnp.square(x @ params["w"] + params["b"] - y))


def test_per_example_grads_of_a_linear_regression():
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=4).astype(np.float32)
  params = {"w": np.array([0.5, -1.0, 2.0], np.float32), "b": np.float32(0.3)}
  grads = jax.jit(lambda p, b: gradients.per_example_grads(_squared_error, p, b))(params, (x, y))
  r = x @ params["w"] + params["b"] - y  # grad of (w.x + b - y)^2 is 2 r (x, 1).
  np.testing.assert_allclose(grads["w"], 2 * r[:, None] * x, rtol=1e-5)
  np.testing.assert_allclose(grads["b"], 2 * r, rtol=1e-5)
  expected = _brute_force(np.concatenate([2 * r[:, None] * x, 2 * r[:, None]], axis=1))
  value = jax.jit(lambda p, b: gradients.loss_gradient_alignment(_squared_error, p, b))(
      params, (x, y))
  assert value == pytest.approx(expected, rel=1e-5)


def test_alignment_vmaps_over_seeds():
  g = np.random.default_rng(2).normal(size=(2, 6, 4)).astype(np.float32)
  batched = jax.jit(jax.vmap(gradients.gradient_alignment))(g)
  np.testing.assert_allclose(batched, [_alignment(g[0]), _alignment(g[1])], rtol=1e-5)
