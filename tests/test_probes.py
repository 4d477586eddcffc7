import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import probes


def test_dormant_scores_by_hand():
  a = jnp.array([[0.0, 1.0, 2.0], [0.0, -3.0, 2.0]])
  # m = mean|a| = [0, 2, 2]; layer mean 4/3; s = m / (4/3 + 1e-9) = [0, 1.5, 1.5].
  np.testing.assert_allclose(probes.dormant_scores(a), [0.0, 1.5, 1.5], rtol=1e-6)
  assert probes.dormant_fraction(a) == pytest.approx(1 / 3)
  assert probes.dormant_fraction(a, tau=1.0) == pytest.approx(1 / 3)
  assert probes.dormant_fraction(a, tau=1.6) == pytest.approx(1.0)


def test_dormant_fraction_averages_over_space_for_conv_maps():
  a = np.zeros((2, 3, 3, 4), np.float32)
  a[0, 1, 1, 0] = 9.0  # unit 0 fires once; units 1..3: unit 3 never fires.
  a[:, :, :, 1] = 1.0
  a[1, 0, 0, 2] = 0.5
  m = np.abs(a).mean(axis=(0, 1, 2))
  expected = np.mean(m / (m.mean() + 1e-9) <= 0.1)
  assert probes.dormant_fraction(jnp.asarray(a), tau=0.1) == pytest.approx(expected)
  assert probes.dormant_fraction(jnp.asarray(a)) == pytest.approx(0.25)


def test_linearized_fraction_by_hand():
  h = jnp.array([[1.0, -1.0, 2.0], [3.0, 2.0, 0.0]])
  # unit 0 positive on both examples; unit 1 negative once; unit 2 zero once.
  assert probes.linearized_fraction(h) == pytest.approx(1 / 3)


def test_effective_rank_by_hand():
  x = jnp.diag(jnp.array([3.0, 1.0]))
  p = np.array([0.75, 0.25])
  expected = np.exp(-(p * np.log(p)).sum())
  assert probes.effective_rank(x) == pytest.approx(expected, rel=1e-5)
  assert probes.effective_rank(jnp.eye(5)) == pytest.approx(5.0, rel=1e-5)
  assert probes.effective_rank(jnp.outer(jnp.arange(1.0, 5.0), jnp.ones(3))) == pytest.approx(
      1.0, rel=1e-4)
  assert probes.effective_rank(jnp.zeros((4, 3))) == 0.0


def test_srank_by_hand():
  x = jnp.diag(jnp.array([5.0, 3.0, 1.0, 1.0]))  # cumulative [5, 8, 9, 10] of total 10.
  assert probes.srank(x, delta=0.01) == 4   # needs >= 9.9
  assert probes.srank(x, delta=0.15) == 3   # needs >= 8.5
  assert probes.srank(x, delta=0.25) == 2   # needs >= 7.5
  assert probes.srank(x, delta=0.5) == 1    # needs >= 5
  assert probes.srank(jnp.zeros((3, 3))) == 0


def test_srank_and_effective_rank_match_numpy_reference():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(40, 12)) @ np.diag(np.geomspace(10, 0.01, 12))
  s = np.linalg.svd(x, compute_uv=False)
  ref_srank = int(np.searchsorted(np.cumsum(s), 0.99 * s.sum()) + 1)
  p = s / s.sum()
  assert probes.srank(jnp.asarray(x, jnp.float32)) == ref_srank
  assert probes.effective_rank(jnp.asarray(x, jnp.float32)) == pytest.approx(
      np.exp(-(p * np.log(p)).sum()), rel=1e-4)


def test_param_norms_by_hand():
  params = {"a": {"kernel": jnp.array([3.0, 4.0])}, "b": {"bias": jnp.array([12.0])}}
  assert probes.param_norm(params) == pytest.approx(13.0)
  norms = probes.layer_param_norms(params)
  assert norms["a"] == pytest.approx(5.0) and norms["b"] == pytest.approx(12.0)


def test_probes_vmap_over_a_seed_axis():
  rng = np.random.default_rng(2)
  feats = jnp.asarray(rng.normal(size=(3, 20, 6)), jnp.float32)  # [seed, batch, units]
  feats = jax.nn.relu(feats)
  for fn in (probes.dormant_fraction, probes.linearized_fraction, probes.effective_rank,
             probes.srank):
    batched = jax.jit(jax.vmap(fn))(feats)
    chex.assert_shape(batched, (3,))
    for i in range(3):
      np.testing.assert_allclose(batched[i], fn(feats[i]), rtol=1e-5)
