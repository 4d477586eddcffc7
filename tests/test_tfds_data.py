"""The four full datasets through tensorflow-datasets, on fabricated original files.

Every test writes a few dozen images in the exact published formats (IDX .gz;
CIFAR pickles in a .tar.gz), registers their checksums in place of the real
ones, prepares them through the real builders and reads them back through
``plastix.data.load``, comparing pixels and labels exactly.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import pickle
import sys
import tarfile
import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.testing import mocking as tfds_mocking

from plastix import data
from plastix.data import builders, originals, prepared
from plastix.data import __main__ as data_main
from plastix.data.idx import read_idx, write_idx

SIZES = {"train": 30, "test": 12}


# ---------------------------------------------------------------------------
# Fabricated original files.


def _write_idx_files(folder, seed=0):
  """The four MNIST-format files; returns {split: (images [N,28,28], labels [N])}."""
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, n in SIZES.items():
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images_path, labels_path = originals.idx_paths(str(folder), split)
    write_idx(images_path, images)
    write_idx(labels_path, labels)
    arrays[split] = images, labels
  return arrays


def _add_pickle(tar, name, obj):
  raw = pickle.dumps(obj, protocol=2)
  info = tarfile.TarInfo(name)
  info.size = len(raw)
  tar.addfile(info, io.BytesIO(raw))


def _cifar_batch(images, labels_by_key):
  """A batch dict as the originals hold it: bytes keys, channel-major rows."""
  rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3 * 32 * 32)
  batch = {b"batch_label": b"fabricated", b"data": rows,
           b"filenames": [f"img_{i}.png".encode() for i in range(len(images))]}
  batch.update({key: [int(v) for v in values] for key, values in labels_by_key.items()})
  return batch


def _write_cifar10(folder, seed=1):
  """cifar-10-python.tar.gz with 5 train batches; returns the arrays and names."""
  rng = np.random.default_rng(seed)
  names = [f"class{c}" for c in range(10)]
  sizes = {"data_batch_1": 4, "data_batch_2": 3, "data_batch_3": 4, "data_batch_4": 2,
           "data_batch_5": 3, "test_batch": 5}
  parts = {}
  with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tar:
    _add_pickle(tar, "cifar-10-batches-py/batches.meta",
                {b"label_names": [n.encode() for n in names], b"num_vis": 3072})
    for member, n in sizes.items():
      images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
      labels = rng.integers(0, 10, size=n)
      _add_pickle(tar, f"cifar-10-batches-py/{member}", _cifar_batch(images, {b"labels": labels}))
      parts[member] = images, labels
  train = [parts[f"data_batch_{i}"] for i in range(1, 6)]
  return {"train": (np.concatenate([p[0] for p in train]), np.concatenate([p[1] for p in train])),
          "test": parts["test_batch"]}, names


def _write_cifar100(folder, seed=2):
  """cifar-100-python.tar.gz; returns {split: (images, fine, coarse)} and the names."""
  rng = np.random.default_rng(seed)
  fine_names = [f"fine{c}" for c in range(100)]
  coarse_names = [f"coarse{c}" for c in range(20)]
  arrays = {}
  with tarfile.open(folder / "cifar-100-python.tar.gz", "w:gz") as tar:
    _add_pickle(tar, "cifar-100-python/meta",
                {b"fine_label_names": [n.encode() for n in fine_names],
                 b"coarse_label_names": [n.encode() for n in coarse_names]})
    for split, n in (("train", 9), ("test", 6)):
      images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
      fine, coarse = rng.integers(0, 100, size=n), rng.integers(0, 20, size=n)
      _add_pickle(tar, f"cifar-100-python/{split}",
                  _cifar_batch(images, {b"fine_labels": fine, b"coarse_labels": coarse}))
      arrays[split] = images, fine, coarse
  return arrays, (fine_names, coarse_names)


def _register_checksums(monkeypatch, name, folder, url_base=None):
  """Makes the builders expect the fabricated files (and, optionally, other URLs)."""
  specs = []
  for f in originals.ORIGINAL_FILES[name]:
    raw = (folder / f.filename).read_bytes()
    url = f.url if url_base is None else url_base + f.filename
    specs.append(f._replace(url=url, size=len(raw), sha256=hashlib.sha256(raw).hexdigest()))
  monkeypatch.setitem(originals.ORIGINAL_FILES, name, tuple(specs))


@pytest.fixture
def dirs(tmp_path, monkeypatch):
  """A manual_dir and a tfds data_dir in tmp; tfds' default data dir too."""
  manual, root = tmp_path / "manual", tmp_path / "tfds"
  manual.mkdir()
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "default_tfds"))
  return manual, root


