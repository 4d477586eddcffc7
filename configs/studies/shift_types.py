r"""Shift types: which kind of nonstationarity moves the preactivations.

Label reset, class permutation, pixel permutation and the composite sequence,
across ReLU, LeakyReLU, GeLU and tanh, without and with LayerNorm: dead and
linearized units, preactivation drift and the per-unit mean-preactivation
histograms at every task end. The paper: dead and linearized units rise with
task switches without normalization, not with it.

  python -m experiments.study --config=configs/studies/shift_types.py:cpu --workdir=DIR
"""

from configs.studies import common

ACTIVATIONS = ("leaky_relu", "gelu", "tanh")


def get_config(scale: str = "cpu"):
  config = common.base(
      "shift_types", scale, "Which shifts move the preactivations",
      "Four kinds of shift (per-example label reset, class permutation, pixel "
      "permutation, and the composite sequence: label reset + pixel permutation + growing "
      "target scale under an MSE loss) across four activations, without and with "
      "LayerNorm. The paper: dead units (ReLU) and linearized units rise with task "
      "switches without normalization, and not with it.")
  config.interventions = ",".join(
      ["baseline", "layer_norm"] + [f"{a}{n}" for a in ACTIVATIONS
                                    for n in ("", "+layer_norm")])
  if scale == "cpu":
    config.steps_per_task = 150
  config.shift_params.scale_growth = 1.5
  cells = config.study.cells
  cells.a_label_reset = "shift=label_reset"
  cells.b_class_permutation = "shift=class_permutation"
  cells.c_pixel_permutation = "shift=pixel_permutation"
  cells.d_composite = "shift=label_reset+pixel_permutation+target_scale;loss.name=mse"
  return config
