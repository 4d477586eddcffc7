"""The training engine: a sequence of tasks as one compiled, seed-vmapped program.

Structure (every loop is a ``lax.scan``)::

    train(key)                                 # one seed; jax.vmap over keys
      state = init_state(spec, hp, data, key)
      scan over tasks:  run_task               # train, probe, switch task
        scan over steps: train_step            # one Adam step on a minibatch

The vmap over runs and the scan over tasks are `plastix.program.run_periods`,
the program every learner runs (the RL agents' too, a window of environment
steps per period), with `Tasks` (a task per period) as its learner.

What is static (changes the program) lives in `EngineSpec`, a hashable
dataclass; what is traced (may be vmapped over a grid) lives in `HParams`; the
data is an argument, never a baked-in constant. `run_tasks` is jitted once per
`EngineSpec` and task chunk length, so running more tasks (more chunks) never
compiles again, and interventions that change only traced values (weight
decay) share one program.

The spec and pytrees are defined in `plastix.engine_types` (and re-exported
here), the losses in `plastix.objectives`, and `plastix.from_config` builds the
engine's arguments from a config. Whatever differs between classification,
regression and the contextual bandit is asked of ``spec.learner``
(`plastix.learners`), so the loop, probes, resets and interventions here serve
every learner.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax

from plastix import from_config
from plastix import interventions
from plastix import models
from plastix import objectives
from plastix import optim
from plastix import probe_suite
from plastix import probes
from plastix import program
from plastix import resets
from plastix import shifts
from plastix.engine_types import EngineSpec, HParams, TaskMetrics, TrainData, TrainState


# Independent PRNG streams derived from each seed's key.
_INIT_STREAM, _TASK_STREAM, _STEP_STREAM, _RESET_STREAM, _PROBE_STREAM = 0, 1, 2, 3, 4
_FINAL_STREAM = 5

# `run_task` draws a task's minibatch indices up front when there are at most
# this many (4 MiB of int32 per run); longer tasks draw them step by step.
PRESAMPLE_LIMIT = 1 << 20


def _optimizer(spec: EngineSpec, hp: HParams) -> optax.GradientTransformation:
  """Adam or SGD with decoupled decay; l2_init before it, normalize_and_project after
  (`optim.training_optimizer`, which every learner trains with)."""
  return optim.training_optimizer(
      spec.optimizer, hp.learning_rate, hp.weight_decay, b1=hp.b1, b2=hp.b2, eps=hp.eps,
      weight_decay_mask=spec.weight_decay_mask,
      l2_init_strength=hp.l2_init if spec.l2_init else None,
      normalize_and_project_kernels=spec.normalize_and_project)


def _shift(spec: EngineSpec, hp: HParams, data: TrainData) -> shifts.Shift:
  ctx = shifts.ShiftContext(data.labels, spec.num_classes, hp.shift_eps,
                            images=spec.learner.task_inputs(data),
                            image_shape=spec.image_shape, params=spec.shift_params)
  return shifts.make_shift(spec.shift, ctx, spec.input_dim, spec.random_initial_labels)


_stream = program.stream


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
                    learner_state=spec.learner.init_state(params),
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
  """One optimizer step on a uniformly sampled minibatch, then the learner's own
  work (`plastix.learners.Learner.after_step`: the bandit's target-network
  sync); returns (state, (loss, accuracy)).

  `idx` is the minibatch's example indices,
  ``objectives.sample_indices(spec, key, state.task, data)`` when not given
  (`run_task` draws a whole task's indices at once, the same numbers, so the
  step loop runs no PRNG of its own).

  A step whose loss is not finite is not applied and marks the seed diverged;
  a diverged seed takes no further steps: its parameters (and normalisation
  statistics) stay as they were, and its optimizer is given zero gradients.
  (Checking the loss, a scalar, lets XLA fuse the guard into the update; the
  parameters are checked once per task in `run_task`.)
  """
  key_objective = jax.random.fold_in(key, 1)
  shift = _shift(spec, hp, data)
  if idx is None:
    idx = objectives.sample_indices(spec, key, state.task, data)
  x, y = shift.apply(state.task, objectives.model_inputs(data.images[idx], data),
                     data.labels[idx], idx, state.step_index)
  loss_fn = functools.partial(objectives.regularized_loss, spec, hp, data, state, shift, x, y,
                              key_objective)
  (_, (loss, accuracy, model_state)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  newly_diverged = ~state.diverged & ~jnp.isfinite(loss)
  apply = ~state.diverged & ~newly_diverged
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)
  # A step not applied keeps the parameters (a select XLA fuses into the update)
  # and gives the optimizer a zero gradient, which keeps its moments finite. A
  # select over the optimizer state instead is not fused: ~10% of a width-256
  # MLP step on a CPU.
  grads = jax.tree.map(lambda g: jnp.where(apply, g, jnp.zeros_like(g)), grads)
  updates, opt_state = _optimizer(spec, hp).update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  state = _mark_diverged(state, newly_diverged, state.step_index).replace(
      params=keep(params, state.params), opt_state=opt_state,
      model_state=keep(model_state, state.model_state), step_index=state.step_index + 1)
  return spec.learner.after_step(spec, state), (loss, accuracy)


def _reference_means(spec: EngineSpec, params, model_state, task: shifts.Task,
                     data: TrainData) -> tuple:
  """Per-unit mean preactivations on the probe batch: the reference for drift."""
  if not spec.run_probes:
    return ()
  preacts = _probe_outputs(spec, params, model_state, task, data).preactivations
  return probe_suite.unit_means(preacts)


def _probe_outputs(spec: EngineSpec, params, model_state, task: shifts.Task, data: TrainData):
  """`models.Forward` (outputs, preactivations, activations, the head's input),
  float32, on the probe batch."""
  x, _ = _probe_batch(spec, task, data)
  forward = models.forward_with_features(spec.model, params, x, model_state)
  f32 = lambda hs: [h.astype(jnp.float32) for h in hs]
  return models.Forward(forward.logits.astype(jnp.float32), f32(forward.preactivations),
                        f32(forward.activations), forward.features.astype(jnp.float32))


def _probe_batch(spec: EngineSpec, task: shifts.Task, data: TrainData):
  """``(x, y)`` of the probe batch under `task`: y the labels or regression
  targets, as the learner scores them (`plastix.learners.Learner.targets`)."""
  x, labels, targets = shifts.apply_task(
      task, objectives.model_inputs(data.images[data.probe_index], data), data.probe_index,
      shifts.permutes_inputs(spec.shift))
  return x, spec.learner.targets(labels, targets)


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
  logits, preacts, acts, features = _probe_outputs(spec, params, model_state, task, data)
  if reference_means is None:
    reference_means = probe_suite.unit_means(preacts)
  grads = jax.grad(objectives.probe_loss_fn(spec, model_state, task.target_scale))(
      params, _probe_batch(spec, task, data))
  return dict(
      **probe_suite.activation_probes(preacts, acts, logits, reference_means,
                                      spec.probe_settings, features),
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
      # Each network runs with its own state: the probed one with its trained
      # batch statistics, the plasticity probe's fresh ones with their initial ones.
      apply_fn = lambda p, x, s: objectives.apply_model(spec, p, s, x, train=False)[0]
      return probe_suite.expensive_probe(
          name, settings, loss_fn=objectives.probe_loss_fn(spec, state.model_state,
                                                 state.task.target_scale),
          apply_fn=apply_fn, init_fn=functools.partial(_fresh_network, spec),
          optimizer=_optimizer(spec, hp), params=state.params,
          batch=_probe_batch(spec, state.task, data), key=key, model_state=state.model_state)

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
    sample = lambda k: objectives.sample_indices(spec, k, state.task, data)
    step_inputs = (step_keys, jax.vmap(sample)(step_keys))
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
    test_accuracy, test_loss = objectives.held_out_metrics(
        spec, state.params, state.model_state, state.task, data, state.task_index)
    return {**probe(spec, state.params, state.task, data, state.model_state,
                    reference, state.initial_layer_norms),
            **expensive_probes(spec, hp, data, state, task_number),
            "test_accuracy": test_accuracy, "test_loss": test_loss}

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
    # Not measured: NaN, as for an expensive probe's skipped tasks (summaries
    # then say null, not a number); -1 in the integer histogram counts.
    probe_values = jax.tree.map(
        lambda s: jnp.full(s.shape, jnp.nan if jnp.issubdtype(s.dtype, jnp.inexact) else -1,
                           s.dtype), shapes)
  state, num_reset = _reset_at_task_end(spec, hp, data, state)
  final = _final_fit_if_last(spec, hp, data, state, task_number)
  metrics = TaskMetrics(train_loss=jnp.mean(step_losses[window]),
                        train_accuracy=jnp.mean(accuracies[window]),
                        diverged_task=state.diverged_task,
                        diverged_step=state.diverged_step, num_reset=num_reset,
                        target_clipped_fraction=objectives.clipped_fraction(spec, state.task),
                        step_loss=step_means(step_losses, spec.log_every_steps),
                        step_accuracy=step_means(accuracies, spec.log_every_steps),
                        **final, **probe_values)
  next_index = state.task_index + 1
  next_task = _shift(spec, hp, data).switch(_stream(state.rng, _TASK_STREAM, next_index),
                                            next_index, state.task)
  reference = _reference_means(spec, state.params, state.model_state, next_task, data)
  return state.replace(task=next_task, task_index=next_index, reference_means=reference,
                       step_index=jnp.zeros_like(state.step_index)), metrics


def step_means(values: jax.Array, every: int) -> jax.Array | None:
  r"""Means of `values` [S] over each `every` = k steps in a row, [S / k]:

    m_j = (1 / k) sum_{i = jk}^{jk + k - 1} values_i,   j = 0, ..., S / k - 1;

  None for k = 0 (not kept). k must divide S.
  """
  if not every:
    return None
  if values.shape[0] % every:
    raise ValueError(f"log_every_steps={every} must divide the {values.shape[0]} steps")
  return jnp.mean(values.reshape((values.shape[0] // every, every)), axis=1)


def with_log_every(spec: EngineSpec, log_every_steps: int) -> EngineSpec:
  """`spec` keeping the loss and accuracy every `log_every_steps` steps (0: not
  kept); raises ValueError unless it divides ``spec.steps_per_task``."""
  every = int(log_every_steps)
  if every < 0 or (every and spec.steps_per_task % every):
    raise ValueError(f"log_every_steps={every} must be 0 or divide steps_per_task="
                     f"{spec.steps_per_task}")
  return dataclasses.replace(spec, log_every_steps=every)


FINAL_FIT_KEYS = ("final_fit_accuracy", "final_fit_accuracy_new_network", "final_fit_loss",
                  "final_fit_loss_new_network")


def final_fit_task(spec: EngineSpec, hp: HParams, key: jax.Array,
                   data: TrainData) -> shifts.Task | None:
  """The fresh task of the final fit, the learner's
  (`plastix.learners.Learner.final_fit_task`): task 0's structure (no input
  transform, every example in play) with fresh uniform labels for every
  example, or for a regression fresh random targets with no offset; None for a
  learner without a final fit (the bandit). From `key` alone, so every
  condition of a seed fits the same task."""
  return spec.learner.final_fit_task(spec, _shift(spec, hp, data).ctx, key)


def final_fit(spec: EngineSpec, hp: HParams, data: TrainData, state: TrainState) -> dict:
  r"""The yardstick of plasticity after a sequence, the same for every condition.

  The trained network (with its optimizer state, as the next task would find
  it) and a fresh network (a new initialisation and optimizer state) each
  train ``spec.final_fit_steps`` steps on the same fresh task
  (`final_fit_task`, from the seed's key: every intervention of a seed fits
  the same labels). Each reports the task's training accuracy and loss, the
  means over the last ``accuracy_window`` fraction of those steps, as
  `train_accuracy` does:

    final_fit_accuracy             (the trained network),
    final_fit_accuracy_new_network (the fresh one),

  and ``final_fit_loss``, ``final_fit_loss_new_network`` likewise (accuracies
  are NaN for a regression). A learner without such a task (the contextual
  bandit, `final_fit_task` None): NaN.
  """
  task = final_fit_task(spec, hp, _stream(state.rng, _FINAL_STREAM, 0), data)
  if task is None:
    return dict.fromkeys(FINAL_FIT_KEYS, jnp.float32(jnp.nan))
  steps = spec.final_fit_steps
  window = max(1, int(round(steps * spec.accuracy_steps / spec.steps_per_task)))
  step_keys = jax.random.split(_stream(state.rng, _FINAL_STREAM, 1), steps)
  fresh = init_state(spec, hp, data, _stream(state.rng, _FINAL_STREAM, 2))

  def fit(start: TrainState):
    start = start.replace(task=task, step_index=jnp.zeros_like(start.step_index))
    step = lambda s, k: train_step(spec, hp, data, s, k)
    _, (losses, accuracies) = jax.lax.scan(step, start, step_keys)
    return jnp.mean(accuracies[-window:]), jnp.mean(losses[-window:])

  accuracy, loss = fit(state)
  accuracy_new, loss_new = fit(fresh)
  return dict(zip(FINAL_FIT_KEYS, (accuracy, accuracy_new, loss, loss_new)))


def _final_fit_if_last(spec: EngineSpec, hp: HParams, data: TrainData, state: TrainState,
                       task_number) -> dict:
  """`final_fit` after the run's last task (``spec.final_fit_task``), NaN after the others."""
  nan = dict.fromkeys(FINAL_FIT_KEYS, jnp.float32(jnp.nan))
  if not spec.final_fit_steps:
    return nan
  return jax.lax.cond(task_number == spec.final_fit_task,
                      lambda s: final_fit(spec, hp, data, s), lambda s: nan, state)


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
    preacts = _probe_outputs(spec, state.params, state.model_state, state.task,
                             data).preactivations
    means = probe_suite.unit_means(preacts)
    drift, _ = probe_suite.mean_drift(means, state.reference_means)
    return state, (outputs, (drift, probe_suite.mean_histograms(means, edges)))

  inputs = jax.tree.map(lambda a: a.reshape((parts, spec.steps_per_task // parts) + a.shape[1:]),
                        step_inputs)
  state, ((losses, accuracies), within) = jax.lax.scan(part, state, inputs)
  return state, (losses.reshape(-1), accuracies.reshape(-1)), within


def _reset_at_task_end(spec: EngineSpec, hp: HParams, data: TrainData, state: TrainState):
  """Applies ``spec.resets`` in order after every ``reset_period``-th task.

  Each reset is a hook of `plastix.resets.HOOKS`, the same ones the RL loop
  runs every N updates (see there for what each does to the parameters,
  optimizer state, normalisation statistics and a target network): ReDo
  scores the units on the probe batch at ``redo_tau``; shrink-and-perturb
  uses ``shrink`` and ``perturb``; the fresh layers come from the seed's reset
  stream at this task. A learner's target network
  (`plastix.learners.Learner.target_network`: the contextual bandit's) follows
  the resets that re-initialise whole layers (``head_reset``, ``full_reset``).

  A diverged seed is left alone. Returns ``(state, units reset by ReDo or -1)``.
  """
  if not spec.resets:
    return state, jnp.full([], -1, jnp.int32)
  fresh_params, fresh_model_state = _fresh_network(
      spec, _stream(state.rng, _RESET_STREAM, state.task_index))
  activations = lambda params, model_state: _probe_outputs(
      spec, params, model_state, state.task, data).activations
  layers = models.redo_layers(spec.model) if "redo" in spec.resets else None
  ctx = resets.ResetContext(_optimizer(spec, hp), fresh_params, fresh_model_state, layers,
                            activations, spec.redo_tau, spec.shrink, spec.perturb)
  nets = resets.Networks(state.params, state.opt_state, state.model_state,
                         spec.learner.target_network(state.learner_state))
  new, num_reset = resets.apply_named(spec.resets, nets, ctx)
  due = ((state.task_index + 1) % spec.reset_period == 0) & ~state.diverged
  pick = lambda n, o: jax.tree.map(lambda a, b: jnp.where(due, a, b), n, o)
  new = pick(new, nets)
  state = state.replace(
      params=new.params, opt_state=new.opt_state, model_state=new.model_state,
      learner_state=spec.learner.with_target_network(state.learner_state, new.target_params))
  if "redo" not in spec.resets:
    return state, jnp.full([], -1, jnp.int32)
  return state, jnp.where(due, num_reset, 0)


class Tasks:
  """The supervised engine as a `plastix.program.PeriodicLearner`: its period
  is a task (`run_task`), its state a `TrainState`; `spec` is static, `data`
  the (traced) training set."""

  def __init__(self, spec: EngineSpec, data: TrainData):
    self.spec, self.data = spec, data

  def init_state(self, hp: HParams, rng: jax.Array) -> TrainState:
    return init_state(self.spec, hp, self.data, rng)

  def run_period(self, hp: HParams, state: TrainState, number) -> tuple[TrainState, TaskMetrics]:
    return run_task(self.spec, hp, self.data, state, number)

  start = staticmethod(program.start_unchanged)


@functools.partial(jax.jit, static_argnames="spec")
def init_states(rngs: jax.Array, data: TrainData, hp: HParams, *, spec: EngineSpec):
  """`init_state` for a leading axis of runs (seed keys).

  `hp` is either shared by every run (scalar leaves) or has a leading run axis
  like `rngs` (a hyperparameter grid, see `from_config.stack_hparams`).
  """
  return program.init_runs(Tasks(spec, data), rngs, hp)


@functools.partial(jax.jit, static_argnames=("spec", "num_tasks"), donate_argnums=0)
def run_tasks(states: TrainState, data: TrainData, hp: HParams, *, spec: EngineSpec,
              num_tasks: int, first_task=0):
  """`num_tasks` tasks for every run of `states` (leading axis): one program.

  `hp` is shared (scalar leaves) or per run (a leading run axis, as in
  `init_states`). `first_task` (traced, shared by every run) is the index of
  the first of these tasks, for the expensive probes' schedule. Returns the
  new states and `TaskMetrics` with leading axes [run, task]. The program is
  `plastix.program.run_periods` with `Tasks` as its learner, the one every
  learner runs (the RL agents' too).

  With ``spec.parallel_runs = b`` (0 < b < R runs), the R runs are arranged
  as ``[b, R / b]``: the b rows are vmapped side by side and each row's R / b
  runs go one after another (``vmap`` of ``lax.map``), so only b runs'
  parameters and optimizer states are live at a time. On a CPU that can keep
  a matmul-bound model's working set in cache (see the README's "Speed and
  scale" for when it paid off); the results are those of the all-vmapped
  program. The run axis is split into contiguous blocks, so a run sharding
  over d devices (d dividing b) becomes a sharding of the b rows and each
  device keeps its own runs.
  """
  return program.run_periods(Tasks(spec, data), states, hp, first_task, num_tasks,
                             rows=spec.parallel_runs)


def make_train(config: ml_collections.ConfigDict, intervention: str = "baseline"):
  """A pure ``train(key) -> TaskMetrics`` (leading axis: task) for one seed.

  ``jax.jit(jax.vmap(train))(from_config.seed_keys(config))`` trains every seed in one
  program; the experiment runner uses `run_tasks` instead, in chunks of tasks,
  to report progress.
  """
  resolved = interventions.apply(config, intervention)
  data, num_classes = from_config.load_train_data(resolved)
  spec = with_log_every(
      from_config.engine_spec(resolved, num_classes, data.images.shape[1], data.image_shape),
      resolved.get("log_every_steps", 0))
  hp = from_config.hparams(resolved)

  tasks = Tasks(spec, data)

  def train(key: jax.Array) -> TaskMetrics:
    state = tasks.init_state(hp, key)
    # The task numbers do not depend on the key, so under vmap they stay shared
    # and the expensive probes' lax.cond still skips work.
    numbers = jnp.arange(resolved.num_tasks, dtype=jnp.int32)
    _, metrics = jax.lax.scan(lambda s, t: tasks.run_period(hp, s, t), state, numbers)
    return metrics

  return train
