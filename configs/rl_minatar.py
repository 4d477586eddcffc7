r"""DQN on MinAtar: the agent's own data drifts as it learns, and the same interventions apply.

  python -m experiments.rl --config=configs/rl_minatar.py [--workdir=DIR] \
      [--config.agent=c51] [--config.env_name=breakout+space_invaders] ...

The whole agent (environment steps in ``num_envs`` environments per seed,
replay, acting, learning, target syncs, resets and probes) is one compiled
``lax.scan``, seeds vmapped. ``env_name`` is a MinAtar game
(``breakout``, ``asterix``, ``freeway``, ``space_invaders`` or the gymnax id
``Breakout-MinAtar``), or several joined by ``+``: a continual sequence that
switches game every ``switch_every_steps`` environment steps (0: each game
gets an equal share of ``total_env_steps``).

Any field can be overridden; a grid over the traced hyperparameters
(``optimizer.learning_rate``, ``optimizer.weight_decay``, ``td.gamma``, ...)
trains beside the seeds in the same program, e.g.
``--config.grid="optimizer.learning_rate=1e-4,3e-4"``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "rl_minatar"
  config.seed = 0

  config.agent = "dqn"                # dqn, c51, pqn.
  config.suite = "minatar"            # minatar (gymnax) or atari (ale-py: configs/rl_atari.py).
  config.env_name = "breakout"
  config.sticky_prob = 0.0            # Repeat the previous action with this probability.
  config.switch_every_steps = 0       # A `+` sequence: env steps per game (0: an equal share).
  config.total_env_steps = 100_000    # Per seed, over all its environments.
  config.num_envs = 4                 # Environments per seed, stepped side by side.
  config.num_seeds = 3
  config.eval_every_steps = 10_000    # A metrics.csv row per seed every this many env steps.
  config.windows_per_chunk = 2        # Progress and checkpoints after this many rows.
  config.eval_steps = 0               # Env steps of an evaluation phase per row (0: none).
  config.eval_epsilon = 0.001         # Exploration of the evaluation episodes.
  config.stall_timeout_s = 300.0      # As in configs/shift.py (plastix.watchdog).
  config.cpu_devices = 0              # CPU devices the runs split over (0: chosen for the
                                      # runs and cores; plastix.rl.from_config.cpu_devices).

  # Interventions: the names of the supervised studies (plastix.interventions).
  config.interventions = "baseline,layer_norm,weight_decay,layer_norm+weight_decay"
  config.intervention_params = ml_collections.ConfigDict()
  config.intervention_params.weight_decay = 0.1   # Decoupled, scaled by the learning rate.
  config.intervention_params.l2 = 1e-5
  config.intervention_params.l2_init = 1e-2
  config.intervention_params.grad_norm_penalty = 1e-3  # (not used by the RL agents)
  config.intervention_params.label_smoothing = 0.1     # (not used by the RL agents)
  config.grid = ""

  config.replay = ml_collections.ConfigDict()
  config.replay.buffer_size = 100_000  # Transitions per seed.
  config.replay.batch_size = 32
  config.replay.learning_starts = 5_000  # Env steps stored before the first update.
  config.replay.train_every = 1        # Vector steps (num_envs env steps) between updates.

  config.td = ml_collections.ConfigDict()
  config.td.gamma = 0.99
  config.td.target_update_period = 1_000  # Updates between target-network syncs.
  config.td.double = True                 # dqn: double-DQN target.
  config.td.huber_kappa = 1.0             # dqn: Huber loss threshold.
  config.td.num_atoms = 51                # c51: atoms of the return distribution,
  config.td.v_min = -10.0                 # ... its support's ends.
  config.td.v_max = 10.0

  # pqn: no replay (it only feeds the probes) and no target network; lambda-returns
  # over rollouts of rollout_steps vector steps, `epochs` passes of `minibatches`.
  config.pqn = ml_collections.ConfigDict()
  config.pqn.lam = 0.65
  config.pqn.rollout_steps = 32
  config.pqn.epochs = 2
  config.pqn.minibatches = 4

  config.exploration = ml_collections.ConfigDict()
  config.exploration.eps_start = 1.0
  config.exploration.eps_end = 0.01
  config.exploration.eps_decay_steps = 50_000  # Env steps of the linear decay.

  # The MinAtar network: a 16-channel 3x3 conv (stride 1, no padding: 10x10
  # observations give 8x8x16 = 1,024 features) and a 128-unit layer.
  config.model = ml_collections.ConfigDict()
  config.model.name = "cnn"
  config.model.depth = 1
  config.model.width = 128
  config.model.norm = "none"
  config.model.activation = "relu"
  config.model.dtype = "float32"
  config.model.cnn_channels = (16,)
  config.model.cnn_kernel_size = 3
  config.model.cnn_stride = 1
  config.model.cnn_padding = "VALID"

  config.loss = ml_collections.ConfigDict()
  config.loss.l2 = 0.0   # Coupled L2: loss += (l2 / 2) ||p||^2 (the `l2` intervention).

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-4
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 3.125e-4     # Adam's eps as DQN-Adam agents use it (0.01 / 32).
  config.optimizer.weight_decay = 0.0
  config.optimizer.weight_decay_mask = "all"
  config.optimizer.l2_init = 0.0
  config.optimizer.normalize_and_project = False

  # Resets ("+"-joined, in order): redo, shrink_and_perturb, head_reset,
  # full_reset; every period_updates gradient updates.
  config.resets = ml_collections.ConfigDict()
  config.resets.methods = ""
  config.resets.period_updates = 5_000
  config.resets.redo_tau = 0.1
  config.resets.shrink = 0.8
  config.resets.perturb = 0.2

  config.probes = ml_collections.ConfigDict()
  config.probes.enabled = True
  config.probes.batch_size = 256       # Fixed probe states (and the fresh replay batch).
  config.probes.dormant_tau = 0.025
  config.probes.srank_delta = 0.01
  config.probes.linearized_threshold = 0.1
  config.probes.top_singular_values = 4
  config.probes.sharpness_every = 0    # Windows between TD-loss sharpness probes (0: never).
  config.probes.hessian_iters = 20
  return config
