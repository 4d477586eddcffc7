"""From an experiment config to the engine's arguments.

`engine_spec` (static), `hparams` (traced), `load_train_data` (the data as
device arrays) and `seed_keys` turn a resolved, single-intervention config into
what `plastix.engine.init_states` and `run_tasks` take; the rest are the
pieces they are made of.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from plastix import data as data_lib
from plastix import learners
from plastix import models
from plastix import probe_suite
from plastix import resets
from plastix import sharding
from plastix import shifts
from plastix import validation
from plastix.data import preprocess
from plastix.engine_types import EngineSpec, HParams, TrainData


def load_train_data(config: ml_collections.ConfigDict,
                    ds: data_lib.Dataset | None = None,
                    test: data_lib.Dataset | None = None) -> tuple[TrainData, int]:
  """The config's training examples, probe batch and held-out examples as
  device arrays, and the class count.

  `ds` and `test` are the config's training and test splits when the caller
  has loaded them already. The held-out examples are the first
  ``probes.test_examples`` of the test split (class-balanced for the embedded
  set), standardised like the training images; none with 0.

  Raises:
    plastix.validation.ConfigError: the config does not fit the split
      (`validation.validate_against_data`: e.g. more examples than it holds).
    plastix.data.DataError: a split cannot be loaded.
  """
  if ds is None:
    ds = load_dataset(config, "train")
  validation.validate_against_data(config, ds.images.shape[0], ds.num_classes,
                                   ds.images.shape[1:])
  m = test_examples(config)
  if m and test is None:
    test = load_dataset(config, "test")
  if m:
    validation.validate_against_test(config, test.images.shape[0])
  n = config.num_examples or ds.images.shape[0]
  images = ds.images[:n]
  mean, std = 0.0, 1.0  # [0, 1] scaling: no extra work in the step.
  if config.normalization == "standardize":
    pixels = int(np.prod(images.shape[1:-1]))
    per_dim = lambda v: jnp.asarray(np.tile(v, pixels), jnp.float32)  # HWC order
    mean, std = (per_dim(v) for v in preprocess.channel_stats(images))
  probe_index = np.arange(min(config.probes.batch_size, n), dtype=np.int32)
  held_out = {}
  if m:
    held_out = dict(test_images=jnp.asarray(test.images[:m].reshape(m, -1)),
                    test_labels=jnp.asarray(test.labels[:m].astype(np.int32)))
  return TrainData(images=jnp.asarray(images.reshape(n, -1)),
                   labels=jnp.asarray(ds.labels[:n]),
                   probe_index=jnp.asarray(probe_index), mean=mean, std=std,
                   standardize=config.normalization == "standardize",
                   image_shape=tuple(int(d) for d in ds.images.shape[1:]),
                   **held_out), ds.num_classes


def test_examples(config: ml_collections.ConfigDict) -> int:
  """How many held-out examples the run measures (``probes.test_examples``;
  0 without probes)."""
  return int(config.probes.get("test_examples", 0)) if config.probes.enabled else 0


# config.cpu_devices = 0 splits the host only for these models, where the split
# was measured faster (the MLP 1.2-1.6x); the CNN, 3 seeds on 3 devices of a
# 2-core CPU, trained 2.3x slower than on one device.
SPLIT_MODELS = ("mlp",)
# config.cpu_devices = 0 makes at most as many CPU devices as hold this many
# bytes of copies of the training images (one copy per device, counted as
# stored; a rough cap: labels and regression inputs come on top).
DATA_COPIES_BYTES = 2 << 30


def cpu_devices(config: ml_collections.ConfigDict, num_runs: int,
                data_bytes: int = 0) -> int | None:
  """The number of CPU devices to split this host into for `config`'s `num_runs`
  runs, or None to leave JAX's own choice (see `plastix.sharding`).

  ``config.cpu_devices = n > 0`` is taken as given. 0 (automatic) gives
  `sharding.cpu_device_count` for this host's cores and ``config.parallel_runs``,
  with at most ``DATA_COPIES_BYTES / data_bytes`` devices (`data_bytes`: the
  training examples' size); it leaves JAX's choice for models outside
  `SPLIT_MODELS`, where the runs are not sharded (``shard_seeds=False``), in a
  multi-process job, or where ``JAX_NUM_CPU_DEVICES`` or ``XLA_FLAGS`` already
  set the count.
  """
  if config.cpu_devices > 0:
    return config.cpu_devices
  if (config.model.name not in SPLIT_MODELS or not config.shard_seeds
      or config.distributed.enabled or sharding.forced_cpu_device_count() is not None):
    return None
  return sharding.cpu_device_count(num_runs, sharding.host_cores(), config.parallel_runs,
                                   max_devices=DATA_COPIES_BYTES // max(data_bytes, 1))


def load_dataset(config: ml_collections.ConfigDict, split: str) -> data_lib.Dataset:
  """`plastix.data.load` with the config's dataset, data_dir and manual_dir.

  Raises:
    plastix.data.DataError: as `load` does, its advice naming the config's
      fields as command-line overrides (``--config.manual_dir``); the config
      has no download field, so downloading is advised through
      ``python -m plastix.data``.
  """
  try:
    return data_lib.load(config.dataset, split, config.data_dir or None,
                         manual_dir=config.manual_dir or None)
  except data_lib.DataError as e:
    raise e.naming(config_data_options(config.dataset)) from e


def config_data_options(dataset: str) -> dict[str, str]:
  """How a data error's advice names the options, for a run set up by a config."""
  return {"data_dir": "--config.data_dir", "manual_dir": "--config.manual_dir",
          "download": f"--download to `python -m plastix.data {dataset}` first"}


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
  """The model's outputs, as the shift's learner reads them: ``target_dim``
  (times the support's bins for a distributional loss) for regression targets,
  else the classes."""
  return learners.for_shift(config.shift).num_outputs(config, num_classes)


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
      random_initial_labels=shifts.initial_labels_random(config.shift,
                                                         config.shift_params.initial_labels),
      probe_settings=probe_settings(config), learner=learners.make(config),
      run_probes=bool(config.probes.enabled),
      shift_params=shift_params(config), image_shape=tuple(image_shape),
      coupled_l2=config.loss.l2 > 0, grad_norm_penalty=config.loss.grad_norm_penalty > 0,
      l2_init=config.optimizer.l2_init > 0,
      normalize_and_project=bool(config.optimizer.normalize_and_project),
      resets=reset_names(config), reset_period=int(r.period_tasks),
      redo_tau=float(r.redo_tau), shrink=float(r.shrink), perturb=float(r.perturb),
      parallel_runs=int(config.get("parallel_runs", 0)),
      final_fit_steps=final_fit_steps(config),
      final_fit_task=config.num_tasks - 1 if final_fit_steps(config) else -1)


def final_fit_steps(config: ml_collections.ConfigDict) -> int:
  """``probes.final_fit_steps`` (0 = no final fit; always 0 without probes)."""
  return int(config.probes.get("final_fit_steps", 0)) if config.probes.enabled else 0


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
  """The traced hyperparameters of a (resolved) config, float32 scalars; those
  of the shift's learner (the bandit's gamma) from the learner."""
  o = config.optimizer
  f = lambda v: jnp.asarray(v, jnp.float32)
  return HParams(learning_rate=f(o.learning_rate), weight_decay=f(o.weight_decay),
                 b1=f(o.b1), b2=f(o.b2), eps=f(o.eps),
                 shift_eps=f(config.shift_params.eps),
                 l2=f(config.loss.l2), grad_norm_penalty=f(config.loss.grad_norm_penalty),
                 l2_init=f(o.l2_init),
                 learner=learners.for_shift(config.shift).hparams(config))


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
