"""Mechanism probes: pure functions of arrays, jittable and vmappable.

Every function takes arrays for one network (one seed); wrap it in
``jax.vmap`` to probe a leading seed axis. Conventions are pinned here because
the field's codebases disagree on them:

* the dormant score divides by the layer's mean score plus 1e-9 (ReDo);
* ``srank`` is the smallest k (counting from 1) that reaches the threshold,
  with no extra +1;
* a matrix of zeros has effective rank and srank 0.

Probes that differentiate a loss live in their own modules: `curvature`
(Hessian), `ntk` (empirical NTK), `gradients` (gradient interference) and
`plasticity_probe` (the 2023 probe-target fit).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DORMANT_EPS = 1e-9


def _unit_means_abs(activations: jax.Array) -> jax.Array:
  """mean |a| over every axis but the last (batch, and space for conv maps)."""
  return jnp.mean(jnp.abs(activations), axis=tuple(range(activations.ndim - 1)))


def dormant_scores(activations: jax.Array) -> jax.Array:
  r"""ReDo dormancy score of each unit (Sokar et al., 2023).

    m_i = mean_{batch, space} |a_{., i}|
    s_i = m_i / (mean_j m_j + 1e-9)

  Args:
    activations: ``[..., units]``, the units on the last axis.

  Returns:
    ``[units]`` scores; a unit with score 0 never fires on the batch.
  """
  m = _unit_means_abs(activations)
  return m / (jnp.mean(m) + DORMANT_EPS)


def dormant_fraction(activations: jax.Array, tau: float = 0.0) -> jax.Array:
  r"""Fraction of tau-dormant units: ``mean_i [s_i <= tau]`` with `dormant_scores` s.

  ``tau = 0`` counts dead units (zero on every example); 0.025 and 0.1 are the
  common ReDo thresholds.
  """
  return jnp.mean(dormant_scores(activations) <= tau)


def linearized_fraction(preactivations: jax.Array) -> jax.Array:
  r"""Fraction of ReLU units that act as the identity on the whole batch.

    mean_i [ h_{n,i} > 0 for every example n (and position) ]

  Such a "zombie" unit is linear on the data, so it adds no nonlinearity.

  Args:
    preactivations: ``[..., units]`` inputs to the ReLU.
  """
  axes = tuple(range(preactivations.ndim - 1))
  return jnp.mean(jnp.all(preactivations > 0, axis=axes))


def singular_values(features: jax.Array) -> jax.Array:
  """Singular values of a ``[examples, features]`` matrix, largest first."""
  return jnp.linalg.svd(features, compute_uv=False)


def spectral_effective_rank(spectrum: jax.Array) -> jax.Array:
  r"""Entropy rank of a nonnegative spectrum (singular values or PSD eigenvalues).

    p_k = s_k / sum_j s_j,   erank = exp(-sum_k p_k log p_k),

  with 0 log 0 = 0; 0 for an all-zero spectrum.
  """
  total = jnp.sum(spectrum)
  p = spectrum / jnp.where(total > 0, total, 1.0)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return jnp.where(total > 0, jnp.exp(entropy), 0.0)


def effective_rank(features: jax.Array) -> jax.Array:
  r"""Effective rank (Roy & Vetterli, 2007) of a ``[examples, features]`` matrix.

    p_k = sigma_k / sum_j sigma_j,   erank = exp(-sum_k p_k log p_k),

  with 0 log 0 = 0. It equals k for k equal nonzero singular values and is 0
  for a matrix of zeros.
  """
  return spectral_effective_rank(singular_values(features))


def top_singular_values(features: jax.Array, k: int) -> jax.Array:
  """The `k` largest singular values of a ``[examples, features]`` matrix, largest first.

  Zero-padded to length `k` when the matrix has fewer than `k` singular values,
  so the shape is static (``[k]``) and stacks across seeds and tasks. Applied to
  penultimate features it shows the target-offset direction blowing up.
  """
  s = singular_values(features)[:k]
  return jnp.pad(s, (0, k - s.shape[0]))


def srank(features: jax.Array, delta: float = 0.01) -> jax.Array:
  r"""Feature rank of Kumar et al. (2021) for a ``[examples, features]`` matrix.

    srank = min { k >= 1 : sum_{i<=k} sigma_i >= (1 - delta) sum_i sigma_i },

  sigma sorted in decreasing order; 0 for a matrix of zeros. Returned as int32.
  """
  s = singular_values(features)
  cumulative = jnp.cumsum(s)
  total = cumulative[-1]
  reached = cumulative >= (1.0 - delta) * total
  k = jnp.argmax(reached) + 1
  return jnp.where(total > 0, k, 0).astype(jnp.int32)


def param_norm(params) -> jax.Array:
  r"""Global L2 norm of a parameter pytree: ``sqrt(sum over leaves of sum p^2)``."""
  leaves = jax.tree.leaves(params)
  return jnp.sqrt(sum(jnp.sum(jnp.square(p.astype(jnp.float32))) for p in leaves))


def layer_param_norms(params) -> dict[str, jax.Array]:
  """L2 norm of each top-level module's parameters (e.g. ``dense_0``, ``head``)."""
  return {name: param_norm(sub) for name, sub in params.items()}


def layer_grad_norms(grads) -> dict[str, jax.Array]:
  r"""L2 norm of each top-level module's gradient: ``||g_layer||_2`` per module name."""
  return layer_param_norms(grads)


