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


def test_top_singular_values_pads_to_k():
  x = jnp.diag(jnp.array([3.0, 5.0, 1.0]))
  np.testing.assert_allclose(probes.top_singular_values(x, 2), [5.0, 3.0], rtol=1e-6)
  np.testing.assert_allclose(probes.top_singular_values(x, 5), [5.0, 3.0, 1.0, 0.0, 0.0],
                             rtol=1e-6, atol=1e-6)


def test_spectral_effective_rank_matches_effective_rank():
  x = jnp.diag(jnp.array([3.0, 1.0, 0.0]))
  assert probes.spectral_effective_rank(jnp.array([3.0, 1.0, 0.0])) == pytest.approx(
      float(probes.effective_rank(x)), rel=1e-6)
  assert probes.spectral_effective_rank(jnp.zeros(3)) == 0.0


def test_preactivation_stats_by_hand():
  h = jnp.array([[1.0, 0.0], [3.0, 2.0]])
  stats = probes.preactivation_stats(h)
  # m = [2, 1]; population std s = [1, 1].
  np.testing.assert_allclose(stats["unit_mean"], [2.0, 1.0])
  np.testing.assert_allclose(stats["unit_std"], [1.0, 1.0])
  assert stats["mean_of_means"] == pytest.approx(1.5)
  assert stats["spread_of_means"] == pytest.approx(0.5)
  assert stats["mean_of_stds"] == pytest.approx(1.0)


def test_preactivation_stats_pool_space_and_vmap_over_layers():
  rng = np.random.default_rng(3)
  h = rng.normal(size=(2, 5, 3, 3, 4)).astype(np.float32)  # [layer, batch, H, W, units]
  stats = jax.vmap(probes.preactivation_stats)(jnp.asarray(h))
  np.testing.assert_allclose(stats["unit_mean"], h.mean(axis=(1, 2, 3)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["unit_std"], h.std(axis=(1, 2, 3)), rtol=1e-5)
  np.testing.assert_allclose(stats["spread_of_means"], h.mean(axis=(1, 2, 3)).std(axis=1),
                             rtol=1e-4)


def test_mean_drift_by_hand():
  assert probes.mean_drift(jnp.array([1.0, 2.0, 3.0]), jnp.array([1.0, 0.0, 4.0])) == (
      pytest.approx(1.0))


def test_histogram_matches_numpy():
  edges = np.array([-1.0, 0.0, 0.5, 2.0], np.float32)
  values = np.array([-3.0, -1.0, -0.5, 0.0, 0.2, 0.5, 1.9, 2.0, 2.5, np.nan], np.float32)
  counts = jax.jit(probes.histogram)(jnp.asarray(values), jnp.asarray(edges))
  assert counts.dtype == jnp.int32
  # [-1, 0): -1, -0.5; [0, 0.5): 0, 0.2; [0.5, 2]: 0.5, 1.9, 2.0; -3, 2.5, nan dropped.
  np.testing.assert_array_equal(counts, [2, 2, 3])
  np.testing.assert_array_equal(counts, np.histogram(values[:-1], edges)[0])
  rng = np.random.default_rng(4)
  v = rng.normal(size=(50, 7)).astype(np.float32)
  e = np.linspace(-2, 2, 9).astype(np.float32)
  np.testing.assert_array_equal(probes.histogram(jnp.asarray(v), jnp.asarray(e)),
                                np.histogram(v, e)[0])


def test_linearized_fraction_smooth_by_hand():
  h = jnp.array([[0.5, -1.0, 3.00], [0.5, 1.0, 3.02], [0.5, 0.0, 2.98]])
  # stds: 0, 0.816, 0.0163: units 0 and 2 are near-constant at threshold 0.1.
  assert probes.linearized_fraction_smooth(h, 0.1) == pytest.approx(2 / 3)
  assert probes.linearized_fraction_smooth(h, 0.01) == pytest.approx(1 / 3)
  assert probes.linearized_fraction_smooth(h, 1.0) == pytest.approx(1.0)


def test_predictive_entropy_by_hand():
  assert probes.predictive_entropy(jnp.zeros((3, 4))) == pytest.approx(np.log(4), rel=1e-6)
  assert probes.predictive_entropy(jnp.array([[1e4, 0.0, 0.0]])) == pytest.approx(0.0, abs=1e-6)
  # p = [0.75, 0.25] from logits [log 3, 0]; averaged with a uniform pair (log 2).
  p = np.array([0.75, 0.25])
  h = -(p * np.log(p)).sum()
  logits = jnp.array([[np.log(3.0), 0.0], [1.0, 1.0]])
  assert jax.jit(probes.predictive_entropy)(logits) == pytest.approx((h + np.log(2)) / 2, rel=1e-5)


def test_layer_grad_norms_and_norm_growth_by_hand():
  grads = {"dense_0": {"kernel": jnp.array([3.0, 4.0])}, "head": {"bias": jnp.array([-2.0])}}
  norms = probes.layer_grad_norms(grads)
  assert norms["dense_0"] == pytest.approx(5.0) and norms["head"] == pytest.approx(2.0)
  before = {"dense_0": jnp.array(2.0), "dense_1": jnp.array(1.0), "head": jnp.array(1.0)}
  now = {"dense_0": jnp.array(3.0), "dense_1": jnp.array(1.5), "head": jnp.array(6.0)}
  growth = jax.jit(probes.norm_growth_ratio)(now, before)
  assert growth["per_layer"]["dense_0"] == pytest.approx(1.5)
  assert growth["per_layer"]["head"] == pytest.approx(6.0)
  assert growth["last_over_first"] == pytest.approx(4.0)
  growth = probes.norm_growth_ratio(now, before, first="dense_1", last="dense_0")
  assert growth["last_over_first"] == pytest.approx(1.0)


def test_new_array_probes_vmap_over_a_seed_axis():
  rng = np.random.default_rng(5)
  h = jnp.asarray(rng.normal(size=(2, 30, 6)) * [[[0.01]], [[1.0]]], jnp.float32)
  fns = (lambda a: probes.linearized_fraction_smooth(a, 0.1), probes.predictive_entropy,
         lambda a: probes.top_singular_values(a, 3),
         lambda a: probes.histogram(a, jnp.linspace(-1.0, 1.0, 5)),
         lambda a: probes.preactivation_stats(a)["spread_of_means"])
  batched = jax.jit(jax.vmap(lambda a: [fn(a) for fn in fns]))(h)
  single = jax.jit(lambda a: [fn(a) for fn in fns])
  for i in range(2):
    for b, s in zip(batched, single(h[i])):
      np.testing.assert_allclose(b[i], s, rtol=1e-5, atol=1e-7)
  assert batched[0].tolist() == [1.0, 0.0]
