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
from plastix import interventions
from plastix import losses
from plastix import models
from plastix import optim
from plastix import probes
from plastix import shifts

# Independent PRNG streams derived from each seed's key.
_INIT_STREAM, _TASK_STREAM, _STEP_STREAM = 0, 1, 2


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
  dormant_tau: float
  srank_delta: float
  run_probes: bool = True  # False fills probe metrics with -1 (to time training alone).
  shift_params: shifts.ShiftParams = shifts.ShiftParams()
  image_shape: tuple[int, ...] = ()  # (H, W, C) of one example.
  loss: str = "cross_entropy"  # classification: "cross_entropy" or "mse" (on one-hot).
  label_smoothing: float = 0.0
  bandit_epsilon: float = 0.1      # contextual_bandit: epsilon-greedy exploration.
  target_update_period: int = 100  # contextual_bandit: steps between target-network syncs.

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


@flax.struct.dataclass
class TrainData:
  """The training set as device arrays, and the fixed probe batch."""
  images: jax.Array       # uint8 [N, D], flattened.
  labels: jax.Array       # int32 [N], the dataset's labels.
  probe_index: jax.Array  # int32 [P], the examples the probes run on.
  image_shape: tuple[int, ...] = flax.struct.field(pytree_node=False, default=())  # (H, W, C)


@flax.struct.dataclass
class TrainState:
  params: dict
  opt_state: optax.OptState
  task: shifts.Task
  task_index: jax.Array  # int32: index of the current task.
  step_index: jax.Array  # int32: step within the current task.
  rng: jax.Array         # the seed's key; per-task keys are folded from it.
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
  dormant_fraction: jax.Array     # dormant fraction at spec.dormant_tau.
  linearized_fraction: jax.Array  # ReLU units positive on the whole probe batch.
  effective_rank: jax.Array       # of the last hidden layer's activations.
  srank: jax.Array                # of the same features, delta = spec.srank_delta.
  param_norm: jax.Array           # global L2 norm.
  layer_param_norm: dict          # module name -> L2 norm.
  layer_dead_fraction: jax.Array  # [num_hidden_layers].
  diverged_task: jax.Array        # task of the first non-finite step so far, or -1.
  diverged_step: jax.Array        # its step within that task, or -1.


def _inputs(images_uint8: jax.Array) -> jax.Array:
  """uint8 pixels to float32 in [0, 1]."""
  return images_uint8.astype(jnp.float32) / 255.0


def _optimizer(spec: EngineSpec, hp: HParams) -> optax.GradientTransformation:
  return optim.make_optimizer(
      spec.optimizer, hp.learning_rate, hp.weight_decay, b1=hp.b1, b2=hp.b2,
      eps=hp.eps, weight_decay_mask=spec.weight_decay_mask)


def _shift(spec: EngineSpec, hp: HParams, data: TrainData) -> shifts.Shift:
  images = (_inputs(data.images) if spec.objective == "regression" else None)
  ctx = shifts.ShiftContext(data.labels, spec.num_classes, hp.shift_eps, images=images,
                            image_shape=spec.image_shape, params=spec.shift_params)
  return shifts.make_shift(spec.shift, ctx, spec.input_dim, spec.random_initial_labels)


def _stream(rng: jax.Array, stream: int, index) -> jax.Array:
  return jax.random.fold_in(jax.random.fold_in(rng, stream), index)


def init_state(spec: EngineSpec, hp: HParams, data: TrainData, rng: jax.Array) -> TrainState:
  """Fresh parameters, optimizer state and task 0 for the seed with key `rng`."""
  dummy = jnp.zeros((1, spec.input_dim), jnp.float32)
  params = spec.model.init(_stream(rng, _INIT_STREAM, 0), dummy)["params"]
  task = _shift(spec, hp, data).init(_stream(rng, _TASK_STREAM, 0))
  zero, minus_one = jnp.zeros([], jnp.int32), jnp.full([], -1, jnp.int32)
  return TrainState(params=params, opt_state=_optimizer(spec, hp).init(params),
                    task=task, task_index=zero, step_index=zero, rng=rng,
                    target_params=params if spec.objective == "bandit" else None,
                    diverged_task=minus_one, diverged_step=minus_one)