def norm_growth_ratio(norms_now: dict[str, jax.Array], norms_before: dict[str, jax.Array],
                      first: str = "dense_0", last: str = "head") -> dict:
  r"""Per-layer norm growth and how much faster the last layer grew than the first.

    r_l = ||theta_l||_now / ||theta_l||_before       for every layer l
    last_over_first = r_last / r_first

  ``last_over_first > 1`` means the output end of the network grew faster.
  The layers are named explicitly because dict order is not kept by JAX
  transformations (pytrees sort their keys). A zero norm before gives inf or nan.

  Args:
    norms_now: layer name -> norm, e.g. `layer_param_norms` or `layer_grad_norms`.
    norms_before: the same names at the reference time (e.g. the last task switch).
    first: the name of the input-side layer (`models.MLP`'s first layer by default).
    last: the name of the output-side layer (the models' linear head by default).

  Returns:
    ``{"per_layer": {name: r_l}, "last_over_first": r_last / r_first}``.
  """
  ratios = {name: norms_now[name] / norms_before[name] for name in norms_now}
  return {"per_layer": ratios, "last_over_first": ratios[last] / ratios[first]}


# ----------------------------------------------------------------------------
# Preactivation distribution and outputs.


def preactivation_stats(preactivations: jax.Array) -> dict[str, jax.Array]:
  r"""Per-unit moments of one layer's preactivations and their spread across units.

    m_i = mean_{n} h_{n,i},   s_i = std_{n} h_{n,i}      (n: batch, and space for conv maps)
    mean_of_means = mean_i m_i,   spread_of_means = std_i m_i,   mean_of_stds = mean_i s_i

  Standard deviations are population ones (divide by the count). Keep
  ``unit_mean`` at a task switch and pass it to `mean_drift` later; pass it to
  `histogram` to save the distribution of per-unit means.

  Args:
    preactivations: ``[..., units]``, the units on the last axis.

  Returns:
    A dict with ``unit_mean`` and ``unit_std`` (``[units]``) and the scalars
    ``mean_of_means``, ``spread_of_means`` and ``mean_of_stds``.
  """
  h = preactivations.astype(jnp.float32)
  axes = tuple(range(h.ndim - 1))
  m = jnp.mean(h, axis=axes)
  s = jnp.std(h, axis=axes)
  return dict(unit_mean=m, unit_std=s, mean_of_means=jnp.mean(m),
              spread_of_means=jnp.std(m), mean_of_stds=jnp.mean(s))


def mean_drift(unit_means: jax.Array, reference_unit_means: jax.Array) -> jax.Array:
  r"""Mean absolute change of the per-unit preactivation means: ``mean_i |m_i - m_ref_i|``.

  With ``m_ref`` the `preactivation_stats` ``unit_mean`` saved at the previous
  task switch, this is the drift of the layer's preactivation distribution
  over one task, in preactivation units.
  """
  return jnp.mean(jnp.abs(unit_means - reference_unit_means))


def histogram(values: jax.Array, edges: jax.Array) -> jax.Array:
  r"""Counts of `values` in the fixed bins given by `edges` (as ``numpy.histogram``).

    c_k = #{ v : e_k <= v < e_{k+1} }   for k < K - 1,
    c_{K-1} = #{ v : e_{K-1} <= v <= e_K }   (the last bin is closed),

  for ``K + 1`` increasing edges. Values outside ``[e_0, e_K]`` and nan are not
  counted. The edges are an array of fixed length, so the shape is static and
  the function is jittable; the counts are int32 of shape ``[K]``.
  """
  v = values.reshape(-1)
  num_bins = edges.shape[0] - 1
  index = jnp.searchsorted(edges, v, side="right") - 1
  index = jnp.where(v == edges[-1], num_bins - 1, index)  # close the last bin.
  inside = (index >= 0) & (index < num_bins)
  index = jnp.where(inside, index, num_bins)  # one past the end: dropped.
  return jnp.zeros(num_bins, jnp.int32).at[index].add(1, mode="drop")


def linearized_fraction_smooth(preactivations: jax.Array, threshold: float) -> jax.Array:
  r"""Fraction of units with near-constant preactivation (for smooth activations).

    mean_i [ std_n h_{n,i} < threshold ]      (n: batch, and space for conv maps)

  The paper's wording for smooth activations (tanh, GELU, ...) is "near-constant
  preactivation": if h_i stays within about ``threshold`` of its mean ``m_i``
  on the data, ``phi(h) = phi(m_i) + phi'(m_i) (h - m_i) + O(threshold^2 phi'')``,
  so the unit is affine on the batch and adds no nonlinearity (and if
  ``phi'(m_i)`` is also ~0, as for a saturated tanh, it is dormant as well).
  The threshold is absolute, in preactivation units, because standard smooth
  activations bend on a scale of about 1; it is meant to come from the config
  (``probes.linearized_threshold``). The ReLU version is `linearized_fraction`.

  Args:
    preactivations: ``[..., units]`` inputs to the nonlinearity.
    threshold: the largest standard deviation counted as near-constant.
  """
  axes = tuple(range(preactivations.ndim - 1))
  return jnp.mean(jnp.std(preactivations.astype(jnp.float32), axis=axes) < threshold)


def predictive_entropy(logits: jax.Array) -> jax.Array:
  r"""Mean entropy of the softmax predictions, in nats.

    p_n = softmax(z_n),   H = mean_n ( -sum_c p_{n,c} log p_{n,c} ),

  with 0 log 0 = 0. It is log(C) for uniform predictions and 0 for one-hot
  (saturated) ones.

  Args:
    logits: ``[batch, classes]``.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  p = jnp.exp(logp)
  return jnp.mean(-jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1))
