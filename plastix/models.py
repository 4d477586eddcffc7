r"""Flax models whose hidden layers are visible to the probes.

Five architectures share one set of options (`MODELS`, built by `create`):

| name       | module   | hidden layers sown, in forward order                          |
|------------|----------|---------------------------------------------------------------|
| "mlp"      | `MLP`    | each ``dense_i``: ``[B, width]``                              |
| "cnn"      | `CNN`    | each ``conv_i`` (``[B, H, W, C]``), then each ``dense_i``     |
| "nature_cnn" | `CNN`  | the same: the Nature DQN torso (Mnih et al., 2015), see below  |
| "resnet18" | `ResNet` | the stem, then per basic block its inner layer and its output |
| "vit_tiny" | `ViT`    | per transformer block, the MLP hidden layer ``[B, T, mlp]``   |

Options on every model:

* ``norm``: "none", "layer", "batch", "rms" or "hybrid" (`HybridNorm`), applied
  to the preactivations, before the nonlinearity (Lyle et al., 2024). The
  statistics are taken over the units, i.e. the last axis (channels for conv
  maps, at each position), and for "batch" over every other axis (batch and
  space). `ViT` uses the norm in its pre-LN blocks instead and accepts only
  "none", "layer" and "rms".
* ``activation``: "relu", "leaky_relu", "gelu", "tanh" or "crelu" (`activate`).
* ``dtype``: "float32" or "bfloat16": the dtype of the layers' computation. The
  parameters and the running statistics stay float32 and the logits are
  returned as float32.

Every hidden layer sows its preactivations (the input to the nonlinearity,
after normalisation) and its activations into the ``intermediates``
collection, under the top-level module, so `hidden_features` returns one array
per hidden layer, in forward order, with the units on the last axis. Every
model also sows its representation, the ``[B, D]`` input of its linear
``head`` (`forward_with_features`): the last hidden layer's activations for
the MLP (and a CNN with dense layers), the flattened last conv map for a CNN
without, the pooled last block for the ResNet, and the pooled, normalised
token for the ViT.

"batch" and "hybrid" keep running statistics in the ``batch_stats``
collection; every model takes ``train`` (default False: the running
statistics are used and not updated, so ``model.apply({"params": p}, x)``
works for the other norms). `init_variables`, `apply_model` and
`hidden_features` handle both cases without knowing the model: the model
state is ``{}`` for models without running statistics. Batch statistics are
those of the batch the model is applied to, so under ``jax.vmap`` over seeds
each seed normalises with, and updates, its own statistics.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from plastix import matmul

NORMS = ("none", "layer", "batch", "rms", "hybrid")
ACTIVATIONS = ("relu", "leaky_relu", "gelu", "tanh", "crelu")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
VIT_NORMS = ("none", "layer", "rms")
VIT_POOLS = ("cls", "mean")

LEAKY_RELU_SLOPE = 0.01
# Running statistics: r <- momentum * r + (1 - momentum) * batch statistic.
NORM_MOMENTUM = 0.9
LAYER_NORM_EPSILON = 1e-6
RMS_NORM_EPSILON = 1e-6
BATCH_NORM_EPSILON = 1e-5
HYBRID_NORM_EPSILON = 1e-5


# ----------------------------------------------------------------------------
# Building blocks.


def activate(name: str, h: jax.Array) -> jax.Array:
  r"""The nonlinearity `name` applied to preactivations `h` (units on the last axis).

    relu:       max(h, 0)
    leaky_relu: max(h, 0.01 h)
    gelu:       h * Phi(h), Phi the standard normal CDF (exact erf form)
    tanh:       tanh(h)
    crelu:      concat(relu(h), relu(-h)) along the last axis

  CReLU (Shang et al., 2016) maps C preactivation units to 2C activation units:
  activation unit j < C is relu(h_j) and unit C + j is relu(-h_j). The next
  layer consumes 2C inputs, and the probes, which read the activations, count
  the 2C halves as separate units (a preactivation unit that is always
  positive makes its negative half dead).
  """
  if name == "relu":
    return nn.relu(h)
  if name == "leaky_relu":
    return nn.leaky_relu(h, LEAKY_RELU_SLOPE)
  if name == "gelu":
    return nn.gelu(h, approximate=False)
  if name == "tanh":
    return jnp.tanh(h)
  if name == "crelu":
    return jnp.concatenate([nn.relu(h), nn.relu(-h)], axis=-1)
  raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")


class HybridNorm(nn.Module):
  r"""BatchNorm-style centring with LayerNorm-style scaling (Lyle et al., 2024).

  For preactivations ``h`` with units on the last axis (``[B, C]`` or
  ``[B, H, W, C]``), unit ``c`` is centred by its batch mean and each example
  (and position) is divided by its standard deviation across units:

    mu_c  = mean_{b, (h, w)} h_{b, ..., c}   (train; running mean m_c at eval)
    d     = h - mu
    s     = sqrt(var_c d_{b, ..., c} + eps)  (per example and position, over units)
    y     = gamma * d / s + beta

  with eps = `HYBRID_NORM_EPSILON`, learned ``scale`` gamma (init 1) and
  ``bias`` beta (init 0) per unit. Training updates the running mean
  ``batch_stats/mean`` (init 0): ``m <- momentum * m + (1 - momentum) * mu``;
  initialisation does not. The statistics are computed in float32.

  Attributes:
    momentum: decay of the running mean.
    epsilon: added to the variance.
    dtype: dtype of the output.
  """

  momentum: float = NORM_MOMENTUM
  epsilon: float = HYBRID_NORM_EPSILON
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
    units = x.shape[-1]
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, (units,), jnp.float32)
    x = x.astype(jnp.float32)
    if use_running_average:
      mean = running_mean.value
    else:
      mean = jnp.mean(x, axis=tuple(range(x.ndim - 1)))
      if not self.is_initializing():
        running_mean.value = (self.momentum * running_mean.value
                              + (1.0 - self.momentum) * jax.lax.stop_gradient(mean))
    d = x - mean
    y = d * jax.lax.rsqrt(jnp.var(d, axis=-1, keepdims=True) + self.epsilon)
    scale = self.param("scale", nn.initializers.ones, (units,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (units,), jnp.float32)
    return (y * scale + bias).astype(self.dtype)


def normalize(kind: str, h: jax.Array, train: bool, dtype: Any, name: str) -> jax.Array:
  r"""Normalises preactivations `h` with a norm layer called `name` (none: identity).

  Statistics are over the units (last axis), and for "batch" over every other
  axis, with per-unit learned scale gamma and bias beta:

    layer:  gamma * (h - mean_c h) / sqrt(var_c h + 1e-6) + beta
    rms:    gamma * h / sqrt(mean_c h^2 + 1e-6)                (no bias)
    batch:  gamma * (h - mu) / sqrt(v + 1e-5) + beta, mu, v the per-unit mean
            and (biased) variance over batch and space when training, the
            running ``batch_stats/{mean, var}`` (init 0, 1) at eval; training
            updates them with momentum `NORM_MOMENTUM`
    hybrid: `HybridNorm`

  Must be called inside a compact method: the layer is a submodule of the
  caller.
  """
  if kind == "none":
    return h
  if kind == "layer":
    return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=dtype, name=name)(h)
  if kind == "rms":
    return nn.RMSNorm(epsilon=RMS_NORM_EPSILON, dtype=dtype, name=name)(h)
  if kind == "batch":
    return nn.BatchNorm(use_running_average=not train, momentum=NORM_MOMENTUM,
                        epsilon=BATCH_NORM_EPSILON, dtype=dtype, name=name)(h)
  if kind == "hybrid":
    return HybridNorm(dtype=dtype, name=name)(h, use_running_average=not train)
  raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")


def _check_options(module: nn.Module, norms: Sequence[str] = NORMS) -> Any:
  """Raises ValueError for an unknown norm, activation or dtype; returns the jnp dtype."""
  if module.norm not in norms:
    what = "unsupported" if module.norm in NORMS else "unknown"
    raise ValueError(f"{what} norm {module.norm!r} for {type(module).__name__}; choose one "
                     f"of {tuple(norms)}")
  if module.activation not in ACTIVATIONS:
    raise ValueError(f"unknown activation {module.activation!r}; choose one of {ACTIVATIONS}")
  if module.dtype not in DTYPES:
    raise ValueError(f"unknown dtype {module.dtype!r}; choose one of {tuple(DTYPES)}")
  return DTYPES[module.dtype]


def _sow_layer(module: nn.Module, h: jax.Array, a: jax.Array) -> None:
  module.sow("intermediates", "preactivations", h)
  module.sow("intermediates", "activations", a)


def _sow_features(module: nn.Module, x: jax.Array) -> jax.Array:
  """Sows `x`, the ``[B, D]`` input of the model's linear head, and returns it."""
  module.sow("intermediates", "features", x)
  return x


