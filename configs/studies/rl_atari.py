r"""Plasticity in reinforcement learning on Atari: C51 with and without LayerNorm.

The paper's headline RL evidence: C51 and Rainbow on the Arcade Learning
Environment, where LayerNorm on the preactivations of the hidden layers gave
modest but consistent gains. This study runs C51 (the Nature DQN torso) with
the baseline and LayerNorm on a handful of games, each a cell.

  python -m experiments.study --config=configs/studies/rl_atari.py:cpu --workdir=DIR

``cpu`` is `configs/rl_atari.py:cpu` on Pong, Breakout and SpaceInvaders: one
seed, 50k agent steps (200k frames) per game, about an hour on a 2-core CPU.
It is a smoke-scale check that the agents, probes and evaluation run on real
Atari; at 1% of a single published run's frames it cannot show plasticity loss
or the paper's LayerNorm gains. ``paper`` is the paper's protocol
(`configs/rl_atari.py:paper`, 200M frames a game, 3 seeds) on the 57 games of
the Atari benchmark, a cell each, for an accelerator: an estimate (not
measured; no accelerator was available) is 4-5 hours a game on one current GPU
with the seeds vmapped (12.5M batch-32 updates at about 0.75 ms, 12.5M acting
steps, 50M environment steps on 16 cores), about 11 GPU-days in all; run cells
in parallel with ``--cell=K``.
"""

import ml_collections

from configs import rl_atari
from configs.studies import common
from plastix.rl import atari_scores


def get_config(scale: str = "cpu") -> ml_collections.ConfigDict:
  if scale not in common.SCALES:  # before rl_atari's own presets refuse it
    raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(common.SCALES)}")
  config = common.with_study(
      rl_atari.get_config(scale), "rl_atari", scale, "C51 on Atari: LayerNorm",
      "C51 (the Nature DQN torso, 51 atoms, target network, replay, sticky actions 0.25) on "
      "Pong, Breakout and SpaceInvaders with and without LayerNorm on the preactivations of "
      "every hidden layer. The paper: LayerNorm gives value-based agents on Atari modest but "
      "consistent gains.")
  config.interventions = "baseline,layer_norm"
  cells = config.study.cells
  if scale == "cpu":
    cells.a_pong = "env_name=Pong"
    cells.b_breakout = "env_name=Breakout"
    cells.c_space_invaders = "env_name=SpaceInvaders"
  else:
    # The paper's games: the 57 of the Atari benchmark, a cell each.
    for i, game in enumerate(atari_scores.ATARI_57):
      cells[f"g{i:02d}_{game}"] = f"env_name={game}"
  return config
