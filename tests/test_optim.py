import functools

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


# Masks.


def test_kernel_mask_on_flax_layers():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class Net(nn.Module):

    @nn.compact
    def __call__(self, tokens, image):
      x = nn.Embed(10, 4, name="embed")(tokens)
      x = x + self.param("pos_embedding", nn.initializers.normal(), (1, 3, 4))
      x = nn.LayerNorm(name="ln")(x)
      x = nn.RMSNorm(name="rms")(x)
      x = nn.MultiHeadDotProductAttention(num_heads=2, name="attn")(x)
      y = nn.Conv(4, (3, 3), name="conv")(image)
      y = nn.BatchNorm(use_running_average=False, name="bn")(y)
      return nn.Dense(2, name="head")(x.mean(1) + y.mean((1, 2)))

  shapes = jax.eval_shape(Net().init, jax.random.PRNGKey(0), jnp.zeros((2, 3), jnp.int32),
                          jnp.zeros((2, 5, 5, 1)))
  mask = optim.kernel_mask(shapes["params"])
  flat = {jax.tree_util.keystr(path): m
          for path, m in jax.tree_util.tree_leaves_with_path(mask)}
  included = {k for k, m in flat.items() if m}
  assert included == {"['attn']['query']['kernel']", "['attn']['key']['kernel']",
                      "['attn']['value']['kernel']", "['attn']['out']['kernel']",
                      "['conv']['kernel']", "['head']['kernel']"}
  for excluded in ("['embed']['embedding']", "['pos_embedding']", "['ln']['scale']",
                   "['ln']['bias']", "['rms']['scale']", "['bn']['scale']", "['bn']['bias']",
                   "['conv']['bias']", "['head']['bias']"):
    assert flat[excluded] is False


def test_resolve_mask_accepts_none_prefixes_and_callables():
  params = _params()
  assert optim.resolve_mask(None, params) == jax.tree.map(lambda _: True, params)
  prefix = {"dense": False, "head": {"kernel": True, "bias": False}}
  assert optim.resolve_mask(prefix, params) == {
      "dense": {"kernel": False, "bias": False}, "head": {"kernel": True, "bias": False}}
  assert optim.resolve_mask(optim.kernel_mask, params) == optim.kernel_mask(params)


# l2_init.


def test_l2_init_closed_form():
  lr, s = 0.1, 0.3
  p0 = _params()
  p1 = jax.tree.map(lambda p: 2.0 * p + 0.5, p0)
  grads = jax.tree.map(jnp.cos, p1)
  tx = optax.chain(optim.l2_init(s, mask=optim.kernel_mask), optax.sgd(lr))
  updates, _ = tx.update(grads, tx.init(p0), p1)
  expected = jax.tree.map(lambda g, a, b: -lr * (g + s * (a - b)), grads, p1, p0)
  expected["dense"]["bias"] = -lr * grads["dense"]["bias"]
  expected["head"]["bias"] = -lr * grads["head"]["bias"]
  chex.assert_trees_all_close(updates, expected, rtol=1e-6)


def test_l2_init_equals_adam_on_the_penalised_loss():
  mask = optim.kernel_mask
  lr, s = 1e-2, 0.7
  p0 = _params()
  x = jnp.linspace(-1.0, 1.0, 3)

  def loss(p):
    h = jnp.tanh(x @ p["dense"]["kernel"] + p["dense"]["bias"])
    return jnp.sum(jnp.square(h @ p["head"]["kernel"] + p["head"]["bias"] - 1.0))

  def penalty(p):
    m = optim.resolve_mask(mask, p)
    terms = jax.tree.map(lambda a, b, k: k * jnp.sum(jnp.square(a - b)), p, p0, m)
    return 0.5 * s * sum(jax.tree.leaves(terms))

  def train(tx, loss_fn):
    def step(_, carry):
      params, state = carry
      updates, state = tx.update(jax.grad(loss_fn)(params), state, params)
      return optax.apply_updates(params, updates), state
    return jax.jit(lambda p: jax.lax.fori_loop(0, 4, step, (p, tx.init(p)))[0])(p0)

  params_a = train(optax.chain(optim.l2_init(s, mask), optax.adam(lr)), loss)
  params_b = train(optax.adam(lr), lambda p: loss(p) + penalty(p))
  chex.assert_trees_all_close(params_a, params_b, rtol=1e-5, atol=1e-6)
  assert not np.allclose(params_a["head"]["kernel"], p0["head"]["kernel"])


