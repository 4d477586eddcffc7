"""Config checks that run before anything is loaded or compiled.

`validate(config)` raises `ConfigError` naming the offending field, so that an
entry point can print one line and exit with status 2. The fields a learner
reads are checked by the learner itself (`plastix.learners.check`).
"""

from __future__ import annotations

import ml_collections

from plastix import config_errors
from plastix import data as data_lib
from plastix import grid as grid_lib
from plastix import interventions
from plastix import learners
from plastix import models
from plastix import optim
from plastix import resets
from plastix import shifts
from plastix.data import preprocess
from plastix.learners import regression

REDO_MODELS = ("mlp", "cnn")

ConfigError = config_errors.ConfigError  # A config field has an invalid value.
_get, _check = config_errors.get, config_errors.check
_positive_int, _int, _in = config_errors.positive_int, config_errors.integer, config_errors.one_of


def _check_name(config, field, parse):
  try:
    parse(_get(config, field))
  except ValueError as e:
    raise ConfigError(field, str(e)) from None


def _parse_interventions(names):
  if not interventions.parse_list(names):
    raise ValueError("no interventions given")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigError` for the first invalid field of an experiment config,
  or of the config as one of its interventions makes it."""
  _validate_fields(config)
  _validate_grid(config)
  _validate_parallel_runs(config)
  _validate_cpu_devices(config)
  if "distributed" in config and config.distributed.enabled:
    _check(config, "shard_seeds", lambda v: v,
           "a multi-process job splits the runs over every process's devices; set it True")
  for name in interventions.parse_list(config.interventions):
    try:
      _validate_fields(interventions.apply(config, name))
    except ConfigError as e:
      raise ConfigError(e.field, f"{str(e).split(': ', 1)[1]} under intervention "
                        f"{name!r}") from None


def _validate_fields(config: ml_collections.ConfigDict) -> None:
  _check(config, "dataset", _in(data_lib.DATASETS),
         f"unknown dataset; choose one of {', '.join(data_lib.DATASETS)}")
  _check_name(config, "shift", shifts.parse_shift)
  _check(config, "shift_params.eps", lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]")
  _check(config, "shift_params.initial_labels", _in(shifts.INITIAL_LABELS),
         f"choose one of {', '.join(shifts.INITIAL_LABELS)}")
  try:
    shifts.check_initial_labels(config.shift, config.shift_params.initial_labels)
  except ValueError as e:
    raise ConfigError("shift_params.initial_labels", f"{e} (shift {config.shift!r})") from None
  for field in ("num_tasks", "steps_per_task", "batch_size", "num_seeds",
                "tasks_per_chunk", "model.depth", "model.width", "probes.batch_size"):
    _check(config, field, _positive_int, "must be a positive integer")
  _check(config, "num_examples", lambda v: isinstance(v, int) and v >= 0,
         "must be >= 0 (0 = the whole split)")
  _check(config, "accuracy_window", lambda v: 0.0 < v <= 1.0, "must be in (0, 1]")
  _check_name(config, "interventions", _parse_interventions)
  _check(config, "intervention_params.weight_decay", lambda v: v >= 0, "must be >= 0")
  _check(config, "model.name", _in(models.MODELS), f"choose one of {', '.join(models.MODELS)}")
  _check(config, "model.norm", _in(models.NORMS), f"choose one of {', '.join(models.NORMS)}")
  _check(config, "model.activation", _in(models.ACTIVATIONS),
         f"choose one of {', '.join(models.ACTIVATIONS)}")
  _check(config, "normalization", _in(preprocess.NORMALIZATIONS),
         f"choose one of {', '.join(preprocess.NORMALIZATIONS)}")
  _check(config, "model.dtype", _in(models.DTYPES), f"choose one of {', '.join(models.DTYPES)}")
  _check(config, "optimizer.name", _in(optim.OPTIMIZERS),
         f"choose one of {', '.join(optim.OPTIMIZERS)}")
  _check(config, "optimizer.learning_rate", lambda v: v > 0, "must be > 0")
  _check(config, "optimizer.weight_decay", lambda v: v >= 0, "must be >= 0")
  _check(config, "optimizer.weight_decay_mask", _in(optim.WEIGHT_DECAY_MASKS),
         f"choose one of {', '.join(optim.WEIGHT_DECAY_MASKS)}")
  _check(config, "optimizer.b1", lambda v: 0 <= v < 1, "must be in [0, 1)")
  _check(config, "optimizer.b2", lambda v: 0 <= v < 1, "must be in [0, 1)")
  _check(config, "optimizer.eps", lambda v: v > 0, "must be > 0")
  _validate_shift_params(config)
  # The learners' own fields (loss.name, label smoothing, the distributional
  # support, the bandit's settings) and how the config fits the shift's learner.
  learners.check(config)
  for field in ("loss.l2", "loss.grad_norm_penalty", "optimizer.l2_init"):
    _check(config, field, lambda v: v >= 0, "must be >= 0")
  _validate_resets(config)
  _check(config, "probes.dormant_tau", lambda v: v >= 0, "must be >= 0")
  _check(config, "probes.srank_delta", lambda v: 0 < v < 1, "must be in (0, 1)")
  _check(config, "probes.linearized_threshold", lambda v: v >= 0, "must be >= 0")
  _check(config, "probes.test_examples", lambda v: isinstance(v, int) and v >= 0,
         "must be an integer >= 0 (0 = no held-out accuracy)")
  _check(config, "probes.final_fit_steps", lambda v: isinstance(v, int) and v >= 0,
         "must be an integer >= 0 (0 = no final fit)")
  for field in ("top_singular_values", "hessian_iters", "ntk_examples", "alignment_examples",
                "plasticity_targets", "plasticity_steps", "plasticity_batch"):
    _check(config, f"probes.{field}", _positive_int, "must be a positive integer")
  _check(config, "probes.within_task_every",
         lambda v: isinstance(v, int) and v >= 0 and (v == 0 or config.steps_per_task % v == 0),
         "must be 0 or an integer that divides steps_per_task")
  for name in ("sharpness", "ntk", "alignment", "plasticity"):
    _check(config, f"probes.{name}_every", lambda v: isinstance(v, int) and v >= 0,
           "must be an integer >= 0 (0 = never)")
  _check(config, "log_every_steps",
         lambda v: _int(v) and v >= 0 and (v == 0 or config.steps_per_task % v == 0),
         f"must be 0 (off) or an integer that divides steps_per_task = {config.steps_per_task}")
  for field in ("tensorboard", "keep_checkpoints"):
    _check(config, field, lambda v: isinstance(v, bool), "must be True or False")
  for name in ("ntk", "alignment"):
    if config.probes[f"{name}_every"]:
      _check(config, f"probes.{name}_examples", lambda v: v <= config.probes.batch_size,
             "must be at most probes.batch_size")


# Where a regression's targets lie, which a distributional support must cover
# (see `plastix.learners.regression`).
SUPPORT_STDS = regression.SUPPORT_STDS
target_range = regression.target_range


def _validate_resets(config: ml_collections.ConfigDict) -> None:
  names = resets.parse_methods(config.resets.methods)
  for name in names:
    if name not in resets.METHODS:
      raise ConfigError("resets.methods", f"unknown reset {name!r}; choose from "
                        f"{', '.join(resets.METHODS)} (combine with '+')")
  for name in names:
    if names.count(name) > 1:
      raise ConfigError("resets.methods", f"lists {name!r} twice")
  if "redo" in names and config.model.name not in REDO_MODELS:
    raise ConfigError("model.name", f"ReDo needs one of {', '.join(REDO_MODELS)} (units of "
                      f"{config.model.name} write into residual streams)")
  if "redo" in names and config.model.activation == "crelu":
    raise ConfigError("model.activation", "ReDo does not support crelu (a unit feeds two "
                      "inputs of the next layer)")
  _check(config, "resets.period_tasks", _positive_int, "must be a positive integer")
  for field in ("resets.redo_tau", "resets.shrink", "resets.perturb"):
    _check(config, field, lambda v: v >= 0, "must be >= 0")


def _validate_shift_params(config: ml_collections.ConfigDict) -> None:
  for field in ("target_dim", "target_width", "target_depth", "drift_steps",
                "classes_per_task"):
    _check(config, f"shift_params.{field}", _positive_int, "must be a positive integer")
  _check(config, "shift_params.classes_first", _positive_int, "must be a positive integer")
  _check(config, "shift_params.offset_tasks", lambda v: isinstance(v, int) and v >= 0,
         "must be an integer >= 0")
  for field in ("noise_start", "noise_end", "examples_first", "examples_per_task"):
    _check(config, f"shift_params.{field}", lambda v: 0 <= v <= 1, "must be in [0, 1]")
  _check(config, "shift_params.examples_first", lambda v: v > 0, "must be > 0")
  for field in ("noise_std", "target_omega", "target_scale"):
    _check(config, f"shift_params.{field}", lambda v: v >= 0, "must be >= 0")
  _check(config, "shift_params.scale_growth", lambda v: v > 0, "must be > 0")
  _check(config, "shift_params.target_offset", lambda v: abs(v) < float("inf"),
         "must be a finite number")
  if shifts.is_gradual(config.shift):
    # Every example and input position must have switched before the task ends,
    # or the next switch would call "previous" a task some examples never saw.
    _check(config, "shift_params.drift_steps", lambda v: v <= config.steps_per_task,
           f"must be at most steps_per_task ({config.steps_per_task}) for a gradual shift, "
           "so that each switch is complete within its task")


def _validate_grid(config: ml_collections.ConfigDict) -> None:
  """The grid parses, and each of its points is itself a valid config."""
  _check_name(config, "grid", grid_lib.parse)
  for point in grid_lib.points(config.grid):
    if not point:
      continue
    try:
      _validate_fields(grid_lib.apply_point(config, point))
    except ConfigError as e:
      raise ConfigError("grid", f"point {grid_lib.label(point)}: {e}") from None


def _validate_parallel_runs(config: ml_collections.ConfigDict) -> None:
  """0 (all runs side by side), or a divisor of the runs (seeds x grid points)."""
  runs = config.num_seeds * len(grid_lib.points(config.grid))
  _check(config, "parallel_runs", lambda v: isinstance(v, int) and v >= 0,
         "must be an integer >= 0 (0 = every run side by side)")
  _check(config, "parallel_runs", lambda v: v == 0 or v >= runs or runs % v == 0,
         f"must divide the {runs} runs (num_seeds x grid points), or be 0")


def _validate_cpu_devices(config: ml_collections.ConfigDict) -> None:
  """0 (chosen for the runs and cores) or a device count; more than one device
  only with the runs sharded over them."""
  _check(config, "cpu_devices", lambda v: isinstance(v, int) and not isinstance(v, bool)
         and v >= 0, "must be an integer >= 0 (0 = chosen for the runs and cores)")
  _check(config, "cpu_devices", lambda v: v <= 1 or config.shard_seeds,
         "more than one device trains nothing unless the runs are sharded over them; "
         "set shard_seeds True, or cpu_devices 0 or 1")
  if "stall_timeout_s" in config:  # plastix.watchdog; 0 = never.
    _check(config, "stall_timeout_s", lambda v: isinstance(v, (int, float))
           and not isinstance(v, bool) and 0 <= v < float("inf"),
           "must be a number of seconds >= 0 (0 = never stop a stalled run)")


def check_parallel_runs(parallel_runs: int, num_runs: int, num_devices: int) -> None:
  """With runs sharded over `num_devices`, rows of side-by-side runs must split
  evenly over the devices too (each device then trains its own runs)."""
  if 0 < parallel_runs < num_runs and parallel_runs % num_devices:
    raise ConfigError("parallel_runs", f"must be a multiple of the {num_devices} devices "
                      "the runs are split over (or 0)")


def validate_against_data(config: ml_collections.ConfigDict, num_train: int,
                          num_classes: int = 10, image_shape: tuple[int, ...] = ()) -> None:
  """Checks the sizes that depend on the loaded training split (size, classes, shape)."""
  if config.num_examples > num_train:
    raise ConfigError("num_examples", f"{config.num_examples} is more than the "
                      f"{num_train} training examples of {config.dataset}")
  n = config.num_examples or num_train
  if config.batch_size > n:
    raise ConfigError("batch_size", f"{config.batch_size} is larger than the "
                      f"{n} training examples in use")
  if "class_incremental" in shifts.parse_shift(config.shift) and (
      config.shift_params.classes_first > num_classes):
    raise ConfigError("shift_params.classes_first", f"{config.shift_params.classes_first} is "
                      f"more than the {num_classes} classes of {config.dataset}")
  if "rotation_flip" in shifts.parse_shift(config.shift) and (
      len(image_shape) != 3 or image_shape[0] != image_shape[1]):
    raise ConfigError("shift", f"rotation_flip needs square images; {config.dataset} has "
                      f"shape {tuple(image_shape)}")
  for name in interventions.parse_list(config.interventions):
    resolved = interventions.apply(config, name)
    try:
      models.create(resolved.model, 2, input_shape=tuple(image_shape) or None)
    except ValueError as e:
      message = str(e)
      field = message.split(":", 1)[0]
      raise ConfigError(field if field.startswith("model.") else "model",
                        f"{message.split(': ', 1)[-1]} (dataset {config.dataset}, "
                        f"intervention {name!r})") from None
  if config.probes.batch_size > n:
    raise ConfigError("probes.batch_size", f"{config.probes.batch_size} is larger "
                      f"than the {n} training examples in use")


def validate_against_test(config: ml_collections.ConfigDict, num_test: int) -> None:
  """Checks ``probes.test_examples`` against the size of the dataset's test split."""
  if config.probes.test_examples > num_test:
    raise ConfigError("probes.test_examples", f"{config.probes.test_examples} is more than "
                      f"the {num_test} test examples of {config.dataset}")
