"""Regression: the network fits each task's real-valued targets (``random_targets``).

The loss is the squared error (``loss = "mse"``), or the cross-entropy of a
distributional head to the two-hot / HL-Gauss encoding of each target over a
fixed support (the prediction is then the expected value); the accuracy is
undefined (NaN).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp
import ml_collections
import numpy as np

from plastix import config_errors
from plastix import losses
from plastix import objectives
from plastix import shifts
from plastix.learners import base

DISTRIBUTIONAL_LOSSES = ("two_hot", "hl_gauss")
# A distributional head's support must hold its targets' mean +- this many std.
SUPPORT_STDS = 3.0


@dataclasses.dataclass(frozen=True)
class Regression(base.Learner):
  """Static settings: ``loss`` ("mse", "two_hot" or "hl_gauss"), the
  distributional heads' ``support`` (their atoms; () for "mse") and
  ``hl_gauss_sigma`` (HL-Gauss's sigma in units of the support's bin width)."""
  name: ClassVar[str] = "regression"
  losses: ClassVar[tuple[str, ...]] = ("auto", "mse") + DISTRIBUTIONAL_LOSSES
  default_loss: ClassVar[str] = "mse"

  loss: str = "mse"
  support: tuple[float, ...] = ()
  hl_gauss_sigma: float = 0.75

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> Regression:
    return cls(loss=cls.loss_name(config), support=support(config),
               hl_gauss_sigma=float(config.loss.hl_gauss_sigma))

  @classmethod
  def check_settings(cls, config: ml_collections.ConfigDict) -> None:
    config_errors.check(config, "loss.num_bins",
                        lambda v: config_errors.positive_int(v) and v >= 2,
                        "must be an integer >= 2")
    config_errors.check(config, "loss.support_max", lambda v: v > config.loss.support_min,
                        "must be larger than loss.support_min")
    config_errors.check(config, "loss.hl_gauss_sigma", lambda v: v > 0, "must be > 0")

  @classmethod
  def check(cls, config: ml_collections.ConfigDict) -> None:
    """Also: no label smoothing, and a distributional support that covers the
    targets (`target_range`; targets outside it would be clipped)."""
    super().check(config)
    base.refuse_label_smoothing(config, f"shift {config.shift!r} is a regression")
    if config.loss.name not in DISTRIBUTIONAL_LOSSES:
      return
    low, high = target_range(config)
    lo, hi = config.loss.support_min, config.loss.support_max
    if low < lo or high > hi:
      raise config_errors.ConfigError(
          "loss.support_min" if low < lo else "loss.support_max",
          f"the {config.loss.name} support [{lo:g}, {hi:g}] does not cover the targets, "
          f"which reach [{low:g}, {high:g}] (each task's mean +- {SUPPORT_STDS:g} std: "
          "shift_params.target_offset, target_scale, scale_growth); targets outside the "
          f"support are clipped, so set loss.support_min <= {low:g} and "
          f"loss.support_max >= {high:g}")

  @classmethod
  def num_outputs(cls, config: ml_collections.ConfigDict, num_classes: int) -> int:
    """``target_dim``, times the support's bins for a distributional loss."""
    del num_classes
    bins = config.loss.num_bins if cls.loss_name(config) in DISTRIBUTIONAL_LOSSES else 1
    return int(config.shift_params.target_dim) * int(bins)

  def task_inputs(self, data):
    """Every training example's model inputs: the task's random network maps
    them to the targets (`shifts.regression_targets`)."""
    return objectives.model_inputs(data.images, data)

  def targets(self, labels, targets):
    del labels
    return targets

  def loss_of(self, outputs, targets):
    """Mean squared error, or mean cross-entropy to each target's two-hot /
    HL-Gauss encoding over ``support`` (HL-Gauss's sigma is
    ``hl_gauss_sigma * (support[1] - support[0])``)."""
    if self.loss == "mse":
      return jnp.mean(losses.mse(outputs, targets))
    support = jnp.asarray(self.support, jnp.float32)
    logits = outputs.reshape(targets.shape + (support.shape[0],))
    if self.loss == "two_hot":
      return jnp.mean(losses.two_hot_loss(logits, targets, support))
    sigma = self.hl_gauss_sigma * (self.support[1] - self.support[0])
    return jnp.mean(losses.hl_gauss_loss(logits, targets, support, sigma))

  def task_loss(self, spec, hp, data, state, shift, outputs, y, key):
    """`loss_of` the task's targets `y`; accuracy NaN."""
    del spec, hp, data, state, shift, key
    return self.loss_of(outputs, y), jnp.float32(jnp.nan)

  def probe_loss(self, outputs, y, target_scale):
    """`loss_of` the probe batch's targets."""
    del target_scale
    return self.loss_of(outputs, y)

  def held_out_metrics(self, spec, outputs, inputs, task, data, task_index):
    """``(NaN, loss)``: `loss_of` the held-out targets, the task's random network
    on the held-out inputs standardised with the training set's statistics
    (`shifts.regression_targets` with ``held_out``) times ``target_scale``."""
    train = objectives.model_inputs(data.images, data)
    targets = shifts.regression_targets(task.target_key, task_index, train,
                                        spec.shift_params, held_out=inputs)
    return jnp.float32(jnp.nan), self.loss_of(outputs, targets * task.target_scale)

  def final_fit_task(self, spec, ctx, key):
    """Task 0's structure with fresh random targets and no offset."""
    params = dataclasses.replace(spec.shift_params, target_offset=0.0)
    return shifts.initial_task(key, ctx._replace(params=params), spec.input_dim, False,
                               "random_targets", params.target_dim)

  def clipped_fraction(self, task):
    """Fraction of the task's targets (times ``target_scale``) outside
    ``[support[0], support[-1]]``, where a distributional head clips them; NaN
    without a support (MSE never clips)."""
    if not self.support:
      return jnp.float32(jnp.nan)
    y = task.targets * task.target_scale
    outside = (y < self.support[0]) | (y > self.support[-1])
    return jnp.mean(outside.astype(jnp.float32))


