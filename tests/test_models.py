import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from plastix import models

# Random-number kernels are slow to compile on a small CPU machine, so most
# tests fill parameters (`_np_variables`) and inputs with numpy; `init_variables`
# runs for real on small MLPs and is traced for every model.

_B = 4
_IMAGE = (8, 8, 3)


def _x(shape, seed=0, scale=1.0, offset=0.0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale + offset,
                     jnp.float32)


def _np_variables(model, x, seed=0):
  """(params, model_state) shaped as `init_variables` makes them, filled with numpy.

  Kernels ~ N(0, 1 / fan_in), embeddings ~ N(0, 0.02^2), biases ~ N(0, 0.1^2),
  norm scales and running variances 1, running means 0.
  """
  params, state = jax.eval_shape(
      lambda: models.init_variables(model, jax.random.PRNGKey(0), x))
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = path[-1].key
    if name in ("scale", "var"):
      v = np.ones(s.shape)
    elif name == "mean":
      v = np.zeros(s.shape)
    elif name == "bias":
      v = rng.normal(size=s.shape) * 0.1
    elif name in ("cls_token", "pos_embed"):
      v = rng.normal(size=s.shape) * 0.02
    else:
      v = rng.normal(size=s.shape) / math.sqrt(math.prod(s.shape[:-1]))
    return jnp.asarray(v, s.dtype)

  fill_tree = lambda t: jax.tree_util.tree_map_with_path(fill, t)
  return fill_tree(params), fill_tree(state)


def _tiny(name, **fields):
  """Tiny versions of each registered model for (8, 8, 3) images."""
  base = {
      "mlp": dict(depth=2, width=6),
      "cnn": dict(depth=1, width=5, cnn_channels=(4, 6)),
      "resnet18": dict(resnet_width=2, resnet_stage_sizes=(1, 1)),
      "vit_tiny": dict(vit_dim=8, vit_depth=1, vit_heads=2, vit_mlp_dim=12),
  }[name]
  return models.create(dict(name=name, **{**base, **fields}), 3, _IMAGE)


# ----------------------------------------------------------------------------
# The MLP as the engine uses it.


@pytest.mark.parametrize("norm", ["none", "layer"])
def test_mlp_exposes_every_hidden_layer(norm):
  model = models.MLP(hidden_sizes=(8, 6), num_outputs=3, norm=norm)
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 2, 2, 1))
  params = model.init(jax.random.PRNGKey(1), x)["params"]
  logits, pre, act = models.hidden_features(model, params, x)
  chex.assert_shape(logits, (5, 3))
  chex.assert_shape(pre, [(5, 8), (5, 6)])
  chex.assert_shape(act, [(5, 8), (5, 6)])
  for h, a in zip(pre, act):
    np.testing.assert_array_equal(a, jax.nn.relu(h))
  np.testing.assert_allclose(logits, model.apply({"params": params}, x), rtol=1e-6)
  assert ("norm_0" in params) == (norm == "layer")


@pytest.mark.parametrize("name, fields", [
    ("mlp", {}), ("cnn", {}), ("cnn", {"depth": 0}), ("resnet18", {"norm": "batch"}),
    ("vit_tiny", {}), ("vit_tiny", {"vit_pool": "mean"})])
def test_features_are_what_the_head_reads(name, fields):
  model = _tiny(name, **fields)
  x = _x((_B,) + _IMAGE)
  params, state = _np_variables(model, x)
  forward = models.forward_with_features(model, params, x, state)
  # The head is linear in the features: logits = features W + b, by hand.
  head = params["head"]
  np.testing.assert_allclose(forward.logits, forward.features @ head["kernel"] + head["bias"],
                             rtol=1e-5, atol=1e-5)
  chex.assert_shape(forward.features, (_B, head["kernel"].shape[0]))
  logits, pre, act = models.hidden_features(model, params, x, state)
  np.testing.assert_array_equal(logits, forward.logits)
  if name == "mlp" or (name == "cnn" and "depth" not in fields):
    np.testing.assert_array_equal(forward.features, act[-1])  # the last hidden layer
  if name == "cnn" and fields.get("depth") == 0:  # the flattened last conv map
    np.testing.assert_array_equal(forward.features, act[-1].reshape(_B, -1))


