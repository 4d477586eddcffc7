r"""Parameter norm and sharpness, without and with weight decay or L2.

The paper: without decay the parameter norm grows task after task and tracks
the sharpness (the top Hessian eigenvalue); decoupled weight decay and coupled
L2 (1e-5) bound it.

  python -m experiments.study --config=configs/studies/norm_sharpness.py:cpu --workdir=DIR
"""

from configs.studies import common


def get_config(scale: str = "cpu"):
  config = common.base(
      "norm_sharpness", scale, "Parameter norm and sharpness",
      "Per-example label reset (eps = 1); the parameter norm and the sharpness (top "
      "Hessian eigenvalue of the probe-batch loss, 20 power iterations) at every task end, "
      "for the baseline, decoupled weight decay (0.1 x lr per step), coupled L2 (1e-5, the "
      "paper's value) and LayerNorm with each. The paper: the norm grows without decay and "
      "tracks sharpness.")
  config.interventions = ("baseline,weight_decay,l2,layer_norm,layer_norm+weight_decay,"
                          "layer_norm+l2")
  config.probes.sharpness_every = 1
  if scale == "cpu":
    config.num_tasks = 12
    config.steps_per_task = 150
  config.study.cells.mlp = "model.name=mlp"
  return config
