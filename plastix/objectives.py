"""The engine's objectives: from a minibatch to the loss a run minimises.

`model_inputs` turns stored pixels into the model's inputs, `sample_indices`
draws a minibatch, `task_loss` is the loss of the spec's learner
(classification, regression or the contextual bandit's TD error; see
`plastix.learners`), `regularized_loss` adds the regularisers a spec turns on,
and `probe_loss_fn` is the supervised loss the probes differentiate. Each takes
the static `EngineSpec` first and leaves what differs between learners to
``spec.learner``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from plastix import losses
from plastix import models
from plastix import optim
from plastix import shifts
from plastix.engine_types import EngineSpec, HParams, TrainData, TrainState


def model_inputs(images_uint8: jax.Array, data: TrainData) -> jax.Array:
  """uint8 pixels to float32: ``(p / 255 - mean) / std`` (mean 0, std 1: [0, 1] scaling)."""
  x = images_uint8.astype(jnp.float32) / 255.0
  return (x - data.mean) / data.std if data.standardize else x


def sample_indices(spec: EngineSpec, key, task: shifts.Task, data: TrainData, batch_size=None):
  """Minibatch indices (``spec.batch_size`` of them unless `batch_size`), as the
  learner draws them (`plastix.learners.Learner.sample_indices`: uniform over
  the examples in play)."""
  batch_size = spec.batch_size if batch_size is None else batch_size
  return spec.learner.sample_indices(spec, key, task, data, batch_size)


def apply_model(spec: EngineSpec, params, model_state, x, train: bool, model=None):
  """``(outputs, new model_state)`` of the spec's model (or `model`, a variant
  of it with the same parameters) on float32 inputs `x`."""
  model = spec.model if model is None else model
  return models.apply_model(model, params, model_state, x.astype(jnp.float32), train=train)


def regularized_loss(spec: EngineSpec, hp: HParams, data: TrainData, state: TrainState,
                     shift: shifts.Shift, x, y, key, params):
  """The training objective: `task_loss` plus the regularisers the spec turns on.

    total = loss + [coupled_l2] (l2 / 2) sum_masked ||p||^2
                 + [grad_norm_penalty] grad_norm_penalty * ||grad_p loss||^2

  Returns ``(total, (loss, accuracy, new_model_state))``.
  """
  loss, (accuracy, model_state) = task_loss(spec, hp, data, state, shift, x, y, key, params)
  total = loss
  if spec.coupled_l2:
    total += losses.l2_penalty(params, hp.l2, optim.WEIGHT_DECAY_MASKS[spec.weight_decay_mask])
  if spec.grad_norm_penalty:
    data_loss = lambda p: task_loss(spec, hp, data, state, shift, x, y, key, p)[0]
    total += losses.grad_norm_penalty(data_loss, params, strength=hp.grad_norm_penalty)
  return total, (loss, accuracy, model_state)


def task_loss(spec: EngineSpec, hp: HParams, data: TrainData, state: TrainState,
              shift: shifts.Shift, x, y, key, params):
  """The minibatch loss of `params`, and (accuracy, new model state): the
  learner's (``spec.learner.task_loss``: classification, regression or the
  contextual bandit, see `plastix.learners`) on the network's outputs.

  The network is `models.training_model` of the spec's: the same function,
  whose gradient XLA computes faster (reverse mode only; the probes
  differentiate the spec's model in both modes).
  """
  outputs, model_state = apply_model(spec, params, state.model_state, x, train=True,
                                     model=models.training_model(spec.model))
  loss, accuracy = spec.learner.task_loss(spec, hp, data, state, shift, outputs, y, key)
  return loss, (accuracy, model_state)


def probe_loss_fn(spec: EngineSpec, model_state, target_scale):
  """``loss(params, (x, y))``: the supervised loss the probes differentiate,
  the learner's ``probe_loss`` of the evaluation network's outputs
  (classification: the cross-entropy, or MSE to scaled one-hot targets with
  ``loss = "mse"``; regression: the training loss; bandit: the squared error
  of every action's value to its reward ``1[a = y]``)."""

  def loss(params, batch):
    x, y = batch
    out, _ = apply_model(spec, params, model_state, x, train=False)
    return spec.learner.probe_loss(out, y, target_scale)

  return loss


def held_out_metrics(spec: EngineSpec, params, model_state, task: shifts.Task,
                     data: TrainData, task_index) -> tuple[jax.Array, jax.Array]:
  """``(test_accuracy, test_loss)`` of the network on the held-out examples under `task`.

  The held-out inputs take the task's input transform (`shifts.held_out_inputs`)
  and the network runs in evaluation mode; the learner scores its float32
  outputs (``spec.learner.held_out_metrics``):

  * classification: a held-out example of dataset class y has label
    ``class_map[y]`` and counts where its class is in play
    (`shifts.held_out_labels`); accuracy is that of the argmax and the loss
    the task's, without regularisers or label smoothing (cross-entropy, or the
    squared error to ``target_scale * onehot`` for ``loss = "mse"``), both
    averaged over the counted examples:
    ``sum_i w_i l_i / sum_i w_i``. Both are NaN where labels are random per
    example (no label map) or no class is in play.
  * bandit: the same accuracy (the greedy action is the rewarded class) and
    the squared error of every action's value to its reward ``1[a = y]`` (the
    TD target with gamma = 0, as `probe_loss_fn`).
  * regression: the held-out targets are the task's random network on the
    held-out inputs, standardised with the training set's statistics
    (`shifts.regression_targets` with ``held_out``) and scaled by
    ``target_scale``; the loss is the training loss (MSE, or a distributional
    head's cross-entropy) and the accuracy NaN.

  NaN for both without held-out examples (``data.test_images`` None).
  """
  nan = jnp.float32(jnp.nan)
  if data.test_images is None:
    return nan, nan
  raw = model_inputs(data.test_images, data)
  x = shifts.held_out_inputs(task, raw)
  out, _ = apply_model(spec, params, model_state, x, train=False)
  return spec.learner.held_out_metrics(spec, out.astype(jnp.float32), raw, task, data,
                                       task_index)


def clipped_fraction(spec: EngineSpec, task: shifts.Task) -> jax.Array:
  """Fraction of the task's regression targets (times ``target_scale``) outside
  a distributional head's support ``[support[0], support[-1]]``, where they are
  clipped; NaN without a support (other losses and learners never clip)."""
  return spec.learner.clipped_fraction(task)
