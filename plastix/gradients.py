"""Gradient interference: how aligned the per-example gradients of a loss are.

Per-example gradients pointing in similar directions (mean cosine near 1)
mean that an update for one example moves the loss of every other one; near 0
they are roughly orthogonal; negative means examples pull against each other.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

LossFn = Callable[[Any, Any], jax.Array]


def per_example_grads(loss_fn: LossFn, params, batch):
  r"""``g_n = grad_theta loss_fn(theta, batch_n)`` for every example n (``vmap(grad)``).

  Each example is passed to `loss_fn` as a batch of one (every leaf of `batch`
  keeps a leading axis of size 1), so `loss_fn` is the usual batched loss.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: the parameter pytree.
    batch: a pytree whose leaves share a leading example axis of size n.

  Returns:
    A pytree like `params` whose leaves gain a leading axis of size n.
  """
  def one(example):
    return jax.grad(loss_fn)(params, jax.tree.map(lambda a: a[None], example))

  return jax.vmap(one)(batch)


def gradient_alignment(grads) -> jax.Array:
  r"""Mean pairwise cosine between per-example gradients, off-diagonal pairs only.

    u_n = g_n / ||g_n||   (u_n = 0 when g_n = 0),
    A = 1 / (n (n - 1)) sum_{i != j} <u_i, u_j>
      = ( ||sum_n u_n||^2 - sum_n ||u_n||^2 ) / (n (n - 1)),

  with the norms and inner products over the whole flattened parameter
  vector. The second form costs O(n params) instead of O(n^2 params). A pair
  with a zero gradient counts as cosine 0. In [-1/(n-1), 1].

  Args:
    grads: per-example gradients: a pytree whose leaves have a leading example axis n >= 2
      (e.g. from `per_example_grads`, or one ``[n, d]`` array).

  Returns:
    A float32 scalar.
  """
  leaves = [g.reshape(g.shape[0], -1).astype(jnp.float32)
            for g in jax.tree.leaves(grads)]
  n = leaves[0].shape[0]
  if n < 2:
    raise ValueError(f"gradient_alignment needs at least 2 examples, got {n}")
  sq_norms = sum(jnp.sum(jnp.square(g), axis=1) for g in leaves)
  norms = jnp.sqrt(sq_norms)
  inv = jnp.where(norms > 0, 1.0 / jnp.where(norms > 0, norms, 1.0), 0.0)
  sum_sq = sum(jnp.sum(jnp.square(jnp.sum(g * inv[:, None], axis=0))) for g in leaves)
  num_nonzero = jnp.sum(norms > 0)
  return (sum_sq - num_nonzero) / (n * (n - 1))


def loss_gradient_alignment(loss_fn: LossFn, params, batch) -> jax.Array:
  """`gradient_alignment` of the `per_example_grads` of `loss_fn` on `batch`."""
  return gradient_alignment(per_example_grads(loss_fn, params, batch))