def test_layer_norm_acts_on_preactivations_before_relu():
  model = models.MLP(hidden_sizes=(7,), num_outputs=2, norm="layer")
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 5)) * 10 + 3
  params = model.init(jax.random.PRNGKey(1), x)["params"]
  _, (pre,), _ = models.hidden_features(model, params, x)
  # Fresh LayerNorm (scale 1, bias 0): each example's preactivations are standardised.
  np.testing.assert_allclose(pre.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(pre.std(-1), 1.0, rtol=1e-3)
  dense = x @ params["dense_0"]["kernel"] + params["dense_0"]["bias"]
  ref = (dense - dense.mean(-1, keepdims=True)) / jnp.sqrt(dense.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(pre, ref, rtol=1e-4, atol=1e-5)


def test_unknown_norm_is_named():
  with pytest.raises(ValueError, match="unknown norm 'group'"):
    models.MLP(hidden_sizes=(4,), num_outputs=2, norm="group").init(
        jax.random.PRNGKey(0), jnp.ones((1, 3)))


def test_bfloat16_computes_in_bf16_and_returns_f32_logits():
  model = models.MLP(hidden_sizes=(8,), num_outputs=3, dtype="bfloat16")
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 5))
  params = model.init(jax.random.PRNGKey(1), x)["params"]
  assert params["dense_0"]["kernel"].dtype == jnp.float32
  logits, (pre,), _ = models.hidden_features(model, params, x)
  assert pre.dtype == jnp.bfloat16 and logits.dtype == jnp.float32
  ref = models.MLP(hidden_sizes=(8,), num_outputs=3).apply({"params": params}, x)
  np.testing.assert_allclose(logits, ref, rtol=0.05, atol=0.05)


# ----------------------------------------------------------------------------
# Shapes of the logits and of every sown layer (traced only, nothing compiled).


def _resnet18_layers(b):
  """Stem, then (inner, output) per block: 4 stages x 2 blocks at width 2 on 8x8."""
  stages = [(b, 8, 8, 2), (b, 4, 4, 4), (b, 2, 2, 8), (b, 1, 1, 16)]
  return [stages[0]] + [s for s in stages for _ in range(4)]


_SHAPE_CASES = {
    "mlp_crelu": (dict(name="mlp", depth=2, width=5, activation="crelu"),
                  [(_B, 5)] * 2, [(_B, 10)] * 2),
    "cnn": (dict(name="cnn", depth=1, width=5, cnn_channels=(4, 6)),
            [(_B, 4, 4, 4), (_B, 2, 2, 6), (_B, 5)], None),
    "cnn_stride1_no_dense": (dict(name="cnn", depth=0, cnn_channels=(4,), cnn_stride=1),
                             [(_B, 8, 8, 4)], None),
    "resnet18": (dict(name="resnet18", resnet_width=2, norm="batch"), _resnet18_layers(_B), None),
    "resnet18_crelu": (dict(name="resnet18", resnet_width=2, activation="crelu"),
                       _resnet18_layers(_B),
                       [s[:-1] + (2 * s[-1],) for s in _resnet18_layers(_B)]),
    "vit_cls": (dict(name="vit_tiny", vit_dim=8, vit_depth=3, vit_heads=2, vit_mlp_dim=12),
                [(_B, 5, 12)] * 3, None),
    "vit_mean": (dict(name="vit_tiny", vit_dim=8, vit_depth=2, vit_heads=2, vit_mlp_dim=12,
                      vit_pool="mean"), [(_B, 4, 12)] * 2, None),
}


