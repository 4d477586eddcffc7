r"""The contextual bandit at several discounts gamma.

A DQN-style learner on image labels (reward 1 for the right class), with a
target network, whose labels keep changing by class permutations. The paper:
plasticity is lost already at gamma = 0 and LayerNorm with weight decay holds
up; gamma is a traced hyperparameter, so the four values train in one program
per intervention.

  python -m experiments.study --config=configs/studies/bandit.py:cpu --workdir=DIR
"""

from configs.studies import common


def get_config(scale: str = "cpu"):
  config = common.base(
      "bandit", scale, "A contextual bandit with bootstrapped targets",
      "Epsilon-greedy actions on images (reward 1 for the right class), a squared TD loss "
      "to r + gamma max Q_target(x') with a target network synced every 100 steps, and a "
      "fresh class permutation at every task; gamma in {0, 0.5, 0.9, 0.99}; baseline, "
      "LayerNorm, weight decay, LayerNorm with weight decay, and the resets the paper "
      "tried. The paper: gamma = 0 already loses plasticity; LayerNorm with weight decay "
      "holds up. Accuracy is that of the greedy action.",
      sweeps="shift_params.gamma")
  config.shift = "class_permutation+contextual_bandit"
  config.grid = "shift_params.gamma=0,0.5,0.9,0.99"
  config.interventions = ("baseline,layer_norm,weight_decay,layer_norm+weight_decay,"
                          "shrink_and_perturb,head_reset")
  if scale == "cpu":
    config.num_seeds = 2
    config.steps_per_task = 200
  config.study.cells.mlp = "model.name=mlp"
  return config
