"""Losses and loss terms: classification, regression, distributional targets, penalties.

Per-example losses are batched over leading axes and return one value per
example (average them yourself); every function is jittable, and
hyperparameters (``label_smoothing``, ``sigma``, ``strength``) may be traced.
"""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp

from plastix import optim


# Classification and regression.


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array,
                          label_smoothing: float | jax.Array = 0.0) -> jax.Array:
  r"""Cross-entropy with integer labels and optional label smoothing.

    targets = (1 - a) * onehot(labels, K) + a / K
    loss = -sum_k targets_k * log_softmax(logits)_k

  with ``a = label_smoothing`` and ``K = logits.shape[-1]``.

  Args:
    logits: ``[..., K]`` unnormalised log-probabilities.
    labels: ``[...]`` integer classes in ``[0, K)``.
    label_smoothing: ``a`` in [0, 1].

  Returns:
    ``[...]`` per-example losses.
  """
  num_classes = logits.shape[-1]
  onehot = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
  targets = (1.0 - label_smoothing) * onehot + label_smoothing / num_classes
  return _cross_entropy(logits, targets)


def mse(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  r"""Mean squared error over the last (output) axis: ``mean_k (y_hat_k - y_k)^2``.

  No factor 1/2. For scalar regression give predictions of shape ``[..., 1]``
  (with shape ``[B]`` the result is the batch mean, which is the same number
  once averaged).

  Args:
    predictions: ``[..., D]``.
    targets: the same shape as ``predictions`` (checked, so that ``[B]``
      against ``[B, 1]`` cannot broadcast to ``[B, B]``).

  Returns:
    ``[...]`` per-example losses.
  """
  chex.assert_equal_shape([predictions, targets])
  return jnp.mean(jnp.square(predictions - targets), axis=-1)


# Distributional (categorical) regression targets.


def two_hot(targets: jax.Array, support: jax.Array) -> jax.Array:
  r"""Two-hot encoding of scalar targets over a sorted support.

  The target is clipped to ``[z_0, z_{K-1}]``; with ``z_i <= y <= z_{i+1}`` the
  probability is split between those two atoms,

    p_i = (z_{i+1} - y) / (z_{i+1} - z_i),   p_{i+1} = (y - z_i) / (z_{i+1} - z_i),

  and is 0 elsewhere, so ``sum_k p_k z_k = clip(y)``. The support need not be
  evenly spaced.

  Args:
    targets: ``[...]`` scalar targets.
    support: ``[K]`` strictly increasing atoms, ``K >= 2``.

  Returns:
    ``[..., K]`` probabilities.
  """
  support = jnp.asarray(support)
  num_atoms = support.shape[0]
  y = jnp.clip(targets, support[0], support[-1])
  lower = jnp.clip(jnp.searchsorted(support, y, side="right") - 1, 0, num_atoms - 2)
  z_lo, z_hi = support[lower], support[lower + 1]
  w_hi = (y - z_lo) / (z_hi - z_lo)
  onehot = lambda i: jax.nn.one_hot(i, num_atoms, dtype=w_hi.dtype)
  return onehot(lower) * (1.0 - w_hi)[..., None] + onehot(lower + 1) * w_hi[..., None]


def bin_edges(support: jax.Array) -> jax.Array:
  r"""The ``K + 1`` edges of the bins centred on the atoms of a sorted support.

  Inner edges are midpoints of neighbouring atoms,
  ``e_i = (z_{i-1} + z_i) / 2`` for ``0 < i < K``; the outer edges lie half a
  neighbouring gap beyond the end atoms, ``e_0 = z_0 - (z_1 - z_0) / 2`` and
  ``e_K = z_{K-1} + (z_{K-1} - z_{K-2}) / 2``. For an evenly spaced support
  ``linspace(a, b, K)`` the bins have width ``w = (b - a) / (K - 1)`` and span
  ``[a - w/2, b + w/2]``.
  """
  support = jnp.asarray(support)
  mids = 0.5 * (support[1:] + support[:-1])
  first = support[0] - 0.5 * (support[1] - support[0])
  last = support[-1] + 0.5 * (support[-1] - support[-2])
  return jnp.concatenate([first[None], mids, last[None]])


def hl_gauss(targets: jax.Array, support: jax.Array,
             sigma: float | jax.Array) -> jax.Array:
  r"""Histogram loss targets with a Gaussian (Imani & White, 2018; Farebrother et al., 2024).

  The target ``y`` (clipped to ``[z_0, z_{K-1}]``) is smoothed by a Gaussian of
  width ``sigma`` and the mass in each bin of `bin_edges` is kept:

    p_i = (Phi((e_{i+1} - y) / sigma) - Phi((e_i - y) / sigma))
          / (Phi((e_K - y) / sigma) - Phi((e_0 - y) / sigma))

  with ``Phi(x) = (1 + erf(x / sqrt(2))) / 2`` the standard normal CDF. The
  denominator renormalises the mass that falls outside ``[e_0, e_K]``.
  Farebrother et al. recommend ``sigma = 0.75`` bin widths.

  Args:
    targets: ``[...]`` scalar targets.
    support: ``[K]`` strictly increasing atoms (bin centres), ``K >= 2``.
    sigma: the Gaussian's standard deviation, in target units.

  Returns:
    ``[..., K]`` probabilities.
  """
  support = jnp.asarray(support)
  y = jnp.clip(targets, support[0], support[-1])[..., None]
  cdf = jax.scipy.special.ndtr((bin_edges(support) - y) / sigma)
  mass = cdf[..., 1:] - cdf[..., :-1]
  return mass / (cdf[..., -1:] - cdf[..., :1])


def two_hot_loss(logits: jax.Array, targets: jax.Array, support: jax.Array) -> jax.Array:
  r"""Cross-entropy against `two_hot` targets: ``-sum_k two_hot(y)_k log_softmax(logits)_k``.

  Args:
    logits: ``[..., K]``.
    targets: ``[...]`` scalar targets (no gradient flows into them).
    support: ``[K]`` sorted atoms.

  Returns:
    ``[...]`` per-example losses.
  """
  probs = jax.lax.stop_gradient(two_hot(targets, support))
  return _cross_entropy(logits, probs)


def hl_gauss_loss(logits: jax.Array, targets: jax.Array, support: jax.Array,
                  sigma: float | jax.Array) -> jax.Array:
  r"""Cross-entropy against `hl_gauss` targets: ``-sum_k hl_gauss(y)_k log_softmax(logits)_k``.

  Args:
    logits: ``[..., K]``.
    targets: ``[...]`` scalar targets (no gradient flows into them).
    support: ``[K]`` sorted atoms.
    sigma: the Gaussian's standard deviation.

  Returns:
    ``[...]`` per-example losses.
  """
  probs = jax.lax.stop_gradient(hl_gauss(targets, support, sigma))
  return _cross_entropy(logits, probs)


def expected_value(logits: jax.Array, support: jax.Array) -> jax.Array:
  r"""The scalar prediction of a categorical output: ``sum_k softmax(logits)_k z_k``.

  Args:
    logits: ``[..., K]``.
    support: ``[K]`` atoms.

  Returns:
    ``[...]``.
  """
  return jnp.sum(jax.nn.softmax(logits, axis=-1) * support, axis=-1)


def _cross_entropy(logits: jax.Array, probs: jax.Array) -> jax.Array:
  """``-sum_k probs_k log_softmax(logits)_k`` over the last axis."""
  return -jnp.sum(probs * jax.nn.log_softmax(logits, axis=-1), axis=-1)


# Penalties added to a loss.


def l2_penalty(params, strength: float | jax.Array,
               mask: optim.MaskOrFn = None) -> jax.Array:
  r"""Coupled L2 regularization: ``(strength / 2) * sum_{masked leaves} ||p||^2``.

  Its gradient ``strength * p`` goes through the optimizer's preconditioning,
  so with Adam it equals ``optax.chain(optax.add_decayed_weights(strength,
  mask), optax.adam(lr))`` and differs from decoupled decay
  (`plastix.optim.decoupled_weight_decay`, ``optax.adamw``).

  Args:
    params: the parameters.
    strength: the coefficient (may be traced).
    mask: None (every leaf), a pytree of bools or a function of params (see
      `plastix.optim.resolve_mask`); ``plastix.optim.kernel_mask`` skips biases
      and norm parameters.

  Returns:
    A scalar.
  """
  mask_tree = optim.resolve_mask(mask, params)
  squares = jax.tree.map(
      lambda p, m: jnp.where(m, jnp.sum(jnp.square(p)), 0.0), params, mask_tree)
  return 0.5 * strength * sum(jax.tree.leaves(squares))


def grad_norm_penalty(loss_fn: Callable[..., jax.Array], params, *args,
                      strength: float | jax.Array) -> jax.Array:
  r"""Gradient-norm penalty: ``strength * ||grad_params loss_fn(params, *args)||^2``.

  The squared global L2 norm over all leaves. It is differentiable (its
  gradient, ``2 * strength * H g``, takes a Hessian-vector product), so add it
  to the training loss inside the function you differentiate.

  Args:
    loss_fn: a scalar loss ``loss_fn(params, *args)``.
    params: the parameters.
    *args: passed to ``loss_fn``.
    strength: the coefficient (keyword-only; may be traced).

  Returns:
    A scalar.
  """
  grads = jax.grad(loss_fn)(params, *args)
  return strength * sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads))
