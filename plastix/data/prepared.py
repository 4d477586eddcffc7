"""Finding and reading datasets prepared by tfds, without TensorFlow.

A prepared tfds dataset lives in ``<data_dir>/<name>/<version>/``: a
``dataset_info.json``, a ``features.json`` and the record files. Two kinds are
served here, both through ``tfds.data_source`` (random access, numpy out):

* ``plastix_<name>``, written by ``builders.py``;
* the stock tfds ``<name>`` (e.g. ``mnist/3.0.1`` prepared elsewhere with
  TensorFlow), if it was written as array_record. Its images are PNG, which
  tfds decodes with PIL. A stock dataset written as tfrecord (tfds' default)
  needs TensorFlow to read and is skipped with a note.
"""

from __future__ import annotations

import json
import os
import re
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from plastix.data import builders
from plastix.data.dataset import DataError, Dataset, first_line

_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
_READ_CHUNK = 8192  # Records decoded per call: bounds the memory held as dicts.


class Prepared(NamedTuple):
  """A prepared dataset found on disk."""
  tfds_name: str  # What tfds.data_source is given: "plastix_mnist" or "mnist:3.0.1".
  path: str       # Its <data_dir>/<name>/<version> folder.


def default_data_dir() -> str:
  """tfds' default data directory: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return tfds.core.constants.get_default_data_dir()


def _file_formats(version_dir: str) -> tuple[str, ...]:
  """The record formats a prepared version holds, from its dataset_info.json."""
  try:
    with open(os.path.join(version_dir, "dataset_info.json"), encoding="utf-8") as f:
      info = json.load(f)
  except (OSError, ValueError):
    return ()
  main = info.get("fileFormat", "tfrecord")  # tfds omits the field for tfrecord.
  return (main, *info.get("alternativeFileFormats", ()))


def _versions(dataset_dir: str) -> list[str]:
  """Complete prepared versions in `dataset_dir`, newest first."""
  try:
    entries = os.listdir(dataset_dir)
  except OSError:
    return []
  versions = [e for e in entries if _VERSION.match(e)
              and os.path.isfile(os.path.join(dataset_dir, e, "dataset_info.json"))]
  return sorted(versions, key=lambda v: tuple(int(x) for x in v.split(".")), reverse=True)


def find_prepared(name: str, data_dir: str) -> tuple[Prepared | None, list[str]]:
  """Looks for dataset `name` prepared in `data_dir`.

  Order: ``plastix_<name>`` at the builder's version, then the newest stock
  ``<name>`` version stored as array_record.

  Args:
    name: ``mnist``, ``fashion_mnist``, ``cifar10`` or ``cifar100``.
    data_dir: a tfds data directory.

  Returns:
    What was found (or None), and notes on prepared versions that cannot be
    read without TensorFlow.
  """
  builder_cls = builders.BUILDERS[name]
  own = os.path.join(data_dir, builder_cls.name, str(builder_cls.VERSION))
  if os.path.isfile(os.path.join(own, "dataset_info.json")):
    return Prepared(builder_cls.name, own), []
  notes = []
  for version in _versions(os.path.join(data_dir, name)):
    path = os.path.join(data_dir, name, version)
    formats = _file_formats(path)
    if "array_record" in formats:
      return Prepared(f"{name}:{version}", path), notes
    notes.append(f"{path} is stored as {'/'.join(formats) or 'an unknown format'}, which needs "
                 "TensorFlow to read (prepare it with file_format='array_record')")
  return None, notes


def _read_error(prepared: Prepared, split: str, error: Exception) -> DataError:
  """One line naming what could not be read, and tfds' reason."""
  return DataError(f"cannot read {prepared.tfds_name} split {split!r} prepared in "
                   f"{prepared.path}: {type(error).__name__}: {first_line(error)}; delete that "
                   "folder to prepare it again")


def _data_source(prepared: Prepared, split: str, data_dir: str):
  """tfds' random-access source of one split; tfds errors become DataError."""
  try:
    return tfds.data_source(prepared.tfds_name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # tfds raises many types; report them in one line.
    raise _read_error(prepared, split, e) from e


def read_prepared(prepared: Prepared, split: str, data_dir: str) -> Dataset:
  """Reads one split of a prepared dataset into numpy arrays.

  Args:
    prepared: what ``find_prepared`` returned.
    split: ``train`` or ``test``.
    data_dir: the tfds data directory it lives in.

  Returns:
    The split with uint8 images, int32 labels, the number of classes of the
    ``label`` feature and, where the dataset has ``coarse_label``, int32
    coarse labels. Records come in the stored order.

  Raises:
    DataError: tfds cannot open or decode the split.
  """
  source = _data_source(prepared, split, data_dir)
  try:
    return _read_all(source)
  except Exception as e:  # A corrupt record fails deep inside tfds; report it in one line.
    raise _read_error(prepared, split, e) from e


def _read_all(source) -> Dataset:
  """Every record of a tfds data source, decoded into arrays, in stored order."""
  features = source.dataset_info.features
  n = len(source)
  images = np.empty((n, *features["image"].shape), np.uint8)
  labels = np.empty(n, np.int32)
  coarse = np.empty(n, np.int32) if "coarse_label" in features else None
  for start in range(0, n, _READ_CHUNK):
    keys = list(range(start, min(n, start + _READ_CHUNK)))
    for i, example in zip(keys, source.__getitems__(keys)):
      images[i] = example["image"]
      labels[i] = example["label"]
      if coarse is not None:
        coarse[i] = example["coarse_label"]
  return Dataset(images, labels, features["label"].num_classes, coarse)
