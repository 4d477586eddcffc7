"""Pixel preprocessing against numpy formulas and hand-computed values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix.data import preprocess


def _images(shape=(5, 6, 7, 3), seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_channel_stats_by_hand():
  # Channel 0 holds 0 and 255: mean 1/2, std 1/2. Channel 1 is constantly 51 = 0.2 * 255.
  images = np.array([[[[0, 51]], [[255, 51]]]], dtype=np.uint8)  # [1, 2, 1, 2]
  mean, std = preprocess.channel_stats(images)
  np.testing.assert_allclose(mean, [0.5, 0.2], rtol=0, atol=1e-15)
  np.testing.assert_allclose(std, [0.5, 0.0], rtol=0, atol=1e-15)


def test_channel_stats_match_numpy_over_n_h_w():
  images = _images()
  mean, std = preprocess.channel_stats(images)
  x = images.astype(np.float64) / 255
  assert mean.shape == std.shape == (3,) and mean.dtype == np.float64
  np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-13)
  np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-12)
  jax_mean, _ = preprocess.channel_stats(jnp.asarray(images))
  np.testing.assert_array_equal(jax_mean, mean)


def test_channel_stats_refuses_non_uint8():
  with pytest.raises(ValueError, match="uint8 images"):
    preprocess.channel_stats(_images().astype(np.float32))
  with pytest.raises(ValueError, match="uint8 images"):
    preprocess.channel_stats(_images()[0])


def test_unit_is_pixels_over_255():
  images = _images()
  x = preprocess.normalize(images, "unit")
  assert x.dtype == jnp.float32 and x.shape == images.shape
  np.testing.assert_allclose(x, images.astype(np.float32) / np.float32(255), rtol=1e-7)
  assert float(x.min()) >= 0 and float(x.max()) <= 1


def test_standardize_matches_numpy_and_whitens_the_reference_set():
  images = _images(seed=1)
  mean, std = preprocess.channel_stats(images)
  x = preprocess.normalize(images, "standardize", mean, std)
  expected = (images.astype(np.float64) / 255 - mean) / std
  np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.mean(x, axis=(0, 1, 2)), 0, atol=1e-5)
  np.testing.assert_allclose(np.std(x, axis=(0, 1, 2)), 1, rtol=1e-5)


def test_normalize_and_flatten_run_inside_jit_on_jax_arrays():
  images = jnp.asarray(_images(seed=2))
  mean, std = preprocess.channel_stats(images)

  @jax.jit
  def features(images, mean, std):
    return preprocess.flatten(preprocess.normalize(images, "standardize", mean, std))

  got = features(images, jnp.asarray(mean), jnp.asarray(std))
  expected = ((np.asarray(images) / 255 - mean) / std).reshape(5, -1)
  assert got.shape == (5, 6 * 7 * 3) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_normalize_refuses_bad_arguments():
  with pytest.raises(ValueError, match="unknown normalization 'zscore'.*unit, standardize"):
    preprocess.normalize(_images(), "zscore")
  with pytest.raises(ValueError, match="needs mean and std"):
    preprocess.normalize(_images(), "standardize")
  assert preprocess.NORMALIZATIONS == ("unit", "standardize")


def test_flatten_order_is_h_then_w_then_c():
  images = _images(shape=(2, 3, 4, 5), seed=3)
  flat = preprocess.flatten(images)
  assert flat.shape == (2, 60) and isinstance(flat, np.ndarray)
  n, h, w, c = 1, 2, 3, 4
  assert flat[n, (h * 4 + w) * 5 + c] == images[n, h, w, c]
  np.testing.assert_array_equal(preprocess.flatten(jnp.asarray(images)), flat)