def _mark_diverged(state: TrainState, newly_diverged: jax.Array, step) -> TrainState:
  """Records (current task, `step`) as where the seed diverged, if `newly_diverged`."""
  return state.replace(
      diverged_task=jnp.where(newly_diverged, state.task_index, state.diverged_task),
      diverged_step=jnp.where(newly_diverged, step, state.diverged_step))


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
                            if jnp.issubdtype(x.dtype, jnp.inexact)]))


def train_step(spec: EngineSpec, hp: HParams, data: TrainData, state: TrainState,
               key: jax.Array):
  """One optimizer step on a uniformly sampled minibatch; returns (state, (loss, accuracy)).

  A step whose loss is not finite is not applied and marks the seed diverged;
  a diverged seed takes no further steps. (Checking the loss, a scalar, lets
  XLA fuse the guard into the update; the parameters are checked once per task
  in `run_task`.)
  """
  key_batch, key_objective = key, jax.random.fold_in(key, 1)
  shift = _shift(spec, hp, data)
  idx = shifts.sample_index(key_batch, state.task, spec.batch_size)
  x, y = shift.apply(state.task, _inputs(data.images[idx]), data.labels[idx], idx,
                     state.step_index)
  loss_fn = functools.partial(_loss, spec, hp, data, state, shift, x, y, key_objective)
  (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = _optimizer(spec, hp).update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  newly_diverged = ~state.diverged & ~jnp.isfinite(loss)
  apply = ~state.diverged & ~newly_diverged
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)
  state = _mark_diverged(state, newly_diverged, state.step_index).replace(
      params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
      step_index=state.step_index + 1)
  if spec.objective == "bandit":
    step = state.task_index * spec.steps_per_task + state.step_index
    sync = step % spec.target_update_period == 0
    state = state.replace(target_params=jax.tree.map(
        lambda p, t: jnp.where(sync, p, t), state.params, state.target_params))
  return state, (loss, accuracy)


def _loss(spec: EngineSpec, hp: HParams, data: TrainData, state: TrainState,
          shift: shifts.Shift, x, y, key, params):
  """The minibatch loss of `params` and its accuracy, by the sequence's objective.

  * classification: cross-entropy (with ``label_smoothing``) or, with
    ``loss = "mse"``, the squared error to ``target_scale * onehot(y)``;
    accuracy is that of the argmax.
  * regression: the squared error to the task's targets; accuracy is NaN.
  * bandit: actions are epsilon-greedy in the Q-values (the outputs), the
    reward is 1 for the right class, and the loss is the squared TD error
    ``(Q(x, a) - r - gamma * max_a' Q_target(x', a'))^2`` with ``x'`` a fresh
    context drawn like x and ``Q_target`` the target network; accuracy is that
    of the greedy action.
  """
  outputs = spec.model.apply({"params": params}, x)
  if spec.objective == "regression":
    return jnp.mean(losses.mse(outputs, y)), jnp.float32(jnp.nan)
  accuracy = jnp.mean(jnp.argmax(outputs, -1) == y)
  if spec.objective == "bandit":
    return _td_loss(spec, hp, data, state, shift, outputs, y, key), accuracy
  if spec.loss == "mse":
    onehot = jax.nn.one_hot(y, outputs.shape[-1], dtype=outputs.dtype)
    return jnp.mean(losses.mse(outputs, state.task.target_scale * onehot)), accuracy
  if spec.label_smoothing:
    ce = losses.softmax_cross_entropy(outputs, y, spec.label_smoothing)
  else:
    ce = optax.softmax_cross_entropy_with_integer_labels(outputs, y)
  return jnp.mean(ce), accuracy


