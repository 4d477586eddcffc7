import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import optim
from plastix import probes
from plastix import resets

DEAD = -100.0  # a bias that keeps a unit below zero on every input here.


class TinyMLP(nn.Module):
  """dense_0 -> [norm_0] -> relu -> dense_1 -> [norm_1] -> relu -> head."""
  widths: tuple = (6, 5)
  outputs: int = 3
  norm: bool = False

  @nn.compact
  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.widths):
      x = nn.Dense(width, name=f"dense_{i}")(x)
      if self.norm:
        x = nn.LayerNorm(name=f"norm_{i}")(x)
      x = nn.relu(x)
      self.sow("intermediates", "activations", x)
    return nn.Dense(self.outputs, name="head")(x)


class TinyCNN(nn.Module):
  """conv_0 -> relu -> conv_1 -> relu -> NHWC flatten -> dense_0 -> relu -> head."""

  @nn.compact
  def __call__(self, x):
    for i, channels in enumerate((4, 5)):
      x = nn.relu(nn.Conv(channels, (3, 3), name=f"conv_{i}")(x))
      self.sow("intermediates", "activations", x)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(6, name="dense_0")(x))
    self.sow("intermediates", "activations", x)
    return nn.Dense(3, name="head")(x)


MLP_LAYERS = (("dense_0", "dense_1"), ("dense_1", "head"))
CNN_LAYERS = (("conv_0", "conv_1"), ("conv_1", "dense_0"), ("dense_0", "head"))
MLP_DEAD = {"dense_0": [1, 4], "dense_1": [0, 3]}
CNN_DEAD = {"conv_0": [1], "conv_1": [2], "dense_0": [0, 5]}
OPTIMIZER = optim.make_optimizer("adam", 1e-2, 1e-3)


def _inputs(kind, rng):
  shape = (16, 4) if kind == "mlp" else (8, 4, 4, 2)
  return jnp.asarray(rng.uniform(size=shape), jnp.float32)


def _model(kind):
  return TinyMLP() if kind == "mlp" else TinyCNN()


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, x):
  logits, state = model.apply({"params": params}, x, mutable=["intermediates"])
  return logits, list(state["intermediates"]["activations"])


# Parameters and optimizer states are drawn with NumPy (a LeCun-normal kernel,
# zero bias, unit norm scale, as flax initialises): compiling JAX's random
# number generators would dominate the run time of these tests.


def _init(model, x, rng):
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]

  def draw(path, s):
    leaf = path[-1].key
    if leaf == "kernel":
      value = rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))
    else:
      value = np.full(s.shape, 1.0 if leaf == "scale" else 0.0)
    return jnp.asarray(value, s.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _adam_state(params, rng, count=2):
  """An Adam state `count` steps in, with every moment nonzero (a missed reset shows)."""
  shapes = jax.eval_shape(OPTIMIZER.init, params)
  fill = lambda s: jnp.asarray(
      np.full(s.shape, count) if s.dtype == jnp.int32 else rng.uniform(0.5, 1.5, s.shape),
      s.dtype)
  return jax.tree.map(fill, shapes)


def _kill(params, dead):
  """Dead units by construction: bias DEAD. Every other unit gets a nonnegative kernel
  column and bias 0.1, so on nonnegative inputs it is alive by construction."""
  out = dict(params)
  for name, units in dead.items():
    kernel, bias = np.array(out[name]["kernel"]), np.full(out[name]["bias"].shape, 0.1)
    alive = np.setdiff1d(np.arange(bias.size), units)
    kernel[..., alive] = np.abs(kernel[..., alive])
    bias[units] = DEAD
    out[name] = {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias, jnp.float32)}
  return out


@functools.lru_cache(maxsize=None)
def _setup(kind, seed=0):
  """Model, params with dead units, an Adam state, inputs, fresh params."""
  rng = np.random.default_rng(seed)
  model = _model(kind)
  x = _inputs(kind, rng)
  params = _kill(_init(model, x, rng), MLP_DEAD if kind == "mlp" else CNN_DEAD)
  return model, params, _adam_state(params, rng), x, _init(model, x, rng)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _redo(optimizer, params, opt_state, acts, fresh, layers, tau=0.0):
  return resets.redo(optimizer, params, opt_state, acts, fresh, layers, tau)


def _np(tree):
  return jax.tree.map(lambda a: np.array(a), tree)


