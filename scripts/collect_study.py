r"""Copies a finished study's results into docs/results/<study>/ and writes its report.

  python -m scripts.collect_study --workdir=runs/abruptness [--dest=docs/results]

Keeps what the report reads and a reader needs (study.json; per cell
config.json, run_info.json, summary.json, and metrics.csv when under 1 MiB),
not checkpoints, histograms or the cells' own figures; then runs
``python -m experiments.report`` on the copy, so the committed report is made
from the committed files alone.
"""

import os
import shutil
import subprocess
import sys

from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string("workdir", None, "A study's folder.", required=True)
_DEST = flags.DEFINE_string("dest", "docs/results", "Where results folders live.")
CELL_FILES = ("config.json", "run_info.json", "summary.json", "metrics.csv")
MAX_METRICS_BYTES = 1 << 20


def main(argv):
  del argv
  import json  # pylint: disable=g-import-not-at-top
  with open(os.path.join(_WORKDIR.value, "study.json")) as f:
    record = json.load(f)
  out = os.path.join(_DEST.value, record["study"])
  shutil.rmtree(out, ignore_errors=True)
  os.makedirs(out)
  shutil.copy(os.path.join(_WORKDIR.value, "study.json"), out)
  for cell in record["cells"]:
    src, dst = os.path.join(_WORKDIR.value, cell["dir"]), os.path.join(out, cell["dir"])
    os.makedirs(dst, exist_ok=True)
    for name in CELL_FILES:
      path = os.path.join(src, name)
      if not os.path.exists(path):
        continue
      if name == "metrics.csv" and os.path.getsize(path) > MAX_METRICS_BYTES:
        print(f"{path}: over 1 MiB, not kept", file=sys.stderr)
        continue
      shutil.copy(path, dst)
  subprocess.run([sys.executable, "-m", "experiments.report", f"--workdir={out}"], check=True)


if __name__ == "__main__":
  app.run(main)