def _td_loss(spec: EngineSpec, hp: HParams, data: TrainData, state: TrainState,
             shift: shifts.Shift, q, labels, key):
  key_explore, key_action, key_next = jax.random.split(key, 3)
  batch = labels.shape[0]
  greedy = jnp.argmax(q, -1)
  explore = jax.random.uniform(key_explore, (batch,)) < spec.bandit_epsilon
  action = jnp.where(explore, jax.random.randint(key_action, (batch,), 0, q.shape[-1]), greedy)
  reward = (action == labels).astype(jnp.float32)
  next_idx = shifts.sample_index(key_next, state.task, batch)
  x_next, _ = shift.apply(state.task, _inputs(data.images[next_idx]), data.labels[next_idx],
                          next_idx, state.step_index)
  q_next = spec.model.apply({"params": state.target_params}, x_next)
  target = jax.lax.stop_gradient(reward + hp.gamma * jnp.max(q_next, -1))
  q_taken = jnp.take_along_axis(q, action[:, None], -1)[:, 0]
  return jnp.mean(jnp.square(q_taken - target))


def probe(spec: EngineSpec, params, task: shifts.Task, data: TrainData) -> dict:
  """The mechanism probes on the fixed probe batch under the current task's inputs."""
  x, _, _ = shifts.apply_task(task, _inputs(data.images[data.probe_index]),
                              data.probe_index, shifts.permutes_inputs(spec.shift))
  _, preacts, acts = models.hidden_features(spec.model, params, x)
  preacts, acts = ([h.astype(jnp.float32) for h in hs] for hs in (preacts, acts))
  units = jnp.array([a.shape[-1] for a in acts], jnp.float32)
  weight = units / jnp.sum(units)
  layer_dead = jnp.stack([probes.dormant_fraction(a, 0.0) for a in acts])
  layer_dormant = jnp.stack([probes.dormant_fraction(a, spec.dormant_tau) for a in acts])
  layer_linear = jnp.stack([probes.linearized_fraction(h) for h in preacts])
  return dict(
      dead_fraction=jnp.sum(weight * layer_dead),
      dormant_fraction=jnp.sum(weight * layer_dormant),
      linearized_fraction=jnp.sum(weight * layer_linear),
      effective_rank=probes.effective_rank(acts[-1]),
      srank=probes.srank(acts[-1], spec.srank_delta),
      param_norm=probes.param_norm(params),
      layer_param_norm=probes.layer_param_norms(params),
      layer_dead_fraction=layer_dead,
  )


def run_task(spec: EngineSpec, hp: HParams, data: TrainData, state: TrainState):
  """Trains on the current task, probes, then switches to the next task."""
  step_keys = jax.random.split(_stream(state.rng, _STEP_STREAM, state.task_index),
                               spec.steps_per_task)
  step = functools.partial(train_step, spec, hp, data)
  state, (losses, accuracies) = jax.lax.scan(step, state, step_keys)
  bad_params = ~state.diverged & ~_all_finite(state.params)
  state = _mark_diverged(state, bad_params, spec.steps_per_task - 1)
  window = slice(spec.steps_per_task - spec.accuracy_steps, None)
  probe_fn = functools.partial(probe, spec, state.params, state.task, data)
  if spec.run_probes:
    probe_values = probe_fn()
  else:
    probe_values = jax.tree.map(lambda s: jnp.full(s.shape, -1, s.dtype),
                                jax.eval_shape(probe_fn))
  metrics = TaskMetrics(train_loss=jnp.mean(losses[window]),
                        train_accuracy=jnp.mean(accuracies[window]),
                        diverged_task=state.diverged_task,
                        diverged_step=state.diverged_step, **probe_values)
  next_index = state.task_index + 1
  next_task = _shift(spec, hp, data).switch(_stream(state.rng, _TASK_STREAM, next_index),
                                            next_index, state.task)
  return state.replace(task=next_task, task_index=next_index,
                       step_index=jnp.zeros_like(state.step_index)), metrics