def support(config: ml_collections.ConfigDict) -> tuple[float, ...]:
  """The distributional losses' atoms: ``num_bins`` evenly spaced in
  [support_min, support_max]; () for other losses."""
  if Regression.loss_name(config) not in DISTRIBUTIONAL_LOSSES:
    return ()
  atoms = np.linspace(config.loss.support_min, config.loss.support_max, config.loss.num_bins)
  return tuple(float(a) for a in atoms)


def target_range(config: ml_collections.ConfigDict) -> tuple[float, float]:
  """``(low, high)``: where a regression sequence's targets lie, each task's
  mean ``c_t`` plus or minus `SUPPORT_STDS` of its standard deviation.

  Task t's targets have mean ``c_t`` (``target_offset`` for the first
  ``offset_tasks`` tasks, 0 after) and standard deviation ``target_scale``,
  times ``scale_growth ** t`` under a ``target_scale`` shift (see
  `plastix.shifts.regression_targets`). Standardised targets of N examples can
  reach ``sqrt(N - 1)`` standard deviations; beyond `SUPPORT_STDS` they are
  rare (0.3% of a Gaussian), and the engine counts the ones a support clips
  (``target_clipped_fraction``).
  """
  sp = config.shift_params
  tasks = range(config.num_tasks)
  growth = sp.scale_growth if "target_scale" in shifts.parse_shift(config.shift) else 1.0
  low = high = None
  for t in tasks:
    c = sp.target_offset if t < sp.offset_tasks else 0.0
    half = SUPPORT_STDS * sp.target_scale * growth ** t
    low = c - half if low is None else min(low, c - half)
    high = c + half if high is None else max(high, c + half)
  return float(low), float(high)
