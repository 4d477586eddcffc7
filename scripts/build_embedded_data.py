r"""Builds plastix's embedded Fashion-MNIST subset from the original IDX files.

The subset takes, for every class, the first ``--train_per_class`` training and
the first ``--test_per_class`` test examples in file order, then interleaves the
classes (example i has class i % 10), so that any prefix of the arrays is
class-balanced. Debian's ``dataset-fashion-mnist`` package installs the
original files in /usr/share/datasets/fashion-mnist:

  apt-get install dataset-fashion-mnist
  python scripts/build_embedded_data.py \
      --source_dir=/usr/share/datasets/fashion-mnist

Output: plastix/data/embedded/fashion_mnist_small.npz with arrays
``{train,test}_images`` (uint8 [N, 28, 28, 1]) and ``{train,test}_labels``
(uint8 [N]). Fashion-MNIST is MIT-licensed (Copyright 2017 Zalando SE); its
notice lives beside the file as FASHION_MNIST_LICENSE.
"""

import os

from absl import app
from absl import flags
import numpy as np

from plastix.data import embedded
from plastix.data.idx import read_idx

_SOURCE = flags.DEFINE_string(
    "source_dir", "/usr/share/datasets/fashion-mnist",
    "Folder holding {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz.")
_OUT = flags.DEFINE_string("out", embedded.EMBEDDED_PATH, "Output .npz path.")
_TRAIN = flags.DEFINE_integer("train_per_class", 1000, "Training examples per class.")
_TEST = flags.DEFINE_integer("test_per_class", 200, "Test examples per class.")


def balanced_subset(images, labels, per_class, num_classes=10):
  """First `per_class` examples of each class, interleaved class by class."""
  picks = []
  for c in range(num_classes):
    idx = np.flatnonzero(labels == c)[:per_class]
    if len(idx) < per_class:
      raise ValueError(f"class {c} has only {len(idx)} examples")
    picks.append(idx)
  order = np.stack(picks, axis=1).reshape(-1)  # [per_class * classes], interleaved.
  return images[order][..., None], labels[order].astype(np.uint8)


def main(argv):
  del argv
  arrays = {}
  for split, prefix, per_class in (("train", "train", _TRAIN.value),
                                   ("test", "t10k", _TEST.value)):
    images = read_idx(os.path.join(_SOURCE.value, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(_SOURCE.value, f"{prefix}-labels-idx1-ubyte.gz"))
    arrays[f"{split}_images"], arrays[f"{split}_labels"] = balanced_subset(
        images, labels, per_class)
  np.savez_compressed(_OUT.value, **arrays)
  print(f"wrote {_OUT.value} ({os.path.getsize(_OUT.value) / 2**20:.1f} MiB): "
        + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


if __name__ == "__main__":
  app.run(main)
