r"""The 2023 paper's plasticity probe across interventions and architectures.

Every few tasks a copy of the network fits fresh high-frequency targets
``a + sin(1e5 f(x; omega_0))`` for a fixed budget, beside a fresh network; the
difference of the final probe losses is the plasticity loss (lower is
better). The 2023 table: no intervention 0.20-0.31, two-hot 0.02-0.12, head
reset 0.00-0.36, LayerNorm 0.24-0.25, weight decay 0.17-0.34,
shrink-and-perturb 0.23-0.79.

  python -m experiments.study --config=configs/studies/plasticity_probe_2023.py:cpu --workdir=DIR
"""

from configs.studies import common


def get_config(scale: str = "cpu"):
  config = common.base(
      "plasticity_probe_2023", scale, "The 2023 plasticity probe",
      "A regression sequence (fresh random-network targets at every task, so that two-hot "
      "outputs apply) for an MLP and a CNN, under no intervention, two-hot outputs, a head "
      "reset at every task end, LayerNorm, weight decay and shrink-and-perturb; the 2023 "
      "probe (copy the network, fit fresh sin(1e5 f) targets, compare with a fresh "
      "network: `plasticity_probe_loss`, lower is better) at the middle and the end of the "
      "sequence. The 2023 paper: no intervention 0.20-0.31, two-hot 0.02-0.12, head reset "
      "0.00-0.36, LayerNorm 0.24-0.25, weight decay 0.17-0.34, shrink-and-perturb "
      "0.23-0.79.")
  config.shift = "random_targets"
  config.loss.name = "mse"
  config.interventions = ("baseline,two_hot,head_reset,layer_norm,weight_decay,"
                          "shrink_and_perturb")
  config.probes.plasticity_every = config.num_tasks // 2
  config.probes.test_examples = 0 if scale == "cpu" else config.probes.test_examples
  cells = config.study.cells
  if scale == "cpu":
    config.num_tasks = 6
    config.steps_per_task = 100
    config.probes.plasticity_every = 3
    config.probes.plasticity_steps = 100
    config.probes.batch_size = 256
    cells.a_mlp = "model.name=mlp"
    cells.b_cnn = "model.name=cnn;model.cnn_channels=(8, 16);model.depth=1;batch_size=64"
  else:
    config.probes.plasticity_targets = 10
    config.probes.plasticity_steps = 2000
    cells.a_mlp = "model.name=mlp"
    cells.b_cnn = "model.name=cnn"
  return config
