"""The engine's objectives: from a minibatch to the loss a run minimises.

`model_inputs` turns stored pixels into the model's inputs, `sample_indices`
draws a minibatch, `task_loss` is the loss of the shift's objective
(classification, regression or the contextual bandit's TD error),
`regularized_loss` adds the regularisers a spec turns on, and `probe_loss_fn`
is the supervised loss the probes differentiate. Each takes the static
`EngineSpec` first.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

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
  """Minibatch indices: uniform over the examples in play (all of them unless the
  shift grows the task, which `shifts.sample_index` handles)."""
  batch_size = spec.batch_size if batch_size is None else batch_size
  if shifts.grows_tasks(spec.shift):
    return shifts.sample_index(key, task, batch_size)
  return jax.random.randint(key, (batch_size,), 0, data.images.shape[0])


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
  """The minibatch loss of `params`, and (accuracy, new model state), by the objective.

  * classification: cross-entropy (with ``label_smoothing``) or, with
    ``loss = "mse"``, the squared error to ``target_scale * onehot(y)``;
    accuracy is that of the argmax.
  * regression: the squared error to the task's targets (``loss = "mse"``), or
    the cross-entropy to their two-hot / HL-Gauss encoding over
    ``spec.support`` (the prediction is then the expected value); accuracy is
    NaN.
  * bandit: actions are epsilon-greedy in the Q-values (the outputs), the
    reward is 1 for the right class, and the loss is the squared TD error
    ``(Q(x, a) - r - gamma * max_a' Q_target(x', a'))^2`` with ``x'`` a fresh
    context drawn like x and ``Q_target`` the target network; accuracy is that
    of the greedy action.

  The network is `models.training_model` of the spec's: the same function,
  whose gradient XLA computes faster (reverse mode only; the probes
  differentiate the spec's model in both modes).
  """
  outputs, model_state = apply_model(spec, params, state.model_state, x, train=True,
                                     model=models.training_model(spec.model))
  if spec.objective == "regression":
    return regression_loss(spec, outputs, y), (jnp.float32(jnp.nan), model_state)
  accuracy = jnp.mean(jnp.argmax(outputs, -1) == y)
  if spec.objective == "bandit":
    loss = td_loss(spec, hp, data, state, shift, outputs, y, key)
  elif spec.loss == "mse":
    onehot = jax.nn.one_hot(y, outputs.shape[-1], dtype=outputs.dtype)
    loss = jnp.mean(losses.mse(outputs, state.task.target_scale * onehot))
  elif spec.label_smoothing:
    loss = jnp.mean(losses.softmax_cross_entropy(outputs, y, spec.label_smoothing))
  else:
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(outputs, y))
  return loss, (accuracy, model_state)


def regression_loss(spec: EngineSpec, outputs, targets):
  """MSE, or cross-entropy to the two-hot / HL-Gauss encoding of each target."""
  if spec.loss == "mse":
    return jnp.mean(losses.mse(outputs, targets))
  support = jnp.asarray(spec.support, jnp.float32)
  logits = outputs.reshape(targets.shape + (support.shape[0],))
  if spec.loss == "two_hot":
    return jnp.mean(losses.two_hot_loss(logits, targets, support))
  sigma = spec.hl_gauss_sigma * (spec.support[1] - spec.support[0])
  return jnp.mean(losses.hl_gauss_loss(logits, targets, support, sigma))


def td_loss(spec: EngineSpec, hp: HParams, data: TrainData, state: TrainState,
            shift: shifts.Shift, q, labels, key):
  """The contextual bandit's squared TD error of the taken actions (see `task_loss`)."""
  key_explore, key_action, key_next = jax.random.split(key, 3)
  batch = labels.shape[0]
  greedy = jnp.argmax(q, -1)
  explore = jax.random.uniform(key_explore, (batch,)) < spec.bandit_epsilon
  action = jnp.where(explore, jax.random.randint(key_action, (batch,), 0, q.shape[-1]), greedy)
  reward = (action == labels).astype(jnp.float32)
  next_idx = sample_indices(spec, key_next, state.task, data, batch)
  x_next, _ = shift.apply(state.task, model_inputs(data.images[next_idx], data),
                          data.labels[next_idx], next_idx, state.step_index)
  q_next, _ = apply_model(spec, state.target_params, state.model_state, x_next, train=False)
  target = jax.lax.stop_gradient(reward + hp.gamma * jnp.max(q_next, -1))
  q_taken = jnp.take_along_axis(q, action[:, None], -1)[:, 0]
  return jnp.mean(jnp.square(q_taken - target))


def probe_loss_fn(spec: EngineSpec, model_state, target_scale):
  """``loss(params, (x, y))``: the supervised loss the probes differentiate.

  Classification: cross-entropy (or MSE to scaled one-hot targets with
  ``loss = "mse"``); regression: MSE to the targets (distributional heads:
  their cross-entropy); bandit: the squared error of every action's value to
  its reward ``1[a = y]`` (the TD target with gamma = 0).
  """

  def loss(params, batch):
    x, y = batch
    out, _ = apply_model(spec, params, model_state, x, train=False)
    if spec.objective == "regression":
      return regression_loss(spec, out, y)
    return jnp.mean(label_losses(spec, out, y, target_scale))

  return loss


def label_losses(spec: EngineSpec, outputs, labels, target_scale) -> jax.Array:
  """``[B]`` per-example supervised losses of a labelled objective, as
  `probe_loss_fn` averages them: cross-entropy (or, with ``loss = "mse"``, the
  squared error to ``target_scale * onehot``); for the bandit the squared error
  of every action's value to its reward ``1[a = y]``."""
  if spec.objective == "bandit":
    return losses.mse(outputs, jax.nn.one_hot(labels, outputs.shape[-1], dtype=outputs.dtype))
  if spec.loss == "mse":
    onehot = jax.nn.one_hot(labels, outputs.shape[-1], dtype=outputs.dtype)
    return losses.mse(outputs, target_scale * onehot)
  return optax.softmax_cross_entropy_with_integer_labels(outputs, labels)


def held_out_metrics(spec: EngineSpec, params, model_state, task: shifts.Task,
                     data: TrainData, task_index) -> tuple[jax.Array, jax.Array]:
  """``(test_accuracy, test_loss)`` of the network on the held-out examples under `task`.

  The held-out inputs take the task's input transform (`shifts.held_out_inputs`)
  and the network runs in evaluation mode. By objective:

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
  out = out.astype(jnp.float32)
  if spec.objective == "regression":
    train = model_inputs(data.images, data)
    targets = shifts.regression_targets(task.target_key, task_index, train,
                                        spec.shift_params, held_out=raw)
    return nan, regression_loss(spec, out, targets * task.target_scale)
  labels, weights = shifts.held_out_labels(task, data.test_labels)
  per_example = label_losses(spec, out, labels, task.target_scale)
  correct = (jnp.argmax(out, -1) == labels).astype(jnp.float32)
  total = jnp.sum(weights)
  return jnp.sum(weights * correct) / total, jnp.sum(weights * per_example) / total


def clipped_fraction(spec: EngineSpec, task: shifts.Task) -> jax.Array:
  """Fraction of the task's regression targets (times ``target_scale``) outside
  a distributional head's support ``[support[0], support[-1]]``, where they are
  clipped; NaN without a support (other losses never clip)."""
  if spec.objective != "regression" or not spec.support:
    return jnp.float32(jnp.nan)
  y = task.targets * task.target_scale
  outside = (y < spec.support[0]) | (y > spec.support[-1])
  return jnp.mean(outside.astype(jnp.float32))
