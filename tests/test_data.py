import os

import numpy as np
import pytest

from plastix import data
from plastix.data.idx import write_idx


def test_embedded_dataset_shapes_and_balance():
  for split, n in (("train", 10000), ("test", 2000)):
    ds = data.load("fashion_mnist_small", split)
    assert ds.images.shape == (n, 28, 28, 1) and ds.images.dtype == np.uint8
    assert ds.labels.shape == (n,) and ds.labels.dtype == np.int32
    assert ds.num_classes == 10
    # Interleaved classes: every prefix of 10 is one example per class.
    np.testing.assert_array_equal(ds.labels[:20], np.tile(np.arange(10), 2))
    np.testing.assert_array_equal(np.bincount(ds.labels), np.full(10, n // 10))
    assert 0 < ds.images.mean() < 255  # real pixels, not a blank array


def test_embedded_licence_is_shipped_beside_the_data():
  folder = os.path.dirname(data.embedded.EMBEDDED_PATH)
  with open(os.path.join(folder, "FASHION_MNIST_LICENSE")) as f:
    text = f.read()
  assert "Zalando SE" in text and "MIT License" in text


def _write_fake_idx(folder, n=6, rows=4):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(n, rows, rows), dtype=np.uint8)
  labels = (np.arange(n) % 10).astype(np.uint8)
  for prefix in ("train", "t10k"):
    write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), images)
    write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), labels)
  return images, labels


def test_idx_loader_reads_original_format(tmp_path):
  images, labels = _write_fake_idx(str(tmp_path))
  ds = data.load("mnist", "test", data_dir=str(tmp_path))
  np.testing.assert_array_equal(ds.images[..., 0], images)
  np.testing.assert_array_equal(ds.labels, labels.astype(np.int32))
  assert ds.images.shape == (6, 4, 4, 1)


def test_errors_say_what_is_wrong(tmp_path):
  with pytest.raises(data.DataError, match="unknown dataset 'cifar7'.*fashion_mnist_small"):
    data.load("cifar7", "train")
  with pytest.raises(data.DataError, match="unknown split"):
    data.load("fashion_mnist_small", "validation")
  with pytest.raises(data.DataError, match="missing dataset file .*train-images"):
    data.load("mnist", "train", data_dir=str(tmp_path))
  _write_fake_idx(str(tmp_path))
  with open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
    f.write(b"not gzip")
  with pytest.raises(data.DataError, match="corrupt dataset file"):
    data.load("mnist", "train", data_dir=str(tmp_path))
