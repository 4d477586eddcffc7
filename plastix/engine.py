"""The training engine: a sequence of tasks as one compiled, seed-vmapped program.

Structure (every loop is a ``lax.scan``)::

    train(key)                                 # one seed; jax.vmap over keys
      state = init_state(spec, hp, data, key)
      scan over tasks:  run_task               # train, probe, switch task
        scan over steps: train_step            # one Adam step on a minibatch

What is static (changes the program) lives in `EngineSpec`, a hashable
dataclass; what is traced (may be vmapped over a grid) lives in `HParams`; the
data is an argument, never a baked-in constant. `run_tasks` is jitted once per
`EngineSpec` and task chunk length, so running more tasks (more chunks) never
compiles again, and interventions that change only traced values (weight
decay) share one program.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from plastix import data as data_lib
from plastix.data import preprocess
from plastix import interventions
from plastix import losses
from plastix import models
from plastix import optim
from plastix import probe_suite
from plastix import probes
from plastix import resets
from plastix import shifts

# Independent PRNG streams derived from each seed's key.
_INIT_STREAM, _TASK_STREAM, _STEP_STREAM, _RESET_STREAM, _PROBE_STREAM = 0, 1, 2, 3, 4
# `run_task` draws a task's minibatch indices up front when there are at most
# this many (4 MiB of int32 per run); longer tasks draw them step by step.
PRESAMPLE_LIMIT = 1 << 20


@dataclasses.dataclass(frozen=True)
class EngineSpec:
  """Everything static about a run: changing a field compiles a new program."""
  model: nn.Module
  optimizer: str
  weight_decay_mask: str
  shift: str
  num_classes: int
  input_dim: int
  steps_per_task: int
  batch_size: int
  accuracy_steps: int  # the last steps of each task averaged into train_accuracy.
  random_initial_labels: bool
  probe_settings: probe_suite.ProbeSettings
  run_probes: bool = True  # False fills probe metrics with -1 (to time training alone).
  shift_params: shifts.ShiftParams = shifts.ShiftParams()
  image_shape: tuple[int, ...] = ()  # (H, W, C) of one example.
  loss: str = "cross_entropy"  # see `loss_name` and `_loss`.
  label_smoothing: float = 0.0
  bandit_epsilon: float = 0.1      # contextual_bandit: epsilon-greedy exploration.
  target_update_period: int = 100  # contextual_bandit: steps between target-network syncs.
  # Regularisers whose strengths are traced `HParams`: on when True.
  coupled_l2: bool = False         # loss += (l2 / 2) ||p||^2 over the decay mask.
  grad_norm_penalty: bool = False  # loss += grad_norm_penalty * ||grad loss||^2.
  l2_init: bool = False            # gradient += l2_init * (p - p_0) (optim.l2_init).
  normalize_and_project: bool = False  # kernels projected to their init norm each step.
  # Distributional regression heads: "two_hot" / "hl_gauss" over this support.
  support: tuple[float, ...] = ()
  hl_gauss_sigma: float = 0.75     # in units of the support's bin width.
  # Resets at task ends, in order, every `reset_period` tasks.
  resets: tuple[str, ...] = ()
  reset_period: int = 1
  redo_tau: float = 0.1
  shrink: float = 0.8
  perturb: float = 0.2
  # Runs (seeds x grid points) vmapped side by side in `run_tasks`; the rest
  # run in sequence inside the same program (0: all side by side). See there.
  parallel_runs: int = 0

  @property
  def objective(self) -> str:
    """"classification", "regression" or "bandit" (see `shifts.objective`)."""
    return shifts.objective(self.shift)


@flax.struct.dataclass
class HParams:
  """Traced hyperparameters (float32 scalars); vmappable over a grid."""
  learning_rate: jax.Array
  weight_decay: jax.Array
  b1: jax.Array
  b2: jax.Array
  eps: jax.Array
  shift_eps: jax.Array
  gamma: jax.Array  # contextual_bandit: discount of the TD target.
  l2: jax.Array = 0.0                 # coupled L2 strength (spec.coupled_l2).
  grad_norm_penalty: jax.Array = 0.0  # (spec.grad_norm_penalty).
  l2_init: jax.Array = 0.0            # (spec.l2_init).


@flax.struct.dataclass
class TrainData:
  """The training set as device arrays, and the fixed probe batch."""
  images: jax.Array       # uint8 [N, D], flattened.
  labels: jax.Array       # int32 [N], the dataset's labels.
  probe_index: jax.Array  # int32 [P], the examples the probes run on.
  # With `standardize`, inputs are (images / 255 - mean) / std (float32 [D]);
  # otherwise images / 255 and mean and std are unused.
  mean: jax.Array | float = 0.0
  std: jax.Array | float = 1.0
  standardize: bool = flax.struct.field(pytree_node=False, default=False)
  image_shape: tuple[int, ...] = flax.struct.field(pytree_node=False, default=())  # (H, W, C)


@flax.struct.dataclass
class TrainState:
  params: dict
  model_state: dict      # non-parameter collections (BatchNorm statistics); {} if none.
  opt_state: optax.OptState
  task: shifts.Task
  task_index: jax.Array  # int32: index of the current task.
  step_index: jax.Array  # int32: step within the current task.
  rng: jax.Array         # the seed's key; per-task keys are folded from it.
  reference_means: tuple  # per layer, each unit's mean preactivation at the task's start.
  initial_layer_norms: dict  # module name -> parameter norm at initialisation.
  target_params: dict | None  # contextual_bandit: the TD target network; else None.
  # Where the seed first produced a non-finite loss (checked every step) or
  # non-finite parameters (checked at the end of every task); -1: never. From
  # then on the seed is frozen (no update is applied to its parameters or
  # optimizer state) while the other seeds of the program carry on.
  diverged_task: jax.Array
  diverged_step: jax.Array

  @property
  def diverged(self) -> jax.Array:
    return self.diverged_task >= 0


class TaskMetrics(NamedTuple):
  """Per-task metrics; under the engine's scans each gains [seed, task] axes."""
  train_loss: jax.Array           # mean minibatch loss over the last accuracy_steps.
  train_accuracy: jax.Array       # mean minibatch accuracy over the same steps.
  dead_fraction: jax.Array        # dormant fraction at tau = 0, all hidden units.
  dormant_fraction: jax.Array     # dormant fraction at probes.dormant_tau.
  linearized_fraction: jax.Array  # ReLU units positive on the whole probe batch.
  linearized_fraction_smooth: jax.Array  # units with near-constant preactivation.
  preact_mean_spread: jax.Array   # std over units of per-unit mean preactivations.
  preact_std_mean: jax.Array      # mean over units of per-unit preactivation std.
  preact_drift: jax.Array         # mean |unit mean - its value at the task's start|.
  effective_rank: jax.Array       # of the last hidden layer's activations.
  srank: jax.Array                # of the same features, delta = probes.srank_delta.
  feature_singular_values: jax.Array  # [k] top singular values of those features.
  predictive_entropy: jax.Array   # mean entropy of the softmax of the outputs.
  param_norm: jax.Array           # global L2 norm.
  layer_param_norm: dict          # module name -> L2 norm.
  layer_grad_norm: dict           # module name -> L2 norm of the probe-batch gradient.
  layer_dead_fraction: jax.Array  # [num_hidden_layers].
  layer_preact_drift: jax.Array   # [num_hidden_layers].
  layer_preact_mean_spread: jax.Array  # [num_hidden_layers].
  norm_growth_ratio: jax.Array    # (|head| / |head_0|) / (|first| / |first_0|): 1 at init.
  preact_histogram: jax.Array     # [num_hidden_layers, bins] of per-unit mean preactivations.
  within_task_drift: jax.Array    # [K] preact_drift after each of K equal parts of the task.
  within_task_histogram: jax.Array  # [K, num_hidden_layers, bins] at the same times.
  sharpness: jax.Array            # expensive probes: NaN on the tasks they skip.
  ntk_diagonal_share: jax.Array
  ntk_off_diagonal_mass: jax.Array
  ntk_effective_rank: jax.Array
  ntk_top_eigenvalue_share: jax.Array
  gradient_alignment: jax.Array
  probe_loss: jax.Array
  fresh_probe_loss: jax.Array
  plasticity_probe_loss: jax.Array
  diverged_task: jax.Array        # task of the first non-finite step so far, or -1.
  diverged_step: jax.Array        # its step within that task, or -1.
  num_reset: jax.Array            # units ReDo recycled at this task's end; -1 without ReDo.


