import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from plastix import losses
from plastix import optim

SUPPORT = jnp.array([0.0, 1.0, 2.0, 3.0])


# Classification and regression.


def test_softmax_cross_entropy_matches_optax_with_smoothed_targets():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 5)), jnp.float32)
  labels = jnp.array([[0, 4, 2], [1, 1, 3]])
  ours = jax.jit(losses.softmax_cross_entropy)
  for smoothing in (0.0, 0.1, 0.3):
    targets = np.full((2, 3, 5), smoothing / 5)
    for idx in np.ndindex(2, 3):
      targets[idx][labels[idx]] += 1.0 - smoothing
    chex.assert_trees_all_close(ours(logits, labels, smoothing),
                                optax.softmax_cross_entropy(logits, jnp.asarray(targets)),
                                rtol=1e-6)


def test_softmax_cross_entropy_smoothing_can_be_traced():
  logits = jnp.array([[2.0, -1.0, 0.5]])
  labels = jnp.array([0])
  grid = jnp.array([0.0, 0.2])
  out = jax.jit(jax.vmap(lambda a: losses.softmax_cross_entropy(logits, labels, a)))(grid)
  log_p = np.asarray(jax.nn.log_softmax(logits[0]))
  expected = [-log_p[0], -(0.8 + 0.2 / 3) * log_p[0] - (0.2 / 3) * (log_p[1] + log_p[2])]
  np.testing.assert_allclose(out[:, 0], expected, rtol=1e-6)


def test_mse():
  pred = jnp.array([[1.0, 2.0], [0.0, -1.0]])
  target = jnp.array([[0.0, 2.0], [2.0, 1.0]])
  np.testing.assert_allclose(losses.mse(pred, target), [0.5, 4.0], rtol=1e-6)
  with pytest.raises(AssertionError):
    losses.mse(jnp.zeros((3, 1)), jnp.zeros(3))


# Distributional targets.


def test_two_hot_by_hand():
  targets = jnp.array([1.25, -5.0, 3.0, 2.0, 9.0, 0.5])
  expected = [[0.0, 0.75, 0.25, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0],
              [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.0, 0.0]]
  probs = np.asarray(jax.jit(losses.two_hot)(targets, SUPPORT))
  np.testing.assert_allclose(probs, expected, atol=1e-7)
  np.testing.assert_allclose(probs @ np.asarray(SUPPORT), np.clip(targets, 0.0, 3.0), rtol=1e-6)


def test_two_hot_uneven_support_and_batch_axes():
  support = jnp.array([-1.0, 0.0, 10.0])
  probs = jax.jit(losses.two_hot)(jnp.array([[5.0, -0.5], [7.5, 0.0]]), support)
  assert probs.shape == (2, 2, 3)
  np.testing.assert_allclose(probs, [[[0.0, 0.5, 0.5], [0.5, 0.5, 0.0]],
                                     [[0.0, 0.25, 0.75], [0.0, 1.0, 0.0]]], atol=1e-7)


def test_bin_edges():
  edges = jax.jit(losses.bin_edges)
  np.testing.assert_allclose(edges(SUPPORT), [-0.5, 0.5, 1.5, 2.5, 3.5])
  np.testing.assert_allclose(edges(jnp.array([0.0, 1.0, 4.0])), [-0.5, 0.5, 2.5, 5.5])


def _hl_gauss_by_hand(y, support, sigma):
  y = min(max(y, support[0]), support[-1])
  edges = ([support[0] - (support[1] - support[0]) / 2]
           + [(a + b) / 2 for a, b in zip(support[:-1], support[1:])]
           + [support[-1] + (support[-1] - support[-2]) / 2])
  cdf = [0.5 * (1.0 + math.erf((e - y) / (sigma * math.sqrt(2.0)))) for e in edges]
  return [(hi - lo) / (cdf[-1] - cdf[0]) for lo, hi in zip(cdf[:-1], cdf[1:])]


def test_hl_gauss_matches_the_erf_formula():
  support = [0.0, 1.0, 2.0, 4.0, 5.0]
  targets = [[0.0, 1.7], [4.4, 12.0]]
  hl_gauss = jax.jit(losses.hl_gauss)
  for sigma in (0.3, 0.75, 2.0):
    probs = np.asarray(hl_gauss(jnp.array(targets), jnp.array(support), sigma))
    assert probs.shape == (2, 2, 5)
    expected = [[_hl_gauss_by_hand(y, support, sigma) for y in row] for row in targets]
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)


def _log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