def _stack(*trees):
  """The trees stacked on a new leading (seed) axis, in NumPy."""
  return jax.tree.map(lambda *a: np.stack([np.asarray(x) for x in a]), *trees)


def _take(tree, i):
  return jax.tree.map(lambda a: np.asarray(a)[i], tree)


@jax.jit
def _dead_fractions(acts):
  return [probes.dormant_fraction(a, 0.0) for a in acts]


def _adam(opt_state):
  return opt_state.inner_state[0]


def _expected_mlp(params, fresh):
  """ReDo of MLP_DEAD by hand: (expected params, changed-entries mask)."""
  p, f = _np(params), _np(fresh)
  m = jax.tree.map(lambda a: np.zeros(a.shape, bool), p)
  for name, units in MLP_DEAD.items():  # incoming: columns and bias entries.
    p[name]["kernel"][:, units] = f[name]["kernel"][:, units]
    p[name]["bias"][units] = f[name]["bias"][units]
    m[name]["kernel"][:, units] = True
    m[name]["bias"][units] = True
  for name, nxt in MLP_LAYERS:  # outgoing: rows of the next kernel, zeroed last.
    p[nxt]["kernel"][MLP_DEAD[name], :] = 0.0
    m[nxt]["kernel"][MLP_DEAD[name], :] = True
  return p, m


def _expected_cnn(params, fresh):
  """ReDo of CNN_DEAD by hand, including the NHWC flatten (5 channels) into dense_0."""
  p, f = _np(params), _np(fresh)
  m = jax.tree.map(lambda a: np.zeros(a.shape, bool), p)
  for name, units in CNN_DEAD.items():
    p[name]["kernel"][..., units] = f[name]["kernel"][..., units]
    p[name]["bias"][units] = f[name]["bias"][units]
    m[name]["kernel"][..., units] = True
    m[name]["bias"][units] = True
  p["conv_1"]["kernel"][:, :, 1, :] = 0.0  # conv_0 channel 1 -> conv_1 input channel 1.
  m["conv_1"]["kernel"][:, :, 1, :] = True
  rows = np.arange(80)[np.arange(80) % 5 == 2]  # conv_1 channel 2 after the flatten.
  assert rows.tolist() == list(range(2, 80, 5))
  p["dense_0"]["kernel"][rows, :] = 0.0
  m["dense_0"]["kernel"][rows, :] = True
  p["head"]["kernel"][[0, 5], :] = 0.0
  m["head"]["kernel"][[0, 5], :] = True
  return p, m


# ----------------------------------------------------------------------------
# Shrink and perturb.


def _sp_params():
  params = {"a": {"kernel": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "bias": jnp.array([1.0, -1.0])},
            "b": {"kernel": jnp.array([[2.0], [-2.0]])}}
  fresh = {"a": {"kernel": jnp.array([[10.0, 20.0], [30.0, 40.0]]), "bias": jnp.array([5.0, 5.0])},
           "b": {"kernel": jnp.array([[1.0], [1.0]])}}
  return params, fresh