def test_l2_init_strength_vmaps_over_a_grid():
  p0 = {"w": jnp.array([1.0, -2.0])}
  p1 = {"w": jnp.array([2.0, 0.0])}

  def update(strength):
    tx = optim.l2_init(strength)
    return tx.update({"w": jnp.zeros(2)}, tx.init(p0), p1)[0]["w"]

  out = jax.jit(jax.vmap(update))(jnp.array([0.0, 0.5, 2.0]))
  np.testing.assert_allclose(out, [[0.0, 0.0], [0.5, 1.0], [2.0, 4.0]], rtol=1e-6)


# normalize_and_project.


def _norm(x):
  return float(np.linalg.norm(np.asarray(x, np.float64)))


def test_normalize_and_project_restores_init_norms():
  p0 = _params()
  p1 = jax.tree.map(lambda p: 3.0 * p + 0.2, p0)
  updates = jax.tree.map(lambda p: jnp.sin(p) - 0.4, p1)
  tx = optim.normalize_and_project(mask=optim.kernel_mask)
  new_updates, _ = jax.jit(tx.update)(updates, tx.init(p0), p1)
  new = jax.tree.map(lambda p, u: np.asarray(p) + np.asarray(u), p1, new_updates)
  for name in ("dense", "head"):
    np.testing.assert_allclose(_norm(new[name]["kernel"]), _norm(p0[name]["kernel"]),
                               rtol=1e-6)
    moved = np.asarray(p1[name]["kernel"]) + np.asarray(updates[name]["kernel"])
    np.testing.assert_allclose(new[name]["kernel"],
                               moved * _norm(p0[name]["kernel"]) / _norm(moved), rtol=1e-5)
    np.testing.assert_array_equal(new_updates[name]["bias"], updates[name]["bias"])


def test_normalize_and_project_leaves_zero_init_leaves_unprojected():
  p0 = {"w": jnp.array([3.0, 4.0]), "b": jnp.zeros(2)}
  p1 = {"w": jnp.array([1.0, 0.0]), "b": jnp.ones(2)}
  updates = {"w": jnp.array([0.0, 1.0]), "b": jnp.array([0.5, -0.5])}
  tx = optim.normalize_and_project()
  new_updates, _ = tx.update(updates, tx.init(p0), p1)
  chex.assert_trees_all_close(optax.apply_updates(p1, new_updates),
                              {"w": jnp.full(2, 5.0 / np.sqrt(2.0)), "b": jnp.array([1.5, 0.5])},
                              rtol=1e-6)


def test_normalize_and_project_composes_with_adam():
  lr = 0.05
  tx = optax.chain(optax.adam(lr), optim.normalize_and_project(optim.kernel_mask))
  p0 = _params()
  out = _run(tx, p0, steps=5)
  plain = _run(optax.adam(lr), p0, steps=5)
  for name in ("dense", "head"):
    np.testing.assert_allclose(_norm(out[name]["kernel"]), _norm(p0[name]["kernel"]),
                               rtol=1e-5)
    assert not np.allclose(out[name]["kernel"], p0[name]["kernel"])
    # The toy gradients act elementwise, so unprojected biases follow plain Adam.
    chex.assert_trees_all_close(out[name]["bias"], plain[name]["bias"], rtol=1e-6)


# SAM.


def test_sam_takes_the_gradient_at_the_adversarial_point():
  lr = 0.1
  a = {"x": jnp.array([1.0, 3.0]), "y": jnp.array(2.0)}
  loss = lambda p, a: 0.5 * sum(jnp.sum(a[k] * p[k] ** 2) for k in p)
  params = {"x": jnp.array([1.0, -1.0]), "y": jnp.array(0.5)}

  def two_steps(rho):  # A traced rho, under jit, vmap and scan.
    tx = optim.sam(optax.sgd(lr), rho)

    def step(carry, _):
      params, state = carry
      grads = jax.grad(loss)(params, a)
      updates, state = tx.update(grads, state, params, grad_fn=optim.sam_grad_fn(loss, a))
      return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(step, (params, tx.init(params)), None, length=2)[0][0]

  rhos = (0.0, 0.05)
  out = jax.jit(jax.vmap(two_steps))(jnp.array(rhos))

  def by_hand(p, rho):
    g = {k: np.asarray(a[k]) * p[k] for k in p}
    norm = np.sqrt(sum(np.sum(v ** 2) for v in g.values()))
    return {k: p[k] - lr * np.asarray(a[k]) * (p[k] + rho * g[k] / norm) for k in p}

  start = jax.tree.map(np.asarray, params)
  for i, rho in enumerate(rhos):
    chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], out),
                                by_hand(by_hand(start, rho), rho), rtol=1e-5)


def test_sam_needs_grad_fn():
  tx = optim.sam(optax.sgd(0.1), 0.05)
  params = {"w": jnp.ones(2)}
  with pytest.raises(ValueError, match="grad_fn"):
    tx.update(params, tx.init(params), params)


