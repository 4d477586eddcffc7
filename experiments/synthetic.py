r"""Synthetic nonstationary study: every intervention of a config, seeds vmapped.

  python -m experiments.synthetic --config=configs/shift.py [--workdir=DIR] \
      [--config.FIELD=VALUE ...]

Writes to the workdir (default ``runs/<config.name>-<timestamp>``, a local path):
config.json, run_info.json, log.txt (everything the job prints, and the log
records at absl's ``--verbosity``, WARNING by default), metrics.csv, steps.csv,
summary.json, plasticity.png, steps.png, tensorboard/, and with probes on
histograms.npz, mechanisms_<name>.png (one figure per mechanism) and
preactivation_histograms.png (see `plastix.experiment`).
Bad input (an unknown name, an impossible size, missing data, an unwritable
or non-local workdir) prints one line and exits with status 2 before anything
compiles.

The state is checkpointed after every chunk of tasks (``config.tasks_per_chunk``)
under ``<workdir>/checkpoints``. Running the same command with the same
``--workdir`` continues from there and produces the same results as a run
never interrupted; a workdir holding a different config is refused.
"""

from __future__ import annotations

import os

# The probes' SVDs run through LAPACK in OpenBLAS on CPU; its idle threads spin
# and take cores from XLA's own threads, which measured ~30% slower training of
# a small MLP. One OpenBLAS thread costs the probes nothing measurable. Set
# before numpy or scipy load OpenBLAS; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import logging
import time

from absl import app
from absl import flags

from experiments import cli

_CONFIG = cli.define_config_flag("shift.py", "Experiment config file (default: the "
                                 "package's configs/shift.py).")
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Output folder (default runs/<config.name>-<timestamp>).")

USAGE_ERROR = cli.USAGE_ERROR


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}")
  config = _CONFIG.value
  # absl's --verbosity (WARNING unless given) sets which log records of the
  # libraries and of plastix show, on stderr and in log.txt.
  cli.default_verbosity()
  from plastix import experiment, joblog, results  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  with joblog.JobLog() as log:
    try:
      # Everything that can be wrong with the input is checked before compiling.
      experiment.check_local_workdir(_WORKDIR.value)
      prepared = experiment.prepare(config)
      if config.distributed.enabled and not _WORKDIR.value:
        cli.fail("--workdir: a multi-process job needs a workdir shared by every process")
      workdir = _WORKDIR.value or experiment.default_workdir(config)
      summary = experiment.run(prepared, workdir, log=log)
    except experiment.UsageError as e:
      log.record(logging.ERROR, f"error: {e}")
      cli.fail(str(e))
    if summary is None:  # Not process 0 of a multi-process job.
      return
    log.say(f"\n{results.format_table(summary)}\n")
    log.say(f"done in {time.perf_counter() - start:.0f}s; results in {workdir}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