def test_shrink_and_perturb_by_hand():
  params, fresh = _sp_params()
  new = resets.shrink_and_perturb(params, fresh, 0.5, 0.1)
  # 0.5 * p + 0.1 * p_fresh.
  np.testing.assert_allclose(new["a"]["kernel"], [[1.5, 3.0], [4.5, 6.0]], rtol=1e-6)
  np.testing.assert_allclose(new["a"]["bias"], [1.0, 0.0], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(new["b"]["kernel"], [[1.1], [-0.9]], rtol=1e-6)


def test_shrink_and_perturb_identity_mask_and_vmap():
  params, fresh = _sp_params()
  chex.assert_trees_all_equal(resets.shrink_and_perturb(params, fresh, 1.0, 0.0), params)
  masked = resets.shrink_and_perturb(params, fresh, 0.0, 1.0, mask={"a": False, "b": True})
  chex.assert_trees_all_equal(masked["a"], params["a"])
  chex.assert_trees_all_equal(masked["b"], fresh["b"])
  # Traced strengths, vmapped over a seed axis.
  seeds_params, seeds_fresh = (_stack(t, jax.tree.map(lambda a: 2 * a, t))
                               for t in (params, fresh))
  shrink, perturb = np.float32([0.5, 0.25]), np.float32([0.1, 0.0])
  out = jax.jit(jax.vmap(resets.shrink_and_perturb))(seeds_params, seeds_fresh, shrink,
                                                     perturb)
  for i in range(2):
    one = resets.shrink_and_perturb(_take(seeds_params, i), _take(seeds_fresh, i),
                                    shrink[i], perturb[i])
    chex.assert_trees_all_close(_take(out, i), one, rtol=1e-6)


def test_shrink_and_perturb_optimizer_state_options():
  """The documented follow-ups: clear the moments (counts kept) or restart the optimizer."""
  _, params, opt_state, _, fresh = _setup("mlp")
  new = resets.shrink_and_perturb(params, fresh, 0.8, 0.2)
  cleared = jax.jit(lambda s: optim.reset_moments(
      OPTIMIZER, s, jax.tree.map(lambda p: True, new)))(opt_state)
  for leaf in jax.tree.leaves((_adam(cleared).mu, _adam(cleared).nu)):
    np.testing.assert_array_equal(leaf, 0.0)
  assert int(cleared.count) == int(_adam(cleared).count) == 2
  restarted = optim.reset_optimizer_state(OPTIMIZER, new)
  assert int(restarted.count) == int(_adam(restarted).count) == 0


def test_shrink_and_perturb_rejects_other_shapes():
  params, fresh = _sp_params()
  fresh["b"]["kernel"] = jnp.ones((3, 1))
  with pytest.raises(ValueError, match="shape"):
    resets.shrink_and_perturb(params, fresh, 0.5, 0.1)


# ----------------------------------------------------------------------------
# ReDo.


def test_dormant_masks_by_hand():
  a = jnp.array([[0.0, 1.0, 2.0, 0.01], [0.0, -3.0, 2.0, 0.01]])
  # m = [0, 2, 2, 0.01], layer mean 1.0025: s = [0, 1.995, 1.995, 0.00998].
  np.testing.assert_array_equal(resets.dormant_masks([a], 0.0)[0], [True, False, False, False])
  np.testing.assert_array_equal(resets.dormant_masks([a], 0.025)[0], [True, False, False, True])


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_redo_resets_exactly_the_dead_units(kind):
  model, params, opt_state, x, fresh = _setup(kind)
  layers = MLP_LAYERS if kind == "mlp" else CNN_LAYERS
  dead = MLP_DEAD if kind == "mlp" else CNN_DEAD
  logits, acts = _forward(model, params, x)
  masks = resets.dormant_masks(acts, 0.0)
  for (name, _), m in zip(layers, masks):  # exactly the units killed by construction.
    np.testing.assert_array_equal(np.flatnonzero(m), dead[name])

  new_params, new_state, info = _redo(OPTIMIZER, params, opt_state, acts, fresh, layers, 0.0)

  # (1) Dead units: the outputs on the probe batch are unchanged, exactly.
  new_logits, new_acts = _forward(model, new_params, x)
  np.testing.assert_array_equal(new_logits, logits)
  # (2) The dormant fraction measured again drops in every layer.
  for before, after in zip(_dead_fractions(acts), _dead_fractions(new_acts)):
    assert float(after) < float(before)
  # (3) Exactly the intended parameter entries changed; the rest is bit-identical.
  expected, changed = (_expected_mlp if kind == "mlp" else _expected_cnn)(params, fresh)
  chex.assert_trees_all_equal(_np(new_params), expected)
  chex.assert_trees_all_equal(_np(info.params_mask), changed)
  assert int(info.num_reset) == sum(len(u) for u in dead.values())
  # ... and Adam's moments are zeroed there, bit-identical elsewhere.
  for old, new in ((_adam(opt_state).mu, _adam(new_state).mu),
                   (_adam(opt_state).nu, _adam(new_state).nu)):
    for o, n, m in zip(jax.tree.leaves(old), jax.tree.leaves(new), jax.tree.leaves(changed)):
      assert np.all(np.asarray(o) != 0)  # so a missed reset would show.
      np.testing.assert_array_equal(n, np.where(m, 0.0, o))
  # (4) Step counts unchanged.
  assert int(new_state.count) == int(opt_state.count) == 2
  assert int(_adam(new_state).count) == int(_adam(opt_state).count) == 2


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_redo_vmapped_over_seeds_equals_separate_calls(kind):
  setups = [_setup(kind, seed) for seed in (0, 1)]
  model = setups[0][0]
  layers = MLP_LAYERS if kind == "mlp" else CNN_LAYERS
  acts = [_forward(model, s[1], s[3])[1] for s in setups]

  @jax.jit
  def batched(params, opt_state, acts, fresh, tau):
    return jax.vmap(lambda p, s, a, f: resets.redo(OPTIMIZER, p, s, a, f, layers, tau))(
        params, opt_state, acts, fresh)

  out = batched(_stack(*(s[1] for s in setups)), _stack(*(s[2] for s in setups)),
                _stack(*acts), _stack(*(s[4] for s in setups)), jnp.float32(0.0))
  for i, s in enumerate(setups):
    one = _redo(OPTIMIZER, s[1], s[2], acts[i], s[4], layers, 0.0)
    chex.assert_trees_all_equal(_take(out, i), _np(one))
    assert int(one[2].num_reset) == 4  # both seeds have 4 dead units by construction.


def test_redo_with_tau_resets_low_score_units():
  rng = np.random.default_rng(0)
  params, fresh = (_init(TinyMLP(), jnp.ones((1, 4)), rng) for _ in range(2))
  a0 = jnp.array([[0.0, 1.0, 2.0, 0.01, 1.0, 1.0]] * 2)  # units 0 and 3 below 0.025.
  a1 = jnp.ones((2, 5))
  new, state, info = _redo(None, params, None, [a0, a1], fresh, MLP_LAYERS, 0.025)
  assert state is None
  np.testing.assert_array_equal(info.unit_masks[0], [True, False, False, True, False, False])
  assert not np.any(info.unit_masks[1]) and int(info.num_reset) == 2
  new, params, fresh = _np(new), _np(params), _np(fresh)
  np.testing.assert_array_equal(new["dense_1"]["kernel"][[0, 3]], 0.0)
  np.testing.assert_array_equal(new["dense_0"]["kernel"][:, [0, 3]],
                                fresh["dense_0"]["kernel"][:, [0, 3]])
  np.testing.assert_array_equal(new["dense_1"]["kernel"][[1, 2, 4, 5]],
                                params["dense_1"]["kernel"][[1, 2, 4, 5]])


def _norm_setup():
  model = TinyMLP(norm=True)
  rng = np.random.default_rng(3)
  x = _inputs("mlp", rng)
  params, fresh = _init(model, x, rng), _init(model, x, rng)
  # LayerNorm outputs lie within sqrt(n - 1) of 0, so a norm bias of +3 with a
  # scale <= 1.2 keeps a unit alive and DEAD kills it.
  for i, (n, units) in enumerate(((6, [1, 4]), (5, [0, 3]))):
    bias = np.full(n, 3.0, np.float32)
    bias[units] = DEAD
    params[f"norm_{i}"] = {"scale": jnp.linspace(0.8, 1.2, n), "bias": jnp.asarray(bias)}
  return model, params, _adam_state(params, rng), x, fresh


def test_redo_resets_the_norm_entries_of_dead_units():
  model, params, opt_state, x, fresh = _norm_setup()
  _, acts = _forward(model, params, x)
  new, state, info = _redo(OPTIMIZER, params, opt_state, acts, fresh, MLP_LAYERS)
  for i, units in enumerate(([1, 4], [0, 3])):
    for leaf, value in (("scale", 1.0), ("bias", 0.0)):  # flax's fresh LayerNorm.
      got, old = np.asarray(new[f"norm_{i}"][leaf]), np.asarray(params[f"norm_{i}"][leaf])
      keep = np.setdiff1d(np.arange(old.size), units)
      np.testing.assert_array_equal(got[units], value)
      np.testing.assert_array_equal(got[keep], old[keep])
      mask = np.asarray(info.params_mask[f"norm_{i}"][leaf])
      np.testing.assert_array_equal(np.flatnonzero(mask), units)
      np.testing.assert_array_equal(np.asarray(_adam(state).mu[f"norm_{i}"][leaf])[units], 0.0)
      assert np.all(np.asarray(_adam(state).mu[f"norm_{i}"][leaf])[keep] != 0)
  _, new_acts = _forward(model, new, x)
  assert float(_dead_fractions(new_acts)[0]) < float(_dead_fractions(acts)[0])
  # Triples name the norm explicitly; None leaves it alone.
  triples = (("dense_0", "dense_1", None), ("dense_1", "head", None))
  new, _, info = _redo(None, params, None, acts, fresh, triples)
  chex.assert_trees_all_equal({k: new[k] for k in ("norm_0", "norm_1")},
                              {k: params[k] for k in ("norm_0", "norm_1")})


def test_redo_raises_on_shapes_that_do_not_fit():
  _, params, _, x, fresh = _setup("mlp")
  _, acts = _forward(TinyMLP(), params, x)
  with pytest.raises(ValueError, match="cannot read"):  # head reads dense_1, not dense_0.
    _redo(None, params, None, acts[:1], fresh, (("dense_0", "head"),))
  with pytest.raises(ValueError, match="activations"):
    _redo(None, params, None, acts, fresh, MLP_LAYERS[:1])
  with pytest.raises(ValueError, match="units"):
    _redo(None, params, None, acts[::-1], fresh, MLP_LAYERS)
  with pytest.raises(ValueError, match="not a top-level module"):
    _redo(None, params, None, acts[:1], fresh, (("dense_0", "dense_9"),))
  with pytest.raises(ValueError, match="listed twice"):
    _redo(None, params, None, acts[:1] * 2, fresh, (MLP_LAYERS[0],) * 2)
  _, cparams, _, cx, cfresh = _setup("cnn")
  _, cacts = _forward(TinyCNN(), cparams, cx)
  with pytest.raises(ValueError, match="NHWC flatten"):  # 6 inputs, 5 channels.
    _redo(None, cparams, None, cacts[1:2], cfresh, (("conv_1", "head"),))
  with pytest.raises(ValueError, match="input channels"):  # conv_1 reads 4 channels, not 5.
    _redo(None, cparams, None, cacts[1:2], cfresh, (("conv_1", "conv_1"),))
  crelu = [jnp.concatenate([a, a], -1) for a in acts]  # 2C activations for C units.
  with pytest.raises(ValueError, match="CReLU"):
    _redo(None, params, None, crelu, fresh, MLP_LAYERS)
  # Two layers whose inferred norm is the same module.
  cparams = {**cparams, "norm_0": {"scale": jnp.ones(4), "bias": jnp.zeros(4)}}
  masks = [jnp.zeros(4, bool), jnp.zeros(6, bool)]
  with pytest.raises(ValueError, match="same norm"):
    resets.reset_masks(cparams, (("conv_0", "conv_1"), ("dense_0", "head")), masks)


def test_reset_norm_statistics():
  rng = np.random.default_rng(0)
  stats = {"norm_0": {"mean": rng.normal(size=6), "var": rng.uniform(2, 3, 6)},
           "norm_1": {"mean": rng.normal(size=5), "var": rng.uniform(2, 3, 5)}}
  stats = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), stats)
  fresh = jax.tree.map(lambda a: jnp.zeros_like(a), stats)
  fresh = {k: {"mean": v["mean"], "var": v["var"] + 1.0} for k, v in fresh.items()}
  masks = [np.isin(np.arange(6), [1, 4]), np.isin(np.arange(5), [0, 3])]
  new = resets.reset_norm_statistics({"batch_stats": stats}, {"batch_stats": fresh},
                                     MLP_LAYERS, masks)["batch_stats"]
  for name, mask in zip(("norm_0", "norm_1"), masks):
    for leaf, value in (("mean", 0.0), ("var", 1.0)):
      got, old = np.asarray(new[name][leaf]), np.asarray(stats[name][leaf])
      np.testing.assert_array_equal(got[mask], value)
      np.testing.assert_array_equal(got[~mask], old[~mask])
  assert resets.reset_norm_statistics({}, {}, MLP_LAYERS, masks) == {}