def _hidden(module: nn.Module, h: jax.Array, index: int, train: bool, dtype: Any) -> jax.Array:
  """norm_{index}, sow, nonlinearity, sow: one hidden layer after its linear map."""
  h = normalize(module.norm, h, train, dtype, f"norm_{index}")
  a = activate(module.activation, h)
  _sow_layer(module, h, a)
  return a


def _images(x: jax.Array, input_shape: Sequence[int] | None, model: str) -> jax.Array:
  """`x` as ``[B, H, W, C]``, reshaped from ``[B, ...]`` when `input_shape` is set."""
  if input_shape is not None:
    x = x.reshape((x.shape[0],) + tuple(input_shape))
  if x.ndim != 4:
    raise ValueError(f"{model} expects [batch, height, width, channels] inputs, got shape "
                     f"{x.shape}; set input_shape to reshape flat inputs")
  return x


# ----------------------------------------------------------------------------
# Architectures.


class MLP(nn.Module):
  r"""MLP: ``h_i = norm_i(W_i x_{i-1} + b_i)``, ``x_i = act(h_i)``, logits ``W x_L + b``.

  Inputs ``[B, ...]`` are flattened. Layers are named ``dense_i``, their norms
  ``norm_i`` and the linear head ``head``.

  Attributes:
    hidden_sizes: width of each hidden layer.
    num_outputs: size of the linear head.
    norm: one of `NORMS`, on the preactivations before the nonlinearity.
    activation: one of `ACTIVATIONS` (see `activate`).
    dtype: "float32" or "bfloat16": the dtype of the layers' computation. The
      parameters stay float32 and the logits are returned as float32.
    dense_dot_general: the dense layers' ``dot_general`` (None:
      `lax.dot_general`); `training_model` sets it.
  """

  hidden_sizes: Sequence[int]
  num_outputs: int
  norm: str = "none"
  dtype: str = "float32"
  activation: str = "relu"
  dense_dot_general: Callable | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    dtype = _check_options(self)
    dense = functools.partial(nn.Dense, dtype=dtype, dot_general=self.dense_dot_general)
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.hidden_sizes):
      x = _hidden(self, dense(width, name=f"dense_{i}")(x), i, train, dtype)
    return dense(self.num_outputs, name="head")(_sow_features(self, x)).astype(jnp.float32)


