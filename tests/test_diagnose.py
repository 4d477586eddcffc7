"""plastix.diagnose on models written here, against numpy computed by hand."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import plastix
from plastix import diagnose
from plastix import models
from plastix import probe_suite
from plastix.diagnostics import diagnosed_layers

# ----------------------------------------------------------------------------
# Models that are not plastix's.


class PlainMLP(nn.Module):
  """Two ReLU hidden layers and a linear head, flax's default names."""
  widths: tuple = (6, 6)
  outputs: int = 3

  @nn.compact
  def __call__(self, x):
    for w in self.widths:
      x = nn.relu(nn.Dense(w)(x))
    return nn.Dense(self.outputs)(x)


class SmallCNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), padding="VALID")(x))
    x = nn.relu(nn.Conv(3, (3, 3), padding="VALID")(x))
    return nn.Dense(5)(x.reshape(x.shape[0], -1))


class NormedMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    for _ in range(2):
      x = nn.relu(nn.LayerNorm()(nn.Dense(8)(x)))
    return nn.Dense(3)(x)


class Encoder(nn.Module):
  def setup(self):
    self.fc1 = nn.Dense(5)
    self.fc2 = nn.Dense(4)

  def __call__(self, x):
    return nn.relu(self.fc2(nn.relu(self.fc1(x))))


class NamedNet(nn.Module):
  def setup(self):
    self.encoder = Encoder()
    self.policy = nn.Dense(2)

  def __call__(self, x):
    return self.policy(self.encoder(x))


class NoDense(nn.Module):
  @nn.compact
  def __call__(self, x):
    w = self.param("w", nn.initializers.ones, (x.shape[-1], 2))
    return x @ w


class HeadOnly(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(2)(x)


# ----------------------------------------------------------------------------
# numpy references.


def np_layer_fractions(acts, tau):
  """Per-layer fraction of units with ReDo score <= tau (means over all axes but the last)."""
  out = []
  for a in acts:
    m = np.abs(a).reshape(-1, a.shape[-1]).mean(0)
    out.append(np.mean(m / (m.mean() + 1e-9) <= tau))
  return np.array(out)


def np_weighted(values, layers):
  units = np.array([h.shape[-1] for h in layers], np.float64)
  return float(np.sum(units / units.sum() * np.asarray(values)))


def np_effective_rank(f):
  s = np.linalg.svd(f, compute_uv=False)
  if s.sum() == 0:
    return 0.0
  p = s / s.sum()
  p = p[p > 0]
  return float(np.exp(-(p * np.log(p)).sum()))


def np_srank(f, delta):
  s = np.linalg.svd(f, compute_uv=False)
  if s.sum() == 0:
    return 0
  return int(np.argmax(np.cumsum(s) >= (1 - delta) * s.sum()) + 1)


def np_entropy(z):
  z = z - z.max(-1, keepdims=True)
  p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
  return float(np.mean(-(p * np.log(p)).sum(-1)))


def np_expected(preacts, acts, features, logits, tau=0.025, delta=0.01, k=4):
  """Every activation probe from preactivations, activations, features and logits."""
  flat = lambda h: h.reshape(-1, h.shape[-1])
  dead = np_layer_fractions(acts, 0.0)
  spread = [flat(h).mean(0).std() for h in preacts]
  s = np.linalg.svd(features, compute_uv=False)
  s = np.pad(s[:k], (0, max(0, k - len(s))))
  out = dict(
      dead_fraction=np_weighted(dead, acts),
      dormant_fraction=np_weighted(np_layer_fractions(acts, tau), acts),
      linearized_fraction=np_weighted([np.all(flat(h) > 0, 0).mean() for h in preacts],
                                      preacts),
      preact_mean_spread=np_weighted(spread, preacts),
      preact_std_mean=np_weighted([flat(h).std(0).mean() for h in preacts], preacts),
      effective_rank=np_effective_rank(features),
      srank=np_srank(features, delta),
      predictive_entropy=np_entropy(logits))
  out.update({f"feature_sv{i}": v for i, v in enumerate(s)})
  out.update({f"dead_fraction_layer{i}": v for i, v in enumerate(dead)})
  out.update({f"preact_mean_spread_layer{i}": v for i, v in enumerate(spread)})
  return out


def assert_matches(got, expected, rtol=1e-4, atol=1e-5):
  """Each expected value; singular values to float32's precision of the largest one."""
  for name, value in expected.items():
    tol = atol * max(1.0, expected["feature_sv0"]) if name.startswith("feature_sv") else atol
    np.testing.assert_allclose(np.asarray(got[name]), value, rtol=rtol, atol=tol, err_msg=name)


def np_params(variables):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])


