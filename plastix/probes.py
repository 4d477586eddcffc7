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
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

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


def one_matrix_per_call(linalg_fn):
  r"""`linalg_fn` (a LAPACK-backed function of one matrix, returning arrays)
  made to call LAPACK on one matrix at a time wherever it is vmapped.

  Under ``jax.vmap`` (nested or not) the wrapped function runs a loop
  (``lax.map``) over the stacked matrices, one unbatched LAPACK call each,
  instead of a single call on the ``[batch, m, n]`` stack. The values are the
  same: the batched kernel applies the same LAPACK routine to each matrix in
  turn. When the stack is sharded along its first axis (the runs over the
  devices, `plastix.sharding`), each device loops over its own matrices
  (`_partitioned_loop`), with no communication. The wrapped function has no
  derivative of its own (see `singular_values` for one).

  Why: jaxlib 0.10's CPU kernels for a *batched* SVD, eigendecomposition,
  QR, LU, Cholesky and triangular solve (``ParallelBatchMap`` in its
  ``lapack_kernels.cc``) split the batch into chunks, schedule them on XLA's
  intra-op thread pool and block their own thread until the chunks are done.
  That thread is itself one of the pool's threads, and the pool is shared by
  every CPU device of the process (``max(cores, devices)`` threads). When as
  many devices' programs reach the kernel at once as the pool has threads,
  which is the usual case with a CPU host split into devices in lockstep,
  every pool thread blocks waiting for chunks that no free thread is left
  to run, and the process deadlocks without a message. A kernel on one
  matrix runs inline on its own thread and never waits on the pool.
  """
  stacked = _partitioned_loop(linalg_fn)

  @jax.custom_batching.custom_vmap
  def over_stack(stack):
    return stacked(stack)

  @over_stack.def_vmap
  def _over_stacks(axis_size, in_batched, stack):  # A vmap around a stack: one longer stack.
    del axis_size
    if not in_batched[0]:
      out = over_stack(stack)
      return out, jax.tree.map(lambda _: False, out)
    out = over_stack(stack.reshape((-1,) + stack.shape[2:]))
    return (jax.tree.map(lambda o: o.reshape(stack.shape[:2] + o.shape[1:]), out),
            jax.tree.map(lambda _: True, out))

  @jax.custom_batching.custom_vmap
  def one_matrix(matrix):
    return linalg_fn(matrix)

  @one_matrix.def_vmap
  def _stack(axis_size, in_batched, matrix):  # A vmap around one matrix: a stack.
    del axis_size
    out = over_stack(matrix) if in_batched[0] else one_matrix(matrix)
    return out, jax.tree.map(lambda _: bool(in_batched[0]), out)

  return one_matrix


def _leading_axis_sharding(sharding, ndim: int) -> NamedSharding:
  """`sharding` (a `NamedSharding`) on the first axis only, every other axis whole."""
  if not isinstance(sharding, NamedSharding):
    raise ValueError("one_matrix_per_call: a stack split over several devices needs a "
                     f"NamedSharding to keep each device's matrices local (got {sharding})")
  first = sharding.spec[0] if len(sharding.spec) else None
  return NamedSharding(sharding.mesh, PartitionSpec(first, *([None] * (ndim - 1))))


def _partitioned_loop(linalg_fn):
  """``stack [B, ...] -> lax.map(linalg_fn, stack)``, partitioned along B.

  A loop over a sharded axis would make XLA gather the whole stack onto
  every device; this one tells XLA's partitioner (`custom_partitioning`)
  that the matrices are independent, so each device loops over the
  matrices it holds, its results staying sharded like the stack.
  """
  def loop(stack):
    return jax.lax.map(linalg_fn, stack)

  def partition(mesh, arg_shapes, result_shape):
    del mesh
    (stack,) = arg_shapes
    placed = _leading_axis_sharding(stack.sharding, stack.ndim)
    results = jax.tree.map(lambda r: _leading_axis_sharding(placed, r.ndim), result_shape)
    return placed.mesh, loop, results, (placed,)

  def infer_sharding_from_operands(mesh, arg_shapes, result_shape):
    del mesh
    (stack,) = arg_shapes
    return jax.tree.map(lambda r: _leading_axis_sharding(stack.sharding, r.ndim), result_shape)

  def sharding_rule(mesh, operand_types, result_types):
    # "b i1 i2 -> b r0_1, ...": the first axis shared, every other one free.
    del mesh
    axes = lambda prefix, rank: " ".join(["b"] + [f"{prefix}{d}" for d in range(1, rank)])
    (operand,) = operand_types
    results = ", ".join(axes(f"r{j}_", len(t.shape)) for j, t in enumerate(result_types))
    return f"{axes('i', len(operand.shape))} -> {results}"

  partitioned = custom_partitioning(loop)
  partitioned.def_partition(partition=partition, sharding_rule=sharding_rule,
                            infer_sharding_from_operands=infer_sharding_from_operands)
  return partitioned


