"""The record every loader returns, the split names, and the one error type."""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

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


# How the messages name the options of `plastix.data.load` and `prepare`: as
# Python arguments. A front end with flags of its own passes its spelling to
# `DataError.naming`.
ARGUMENTS = {"data_dir": "data_dir=", "manual_dir": "manual_dir=", "download": "download=True"}


class DataError(ValueError):
  """A dataset is unknown, missing or corrupt; the message says how to fix it.

  Where the fix is to set an option (``data_dir``, ``manual_dir``, ``download``),
  the message is made by a function of how the options are spelled: ``str(e)``
  names them as `ARGUMENTS` does, and ``e.naming(options)`` is the same error
  naming them as a front end does (a command line's flags, a config's fields).
  """

  def __init__(self, message: str | Callable[[Mapping[str, str]], str],
               options: Mapping[str, str] | None = None):
    """`message`: the message, or a function of the options' spelling that makes
    it; `options`: that spelling where it differs from `ARGUMENTS`."""
    self._advice = message if callable(message) else None
    if callable(message):
      message = message({**ARGUMENTS, **(options or {})})
    super().__init__(message)

  def naming(self, options: Mapping[str, str]) -> "DataError":
    """This error with its advice naming each option as `options` spells it
    (keys of `ARGUMENTS`; an option it leaves out keeps its Python name)."""
    return self if self._advice is None else DataError(self._advice, options)


def first_line(error: BaseException) -> str:
  """The first line of an exception's message, for one-line wrapping errors."""
  lines = str(error).strip().splitlines()
  return lines[0] if lines else type(error).__name__
