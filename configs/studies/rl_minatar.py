r"""Plasticity in reinforcement learning: DQN on MinAtar games and on a sequence of games.

The paper's RL evidence (C51 and Rainbow on Atari with and without LayerNorm)
says that normalisation, with weight decay, keeps a value-based agent
learning as its own data drifts. This study runs DQN with the baseline,
LayerNorm, weight decay and both, on two MinAtar games and on a sequence that
switches from one to the other halfway through (the agent keeps its network,
replay and optimizer across the switch).

  python -m experiments.study --config=configs/studies/rl_minatar.py:cpu --workdir=DIR

``cpu`` is sized for a 2-core CPU (about an hour, the runs split over
devices): 300k environment steps per seed, 6% of MinAtar's usual
budget, so it shows the first stretch of learning and the probes' trends,
not final scores. ``paper`` is MinAtar's usual budget
(5M environment steps per game) for an accelerator.
"""

import ml_collections

from configs import rl_minatar
from configs.studies import common

INTERVENTIONS = "baseline,layer_norm,weight_decay,layer_norm+weight_decay"


def get_config(scale: str = "cpu") -> ml_collections.ConfigDict:
  config = common.with_study(
      rl_minatar.get_config(), "rl_minatar", scale,
      "DQN on MinAtar: LayerNorm and weight decay",
      "DQN (double, Huber, target network, replay) on MinAtar Breakout and SpaceInvaders and "
      "on the sequence Breakout then SpaceInvaders (one switch, halfway), with the baseline, "
      "LayerNorm, weight decay and both. The paper: LayerNorm (with weight decay) keeps "
      "value-based agents learning under the drift of their own data.")
  config.interventions = INTERVENTIONS
  cells = config.study.cells
  cells.a_breakout = "env_name=breakout"
  cells.b_space_invaders = "env_name=space_invaders"
  cells.c_sequence = "env_name=breakout+space_invaders"
  config.num_seeds = 3
  config.probes.sharpness_every = 5
  if scale == "cpu":
    config.total_env_steps = 300_000
    config.num_envs = 8
    config.eval_every_steps = 15_000
    config.windows_per_chunk = 5
    config.replay.learning_starts = 5_000
    config.exploration.eps_decay_steps = 30_000
    config.td.target_update_period = 500
  else:
    config.total_env_steps = 5_000_000
    config.num_envs = 1
    config.eval_every_steps = 100_000
    config.windows_per_chunk = 10
    config.replay.learning_starts = 5_000
    config.exploration.eps_decay_steps = 100_000
    config.td.target_update_period = 1_000
  return config
