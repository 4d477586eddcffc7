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
  config.manual_dir = ""      # Folder with the original files to prepare a dataset from.
  config.num_examples = 1000  # The first N training images (class-balanced); 0 = all.
  config.normalization = "unit"  # "unit" (pixels / 255) or "standardize" (per channel).

  # Nonstationarity: a shift name from plastix.shifts (combine with '+').
  config.shift = "label_reset"
  config.shift_params = ml_collections.ConfigDict()
  config.shift_params.eps = 1.0                  # label_reset: fraction relabelled.
  # Task 0's labels: "auto" (random for a sequence with a label_reset, the
  # dataset's true labels for every other shift), "true" or "random".
  config.shift_params.initial_labels = "auto"
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
  # Runs (seeds x grid points) trained side by side at a time; the others run in
  # sequence inside the same program (0 = all side by side; see README,
  # "Options", for what it measured on a CPU).
  config.parallel_runs = 0
  # JAX devices to split a CPU-only host into, the runs sharded over them (a
  # program per device beat XLA's threads inside one program for an MLP; see
  # README, "Speed"). 0: for an MLP, as many as `plastix.sharding.cpu_device_count`
  # chooses for the runs and cores (the float rounding can then differ between
  # machines with different core counts), one for other models (a CNN measured
  # slower split); 1: one device. No effect on a GPU or TPU.
  config.cpu_devices = 0
  # Seconds a chunk of tasks may make no progress before the job ends with one
  # line on stderr saying why, exit status 3 (plastix.watchdog; finished chunks
  # stay checkpointed). On CPU devices: seconds in a row of the process using no
  # CPU (a deadlock: compiling or a slow chunk keeps a core busy and never
  # counts). On a GPU or TPU: a chunk longer than this and 20x the slowest
  # chunk so far. 0: never.
  config.stall_timeout_s = 300.0

  # Multi-process jobs (one process per host): jax.distributed.initialize() with
  # these arguments; "" / -1 let JAX detect them (SLURM, Open MPI, TPU pods).
  config.distributed = ml_collections.ConfigDict()
  config.distributed.enabled = False
  config.distributed.coordinator_address = ""
  config.distributed.num_processes = -1
  config.distributed.process_id = -1
  config.accuracy_window = 0.1   # train_accuracy: mean over this last fraction of a task.

  # What the job writes besides its results (see README, "Live metrics and logs").
  # The training loss and accuracy averaged over every N steps (N divides
  # steps_per_task), into steps.csv, steps.png and TensorBoard; 0 = off.
  config.log_every_steps = 10
  config.tensorboard = True        # Event files in <workdir>/tensorboard/, written as tasks finish.
  config.keep_checkpoints = True   # False: <workdir>/checkpoints/ deleted once the run completes.

  # Interventions: comma-separated names from plastix.interventions.
  config.interventions = "baseline,layer_norm,weight_decay,layer_norm+weight_decay"
  config.intervention_params = ml_collections.ConfigDict()
  config.intervention_params.weight_decay = 0.1   # Strength used by `weight_decay`.
  config.intervention_params.l2 = 1e-5            # ... by `l2` (coupled, the paper's value).
  config.intervention_params.l2_init = 1e-2       # ... by `l2_init`.
  config.intervention_params.grad_norm_penalty = 1e-3  # ... by `grad_norm_penalty`.
  config.intervention_params.label_smoothing = 0.1     # ... by `label_smoothing`.

  # A grid over traced hyperparameters, trained in the same program as the seeds
  # (see plastix.grid), e.g. "optimizer.learning_rate=1e-3,3e-4;shift_params.eps=0.1,1".
  config.grid = ""

  config.model = ml_collections.ConfigDict()
  config.model.name = "mlp"
  config.model.depth = 2
  config.model.width = 256
  config.model.norm = "none"    # none, layer, batch, rms, hybrid (set by the *_norm interventions).
  config.model.activation = "relu"  # relu, leaky_relu, gelu, tanh, crelu.
  config.model.dtype = "float32"  # Matmul dtype: "float32" or "bfloat16" (params stay f32).
  # Model-specific fields (see plastix.models.create); depth/width are the CNN's
  # dense layers after its convs.
  config.model.cnn_channels = (32, 64)
  config.model.cnn_kernel_size = 3
  config.model.cnn_stride = 2
  config.model.cnn_padding = "SAME"   # or "VALID" (no padding).
  config.model.resnet_width = 64
  config.model.resnet_stage_sizes = (2, 2, 2, 2)
  config.model.vit_patch_size = 4
  config.model.vit_dim = 192
  config.model.vit_depth = 12
  config.model.vit_heads = 3
  config.model.vit_mlp_dim = 768
  config.model.vit_pool = "cls"

  config.loss = ml_collections.ConfigDict()
  # "auto" (cross_entropy for classification, mse for regression, TD for the
  # bandit), or for classification "cross_entropy" / "mse" (on one-hot targets),
  # for regression "mse" / "two_hot" / "hl_gauss".
  config.loss.name = "auto"
  config.loss.label_smoothing = 0.0    # cross_entropy only.
  # Regression: "mse", or "two_hot" / "hl_gauss" over num_bins atoms in [support_min, support_max].
  config.loss.num_bins = 51
  config.loss.support_min = -10.0
  config.loss.support_max = 10.0
  config.loss.hl_gauss_sigma = 0.75    # In bin widths.
  config.loss.l2 = 0.0                 # Coupled L2: loss += (l2 / 2) ||p||^2 (decay mask).
  config.loss.grad_norm_penalty = 0.0  # loss += strength * ||grad loss||^2.

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-8
  config.optimizer.weight_decay = 0.0            # Decoupled decay applied to every run.
  config.optimizer.weight_decay_mask = "all"     # "all" or "kernels".
  config.optimizer.l2_init = 0.0                 # Regenerative: grad += l2_init (p - p_0).
  config.optimizer.normalize_and_project = False  # Kernels kept at their init norm.

  # Resets at task ends ("+"-joined, in order): redo, shrink_and_perturb,
  # head_reset, full_reset; every period_tasks tasks.
  config.resets = ml_collections.ConfigDict()
  config.resets.methods = ""
  config.resets.period_tasks = 1
  config.resets.redo_tau = 0.1       # ReDo: units with dormant score <= tau are recycled.
  config.resets.shrink = 0.8         # shrink_and_perturb: p <- shrink p + perturb p_fresh.
  config.resets.perturb = 0.2

  config.probes = ml_collections.ConfigDict()
  config.probes.enabled = True     # False: NaN in every probe column (timing runs).
  config.probes.batch_size = 512   # Fixed probe batch: the first N training images.
  config.probes.dormant_tau = 0.025
  config.probes.srank_delta = 0.01
  config.probes.linearized_threshold = 0.1  # Smooth units: preactivation std below this.
  config.probes.top_singular_values = 4     # Of the penultimate features.
  # test_accuracy / test_loss at every task end on the first N images of the
  # test split (class-balanced for the embedded set); 0 = not measured.
  config.probes.test_examples = 1000
  # After the last task, the trained network and a fresh one fit the same fresh
  # task (all labels reset) for this many steps: one yardstick for conditions
  # whose tasks differ (final_fit_* in summary.json); 0 = off.
  config.probes.final_fit_steps = 0
  # Every N steps within a task (N divides steps_per_task; 0 = only at task ends):
  # drift of per-unit mean preactivations since the task's start, and histograms.
  config.probes.within_task_every = 0
  # Expensive probes every N tasks (0 = never); NaN columns on the tasks they skip.
  config.probes.sharpness_every = 0    # Top Hessian eigenvalue (power iteration).
  config.probes.hessian_iters = 20
  config.probes.ntk_every = 0          # Empirical NTK structure.
  config.probes.ntk_examples = 64
  config.probes.alignment_every = 0    # Mean pairwise cosine of per-example gradients.
  config.probes.alignment_examples = 64
  config.probes.plasticity_every = 0   # The 2023 probe: fit fresh sin targets.
  config.probes.plasticity_targets = 1
  config.probes.plasticity_steps = 200
  config.probes.plasticity_omega = 1e5
  config.probes.plasticity_batch = 64
  return config