def relu(h):
  return np.maximum(h, 0.0)


# ----------------------------------------------------------------------------
# Activation probes.


@pytest.fixture(scope="module")
def planted():
  """PlainMLP with dead units (bias -10 / -100) and always-active ones (+10 / +100)."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(48, 4)).astype(np.float32)
  model = PlainMLP()
  variables = model.init(jax.random.PRNGKey(0), x)
  params = jax.tree.map(np.array, variables["params"])
  params["Dense_0"]["bias"][[0, 1]] = -10.0   # dead
  params["Dense_0"]["bias"][2] = 10.0         # always active
  params["Dense_1"]["kernel"][2] = 0.0        # (read by no unit, so none dies of it)
  params["Dense_1"]["bias"][0] = -100.0       # dead
  params["Dense_1"]["bias"][5] = 100.0        # always active
  return model, {"params": jax.tree.map(jnp.asarray, params)}, x


def test_planted_dead_and_linearized_units_match_numpy(planted):
  model, variables, x = planted
  p = np_params(variables)
  h0 = x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
  h1 = relu(h0) @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
  logits = relu(h1) @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]
  got = diagnose(model, variables, x)
  assert_matches(got, np_expected([h0, h1], [relu(h0), relu(h1)], relu(h1), logits))
  # What was planted: 2/6 and 1/6 dead, one always-active unit per layer.
  chex.assert_trees_all_close(got["dead_fraction_layer0"], 2 / 6)
  chex.assert_trees_all_close(got["dead_fraction_layer1"], 1 / 6)
  chex.assert_trees_all_close(got["dead_fraction"], 3 / 12)
  chex.assert_trees_all_close(got["linearized_fraction"], 2 / 12)
  norms = {k: np.sqrt(sum((a ** 2).sum() for a in v.values())) for k, v in p.items()}
  for k, v in norms.items():
    np.testing.assert_allclose(got[f"param_norm_{k}"], v, rtol=1e-5)
  np.testing.assert_allclose(got["param_norm"], np.sqrt(sum(v ** 2 for v in norms.values())),
                             rtol=1e-5)
  expected_keys = {"dead_fraction", "dormant_fraction", "linearized_fraction",
                   "linearized_fraction_smooth", "effective_rank", "srank",
                   "preact_mean_spread", "preact_std_mean", "predictive_entropy", "param_norm",
                   "param_norm_Dense_0", "param_norm_Dense_1", "param_norm_Dense_2",
                   "dead_fraction_layer0", "dead_fraction_layer1",
                   "preact_mean_spread_layer0", "preact_mean_spread_layer1",
                   *(f"feature_sv{i}" for i in range(4))}
  assert set(got) == expected_keys
  assert got["srank"].dtype == jnp.int32


def test_settings_and_per_layer_activations(planted):
  model, variables, x = planted
  p = np_params(variables)
  # `activation` is what the probes read: tanh on layer 0 here, while the model
  # itself (and so layer 1's input and the head's features) still uses relu.
  got = diagnose(model, variables, x, activation=(jnp.tanh, jax.nn.relu), dormant_tau=0.5,
                 srank_delta=0.2, top_singular_values=7)
  assert "feature_sv6" in got and "feature_sv7" not in got
  h0 = x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
  h1 = relu(h0) @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
  expected = np_expected([h0, h1], [np.tanh(h0), relu(h1)], relu(h1),
                         relu(h1) @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"],
                         tau=0.5, delta=0.2, k=7)
  assert_matches(got, expected)


def test_cnn_matches_numpy():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(6, 8, 8, 2)).astype(np.float32)
  model = SmallCNN()
  variables = model.init(jax.random.PRNGKey(1), x)
  params = jax.tree.map(np.array, variables["params"])
  params["Conv_0"]["bias"][1] = -50.0  # a dead channel
  variables = {"params": jax.tree.map(jnp.asarray, params)}
  p = np_params(variables)

  def conv(x, kernel, bias):  # VALID, stride 1, cross-correlation.
    kh, kw = kernel.shape[:2]
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    out = sum(x[:, i:i + h, j:j + w, :] @ kernel[i, j] for i in range(kh) for j in range(kw))
    return out + bias

  h0 = conv(x, p["Conv_0"]["kernel"], p["Conv_0"]["bias"])
  h1 = conv(relu(h0), p["Conv_1"]["kernel"], p["Conv_1"]["bias"])
  features = relu(h1).reshape(6, -1)  # [6, 4 * 4 * 3]: the head's input.
  logits = features @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
  got = jax.jit(functools.partial(diagnose, model))(variables, x)
  assert_matches(got, np_expected([h0, h1], [relu(h0), relu(h1)], features, logits))
  chex.assert_trees_all_close(got["dead_fraction_layer0"], 0.25)


def test_layer_norm_output_is_the_preactivation():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(32, 5)).astype(np.float32)
  model = NormedMLP()
  variables = model.init(jax.random.PRNGKey(2), x)
  params = jax.tree.map(np.array, variables["params"])
  for name in ("LayerNorm_0", "LayerNorm_1"):
    params[name]["scale"] = rng.uniform(0.5, 2.0, 8).astype(np.float32)
    params[name]["bias"] = rng.normal(size=8).astype(np.float32)
  params["LayerNorm_0"]["bias"][3] = -100.0  # dead after the norm
  variables = {"params": jax.tree.map(jnp.asarray, params)}
  p = np_params(variables)

  def layer_norm(h, q):
    z = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-6)
    return z * q["scale"] + q["bias"]

  h0 = layer_norm(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], p["LayerNorm_0"])
  h1 = layer_norm(relu(h0) @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"], p["LayerNorm_1"])
  logits = relu(h1) @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]
  got = jax.jit(functools.partial(diagnose, model))(variables, x)
  assert_matches(got, np_expected([h0, h1], [relu(h0), relu(h1)], relu(h1), logits), rtol=2e-4)
  assert got["dead_fraction_layer0"] >= 1 / 8
  assert diagnosed_layers(model, variables, x) == [("Dense_0", "LayerNorm_0"),
                                                   ("Dense_1", "LayerNorm_1")]


def test_user_named_layers_in_the_order_named():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(20, 3)).astype(np.float32)
  model = NamedNet()
  variables = model.init(jax.random.PRNGKey(3), x)
  params = jax.tree.map(np.array, variables["params"])
  params["encoder"]["fc2"]["bias"][[0, 1, 2]] = -100.0
  variables = {"params": jax.tree.map(jnp.asarray, params)}
  p = np_params(variables)["encoder"]
  h1 = x @ p["fc1"]["kernel"] + p["fc1"]["bias"]
  h2 = relu(h1) @ p["fc2"]["kernel"] + p["fc2"]["bias"]
  layers = ["encoder/fc2", ("encoder", "fc1")]
  got = jax.jit(functools.partial(diagnose, model, layers=layers))(variables, x)
  np.testing.assert_allclose(got["dead_fraction_layer0"], np_layer_fractions([relu(h2)], 0)[0])
  np.testing.assert_allclose(got["dead_fraction_layer0"], 0.75)
  np.testing.assert_allclose(got["dead_fraction_layer1"], np_layer_fractions([relu(h1)], 0)[0])
  np.testing.assert_allclose(got["dead_fraction"], np_weighted(
      np_layer_fractions([relu(h2), relu(h1)], 0), [h2, h1]), rtol=1e-6)
  assert set(got) >= {"param_norm_encoder", "param_norm_policy"}
  assert [layer.path for layer in diagnosed_layers(model, variables, x, layers=layers)] == [
      "encoder/fc2", "encoder/fc1"]
  # "auto" finds the same two layers in forward order, the policy being the head.
  assert [layer.path for layer in diagnosed_layers(model, variables, x)] == [
      "encoder/fc1", "encoder/fc2"]


def test_an_input_on_which_nothing_fires_is_reported():
  model = PlainMLP()
  x = np.zeros((8, 4), np.float32)
  variables = model.init(jax.random.PRNGKey(4), x)
  params = jax.tree.map(np.array, variables["params"])
  params["Dense_0"]["bias"][:] = -1.0
  params["Dense_1"]["bias"][:] = -1.0
  variables = {"params": jax.tree.map(jnp.asarray, params)}
  for got in (diagnose(model, variables, x), jax.jit(functools.partial(diagnose, model))(
      variables, x)):
    chex.assert_tree_all_finite(got)
    for name in ("dead_fraction", "dormant_fraction", "dead_fraction_layer0",
                 "dead_fraction_layer1"):
      chex.assert_trees_all_close(got[name], 1.0, custom_message=name)
    for name in ("effective_rank", "srank", "linearized_fraction", *(
        f"feature_sv{i}" for i in range(4))):
      chex.assert_trees_all_close(got[name], jnp.zeros_like(got[name]), custom_message=name)
    logits = np.asarray(params["Dense_2"]["bias"])[None].repeat(8, 0)
    np.testing.assert_allclose(got["predictive_entropy"], np_entropy(logits), rtol=1e-5)


def test_vmap_over_stacked_parameters_and_batches_equals_a_loop():
  model = NormedMLP()
  rng = np.random.default_rng(5)
  x = rng.normal(size=(16, 5)).astype(np.float32)
  stacked = jax.vmap(lambda k: model.init(k, x))(jax.random.split(jax.random.PRNGKey(5), 3))
  got = jax.jit(jax.vmap(lambda v: diagnose(model, v, x)))(stacked)
  chex.assert_shape(got["dead_fraction"], (3,))
  one = jax.jit(functools.partial(diagnose, model))
  for s in range(3):
    chex.assert_trees_all_close(jax.tree.map(lambda a, s=s: a[s], got),
                                one(jax.tree.map(lambda a, s=s: a[s], stacked), x),
                                rtol=1e-5, atol=1e-6)
  batches = rng.normal(size=(2, 16, 5)).astype(np.float32)
  first = jax.tree.map(lambda a: a[0], stacked)
  by_batch = jax.jit(jax.vmap(lambda b: diagnose(model, first, b)))(batches)
  for b in range(2):
    chex.assert_trees_all_close(jax.tree.map(lambda a, b=b: a[b], by_batch),
                                one(first, batches[b]), rtol=1e-5, atol=1e-6)


def test_same_numbers_as_the_engines_probe_set():
  """On plastix's own MLP (batch norm: eval mode, running statistics) diagnose gives
  the engine's activation probes from its sown layers."""
  model = models.MLP(hidden_sizes=(8, 8), num_outputs=3, norm="batch")
  x = np.random.default_rng(6).normal(size=(24, 5)).astype(np.float32)
  params, state = models.init_variables(model, jax.random.PRNGKey(6), x)
  state = jax.tree.map(lambda a: a + 0.3, state)  # running statistics that are not the init.
  forward = models.forward_with_features(model, params, x, state)
  engine = probe_suite.activation_probes(forward.preactivations, forward.activations,
                                         forward.logits,
                                         probe_suite.unit_means(forward.preactivations),
                                         probe_suite.ProbeSettings(), forward.features)
  got = diagnose(model, {"params": params, **state}, x, train=False)
  for name in ("dead_fraction", "dormant_fraction", "linearized_fraction",
               "linearized_fraction_smooth", "effective_rank", "srank", "preact_mean_spread",
               "preact_std_mean", "predictive_entropy"):
    chex.assert_trees_all_close(got[name], engine[name], rtol=1e-5, custom_message=name)
  chex.assert_trees_all_close(jnp.stack([got[f"feature_sv{i}"] for i in range(4)]),
                              engine["feature_singular_values"], rtol=1e-5)
  assert [layer.preactivation for layer in diagnosed_layers(
      model, {"params": params, **state}, x, train=False)] == ["norm_0", "norm_1"]


