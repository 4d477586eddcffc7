"""tfds builders that prepare MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 without TensorFlow.

The stock tfds builders of these datasets need TensorFlow to prepare: they read
their files through ``tf.io.gfile`` and store images as PNG, which tfds encodes
with ``tf.image.encode_png``. The builders here, registered as
``plastix_mnist``, ``plastix_fashion_mnist``, ``plastix_cifar10`` and
``plastix_cifar100``:

* take the original distribution files (``originals.ORIGINAL_FILES``) from
  tfds' download manager, which finds them by file name in ``manual_dir`` or
  downloads them, and verifies the size and sha256 of each;
* parse them with gzip, tarfile, pickle and numpy (``originals.py``);
* store each image as a raw uint8 ``tfds.features.Tensor`` (byte encoding:
  lossless, and neither TensorFlow nor an image codec is needed to write or
  read it), its label as a ``ClassLabel`` (CIFAR-100 also ``coarse_label``);
* keep the examples in file order (no shuffling at preparation), and write
  array_record files, which ``tfds.data_source`` reads.

``prepare`` is the entry point: it checks the files are at hand, runs
``download_and_prepare`` and turns tfds' errors into one-line ``DataError``.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
from typing import Iterator

try:
  import fcntl
except ImportError:  # Not a POSIX system: preparation takes no lock.
  fcntl = None

import numpy as np
import tensorflow_datasets as tfds

from plastix.data import originals
from plastix.data.dataset import SPLITS, DataError, first_line

_NonMatchingChecksumError = tfds.download.download_manager.NonMatchingChecksumError
_CHECKED_PATH = re.compile(r"downloaded to (.+?), has wrong checksum")  # In tfds' message.

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
  """Raises DataError unless every label lies in [0, num_classes)."""
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise DataError(f"corrupt dataset file: {where}: labels span [{labels.min()}, "
                    f"{labels.max()}], expected [0, {num_classes})")


class _OriginalFilesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared part: fetching and verifying the files of ``ORIGINAL_FILES[SOURCE]``."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Prepared from the original files with numpy, without TensorFlow."}
  SOURCE = ""  # The key of originals.ORIGINAL_FILES.

  @tfds.core.utils.classproperty
  @classmethod
  def url_infos(cls) -> dict[str, tfds.download.checksums.UrlInfo]:
    """Expected size and sha256 of each file, read from ``ORIGINAL_FILES`` at call time.

    tfds' default reads a ``checksums.tsv`` beside the builder's code, once;
    this keeps the values in Python, where tests can replace them.
    """
    return {
        f.url: tfds.download.checksums.UrlInfo(
            size=tfds.core.utils.Size(f.size), checksum=f.sha256, filename=f.filename)
        for f in originals.ORIGINAL_FILES[cls.SOURCE]
    }

  def _fetch(self, dl_manager: tfds.download.DownloadManager) -> dict[str, str]:
    """Local paths of the verified original files, by file name."""
    paths = {}
    for f in originals.ORIGINAL_FILES[self.SOURCE]:
      try:
        paths[f.filename] = os.fspath(dl_manager.download(f.url))
      except _NonMatchingChecksumError as e:
        found = _CHECKED_PATH.search(str(e))
        where = f" ({found.group(1)})" if found else ""
        raise DataError(
            f"checksum mismatch for {f.filename}{where}: expected {f.size} bytes with sha256 "
            f"{f.sha256}; replace it with the original file from {f.url}") from e
      except Exception as e:  # Network errors come in many types; wrap them all.
        reason = f"{type(e).__name__}: {first_line(e)}"
        raise DataError(lambda option, f=f, reason=reason: (
            f"could not download {f.url} ({reason}); put {f.filename} in the folder "
            f"passed as {option['manual_dir']} instead")) from e
    return paths


class _IdxBuilder(_OriginalFilesBuilder, skip_registration=True):
  """MNIST-like: four IDX files of 28x28 grey images and labels 0-9."""

  CLASS_NAMES: tuple[str, ...] = ()
  HOMEPAGE = ""
  SHAPE = (28, 28, 1)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(self.__doc__ or "").strip(),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=self.SHAPE, dtype=np.uint8,
                                          encoding=tfds.features.Encoding.BYTES),
            "label": tfds.features.ClassLabel(names=self.CLASS_NAMES),
        }),
        supervised_keys=("image", "label"),
        homepage=self.HOMEPAGE,
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    paths = self._fetch(dl_manager)
    return {
        split: self._generate_examples(*(paths[name] for name in originals.IDX_FILES[split]))
        for split in SPLITS
    }

  def _generate_examples(self, images_path: str, labels_path: str):
    images, labels = originals.read_idx_split(images_path, labels_path)
    if images.shape[1:] != self.SHAPE:
      raise DataError(f"corrupt dataset file: {images_path} holds images of shape "
                      f"{images.shape[1:3]}, expected {self.SHAPE[:2]}")
    _check_labels(labels, len(self.CLASS_NAMES), labels_path)
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": label}


class PlastixMnist(_IdxBuilder):
  """MNIST handwritten digits (LeCun et al.), prepared from the original IDX files."""

  SOURCE = "mnist"
  CLASS_NAMES = tuple(str(d) for d in range(10))
  HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"


class PlastixFashionMnist(_IdxBuilder):
  """Fashion-MNIST Zalando article images (Xiao et al.), prepared from the original IDX files."""

  SOURCE = "fashion_mnist"
  CLASS_NAMES = FASHION_MNIST_CLASSES
  HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"


class _CifarBuilder(_OriginalFilesBuilder, skip_registration=True):
  """CIFAR-like: one tarball of pickled batches of 32x32 colour images."""

  NUM_CLASSES = 0
  NUM_COARSE_CLASSES = 0  # 0: no coarse labels.
  SHAPE = (originals.CIFAR_SIDE, originals.CIFAR_SIDE, 3)

  def _info(self) -> tfds.core.DatasetInfo:
    features = {
        "image": tfds.features.Tensor(shape=self.SHAPE, dtype=np.uint8,
                                      encoding=tfds.features.Encoding.BYTES),
        "label": tfds.features.ClassLabel(num_classes=self.NUM_CLASSES),
    }
    if self.NUM_COARSE_CLASSES:
      features["coarse_label"] = tfds.features.ClassLabel(num_classes=self.NUM_COARSE_CLASSES)
    return tfds.core.DatasetInfo(
        builder=self,
        description=(self.__doc__ or "").strip(),
        features=tfds.features.FeaturesDict(features),
        supervised_keys=("image", "label"),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        disable_shuffling=True,
    )

  def _set_names(self, key: str, names: list[str] | None, where: str) -> None:
    """Records the class names of feature `key`, after checking their number."""
    feature = self.info.features[key]
    if names is None or len(names) != feature.num_classes:
      raise DataError(f"corrupt dataset file: {where} lists "
                      f"{'no' if names is None else len(names)} {key} names, "
                      f"expected {feature.num_classes}")
    feature.names = names

  def _split_generators(self, dl_manager):
    (path,) = self._fetch(dl_manager).values()
    archive = originals.read_cifar(path, self.SOURCE)
    self._set_names("label", archive.label_names, path)
    if self.NUM_COARSE_CLASSES:
      self._set_names("coarse_label", archive.coarse_label_names, path)
    return {split: self._generate_examples(archive.splits[split], f"{path}:{split}")
            for split in SPLITS}

  def _generate_examples(self, split: originals.CifarSplit, where: str):
    _check_labels(split.labels, self.NUM_CLASSES, where)
    if self.NUM_COARSE_CLASSES:
      _check_labels(split.coarse_labels, self.NUM_COARSE_CLASSES, where)
    for i in range(len(split.labels)):
      example = {"image": split.images[i], "label": split.labels[i]}
      if self.NUM_COARSE_CLASSES:
        example["coarse_label"] = split.coarse_labels[i]
      yield i, example


class PlastixCifar10(_CifarBuilder):
  """CIFAR-10 (Krizhevsky, 2009), prepared from the original Python tarball."""

  SOURCE = "cifar10"
  NUM_CLASSES = 10


class PlastixCifar100(_CifarBuilder):
  """CIFAR-100 (Krizhevsky, 2009), 100 fine and 20 coarse classes, from the Python tarball."""

  SOURCE = "cifar100"
  NUM_CLASSES = 100
  NUM_COARSE_CLASSES = 20


BUILDERS: dict[str, type[_OriginalFilesBuilder]] = {
    "mnist": PlastixMnist,
    "fashion_mnist": PlastixFashionMnist,
    "cifar10": PlastixCifar10,
    "cifar100": PlastixCifar100,
}


def default_manual_dir(data_dir: str) -> str:
  """Where tfds looks for manually downloaded files when no manual_dir is given."""
  return os.path.join(data_dir, "downloads", "manual")


def where_to_get(name: str) -> str:
  """The file names of dataset `name` and where they are published."""
  files = originals.ORIGINAL_FILES[name]
  folders = sorted({posixpath.dirname(f.url) + "/" for f in files})
  return f"{', '.join(f.filename for f in files)} from {', '.join(folders)}"


def missing_files(name: str, manual_dir: str) -> list[str]:
  """The original files of `name` that `manual_dir` lacks."""
  return [f.filename for f in originals.ORIGINAL_FILES[name]
          if not os.path.isfile(os.path.join(manual_dir, f.filename))]


@contextlib.contextmanager
def preparation_lock(name: str, data_dir: str) -> Iterator[str]:
  """Holds an exclusive lock on ``<data_dir>/plastix_<name>.lock`` (yielding its path).

  `prepare` prepares inside it, so processes that all found the dataset
  unprepared (every process of a job reading one shared data folder) prepare it
  one at a time, and each after the first finds it prepared. The lock is an
  ``flock``: it holds between processes of any host where the file system
  supports it (a local disk; NFS where its server does locking); on a system
  without ``fcntl`` no lock is taken. The empty lock file stays behind.
  """
  os.makedirs(data_dir, exist_ok=True)
  path = os.path.join(data_dir, f"{BUILDERS[name].name}.lock")
  with open(path, "a", encoding="utf-8") as lock:
    if fcntl is not None:
      fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield path
    finally:
      if fcntl is not None:
        fcntl.flock(lock, fcntl.LOCK_UN)


def prepare(name: str, data_dir: str, manual_dir: str | None = None,
            download: bool = False) -> str:
  """Prepares ``plastix_<name>`` in `data_dir` from the original files.

  A no-op when it is already prepared there. Concurrent calls for the same
  dataset and folder, from threads or processes, prepare it once
  (`preparation_lock`).

  Args:
    name: ``mnist``, ``fashion_mnist``, ``cifar10`` or ``cifar100``.
    data_dir: the tfds data directory to write into.
    manual_dir: folder holding the original files; defaults to
      ``<data_dir>/downloads/manual``.
    download: fetch the files that `manual_dir` lacks from their URLs.

  Returns:
    The folder of the prepared dataset, ``<data_dir>/plastix_<name>/<version>``.

  Raises:
    DataError: a file is missing (and `download` is False), cannot be
      downloaded, fails its checksum, or is malformed; or tfds fails.
  """
  builder_cls = BUILDERS[name]
  manual_dir = manual_dir or default_manual_dir(data_dir)
  absent = [] if download else missing_files(name, manual_dir)
  if absent:
    raise DataError(lambda option: (
        f"cannot prepare {builder_cls.name}: {manual_dir} lacks {', '.join(absent)}; put the "
        f"original {where_to_get(name)} there, or pass {option['download']}"))
  config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
  try:
    with preparation_lock(name, data_dir):
      # Made under the lock: a builder sees whether the data is prepared when made.
      builder = builder_cls(data_dir=data_dir, file_format="array_record")
      builder.download_and_prepare(download_config=config)
  except DataError:
    raise
  except Exception as e:  # tfds raises many types; report them in one line.
    raise DataError(f"preparing {builder_cls.name} in {data_dir} failed: "
                    f"{type(e).__name__}: {first_line(e)}") from e
  return builder.data_dir
