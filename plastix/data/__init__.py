"""Datasets as numpy arrays: ``load(name, split, data_dir=None) -> Dataset``.

Every loader returns uint8 images ``[N, H, W, C]``, int32 labels ``[N]`` and the
number of classes (CIFAR-100 also its 20 coarse labels). Sources:

* ``fashion_mnist_small``: a class-balanced Fashion-MNIST subset shipped inside
  the package (10,000 train / 2,000 test images; MIT licence, see
  ``plastix/data/embedded/FASHION_MNIST_LICENSE``). Needs no download.
* ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``: the full datasets,
  read through tensorflow-datasets (no TensorFlow needed). ``load`` looks, in
  this order:

  1. in the tfds data directory ``data_dir`` (default: $TFDS_DATA_DIR, else
     ``~/tensorflow_datasets``) for ``plastix_<name>`` prepared by
     ``builders.py``, then for the stock tfds ``<name>`` prepared as
     array_record (e.g. with TensorFlow, elsewhere);
  2. for the original files (``originals.ORIGINAL_FILES``) in ``manual_dir``
     (default ``<data_dir>/downloads/manual``), or on the web when
     ``download=True``: they are verified against their sha256 and prepared
     into ``data_dir`` as ``plastix_<name>``, once;
  3. for MNIST and Fashion-MNIST, the four original IDX ``.gz`` files directly
     in ``data_dir``, read as they are; without ``data_dir``, Fashion-MNIST
     comes from where Debian's ``dataset-fashion-mnist`` package installs them
     (``/usr/share/datasets/fashion-mnist``; Debian recompresses the files, so
     their checksums differ from the published ones and are not checked).

  Anything else raises one ``DataError`` line saying where it looked and how
  to get the data. ``prepare`` (or ``python -m plastix.data NAME``) runs step 2
  on its own.
"""

from __future__ import annotations

import os

import numpy as np

from plastix.data import embedded, originals
from plastix.data.dataset import ARGUMENTS, SPLITS, DataError, Dataset

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
_IDX_DEFAULT_DIRS = {"mnist": None, "fashion_mnist": DEBIAN_FASHION_MNIST}

DATASETS = ("fashion_mnist_small", "fashion_mnist", "mnist", "cifar10", "cifar100")

__all__ = ["ARGUMENTS", "DATASETS", "SPLITS", "DataError", "Dataset", "load", "prepare"]


def _load_embedded(split: str) -> Dataset:
  path = embedded.EMBEDDED_PATH
  try:
    with np.load(path) as arrays:
      images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
  except (OSError, KeyError, ValueError) as e:
    raise DataError(
        f"embedded dataset file {path} is missing or corrupt ({e}); rebuild it "
        "with `python -m scripts.build_embedded_data` after "
        "`apt-get install dataset-fashion-mnist`") from e
  return Dataset(images, labels.astype(np.int32), 10)


def _expand(path: str | os.PathLike | None) -> str | None:
  """`path` as a string with ``~`` expanded; None stays None."""
  return os.path.expanduser(path) if path else None


def _check_name(name: str) -> None:
  if name not in DATASETS:
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def _idx_folder(name: str, data_dir: str | None) -> str | None:
  """Where step 3 looks for the raw IDX files of `name`, if anywhere."""
  if name not in _IDX_DEFAULT_DIRS:
    return None
  return data_dir or _IDX_DEFAULT_DIRS[name]


def _wants_preparing(name: str, root: str, manual_dir: str | None, download: bool) -> bool:
  """Step 2 runs if asked for, or if tfds' default manual_dir holds every file."""
  from plastix.data import builders  # pylint: disable=g-import-not-at-top
  return bool(manual_dir or download
              or not builders.missing_files(name, builders.default_manual_dir(root)))


