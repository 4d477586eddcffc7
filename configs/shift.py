r"""Default synthetic study: memorising fresh random labels of Fashion-MNIST images.

Every task relabels all training images with fresh uniform random labels
(``label_reset`` with eps = 1); an MLP trained with Adam memorises each task in
turn. Any field can be overridden, e.g.

  python -m experiments.synthetic --config=configs/shift.py \
      --config.num_tasks=3 --config.steps_per_task=100 --config.num_seeds=2 \
      --config.interventions=baseline,layer_norm+weight_decay
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "shift"
  config.seed = 0

  # Data: the embedded Fashion-MNIST subset needs no download.
  config.dataset = "fashion_mnist_small"
  config.data_dir = ""        # For datasets read from files; "" = the loader's default.
  config.num_examples = 1000  # The first N training images (class-balanced); 0 = all.

  # Nonstationarity: a shift name from plastix.shifts (combine with '+').
  config.shift = "label_reset"
  config.shift_params = ml_collections.ConfigDict()
  config.shift_params.eps = 1.0                  # label_reset: fraction relabelled.
  config.shift_params.initial_labels = "random"  # Task 0: "random" or "true" labels.
  # Parameters of the other shifts (see plastix/shifts.py for each definition).
  config.shift_params.noise_std = 0.1           # input_noise: std of the noise image.
  config.shift_params.noise_start = 0.0         # noisy_labels: rate on the first task,
  config.shift_params.noise_end = 0.5           # ... and on the last.
  config.shift_params.classes_first = 2         # class_incremental: classes in task 0,
  config.shift_params.classes_per_task = 2      # ... added per task.
  config.shift_params.examples_first = 0.1      # growing_examples: fraction in task 0,
  config.shift_params.examples_per_task = 0.1   # ... added per task.
  config.shift_params.target_dim = 1            # random_targets: outputs,
  config.shift_params.target_width = 256        # ... the random network's width,
  config.shift_params.target_depth = 2          # ... and depth,
  config.shift_params.target_omega = 0.0        # ... sin(omega f) when > 0,
  config.shift_params.target_scale = 1.0        # ... times this,
  config.shift_params.target_offset = 0.0       # ... plus this offset c,
  config.shift_params.offset_tasks = 1          # ... on the first this many tasks.
  config.shift_params.scale_growth = 2.0        # target_scale: factor per task.
  config.shift_params.gamma = 0.0               # contextual_bandit: TD discount,
  config.shift_params.bandit_epsilon = 0.1      # ... exploration rate,
  config.shift_params.target_update_period = 100  # ... steps between target syncs.
  config.shift_params.drift_steps = 100         # gradual: steps a switch is spread over.

  # Schedule.
  config.num_tasks = 20
  config.steps_per_task = 300
  config.batch_size = 128
  config.num_seeds = 3
  config.tasks_per_chunk = 5     # Progress and checkpoints after every chunk of tasks.
  config.shard_seeds = True      # Split the seeds over every device (a no-op on one).

  # Multi-process jobs (one process per host): jax.distributed.initialize() with
  # these arguments; "" / -1 let JAX detect them (SLURM, Open MPI, TPU pods).
  config.distributed = ml_collections.ConfigDict()
  config.distributed.enabled = False
  config.distributed.coordinator_address = ""
  config.distributed.num_processes = -1
  config.distributed.process_id = -1
  config.accuracy_window = 0.1   # train_accuracy: mean over this last fraction of a task.

  # Interventions: comma-separated names from plastix.interventions.
  config.interventions = "baseline,layer_norm,weight_decay,layer_norm+weight_decay"
  config.intervention_params = ml_collections.ConfigDict()
  config.intervention_params.weight_decay = 0.1   # Strength used by `weight_decay`.

  # A grid over traced hyperparameters, trained in the same program as the seeds
  # (see plastix.grid), e.g. "optimizer.learning_rate=1e-3,3e-4;shift_params.eps=0.1,1".
  config.grid = ""

  config.model = ml_collections.ConfigDict()
  config.model.name = "mlp"
  config.model.depth = 2
  config.model.width = 256
  config.model.norm = "none"    # Set to "layer" by the layer_norm intervention.
  config.model.dtype = "float32"  # Matmul dtype: "float32" or "bfloat16" (params stay f32).

  config.loss = ml_collections.ConfigDict()
  config.loss.name = "cross_entropy"   # Classification: "cross_entropy" or "mse" (one-hot).
  config.loss.label_smoothing = 0.0    # cross_entropy only.

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-8
  config.optimizer.weight_decay = 0.0            # Decoupled decay applied to every run.
  config.optimizer.weight_decay_mask = "all"     # "all" or "kernels".

  config.probes = ml_collections.ConfigDict()
  config.probes.enabled = True     # False: -1 in every probe column (timing runs).
  config.probes.batch_size = 512   # Fixed probe batch: the first N training images.
  config.probes.dormant_tau = 0.025
  config.probes.srank_delta = 0.01
  return config
