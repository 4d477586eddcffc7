"""The original distribution files of the four image datasets, read with numpy.

Each dataset is published as a few files; this module lists them (URL, size in
bytes, sha256) and parses them with the standard library and numpy only:

* MNIST and Fashion-MNIST: four IDX files, gzipped,
  ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` (see ``idx.py``).
* CIFAR-10: ``cifar-10-python.tar.gz``, holding the pickled batches
  ``cifar-10-batches-py/data_batch_1`` ... ``data_batch_5``, ``test_batch`` and
  ``batches.meta``.
* CIFAR-100: ``cifar-100-python.tar.gz``, holding ``cifar-100-python/train``,
  ``test`` and ``meta``.

A CIFAR batch is a pickled dict with bytes keys (the files were written by
Python 2): ``b"data"`` is uint8 ``[N, 3072]``, each row the 1024 red, then
1024 green, then 1024 blue pixels of a 32x32 image in row-major order;
``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` and ``b"coarse_labels"``
(CIFAR-100) are lists of N ints. The meta file names the classes.

Checksums: the MNIST and Fashion-MNIST values are those tensorflow-datasets
ships for its own ``mnist`` and ``fashion_mnist`` builders
(``tensorflow_datasets/url_checksums/{mnist,fashion_mnist}.txt``). Its CIFAR
builders read the *binary* tarballs instead, so the values of the Python
tarballs are the sha256 that ``keras.datasets.cifar10`` / ``cifar100`` pin for
the same URLs, with the published sizes. ``ORIGINAL_FILES`` is read at call
time: tests replace its entries (``monkeypatch.setitem``) to verify fabricated
files.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from typing import NamedTuple

import numpy as np

from plastix.data.dataset import DataError
from plastix.data.idx import IdxFormatError, read_idx


class OriginalFile(NamedTuple):
  """One published file: where it is, its size in bytes and its sha256."""
  filename: str
  url: str
  size: int
  sha256: str


_MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"

ORIGINAL_FILES: dict[str, tuple[OriginalFile, ...]] = {
    "mnist": (
        OriginalFile("train-images-idx3-ubyte.gz", _MNIST_URL + "train-images-idx3-ubyte.gz",
                     9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        OriginalFile("train-labels-idx1-ubyte.gz", _MNIST_URL + "train-labels-idx1-ubyte.gz",
                     28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        OriginalFile("t10k-images-idx3-ubyte.gz", _MNIST_URL + "t10k-images-idx3-ubyte.gz",
                     1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        OriginalFile("t10k-labels-idx1-ubyte.gz", _MNIST_URL + "t10k-labels-idx1-ubyte.gz",
                     4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    ),
    "fashion_mnist": (
        OriginalFile("train-images-idx3-ubyte.gz", _FASHION_URL + "train-images-idx3-ubyte.gz",
                     26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        OriginalFile("train-labels-idx1-ubyte.gz", _FASHION_URL + "train-labels-idx1-ubyte.gz",
                     29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
        OriginalFile("t10k-images-idx3-ubyte.gz", _FASHION_URL + "t10k-images-idx3-ubyte.gz",
                     4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
        OriginalFile("t10k-labels-idx1-ubyte.gz", _FASHION_URL + "t10k-labels-idx1-ubyte.gz",
                     5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    ),
    "cifar10": (
        OriginalFile("cifar-10-python.tar.gz", _CIFAR_URL + "cifar-10-python.tar.gz",
                     170498071, "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),
    ),
    "cifar100": (
        OriginalFile("cifar-100-python.tar.gz", _CIFAR_URL + "cifar-100-python.tar.gz",
                     169001437, "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"),
    ),
}

# ---------------------------------------------------------------------------
# MNIST and Fashion-MNIST: IDX files.

IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def idx_paths(folder: str, split: str) -> tuple[str, str]:
  """The images and labels IDX paths of `split` in `folder`."""
  images, labels = IDX_FILES[split]
  return os.path.join(folder, images), os.path.join(folder, labels)


def read_idx_split(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads one split from its two IDX files.

  Args:
    images_path: IDX file of uint8 ``[N, H, W]``.
    labels_path: IDX file of N labels.

  Returns:
    uint8 images ``[N, H, W, 1]`` and int32 labels ``[N]``.

  Raises:
    DataError: a file is not valid IDX, or the shapes do not match.
  """
  arrays = []
  for path in (images_path, labels_path):
    try:
      arrays.append(read_idx(path))
    except IdxFormatError as e:
      raise DataError(f"corrupt dataset file: {e}; replace it with the original file") from e
  images, labels = arrays
  if images.ndim != 3 or labels.shape != images.shape[:1]:
    raise DataError(f"corrupt dataset file: images {images_path} {images.shape} and labels "
                    f"{labels_path} {labels.shape} do not match")
  return images[..., None].astype(np.uint8), labels.astype(np.int32)


# ---------------------------------------------------------------------------
# CIFAR-10 and CIFAR-100: a tarball of pickled batches.


class CifarLayout(NamedTuple):
  """Where a CIFAR tarball keeps its batches and which keys they use."""
  folder: str
  members: dict[str, tuple[str, ...]]  # split -> batch members, in order.
  meta: str
  label_key: bytes
  names_key: bytes
  coarse_key: bytes | None
  coarse_names_key: bytes | None


CIFAR_LAYOUTS = {
    "cifar10": CifarLayout(
        folder="cifar-10-batches-py",
        members={"train": tuple(f"data_batch_{i}" for i in range(1, 6)),
                 "test": ("test_batch",)},
        meta="batches.meta", label_key=b"labels", names_key=b"label_names",
        coarse_key=None, coarse_names_key=None),
    "cifar100": CifarLayout(
        folder="cifar-100-python", members={"train": ("train",), "test": ("test",)},
        meta="meta", label_key=b"fine_labels", names_key=b"fine_label_names",
        coarse_key=b"coarse_labels", coarse_names_key=b"coarse_label_names"),
}