def _not_found(name: str, root: str, missing: str | None, notes: list[str]) -> DataError:
  """The one-line error of a dataset found nowhere."""
  from plastix.data import builders  # pylint: disable=g-import-not-at-top
  looked = f"no prepared {builders.BUILDERS[name].name} or {name} (array_record) in {root}"
  if missing:
    looked += f", and missing dataset file {missing}"
    if missing.startswith(DEBIAN_FASHION_MNIST):
      looked += " (apt-get install dataset-fashion-mnist)"
  for note in notes:
    looked += f"; {note}"
  idx = " or holding its IDX files" if name in _IDX_DEFAULT_DIRS else ""
  return DataError(lambda option: (
      f"{name} not found: {looked}. To get it, put the original {builders.where_to_get(name)} "
      f"in a folder passed as {option['manual_dir']} (default "
      f"{builders.default_manual_dir(root)}), or pass {option['download']}, or pass "
      f"{option['data_dir']} a folder where it is prepared{idx}"))


def _load_original(name: str, split: str, data_dir: str | None, manual_dir: str | None,
                   download: bool) -> Dataset:
  """Steps 1-3 of the module docstring for one of the four full datasets."""
  # tensorflow_datasets is imported only when one of these datasets is asked for.
  from plastix.data import builders, prepared  # pylint: disable=g-import-not-at-top
  root = data_dir or prepared.default_data_dir()
  found, notes = prepared.find_prepared(name, root)
  if found is None and _wants_preparing(name, root, manual_dir, download):
    builders.prepare(name, root, manual_dir, download)
    found, notes = prepared.find_prepared(name, root)
  if found is not None:
    return prepared.read_prepared(found, split, root)
  folder = _idx_folder(name, data_dir)
  paths = originals.idx_paths(folder, split) if folder else ()
  missing = next((p for p in paths if not os.path.exists(p)), None)
  if not paths or missing:
    raise _not_found(name, root, missing, notes)
  images, labels = originals.read_idx_split(*paths)
  return Dataset(images, labels, 10)


def load(name: str, split: str = "train", data_dir: str | None = None,
         manual_dir: str | None = None, download: bool = False) -> Dataset:
  """Loads split `split` of dataset `name` as numpy arrays.

  Args:
    name: one of ``DATASETS``.
    split: one of ``SPLITS``.
    data_dir: tfds data directory to read (and prepare into); for MNIST and
      Fashion-MNIST it may instead hold the original IDX files. Default:
      tfds' default data directory (and Debian's Fashion-MNIST files).
    manual_dir: folder of the original files to prepare from, when `data_dir`
      has no prepared copy. Default: ``<data_dir>/downloads/manual``.
    download: fetch the original files from their URLs when needed.

  Returns:
    ``Dataset(images uint8 [N, H, W, C], labels int32 [N], num_classes,
    coarse_labels)``; ``coarse_labels`` is int32 [N] for CIFAR-100, else None.

  Raises:
    DataError: unknown name or split, data not found (the message says how to
      get it), a checksum mismatch, or a corrupt file.
  """
  _check_name(name)
  if split not in SPLITS:
    raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
  if name == "fashion_mnist_small":
    return _load_embedded(split)
  return _load_original(name, split, _expand(data_dir), _expand(manual_dir), download)


def prepare(name: str, data_dir: str | None = None, manual_dir: str | None = None,
            download: bool = False) -> str:
  """Prepares ``plastix_<name>`` in `data_dir` from the original files (step 2).

  Args:
    name: ``mnist``, ``fashion_mnist``, ``cifar10`` or ``cifar100``.
    data_dir: tfds data directory to write into (default: tfds' default).
    manual_dir: folder of the original files (default
      ``<data_dir>/downloads/manual``).
    download: fetch the files `manual_dir` lacks from their URLs.

  Returns:
    The folder of the prepared dataset; a no-op if it already exists.

  Raises:
    DataError: an unknown or embedded dataset, or the files are missing,
      corrupt or fail their checksum.
  """
  _check_name(name)
  if name not in originals.ORIGINAL_FILES:
    raise DataError(f"{name} is embedded in the package and needs no preparation")
  from plastix.data import builders, prepared  # pylint: disable=g-import-not-at-top
  return builders.prepare(name, _expand(data_dir) or prepared.default_data_dir(),
                          _expand(manual_dir), download)