class CNN(nn.Module):
  r"""A conv stack, then an MLP: ``[B, H, W, C]`` inputs to logits.

    h_i = norm_i(conv_i(x_{i-1})),  x_i = act(h_i)     i < len(channels)
    then flatten (row-major over [H, W, C]) and dense layers as in `MLP`.

  Each conv is ``kernel_size`` x ``kernel_size`` with stride ``stride`` and
  ``padding``: SAME (the default: a stride-2 layer halves H and W, rounding
  up) or VALID (no padding: ``H -> (H - k) // stride + 1``, the MinAtar
  network's 10x10 inputs give 8x8 maps); ``kernel_sizes`` / ``strides``
  give one value per layer instead (the Nature DQN torso, with ``padding``
  "VALID": 8x8 stride 4, 4x4 stride 2, 3x3 stride 1, 32/64/64 channels, a
  512-unit layer; 84x84 inputs give 20x20, 9x9
  and 7x7 maps). The inputs are multiplied by ``input_scale`` first (1/255
  for Atari frames of 0..255). Layers are
  indexed together in forward order: ``conv_0 .. conv_{K-1}``, then
  ``dense_K .. dense_{K+M-1}``, each with its norm ``norm_i``, then ``head``.

  Attributes:
    num_outputs: size of the linear head.
    channels: output channels of each conv layer.
    hidden_sizes: width of each dense layer after the conv stack (may be empty).
    kernel_size: spatial size of every conv kernel.
    stride: stride of every conv layer.
    norm, activation, dtype, dense_dot_general: as in `MLP` (the last for the
      dense layers and the head).
    conv_general_dilated: the convolutions' implementation (None:
      `lax.conv_general_dilated`); `patches_model` sets
      `plastix.matmul.patches_conv`.
    input_shape: ``(H, W, C)``: if set, inputs ``[B, ...]`` are reshaped to
      ``[B, H, W, C]`` first (for flattened images).
    kernel_sizes, strides: one per conv layer, overriding `kernel_size` and
      `stride` when set.
    padding: "SAME" or "VALID".
    input_scale: multiplies the inputs before the first layer.
  """

  num_outputs: int
  channels: Sequence[int] = (32, 64)
  hidden_sizes: Sequence[int] = (256,)
  kernel_size: int = 3
  stride: int = 2
  kernel_sizes: Sequence[int] | None = None
  strides: Sequence[int] | None = None
  padding: str = "SAME"
  input_scale: float = 1.0
  norm: str = "none"
  activation: str = "relu"
  dtype: str = "float32"
  input_shape: Sequence[int] | None = None
  dense_dot_general: Callable | None = None
  conv_general_dilated: Callable | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    dtype = _check_options(self)
    dense = functools.partial(nn.Dense, dtype=dtype, dot_general=self.dense_dot_general)
    conv_kw = ({} if self.conv_general_dilated is None
               else {"conv_general_dilated": self.conv_general_dilated})
    x = _images(x, self.input_shape, "CNN")
    if self.input_scale != 1.0:
      x = x * jnp.asarray(self.input_scale, x.dtype)
    n = len(self.channels)
    kernels = tuple(self.kernel_sizes or (self.kernel_size,) * n)
    strides = tuple(self.strides or (self.stride,) * n)
    for i, c in enumerate(self.channels):
      k = kernels[i]
      h = nn.Conv(c, (k, k), strides=strides[i], padding=self.padding, dtype=dtype,
                  name=f"conv_{i}", **conv_kw)(x)
      x = _hidden(self, h, i, train, dtype)
    x = x.reshape((x.shape[0], -1))
    for j, width in enumerate(self.hidden_sizes, start=len(self.channels)):
      x = _hidden(self, dense(width, name=f"dense_{j}")(x), j, train, dtype)
    return dense(self.num_outputs, name="head")(_sow_features(self, x)).astype(jnp.float32)