def _inputs(images_uint8: jax.Array, data: TrainData) -> jax.Array:
  """uint8 pixels to float32: ``(p / 255 - mean) / std`` (mean 0, std 1: [0, 1] scaling)."""
  x = images_uint8.astype(jnp.float32) / 255.0
  return (x - data.mean) / data.std if data.standardize else x


def _sample(spec: EngineSpec, key, task: shifts.Task, data: TrainData, batch_size=None):
  """Minibatch indices: uniform over the examples in play (all of them unless the
  shift grows the task, which `shifts.sample_index` handles)."""
  batch_size = spec.batch_size if batch_size is None else batch_size
  if shifts.grows_tasks(spec.shift):
    return shifts.sample_index(key, task, batch_size)
  return jax.random.randint(key, (batch_size,), 0, data.images.shape[0])


def _optimizer(spec: EngineSpec, hp: HParams) -> optax.GradientTransformation:
  """Adam or SGD with decoupled decay; l2_init before it, normalize_and_project after."""
  opt = optim.make_optimizer(
      spec.optimizer, hp.learning_rate, hp.weight_decay, b1=hp.b1, b2=hp.b2,
      eps=hp.eps, weight_decay_mask=spec.weight_decay_mask)
  mask = optim.WEIGHT_DECAY_MASKS[spec.weight_decay_mask]
  if spec.l2_init:
    opt = optax.chain(optim.l2_init(hp.l2_init, mask=mask), opt)
  if spec.normalize_and_project:
    opt = optax.chain(opt, optim.normalize_and_project(mask=optim.kernel_mask))
  return opt


def _shift(spec: EngineSpec, hp: HParams, data: TrainData) -> shifts.Shift:
  images = (_inputs(data.images, data) if spec.objective == "regression" else None)
  ctx = shifts.ShiftContext(data.labels, spec.num_classes, hp.shift_eps, images=images,
                            image_shape=spec.image_shape, params=spec.shift_params)
  return shifts.make_shift(spec.shift, ctx, spec.input_dim, spec.random_initial_labels)


