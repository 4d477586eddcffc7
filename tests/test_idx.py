import numpy as np
import pytest

from plastix.data.idx import IdxFormatError, read_idx, write_idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_round_trip(tmp_path, suffix, dtype):
  a = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype)
  if dtype == np.uint8:
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
  path = tmp_path / f"a.idx{suffix}"
  write_idx(path, a)
  b = read_idx(path)
  assert b.dtype == a.dtype and b.shape == a.shape
  np.testing.assert_array_equal(a, b)


def test_header_bytes_are_the_published_format(tmp_path):
  path = tmp_path / "labels.idx"
  write_idx(path, np.array([7, 2, 1], np.uint8))
  raw = path.read_bytes()
  # magic 0x00000801 (uint8, 1 dim), size 3 big-endian, then the data.
  assert raw == bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1])


def test_bad_magic_and_truncation_are_reported(tmp_path):
  bad = tmp_path / "bad.idx"
  bad.write_bytes(b"\x01\x02\x03\x04")
  with pytest.raises(IdxFormatError, match="magic"):
    read_idx(bad)
  short = tmp_path / "short.idx"
  short.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
  with pytest.raises(IdxFormatError, match="expected 5 data bytes"):
    read_idx(short)
