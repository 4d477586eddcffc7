import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from plastix import plasticity_probe as pp

# A linear model y = x W + b (3 outputs) on 4 examples in 8 dimensions: any
# target on these inputs is exactly reachable.
_XL = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)


def _linear_apply(params, x):
  return x @ params["w"] + params["b"]


def _linear_init(key):
  return {"w": jax.random.normal(key, (8, 3)) / np.sqrt(8), "b": jnp.zeros(3)}


def test_probe_target_by_hand():
  params = {"w": np.zeros((8, 3), np.float32), "b": np.array([1.0, 2.0, 3.0], np.float32)}
  target = {"w": np.ones((8, 3), np.float32), "b": np.zeros(3, np.float32)}
  g = pp.probe_target(_linear_apply, params, target, _XL, omega=0.5)
  expected = np.array([1.0, 2.0, 3.0]) + np.sin(0.5 * _XL.sum(axis=1, keepdims=True))
  np.testing.assert_allclose(g, np.broadcast_to(expected, (4, 3)), rtol=1e-5, atol=1e-6)


def test_linear_probe_is_solvable_with_full_batch_gradient_descent():
  z = np.concatenate([_XL, np.ones((4, 1), np.float32)], axis=1)
  # The Hessian of mean_{n,c} (f - y)^2 in one output's (w_c, b_c) is 2 Z^T Z / (n C).
  curvature = np.linalg.eigvalsh(2 * z.T @ z / 12).max()

  @jax.jit
  def loss(params, key, learning_rate):
    _, targets = pp.probe_networks(_linear_init, key, 3)
    return pp.probe_loss(_linear_apply, optax.sgd(learning_rate), params, targets, _XL, key,
                         num_steps=300)

  params = _linear_init(jax.random.PRNGKey(1))
  key = jax.random.PRNGKey(2)
  assert loss(params, key, 0.0) > 0.1  # no progress: sin(1e5 f) targets are far from f.
  assert loss(params, key, 1.0 / curvature) < 1e-6


# A 3 -> 16 -> 2 ReLU MLP fitted with Adam on minibatches of 8 of 16 examples.
_X = np.random.default_rng(1).normal(size=(16, 3)).astype(np.float32)
# LeCun-normal weights (std 1 / sqrt(fan_in)) and zero biases, drawn in one call
# (one random op: a fast compile).
_SCALE = {"w0": np.full((3, 16), 3 ** -0.5, np.float32), "b0": np.zeros(16, np.float32),
          "w1": np.full((16, 2), 16 ** -0.5, np.float32), "b1": np.zeros(2, np.float32)}
_FLAT, _UNRAVEL = ravel_pytree(_SCALE)


def _mlp_apply(params, x):
  return jax.nn.relu(x @ params["w0"] + params["b0"]) @ params["w1"] + params["b1"]


def _mlp_init(key):
  noise = _UNRAVEL(jax.random.normal(key, _FLAT.shape))
  return jax.tree.map(lambda n, s: n * s, noise, _SCALE)


_probe = functools.partial(pp.plasticity_loss, _mlp_apply, _mlp_init, optax.adam(1e-2),
                           num_targets=2, num_steps=60, batch_size=8)


def test_plasticity_loss_on_fresh_and_huge_networks_vmapped_over_seeds():
  key, other_key = jax.random.PRNGKey(3), jax.random.PRNGKey(11)
  networks = jax.jit(functools.partial(pp.probe_networks, _mlp_init, num_targets=2))
  own_fresh, _ = networks(key)    # the probe's own fresh reference network.
  other, _ = networks(other_key)  # another fresh init.
  huge = jax.tree.map(lambda p: 10.0 * p, other)   # 10x the weights: 100x the outputs.
  seeds = jax.tree.map(lambda *a: jnp.stack(a), own_fresh, other, huge)
  keys = jnp.stack([key, key, key])
  batched = jax.jit(jax.vmap(_probe, in_axes=(0, None, 0)))
  out = batched(seeds, _X, keys)
  again = batched(seeds, _X, keys)
  for name in out:  # deterministic in the key.
    np.testing.assert_array_equal(out[name], again[name])
  assert out["plasticity_loss"][0] == 0.0  # the same init as the reference: exactly 0.
  assert out["probe_loss"][0] == out["fresh_probe_loss"][0] > 0.0
  # Another fresh network: near 0 (in expectation 0), far below the huge network.
  assert abs(out["plasticity_loss"][1]) < 0.5 * out["fresh_probe_loss"][1]
  assert out["plasticity_loss"][2] > 1.0
  assert out["plasticity_loss"][2] > 10 * abs(out["plasticity_loss"][1])
  # vmapped seeds agree with separate calls; another key gives another answer.
  single = jax.jit(_probe)
  for i in range(3):
    alone = single(jax.tree.map(lambda a: a[i], seeds), _X, keys[i])
    for name, value in alone.items():
      assert out[name][i] == pytest.approx(float(value), rel=1e-4, abs=1e-6), name
  assert single(other, _X, jax.random.PRNGKey(4))["probe_loss"] != out["probe_loss"][1]


# The same MLP with a state outside its parameters, as batch-norm statistics
# are: a per-input shift subtracted before the first layer, 0 when fresh.
def _shifted_apply(params, x, model_state):
  return _mlp_apply(params, x - model_state["shift"])


def _shifted_init(key):
  return _mlp_init(key), {"shift": jnp.zeros(3)}


_stateful_probe = jax.jit(functools.partial(
    pp.plasticity_loss, _shifted_apply, _shifted_init, optax.adam(1e-2), num_targets=2,
    num_steps=60, batch_size=8))


def test_a_model_state_is_the_probed_networks_own_and_fresh_networks_keep_theirs():
  key = jax.random.PRNGKey(3)
  (fresh, fresh_state), _ = pp.probe_networks(_shifted_init, key, 2)
  zero = _stateful_probe(fresh, _X, key, model_state=fresh_state)
  assert zero["plasticity_loss"] == 0.0  # the reference network, state and all.
  # A zero shift is no shift: the numbers of the model without a state (up to
  # rounding: the two are compiled apart).
  plain = jax.jit(_probe)(fresh, _X, key)
  for name in ("probe_loss", "fresh_probe_loss"):
    np.testing.assert_allclose(zero[name], plain[name], rtol=1e-6)
  # The probed network's state moves its own loss, not the fresh network's,
  # whose targets and fit run with its own (initial) state.
  shifted = _stateful_probe(fresh, _X, key, model_state={"shift": jnp.full(3, 4.0)})
  assert shifted["fresh_probe_loss"] == zero["fresh_probe_loss"]
  assert shifted["probe_loss"] != zero["probe_loss"]
  # Fitting with a state trains the parameters alone: the same loss as a
  # model that closes over the state.
  state = {"shift": jnp.arange(3.0)}
  y = jnp.sin(_X[:, :2])
  fit = functools.partial(pp.fit_target, optimizer=optax.adam(1e-2), params=fresh, x=_X, y=y,
                          key=key, num_steps=30, batch_size=8)
  closed = fit(lambda p, x: _shifted_apply(p, x, state))
  np.testing.assert_allclose(fit(_shifted_apply, model_state=state), closed, rtol=1e-6)
