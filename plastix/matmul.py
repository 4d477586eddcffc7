r"""A dense layer's matrix product whose kernel gradient comes out in the kernel's layout.

For ``y = x W`` with ``x: [..., n]`` and ``W: [n, m]`` the gradients are

    dL/dx = g W^T                     [..., n]
    dL/dW = sum_{...} x^T g           [n, m]     (g = dL/dy, summed over every
                                                  leading axis of x)

which is what JAX's autodiff computes too. The difference is only in how the
kernel gradient is laid out: JAX's transpose rule for `lax.dot_general` forms
``g^T x``, ``[m, n]``, and transposes it. Outside `jax.vmap` XLA folds that
transpose into the product; under `jax.vmap` over seeds it cannot (the product
is batched), and when each device holds one seed (a size-1 batch axis) the
gradient stays ``[m, n]`` and every optimizer update then reads it with a
stride. `dense_dot_general` computes ``dL/dW`` directly as the ``[n, m]``
product (``lax.dot_general`` contracting the leading axes of x and g), so the
optimizer reads it in order. Measured on a 2-vCPU Intel Xeon (jax 0.10.2),
the engine's training of a width-256 MLP with Adam took 14-20% less time with
one seed per device, and the same with four seeds per device or at width 32.
The gradients are those of autodiff up to float rounding (tested).

It is reverse-mode only (a `jax.custom_vjp`): forward-mode differentiation of
it (`jax.jvp`, `jax.linearize`, Hessian-vector products) raises. The engine
uses it for the training gradient alone (`plastix.models.training_model`);
the probes differentiate the plain model.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def dense_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                      preferred_element_type=None) -> jax.Array:
  """`lax.dot_general` as flax's `nn.Dense` calls it (its ``dot_general``
  argument), differentiated as `kernel_layout_matmul`.

  Other dimension numbers than a Dense layer's (contract the last axis of
  `lhs` with the first of a rank-2 `rhs`, no batch axes) fall back to
  `lax.dot_general`, as does a `preferred_element_type`.
  """
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  is_dense = (rhs.ndim == 2 and tuple(lhs_contract) == (lhs.ndim - 1,)
              and tuple(rhs_contract) == (0,) and not lhs_batch and not rhs_batch)
  if not is_dense or preferred_element_type is not None:
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type)
  return kernel_layout_matmul(lhs, rhs, precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def kernel_layout_matmul(x: jax.Array, w: jax.Array, precision=None) -> jax.Array:
  """``x @ w`` over the last axis of `x`: ``[..., n] x [n, m] -> [..., m]``."""
  return _matmul(x, w, precision)


def _matmul(x, w, precision):
  return lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)


def _forward(x, w, precision):
  # symbolic_zeros: x and w come as `CustomVJPPrimal`s, which say whether each
  # is differentiated. An input that is not (a first layer's data) needs no
  # gradient, so no product is traced for it. (Whether it is travels as the
  # residuals' structure: a pair, or x alone with W's dtype.)
  if x.perturbed:
    residuals = (x.value, w.value)
  else:
    residuals = (x.value, jnp.zeros((0,), w.value.dtype))
  return _matmul(x.value, w.value, precision), residuals


def _backward(precision, residuals, g):
  x, w = residuals
  leading = tuple(range(x.ndim - 1))
  dw = lax.dot_general(x, g, ((leading, leading), ((), ())), precision=precision)
  if w.ndim == 1:  # x is not differentiated
    return None, dw.astype(w.dtype)
  dx = lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())), precision=precision)
  return dx.astype(x.dtype), dw.astype(w.dtype)


kernel_layout_matmul.defvjp(_forward, _backward, symbolic_zeros=True)


def patches_conv(lhs: jax.Array, rhs: jax.Array, window_strides, padding, lhs_dilation=None,
                 rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                 batch_group_count: int = 1, precision=None,
                 preferred_element_type=None) -> jax.Array:
  r"""A 2-D convolution as one matrix product over image patches (`nn.Conv`'s
  ``conv_general_dilated`` argument).

  For NHWC inputs ``x`` and an HWIO kernel ``K`` ``[kh, kw, C, O]``, after
  padding ``x`` as ``padding`` says (``"SAME"``, ``"VALID"`` or pairs),

    y[b, i, j, o] = sum_{u, v, c} x[b, s_h i + u, s_w j + v, c] K[u, v, c, o]
                  = P[b, i, j, :] . vec(K)[:, o],

  where ``P[b, i, j]`` is the patch ``x[b, s_h i : s_h i + kh, s_w j : s_w j + kw, :]``
  flattened in (u, v, c) order, built from ``kh * kw`` strided slices, and
  ``vec(K)`` is the kernel reshaped to ``[kh kw C, O]``: the same function as
  `lax.conv_general_dilated`. The product is `kernel_layout_matmul`, so the
  kernel's gradient is ``P^T g`` in the kernel's layout.

  Why: under `jax.vmap` over seeds, each seed has its own kernel, and XLA's CPU
  backend runs the batched convolution as a grouped one, which measured ~5x
  slower than these slices and one batched product for the MinAtar network
  (a 3x3 conv of 16 channels on 10x10 inputs, batch 64, 8 seeds, 2-vCPU Xeon).
  Reverse-mode only, like `kernel_layout_matmul`; other layouts, dilations,
  groups or a `preferred_element_type` fall back to `lax.conv_general_dilated`.
  """
  plain = (lhs.ndim == 4 and rhs.ndim == 4 and feature_group_count == 1
           and batch_group_count == 1 and preferred_element_type is None
           and all(d in (None, 1) for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
           and dimension_numbers is not None
           and tuple(dimension_numbers) == lax.conv_dimension_numbers(
               lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC")))
  if not plain:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type)
  kh, kw, cin, cout = rhs.shape
  _, h, w, _ = lhs.shape
  sh, sw = window_strides
  if isinstance(padding, str):
    padding = lax.padtype_to_pads((h, w), (kh, kw), window_strides, padding)
  (top, bottom), (left, right) = padding
  x = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
  out_h = (h + top + bottom - kh) // sh + 1
  out_w = (w + left + right - kw) // sw + 1
  cols = [x[:, u:u + sh * (out_h - 1) + 1:sh, v:v + sw * (out_w - 1) + 1:sw, :]
          for u in range(kh) for v in range(kw)]
  return kernel_layout_matmul(jnp.concatenate(cols, axis=-1),
                              rhs.reshape(kh * kw * cin, cout), precision)