def _stream(rng: jax.Array, stream: int, index) -> jax.Array:
  return jax.random.fold_in(jax.random.fold_in(rng, stream), index)


def init_state(spec: EngineSpec, hp: HParams, data: TrainData, rng: jax.Array) -> TrainState:
  """Fresh parameters, optimizer state and task 0 for the seed with key `rng`."""
  params, model_state = _fresh_network(spec, _stream(rng, _INIT_STREAM, 0))
  task = _shift(spec, hp, data).init(_stream(rng, _TASK_STREAM, 0))
  zero, minus_one = jnp.zeros([], jnp.int32), jnp.full([], -1, jnp.int32)
  return TrainState(params=params, model_state=model_state,
                    opt_state=_optimizer(spec, hp).init(params),
                    task=task, task_index=zero, step_index=zero, rng=rng,
                    reference_means=_reference_means(spec, params, model_state, task, data),
                    initial_layer_norms=probes.layer_param_norms(params),
                    target_params=params if spec.objective == "bandit" else None,
                    diverged_task=minus_one, diverged_step=minus_one)


def _fresh_network(spec: EngineSpec, key: jax.Array):
  """``(params, model_state)`` of a new initialisation from `key`."""
  return models.init_variables(spec.model, key, jnp.zeros((1, spec.input_dim), jnp.float32))


def _mark_diverged(state: TrainState, newly_diverged: jax.Array, step) -> TrainState:
  """Records (current task, `step`) as where the seed diverged, if `newly_diverged`."""
  return state.replace(
      diverged_task=jnp.where(newly_diverged, state.task_index, state.diverged_task),
      diverged_step=jnp.where(newly_diverged, step, state.diverged_step))


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
                            if jnp.issubdtype(x.dtype, jnp.inexact)]))


def train_step(spec: EngineSpec, hp: HParams, data: TrainData, state: TrainState,
               key: jax.Array, idx: jax.Array | None = None):
  """One optimizer step on a uniformly sampled minibatch; returns (state, (loss, accuracy)).

  `idx` is the minibatch's example indices, ``_sample(spec, key, state.task,
  data)`` when not given (`run_task` draws a whole task's indices at once,
  the same numbers, so the step loop runs no PRNG of its own).

  A step whose loss is not finite is not applied and marks the seed diverged;
  a diverged seed takes no further steps. (Checking the loss, a scalar, lets
  XLA fuse the guard into the update; the parameters are checked once per task
  in `run_task`.)
  """
  key_objective = jax.random.fold_in(key, 1)
  shift = _shift(spec, hp, data)
  if idx is None:
    idx = _sample(spec, key, state.task, data)
  x, y = shift.apply(state.task, _inputs(data.images[idx], data), data.labels[idx], idx,
                     state.step_index)
  loss_fn = functools.partial(_regularized_loss, spec, hp, data, state, shift, x, y,
                              key_objective)
  (_, (loss, accuracy, model_state)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = _optimizer(spec, hp).update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  newly_diverged = ~state.diverged & ~jnp.isfinite(loss)
  apply = ~state.diverged & ~newly_diverged
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)
  state = _mark_diverged(state, newly_diverged, state.step_index).replace(
      params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
      model_state=keep(model_state, state.model_state), step_index=state.step_index + 1)
  if spec.objective == "bandit":
    step = state.task_index * spec.steps_per_task + state.step_index
    sync = step % spec.target_update_period == 0
    state = state.replace(target_params=jax.tree.map(
        lambda p, t: jnp.where(sync, p, t), state.params, state.target_params))
  return state, (loss, accuracy)


def _regularized_loss(spec: EngineSpec, hp: HParams, data: TrainData, state: TrainState,
                      shift: shifts.Shift, x, y, key, params):
  """The training objective: `_loss` plus the regularisers the spec turns on.

    total = loss + [coupled_l2] (l2 / 2) sum_masked ||p||^2
                 + [grad_norm_penalty] grad_norm_penalty * ||grad_p loss||^2

  Returns ``(total, (loss, accuracy, new_model_state))``.
  """
  loss, (accuracy, model_state) = _loss(spec, hp, data, state, shift, x, y, key, params)
  total = loss
  if spec.coupled_l2:
    total += losses.l2_penalty(params, hp.l2, optim.WEIGHT_DECAY_MASKS[spec.weight_decay_mask])
  if spec.grad_norm_penalty:
    data_loss = lambda p: _loss(spec, hp, data, state, shift, x, y, key, p)[0]
    total += losses.grad_norm_penalty(data_loss, params, strength=hp.grad_norm_penalty)
  return total, (loss, accuracy, model_state)


def _apply(spec: EngineSpec, params, model_state, x, train: bool):
  return models.apply_model(spec.model, params, model_state,
                            x.astype(jnp.float32), train=train)


