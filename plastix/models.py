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


class MLP(nn.Module):
  """ReLU MLP: ``h_i = norm(W_i x_{i-1} + b_i)``, ``x_i = relu(h_i)``, logits ``W x_L + b``.

  Attributes:
    hidden_sizes: width of each hidden layer.
    num_outputs: size of the linear head.
    norm: "none" or "layer" (LayerNorm on the preactivations, before the ReLU,
      as in Lyle et al., 2024).
  """

  hidden_sizes: Sequence[int]
  num_outputs: int
  norm: str = "none"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.norm not in NORMS:
      raise ValueError(f"unknown norm {self.norm!r}; choose one of {NORMS}")
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.hidden_sizes):
      h = nn.Dense(width, name=f"dense_{i}")(x)
      if self.norm == "layer":
        h = nn.LayerNorm(name=f"norm_{i}")(h)
      self.sow("intermediates", "preactivations", h)
      x = nn.relu(h)
      self.sow("intermediates", "activations", x)
    return nn.Dense(self.num_outputs, name="head")(x)


def hidden_features(model: nn.Module, params, x: jax.Array):
  """Runs `model` and returns (logits, [preactivations per layer], [activations per layer])."""
  logits, state = model.apply({"params": params}, x, mutable=["intermediates"])
  inter = state["intermediates"]
  return logits, list(inter["preactivations"]), list(inter["activations"])