# ----------------------------------------------------------------------------
# Head and full resets.


def test_reset_head():
  _, params, opt_state, _, fresh = _setup("mlp")
  new, state = resets.reset_head(OPTIMIZER, params, opt_state, fresh)
  chex.assert_trees_all_equal(new["head"], fresh["head"])
  for name in ("dense_0", "dense_1"):
    chex.assert_trees_all_equal(new[name], params[name])
    chex.assert_trees_all_equal(_adam(state).mu[name], _adam(opt_state).mu[name])
    chex.assert_trees_all_equal(_adam(state).nu[name], _adam(opt_state).nu[name])
  for leaf in jax.tree.leaves((_adam(state).mu["head"], _adam(state).nu["head"])):
    np.testing.assert_array_equal(leaf, 0.0)
  assert int(state.count) == int(_adam(state).count) == 2


def test_full_reset():
  _, _, _, _, fresh = _setup("mlp")
  params, state = resets.full_reset(fresh, OPTIMIZER)
  chex.assert_trees_all_equal(params, fresh)
  chex.assert_trees_all_equal(state, OPTIMIZER.init(fresh))
  assert int(state.count) == int(_adam(state).count) == 0


# ----------------------------------------------------------------------------
# Plasticity injection.


@functools.partial(jax.jit, static_argnums=(0, 1))
def _inject_and_step(model, tail, params, opt_state, fresh, x):
  new, state, injection = resets.inject_plasticity(OPTIMIZER, params, opt_state, fresh, tail)
  at_injection = resets.injected_apply(model, new, injection, x)
  loss = lambda p, inj: jnp.sum(resets.injected_apply(model, p, inj, x) ** 2)
  grads = jax.grad(loss, argnums=(0, 1))(new, injection)
  stepped = jax.tree.map(lambda p, g: p - 0.1 * g, new, grads[0])
  after = resets.injected_apply(model, stepped, injection, x)
  merged = {**stepped, "head": jax.tree.map(lambda a, b, c: a + b - c, injection.old["head"],
                                            stepped["head"], injection.fresh0["head"])}
  return new, state, injection, at_injection, grads, after, model.apply({"params": merged}, x)