class BasicBlock(nn.Module):
  r"""ResNet basic block; returns its output and its two sown layers.

    h1  = norm_0(conv_0(x))                  (3x3, stride `stride`)
    a1  = act(h1)                            <- inner layer
    h2  = norm_1(conv_1(a1)) + shortcut(x)   (3x3, stride 1)
    out = act(h2)                            <- block output

  ``shortcut`` is the identity, or ``shortcut_norm(shortcut_conv(x))`` (1x1,
  stride `stride`) when the stride is not 1 or x has a different channel count.

  Attributes:
    channels: output channels of both convs.
    stride: stride of ``conv_0`` and of the shortcut.
    norm, activation, dtype: as in `ResNet` (dtype a jnp dtype here).
  """

  channels: int
  stride: int
  norm: str
  activation: str
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, train: bool):
    conv = lambda s, k, name: nn.Conv(self.channels, (k, k), strides=s, padding="SAME",
                                      dtype=self.dtype, name=name)
    h1 = normalize(self.norm, conv(self.stride, 3, "conv_0")(x), train, self.dtype, "norm_0")
    a1 = activate(self.activation, h1)
    h2 = normalize(self.norm, conv(1, 3, "conv_1")(a1), train, self.dtype, "norm_1")
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.channels:
      shortcut = normalize(self.norm, conv(self.stride, 1, "shortcut_conv")(x), train,
                           self.dtype, "shortcut_norm")
    h2 = h2 + shortcut
    out = activate(self.activation, h2)
    return out, ((h1, a1), (h2, out))


class ResNet(nn.Module):
  r"""ResNet-18 for small images (He et al., 2016, CIFAR variant).

  A 3x3 stride-1 stem conv (``stem_conv``, ``stem_norm``; no max-pool), then 4
  stages of `BasicBlock` (``block_0`` .. in forward order) with ``width *
  2^s`` channels in stage s; the first block of every stage but the first
  has stride 2. Then global average pooling over H and W and the linear
  ``head``. Every conv has a bias.

  Sown layers, in forward order (conv maps ``[B, H, W, C]``): the stem
  (preactivation ``stem_norm(stem_conv(x))``), then for each block its inner
  layer (``norm_0(conv_0(x))``) and its output (``norm_1(conv_1(.)) +
  shortcut(x)``, the input to the block's last nonlinearity): ``1 + 2 *
  sum(stage_sizes)`` layers, 17 for ResNet-18.

  With "crelu" each nonlinearity doubles the channels, so the stream entering
  every block has twice the block's channels and every block uses a
  projection shortcut.

  Attributes:
    num_outputs: size of the linear head.
    width: channels of the stem and the first stage (64 in ResNet-18).
    stage_sizes: basic blocks per stage.
    norm, activation, dtype, input_shape: as in `CNN`.
  """

  num_outputs: int
  width: int = 64
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  norm: str = "none"
  activation: str = "relu"
  dtype: str = "float32"
  input_shape: Sequence[int] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    dtype = _check_options(self)
    x = _images(x, self.input_shape, "ResNet")
    h = nn.Conv(self.width, (3, 3), padding="SAME", dtype=dtype, name="stem_conv")(x)
    h = normalize(self.norm, h, train, dtype, "stem_norm")
    x = activate(self.activation, h)
    _sow_layer(self, h, x)
    index = 0
    for stage, num_blocks in enumerate(self.stage_sizes):
      for b in range(num_blocks):
        stride = 2 if stage > 0 and b == 0 else 1
        x, layers = BasicBlock(self.width * 2**stage, stride, self.norm, self.activation,
                               dtype, name=f"block_{index}")(x, train)
        for h, a in layers:
          _sow_layer(self, h, a)
        index += 1
    x = _sow_features(self, jnp.mean(x, axis=(1, 2)))
    return nn.Dense(self.num_outputs, dtype=dtype, name="head")(x).astype(jnp.float32)


