"""Prepares a dataset for ``plastix.data.load`` from its original files.

  python -m plastix.data cifar10 --download
  python -m plastix.data mnist --manual_dir=$HOME/mnist --data_dir=/data/tfds

The files are verified against their sha256 and written as ``plastix_<name>``
into the tfds data directory (default $TFDS_DATA_DIR, else
``~/tensorflow_datasets``). Prints the prepared folder; exits with status 2
and one line on stderr if the files are missing or corrupt.
"""

from __future__ import annotations

import argparse
import sys

from plastix import data
from plastix.data import originals


# The options as this command's flags, for the advice of its error messages.
FLAGS = {"data_dir": "--data_dir", "manual_dir": "--manual_dir", "download": "--download"}


def main(argv: list[str] | None = None) -> int:
  """Parses `argv`, prepares the dataset and returns the exit status."""
  parser = argparse.ArgumentParser(prog="python -m plastix.data",
                                   description=__doc__.split("\n", maxsplit=1)[0])
  parser.add_argument("name", choices=tuple(originals.ORIGINAL_FILES))
  parser.add_argument("--data_dir", default=None, help="tfds data directory to write into")
  parser.add_argument("--manual_dir", default=None,
                      help="folder of the original files (default <data_dir>/downloads/manual)")
  parser.add_argument("--download", action="store_true",
                      help="fetch the files manual_dir lacks from their published URLs")
  args = parser.parse_args(argv)
  try:
    path = data.prepare(args.name, args.data_dir, args.manual_dir, args.download)
  except data.DataError as e:
    print(f"error: {e.naming(FLAGS)}", file=sys.stderr)
    return 2
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