@pytest.mark.parametrize("case", list(_SHAPE_CASES))
@pytest.mark.parametrize("flat", [False, True])
def test_logits_and_every_sown_layer_have_the_documented_shapes(case, flat):
  fields, pre_shapes, act_shapes = _SHAPE_CASES[case]
  model = models.create(fields, 3, _IMAGE)
  x = jnp.zeros((_B,) + _IMAGE)
  if flat:  # The engine's flattened images, reshaped by input_shape.
    x = x.reshape(_B, -1)

  def run():
    params, state = models.init_variables(model, jax.random.PRNGKey(0), x)
    return models.hidden_features(model, params, x, state)

  logits, pre, act = jax.eval_shape(run)
  assert logits.shape == (_B, 3) and logits.dtype == jnp.float32
  assert [h.shape for h in pre] == pre_shapes
  assert [a.shape for a in act] == (act_shapes or pre_shapes)


def test_resnet18_structure():
  model = models.create(dict(name="resnet18", resnet_width=2, norm="batch"), 10, _IMAGE)
  params, state = jax.eval_shape(
      lambda: models.init_variables(model, jax.random.PRNGKey(0), jnp.zeros((1,) + _IMAGE)))
  blocks = [k for k in params if k.startswith("block_")]
  assert len(blocks) == 8
  assert params["stem_conv"]["kernel"].shape == (3, 3, 3, 2)  # 3x3 stem, stride 1.
  # Projection shortcuts exactly where the stage (and so the width and stride) changes.
  assert [("shortcut_conv" in params[b]) for b in blocks] == [False, False] + [True, False] * 3
  assert params["block_6"]["conv_0"]["kernel"].shape == (3, 3, 8, 16)
  assert params["head"]["kernel"].shape == (16, 10)
  assert set(state) == {"batch_stats"}
  assert state["batch_stats"]["block_2"]["shortcut_norm"]["mean"].shape == (4,)


# ----------------------------------------------------------------------------
# Activations and norms against their formulas.

_ERF = np.vectorize(math.erf)
_ACTIVATION_FORMULAS = {
    "relu": lambda h: np.maximum(h, 0),
    "leaky_relu": lambda h: np.where(h > 0, h, 0.01 * h),
    "gelu": lambda h: h * 0.5 * (1 + _ERF(h / math.sqrt(2))),
    "tanh": np.tanh,
    "crelu": lambda h: np.concatenate([np.maximum(h, 0), np.maximum(-h, 0)], -1),
}


@pytest.mark.parametrize("activation", list(_ACTIVATION_FORMULAS))
def test_activation_matches_its_formula_and_feeds_the_next_layer(activation):
  model = models.MLP(hidden_sizes=(6,), num_outputs=2, activation=activation)
  x = _x((5, 4), scale=2.0)
  params, state = models.init_variables(model, jax.random.PRNGKey(0), x)
  assert state == {}  # No running statistics: training needs only the params.
  logits, new_state = models.apply_model(model, params, state, x, train=True)
  assert new_state == {}
  np.testing.assert_allclose(logits, model.apply({"params": params}, x), rtol=1e-6)
  logits, (pre,), (act,) = models.hidden_features(model, params, x)
  h = np.asarray(pre, np.float64)
  np.testing.assert_allclose(act, _ACTIVATION_FORMULAS[activation](h), rtol=1e-5, atol=1e-6)
  width = 12 if activation == "crelu" else 6  # CReLU doubles the width fed onwards.
  chex.assert_shape([act, params["head"]["kernel"]], [(5, width), (width, 2)])
  head = params["head"]
  np.testing.assert_allclose(logits, act @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-6)


def _one_layer(norm, x, **kw):
  """An MLP with one hidden layer of 6 units, its variables and its dense output."""
  model = models.MLP(hidden_sizes=(6,), num_outputs=2, norm=norm, **kw)
  params, state = models.init_variables(model, jax.random.PRNGKey(0), x)
  dense = np.asarray(x, np.float64) @ params["dense_0"]["kernel"] + params["dense_0"]["bias"]
  return model, params, state, dense


