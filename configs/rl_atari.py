r"""C51 (or DQN) on Atari 2600 games through ale-py, the whole agent in one compiled program.

  python -m experiments.rl --config=configs/rl_atari.py:cpu [--workdir=DIR] \
      [--config.env_name=Breakout] [--config.agent=dqn] ...

The paper's RL evidence is C51 and Rainbow on Atari with and without
LayerNorm. ``env_name`` is a game (``Pong``, ``Breakout``, ``MsPacman``,
``space_invaders``, or the id ``ALE/Pong-v5``), or several joined by ``+``
for a continual sequence. The environments are ale-py's C++ vector
environment with the standard preprocessing (`plastix.rl.atari`), stepped
inside the compiled program (``atari.backend="xla"``) or from a host callback
(``"host"``); the network is the Nature DQN torso (``model.name="nature_cnn"``),
LayerNorm on the preactivations of every hidden layer with ``model.norm=layer``
or the ``layer_norm`` intervention.

Presets:

* ``cpu``: a smoke-scale check a 2-core CPU finishes: one game, one seed,
  50k agent steps (200k frames; published agents train for 10M-200M frames),
  batch-32 updates every 8 agent steps, evaluation phases of 16k agent steps
  (2,000 per environment) after every 10k.
  It shows that the agent, the probes and the evaluation run on real Atari and
  that scores move off random in the easier games; it cannot show plasticity
  loss, which appears over tens of millions of frames.
  ``configs/studies/rl_atari.py:cpu`` runs it on a handful of games.
* ``paper``: the paper's protocol for an accelerator: C51, 50M agent steps
  (200M frames) per game, a 1M-transition replay, one update every 4 agent
  steps, target syncs every 8k updates (32k agent steps, as Dopamine's C51),
  evaluation phases of 125k agent steps every 250k (Dopamine's iteration), 3
  seeds. Replay stores observations and next observations as uint8
  (2 x 28 KB a transition): about 56 GB per seed at 1M transitions. Expected
  run time, an estimate (no accelerator was available to measure it): 4-5
  hours a game on one current GPU, the 3 seeds vmapped.
"""

import ml_collections

from configs import rl_minatar

PRESETS = ("cpu", "paper")


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
  config = rl_minatar.get_config()
  config.name = "rl_atari"
  config.suite = "atari"
  config.agent = "c51"
  config.env_name = "Pong"
  config.sticky_prob = 0.25            # ale-py v5's repeat-action probability.
  config.interventions = "baseline,layer_norm"

  config.atari = ml_collections.ConfigDict()
  config.atari.backend = "xla"         # xla: FFI calls in the program; host: host callbacks.
  config.atari.episodic_life = True    # A lost life ends the episode for learning (training).
  config.atari.clip_rewards = True     # Learn from sign(reward); returns are game scores.
  config.atari.noop_max = 30           # Up to this many no-ops at each reset.
  config.atari.max_episode_frames = 108_000  # 27,000 agent steps.
  config.atari.num_threads = 0         # ale-py's worker threads (0: one per core).

  # The Nature DQN torso: 32/64/64 convs (8x8/4, 4x4/2, 3x3/1), 512 units.
  config.model = ml_collections.ConfigDict()
  config.model.name = "nature_cnn"
  config.model.depth = 1
  config.model.width = 512
  config.model.norm = "none"
  config.model.activation = "relu"
  config.model.dtype = "float32"
  config.model.cnn_channels = (32, 64, 64)
  config.model.input_scale = 1.0 / 255.0

  config.td.gamma = 0.99
  config.td.num_atoms = 51
  config.td.v_min = -10.0
  config.td.v_max = 10.0
  config.optimizer.learning_rate = 2.5e-4
  config.optimizer.eps = 3.125e-4      # Dopamine's C51 Adam eps (0.01 / 32).
  config.eval_epsilon = 0.001
  config.probes.batch_size = 128
  config.probes.sharpness_every = 0

  if preset == "cpu":
    config.num_seeds = 1
    config.num_envs = 8
    config.total_env_steps = 50_000
    config.eval_every_steps = 10_000
    config.eval_steps = 16_000
    config.windows_per_chunk = 5        # One program: environments restart only at its start.
    config.replay.buffer_size = 50_000
    config.replay.batch_size = 32
    config.replay.learning_starts = 5_000
    config.replay.train_every = 1       # One update per vector step: every 8 agent steps.
    config.td.target_update_period = 1_000
    config.exploration.eps_end = 0.01
    config.exploration.eps_decay_steps = 25_000
  else:
    config.num_seeds = 3
    config.num_envs = 4
    config.total_env_steps = 50_000_000
    config.eval_every_steps = 250_000
    config.eval_steps = 125_000
    config.windows_per_chunk = 4
    config.replay.buffer_size = 1_000_000
    config.replay.batch_size = 32
    config.replay.learning_starts = 20_000
    config.replay.train_every = 1       # One update per vector step: every 4 agent steps.
    config.td.target_update_period = 8_000
    config.exploration.eps_end = 0.01
    config.exploration.eps_decay_steps = 250_000
  return config
