"""The `Learner` protocol: what a supervised learner brings to the engine.

`plastix.engine` runs one loop for every learner (tasks of steps, probes,
resets, interventions, the final fit) and asks ``spec.learner`` wherever
learners differ. A learner is a frozen dataclass: hashable, so it is part of
the static `EngineSpec`, and its fields are its static settings (with their
defaults: the one place they are written). Its traced settings are a pytree in
``HParams.learner`` and its own state one in ``TrainState.learner_state``
(None where it has none of either).

A new learner subclasses `Learner`, implements the abstract methods, keeps or
overrides the others, and is registered in `plastix.learners.LEARNERS`.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import ml_collections

from plastix import config_errors
from plastix import shifts
from plastix.engine_types import EngineSpec, HParams, TrainData, TrainState


@dataclasses.dataclass(frozen=True)
class Learner(abc.ABC):
  """A supervised learner: its settings, state, losses and metrics.

  Class attributes: ``name`` (its key in `LEARNERS`, and the objective
  `shifts.objective` names), ``losses`` (the ``config.loss.name`` values it
  accepts) and ``default_loss`` (what ``"auto"`` means for it).

  Methods taking a config run before anything compiles; the others are traced
  inside the engine's program and must be pure.
  """
  name: ClassVar[str]
  losses: ClassVar[tuple[str, ...]] = ("auto",)
  default_loss: ClassVar[str] = ""

  # ---- From a config (host side).

  @classmethod
  @abc.abstractmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> Learner:
    """The learner with its static settings from `config`."""

  @classmethod
  def hparams(cls, config: ml_collections.ConfigDict) -> Any:
    """Its traced settings (``HParams.learner``, vmappable over a grid); None."""
    del config
    return None

  @classmethod
  def check_settings(cls, config: ml_collections.ConfigDict) -> None:
    """Raises `config_errors.ConfigError` naming the first of its own fields
    whose value is invalid. Every config carries every learner's fields, so
    `plastix.learners.check` runs this for each learner, in use or not."""
    del config

  @classmethod
  def check(cls, config: ml_collections.ConfigDict) -> None:
    """`check_settings`, then how the rest of `config` fits this learner:
    ``loss.name`` must be one of ``losses``. Raises `config_errors.ConfigError`
    naming the field."""
    cls.check_settings(config)
    config_errors.check(config, "loss.name", config_errors.one_of(cls.losses),
                        f"choose one of {', '.join(cls.losses)} for {cls.name} "
                        f"(shift {config.shift!r})")

  @classmethod
  def loss_name(cls, config: ml_collections.ConfigDict) -> str:
    """``config.loss.name`` with ``"auto"`` resolved to ``default_loss``."""
    return cls.default_loss if config.loss.name == "auto" else config.loss.name

  @classmethod
  def num_outputs(cls, config: ml_collections.ConfigDict, num_classes: int) -> int:
    """The model's outputs: one per class."""
    del config
    return num_classes

  @classmethod
  def chance_accuracy(cls, num_classes: int) -> float | None:
    """The accuracy of guessing, drawn in the figures; None: not drawn."""
    del num_classes
    return None

  # ---- Inside the engine's program.

  def init_state(self, params) -> Any:
    """The learner's state at initialisation (``TrainState.learner_state``)."""
    del params
    return None

  def task_inputs(self, data: TrainData) -> jax.Array | None:
    """The float inputs of every training example, where the shift computes
    the task's targets from them (`shifts.ShiftContext.images`); else None."""
    del data
    return None

  def targets(self, labels: jax.Array, targets: jax.Array) -> jax.Array:
    """What a batch is scored against, of the labels and the regression
    targets `shifts.apply_task` gives: the labels."""
    del targets
    return labels

  def sample_indices(self, spec: EngineSpec, key: jax.Array, task: shifts.Task,
                     data: TrainData, batch_size: int) -> jax.Array:
    """``[batch_size]`` minibatch indices, uniform over the examples in play:
    all N unless the shift grows the task (`shifts.sample_index`)."""
    if shifts.grows_tasks(spec.shift):
      return shifts.sample_index(key, task, batch_size)
    return jax.random.randint(key, (batch_size,), 0, data.images.shape[0])

  @abc.abstractmethod
  def task_loss(self, spec: EngineSpec, hp: HParams, data: TrainData, state: TrainState,
                shift: shifts.Shift, outputs: jax.Array, y: jax.Array,
                key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(loss, accuracy)`` of the training network's `outputs` on a minibatch
    scored against `y` (`targets`); accuracy NaN where undefined. `key` is the
    step's own stream for whatever the loss draws."""

  def after_step(self, spec: EngineSpec, state: TrainState) -> TrainState:
    """The learner's own work after each optimizer step (``state.step_index``
    already counts it): none."""
    del spec
    return state

  @abc.abstractmethod
  def probe_loss(self, outputs: jax.Array, y: jax.Array, target_scale) -> jax.Array:
    """The scalar supervised loss the probes differentiate, of the evaluation
    network's `outputs` on the probe batch."""

  @abc.abstractmethod
  def held_out_metrics(self, spec: EngineSpec, outputs: jax.Array, inputs: jax.Array,
                       task: shifts.Task, data: TrainData,
                       task_index) -> tuple[jax.Array, jax.Array]:
    """``(test_accuracy, test_loss)`` from the evaluation network's float32
    `outputs` on the held-out `inputs` (before the task's input transform)."""

  def final_fit_task(self, spec: EngineSpec, ctx: shifts.ShiftContext,
                     key: jax.Array) -> shifts.Task | None:
    """The fresh task of the final fit (`plastix.engine.final_fit`): task 0's
    structure with fresh uniform labels for every example; None: no final fit."""
    return shifts.initial_task(key, ctx, spec.input_dim, True, "", 1)

  def clipped_fraction(self, task: shifts.Task) -> jax.Array:
    """Fraction of the task's targets a distributional head clips; NaN."""
    del task
    return jnp.float32(jnp.nan)

  def target_network(self, learner_state) -> Any:
    """The target network the resets treat alongside the online one
    (`plastix.resets.Networks`); None without one."""
    del learner_state
    return None

  def with_target_network(self, learner_state, target_params) -> Any:
    """`learner_state` with its target network replaced (none: unchanged)."""
    del target_params
    return learner_state


def refuse_label_smoothing(config: ml_collections.ConfigDict, why: str) -> None:
  """ConfigError on ``loss.label_smoothing`` unless 0: it smooths a
  classification cross-entropy only, and `why` says why this is not one."""
  if config.loss.label_smoothing:
    raise config_errors.ConfigError(
        "loss.label_smoothing",
        f"applies to a classification cross-entropy only, and {why}; set it to 0")


def held_out_label_metrics(outputs: jax.Array, task: shifts.Task, test_labels: jax.Array,
                           label_losses: Callable[[jax.Array, jax.Array], jax.Array]):
  """``(accuracy, loss)`` on held-out examples whose dataset classes are
  `test_labels`, for a learner scored against labels.

  A held-out example of class y has label ``class_map[y]`` and weight
  ``w_i = 1`` where its class is in play (`shifts.held_out_labels`); with
  ``l_i = label_losses(outputs, labels)_i`` and ``c_i = 1[argmax outputs_i = label_i]``:

    accuracy = sum_i w_i c_i / sum_i w_i,    loss = sum_i w_i l_i / sum_i w_i,

  both NaN where no weight is positive (random labels, or no class in play).
  """
  labels, weights = shifts.held_out_labels(task, test_labels)
  per_example = label_losses(outputs, labels)
  correct = (jnp.argmax(outputs, -1) == labels).astype(jnp.float32)
  total = jnp.sum(weights)
  return jnp.sum(weights * correct) / total, jnp.sum(weights * per_example) / total