def _train_pre(model, params, state, x):
  """Preactivations and new model state in training mode."""
  _, new = model.apply({"params": params, **state}, x, train=True,
                       mutable=["intermediates", *state])
  return new["intermediates"]["preactivations"][0], {k: new[k] for k in state}


def test_rms_norm_formula():
  x = _x((5, 4), scale=3.0, offset=2.0)
  model, params, _, dense = _one_layer("rms", x)
  assert set(params["norm_0"]) == {"scale"}
  _, (pre,), _ = models.hidden_features(model, params, x)
  ref = dense / np.sqrt(np.mean(dense**2, -1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(pre, ref, rtol=1e-4, atol=1e-5)


def test_batch_norm_uses_batch_statistics_then_running_ones():
  x = _x((8, 4), scale=3.0, offset=2.0)
  model, params, state, dense = _one_layer("batch", x)
  stats = state["batch_stats"]["norm_0"]
  np.testing.assert_array_equal(stats["mean"], np.zeros(6))
  np.testing.assert_array_equal(stats["var"], np.ones(6))

  pre, new_state = _train_pre(model, params, state, x)
  mu, var = dense.mean(0), dense.var(0)  # Biased variance over the batch.
  np.testing.assert_allclose(pre, (dense - mu) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-4)
  new = new_state["batch_stats"]["norm_0"]
  np.testing.assert_allclose(new["mean"], 0.1 * mu, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new["var"], 0.9 + 0.1 * var, rtol=1e-5)

  # Eval mode normalises with the running statistics and leaves them alone.
  _, (pre_eval,), _ = models.hidden_features(model, params, x, new_state)
  ref = (dense - new["mean"]) / np.sqrt(new["var"] + 1e-5)
  np.testing.assert_allclose(pre_eval, ref, rtol=1e-4, atol=1e-4)
  logits, same = models.apply_model(model, params, new_state, x, train=False)
  assert same is new_state
  # apply_model in training mode returns the same update as the raw apply.
  _, updated = models.apply_model(model, params, state, x, train=True)
  chex.assert_trees_all_close(updated, new_state, rtol=1e-6)


def test_batch_norm_on_conv_maps_reduces_over_batch_and_space():
  model = models.CNN(num_outputs=2, channels=(3,), hidden_sizes=(), stride=1, norm="batch")
  x = _x((4, 5, 5, 2), scale=2.0, offset=1.0)
  params, state = _np_variables(model, x)
  pre, _ = _train_pre(model, params, state, x)
  pre = pre - params["norm_0"]["bias"]  # Scale 1: standardised per channel, then + bias.
  np.testing.assert_allclose(pre.mean((0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(pre.var((0, 1, 2)), 1.0, rtol=1e-3)


def _hybrid_ref(h, mean, scale, bias):
  d = h - mean
  return scale * d / np.sqrt(d.var(-1, keepdims=True) + 1e-5) + bias


def test_hybrid_norm_centres_by_batch_and_scales_by_example():
  x = _x((8, 4), scale=3.0, offset=2.0)
  model, params, state, dense = _one_layer("hybrid", x)
  rng = np.random.default_rng(1)
  scale, bias = rng.normal(size=6) + 1, rng.normal(size=6)
  params = {**params, "norm_0": {"scale": jnp.asarray(scale, jnp.float32),
                                 "bias": jnp.asarray(bias, jnp.float32)}}
  np.testing.assert_array_equal(state["batch_stats"]["norm_0"]["mean"], np.zeros(6))

  pre, new_state = _train_pre(model, params, state, x)
  mu = dense.mean(0)
  np.testing.assert_allclose(pre, _hybrid_ref(dense, mu, scale, bias), rtol=1e-4, atol=1e-4)
  running = new_state["batch_stats"]["norm_0"]["mean"]
  np.testing.assert_allclose(running, 0.1 * mu, rtol=1e-5, atol=1e-6)

  _, (pre_eval,), _ = models.hidden_features(model, params, x, new_state)
  np.testing.assert_allclose(pre_eval, _hybrid_ref(dense, np.asarray(running), scale, bias),
                             rtol=1e-4, atol=1e-4)


def test_hybrid_norm_on_conv_maps():
  x = np.asarray(_x((3, 2, 2, 5), scale=2.0, offset=1.0), np.float64)
  norm = models.HybridNorm()
  variables = norm.init(jax.random.PRNGKey(0), jnp.asarray(x, jnp.float32), False)
  y, new = norm.apply(variables, jnp.asarray(x, jnp.float32), False, mutable=["batch_stats"])
  mu = x.mean((0, 1, 2))  # Per channel over batch and space; std per position over channels.
  np.testing.assert_allclose(y, _hybrid_ref(x, mu, 1.0, 0.0), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(new["batch_stats"]["mean"], 0.1 * mu, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# Seeds under vmap, bfloat16.


@pytest.mark.parametrize("name,norm", [("mlp", "batch"), ("cnn", "hybrid"),
                                       ("resnet18", "batch")])
def test_vmap_over_seeds_keeps_batch_statistics_per_seed(name, norm):
  model = _tiny(name, norm=norm)
  xs = jnp.stack([_x((_B,) + _IMAGE, seed=1), _x((_B,) + _IMAGE, seed=2, offset=3.0)])
  seeds = [_np_variables(model, xs[0], seed=s) for s in range(2)]
  params, state = jax.tree.map(lambda *v: jnp.stack(v), *seeds)
  assert set(state) == {"batch_stats"}

  train = lambda p, s, x: models.apply_model(model, p, s, x, train=True)
  logits, new_state = jax.jit(jax.vmap(train))(params, state, xs)
  for i, (p, s) in enumerate(seeds):
    logits_i, state_i = jax.jit(train)(p, s, xs[i])
    np.testing.assert_allclose(logits[i], logits_i, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(jax.tree.map(lambda v: v[i], new_state), state_i,
                                rtol=1e-4, atol=1e-6)
  # The two seeds saw different batches, so their statistics differ.
  first_mean = jax.tree.leaves(new_state)[0]
  assert not np.allclose(first_mean[0], first_mean[1])


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet18", "vit_tiny"])
def test_bfloat16_on_every_model(name):
  norm = {"mlp": "hybrid", "cnn": "batch", "resnet18": "batch", "vit_tiny": "layer"}[name]
  model, f32_model = _tiny(name, norm=norm, dtype="bfloat16"), _tiny(name, norm=norm)
  x = _x((_B,) + _IMAGE, seed=3)
  params, state = _np_variables(model, x)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves((params, state)))

  @jax.jit
  def run(p, s):  # One program: eval in bf16 and f32, a bf16 training step.
    return (models.hidden_features(model, p, x, s), models.hidden_features(f32_model, p, x, s),
            models.apply_model(model, p, s, x, train=True))

  (logits, pre, act), (ref, _, _), (train_logits, new_state) = run(params, state)
  assert logits.dtype == train_logits.dtype == jnp.float32
  assert all(h.dtype == jnp.bfloat16 for h in pre + act)
  np.testing.assert_allclose(logits, ref, rtol=0.1, atol=0.1)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(new_state))


# ----------------------------------------------------------------------------
# The factory.


def test_create_builds_the_engine_config_model():
  from configs import shift  # pylint: disable=g-import-not-at-top
  config = shift.get_config().model
  model = models.create(config, 10)
  assert model == models.MLP(hidden_sizes=(256, 256), num_outputs=10)
  assert hash(model) == hash(models.create(config, 10))  # Usable as a static jit argument.
  assert set(models.MODELS) == {"mlp", "cnn", "nature_cnn", "resnet18", "vit_tiny"}


def test_create_defaults():
  resnet = models.create({"name": "resnet18"}, 10, (32, 32, 3))
  assert (resnet.width, tuple(resnet.stage_sizes), resnet.norm) == (64, (2, 2, 2, 2), "none")
  vit = models.create(ml_collections.ConfigDict({"name": "vit_tiny"}), 10, (32, 32))
  assert (vit.dim, vit.depth, vit.num_heads, vit.mlp_dim, vit.patch_size) == (192, 12, 3, 768, 4)
  assert (vit.norm, vit.activation, vit.pool, vit.input_shape) == ("layer", "gelu", "cls",
                                                                     (32, 32, 1))
  cnn = models.create({"name": "cnn", "activation": "tanh"}, 10, (28, 28, 1))
  assert (tuple(cnn.channels), tuple(cnn.hidden_sizes), cnn.activation) == ((32, 64), (256, 256),
                                                                           "tanh")


def test_cnn_padding_valid_is_the_minatar_network():
  """VALID: a 3x3 stride-1 conv maps 10x10 to 8x8 (8 * 8 * 16 = 1,024 features
  into the 128-unit layer); SAME keeps 10x10 (1,600). The first output of a
  VALID conv is the kernel's sum over the top-left 3x3 window alone."""
  shapes = {}
  for padding in ("SAME", "VALID"):
    model = models.create({"name": "cnn", "depth": 1, "width": 128, "cnn_channels": (16,),
                           "cnn_stride": 1, "cnn_padding": padding}, 3, (10, 10, 4))
    assert model.padding == padding
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 10, 10, 4)))["params"]
    shapes[padding] = params["dense_1"]["kernel"].shape
  assert shapes == {"SAME": (1600, 128), "VALID": (1024, 128)}
  conv = models.CNN(num_outputs=1, channels=(1,), hidden_sizes=(), kernel_size=3, stride=1,
                    padding="VALID")
  x = jnp.arange(25.0).reshape(1, 5, 5, 1)
  variables = conv.init(jax.random.PRNGKey(0), x)
  kernel = variables["params"]["conv_0"]["kernel"]
  _, inter = conv.apply(variables, x, capture_intermediates=True)
  h = inter["intermediates"]["conv_0"]["__call__"][0]
  assert h.shape == (1, 3, 3, 1)
  window = jnp.array([[0., 1, 2], [5, 6, 7], [10, 11, 12]])
  np.testing.assert_allclose(h[0, 0, 0, 0], jnp.sum(window * kernel[:, :, 0, 0]), rtol=1e-6)


@pytest.mark.parametrize("fields,input_shape,message", [
    (dict(name="transformer"), None, "model.name: choose one of mlp, cnn"),
    (dict(name="mlp", norm="group"), None, "model.norm: choose one of"),
    (dict(name="mlp", activation="swish"), None, "model.activation: choose one of"),
    (dict(name="mlp", dtype="float16"), None, "model.dtype: choose one of"),
    (dict(name="mlp", width=0), None, "model.width: must be an integer >= 1"),
    (dict(name="mlp", depth=0), None, "model.depth: must be an integer >= 1"),
    (dict(name="cnn", cnn_channels=()), _IMAGE, "model.cnn_channels: must be a sequence"),
    (dict(name="cnn", cnn_stride=0), _IMAGE, "model.cnn_stride: must be an integer >= 1"),
    (dict(name="cnn"), (8, 8, 3, 1), "input_shape: model 'cnn' needs"),
    (dict(name="cnn", cnn_padding="same"), _IMAGE, "model.cnn_padding: choose one of SAME, VALID"),
    (dict(name="cnn", cnn_padding="VALID", cnn_kernel_size=5, cnn_stride=1), (8, 8, 1),
     "model.cnn_kernel_size: 2 VALID convs of this kernel and stride 1 leave nothing of 8x8"),
    (dict(name="resnet18", resnet_width=-1), _IMAGE, "model.resnet_width: must be"),
    (dict(name="vit_tiny", vit_patch_size=3), _IMAGE,
     r"model.vit_patch_size: must divide the image size 8x8 \(got 3\)"),
    (dict(name="vit_tiny", vit_dim=8, vit_heads=3), _IMAGE, "model.vit_heads: must divide"),
    (dict(name="vit_tiny", norm="batch"), _IMAGE, "model.norm: choose one of none, layer, rms"),
    (dict(name="vit_tiny", vit_pool="max"), _IMAGE, "model.vit_pool: choose one of cls, mean"),
])
def test_create_names_the_bad_field_in_one_line(fields, input_shape, message):
  with pytest.raises(ValueError, match=message) as info:
    models.create(fields, 10, input_shape)
  assert "\n" not in str(info.value)


@pytest.mark.parametrize("model,message", [
    (models.ViT(num_outputs=2, patch_size=3), "patch_size: image size 8x8 is not divisible"),
    (models.ViT(num_outputs=2, norm="hybrid"), "unsupported norm 'hybrid' for ViT"),
    (models.ViT(num_outputs=2, dim=8, num_heads=3), "num_heads: dim 8 is not divisible"),
    (models.ViT(num_outputs=2, pool="max"), "unknown pool 'max'"),
    (models.CNN(num_outputs=2, activation="swish"), "unknown activation 'swish'"),
    (models.ResNet(num_outputs=2, dtype="float16"), "unknown dtype 'float16'"),
])
def test_modules_reject_bad_fields_when_called(model, message):
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + _IMAGE)))


