"""Optax transforms for plasticity research, usable in any optax chain."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Union

import chex
import jax
import jax.numpy as jnp
import optax

ScalarOrSchedule = Union[float, jax.Array, optax.Schedule]
MaskOrFn = Union[None, Any, Callable[[optax.Params], Any]]


class DecoupledWeightDecayState(NamedTuple):
  """State of `decoupled_weight_decay`: a step count and the inner state."""
  count: chex.Array  # int32 scalar: number of updates so far.
  inner_state: optax.OptState


def decoupled_weight_decay(
    inner: optax.GradientTransformation,
    weight_decay: float | jax.Array,
    learning_rate: ScalarOrSchedule,
    mask: MaskOrFn = None,
) -> optax.GradientTransformation:
  r"""Adds decoupled weight decay (Loshchilov & Hutter, 2019) to any optimizer.

  The update at step t is

    u_t = inner_update_t - lr_t * weight_decay * p_t      (masked leaves)
    u_t = inner_update_t                                  (other leaves)

  where ``lr_t`` is ``learning_rate`` (or ``learning_rate(t)`` for a
  schedule, with t counted from 0). With ``inner = optax.adam(lr)`` this equals
  ``optax.adamw(lr, weight_decay=weight_decay)``; with ``inner = optax.sgd(lr)``
  the new parameters are ``p - lr * g - lr * weight_decay * p``.

  Args:
    inner: the optimizer whose updates are decayed (already scaled by its
      learning rate, as every optax optimizer is).
    weight_decay: the decay strength (a float, or a traced array so that it
      can be vmapped over a grid).
    learning_rate: the learning rate that multiplies the decay: a scalar or an
      optax schedule of the step count.
    mask: None (decay every leaf), a pytree of bools with the structure of the
      params, or a function from params to such a pytree (see `kernel_mask`).

  Returns:
    An `optax.GradientTransformation`; it needs ``params`` in ``update``.
  """

  def init_fn(params):
    return DecoupledWeightDecayState(
        count=jnp.zeros([], jnp.int32), inner_state=inner.init(params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("decoupled_weight_decay needs params in update().")
    inner_updates, inner_state = inner.update(updates, state.inner_state, params)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    decay = lr * weight_decay
    mask_tree = mask(params) if callable(mask) else mask
    if mask_tree is None:
      new_updates = jax.tree.map(lambda u, p: u - decay * p, inner_updates, params)
    else:
      new_updates = jax.tree.map(
          lambda u, p, m: u - decay * p if m else u, inner_updates, params, mask_tree)
    new_state = DecoupledWeightDecayState(
        count=optax.safe_int32_increment(state.count), inner_state=inner_state)
    return new_updates, new_state

  return optax.GradientTransformation(init_fn, update_fn)


def kernel_mask(params) -> Any:
  """True for weight matrices (leaves named ``kernel``), False for biases and norm scales."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


WEIGHT_DECAY_MASKS = {"all": None, "kernels": kernel_mask}
OPTIMIZERS = ("adam", "sgd")


def make_optimizer(name: str, learning_rate, weight_decay, *, b1=0.9, b2=0.999,
                   eps=1e-8, weight_decay_mask: str = "all") -> optax.GradientTransformation:
  """``decoupled_weight_decay`` around ``optax.adam`` or ``optax.sgd``.

  Hyperparameters may be traced arrays, so one compiled program serves a grid.
  """
  if name == "adam":
    inner = optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
  elif name == "sgd":
    inner = optax.sgd(learning_rate)
  else:
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
  if weight_decay_mask not in WEIGHT_DECAY_MASKS:
    raise ValueError(f"unknown weight_decay_mask {weight_decay_mask!r}; "
                     f"choose one of {tuple(WEIGHT_DECAY_MASKS)}")
  return decoupled_weight_decay(inner, weight_decay, learning_rate,
                                mask=WEIGHT_DECAY_MASKS[weight_decay_mask])
