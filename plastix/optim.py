"""Optax transforms for plasticity research, usable in any optax chain."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Union

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

ScalarOrSchedule = Union[float, jax.Array, optax.Schedule]
MaskOrFn = Union[None, Any, Callable[[optax.Params], Any]]


def resolve_mask(mask: MaskOrFn, params) -> Any:
  """Turns an optax-style ``mask`` into a pytree of bools shaped like ``params``.

  Args:
    mask: None (every leaf), a pytree of bools with the structure of
      ``params`` or a prefix of it (a bool at an inner node covers its whole
      subtree, as in ``optax.masked``), or a function from params to either.
    params: the parameters (or anything with their tree structure).

  Returns:
    A pytree with exactly the structure of ``params`` whose leaves are the
    mask's bools (Python bools, or boolean arrays if the mask held arrays).
  """
  if mask is None:
    return jax.tree.map(lambda _: True, params)
  tree = mask(params) if callable(mask) else mask
  return jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub), tree, params)


def _select(m, if_true, if_false):
  """``if_true`` where the per-leaf mask ``m`` holds; static when ``m`` is a Python bool."""
  if isinstance(m, (bool, np.bool_)):
    return if_true if m else if_false
  return jnp.where(m, if_true, if_false)


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
      params (or a prefix of it), or a function from params to such a pytree
      (see `resolve_mask` and `kernel_mask`).

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
    new_updates = jax.tree.map(lambda u, p, m: _select(m, u - decay * p, u),
                               inner_updates, params, resolve_mask(mask, params))
    new_state = DecoupledWeightDecayState(
        count=optax.safe_int32_increment(state.count), inner_state=inner_state)
    return new_updates, new_state

  return optax.GradientTransformation(init_fn, update_fn)


def kernel_mask(params) -> Any:
  """True for weight matrices (leaves named ``kernel``), False for everything else.

  With flax linen this selects the kernels of ``Dense``, ``DenseGeneral`` (so
  attention projections), ``Conv`` and ``ConvTranspose`` (so a ViT's patch
  embedding), and leaves out biases, the ``scale`` and ``bias`` of
  ``LayerNorm``, ``BatchNorm`` and ``RMSNorm`` (BatchNorm's running statistics
  live in the ``batch_stats`` collection, not in params), token embeddings
  (``Embed``'s ``embedding``), positional embeddings and class tokens. Leaving
  embeddings undecayed is deliberate and follows the usual ViT recipe of
  decaying kernels only; pass a mask of your own to decay them too.

  Args:
    params: a pytree of parameters (dicts keyed by name, as flax makes them).

  Returns:
    A pytree of Python bools with the structure of ``params``.
  """
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


def training_optimizer(name: str, learning_rate, weight_decay, *, b1=0.9, b2=0.999, eps=1e-8,
                       weight_decay_mask: str = "all", l2_init_strength=None,
                       normalize_and_project_kernels: bool = False
                       ) -> optax.GradientTransformation:
  """The optimizer every plastix learner trains with: `make_optimizer`, with
  `l2_init` before it when ``l2_init_strength`` is given (the pull towards the
  initial parameters, over the same mask as the decay) and
  `normalize_and_project` of the kernels after it when asked."""
  opt = make_optimizer(name, learning_rate, weight_decay, b1=b1, b2=b2, eps=eps,
                       weight_decay_mask=weight_decay_mask)
  if l2_init_strength is not None:
    opt = optax.chain(l2_init(l2_init_strength, mask=WEIGHT_DECAY_MASKS[weight_decay_mask]), opt)
  if normalize_and_project_kernels:
    opt = optax.chain(opt, normalize_and_project(mask=kernel_mask))
  return opt


def _leaf_norm(x: jax.Array) -> jax.Array:
  """Frobenius norm of one array, computed in float32."""
  return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32))))


# Regenerative (L2-to-init) regularization.


class L2InitState(NamedTuple):
  """State of `l2_init`: the parameters captured at ``init``."""
  init_params: optax.Params


def l2_init(strength: float | jax.Array, mask: MaskOrFn = None
            ) -> optax.GradientTransformation:
  r"""Regenerative regularization (Kumar et al., 2023): pull towards the init.

  Adds to the incoming gradient of every masked leaf

    g_t <- g_t + strength * (p_t - p_0)

  where ``p_0`` are the parameters given to ``init`` and kept in the state.
  This is the gradient of ``(strength / 2) * ||p - p_0||^2`` summed over the
  masked leaves, so ``optax.chain(l2_init(s), optax.adam(lr))`` equals Adam on
  the loss plus that penalty. Put it before the optimizer in a chain (it acts on
  gradients, as ``optax.add_decayed_weights`` does).

  Args:
    strength: the coefficient (a float, or a traced array so that it can be
      vmapped over a grid).
    mask: None (every leaf), a pytree of bools or a function of params (see
      `resolve_mask`); unmasked leaves pass through unchanged.

  Returns:
    An `optax.GradientTransformation` with an `L2InitState`; it needs
    ``params`` in ``update``.
  """

  def init_fn(params):
    return L2InitState(init_params=jax.tree.map(jnp.asarray, params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("l2_init needs params in update().")
    mask_tree = resolve_mask(mask, params)
    new_updates = jax.tree.map(
        lambda g, p, p0, m: _select(m, g + strength * (p - p0), g),
        updates, params, state.init_params, mask_tree)
    return new_updates, state

  return optax.GradientTransformation(init_fn, update_fn)


# Normalize-and-project.


class NormalizeAndProjectState(NamedTuple):
  """State of `normalize_and_project`: each leaf's Frobenius norm at ``init``."""
  init_norms: Any  # A pytree of float32 scalars shaped like params.


def normalize_and_project(mask: MaskOrFn = None) -> optax.GradientTransformation:
  r"""Projects each weight back to its initial norm (Lyle et al., 2024).

  For every masked leaf, with ``p`` the current parameters, ``u`` the incoming
  update and ``p_0`` the parameters given to ``init``:

    u' = (p + u) * ||p_0|| / ||p + u|| - p

  so that after ``optax.apply_updates`` the leaf is ``p + u`` rescaled to the
  Frobenius norm it had at init. Unmasked leaves pass through unchanged. A leaf
  whose initial norm is 0 (a zero-initialised bias) has no sphere to project
  onto and is left unprojected, as is a leaf whose ``p + u`` is exactly 0. Pass
  ``mask=kernel_mask`` to project weight matrices only; the paper pairs the
  projection with a normalization layer before each nonlinearity.

  It must be the last transform of a chain: it rewrites the final update from
  the parameters, and anything after it would move them off the sphere.

  Args:
    mask: None (every leaf), a pytree of bools or a function of params (see
      `resolve_mask`).

  Returns:
    An `optax.GradientTransformation` with a `NormalizeAndProjectState`; it
    needs ``params`` in ``update``.
  """

  def init_fn(params):
    return NormalizeAndProjectState(init_norms=jax.tree.map(_leaf_norm, params))

  def project(u, p, norm0):
    moved = p + u
    norm = _leaf_norm(moved)
    ok = (norm > 0) & (norm0 > 0)
    scale = jnp.where(ok, norm0 / jnp.where(ok, norm, 1.0), 1.0)
    return (moved * scale - p).astype(u.dtype)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("normalize_and_project needs params in update().")
    mask_tree = resolve_mask(mask, params)
    new_updates = jax.tree.map(
        lambda u, p, n0, m: _select(m, project(u, p, n0), u),
        updates, params, state.init_norms, mask_tree)
    return new_updates, state

  return optax.GradientTransformation(init_fn, update_fn)


# Sharpness-aware minimization.


def normalize_by_global_norm(eps: float = 1e-12) -> optax.GradientTransformation:
  r"""Divides the updates by their global norm: ``u <- u / (||u|| + eps)``.

  The ``eps`` keeps an all-zero gradient finite (it stays 0), unlike
  ``optax.contrib.normalize``.
  """

  def update_fn(updates, state, params=None):
    del params
    norm = optax.tree.norm(updates)
    return jax.tree.map(lambda u: u / (norm + eps), updates), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def sam(optimizer: optax.GradientTransformation, rho: float | jax.Array,
        *, eps: float = 1e-12) -> optax.GradientTransformationExtraArgs:
  r"""Sharpness-aware minimization (Foret et al., 2021) around ``optimizer``.

  One call to ``update`` with gradient ``g`` at parameters ``p`` takes the
  adversarial step and the real one:

    e = rho * g / (||g|| + eps)          (global norm over all leaves)
    g_sam = grad L(p + e)
    update = optimizer.update(g_sam, ., p)

  This is ``optax.contrib.sam`` in opaque mode with ``sync_period=2`` and a
  normalized-SGD adversary, so every call is a full SAM step and the training
  loop never sees the perturbed parameters. The calling convention differs from
  plain optax: ``update`` needs the keyword ``grad_fn(params, i) -> grads``
  (``i`` is the adversarial step, always 0 here), for instance from
  `sam_grad_fn`::

    updates, state = tx.update(grads, state, params,
                               grad_fn=sam_grad_fn(loss_fn, batch))

  It works inside ``jax.jit``, ``jax.vmap`` (``rho`` may be traced) and
  ``lax.scan``; ``optax.chain`` forwards ``grad_fn`` to it. Wrap the whole
  optimizer (for instance ``make_optimizer(...)``) rather than chaining SAM
  after it. A loss with side effects (BatchNorm statistics) must compute them
  outside ``grad_fn``.

  Args:
    optimizer: the outer optimizer that consumes the SAM gradient.
    rho: the radius of the adversarial step.
    eps: added to the gradient norm so that a zero gradient stays finite.

  Returns:
    An `optax.GradientTransformationExtraArgs`; ``update`` needs ``params`` and
    ``grad_fn``.
  """
  adversary = optax.chain(normalize_by_global_norm(eps), optax.sgd(rho))
  return optax.contrib.sam(optimizer, adversary, sync_period=2, opaque_mode=True)


def sam_grad_fn(loss_fn: Callable[..., jax.Array], *args
                ) -> Callable[[optax.Params, int], optax.Updates]:
  """The ``grad_fn`` that `sam` needs: ``(params, i) -> grad loss_fn(params, *args)``."""
  return lambda params, _: jax.grad(loss_fn)(params, *args)


# Deliberate optimizer-state resets.

# States holding the anchors of a regularizer rather than running statistics.
_ANCHOR_STATES = (L2InitState, NormalizeAndProjectState)


def reset_moments(optimizer: optax.GradientTransformation, opt_state: optax.OptState,
                  params_mask) -> optax.OptState:
  r"""Zeroes the optimizer statistics of the masked parameter entries.

  Every param-shaped leaf of the state (found with
  ``optax.tree_utils.tree_map_params``: Adam's ``mu`` and ``nu``, SGD's
  momentum trace, ...) becomes ``where(params_mask, 0, leaf)``. Everything else
  is kept: step counts (Adam's ``count``, ``DecoupledWeightDecayState.count``,
  schedules' counts) are unchanged, and so are the anchors of `l2_init`
  (``p_0``) and `normalize_and_project` (the init norms): a partial reset does
  not re-anchor. This is the optimizer half of ReDo (Sokar et al., 2023).

  Because Adam's count is shared, the next Adam update of a reset entry at step
  t (counting from 1) is ``-lr * m / (sqrt(v) + eps)`` with
  ``m = (1 - b1) g / (1 - b1^t)`` and ``v = (1 - b2) g^2 / (1 - b2^t)``: late in
  training about ``(1 - b1) / sqrt(1 - b2) * lr`` in size (3.2 lr with the
  defaults), larger than a fresh Adam's first step of ``lr``.

  Args:
    optimizer: the transformation that made ``opt_state`` (used only to find
      which parts of the state are param-shaped). States of ``optax.masked``
      are not supported (a pytree structure error is raised).
    opt_state: the state to reset.
    params_mask: a pytree with the structure of params whose leaves are
      booleans broadcastable to each parameter: arrays of its shape, or
      scalars for the whole leaf (True: reset that entry).

  Returns:
    The new state, with the structure, shapes and dtypes of ``opt_state``.
  """
  zeroed = optax.tree_utils.tree_map_params(
      optimizer, lambda x, m: jnp.where(m, jnp.zeros_like(x), x), opt_state,
      params_mask)
  is_anchor = lambda x: isinstance(x, _ANCHOR_STATES)
  return jax.tree.map(lambda old, new: old if is_anchor(old) else new,
                      opt_state, zeroed, is_leaf=is_anchor)


def reset_optimizer_state(optimizer: optax.GradientTransformation,
                          params: optax.Params) -> optax.OptState:
  r"""A full optimizer reset: ``optimizer.init(params)``.

  Adam's ``mu`` and ``nu`` become 0 and its ``count`` 0, so the next update is a
  first step again (bias correction included); ``DecoupledWeightDecayState.count``
  and schedule counts restart at 0 (a decay schedule starts over). The anchors
  are re-captured from ``params``: `l2_init` then pulls towards the parameters
  given here, and `normalize_and_project` keeps each leaf at its norm here. Pass
  freshly initialised parameters after a full network reset; to reset part of
  the network and keep the anchors, use `reset_moments`.

  Args:
    optimizer: the transformation whose state is reset.
    params: the parameters after the reset.

  Returns:
    A fresh optimizer state.
  """
  return optimizer.init(params)