class EncoderBlock(nn.Module):
  r"""Pre-LN transformer block; returns its output and its MLP hidden layer.

    x = x + attention(norm_0(x))
    h = mlp_dense_0(norm_1(x)),  a = act(h)        <- sown: (h, a)
    x = x + mlp_dense_1(a)

  Attributes:
    num_heads: attention heads (``dim`` must be divisible by it).
    mlp_dim: width of the MLP hidden layer.
    norm: "none", "layer" or "rms" (see `ViT`).
    activation, dtype: as in `ViT` (dtype a jnp dtype here).
  """

  num_heads: int
  mlp_dim: int
  norm: str
  activation: str
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array):
    dim = x.shape[-1]
    y = normalize(self.norm, x, False, self.dtype, "norm_0")
    x = x + nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, qkv_features=dim, out_features=dim, dtype=self.dtype,
        deterministic=True, name="attention")(y)
    y = normalize(self.norm, x, False, self.dtype, "norm_1")
    h = nn.Dense(self.mlp_dim, dtype=self.dtype, name="mlp_dense_0")(y)
    a = activate(self.activation, h)
    return x + nn.Dense(dim, dtype=self.dtype, name="mlp_dense_1")(a), (h, a)


class ViT(nn.Module):
  r"""Vision transformer (Dosovitskiy et al., 2021), ViT-Tiny by default.

    patches: ``patch_embed``, a patch_size x patch_size conv with stride
             patch_size: ``[B, H, W, C] -> [B, N, dim]``, N = HW / patch_size^2
    tokens:  pool "cls": a learned ``cls_token`` (init 0) is prepended (T = N + 1);
             pool "mean": T = N
    x = tokens + pos_embed                         (learned, [1, T, dim], N(0, 0.02^2))
    depth x `EncoderBlock` (``block_0`` ..), then ``final_norm``
    features: x[:, 0] (the class token) for "cls", mean over tokens for "mean"
    logits = head(features)

  ``norm`` is the normalisation of the pre-LN blocks and of ``final_norm``:
  "layer" (LayerNorm, the standard ViT), "rms" (RMSNorm), or "none" (no
  normalisation anywhere). "batch" and "hybrid" are rejected. The sown layers
  are each block's MLP hidden layer, ``[B, T, mlp_dim]`` (the preactivation is
  the input to the nonlinearity; it is not normalised); the probes treat
  every token as an example.

  Attributes:
    num_outputs: size of the linear head.
    patch_size: side of the square patches; must divide H and W.
    dim: token width (192 in ViT-Tiny).
    depth: number of blocks (12).
    num_heads: attention heads (3); must divide ``dim``.
    mlp_dim: MLP hidden width (768).
    pool: "cls" or "mean".
    norm: "none", "layer" or "rms".
    activation, dtype, input_shape: as in `CNN`; the activation is the MLP's.
  """

  num_outputs: int
  patch_size: int = 4
  dim: int = 192
  depth: int = 12
  num_heads: int = 3
  mlp_dim: int = 768
  pool: str = "cls"
  norm: str = "layer"
  activation: str = "gelu"
  dtype: str = "float32"
  input_shape: Sequence[int] | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # No batch statistics and no dropout.
    dtype = _check_options(self, VIT_NORMS)
    if self.pool not in VIT_POOLS:
      raise ValueError(f"unknown pool {self.pool!r}; choose one of {VIT_POOLS}")
    if self.dim % self.num_heads:
      raise ValueError(f"num_heads: dim {self.dim} is not divisible by num_heads "
                       f"{self.num_heads}")
    x = _images(x, self.input_shape, "ViT")
    p = self.patch_size
    if x.shape[1] % p or x.shape[2] % p:
      raise ValueError(f"patch_size: image size {x.shape[1]}x{x.shape[2]} is not divisible "
                       f"by patch_size {p}")
    x = nn.Conv(self.dim, (p, p), strides=p, padding="VALID", dtype=dtype,
                name="patch_embed")(x)
    x = x.reshape((x.shape[0], -1, self.dim))
    if self.pool == "cls":
      cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.dim), jnp.float32)
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (x.shape[0], 1, self.dim)),
                           x], axis=1)
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (1,) + x.shape[1:],
                     jnp.float32)
    x = x + pos.astype(dtype)
    for i in range(self.depth):
      x, (h, a) = EncoderBlock(self.num_heads, self.mlp_dim, self.norm, self.activation,
                               dtype, name=f"block_{i}")(x)
      _sow_layer(self, h, a)
    x = normalize(self.norm, x, False, dtype, "final_norm")
    x = _sow_features(self, x[:, 0] if self.pool == "cls" else jnp.mean(x, axis=1))
    return nn.Dense(self.num_outputs, dtype=dtype, name="head")(x).astype(jnp.float32)


# ----------------------------------------------------------------------------
# Model-agnostic helpers.