def _loss(spec: EngineSpec, hp: HParams, data: TrainData, state: TrainState,
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
  """
  outputs, model_state = _apply(spec, params, state.model_state, x, train=True)
  if spec.objective == "regression":
    return _regression_loss(spec, outputs, y), (jnp.float32(jnp.nan), model_state)
  accuracy = jnp.mean(jnp.argmax(outputs, -1) == y)
  if spec.objective == "bandit":
    loss = _td_loss(spec, hp, data, state, shift, outputs, y, key)
  elif spec.loss == "mse":
    onehot = jax.nn.one_hot(y, outputs.shape[-1], dtype=outputs.dtype)
    loss = jnp.mean(losses.mse(outputs, state.task.target_scale * onehot))
  elif spec.label_smoothing:
    loss = jnp.mean(losses.softmax_cross_entropy(outputs, y, spec.label_smoothing))
  else:
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(outputs, y))
  return loss, (accuracy, model_state)


def _regression_loss(spec: EngineSpec, outputs, targets):
  """MSE, or cross-entropy to the two-hot / HL-Gauss encoding of each target."""
  if spec.loss == "mse":
    return jnp.mean(losses.mse(outputs, targets))
  support = jnp.asarray(spec.support, jnp.float32)
  logits = outputs.reshape(targets.shape + (support.shape[0],))
  if spec.loss == "two_hot":
    return jnp.mean(losses.two_hot_loss(logits, targets, support))
  sigma = spec.hl_gauss_sigma * (spec.support[1] - spec.support[0])
  return jnp.mean(losses.hl_gauss_loss(logits, targets, support, sigma))


def _td_loss(spec: EngineSpec, hp: HParams, data: TrainData, state: TrainState,
             shift: shifts.Shift, q, labels, key):
  key_explore, key_action, key_next = jax.random.split(key, 3)
  batch = labels.shape[0]
  greedy = jnp.argmax(q, -1)
  explore = jax.random.uniform(key_explore, (batch,)) < spec.bandit_epsilon
  action = jnp.where(explore, jax.random.randint(key_action, (batch,), 0, q.shape[-1]), greedy)
  reward = (action == labels).astype(jnp.float32)
  next_idx = _sample(spec, key_next, state.task, data, batch)
  x_next, _ = shift.apply(state.task, _inputs(data.images[next_idx], data),
                          data.labels[next_idx], next_idx, state.step_index)
  q_next, _ = _apply(spec, state.target_params, state.model_state, x_next, train=False)
  target = jax.lax.stop_gradient(reward + hp.gamma * jnp.max(q_next, -1))
  q_taken = jnp.take_along_axis(q, action[:, None], -1)[:, 0]
  return jnp.mean(jnp.square(q_taken - target))


def _reference_means(spec: EngineSpec, params, model_state, task: shifts.Task,
                     data: TrainData) -> tuple:
  """Per-unit mean preactivations on the probe batch: the reference for drift."""
  if not spec.run_probes:
    return ()
  _, preacts, _ = _probe_outputs(spec, params, model_state, task, data)
  return probe_suite.unit_means(preacts)


def _probe_outputs(spec: EngineSpec, params, model_state, task: shifts.Task, data: TrainData):
  """(outputs, preactivations, activations), float32, on the probe batch."""
  x, _ = _probe_batch(spec, task, data)
  logits, preacts, acts = models.hidden_features(spec.model, params, x, model_state)
  return (logits.astype(jnp.float32),
          *([h.astype(jnp.float32) for h in hs] for hs in (preacts, acts)))


def _probe_batch(spec: EngineSpec, task: shifts.Task, data: TrainData):
  """``(x, y)`` of the probe batch under `task`: labels, or regression targets."""
  x, labels, targets = shifts.apply_task(
      task, _inputs(data.images[data.probe_index], data), data.probe_index,
      shifts.permutes_inputs(spec.shift))
  return x, (targets if spec.objective == "regression" else labels)


def _probe_loss_fn(spec: EngineSpec, model_state, target_scale):
  """``loss(params, (x, y))``: the supervised loss the probes differentiate.

  Classification: cross-entropy (or MSE to scaled one-hot targets with
  ``loss = "mse"``); regression: MSE to the targets (distributional heads:
  their cross-entropy); bandit: the squared error of every action's value to
  its reward ``1[a = y]`` (the TD target with gamma = 0).
  """

  def loss(params, batch):
    x, y = batch
    out, _ = _apply(spec, params, model_state, x, train=False)
    if spec.objective == "regression":
      return _regression_loss(spec, out, y)
    onehot = jax.nn.one_hot(y, out.shape[-1], dtype=out.dtype)
    if spec.objective == "bandit":
      return jnp.mean(losses.mse(out, onehot))
    if spec.loss == "mse":
      return jnp.mean(losses.mse(out, target_scale * onehot))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, y))

  return loss


FIRST_LAYERS = {"MLP": "dense_0", "CNN": "conv_0", "ResNet": "stem_conv", "ViT": "patch_embed"}


def _norm_growth(spec: EngineSpec, params, initial_layer_norms) -> jax.Array:
  """How much faster the head's norm grew than the first layer's since initialisation."""
  if initial_layer_norms is None:
    return jnp.float32(1.0)
  first = FIRST_LAYERS[type(spec.model).__name__]
  ratios = probes.norm_growth_ratio(probes.layer_param_norms(params), initial_layer_norms,
                                    first=first, last="head")
  return ratios["last_over_first"]


def probe(spec: EngineSpec, params, task: shifts.Task, data: TrainData,
          model_state=None, reference_means: tuple | None = None,
          initial_layer_norms: dict | None = None) -> dict:
  """The every-task probes on the fixed probe batch under `task`'s inputs.

  See `probe_suite.activation_probes`; adds the global and per-layer
  parameter norms and the per-layer norms of the probe-batch loss gradient.
  `reference_means` (per-unit mean preactivations at the task's start) defaults
  to the current ones (drift 0); `initial_layer_norms` (the per-module norms at
  initialisation) to the current ones (growth ratio 1).
  """
  model_state = model_state or {}
  logits, preacts, acts = _probe_outputs(spec, params, model_state, task, data)
  if reference_means is None:
    reference_means = probe_suite.unit_means(preacts)
  grads = jax.grad(_probe_loss_fn(spec, model_state, task.target_scale))(
      params, _probe_batch(spec, task, data))
  return dict(
      **probe_suite.activation_probes(preacts, acts, logits, reference_means,
                                      spec.probe_settings),
      param_norm=probes.param_norm(params),
      layer_param_norm=probes.layer_param_norms(params),
      layer_grad_norm=probes.layer_grad_norms(grads),
      norm_growth_ratio=_norm_growth(spec, params, initial_layer_norms),
  )


def expensive_probes(spec: EngineSpec, hp: HParams, data: TrainData, state: TrainState,
                     task_number) -> dict:
  """Every expensive probe due at task `task_number` (0-based), NaN for the others.

  Probe ``name`` is due when ``(task_number + 1) % <name>_every == 0``; the
  condition must not depend on the seed (the engine passes the task number
  from outside the seed vmap), so ``lax.cond`` skips the work.
  """
  settings = spec.probe_settings
  out = {}
  for i, name in enumerate(probe_suite.EXPENSIVE):
    every = settings.every(name)
    if not every:
      out.update(probe_suite.not_measured(name))
      continue
    key = _stream(state.rng, _PROBE_STREAM, state.task_index * len(probe_suite.EXPENSIVE) + i)

    def measure(state, name=name, key=key):
      apply_fn = lambda p, x: _apply(spec, p, state.model_state, x, train=False)[0]
      init_fn = lambda k: _fresh_network(spec, k)[0]
      return probe_suite.expensive_probe(
          name, settings, loss_fn=_probe_loss_fn(spec, state.model_state,
                                                 state.task.target_scale),
          apply_fn=apply_fn, init_fn=init_fn, optimizer=_optimizer(spec, hp),
          params=state.params, batch=_probe_batch(spec, state.task, data), key=key)

    due = (task_number + 1) % every == 0
    out.update(jax.lax.cond(due, measure, lambda _, name=name: probe_suite.not_measured(name),
                            state))
  return out


def run_task(spec: EngineSpec, hp: HParams, data: TrainData, state: TrainState,
             task_number=None):
  """Trains on the current task, probes, then switches to the next task.

  `task_number` is the task's index as a value shared by every seed (the
  expensive probes' schedule reads it); it defaults to ``state.task_index``.
  """
  step_keys = jax.random.split(_stream(state.rng, _STEP_STREAM, state.task_index),
                               spec.steps_per_task)
  # Every step's minibatch indices in one vectorised draw (the task is fixed
  # within it): the same numbers as drawing them step by step, without a PRNG
  # loop inside every step. Long tasks draw step by step, to bound memory.
  if spec.steps_per_task * spec.batch_size <= PRESAMPLE_LIMIT:
    step_inputs = (step_keys,
                   jax.vmap(lambda k: _sample(spec, k, state.task, data))(step_keys))
  else:
    step_inputs = (step_keys,)
  step = lambda s, inputs: train_step(spec, hp, data, s, *inputs)
  parts = within_task_parts(spec)
  if parts > 1:
    state, (step_losses, accuracies), within = _train_in_parts(spec, data, state, step,
                                                               step_inputs, parts)
  else:
    state, (step_losses, accuracies) = jax.lax.scan(step, state, step_inputs)
  bad_params = ~state.diverged & ~_all_finite(state.params)
  state = _mark_diverged(state, bad_params, spec.steps_per_task - 1)
  window = slice(spec.steps_per_task - spec.accuracy_steps, None)
  task_number = state.task_index if task_number is None else task_number

  def probe_fn():
    # Without probes there are no reference means (only shapes are traced then).
    reference = state.reference_means if spec.run_probes else None
    return {**probe(spec, state.params, state.task, data, state.model_state,
                    reference, state.initial_layer_norms),
            **expensive_probes(spec, hp, data, state, task_number)}

  if spec.run_probes:
    probe_values = dict(probe_fn())
    if parts > 1:
      probe_values.update(within_task_drift=within[0], within_task_histogram=within[1])
    else:
      probe_values.update(within_task_drift=probe_values["preact_drift"][None],
                          within_task_histogram=probe_values["preact_histogram"][None])
  else:
    shapes = dict(jax.eval_shape(probe_fn))
    shapes.update(within_task_drift=jax.ShapeDtypeStruct((parts,), jnp.float32),
                  within_task_histogram=jax.ShapeDtypeStruct(
                      (parts,) + shapes["preact_histogram"].shape,
                      shapes["preact_histogram"].dtype))
    probe_values = jax.tree.map(lambda s: jnp.full(s.shape, -1, s.dtype), shapes)
  state, num_reset = _reset_at_task_end(spec, hp, data, state)
  metrics = TaskMetrics(train_loss=jnp.mean(step_losses[window]),
                        train_accuracy=jnp.mean(accuracies[window]),
                        diverged_task=state.diverged_task,
                        diverged_step=state.diverged_step, num_reset=num_reset,
                        **probe_values)
  next_index = state.task_index + 1
  next_task = _shift(spec, hp, data).switch(_stream(state.rng, _TASK_STREAM, next_index),
                                            next_index, state.task)
  reference = _reference_means(spec, state.params, state.model_state, next_task, data)
  return state.replace(task=next_task, task_index=next_index, reference_means=reference,
                       step_index=jnp.zeros_like(state.step_index)), metrics


def within_task_parts(spec: EngineSpec) -> int:
  """K, the parts of a task after which drift and histograms are measured (1: at its end)."""
  every = spec.probe_settings.within_task_every
  return spec.steps_per_task // every if (every and spec.run_probes) else 1


def _train_in_parts(spec: EngineSpec, data: TrainData, state: TrainState, step, step_inputs,
                    parts: int):
  """The task's steps as `parts` scans of equal length, measuring after each one
  the drift of the per-unit mean preactivations since the task's start and
  their histograms. The steps and their keys are those of one scan, so
  training is unchanged.

  Returns ``(state, (losses [S], accuracies [S]), (drift [K], histograms [K, L, bins]))``.
  """
  edges = jnp.asarray(spec.probe_settings.histogram_edges, jnp.float32)

  def part(state, inputs):
    state, outputs = jax.lax.scan(step, state, inputs)
    _, preacts, _ = _probe_outputs(spec, state.params, state.model_state, state.task, data)
    means = probe_suite.unit_means(preacts)
    drift, _ = probe_suite.mean_drift(means, state.reference_means)
    return state, (outputs, (drift, probe_suite.mean_histograms(means, edges)))

  inputs = jax.tree.map(lambda a: a.reshape((parts, spec.steps_per_task // parts) + a.shape[1:]),
                        step_inputs)
  state, ((losses, accuracies), within) = jax.lax.scan(part, state, inputs)
  return state, (losses.reshape(-1), accuracies.reshape(-1)), within


def _run_axes(hp: HParams):
  """vmap axes of `hp`: 0 for leaves with a leading run axis, None for shared scalars."""
  return jax.tree.map(lambda x: 0 if jnp.ndim(x) else None, hp)


def _reset_at_task_end(spec: EngineSpec, hp: HParams, data: TrainData, state: TrainState):
  """Applies ``spec.resets`` in order after every ``reset_period``-th task.

  * ``redo``: `resets.redo` at ``redo_tau`` on the probe batch's activations
    (and `resets.reset_norm_statistics`); Adam moments of the changed entries
    zeroed, counts kept.
  * ``shrink_and_perturb``: ``p <- shrink p + perturb p_fresh``; optimizer
    state kept.
  * ``head_reset``: the head re-initialised, its moments zeroed, counts kept.
  * ``full_reset``: a fresh network and optimizer state (counts 0).

  A diverged seed is left alone. Returns ``(state, units reset by ReDo or -1)``.
  """
  if not spec.resets:
    return state, jnp.full([], -1, jnp.int32)
  opt = _optimizer(spec, hp)
  fresh_params, fresh_model_state = _fresh_network(
      spec, _stream(state.rng, _RESET_STREAM, state.task_index))
  params, opt_state, model_state = state.params, state.opt_state, state.model_state
  num_reset = jnp.zeros([], jnp.int32)
  for name in spec.resets:
    if name == "redo":
      layers = models.redo_layers(spec.model)
      _, _, acts = _probe_outputs(spec, params, model_state, state.task, data)
      params, opt_state, info = resets.redo(opt, params, opt_state, acts, fresh_params,
                                            layers, spec.redo_tau)
      model_state = resets.reset_norm_statistics(model_state, fresh_model_state, layers,
                                                 info.unit_masks)
      num_reset = num_reset + info.num_reset
    elif name == "shrink_and_perturb":
      params = resets.shrink_and_perturb(params, fresh_params, spec.shrink, spec.perturb)
    elif name == "head_reset":
      params, opt_state = resets.reset_head(opt, params, opt_state, fresh_params)
    elif name == "full_reset":
      params, opt_state = resets.full_reset(fresh_params, opt)
      model_state = fresh_model_state
    else:
      raise ValueError(f"unknown reset {name!r}; choose from {', '.join(resets.METHODS)}")
  due = ((state.task_index + 1) % spec.reset_period == 0) & ~state.diverged
  pick = lambda new, old: jax.tree.map(lambda n, o: jnp.where(due, n, o), new, old)
  state = state.replace(params=pick(params, state.params),
                        opt_state=pick(opt_state, state.opt_state),
                        model_state=pick(model_state, state.model_state))
  if "redo" not in spec.resets:
    return state, jnp.full([], -1, jnp.int32)
  return state, jnp.where(due, num_reset, 0)


@functools.partial(jax.jit, static_argnames="spec")
def init_states(rngs: jax.Array, data: TrainData, hp: HParams, *, spec: EngineSpec):
  """`init_state` for a leading axis of runs (seed keys).

  `hp` is either shared by every run (scalar leaves) or has a leading run axis
  like `rngs` (a hyperparameter grid, see `stack_hparams`).
  """
  return jax.vmap(lambda r, h: init_state(spec, h, data, r),
                  in_axes=(0, _run_axes(hp)))(rngs, hp)


@functools.partial(jax.jit, static_argnames=("spec", "num_tasks"), donate_argnums=0)
def run_tasks(states: TrainState, data: TrainData, hp: HParams, *, spec: EngineSpec,
              num_tasks: int, first_task=0):
  """`num_tasks` tasks for every run of `states` (leading axis): one program.

  `hp` is shared (scalar leaves) or per run (a leading run axis, as in
  `init_states`). `first_task` (traced, shared by every run) is the index of
  the first of these tasks, for the expensive probes' schedule. Returns the
  new states and `TaskMetrics` with leading axes [run, task].

  With ``spec.parallel_runs = b`` (0 < b < R runs), the R runs are arranged
  as ``[b, R / b]``: the b rows are vmapped side by side and each row's R / b
  runs go one after another (``vmap`` of ``lax.map``), so only b runs'
  parameters and optimizer states are live at a time. On a CPU a
  matmul-bound model trains faster that way (its working set stays in cache);
  the results are those of the all-vmapped program. The run axis is split into
  contiguous blocks, so a run sharding over d devices (d dividing b) becomes a
  sharding of the b rows and each device keeps its own runs.
  """
  numbers = jnp.asarray(first_task, jnp.int32) + jnp.arange(num_tasks, dtype=jnp.int32)

  def one_run(state, run_hp):
    return jax.lax.scan(lambda s, t: run_task(spec, run_hp, data, s, t), state, numbers)

  axes = _run_axes(hp)
  num_runs = states.rng.shape[0]
  rows = spec.parallel_runs
  if not rows or rows >= num_runs:
    return jax.vmap(one_run, in_axes=(0, axes))(states, hp)
  if num_runs % rows:
    raise ValueError(f"parallel_runs={rows} must divide the {num_runs} runs")
  split = lambda x: x.reshape((rows, num_runs // rows) + x.shape[1:])
  merge = lambda x: x.reshape((num_runs,) + x.shape[2:])
  per_run_hp = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_runs,) + jnp.shape(x)[1:]), hp)
  row = lambda row_states, row_hp: jax.lax.map(lambda a: one_run(*a), (row_states, row_hp))
  out = jax.vmap(row)(jax.tree.map(split, states), jax.tree.map(split, per_run_hp))
  return jax.tree.map(merge, out)


# ----------------------------------------------------------------------------
# From a config to the engine's arguments.


def load_train_data(config: ml_collections.ConfigDict,
                    ds: data_lib.Dataset | None = None) -> tuple[TrainData, int]:
  """The config's training examples and probe batch as device arrays, and the class count.

  `ds` is the config's training split when the caller has loaded it already.
  """
  if ds is None:
    ds = load_dataset(config, "train")
  n = config.num_examples or ds.images.shape[0]
  images = ds.images[:n]
  mean, std = 0.0, 1.0  # [0, 1] scaling: no extra work in the step.
  if config.normalization == "standardize":
    pixels = int(np.prod(images.shape[1:-1]))
    per_dim = lambda v: jnp.asarray(np.tile(v, pixels), jnp.float32)  # HWC order
    mean, std = (per_dim(v) for v in preprocess.channel_stats(images))
  probe_index = np.arange(min(config.probes.batch_size, n), dtype=np.int32)
  return TrainData(images=jnp.asarray(images.reshape(n, -1)),
                   labels=jnp.asarray(ds.labels[:n]),
                   probe_index=jnp.asarray(probe_index), mean=mean, std=std,
                   standardize=config.normalization == "standardize",
                   image_shape=tuple(int(d) for d in ds.images.shape[1:])), ds.num_classes


def load_dataset(config: ml_collections.ConfigDict, split: str) -> data_lib.Dataset:
  """`plastix.data.load` with the config's dataset, data_dir and manual_dir."""
  return data_lib.load(config.dataset, split, config.data_dir or None,
                       manual_dir=config.manual_dir or None)


def shift_params(config: ml_collections.ConfigDict) -> shifts.ShiftParams:
  """`shifts.ShiftParams` from ``config.shift_params`` (the fields it names).

  ``num_tasks`` is set only for ``noisy_labels``, whose schedule reads it, so
  that elsewhere a longer run compiles the same program.
  """
  sp = config.shift_params
  fields = {f.name: type(f.default)(sp[f.name])
            for f in dataclasses.fields(shifts.ShiftParams) if f.name in sp}
  if "noisy_labels" in shifts.parse_shift(config.shift):
    fields["num_tasks"] = int(config.num_tasks)
  return shifts.ShiftParams(**fields)


def num_outputs(config: ml_collections.ConfigDict, num_classes: int) -> int:
  """The model's outputs: ``target_dim`` (times the support's bins for a
  distributional loss) for regression targets, else the classes."""
  if shifts.objective(config.shift) == "regression":
    bins = config.loss.num_bins if loss_name(config) in DISTRIBUTIONAL_LOSSES else 1
    return int(config.shift_params.target_dim) * int(bins)
  return num_classes


DISTRIBUTIONAL_LOSSES = ("two_hot", "hl_gauss")
DEFAULT_LOSSES = {"classification": "cross_entropy", "regression": "mse", "bandit": "td"}


def loss_name(config: ml_collections.ConfigDict) -> str:
  """``config.loss.name``, with "auto" resolved by the shift's objective
  (cross_entropy, mse, or the bandit's TD loss)."""
  if config.loss.name == "auto":
    return DEFAULT_LOSSES[shifts.objective(config.shift)]
  return config.loss.name


def support(config: ml_collections.ConfigDict) -> tuple[float, ...]:
  """The distributional losses' atoms: ``num_bins`` evenly spaced in [support_min, support_max]."""
  if loss_name(config) not in DISTRIBUTIONAL_LOSSES:
    return ()
  atoms = np.linspace(config.loss.support_min, config.loss.support_max, config.loss.num_bins)
  return tuple(float(a) for a in atoms)


def reset_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """``config.resets.methods`` ("redo+head_reset") as a tuple of names; () for ""."""
  return resets.parse_methods(config.resets.methods)


def engine_spec(config: ml_collections.ConfigDict, num_classes: int,
                input_dim: int, image_shape: tuple[int, ...] = ()) -> EngineSpec:
  """The static part of a (resolved, single-intervention) config."""
  model = models.create(config.model, num_outputs(config, num_classes),
                        input_shape=tuple(image_shape) or None)
  r = config.resets
  return EngineSpec(
      model=model, optimizer=config.optimizer.name,
      weight_decay_mask=config.optimizer.weight_decay_mask, shift=config.shift,
      num_classes=num_classes, input_dim=input_dim,
      steps_per_task=config.steps_per_task, batch_size=config.batch_size,
      accuracy_steps=accuracy_steps(config),
      random_initial_labels=config.shift_params.initial_labels == "random",
      probe_settings=probe_settings(config),
      run_probes=bool(config.probes.enabled),
      shift_params=shift_params(config), image_shape=tuple(image_shape),
      loss=loss_name(config), label_smoothing=float(config.loss.label_smoothing),
      bandit_epsilon=float(config.shift_params.bandit_epsilon),
      target_update_period=int(config.shift_params.target_update_period),
      coupled_l2=config.loss.l2 > 0, grad_norm_penalty=config.loss.grad_norm_penalty > 0,
      l2_init=config.optimizer.l2_init > 0,
      normalize_and_project=bool(config.optimizer.normalize_and_project),
      support=support(config), hl_gauss_sigma=float(config.loss.hl_gauss_sigma),
      resets=reset_names(config), reset_period=int(r.period_tasks),
      redo_tau=float(r.redo_tau), shrink=float(r.shrink), perturb=float(r.perturb),
      parallel_runs=int(config.get("parallel_runs", 0)))


def probe_settings(config: ml_collections.ConfigDict) -> probe_suite.ProbeSettings:
  """`probe_suite.ProbeSettings` from the fields of ``config.probes`` it names."""
  p = config.probes
  fields = {}
  for f in dataclasses.fields(probe_suite.ProbeSettings):
    if f.name in p:
      value = p[f.name]
      fields[f.name] = tuple(float(v) for v in value) if f.name == "histogram_edges" else (
          type(f.default)(value))
  return probe_suite.ProbeSettings(**fields)


def accuracy_steps(config: ml_collections.ConfigDict) -> int:
  """How many final steps of a task `train_accuracy` averages (at least 1)."""
  return max(1, int(round(config.accuracy_window * config.steps_per_task)))


def hparams(config: ml_collections.ConfigDict) -> HParams:
  o = config.optimizer
  f = lambda v: jnp.asarray(v, jnp.float32)
  return HParams(learning_rate=f(o.learning_rate), weight_decay=f(o.weight_decay),
                 b1=f(o.b1), b2=f(o.b2), eps=f(o.eps),
                 shift_eps=f(config.shift_params.eps), gamma=f(config.shift_params.gamma),
                 l2=f(config.loss.l2), grad_norm_penalty=f(config.loss.grad_norm_penalty),
                 l2_init=f(o.l2_init))


def stack_hparams(points: list[HParams], repeats: int = 1) -> HParams:
  """HParams with a leading run axis: each point repeated `repeats` times in a row.

  With ``repeats = num_seeds`` run ``g * num_seeds + s`` is grid point g, seed s.
  """
  return jax.tree.map(lambda *v: jnp.repeat(jnp.stack(v), repeats), *points)


def seed_keys(config: ml_collections.ConfigDict, num_seeds: int | None = None) -> jax.Array:
  """Key of seed i = fold_in(PRNGKey(config.seed), i): shared by every intervention."""
  base = jax.random.PRNGKey(config.seed)
  n = config.num_seeds if num_seeds is None else num_seeds
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(n))


def make_train(config: ml_collections.ConfigDict, intervention: str = "baseline"):
  """A pure ``train(key) -> TaskMetrics`` (leading axis: task) for one seed.

  ``jax.jit(jax.vmap(train))(seed_keys(config))`` trains every seed in one
  program; the experiment runner uses `run_tasks` instead, in chunks of tasks,
  to report progress.
  """
  resolved = interventions.apply(config, intervention)
  data, num_classes = load_train_data(resolved)
  spec = engine_spec(resolved, num_classes, data.images.shape[1], data.image_shape)
  hp = hparams(resolved)

  def train(key: jax.Array) -> TaskMetrics:
    state = init_state(spec, hp, data, key)
    # The task numbers do not depend on the key, so under vmap they stay shared
    # and the expensive probes' lax.cond still skips work.
    numbers = jnp.arange(resolved.num_tasks, dtype=jnp.int32)
    _, metrics = jax.lax.scan(lambda s, t: run_task(spec, hp, data, s, t), state, numbers)
    return metrics

  return train
