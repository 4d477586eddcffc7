"""Empirical neural tangent kernel on a batch, and its conditioning statistics.

For a network with several outputs the kernel is the trace over outputs:

    K_ij = sum_c < d f_c(x_i) / d theta , d f_c(x_j) / d theta >,

i.e. the Gram matrix of the per-example Jacobians flattened over (outputs,
parameters). ``output=c`` gives the kernel of the single output c instead.
An ill-conditioned network shows a kernel that is "diagonal plus low rank":
a large diagonal share and one dominant eigenvalue (Lyle et al., 2024).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from plastix import probes

DEFAULT_NUM_EXAMPLES = 64  # the paper's NTK batch.

ApplyFn = Callable[[Any, jax.Array], jax.Array]


def _leaf_gram(grads) -> jax.Array:
  """sum over leaves of G G^T, each leaf ``[n, ...]`` flattened to ``[n, -1]``."""
  grams = []
  for g in jax.tree.leaves(grads):
    g = g.reshape(g.shape[0], -1).astype(jnp.float32)
    grams.append(jnp.matmul(g, g.T, precision=jax.lax.Precision.HIGHEST))
  return sum(grams)


def ntk_gram(apply_fn: ApplyFn, params, x: jax.Array,
             num_examples: int = DEFAULT_NUM_EXAMPLES, output: int | None = None) -> jax.Array:
  r"""Empirical NTK of the first `num_examples` rows of `x`.

    K_ij = sum_c <grad_theta f_c(x_i), grad_theta f_c(x_j)>      (output=None)
    K_ij = <grad_theta f_c(x_i), grad_theta f_c(x_j)>            (output=c)

  Each example's gradient is taken on its own (the network applied to a batch
  of one), so batch statistics never couple examples. The kernel is built one
  output at a time (a scan over outputs), so memory holds one ``[n, params]``
  Jacobian, not ``[n, outputs, params]``.

  Args:
    apply_fn: ``apply_fn(params, x) -> [batch, outputs]`` (or ``[batch]``).
    params: the parameter pytree.
    x: ``[examples, ...]`` inputs; the first `num_examples` are used (all if fewer).
    num_examples: how many examples the kernel covers (the paper uses 64).
    output: None for the trace over outputs, or the index of one output.

  Returns:
    ``[n, n]`` float32, symmetric positive semi-definite.
  """
  x = x[:num_examples]

  def outputs(p, xi):
    return apply_fn(p, xi[None]).reshape(-1)

  def gram_of(c):
    grad_c = jax.grad(lambda p, xi: outputs(p, xi)[c])
    return _leaf_gram(jax.vmap(grad_c, in_axes=(None, 0))(params, x))

  if output is not None:
    return gram_of(output)
  num_outputs = jax.eval_shape(outputs, params, x[0]).shape[0]
  n = x.shape[0]
  gram, _ = jax.lax.scan(lambda k, c: (k + gram_of(c), None),
                         jnp.zeros((n, n), jnp.float32), jnp.arange(num_outputs))
  return gram


def ntk_stats(gram: jax.Array) -> dict[str, jax.Array]:
  r"""Conditioning statistics of a PSD kernel matrix K (n x n).

    diagonal_share       = tr(K) / sum_ij |K_ij|                       in [1/n, 1]
    off_diagonal_mass    = sum_{i != j} |K_ij| / sum_ij |K_ij| = 1 - diagonal_share
    off_diagonal_cosine  = mean_{i != j} |K_ij| / sqrt(K_ii K_jj)      in [0, 1]
    effective_rank       = exp(-sum_k p_k log p_k),  p = lambda / sum(lambda)
    top_eigenvalue_share = lambda_max / sum_k lambda_k = lambda_max / tr(K)

  lambda are the eigenvalues of K (`probes.symmetric_eigenvalues`, one
  LAPACK call per matrix under vmap), clipped at 0 against round-off. The
  effective rank is that of `probes.spectral_effective_rank` applied to the
  eigenvalues of K (the squared singular values of the Jacobian). A diagonal
  kernel has diagonal share 1 and off-diagonal cosine 0; a rank-one kernel has
  top-eigenvalue share 1 and effective rank 1. Zero rows (examples with zero
  gradient) count as cosine 0; the all-zero kernel gives 0 everywhere.

  Args:
    gram: ``[n, n]`` symmetric PSD matrix, e.g. from `ntk_gram`.

  Returns:
    A dict of float32 scalars with the keys above.
  """
  k = gram.astype(jnp.float32)
  n = k.shape[0]
  diag = jnp.diagonal(k)
  abs_total = jnp.sum(jnp.abs(k))
  safe = lambda d: jnp.where(d > 0, d, 1.0)
  diagonal_share = jnp.where(abs_total > 0, jnp.trace(k) / safe(abs_total), 0.0)
  off_diagonal_mass = jnp.where(abs_total > 0, 1.0 - diagonal_share, 0.0)
  scale = jnp.sqrt(jnp.outer(diag, diag))
  cosine = jnp.where(scale > 0, jnp.abs(k) / safe(scale), 0.0)
  off_diagonal = 1.0 - jnp.eye(n, dtype=k.dtype)
  off_diagonal_cosine = jnp.sum(cosine * off_diagonal) / max(n * (n - 1), 1)
  eigenvalues = jnp.clip(probes.symmetric_eigenvalues(k), 0.0)
  total = jnp.sum(eigenvalues)
  top_share = jnp.where(total > 0, jnp.max(eigenvalues) / safe(total), 0.0)
  return dict(diagonal_share=diagonal_share, off_diagonal_mass=off_diagonal_mass,
              off_diagonal_cosine=off_diagonal_cosine,
              effective_rank=probes.spectral_effective_rank(eigenvalues),
              top_eigenvalue_share=top_share)
