r"""Target magnitude: pretraining on targets with offset c, then fitting fresh ones.

Regression onto a random network's outputs plus an offset c for the first half
of the tasks, then fresh zero-offset targets. The paper: fine-tuning gets
monotonically worse as c grows, the offset lives in one feature direction (the
top singular value of the penultimate features explodes), and categorical
outputs (two-hot, HL-Gauss) or normalization help.

  python -m experiments.study --config=configs/studies/target_magnitude.py:cpu --workdir=DIR
"""

from configs.studies import common

OFFSETS = (0.0, 1.0, 10.0, 100.0)


def get_config(scale: str = "cpu"):
  config = common.base(
      "target_magnitude", scale, "Large regression targets",
      "Regression onto a fresh random network's standardised outputs, plus an offset c "
      "on the first half of the tasks, then zero-offset targets; MSE (baseline) against "
      "two-hot and HL-Gauss heads (one support of 1-wide bins covering every offset) and "
      "LayerNorm. The fine-tuning measure is the final fit: after the sequence the network "
      "and a fresh one fit the same fresh zero-offset targets (`final_fit_loss`). The "
      "paper: fine-tuning gets monotonically worse as c grows; the offset lives in one "
      "feature direction (top singular value); categorical outputs or normalization help.",
      sweeps="shift_params.target_offset")
  config.shift = "random_targets"
  config.loss.name = "mse"
  config.loss.support_min, config.loss.support_max = -110.0, 110.0
  config.loss.num_bins = 221
  config.interventions = "baseline,two_hot,hl_gauss,layer_norm"
  config.shift_params.offset_tasks = config.num_tasks // 2
  config.probes.final_fit_steps = config.steps_per_task
  config.probes.test_examples = 0 if scale == "cpu" else config.probes.test_examples
  if scale == "cpu":
    config.num_tasks = 8
    config.shift_params.offset_tasks = 4
    config.steps_per_task = 150
    config.probes.final_fit_steps = 150
  for c in OFFSETS:
    config.study.cells[f"offset_{int(c):03d}"] = f"shift_params.target_offset={c}"
  return config