@pytest.mark.parametrize("tail", [("head",), ("dense_1", "head")])
def test_plasticity_injection_keeps_outputs_and_freezes_the_old_tail(tail):
  model, params, opt_state, x, fresh = _setup("mlp")
  before = _forward(model, params, x)[0]
  new, state, injection, at_injection, (g_params, g_injection), after, merged = (
      _inject_and_step(model, tail, params, opt_state, fresh, x))
  np.testing.assert_array_equal(at_injection, before)  # exactly unchanged at injection.
  for name in new:
    chex.assert_trees_all_equal(new[name], fresh[name] if name in tail else params[name])
    moments = (_adam(state).mu[name], _adam(state).nu[name])
    if name in tail:
      for leaf in jax.tree.leaves(moments):
        np.testing.assert_array_equal(leaf, 0.0)
    else:
      old = (_adam(opt_state).mu[name], _adam(opt_state).nu[name])
      chex.assert_trees_all_equal(moments, old)
  assert int(state.count) == int(_adam(state).count) == 2
  chex.assert_trees_all_equal(injection.old, {n: params[n] for n in tail})
  chex.assert_trees_all_equal(injection.fresh0, {n: fresh[n] for n in tail})
  for leaf in jax.tree.leaves(g_injection):  # the frozen tails get no gradient.
    np.testing.assert_array_equal(leaf, 0.0)
  for leaf in jax.tree.leaves(g_params):  # the new tail and the body train.
    assert np.abs(np.asarray(leaf)).max() > 0
  assert not np.allclose(after, before)
  if tail == ("head",):  # a linear tail is one layer with theta + theta' - theta'_0.
    np.testing.assert_allclose(after, merged, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------
# Scheduling.


def test_maybe_reset_in_scan_and_vmap():
  _, params, opt_state, _, fresh = _setup("mlp")
  reset = lambda s: resets.reset_head(OPTIMIZER, s[0], s[1], fresh)

  @jax.jit
  def run(state, schedule, per_seed):
    def body(s, should):
      s = resets.maybe_reset(should, reset, s)
      return s, s[0]["head"]["kernel"]

    _, heads = jax.lax.scan(body, state, schedule)
    seeds = jax.tree.map(lambda a: jnp.stack([a, a]), state)
    batched = jax.vmap(resets.maybe_reset, in_axes=(0, None, 0))(per_seed, reset, seeds)
    return heads, batched, reset(state)

  heads, batched, once = run((params, opt_state), jnp.array([False, True, False]),
                             jnp.array([True, False]))
  np.testing.assert_array_equal(heads[0], params["head"]["kernel"])
  np.testing.assert_array_equal(heads[1], fresh["head"]["kernel"])
  np.testing.assert_array_equal(heads[2], fresh["head"]["kernel"])
  chex.assert_trees_all_equal(_take(batched, 0), _np(once))
  chex.assert_trees_all_equal(_take(batched, 1), _np((params, opt_state)))
  assert np.all(np.asarray(_adam(once[1]).mu["head"]["kernel"]) == 0)