# ---------------------------------------------------------------------------
# Preparing from manual_dir, then reading back.


def test_builders_are_registered_under_their_names():
  for name, cls in builders.BUILDERS.items():
    assert cls.name == f"plastix_{name}"
    assert tfds.builder_cls(f"plastix_{name}") is cls


def test_mnist_checksums_are_the_ones_tfds_ships():
  for name in ("mnist", "fashion_mnist"):
    shipped = tfds.download.checksums.load_url_infos(
        os.path.join(os.path.dirname(tfds.__file__), "url_checksums", f"{name}.txt"))
    ours = {f.url: (f.size, f.sha256, f.filename) for f in originals.ORIGINAL_FILES[name]}
    assert ours == {url: (int(i.size), i.checksum, i.filename) for url, i in shipped.items()}


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_datasets_prepare_from_manual_dir_and_read_back(dirs, monkeypatch, name):
  manual, root = dirs
  arrays = _write_idx_files(manual)
  _register_checksums(monkeypatch, name, manual)
  for split, (images, labels) in arrays.items():
    ds = data.load(name, split, data_dir=str(root), manual_dir=str(manual))
    assert ds.images.dtype == np.uint8 and ds.images.shape == (len(images), 28, 28, 1)
    assert ds.labels.dtype == np.int32 and ds.num_classes == 10 and ds.coarse_labels is None
    np.testing.assert_array_equal(ds.images[..., 0], images)
    np.testing.assert_array_equal(ds.labels, labels)
  info = root / f"plastix_{name}" / "1.0.0" / "dataset_info.json"
  assert '"fileFormat": "array_record"' in info.read_text()
  # Prepared once: the originals are no longer needed.
  for f in manual.iterdir():
    f.unlink()
  np.testing.assert_array_equal(data.load(name, "test", data_dir=str(root)).labels,
                                arrays["test"][1])
  assert "tensorflow" not in sys.modules


def test_cifar10_prepares_from_its_python_tarball(dirs, monkeypatch):
  manual, root = dirs
  arrays, names = _write_cifar10(manual)
  _register_checksums(monkeypatch, "cifar10", manual)
  for split, (images, labels) in arrays.items():
    ds = data.load("cifar10", split, data_dir=str(root), manual_dir=str(manual))
    assert ds.images.dtype == np.uint8 and ds.images.shape == (len(images), 32, 32, 3)
    assert ds.num_classes == 10 and ds.coarse_labels is None
    np.testing.assert_array_equal(ds.images, images)  # batches concatenated in order
    np.testing.assert_array_equal(ds.labels, labels)
  info = tfds.builder("plastix_cifar10", data_dir=str(root)).info
  assert info.features["label"].names == names


def test_cifar100_has_fine_and_coarse_labels(dirs, monkeypatch):
  manual, root = dirs
  arrays, (fine_names, coarse_names) = _write_cifar100(manual)
  _register_checksums(monkeypatch, "cifar100", manual)
  for split, (images, fine, coarse) in arrays.items():
    ds = data.load("cifar100", split, data_dir=str(root), manual_dir=str(manual))
    assert ds.num_classes == 100 and ds.coarse_labels.dtype == np.int32
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, fine)
    np.testing.assert_array_equal(ds.coarse_labels, coarse)
  features = tfds.builder("plastix_cifar100", data_dir=str(root)).info.features
  assert features["label"].names == fine_names
  assert features["coarse_label"].names == coarse_names