# Optimizer-state resets.

LR, WD, B1, B2, EPS = 1e-2, 0.1, 0.9, 0.999, 1e-8
ADAM = optim.make_optimizer("adam", LR, WD, b1=B1, b2=B2, eps=EPS, weight_decay_mask="kernels")
ANCHORED = optax.chain(optim.l2_init(0.1), optax.adam(LR),
                       optim.normalize_and_project(optim.kernel_mask))


def _steps(tx, steps=3):
  params = _params()
  state = tx.init(params)
  for t in range(steps):
    grads = jax.tree.map(lambda p, t=t: jnp.sin(p * (t + 1)) + 0.1 * t, params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


@functools.lru_cache(maxsize=None)
def _trained(name):
  return _steps({"adam": ADAM, "anchored": ANCHORED}[name])


def _reset_mask(params):
  mask = jax.tree.map(lambda p: np.zeros(p.shape, bool), params)
  mask["dense"]["kernel"][:, 1] = True
  mask["head"]["bias"][:] = True
  return mask


def test_reset_moments_zeroes_masked_entries_and_keeps_counts():
  params, state = _trained("adam")
  mask = _reset_mask(params)
  new = jax.jit(lambda s, m: optim.reset_moments(ADAM, s, m))(state, mask)
  get = optax.tree_utils.tree_get
  for moment in ("mu", "nu"):
    old_m, new_m = get(state, moment), get(new, moment)
    expected = jax.tree.map(lambda x, k: np.where(k, 0.0, x), old_m, mask)
    chex.assert_trees_all_equal(new_m, expected)
    assert np.all(np.asarray(old_m["dense"]["kernel"]) != 0.0)
  assert int(new.count) == 3  # DecoupledWeightDecayState.count
  assert int(get(new.inner_state, "count")) == 3  # Adam's count


def test_reset_moments_next_adam_step_closed_form():
  params, state = _trained("adam")
  grads = jax.tree.map(lambda p: jnp.sin(p) + 0.5, params)
  updates, _ = ADAM.update(grads, optim.reset_moments(ADAM, state, _reset_mask(params)), params)
  t = 4  # Adam's count after the update.
  g = np.asarray(grads["dense"]["kernel"][:, 1])
  m = (1 - B1) * g / (1 - B1 ** t)
  v = (1 - B2) * g ** 2 / (1 - B2 ** t)
  decay = LR * WD * np.asarray(params["dense"]["kernel"][:, 1])
  np.testing.assert_allclose(updates["dense"]["kernel"][:, 1],
                             -LR * m / (np.sqrt(v) + EPS) - decay, rtol=1e-5)
  kept, _ = ADAM.update(grads, state, params)
  np.testing.assert_array_equal(updates["dense"]["kernel"][:, 0], kept["dense"]["kernel"][:, 0])
  assert not np.allclose(updates["dense"]["kernel"][:, 1], kept["dense"]["kernel"][:, 1])


def test_reset_moments_keeps_regularizer_anchors():
  params, state = _trained("anchored")
  new = optim.reset_moments(ANCHORED, state, jax.tree.map(lambda p: True, params))
  chex.assert_trees_all_equal(new[0], state[0])  # l2_init's p_0
  chex.assert_trees_all_equal(new[2], state[2])  # normalize_and_project's init norms
  chex.assert_trees_all_equal(optax.tree_utils.tree_get(new, "mu"),
                              jax.tree.map(jnp.zeros_like, params))
  chex.assert_trees_all_equal(optax.tree_utils.tree_get(new, "count"),
                              optax.tree_utils.tree_get(state, "count"))


def test_reset_optimizer_state_is_a_fresh_init():
  params, state = _trained("adam")
  assert int(state.count) == 3
  new = optim.reset_optimizer_state(ADAM, params)
  chex.assert_trees_all_equal(new, ADAM.init(params))
  assert int(new.count) == 0 and int(optax.tree_utils.tree_get(new.inner_state, "count")) == 0
  chex.assert_trees_all_equal(optax.tree_utils.tree_get(new, "nu"),
                              jax.tree.map(jnp.zeros_like, params))


def test_reset_optimizer_state_recaptures_anchors():
  params, state = _trained("anchored")
  assert not np.allclose(state[0].init_params["dense"]["kernel"], params["dense"]["kernel"])
  new = optim.reset_optimizer_state(ANCHORED, params)
  chex.assert_trees_all_equal(new[0].init_params, params)
  chex.assert_trees_all_close(new[2].init_norms, jax.tree.map(_norm, params), rtol=1e-6)