# ----------------------------------------------------------------------------
# Expensive probes.


def test_expensive_probes_match_dense_references():
  model = PlainMLP(widths=(4,), outputs=2)
  rng = np.random.default_rng(7)
  x = rng.normal(size=(6, 3)).astype(np.float32)
  y = rng.normal(size=(6, 2)).astype(np.float32)
  weight = rng.uniform(0.5, 1.5, size=(6,)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(7), x)
  params = variables["params"]

  def loss_fn(out, targets):
    y, w = targets
    return jnp.mean(w * jnp.sum((out - y) ** 2, -1))

  got = jax.jit(functools.partial(diagnose, model, loss_fn=loss_fn, hessian_iters=300))(
      variables, x, targets=(y, weight))
  flat, unravel = ravel_pytree(params)
  flat_loss = lambda t, xb, tb: loss_fn(model.apply({"params": unravel(t)}, xb), tb)
  eig = np.linalg.eigvalsh(np.asarray(jax.hessian(flat_loss)(flat, x, (y, weight)), np.float64))
  np.testing.assert_allclose(got["sharpness"], eig[np.argmax(np.abs(eig))], rtol=1e-3)

  jac = np.asarray(jax.jacrev(lambda t: model.apply({"params": unravel(t)}, x))(flat),
                   np.float64)                               # [n, outputs, P]
  k = np.einsum("icp,jcp->ij", jac, jac)
  lam = np.clip(np.linalg.eigvalsh(k), 0, None)
  share = np.trace(k) / np.abs(k).sum()
  np.testing.assert_allclose(got["ntk_diagonal_share"], share, rtol=1e-4)
  np.testing.assert_allclose(got["ntk_off_diagonal_mass"], 1 - share, rtol=1e-4)
  np.testing.assert_allclose(got["ntk_top_eigenvalue_share"], lam.max() / lam.sum(), rtol=1e-4)
  p = lam / lam.sum()
  p = p[p > 0]
  np.testing.assert_allclose(got["ntk_effective_rank"], np.exp(-(p * np.log(p)).sum()),
                             rtol=1e-4)

  grad = jax.jit(jax.grad(flat_loss))
  grads = np.stack([np.asarray(grad(flat, x[i:i + 1], (y[i:i + 1], weight[i:i + 1])))
                    for i in range(6)]).astype(np.float64)
  u = grads / np.linalg.norm(grads, axis=1, keepdims=True)
  cos = u @ u.T
  np.testing.assert_allclose(got["gradient_alignment"], (cos.sum() - np.trace(cos)) / 30,
                             rtol=1e-4, atol=1e-6)

  only = jax.eval_shape(functools.partial(diagnose, model, loss_fn=loss_fn, targets=(y, weight),
                                          expensive=("alignment",)), variables, x)
  assert set(only) - set(jax.eval_shape(functools.partial(diagnose, model), variables, x)) == {
      "gradient_alignment"}
  assert not set(probe_suite.EXPENSIVE_COLUMNS["ntk"]) & set(jax.eval_shape(
      functools.partial(diagnose, model), variables, x))