def test_tfds_default_manual_dir_is_used_without_asking(dirs, monkeypatch):
  _, root = dirs
  manual = root / "downloads" / "manual"
  manual.mkdir(parents=True)
  arrays = _write_idx_files(manual, seed=3)
  _register_checksums(monkeypatch, "mnist", manual)
  ds = data.load("mnist", "train", data_dir=str(root))
  np.testing.assert_array_equal(ds.images[..., 0], arrays["train"][0])


def test_concurrent_preparations_wait_for_each_other_and_prepare_once(dirs, monkeypatch):
  manual, root = dirs
  arrays = _write_idx_files(manual)
  _register_checksums(monkeypatch, "mnist", manual)
  builder_cls = builders.BUILDERS["mnist"]
  splitting = builder_cls._split_generators
  started = []  # One entry per preparation that got as far as reading the files.
  reached = threading.Event()

  def counted(self, dl_manager):
    started.append(1)
    reached.set()
    return splitting(self, dl_manager)

  monkeypatch.setattr(builder_cls, "_split_generators", counted)
  returned = []

  def prepare():
    returned.append(builders.prepare("mnist", str(root), str(manual)))

  threads = [threading.Thread(target=prepare) for _ in range(2)]
  with builders.preparation_lock("mnist", str(root)) as lock_path:
    for t in threads:
      t.start()
    assert not reached.wait(3.0)  # Both wait for the lock this test holds.
  for t in threads:
    t.join(120)
  folder = str(root / "plastix_mnist" / "1.0.0")
  assert returned == [folder, folder] and len(started) == 1  # prepared once
  assert lock_path == str(root / "plastix_mnist.lock")
  ds = data.load("mnist", "test", data_dir=str(root))
  np.testing.assert_array_equal(ds.images[..., 0], arrays["test"][0])


def test_prepare_command_line(dirs, monkeypatch, capsys):
  manual, root = dirs
  _write_idx_files(manual)
  _register_checksums(monkeypatch, "mnist", manual)
  argv = ["mnist", f"--data_dir={root}", f"--manual_dir={manual}"]
  assert data_main.main(argv) == 0
  assert capsys.readouterr().out.splitlines()[-1] == str(root / "plastix_mnist" / "1.0.0")
  assert data_main.main(["cifar10", f"--data_dir={root}", f"--manual_dir={manual}"]) == 2
  err = capsys.readouterr().err
  assert "lacks cifar-10-python.tar.gz" in err and err.rstrip().endswith("or pass --download")


# ---------------------------------------------------------------------------
# Checksums, downloads and errors.


def test_corrupted_file_fails_its_checksum(dirs, monkeypatch):
  manual, root = dirs
  _write_idx_files(manual)
  _register_checksums(monkeypatch, "mnist", manual)
  path = manual / "train-labels-idx1-ubyte.gz"
  raw = bytearray(path.read_bytes())
  raw[-3] ^= 0xFF
  path.write_bytes(bytes(raw))
  with pytest.raises(data.DataError, match=r"checksum mismatch for train-labels-idx1-ubyte.gz "
                     r"\(.*manual/train-labels-idx1-ubyte.gz\): expected .* sha256"):
    data.load("mnist", "train", data_dir=str(root), manual_dir=str(manual))
  assert not (root / "plastix_mnist" / "1.0.0").exists()


def test_corrupt_prepared_records_are_one_line(dirs, monkeypatch):
  manual, root = dirs
  _write_idx_files(manual)
  _register_checksums(monkeypatch, "mnist", manual)
  folder = data.prepare("mnist", str(root), str(manual))
  records = os.path.join(folder, "plastix_mnist-train.array_record-00000-of-00001")
  with open(records, "r+b") as f:
    f.seek(100)
    f.write(b"\x00" * 200)
  with pytest.raises(data.DataError, match="cannot read plastix_mnist split 'train' .*delete"):
    data.load("mnist", "train", data_dir=str(root))


