import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from plastix import optim


def _params():
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  return {"dense": {"kernel": jax.random.normal(k1, (3, 4)), "bias": jnp.ones(4)},
          "head": {"kernel": jax.random.normal(k2, (4, 2)), "bias": -jnp.ones(2)}}


def _run(tx, params, steps=5):
  state = tx.init(params)
  for t in range(steps):
    grads = jax.tree.map(lambda p, t=t: jnp.sin(p * (t + 1)) + 0.1 * t, params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


@pytest.mark.parametrize("mask", [None, optim.kernel_mask])
def test_decoupled_adam_equals_adamw(mask):
  lr, wd = 1e-2, 0.3
  ours = optim.decoupled_weight_decay(optax.adam(lr), wd, lr, mask=mask)
  ref = optax.adamw(lr, weight_decay=wd, mask=mask)
  chex.assert_trees_all_close(_run(ours, _params()), _run(ref, _params()), rtol=1e-6,
                              atol=1e-7)


def test_decoupled_adam_equals_adamw_with_a_schedule():
  sched = optax.linear_schedule(1e-2, 1e-3, 4)
  ours = optim.decoupled_weight_decay(optax.adam(sched), 0.5, sched)
  ref = optax.adamw(sched, weight_decay=0.5)
  chex.assert_trees_all_close(_run(ours, _params(), 6), _run(ref, _params(), 6),
                              rtol=1e-6, atol=1e-7)


def test_decoupled_sgd_closed_form():
  lr, wd = 0.1, 0.05
  params = _params()
  grads = jax.tree.map(lambda p: 2.0 * p + 1.0, params)
  tx = optim.decoupled_weight_decay(optax.sgd(lr), wd, lr)
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  expected = jax.tree.map(lambda p, g: p - lr * g - lr * wd * p, params, grads)
  chex.assert_trees_all_close(new, expected, rtol=1e-6)


def test_mask_leaves_biases_alone():
  lr, wd = 0.1, 0.5
  params = _params()
  zeros = jax.tree.map(jnp.zeros_like, params)
  tx = optim.decoupled_weight_decay(optax.sgd(lr), wd, lr, mask=optim.kernel_mask)
  updates, state = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates["dense"]["kernel"], -lr * wd * params["dense"]["kernel"],
                             rtol=1e-6)
  np.testing.assert_array_equal(updates["dense"]["bias"], 0.0)
  assert state.count == 1


def test_traced_weight_decay_vmaps_over_a_grid():
  params = {"w": jnp.array([1.0, -2.0])}
  grads = {"w": jnp.zeros(2)}

  def new_params(wd):
    tx = optim.decoupled_weight_decay(optax.sgd(0.1), wd, 0.1)
    updates, _ = tx.update(grads, tx.init(params), params)
    return optax.apply_updates(params, updates)["w"]

  out = jax.jit(jax.vmap(new_params))(jnp.array([0.0, 1.0, 2.0]))
  np.testing.assert_allclose(out, [[1.0, -2.0], [0.9, -1.8], [0.8, -1.6]], rtol=1e-6)


def test_update_without_params_is_an_error():
  tx = optim.decoupled_weight_decay(optax.sgd(0.1), 0.1, 0.1)
  with pytest.raises(ValueError, match="needs params"):
    tx.update({"w": jnp.ones(1)}, tx.init({"w": jnp.ones(1)}))


def test_make_optimizer_rejects_unknown_names():
  with pytest.raises(ValueError, match="unknown optimizer 'adamax'"):
    optim.make_optimizer("adamax", 1e-3, 0.0)
  with pytest.raises(ValueError, match="unknown weight_decay_mask"):
    optim.make_optimizer("adam", 1e-3, 0.0, weight_decay_mask="biases")
