"""Flax models whose hidden layers are visible to the probes.

Every hidden layer sows its preactivations (the input to the nonlinearity,
after normalisation) and its activations into the ``intermediates``
collection, so a probe can read them with
``model.apply(variables, x, mutable=["intermediates"])`` or `hidden_features`.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("none", "layer")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class MLP(nn.Module):
  """ReLU MLP: ``h_i = norm(W_i x_{i-1} + b_i)``, ``x_i = relu(h_i)``, logits ``W x_L + b``.

  Attributes:
    hidden_sizes: width of each hidden layer.
    num_outputs: size of the linear head.
    norm: "none" or "layer" (LayerNorm on the preactivations, before the ReLU,
      as in Lyle et al., 2024).
    dtype: "float32" or "bfloat16": the dtype of the layers' computation. The
      parameters stay float32 and the logits are returned as float32.
  """

  hidden_sizes: Sequence[int]
  num_outputs: int
  norm: str = "none"
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.norm not in NORMS:
      raise ValueError(f"unknown norm {self.norm!r}; choose one of {NORMS}")
    if self.dtype not in DTYPES:
      raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {tuple(DTYPES)}")
    dtype = DTYPES[self.dtype]
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.hidden_sizes):
      h = nn.Dense(width, dtype=dtype, name=f"dense_{i}")(x)
      if self.norm == "layer":
        h = nn.LayerNorm(dtype=dtype, name=f"norm_{i}")(h)
      self.sow("intermediates", "preactivations", h)
      x = nn.relu(h)
      self.sow("intermediates", "activations", x)
    return nn.Dense(self.num_outputs, dtype=dtype, name="head")(x).astype(jnp.float32)


def hidden_features(model: nn.Module, params, x: jax.Array):
  """Runs `model` and returns (logits, [preactivations per layer], [activations per layer])."""
  logits, state = model.apply({"params": params}, x, mutable=["intermediates"])
  inter = state["intermediates"]
  return logits, list(inter["preactivations"]), list(inter["activations"])
