r"""The intervention matrix: every architecture x every intervention on the composite sequence.

The paper: no single intervention fixes every case; LayerNorm with weight
decay fixes most; where plasticity is lost, the empirical NTK collapses to
diagonal plus low rank.

  python -m experiments.study --config=configs/studies/intervention_matrix.py:cpu --workdir=DIR
"""

from configs.studies import common

INTERVENTIONS = ("baseline", "layer_norm", "batch_norm", "hybrid_norm", "weight_decay", "l2",
                 "layer_norm+weight_decay", "layer_norm+l2", "redo", "shrink_and_perturb",
                 "head_reset")
# ReDo recycles units of MLPs and CNNs only (a ResNet's or ViT's units write into
# residual streams), so those cells leave it out.
NO_REDO = tuple(i for i in INTERVENTIONS if i != "redo")
# The ViT normalises per token (LayerNorm or RMSNorm only): no batch statistics.
VIT = tuple(i for i in NO_REDO if i not in ("batch_norm", "hybrid_norm"))


def get_config(scale: str = "cpu"):
  config = common.base(
      "intervention_matrix", scale, "Interventions across architectures",
      "The composite sequence (per-example label reset, a fresh pixel permutation and a "
      "growing target scale under an MSE loss) for an MLP, a CNN, a ResNet-18 and a ViT "
      "(reduced in the cpu scale), under eleven interventions, with the sharpness and the "
      "NTK's structure every few tasks. The paper: no single intervention fixes every "
      "case; LayerNorm with weight decay fixes most; the NTK collapses to diagonal plus low "
      "rank where plasticity is lost. ReDo runs on the MLP and CNN only, BatchNorm and the "
      "hybrid norm not on the ViT (which normalises per token).")
  config.shift = "label_reset+pixel_permutation+target_scale"
  config.loss.name = "mse"
  config.shift_params.scale_growth = 1.25
  config.interventions = ",".join(INTERVENTIONS)
  config.probes.sharpness_every = 3
  config.probes.ntk_every = 3
  no_redo, vit = ",".join(NO_REDO), ",".join(VIT)
  cells = config.study.cells
  if scale == "cpu":
    config.num_tasks = 6
    config.steps_per_task = 100
    config.batch_size = 64
    config.num_seeds = 2
    config.num_examples = 500
    config.probes.batch_size = 256
    config.probes.test_examples = 500
    config.model.width = 64
    cells.a_mlp = "model.name=mlp"
    cells.b_cnn = "model.name=cnn;model.cnn_channels=(8, 16);model.depth=1"
    # A ResNet-18's four stages of basic blocks, one block each, 4-8-16-32
    # channels, on half the minibatch and a quarter of the probe batch (the NTK's
    # 64 examples), its two seeds one after the other (parallel_runs=1: vmapped
    # over two seeds, this network's gradient took 2.6x the CPU time per seed).
    cells.c_resnet18 = ("model.name=resnet18;model.resnet_width=4;"
                        "model.resnet_stage_sizes=(1, 1, 1, 1);batch_size=32;"
                        "probes.batch_size=64;parallel_runs=1;"
                        f"interventions={no_redo}")
    cells.d_vit = ("model.name=vit_tiny;model.vit_patch_size=7;model.vit_dim=32;"
                   f"model.vit_depth=2;model.vit_heads=2;model.vit_mlp_dim=64;"
                   f"interventions={vit}")
  else:
    config.num_tasks = 20
    config.probes.sharpness_every = 5
    config.probes.ntk_every = 5
    cells.a_mlp = "model.name=mlp"
    cells.b_cnn = "model.name=cnn"
    cells.c_resnet18 = f"model.name=resnet18;interventions={no_redo}"
    cells.d_vit = f"model.name=vit_tiny;interventions={vit}"
  return config
