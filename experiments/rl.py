r"""Reinforcement learning with the same interventions and probes: every intervention
of a config, seeds vmapped, the whole agent in one compiled program.

  python -m experiments.rl --config=configs/rl_minatar.py [--workdir=DIR] \
      [--config.FIELD=VALUE ...]

Writes to the workdir (default ``runs/<config.name>-<timestamp>``):
config.json, run_info.json, metrics.csv (a row per intervention, seed and
evaluation window), summary.json, returns.png, probes.png and checkpoints/
(see `plastix.rl.experiment`). The same command with the same ``--workdir``
resumes. Bad input prints one line and exits with status 2 before anything
compiles.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # As in experiments.synthetic.

import logging
import time

from absl import app
from absl import flags

from experiments import cli

_CONFIG = cli.define_config_flag("rl_minatar.py", "RL config file (default: the package's "
                                 "configs/rl_minatar.py).")
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Output folder (default runs/<config.name>-<timestamp>).")


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}")
  config = _CONFIG.value
  cli.default_verbosity()  # absl's --verbosity, WARNING unless given (as experiments.synthetic)
  from plastix import experiment as base  # pylint: disable=g-import-not-at-top
  from plastix import joblog  # pylint: disable=g-import-not-at-top
  from plastix.rl import experiment, results  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  with joblog.JobLog() as log:
    try:
      base.check_local_workdir(_WORKDIR.value)
      prepared = experiment.prepare(config)
      workdir = _WORKDIR.value or base.default_workdir(config)
      summary = experiment.run(prepared, workdir, log=log)
    except experiment.UsageError as e:
      log.record(logging.ERROR, f"error: {e}")
      cli.fail(str(e))
    log.say(f"\n{results.format_table(summary)}\n")
    log.say(f"done in {time.perf_counter() - start:.0f}s; results in {workdir}")

if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