def training_model(model: nn.Module) -> nn.Module:
  """`model` with its dense layers' kernel gradients formed in the kernels'
  layout (`plastix.matmul.dense_dot_general`), for the training step's
  gradient: the same function and parameters, faster to differentiate under
  `jax.vmap` on a CPU, but reverse-mode only. Models without the option
  (`ResNet`, `ViT`) are returned unchanged."""
  if "dense_dot_general" not in {f.name for f in dataclasses.fields(model)}:
    return model
  return model.clone(dense_dot_general=matmul.dense_dot_general)


def patches_model(model: nn.Module) -> nn.Module:
  """`training_model`, and a CNN's convolutions as products over patches
  (`plastix.matmul.patches_conv`): the same function up to float rounding (the
  sums run in another order), much faster under `jax.vmap` over per-seed
  kernels on a CPU; reverse-mode only. The RL loop acts and learns with it."""
  model = training_model(model)
  if "conv_general_dilated" in {f.name for f in dataclasses.fields(model)}:
    return model.clone(conv_general_dilated=matmul.patches_conv)
  return model


def init_variables(model: nn.Module, key: jax.Array, example_x: jax.Array):
  """Initialises `model` on `example_x`; returns ``(params, model_state)``.

  ``model_state`` holds every collection but ``params`` (``{"batch_stats":
  ...}`` for "batch" and "hybrid" norms, ``{}`` otherwise).
  """
  variables = dict(model.init(key, example_x, train=False))
  params = variables.pop("params")
  variables.pop("intermediates", None)
  return params, variables


def apply_model(model: nn.Module, params, model_state, x: jax.Array, train: bool = False):
  """Runs `model`; returns ``(logits, new_model_state)``.

  With ``train`` the batch statistics of `x` are used and the running
  statistics updated; otherwise the running statistics are used and
  `model_state` is returned unchanged.
  """
  variables = {"params": params, **model_state}
  if train and model_state:
    logits, new_state = model.apply(variables, x, train=True, mutable=list(model_state))
    return logits, dict(new_state)
  return model.apply(variables, x, train=train), model_state


class Forward(NamedTuple):
  """One eval-mode forward pass with what the probes read (`forward_with_features`)."""
  logits: jax.Array
  preactivations: list  # [B, ..., units] per hidden layer, in forward order.
  activations: list     # the same layers after the nonlinearity.
  features: jax.Array   # [B, D]: the representation, the linear head's input.


def forward_with_features(model: nn.Module, params, x: jax.Array, model_state=None) -> Forward:
  """Runs `model` in eval mode; returns its logits, every hidden layer's
  preactivations and activations, and its representation (the head's input).

  `model_state` (from `init_variables` / `apply_model`) is required for the
  "batch" and "hybrid" norms: eval mode normalises with its running statistics.
  """
  variables = {"params": params, **(model_state or {})}
  logits, state = model.apply(variables, x, train=False, mutable=["intermediates"])
  inter = state["intermediates"]
  (features,) = inter["features"]
  return Forward(logits, list(inter["preactivations"]), list(inter["activations"]), features)


def hidden_features(model: nn.Module, params, x: jax.Array, model_state=None):
  """Runs `model` in eval mode; returns (logits, [preactivations], [activations]).

  One array per hidden layer, in forward order, the units on the last axis
  (`forward_with_features` adds the representation).
  """
  forward = forward_with_features(model, params, x, model_state)
  return forward.logits, forward.preactivations, forward.activations


def redo_layers(model: nn.Module) -> list[tuple[str, str]]:
  r"""``(layer, next_layer)`` parameter names for each hidden layer, in forward order.

  The output units of ``layer`` (``dense_i`` or ``conv_i``) are the hidden
  units of layer i; ``next_layer`` consumes them. Resetting hidden unit u of
  layer i means re-initialising column u of ``layer``'s kernel (last axis)
  and entry u of its bias, resetting entry u of ``norm_i``'s params (when the
  model has a norm; same index i) and zeroing the weights of ``next_layer``
  that read the unit:

  * dense or conv consumer: the input slices ``kernel[..., u, :]``;
  * a dense layer after the flatten of a conv map ``[H, W, C]``: the kernel
    rows ``p * C + u`` for every position p (flatten is row-major).

  Not for "crelu", where unit u would feed two inputs of the consumer (u and
  C + u): `resets.reset_masks` refuses it, as the config check refuses
  ``redo`` with ``crelu``.

  Raises:
    ValueError: for `ResNet` and `ViT` (units write into residual streams).
  """
  if isinstance(model, MLP):
    names = [f"dense_{i}" for i in range(len(model.hidden_sizes))]
  elif isinstance(model, CNN):
    k = len(model.channels)
    names = ([f"conv_{i}" for i in range(k)]
             + [f"dense_{k + j}" for j in range(len(model.hidden_sizes))])
  elif isinstance(model, (ResNet, ViT)):
    raise ValueError(f"redo_layers: {type(model).__name__} is not supported (its hidden "
                     "units write into residual streams)")
  else:
    raise ValueError(f"redo_layers: unknown model type {type(model).__name__}")
  return list(zip(names, names[1:] + ["head"]))


