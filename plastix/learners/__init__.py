"""Supervised learners: what the engine trains a network to do on each task.

The engine (`plastix.engine`) runs one loop for every learner and asks
``spec.learner`` (a `Learner`, part of the static `EngineSpec`) wherever
learners differ: the minibatch, the loss and accuracy, the work after each
step, the probes' loss, the held-out metrics, the final fit's task, and the
target network the resets treat. Probes, resets and interventions are written
once for all of them.

`LEARNERS` maps a learner's name to its class; a sequence's learner is the
one its shift names (`shifts.objective`: ``random_targets`` a regression,
``contextual_bandit`` the bandit, any other a classification). A new learner
is a new module here (a `Learner` subclass) plus one entry.
"""

from __future__ import annotations

import ml_collections

from plastix import shifts
from plastix.learners.bandit import Bandit
from plastix.learners.base import Learner
from plastix.learners.classification import Classification
from plastix.learners.regression import Regression

LEARNERS: dict[str, type[Learner]] = {
    Classification.name: Classification,
    Regression.name: Regression,
    Bandit.name: Bandit,
}


def for_shift(shift: str) -> type[Learner]:
  """The class of the learner a sequence of shift `shift` trains."""
  return LEARNERS[shifts.objective(shift)]


def make(config: ml_collections.ConfigDict) -> Learner:
  """The learner of `config`'s shift with its static settings from `config`."""
  return for_shift(config.shift).from_config(config)


def check(config: ml_collections.ConfigDict) -> None:
  """Every learner's own settings (`Learner.check_settings`: a config carries
  them all), then the config as a run of its shift's learner (`Learner.check`).
  Raises `plastix.config_errors.ConfigError` naming the first bad field."""
  in_use = for_shift(config.shift)
  for learner in LEARNERS.values():
    if learner is not in_use:
      learner.check_settings(config)
  in_use.check(config)
