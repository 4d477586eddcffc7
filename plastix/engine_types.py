"""The engine's static spec and its pytrees.

`EngineSpec` holds everything static about a run (a new value compiles a new
program); `HParams` the traced hyperparameters (vmappable over a grid);
`TrainData` the training set and probe batch as device arrays; `TrainState` one
run's whole state; `TaskMetrics` what every task reports. `plastix.engine`
re-exports all five. What a learner (`plastix.learners`) keeps of its own is in
``EngineSpec.learner`` (static settings), ``HParams.learner`` (traced) and
``TrainState.learner_state``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import optax

from plastix import probe_suite
from plastix import shifts


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
  # The supervised learner (`plastix.learners.Learner`: classification,
  # regression or the contextual bandit) with its static settings.
  learner: Any
  run_probes: bool = True  # False: probe metrics NaN (integer counts -1), to time training alone.
  shift_params: shifts.ShiftParams = shifts.ShiftParams()
  image_shape: tuple[int, ...] = ()  # (H, W, C) of one example.
  # Regularisers whose strengths are traced `HParams`: on when True.
  coupled_l2: bool = False         # loss += (l2 / 2) ||p||^2 over the decay mask.
  grad_norm_penalty: bool = False  # loss += grad_norm_penalty * ||grad loss||^2.
  l2_init: bool = False            # gradient += l2_init * (p - p_0) (optim.l2_init).
  normalize_and_project: bool = False  # kernels projected to their init norm each step.
  # Resets at task ends, in order, every `reset_period` tasks.
  resets: tuple[str, ...] = ()
  reset_period: int = 1
  redo_tau: float = 0.1
  shrink: float = 0.8
  perturb: float = 0.2
  # Runs (seeds x grid points) vmapped side by side in `run_tasks`; the rest
  # run in sequence inside the same program (0: all side by side). See there.
  parallel_runs: int = 0
  # After task `final_fit_task` (the run's last), the trained network and a
  # fresh one fit the same fresh task for `final_fit_steps` steps (0: never;
  # see `engine.final_fit`).
  final_fit_steps: int = 0
  final_fit_task: int = -1
  # Every task reports the training loss and accuracy averaged over each
  # `log_every_steps` steps in a row (`TaskMetrics.step_loss`; divides
  # `steps_per_task`); 0: not kept (those fields are None).
  log_every_steps: int = 0

  @property
  def objective(self) -> str:
    """The learner's name: "classification", "regression" or "bandit"."""
    return self.learner.name


@flax.struct.dataclass
class HParams:
  """Traced hyperparameters (float32 scalars); vmappable over a grid."""
  learning_rate: jax.Array
  weight_decay: jax.Array
  b1: jax.Array
  b2: jax.Array
  eps: jax.Array
  shift_eps: jax.Array
  l2: jax.Array = 0.0                 # coupled L2 strength (spec.coupled_l2).
  grad_norm_penalty: jax.Array = 0.0  # (spec.grad_norm_penalty).
  l2_init: jax.Array = 0.0            # (spec.l2_init).
  learner: Any = None  # the learner's traced settings (the bandit's gamma); None if none.


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
  # Held-out examples (the dataset's test split) for test_accuracy / test_loss;
  # None: not measured.
  test_images: jax.Array | None = None  # uint8 [M, D], flattened.
  test_labels: jax.Array | None = None  # int32 [M], the dataset's labels.


@flax.struct.dataclass
class TrainState:
  """One run's whole state; under the engine's vmap every leaf gains a run axis."""
  params: dict
  model_state: dict      # non-parameter collections (BatchNorm statistics); {} if none.
  opt_state: optax.OptState
  task: shifts.Task
  task_index: jax.Array  # int32: index of the current task.
  step_index: jax.Array  # int32: step within the current task.
  rng: jax.Array         # the seed's key; per-task keys are folded from it.
  reference_means: tuple  # per layer, each unit's mean preactivation at the task's start.
  initial_layer_norms: dict  # module name -> parameter norm at initialisation.
  learner_state: Any     # the learner's own (the bandit's target network); None if none.
  # Where the seed first produced a non-finite loss (checked every step) or
  # non-finite parameters (checked at the end of every task); -1: never. From
  # then on the seed's parameters are frozen (no update is applied; its
  # optimizer only sees zero gradients) while the other seeds carry on.
  diverged_task: jax.Array
  diverged_step: jax.Array

  @property
  def diverged(self) -> jax.Array:
    return self.diverged_task >= 0


class TaskMetrics(NamedTuple):
  """Per-task metrics; under the engine's scans each gains [seed, task] axes."""
  train_loss: jax.Array           # mean minibatch loss over the last accuracy_steps.
  train_accuracy: jax.Array       # mean minibatch accuracy over the same steps.
  test_accuracy: jax.Array        # on held-out examples at the task's end (NaN: undefined).
  test_loss: jax.Array            # the task's loss on the same examples.
  target_clipped_fraction: jax.Array  # regression targets outside a distributional support.
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
  # The yardstick after the run's last task (NaN on every other task): the
  # trained network and a fresh one fit the same fresh task (`engine.final_fit`).
  final_fit_accuracy: jax.Array
  final_fit_accuracy_new_network: jax.Array
  final_fit_loss: jax.Array
  final_fit_loss_new_network: jax.Array
  # With `EngineSpec.log_every_steps` = k: [S / k] means of the minibatch loss
  # and accuracy over each k steps in a row of the task's S steps (None when k = 0).
  step_loss: jax.Array | None = None
  step_accuracy: jax.Array | None = None