# ----------------------------------------------------------------------------
# Factory.


def _field(config, name: str, default):
  value = config.get(name, default)
  return default if value is None else value


def _error(field: str, message: str, value) -> ValueError:
  return ValueError(f"model.{field}: {message} (got {value!r})")


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _int(config, name: str, default: int, minimum: int = 1) -> int:
  value = _field(config, name, default)
  if not _is_int(value) or value < minimum:
    raise _error(name, f"must be an integer >= {minimum}", value)
  return value


def _ints(config, name: str, default: Sequence[int], allow_empty: bool = False) -> tuple:
  value = _field(config, name, default)
  if isinstance(value, int) and not isinstance(value, bool):
    value = (value,)
  ok = isinstance(value, Sequence) and not isinstance(value, str)
  ok = ok and all(_is_int(v) and v > 0 for v in value) and (allow_empty or len(value) > 0)
  if not ok:
    raise _error(name, "must be a sequence of positive integers", value)
  return tuple(value)


def _choice(config, name: str, default: str, options: Sequence[str]) -> str:
  value = _field(config, name, default)
  if value not in options:
    raise _error(name, f"choose one of {', '.join(options)}", value)
  return value


def _common(config, norms=NORMS, norm="none", activation="relu") -> dict:
  return dict(norm=_choice(config, "norm", norm, norms),
              activation=_choice(config, "activation", activation, ACTIVATIONS),
              dtype=_choice(config, "dtype", "float32", tuple(DTYPES)))


def _image_shape(input_shape, name: str):
  if input_shape is None:
    return None
  shape = tuple(input_shape)
  if len(shape) == 2:
    shape += (1,)
  if len(shape) != 3 or not all(_is_int(s) and s > 0 for s in shape):
    raise ValueError(f"input_shape: model {name!r} needs (height, width[, channels]), "
                     f"got {input_shape!r}")
  return shape


def _build_mlp(config, num_outputs, input_shape):
  del input_shape  # The MLP flattens its inputs.
  depth, width = _int(config, "depth", 2), _int(config, "width", 256)
  return MLP(hidden_sizes=(width,) * depth, num_outputs=num_outputs, **_common(config))


# The `cnn` model's padding options (``model.cnn_padding``).
CNN_PADDINGS = ("SAME", "VALID")


def _build_cnn(config, num_outputs, input_shape):
  depth, width = _int(config, "depth", 2, minimum=0), _int(config, "width", 256)
  channels = _ints(config, "cnn_channels", (32, 64))
  kernel, stride = _int(config, "cnn_kernel_size", 3), _int(config, "cnn_stride", 2)
  padding = _choice(config, "cnn_padding", "SAME", CNN_PADDINGS)
  shape = _image_shape(input_shape, "cnn")
  if shape is not None and padding == "VALID":
    size = min(shape[0], shape[1])
    for _ in channels:
      size = (size - kernel) // stride + 1 if size >= kernel else 0
    if size < 1:
      raise _error("cnn_kernel_size", f"{len(channels)} VALID convs of this kernel and "
                   f"stride {stride} leave nothing of {shape[0]}x{shape[1]} images", kernel)
  return CNN(num_outputs=num_outputs, channels=channels, hidden_sizes=(width,) * depth,
             kernel_size=kernel, stride=stride, padding=padding, input_shape=shape,
             **_common(config))


# The Nature DQN torso's fixed geometry (Mnih et al., 2015).
NATURE_KERNELS, NATURE_STRIDES = (8, 4, 3), (4, 2, 1)


def _build_nature_cnn(config, num_outputs, input_shape):
  channels = _ints(config, "cnn_channels", (32, 64, 64))
  if len(channels) != 3:
    raise _error("cnn_channels", "nature_cnn has three conv layers", channels)
  shape = _image_shape(input_shape, "nature_cnn")
  if shape is not None:
    size = min(shape[0], shape[1])
    for k, s in zip(NATURE_KERNELS, NATURE_STRIDES):
      size = (size - k) // s + 1 if size >= k else 0
    if size < 1:
      raise ValueError(f"input_shape: model 'nature_cnn' needs images of at least 36x36 "
                       f"(8x8/4, 4x4/2, 3x3/1 VALID convs), got {input_shape!r}")
  scale = _field(config, "input_scale", 1.0 / 255.0)
  if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale > 0:
    raise _error("input_scale", "must be a positive number", scale)
  depth, width = _int(config, "depth", 1, minimum=0), _int(config, "width", 512)
  return CNN(num_outputs=num_outputs, channels=channels, hidden_sizes=(width,) * depth,
             kernel_sizes=NATURE_KERNELS, strides=NATURE_STRIDES, padding="VALID",
             input_scale=float(scale), input_shape=shape, **_common(config))