@pytest.mark.parametrize("loss_fn, target_fn", [
    (lambda l, y: losses.two_hot_loss(l, y, SUPPORT), lambda y: losses.two_hot(y, SUPPORT)),
    (lambda l, y: losses.hl_gauss_loss(l, y, SUPPORT, 0.75),
     lambda y: losses.hl_gauss(y, SUPPORT, 0.75))], ids=["two_hot", "hl_gauss"])
def test_categorical_losses_are_cross_entropies(loss_fn, target_fn):
  logits = jnp.array([[0.3, -1.0, 2.0, 0.0], [1.0, 1.0, -2.0, 0.5]])
  y = jnp.array([1.4, 2.9])
  probs = np.asarray(jax.jit(target_fn)(y))
  value, grads = jax.jit(jax.vmap(jax.value_and_grad(loss_fn)))(logits, y)
  log_p = _log_softmax(logits)
  np.testing.assert_allclose(value, -np.sum(probs * log_p, -1), rtol=1e-6)
  # d/dlogits of the cross-entropy is softmax(logits) - targets.
  np.testing.assert_allclose(grads, np.exp(log_p) - probs, atol=1e-6)


def test_expected_value():
  logits = jnp.log(jnp.array([[0.25, 0.75], [1.0, 1.0]]))
  np.testing.assert_allclose(jax.jit(losses.expected_value)(logits, jnp.array([0.0, 4.0])),
                             [3.0, 2.0], rtol=1e-6)


# Penalties.


def _params():
  rng = np.random.default_rng(1)
  return {"dense": {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
                    "bias": jnp.ones(2)},
          "head": {"kernel": jnp.asarray(rng.normal(size=(2, 1)), jnp.float32),
                   "bias": -jnp.ones(1)}}


def _data_loss(p):
  x = jnp.array([0.5, -1.0, 2.0])
  h = jnp.tanh(x @ p["dense"]["kernel"] + p["dense"]["bias"])
  return jnp.sum(jnp.square(h @ p["head"]["kernel"] + p["head"]["bias"] - 3.0))


def test_l2_penalty_value():
  params = _params()
  s = 0.4
  kernels = sum(np.sum(np.square(params[k]["kernel"])) for k in ("dense", "head"))
  penalty = jax.jit(losses.l2_penalty, static_argnums=2)
  np.testing.assert_allclose(penalty(params, s, optim.kernel_mask), 0.5 * s * kernels, rtol=1e-6)
  np.testing.assert_allclose(penalty(params, s, None), 0.5 * s * (kernels + 3.0), rtol=1e-6)


def _train(tx, loss_fn, steps=4):
  def step(_, carry):
    params, state = carry
    updates, state = tx.update(jax.grad(loss_fn)(params), state, params)
    return optax.apply_updates(params, updates), state

  run = jax.jit(lambda p: jax.lax.fori_loop(0, steps, step, (p, tx.init(p)))[0])
  return run(_params())


@pytest.mark.parametrize("mask", [None, optim.kernel_mask])
def test_l2_penalty_with_adam_is_coupled_decay_not_adamw(mask):
  lr, s = 0.05, 0.5
  ours = _train(optax.adam(lr), lambda p: _data_loss(p) + losses.l2_penalty(p, s, mask))
  coupled = _train(optax.chain(optax.add_decayed_weights(s, mask), optax.adam(lr)), _data_loss)
  decoupled = _train(optax.adamw(lr, weight_decay=s, mask=mask), _data_loss)
  chex.assert_trees_all_close(ours, coupled, rtol=1e-5, atol=1e-6)
  assert not np.allclose(ours["dense"]["kernel"], decoupled["dense"]["kernel"], atol=1e-4)


def test_grad_norm_penalty_on_a_quadratic():
  a = jnp.array([[2.0, 1.0], [1.0, 3.0]])
  b = jnp.array([1.0, -1.0])
  c = 1.5
  loss_fn = lambda p, a, b: 0.5 * p["x"] @ a @ p["x"] + b @ p["x"] + c * p["y"] ** 2
  x, y, s = np.array([0.5, -2.0]), 0.4, 0.3
  params = {"x": jnp.asarray(x, jnp.float32), "y": jnp.array(y)}
  penalty = lambda p: losses.grad_norm_penalty(loss_fn, p, a, b, strength=s)
  value, grads = jax.jit(jax.value_and_grad(penalty))(params)
  a_np = np.asarray(a)
  gx, gy = a_np @ x + np.asarray(b), 2.0 * c * y  # the gradient, by hand
  np.testing.assert_allclose(value, s * (gx @ gx + gy ** 2), rtol=1e-6)
  chex.assert_trees_all_close(grads, {"x": 2.0 * s * a_np @ gx, "y": 2.0 * s * 2.0 * c * gy},
                              rtol=1e-6)