def test_real_checksums_reject_fabricated_files(dirs):
  manual, root = dirs
  _write_cifar10(manual)
  with pytest.raises(data.DataError, match="checksum mismatch for cifar-10-python.tar.gz"):
    data.prepare("cifar10", str(root), str(manual))


def test_corrupt_archive_with_matching_checksum_is_named(dirs, monkeypatch):
  manual, root = dirs
  with tarfile.open(manual / "cifar-10-python.tar.gz", "w:gz") as tar:
    _add_pickle(tar, "cifar-10-batches-py/batches.meta", {b"label_names": []})
  _register_checksums(monkeypatch, "cifar10", manual)
  with pytest.raises(data.DataError, match="lacks cifar-10-batches-py/data_batch_1"):
    data.load("cifar10", "train", data_dir=str(root), manual_dir=str(manual))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):

  def log_message(self, *args):
    del args


@pytest.fixture
def http_server(tmp_path):
  """Serves tmp_path/www on localhost; yields (folder, base URL)."""
  folder = tmp_path / "www"
  folder.mkdir()
  handler = functools.partial(_QuietHandler, directory=str(folder))
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
  server.shutdown()
  server.server_close()


def test_download_fetches_and_verifies(dirs, monkeypatch, http_server):
  _, root = dirs
  www, url = http_server
  arrays = _write_idx_files(www, seed=4)
  _register_checksums(monkeypatch, "mnist", www, url_base=url)
  ds = data.load("mnist", "test", data_dir=str(root), download=True)
  np.testing.assert_array_equal(ds.images[..., 0], arrays["test"][0])
  # A server handing out a different file is caught.
  _write_idx_files(www, seed=5)
  with pytest.raises(data.DataError, match="checksum mismatch for train-images-idx3-ubyte.gz"):
    data.prepare("mnist", str(root / "other"), download=True)
  absent = originals.OriginalFile("cifar-10-python.tar.gz", url + "gone.tar.gz", 1, "0" * 64)
  monkeypatch.setitem(originals.ORIGINAL_FILES, "cifar10", (absent,))
  with pytest.raises(data.DataError, match="could not download .*gone.tar.gz .*404.*manual_dir"):
    data.prepare("cifar10", str(root), download=True)


def test_missing_dataset_is_one_line_saying_how_to_get_it(dirs):
  _, root = dirs
  with pytest.raises(data.DataError) as e:
    data.load("cifar100", "train", data_dir=str(root))
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith("cifar100 not found: no prepared plastix_cifar100 or cifar100")
  for hint in ("cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/", "manual_dir=",
               str(root / "downloads" / "manual"), "download=True", "data_dir="):
    assert hint in message
  with pytest.raises(data.DataError, match="mnist not found: .*default_tfds. .*download=True"):
    data.load("mnist", "train")  # tfds' default data dir (empty here), no IDX folder
  with pytest.raises(data.DataError, match=r"lacks cifar-100-python.tar.gz; put the original"):
    data.load("cifar100", "train", data_dir=str(root), manual_dir=str(root / "nowhere"))
  with pytest.raises(data.DataError, match="embedded"):
    data.prepare("fashion_mnist_small")


def test_data_errors_name_the_options_as_a_front_end_spells_them(dirs):
  _, root = dirs
  with pytest.raises(data.DataError) as e:
    data.load("cifar100", "train", data_dir=str(root))
  flags = e.value.naming({"manual_dir": "--manual_dir", "data_dir": "--data_dir"})
  assert isinstance(flags, data.DataError)
  assert str(flags) == (str(e.value).replace("passed as manual_dir=", "passed as --manual_dir")
                        .replace("pass data_dir=", "pass --data_dir"))
  assert "or pass download=True" in str(flags)  # an option left out keeps its Python name
  # Re-spelling starts from the template, not from an earlier spelling.
  assert str(flags.naming({"download": "--download"})) == str(e.value.naming(
      {"download": "--download"}))
  with pytest.raises(data.DataError) as e:
    data.load("cifar100", "validation")
  assert e.value.naming({"data_dir": "--data_dir"}) is e.value  # nothing to re-spell


