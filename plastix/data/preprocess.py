"""Pixel preprocessing as pure functions of numpy or jax arrays.

Images come from ``plastix.data.load`` as uint8 ``p`` of shape ``[N, H, W, C]``.
``normalize`` maps them to floats by one of ``NORMALIZATIONS``:

* ``"unit"``:        ``x = p / 255``, in [0, 1];
* ``"standardize"``: ``x[..., c] = (p[..., c] / 255 - mean[c]) / std[c]``,

where ``mean`` and ``std`` are per-channel statistics of a reference set in
[0, 1] units, usually the training split (``channel_stats``), so that the
reference set has zero mean and unit variance in every channel. ``flatten``
turns ``[N, H, W, C]`` into ``[N, H*W*C]`` for MLPs. ``normalize`` and
``flatten`` use ``jax.numpy`` and can run inside ``jax.jit`` (``method`` is a
Python string, static); ``channel_stats`` is a one-off numpy computation.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

NORMALIZATIONS = ("unit", "standardize")

_LEVELS = 256  # uint8 pixel values.
_MAX = 255.0


def channel_stats(images) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and standard deviation of uint8 images, in [0, 1] units.

  With ``M = N * H * W`` pixels per channel and ``x = p / 255``::

    mean[c] = (1 / M) * sum_{n,h,w} x[n, h, w, c]
    std[c]  = sqrt((1 / M) * sum_{n,h,w} (x[n, h, w, c] - mean[c])**2)

  (the population standard deviation, ``ddof=0``). Computed from each
  channel's histogram of the 256 pixel values with exact integer sums, so the
  images are never copied to floats and large sets lose no precision.

  Args:
    images: uint8 ``[N, H, W, C]`` (numpy or jax), N >= 1.

  Returns:
    ``(mean, std)``, float64 numpy arrays of shape ``[C]``.

  Raises:
    ValueError: `images` is not a non-empty uint8 array of rank 4.
  """
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] == 0:
    raise ValueError(f"channel_stats needs uint8 images [N, H, W, C] with N >= 1, got "
                     f"{images.dtype} {images.shape}")
  values = np.arange(_LEVELS, dtype=np.int64)
  means, stds = [], []
  for c in range(images.shape[-1]):
    counts = np.bincount(images[..., c].ravel(), minlength=_LEVELS).astype(np.int64)
    m, s1, s2 = int(counts.sum()), int(counts @ values), int(counts @ values**2)
    means.append(s1 / (_MAX * m))
    stds.append(math.sqrt((m * s2 - s1 * s1) / (_MAX * m) ** 2))  # exact numerator
  return np.array(means), np.array(stds)


def normalize(images, method: str, mean=None, std=None, dtype=jnp.float32):
  """Maps uint8 pixels to floats: ``p / 255``, or standardised per channel.

  ``"unit"``: ``x = p / 255``. ``"standardize"``: ``x = (p / 255 - mean) /
  std``, with ``mean`` and ``std`` broadcast over the last (channel) axis.

  Args:
    images: uint8 ``[..., C]`` (numpy or jax; a traced array inside jit).
    method: one of ``NORMALIZATIONS``.
    mean: ``[C]`` channel means in [0, 1] units (``channel_stats``); needed
      by ``"standardize"``.
    std: ``[C]`` channel standard deviations, positive; needed by
      ``"standardize"``.
    dtype: the float dtype of the result.

  Returns:
    A jax array of `dtype` with the shape of `images`.

  Raises:
    ValueError: an unknown `method`, or ``"standardize"`` without statistics.
  """
  if method not in NORMALIZATIONS:
    raise ValueError(f"unknown normalization {method!r}; choose one of "
                     f"{', '.join(NORMALIZATIONS)}")
  x = jnp.asarray(images, dtype) / _MAX
  if method == "unit":
    return x
  if mean is None or std is None:
    raise ValueError("normalization 'standardize' needs mean and std (channel_stats of the "
                     "training images)")
  return (x - jnp.asarray(mean, dtype)) / jnp.asarray(std, dtype)


def flatten(images):
  """``[N, H, W, C]`` to ``[N, H*W*C]``, row-major: ``out[n, (h*W + w)*C + c]``.

  Args:
    images: an array (numpy or jax) with a leading batch axis.

  Returns:
    The same kind of array, one row per example.
  """
  return images.reshape(images.shape[0], -1)