def _over_leading_axes(matrix_fn, a: jax.Array) -> jax.Array:
  """`matrix_fn` of each ``[m, n]`` matrix of ``a [..., m, n]`` (one call per matrix)."""
  if a.ndim <= 2:
    return matrix_fn(a)
  out = jax.vmap(matrix_fn)(a.reshape((-1,) + a.shape[-2:]))
  return out.reshape(a.shape[:-2] + out.shape[1:])


@one_matrix_per_call
def _svd_values(a: jax.Array) -> jax.Array:
  """``jnp.linalg.svd(a, compute_uv=False)`` of one matrix."""
  return jnp.linalg.svd(a, compute_uv=False)


@one_matrix_per_call
def _svd_thin(a: jax.Array):
  """``jnp.linalg.svd(a, full_matrices=False)`` of one matrix: ``(U, s, V^T)``."""
  return jnp.linalg.svd(a, full_matrices=False)


@jax.custom_jvp
def _matrix_singular_values(a: jax.Array) -> jax.Array:
  """Singular values of one matrix, one LAPACK call per matrix under vmap."""
  return _svd_values(a)


@_matrix_singular_values.defjvp
def _matrix_singular_values_jvp(primals, tangents):
  r"""``d sigma_i = u_i^T dA v_i`` (u_i, v_i the i-th left and right singular
  vectors), the derivative ``jnp.linalg.svd`` itself uses."""
  (a,), (da,) = primals, tangents
  u, _, vt = _svd_thin(a)
  return _svd_values(a), jnp.einsum("ki,kl,il->i", u, da, vt)


def singular_values(features: jax.Array) -> jax.Array:
  r"""Singular values of a ``[examples, features]`` matrix, largest first.

    sigma_1 >= sigma_2 >= ... >= sigma_min(examples, features) >= 0,

  the square roots of the eigenvalues of ``A^T A``, as
  ``jnp.linalg.svd(A, compute_uv=False)`` gives them (and differentiable as
  it is). Leading axes (``[..., examples, features]``), and any ``jax.vmap``
  around the call, are looped over with one matrix per LAPACK call
  (`one_matrix_per_call`), never handed to the batched kernel, which can
  deadlock a CPU host split into devices.
  """
  return _over_leading_axes(_matrix_singular_values, features)


@one_matrix_per_call
def _eigvalsh(a: jax.Array) -> jax.Array:
  """``jnp.linalg.eigvalsh(a)`` of one matrix."""
  return jnp.linalg.eigvalsh(a)


@one_matrix_per_call
def _eigh(a: jax.Array):
  """``jnp.linalg.eigh(a)`` of one matrix: ``(eigenvalues, eigenvectors)``."""
  return jnp.linalg.eigh(a)


@jax.custom_jvp
def _matrix_eigenvalues(a: jax.Array) -> jax.Array:
  """Eigenvalues of one symmetric matrix, one LAPACK call per matrix under vmap."""
  return _eigvalsh(a)


@_matrix_eigenvalues.defjvp
def _matrix_eigenvalues_jvp(primals, tangents):
  r"""``d lambda_i = v_i^T dA v_i`` (v_i the i-th eigenvector), as ``jnp.linalg.eigh``."""
  (a,), (da,) = primals, tangents
  _, v = _eigh(a)
  return _eigvalsh(a), jnp.einsum("ki,kl,li->i", v, da, v)


def symmetric_eigenvalues(matrix: jax.Array) -> jax.Array:
  r"""Eigenvalues of a symmetric ``[n, n]`` matrix in ascending order.

    A v_i = lambda_i v_i,   lambda_1 <= ... <= lambda_n,

  as ``jnp.linalg.eigvalsh(A)`` gives them (of ``(A + A^T) / 2``).
  Leading axes and any ``jax.vmap`` around the call are looped over with one
  matrix per LAPACK call (`one_matrix_per_call`).
  """
  return _over_leading_axes(_matrix_eigenvalues, matrix)


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