# ---------------------------------------------------------------------------
# Stock tfds datasets, prepared elsewhere.


def _write_stock_like_mnist(root, images, labels, file_format="array_record"):
  """What tfds' own mnist builder writes (PNG images), written without TensorFlow."""

  class StockLikeMnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = "mnist"
    VERSION = tfds.core.Version("3.0.1")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, disable_shuffling=True,
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(28, 28, 1)),
              "label": tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(), "test": self._generate_examples()}

    def _generate_examples(self):
      for i, (image, label) in enumerate(zip(images, labels)):
        png = io.BytesIO()
        Image.fromarray(image).save(png, format="PNG")  # tfds would need TF to encode
        yield i, {"image": png.getvalue(), "label": int(label)}

  StockLikeMnist(data_dir=str(root), file_format=file_format).download_and_prepare()


def test_stock_dataset_prepared_as_array_record_is_used_as_is(dirs):
  _, root = dirs
  rng = np.random.default_rng(6)
  images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
  labels = rng.integers(0, 10, size=7)
  _write_stock_like_mnist(root, images, labels)
  found, _ = prepared.find_prepared("mnist", str(root))
  assert found.tfds_name == "mnist:3.0.1"
  ds = data.load("mnist", "train", data_dir=str(root))
  np.testing.assert_array_equal(ds.images[..., 0], images)
  np.testing.assert_array_equal(ds.labels, labels)


def test_stock_dataset_stored_as_tfrecord_is_skipped_with_a_note(dirs):
  _, root = dirs
  version = root / "mnist" / "3.0.1"
  version.mkdir(parents=True)
  (version / "dataset_info.json").write_text('{"name": "mnist", "version": "3.0.1"}')
  with pytest.raises(data.DataError, match="stored as tfrecord, which needs TensorFlow"):
    data.load("mnist", "train", data_dir=str(root))


def _getitems_with_keys_only(record_keys, generator, serialized=False):
  """tfds' mock binds no data source to ``__getitems__``; this takes the keys alone."""
  assert not serialized
  return [generator[k] for k in record_keys]


def test_read_prepared_under_tfds_mock_data(tmp_path, monkeypatch):
  monkeypatch.setattr(tfds_mocking, "_getitems", _getitems_with_keys_only)
  stock = prepared.Prepared("cifar100:3.0.2", "mocked")
  with tfds.testing.mock_data(num_examples=11):
    ds = prepared.read_prepared(stock, "test", str(tmp_path))
    source = tfds.data_source(stock.tfds_name, split="test", data_dir=str(tmp_path))
    expected = [source[i] for i in range(len(source))]
  assert ds.images.shape == (11, 32, 32, 3) and ds.images.dtype == np.uint8
  assert ds.num_classes == 100
  np.testing.assert_array_equal(ds.images, np.stack([ex["image"] for ex in expected]))
  np.testing.assert_array_equal(ds.labels, [ex["label"] for ex in expected])
  np.testing.assert_array_equal(ds.coarse_labels, [ex["coarse_label"] for ex in expected])


# ---------------------------------------------------------------------------
# Fashion-MNIST without data_dir: Debian's files.


@pytest.mark.skipif(not os.path.isdir(data.DEBIAN_FASHION_MNIST),
                    reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_without_data_dir_reads_debians_files(dirs):
  ds = data.load("fashion_mnist", "test")
  images_path, labels_path = originals.idx_paths(data.DEBIAN_FASHION_MNIST, "test")
  np.testing.assert_array_equal(ds.images[..., 0], read_idx(images_path))
  np.testing.assert_array_equal(ds.labels, read_idx(labels_path))
  assert ds.images.shape == (10000, 28, 28, 1) and ds.num_classes == 10