def _run_axes(hp: HParams):
  """vmap axes of `hp`: 0 for leaves with a leading run axis, None for shared scalars."""
  return jax.tree.map(lambda x: 0 if jnp.ndim(x) else None, hp)


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
              num_tasks: int):
  """`num_tasks` tasks for every run of `states` (leading axis): one program.

  `hp` is shared (scalar leaves) or per run (a leading run axis, as in
  `init_states`). Returns the new states and `TaskMetrics` with leading axes
  [run, task].
  """

  def one_run(state, run_hp):
    state, metrics = jax.lax.scan(lambda s, _: run_task(spec, run_hp, data, s), state,
                                  None, length=num_tasks)
    return state, metrics

  return jax.vmap(one_run, in_axes=(0, _run_axes(hp)))(states, hp)


# ----------------------------------------------------------------------------
# From a config to the engine's arguments.


def load_train_data(config: ml_collections.ConfigDict,
                    ds: data_lib.Dataset | None = None) -> tuple[TrainData, int]:
  """The config's training examples and probe batch as device arrays, and the class count.

  `ds` is the config's training split when the caller has loaded it already.
  """
  if ds is None:
    ds = data_lib.load(config.dataset, "train", config.data_dir or None)
  n = config.num_examples or ds.images.shape[0]
  images = ds.images[:n].reshape(n, -1)
  probe_index = np.arange(min(config.probes.batch_size, n), dtype=np.int32)
  return TrainData(images=jnp.asarray(images), labels=jnp.asarray(ds.labels[:n]),
                   probe_index=jnp.asarray(probe_index),
                   image_shape=tuple(int(d) for d in ds.images.shape[1:])), ds.num_classes


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
  """The model's outputs: ``target_dim`` for regression targets, else the classes."""
  if shifts.objective(config.shift) == "regression":
    return int(config.shift_params.target_dim)
  return num_classes


def engine_spec(config: ml_collections.ConfigDict, num_classes: int,
                input_dim: int, image_shape: tuple[int, ...] = ()) -> EngineSpec:
  """The static part of a (resolved, single-intervention) config."""
  m = config.model
  model = models.MLP(hidden_sizes=(m.width,) * m.depth,
                     num_outputs=num_outputs(config, num_classes), norm=m.norm, dtype=m.dtype)
  return EngineSpec(
      model=model, optimizer=config.optimizer.name,
      weight_decay_mask=config.optimizer.weight_decay_mask, shift=config.shift,
      num_classes=num_classes, input_dim=input_dim,
      steps_per_task=config.steps_per_task, batch_size=config.batch_size,
      accuracy_steps=accuracy_steps(config),
      random_initial_labels=config.shift_params.initial_labels == "random",
      dormant_tau=float(config.probes.dormant_tau),
      srank_delta=float(config.probes.srank_delta),
      run_probes=bool(config.probes.enabled),
      shift_params=shift_params(config), image_shape=tuple(image_shape),
      loss=config.loss.name, label_smoothing=float(config.loss.label_smoothing),
      bandit_epsilon=float(config.shift_params.bandit_epsilon),
      target_update_period=int(config.shift_params.target_update_period))


def accuracy_steps(config: ml_collections.ConfigDict) -> int:
  """How many final steps of a task `train_accuracy` averages (at least 1)."""
  return max(1, int(round(config.accuracy_window * config.steps_per_task)))


def hparams(config: ml_collections.ConfigDict) -> HParams:
  o = config.optimizer
  f = lambda v: jnp.asarray(v, jnp.float32)
  return HParams(learning_rate=f(o.learning_rate), weight_decay=f(o.weight_decay),
                 b1=f(o.b1), b2=f(o.b2), eps=f(o.eps),
                 shift_eps=f(config.shift_params.eps), gamma=f(config.shift_params.gamma))


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
    _, metrics = jax.lax.scan(lambda s, _: run_task(spec, hp, data, s), state, None,
                              length=resolved.num_tasks)
    return metrics

  return train
