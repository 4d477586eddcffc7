"""Reader and writer for the IDX format of MNIST and Fashion-MNIST.

An IDX file is a big-endian header followed by a dense array:

    bytes 0-1  zero
    byte  2    dtype code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
               0x0D float32, 0x0E float64)
    byte  3    number of dimensions d
    then d big-endian uint32 sizes, then the row-major data.

Files ending in ``.gz`` are read and written through gzip.
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder(">") if dt.itemsize > 1 else dt: code for code, dt in _DTYPES.items()}


class IdxFormatError(ValueError):
  """Raised when a file is not a valid IDX file."""


def _open(path: str | os.PathLike, mode: str):
  return gzip.open(path, mode) if str(path).endswith(".gz") else open(path, mode)


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file (optionally gzipped) into a native-endian numpy array."""
  try:
    with _open(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise IdxFormatError(f"{path}: cannot read ({e})") from e
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
    raise IdxFormatError(f"{path}: not an IDX file (bad magic number)")
  dtype, ndim = _DTYPES[raw[2]], raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise IdxFormatError(f"{path}: truncated header")
  shape = struct.unpack(f">{ndim}I", raw[4:header])
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(raw) - header != expected:
    raise IdxFormatError(
        f"{path}: expected {expected} data bytes for shape {shape}, "
        f"found {len(raw) - header}")
  data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
  return data.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
  """Writes ``array`` as an IDX file (gzipped when ``path`` ends in .gz)."""
  array = np.asarray(array)
  big = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
  if big not in _CODES:
    raise ValueError(f"dtype {array.dtype} has no IDX code")
  header = bytes([0, 0, _CODES[big], array.ndim]) + struct.pack(
      f">{array.ndim}I", *array.shape)
  with _open(path, "wb") as f:
    f.write(header + array.astype(big).tobytes())
