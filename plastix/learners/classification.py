"""Classification: the network's outputs are logits over the classes.

The loss is the cross-entropy to the task's labels (with label smoothing), or
with ``loss = "mse"`` the squared error to ``target_scale * onehot(y)`` (the
target-magnitude experiments); the accuracy is that of the argmax.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import optax

from plastix import config_errors
from plastix import losses
from plastix import shifts
from plastix.learners import base


@dataclasses.dataclass(frozen=True)
class Classification(base.Learner):
  """Static settings: ``loss`` ("cross_entropy" or "mse") and ``label_smoothing``
  (``a`` of `losses.softmax_cross_entropy`; cross-entropy only)."""
  name: ClassVar[str] = "classification"
  losses: ClassVar[tuple[str, ...]] = ("auto", "cross_entropy", "mse")
  default_loss: ClassVar[str] = "cross_entropy"

  loss: str = "cross_entropy"
  label_smoothing: float = 0.0

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> Classification:
    return cls(loss=cls.loss_name(config), label_smoothing=float(config.loss.label_smoothing))

  @classmethod
  def check_settings(cls, config: ml_collections.ConfigDict) -> None:
    config_errors.check(config, "loss.label_smoothing", lambda v: 0 <= v <= 1,
                        "must be in [0, 1]")

  @classmethod
  def check(cls, config: ml_collections.ConfigDict) -> None:
    """Also: label smoothing only with the cross-entropy, and a ``target_scale``
    shift (which scales one-hot targets) only with ``loss.name = "mse"``."""
    super().check(config)
    if config.loss.name == "mse":
      base.refuse_label_smoothing(config, f"loss.name is {config.loss.name!r}")
    if "target_scale" in shifts.parse_shift(config.shift) and config.loss.name != "mse":
      raise config_errors.ConfigError(
          "loss.name", "target_scale scales one-hot targets, so classification needs "
          f"loss.name = 'mse' (got {config.loss.name!r})")

  @classmethod
  def chance_accuracy(cls, num_classes: int) -> float | None:
    """``1 / num_classes`` (None without classes)."""
    return 1.0 / num_classes if num_classes >= 1 else None

  def task_loss(self, spec, hp, data, state, shift, outputs, y, key):
    """Mean over the batch of the cross-entropy (smoothed with
    ``label_smoothing = a``: targets ``(1 - a) onehot(y) + a / K``), or of
    ``||outputs - target_scale * onehot(y)||^2 / K`` with ``loss = "mse"``;
    accuracy ``mean 1[argmax outputs = y]``."""
    del spec, hp, data, shift, key
    accuracy = jnp.mean(jnp.argmax(outputs, -1) == y)
    if self.loss == "mse":
      onehot = jax.nn.one_hot(y, outputs.shape[-1], dtype=outputs.dtype)
      loss = jnp.mean(losses.mse(outputs, state.task.target_scale * onehot))
    elif self.label_smoothing:
      loss = jnp.mean(losses.softmax_cross_entropy(outputs, y, self.label_smoothing))
    else:
      loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(outputs, y))
    return loss, accuracy

  def label_losses(self, outputs: jax.Array, labels: jax.Array, target_scale) -> jax.Array:
    """``[B]`` per-example losses without label smoothing: the cross-entropy, or
    with ``loss = "mse"`` the squared error to ``target_scale * onehot``."""
    if self.loss == "mse":
      onehot = jax.nn.one_hot(labels, outputs.shape[-1], dtype=outputs.dtype)
      return losses.mse(outputs, target_scale * onehot)
    return optax.softmax_cross_entropy_with_integer_labels(outputs, labels)

  def probe_loss(self, outputs, y, target_scale):
    """The mean of `label_losses` (no smoothing)."""
    return jnp.mean(self.label_losses(outputs, y, target_scale))

  def held_out_metrics(self, spec, outputs, inputs, task, data, task_index):
    """`base.held_out_label_metrics` with `label_losses` (the task's loss,
    without regularisers or smoothing)."""
    del spec, inputs, task_index
    return base.held_out_label_metrics(
        outputs, task, data.test_labels,
        lambda out, labels: self.label_losses(out, labels, task.target_scale))