CIFAR_SIDE = 32


class CifarSplit(NamedTuple):
  """One CIFAR split: uint8 images [N, 32, 32, 3], int32 labels [N]."""
  images: np.ndarray
  labels: np.ndarray
  coarse_labels: np.ndarray | None


class CifarArchive(NamedTuple):
  """A whole CIFAR tarball: its splits and its class names."""
  splits: dict[str, CifarSplit]
  label_names: list[str]
  coarse_label_names: list[str] | None


def cifar_rows_to_images(rows: np.ndarray) -> np.ndarray:
  """CIFAR rows ``[N, 3072]`` (channel-major) to images ``[N, 32, 32, 3]``."""
  planes = rows.reshape(len(rows), 3, CIFAR_SIDE, CIFAR_SIDE)
  return np.ascontiguousarray(planes.transpose(0, 2, 3, 1))


def _read_members(tar_path: str, wanted: set[str]) -> dict[str, bytes]:
  """The bytes of the `wanted` members of a .tar.gz, in one pass."""
  found = {}
  try:
    with tarfile.open(tar_path, "r:gz") as tar:
      for member in tar:
        if member.name in wanted and member.isfile():
          found[member.name] = tar.extractfile(member).read()
  except (OSError, EOFError, tarfile.TarError) as e:
    raise DataError(f"corrupt dataset file: {tar_path}: not a readable .tar.gz ({e}); "
                    "replace it with the original file") from e
  missing = sorted(wanted - set(found))
  if missing:
    raise DataError(f"corrupt dataset file: {tar_path} lacks {', '.join(missing)}; "
                    "replace it with the original file")
  return found


def _unpickle(raw: bytes, where: str) -> dict:
  """A pickled CIFAR dict with bytes keys."""
  try:
    obj = pickle.load(io.BytesIO(raw), encoding="bytes")
  except Exception as e:  # Unpickling can raise almost anything on bad bytes.
    raise DataError(f"corrupt dataset file: {where} is not a readable pickle ({e})") from e
  if not isinstance(obj, dict):
    raise DataError(f"corrupt dataset file: {where} holds a {type(obj).__name__}, not a dict")
  return obj


def _int_labels(batch: dict, key: bytes, n: int, where: str) -> np.ndarray:
  """Labels `key` of a batch as int32 [n]."""
  if key not in batch:
    raise DataError(f"corrupt dataset file: {where} has no {key!r}")
  labels = np.asarray(batch[key])
  if labels.shape != (n,) or labels.dtype.kind not in "iu":
    raise DataError(f"corrupt dataset file: {where}: {key!r} has shape {labels.shape}, "
                    f"expected {n} integers")
  return labels.astype(np.int32)


def _parse_batch(batch: dict, layout: CifarLayout, where: str) -> CifarSplit:
  """One unpickled batch as images and labels."""
  rows = np.asarray(batch.get(b"data"))
  if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 3 * CIFAR_SIDE**2:
    raise DataError(f"corrupt dataset file: {where}: b'data' has {rows.dtype} {rows.shape}, "
                    f"expected uint8 [N, {3 * CIFAR_SIDE**2}]")
  n = len(rows)
  labels = _int_labels(batch, layout.label_key, n, where)
  coarse = (_int_labels(batch, layout.coarse_key, n, where)
            if layout.coarse_key is not None else None)
  return CifarSplit(cifar_rows_to_images(rows), labels, coarse)


def _concat(parts: list[CifarSplit]) -> CifarSplit:
  """Batches of one split, concatenated in order."""
  coarse = None
  if parts[0].coarse_labels is not None:
    coarse = np.concatenate([p.coarse_labels for p in parts])
  return CifarSplit(np.concatenate([p.images for p in parts]),
                    np.concatenate([p.labels for p in parts]), coarse)


def _names(meta: dict, key: bytes, where: str) -> list[str]:
  """Class names stored under `key` of a meta dict."""
  if key not in meta:
    raise DataError(f"corrupt dataset file: {where} has no {key!r}")
  return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta[key]]


def read_cifar(tar_path: str, name: str) -> CifarArchive:
  """Reads every split and the class names of a CIFAR Python tarball.

  Unpickling runs code named by the file, so only call this on a file whose
  checksum was verified (the builders in ``builders.py`` do).

  Args:
    tar_path: ``cifar-10-python.tar.gz`` or ``cifar-100-python.tar.gz``.
    name: ``"cifar10"`` or ``"cifar100"``: which layout to expect.

  Returns:
    The train and test splits (batches concatenated in file order) and the
    class names (fine and coarse for CIFAR-100).

  Raises:
    DataError: the archive is unreadable, lacks a member, or a batch is
      malformed.
  """
  layout = CIFAR_LAYOUTS[name]
  batches = [f"{layout.folder}/{m}" for ms in layout.members.values() for m in ms]
  meta_path = f"{layout.folder}/{layout.meta}"
  raw = _read_members(tar_path, set(batches) | {meta_path})
  splits = {}
  for split, members in layout.members.items():
    parts = []
    for member in members:
      where = f"{tar_path}:{layout.folder}/{member}"
      parts.append(_parse_batch(_unpickle(raw[f"{layout.folder}/{member}"], where), layout,
                                where))
    splits[split] = _concat(parts)
  where = f"{tar_path}:{meta_path}"
  meta = _unpickle(raw[meta_path], where)
  coarse_names = (_names(meta, layout.coarse_names_key, where)
                  if layout.coarse_names_key is not None else None)
  return CifarArchive(splits, _names(meta, layout.names_key, where), coarse_names)
