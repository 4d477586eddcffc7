"""The record every loader returns, the split names, and the one error type."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

SPLITS = ("train", "test")


class Dataset(NamedTuple):
  """One split of a labelled image dataset, as numpy arrays.

  Attributes:
    images: uint8 ``[N, H, W, C]``.
    labels: int32 ``[N]``, in ``[0, num_classes)``.
    num_classes: the number of classes of ``labels``.
    coarse_labels: int32 ``[N]`` superclass labels where the dataset has them
      (CIFAR-100's 20 superclasses), else None.
  """
  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  coarse_labels: np.ndarray | None = None


class DataError(ValueError):
  """A dataset is unknown, missing or corrupt; the message says how to fix it."""


def first_line(error: BaseException) -> str:
  """The first line of an exception's message, for one-line wrapping errors."""
  lines = str(error).strip().splitlines()
  return lines[0] if lines else type(error).__name__