def test_conv_models_need_image_inputs():
  with pytest.raises(ValueError, match="CNN expects"):
    jax.eval_shape(lambda: models.CNN(num_outputs=2).init(jax.random.PRNGKey(0),
                                                          jnp.zeros((1, 192))))


# ----------------------------------------------------------------------------
# Layers for ReDo.


@pytest.mark.parametrize("model,expected", [
    (models.MLP(hidden_sizes=(8, 6), num_outputs=3, norm="layer"),
     [("dense_0", "dense_1"), ("dense_1", "head")]),
    (models.CNN(num_outputs=3, channels=(4, 6), hidden_sizes=(5,), norm="batch"),
     [("conv_0", "conv_1"), ("conv_1", "dense_2"), ("dense_2", "head")]),
    (models.CNN(num_outputs=3, channels=(4,), hidden_sizes=()), [("conv_0", "head")]),
])
def test_redo_layers_pair_each_layer_with_its_consumer(model, expected):
  assert models.redo_layers(model) == expected
  x = jnp.zeros((2,) + _IMAGE)
  params, state = jax.eval_shape(
      lambda: models.init_variables(model, jax.random.PRNGKey(0), x))
  _, pre, _ = jax.eval_shape(lambda p, s: models.hidden_features(model, p, x, s), params, state)
  for i, ((layer, nxt), h) in enumerate(zip(models.redo_layers(model), pre)):
    units = params[layer]["kernel"].shape[-1]
    assert h.shape[-1] == units and params[layer]["bias"].shape == (units,)
    if model.norm != "none":
      assert params[f"norm_{i}"]["scale"].shape == (units,)
    # A dense consumer of a conv map reads every position: H * W * units rows.
    flattened = h.ndim == 4 and not nxt.startswith("conv")
    expected_fan_in = math.prod(h.shape[1:]) if flattened else units
    assert params[nxt]["kernel"].shape[-2] == expected_fan_in


@pytest.mark.parametrize("model", [models.ResNet(num_outputs=2), models.ViT(num_outputs=2)])
def test_redo_layers_rejects_residual_models(model):
  with pytest.raises(ValueError, match="residual streams"):
    models.redo_layers(model)
