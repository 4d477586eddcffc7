r"""Abruptness: per-example label resets of a fraction eps of the labels.

The paper: more abrupt shifts lose more plasticity; resetting 1% of the labels
barely hurts. Tasks differ in difficulty across eps (with eps = 0.01 a task
is 99% the previous one), so every condition is also measured on one
yardstick: after the sequence, the network and a fresh one fit the same fresh
task (``probes.final_fit_steps``), and the 2023 probe runs.

  python -m experiments.study --config=configs/studies/abruptness.py:cpu --workdir=DIR
"""

from configs.studies import common


def get_config(scale: str = "cpu"):
  config = common.base(
      "abruptness", scale, "How abrupt a shift loses plasticity",
      "Per-example label reset with eps in {0.01, 0.1, 0.5, 1} (the fraction of labels "
      "made random at each switch), an MLP with Adam; baseline, LayerNorm, and LayerNorm "
      "with weight decay. eps is a traced hyperparameter, so the four values train in one "
      "program per intervention. The paper: more abrupt shifts lose more plasticity; "
      "eps = 0.01 barely hurts. The yardstick is the final fit (`final_fit_gap`: a fresh "
      "network's accuracy on the same fresh task minus the trained network's).",
      sweeps="shift_params.eps")
  config.shift = "label_reset"
  config.grid = "shift_params.eps=0.01,0.1,0.5,1.0"
  config.interventions = "baseline,layer_norm,layer_norm+weight_decay"
  config.probes.final_fit_steps = config.steps_per_task
  config.probes.plasticity_every = config.num_tasks // 2
  config.study.cells.mlp = "model.name=mlp"
  return config
