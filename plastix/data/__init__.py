"""Datasets as numpy arrays: ``load(name, split, data_dir=None) -> Dataset``.

Every loader returns uint8 images ``[N, H, W, C]``, int32 labels ``[N]`` and the
number of classes. Sources:

* ``fashion_mnist_small``: a class-balanced Fashion-MNIST subset shipped inside
  the package (10,000 train / 2,000 test images; MIT licence, see
  ``plastix/data/embedded/FASHION_MNIST_LICENSE``). Needs no download.
* ``fashion_mnist`` and ``mnist``: the full datasets read from their original
  IDX ``.gz`` files in ``data_dir`` (for Fashion-MNIST it defaults to where
  Debian's ``dataset-fashion-mnist`` package installs them).
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple

import numpy as np

from plastix.data import embedded
from plastix.data.idx import IdxFormatError, read_idx

SPLITS = ("train", "test")


class Dataset(NamedTuple):
  images: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray  # int32 [N]
  num_classes: int


class DataError(ValueError):
  """A dataset is unknown, missing or corrupt; the message says how to fix it."""


def _load_embedded(split: str, data_dir: str | None) -> Dataset:
  del data_dir
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


def _idx_loader(default_dir: str | None, how_to_get: str):
  """A loader for the four-file IDX layout of MNIST and Fashion-MNIST."""

  def load_idx(split: str, data_dir: str | None) -> Dataset:
    folder = data_dir or default_dir
    if folder is None:
      raise DataError(f"no data_dir given; {how_to_get}")
    prefix = "train" if split == "train" else "t10k"
    arrays = []
    for kind in ("images-idx3", "labels-idx1"):
      path = os.path.join(folder, f"{prefix}-{kind}-ubyte.gz")
      if not os.path.exists(path):
        raise DataError(f"missing dataset file {path}; {how_to_get}")
      try:
        arrays.append(read_idx(path))
      except IdxFormatError as e:
        raise DataError(f"corrupt dataset file: {e}; {how_to_get}") from e
    images, labels = arrays
    if images.ndim != 3 or labels.shape != images.shape[:1]:
      raise DataError(f"{folder}: images {images.shape} and labels "
                      f"{labels.shape} do not match; {how_to_get}")
    return Dataset(images[..., None].astype(np.uint8), labels.astype(np.int32), 10)

  return load_idx


_LOADERS: dict[str, Callable[[str, str | None], Dataset]] = {
    "fashion_mnist_small": _load_embedded,
    "fashion_mnist": _idx_loader(
        "/usr/share/datasets/fashion-mnist",
        "install Debian's `dataset-fashion-mnist` package or pass data_dir= "
        "a folder holding the original Fashion-MNIST IDX .gz files"),
    "mnist": _idx_loader(
        None, "pass data_dir= a folder holding the original MNIST IDX .gz files "
        "(train-images-idx3-ubyte.gz, ...)"),
}
DATASETS = tuple(_LOADERS)


def load(name: str, split: str = "train", data_dir: str | None = None) -> Dataset:
  """Loads dataset `name` split `split` as uint8 images, int32 labels, classes."""
  if name not in _LOADERS:
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
  if split not in SPLITS:
    raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
  return _LOADERS[name](split, data_dir)
