r"""Study report: report.md and its figures, from study workdirs alone.

  python -m experiments.report --workdir=DIR [--workdir=DIR2 ...] [--out=FOLDER]

Each DIR is a study workdir (``study.json`` and ``cells/<cell>/``, as
``experiments.study`` writes it) or a plain ``experiments.synthetic`` or
``experiments.rl`` workdir. Writes ``report.md`` and its PNG figures into
``--out`` (default: the first DIR), one section per study: for supervised
cells, learning curves per cell, dose-response curves per swept field, an
intervention x architecture heatmap, mechanism scatter plots and the mechanism
table; for RL cells (a config with an ``agent``), per cell a table of final
and AUC returns with the diverged seeds, episode return and probes against
environment steps, and the RL mechanism table (AUC return and each probe over
the run's last third, against the baseline); see `plastix.report`. A study may
mix both. Cells not finished yet are listed as missing. Reads the files only,
so it takes seconds (no JAX).

Bad input (a workdir that does not exist or holds neither study.json nor
metrics.csv, an unreadable file, an unwritable ``--out``) prints one line
``error: ...`` and exits with status 2.
"""

from __future__ import annotations

from absl import app
from absl import flags

from experiments import cli
from plastix import report

_WORKDIR = flags.DEFINE_multi_string(
    "workdir", None, "A study (or plain synthetic) workdir; repeat to report on several.")
_OUT = flags.DEFINE_string("out", None, "Folder for report.md and its figures "
                           "(default: the first --workdir).")


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    cli.fail(str(e).splitlines()[0] if str(e) else type(e).__name__)


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {' '.join(argv[1:])!r}")
  if not _WORKDIR.value:
    cli.fail("--workdir is required")
  try:
    studies = [report.load_study(path) for path in _WORKDIR.value]
  except report.ReportError as e:
    cli.fail(str(e))
  out = _OUT.value or _WORKDIR.value[0]
  try:
    path = report.write_report(studies, out)
  except OSError as e:
    cli.fail(f"--out {out!r} cannot be written ({e.strerror or e})")
  print(path)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
