"""Sharpness: the largest Hessian eigenvalue of a loss, by power iteration.

Hessian-vector products are forward-over-reverse (a JVP of the gradient), so
the Hessian is never formed: each product costs about two gradient
evaluations and the memory of one.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

LossFn = Callable[[Any, Any], jax.Array]


def hessian_vector_product(loss_fn: LossFn, params, batch) -> tuple[jax.Array, Callable]:
  r"""The flattened parameters and ``v -> H v`` for ``H = d^2 loss_fn(params, batch) / d params^2``.

    H v = d/dt grad L(theta + t v) |_{t=0}      (jax.jvp of jax.grad)

  `v` and ``H v`` are flat vectors in the order of
  ``jax.flatten_util.ravel_pytree(params)``. The gradient's primal computation
  is done once (``jax.linearize``); each product then costs only the tangent pass.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: the parameter pytree (float leaves).
    batch: whatever `loss_fn` takes as its data.

  Returns:
    ``(theta, hvp)`` with ``theta`` the flat parameters and ``hvp(v) = H v``.
  """
  flat, unravel = ravel_pytree(params)

  def flat_grad(theta):
    return ravel_pytree(jax.grad(loss_fn)(unravel(theta), batch))[0]

  _, hvp = jax.linearize(flat_grad, flat)
  return flat, hvp


def hessian_max_eigenvalue(loss_fn: LossFn, params, batch, key: jax.Array,
                           num_iters: int = 20) -> jax.Array:
  r"""The Hessian eigenvalue of largest magnitude, by power iteration (sharpness).

    v_0 ~ N(0, I) / ||.||,   w_t = H v_t,   lambda_t = v_t^T w_t,   v_{t+1} = w_t / ||w_t||,

  over the flattened parameters, for t = 0 .. num_iters - 1; returns the last
  Rayleigh quotient ``lambda_{num_iters-1}`` (one Hessian-vector product per
  iteration). Power iteration converges to the eigenvector of largest |lambda|,
  so the result is signed: it is negative when the most negative eigenvalue
  dominates. Convergence is geometric in |lambda_2 / lambda_1|; if +lambda and
  -lambda tie for the largest magnitude the iterate does not converge. A zero
  Hessian gives 0.

  Jittable and vmappable over a seed axis of (params, batch, key); `loss_fn` and
  `num_iters` are static.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: the parameter pytree.
    batch: the data passed to `loss_fn`.
    key: PRNG key of the random start vector.
    num_iters: number of power iterations (Hessian-vector products), >= 1.

  Returns:
    A float scalar: the Rayleigh quotient ``v^T H v`` of the final unit vector.
  """
  if num_iters < 1:
    raise ValueError(f"num_iters must be >= 1, got {num_iters}")
  flat, hvp = hessian_vector_product(loss_fn, params, batch)
  v = jax.random.normal(key, flat.shape, flat.dtype)
  v = v / jnp.linalg.norm(v)

  def body(_, carry):
    v, _ = carry
    w = hvp(v)
    norm = jnp.linalg.norm(w)
    rayleigh = jnp.vdot(v, w)
    v = jnp.where(norm > 0, w / jnp.where(norm > 0, norm, 1.0), v)
    return v, rayleigh

  _, eigenvalue = jax.lax.fori_loop(0, num_iters, body, (v, jnp.zeros([], flat.dtype)))
  return eigenvalue
