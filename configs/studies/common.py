"""What every study config shares: the base experiment and its two scales.

``cpu`` (the default) is sized for a 2-core laptop CPU (each study at most
about 20 minutes) on the embedded Fashion-MNIST subset; ``paper`` is the
paper's size and dataset (CIFAR-10 where it used it), for an accelerator.
"""

import ml_collections

from configs import shift

SCALES = ("cpu", "paper")


def with_study(config: ml_collections.ConfigDict, name: str, scale: str, title: str,
               description: str, sweeps: str = "") -> ml_collections.ConfigDict:
  """`config` named `name`, with a ``study`` section (no cells yet); ValueError
  for a scale not in `SCALES`. Every study config, supervised or RL, starts here."""
  if scale not in SCALES:
    raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
  config.name = name
  config.study = ml_collections.ConfigDict()
  config.study.name = name
  config.study.scale = scale
  config.study.title = title
  config.study.description = description
  config.study.sweeps = sweeps
  config.study.cells = ml_collections.ConfigDict()
  return config


def base(name: str, scale: str, title: str, description: str,
         sweeps: str = "") -> ml_collections.ConfigDict:
  """configs/shift.py with a ``study`` section, sized for `scale`."""
  config = with_study(shift.get_config(), name, scale, title, description, sweeps)
  if scale == "cpu":
    config.num_tasks = 10
    config.steps_per_task = 200
    config.num_seeds = 3
    config.model.width = 128
    config.num_examples = 1000
    config.probes.test_examples = 500
  else:
    config.dataset = "cifar10"
    config.num_examples = 0        # every training image
    config.num_tasks = 20
    config.steps_per_task = 10_000
    config.num_seeds = 5
    config.model.width = 512
    config.probes.test_examples = 10_000
  return config
