"""The Fashion-MNIST subset shipped inside the package (see FASHION_MNIST_LICENSE)."""

import os

EMBEDDED_PATH = os.path.join(os.path.dirname(__file__), "fashion_mnist_small.npz")
