"""Mechanism probes: pure functions of arrays, jittable and vmappable.

Every function takes arrays for one network (one seed); wrap it in
``jax.vmap`` to probe a leading seed axis. Conventions are pinned here because
the field's codebases disagree on them:

* the dormant score divides by the layer's mean score plus 1e-9 (ReDo);
* ``srank`` is the smallest k (counting from 1) that reaches the threshold,
  with no extra +1;
* a matrix of zeros has effective rank and srank 0.
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


def effective_rank(features: jax.Array) -> jax.Array:
  r"""Effective rank (Roy & Vetterli, 2007) of a ``[examples, features]`` matrix.

    p_k = sigma_k / sum_j sigma_j,   erank = exp(-sum_k p_k log p_k),

  with 0 log 0 = 0. It equals k for k equal nonzero singular values and is 0
  for a matrix of zeros.
  """
  s = singular_values(features)
  total = jnp.sum(s)
  p = s / jnp.where(total > 0, total, 1.0)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return jnp.where(total > 0, jnp.exp(entropy), 0.0)


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