# ----------------------------------------------------------------------------
# Bad arguments.


def test_bad_arguments_name_what_is_missing():
  x = np.ones((4, 3), np.float32)
  no_dense = NoDense()
  with pytest.raises(ValueError, match="no nn.Dense or nn.Conv"):
    diagnose(no_dense, no_dense.init(jax.random.PRNGKey(0), x), x)
  head_only = HeadOnly()
  with pytest.raises(ValueError, match="no hidden nn.Dense or nn.Conv in HeadOnly: 'Dense_0' is"):
    diagnose(head_only, head_only.init(jax.random.PRNGKey(0), x), x)
  named = NamedNet()
  variables = named.init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="'encoder/fc9'.*encoder/fc1 \\(Dense\\)"):
    diagnose(named, variables, x, layers=["encoder/fc1", "encoder/fc9"])
  with pytest.raises(ValueError, match="encoder/fc9"):  # also under jit, at trace time.
    jax.jit(functools.partial(diagnose, named, layers=["encoder/fc9"]))(variables, x)
  with pytest.raises(ValueError, match="layers=\\['encoder/fc1'\\]"):
    diagnose(named, variables, x, layers="encoder/fc1")
  with pytest.raises(ValueError, match="one callable per probed layer \\(2 layers\\)"):
    diagnose(named, variables, x, activation=[jax.nn.relu])
  with pytest.raises(ValueError, match="'params'"):
    diagnose(named, variables["params"], x)
  with pytest.raises(ValueError, match="unknown expensive probe"):
    diagnose(named, variables, x, loss_fn=lambda o, t: 0.0, expensive=("plasticity",))
  with pytest.raises(ValueError, match="logits_fn"):
    diagnose(TupleOut(), TupleOut().init(jax.random.PRNGKey(0), x), x)
  with pytest.raises(TypeError, match="flax.linen.Module"):
    diagnose(lambda v, x: x, variables, x)


class TupleOut(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(4)(x))
    return nn.Dense(2)(h), nn.Dense(1)(h)


def test_tuple_outputs_with_logits_fn():
  x = np.random.default_rng(8).normal(size=(5, 3)).astype(np.float32)
  model = TupleOut()
  variables = model.init(jax.random.PRNGKey(8), x)
  got = diagnose(model, variables, x, logits_fn=lambda out: out[0])
  logits, _ = model.apply(variables, x)
  np.testing.assert_allclose(got["predictive_entropy"], np_entropy(np.asarray(logits, np.float64)),
                             rtol=1e-5)
  # Both heads are left out: the last one applied, and the one returned as it is.
  assert [layer.path for layer in diagnosed_layers(model, variables, x)] == ["Dense_0"]
  h = jax.nn.relu(x @ variables["params"]["Dense_0"]["kernel"]
                  + variables["params"]["Dense_0"]["bias"])
  np.testing.assert_allclose(got["dead_fraction"], np_layer_fractions([np.asarray(h)], 0)[0])


def test_package_attribute_is_the_function():
  assert plastix.diagnose is diagnose
  assert callable(plastix.diagnose)