def _build_resnet(config, num_outputs, input_shape):
  return ResNet(num_outputs=num_outputs, width=_int(config, "resnet_width", 64),
                stage_sizes=_ints(config, "resnet_stage_sizes", (2, 2, 2, 2)),
                input_shape=_image_shape(input_shape, "resnet18"), **_common(config))


def _build_vit(config, num_outputs, input_shape):
  common = _common(config, VIT_NORMS, norm="layer", activation="gelu")
  patch = _int(config, "vit_patch_size", 4)
  dim, heads = _int(config, "vit_dim", 192), _int(config, "vit_heads", 3)
  if dim % heads:
    raise _error("vit_heads", f"must divide vit_dim {dim}", heads)
  shape = _image_shape(input_shape, "vit_tiny")
  if shape is not None and (shape[0] % patch or shape[1] % patch):
    raise _error("vit_patch_size", f"must divide the image size {shape[0]}x{shape[1]}", patch)
  return ViT(num_outputs=num_outputs, patch_size=patch, dim=dim,
             depth=_int(config, "vit_depth", 12), num_heads=heads,
             mlp_dim=_int(config, "vit_mlp_dim", 768),
             pool=_choice(config, "vit_pool", "cls", VIT_POOLS), input_shape=shape, **common)


# name -> builder(model_config, num_outputs, input_shape) -> nn.Module.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": _build_mlp,
    "cnn": _build_cnn,
    "nature_cnn": _build_nature_cnn,
    "resnet18": _build_resnet,
    "vit_tiny": _build_vit,
}


def create(model_config: Mapping[str, Any], num_outputs: int,
           input_shape: Sequence[int] | None = None) -> nn.Module:
  r"""The model a config describes (an ``ml_collections.ConfigDict`` or a dict).

  Fields (a missing or None field takes its default):

  | field              | models      | default      | meaning                           |
  |--------------------|-------------|--------------|-----------------------------------|
  | name               | all         | (required)   | one of `MODELS`                   |
  | norm               | all         | "none"       | one of `NORMS` ("layer" for ViT,  |
  |                    |             |              | which takes none/layer/rms)       |
  | activation         | all         | "relu"       | one of `ACTIVATIONS` ("gelu" ViT) |
  | dtype              | all         | "float32"    | or "bfloat16"                     |
  | depth, width       | mlp, cnn    | 2, 256       | dense layers (after the convs)    |
  | cnn_channels       | cnn         | (32, 64)     | channels of each conv             |
  | cnn_kernel_size    | cnn         | 3            | conv kernel side                  |
  | cnn_stride         | cnn         | 2            | conv stride                       |
  | cnn_padding        | cnn         | "SAME"       | or "VALID" (no padding)           |
  | (nature_cnn)       | nature_cnn  | channels (32, 64, 64), depth 1, width 512; kernels    |
  |                    |             | 8/4/3, strides 4/2/1, VALID (fixed)                  |
  | input_scale        | nature_cnn  | 1/255        | multiplies the inputs             |
  | resnet_width       | resnet18    | 64           | stem / first-stage channels       |
  | resnet_stage_sizes | resnet18    | (2, 2, 2, 2) | basic blocks per stage            |
  | vit_patch_size     | vit_tiny    | 4            | patch side                        |
  | vit_dim            | vit_tiny    | 192          | token width                       |
  | vit_depth          | vit_tiny    | 12           | transformer blocks                |
  | vit_heads          | vit_tiny    | 3            | attention heads                   |
  | vit_mlp_dim        | vit_tiny    | 768          | MLP hidden width                  |
  | vit_pool           | vit_tiny    | "cls"        | "cls" token or "mean" of tokens   |

  For the CNN ``depth`` may be 0 (no dense layer after the convs).

  Args:
    model_config: the fields above.
    num_outputs: size of the linear head.
    input_shape: ``(H, W, C)`` (or ``(H, W)``, one channel) of each example:
      the conv models then accept flattened inputs ``[B, H*W*C]`` too, and the
      ViT's patch size is checked against it. Ignored by the MLP.

  Raises:
    ValueError: one line, ``model.<field>: ...``, for an unknown name or value
      or impossible sizes (``input_shape: ...`` for a bad input shape).
  """
  name = _field(model_config, "name", None)
  if name not in MODELS:
    raise _error("name", f"choose one of {', '.join(MODELS)}", name)
  if not _is_int(num_outputs) or num_outputs < 1:
    raise ValueError(f"num_outputs: must be a positive integer (got {num_outputs!r})")
  return MODELS[name](model_config, num_outputs, input_shape)
