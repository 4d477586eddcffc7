"""Parameter resets: pure functions on parameters and optimizer state.

Every function takes one network's parameters (and, where it touches it, the
optimizer state) and returns new ones; nothing is mutated. Layer names and
other structure are static Python values; strengths and thresholds may be
traced, so every function is jittable and vmappable over a leading seed axis.
The caller supplies ``fresh_params``, a new initialisation of the same model
drawn with a fresh key (``model.init(key, x)["params"]``, vmapped over keys
for many seeds).

What each reset does to the optimizer state (Adam's ``mu``, ``nu`` and step
``count``; see `plastix.optim.reset_moments` for other optimizers):

| function                | parameters                        | mu, nu                 | counts    |
|-------------------------|-----------------------------------|------------------------|-----------|
| `shrink_and_perturb`    | every (masked) leaf               | not touched            | unchanged |
| `redo`, `reset_units`   | incoming and outgoing weights of  | zeroed at exactly the  | unchanged |
|                         | the reset units, their norm       | changed entries        |           |
|                         | entries                           |                        |           |
| `reset_norm_statistics` | none (running norm statistics)    | not touched            | unchanged |
| `reset_head`            | the head's leaves                 | zeroed on the head     | unchanged |
| `inject_plasticity`     | the injected tail's leaves        | zeroed on the tail     | unchanged |
| `full_reset`            | all                               | 0 (``optimizer.init``) | 0         |

A partial reset keeps the step count, so Adam's bias correction is already
near 1 and the first update of a reset entry is about ``3.2 * lr`` in size with
the default betas (see `plastix.optim.reset_moments`).

`maybe_reset` runs any of them on a schedule inside ``lax.scan``.
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import optax

from plastix import optim
from plastix import probes

# The resets an experiment can run at task ends, by name (``"redo+head_reset"``).
METHODS = ("redo", "shrink_and_perturb", "head_reset", "full_reset")


def parse_methods(text: str) -> tuple[str, ...]:
  """``"redo+head_reset"`` as ``("redo", "head_reset")``; ``()`` for an empty string.
  Names are not checked (see `METHODS`)."""
  text = text.strip()
  return tuple(p.strip() for p in text.split("+")) if text else ()


# ``(layer, next_layer)``, or ``(layer, next_layer, norm)`` with norm a module
# name or None (no norm to reset).
LayerSpec = Union[Tuple[str, str], Tuple[str, str, Optional[str]]]


# ----------------------------------------------------------------------------
# Helpers.


def _check_same_shapes(params, fresh_params, what: str = "fresh_params") -> None:
  if jax.tree.structure(params) != jax.tree.structure(fresh_params):
    raise ValueError(f"{what} must have the tree structure of params: "
                     f"{jax.tree.structure(fresh_params)} vs {jax.tree.structure(params)}")
  for path, p, q in zip(*_paths_and_leaves(params), jax.tree.leaves(fresh_params)):
    if jnp.shape(p) != jnp.shape(q):
      raise ValueError(f"{what} leaf {path} has shape {jnp.shape(q)}, "
                       f"params has {jnp.shape(p)}")


def _paths_and_leaves(tree):
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [jax.tree_util.keystr(k) for k, _ in flat], [v for _, v in flat]


def _module(params, name: str, role: str):
  if name not in params:
    raise ValueError(f"{role} {name!r} is not a top-level module of params "
                     f"(modules: {sorted(params)})")
  return params[name]


def _leaf_name(path) -> Tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _mask_tree(params, entries: dict) -> Any:
  """A boolean params-shaped tree: ``entries[(module, leaf)]`` where given, else False."""

  def leaf(path, p):
    m = entries.get(_leaf_name(path))
    return jnp.zeros(jnp.shape(p), bool) if m is None else m

  return jax.tree_util.tree_map_with_path(leaf, params)


def _module_mask(params, modules: Sequence[str]) -> Any:
  """True on every entry of the named top-level modules, False elsewhere."""
  names = set(modules)
  return jax.tree_util.tree_map_with_path(
      lambda path, p: jnp.full(jnp.shape(p), _leaf_name(path)[0] in names), params)


def _replace_modules(params, source, modules: Sequence[str]):
  """``params`` with the named top-level modules taken from ``source``."""
  for name in modules:
    _module(params, name, "module")
    _module(source, name, "module")
  return {**params, **{name: source[name] for name in modules}}


def _reset_moments(optimizer, opt_state, params_mask):
  if opt_state is None:
    return None
  if optimizer is None:
    raise ValueError("an optimizer is needed to reset the moments of opt_state")
  return optim.reset_moments(optimizer, opt_state, params_mask)


# ----------------------------------------------------------------------------
# Shrink and perturb.


def shrink_and_perturb(params, fresh_params, shrink: float | jax.Array,
                       perturb: float | jax.Array, mask: optim.MaskOrFn = None):
  r"""Shrink-and-perturb (Ash & Adams, 2020) of every (masked) parameter leaf.

    p <- shrink * p + perturb * p_fresh      (masked leaves)
    p <- p                                   (other leaves)

  ``shrink = 1, perturb = 0`` is the identity; ``shrink = 0, perturb = 1`` is a
  full re-initialisation of the parameters. Running statistics (batch and
  hybrid norms' ``batch_stats``) are not parameters and are left as they are.

  Optimizer state: not an argument, so it is left as it is (Adam's ``mu``,
  ``nu`` and step count unchanged). This is the default here because every
  weight keeps a (shrunken) copy of its value, so the running gradient
  statistics still describe the same units. To clear them as well, follow with
  ``optim.reset_moments(optimizer, opt_state, jax.tree.map(lambda p: True, params))``
  (moments zeroed, counts kept); to restart the optimizer (moments and counts
  to 0), use ``optim.reset_optimizer_state(optimizer, new_params)``.

  Args:
    params: the current parameters.
    fresh_params: a new initialisation of the same model (fresh key).
    shrink: lambda, the factor on the current parameters (may be traced).
    perturb: sigma, the factor on the fresh parameters (may be traced).
    mask: None (every leaf), or an optax-style mask (a pytree of bools, a
      prefix of params, or a function of params) choosing the leaves to change.

  Returns:
    The new parameters, with the structure and dtypes of ``params``.
  """
  _check_same_shapes(params, fresh_params)
  mask_tree = optim.resolve_mask(mask, params)

  def one(p, q, m):
    new = (shrink * p + perturb * q).astype(jnp.result_type(p))
    if isinstance(m, bool):
      return new if m else p
    return jnp.where(m, new, p)

  return jax.tree.map(one, params, fresh_params, mask_tree)


# ----------------------------------------------------------------------------
# ReDo.


class RedoInfo(NamedTuple):
  """What `redo` / `reset_units` changed.

  Attributes:
    unit_masks: one boolean ``[units]`` array per entry of ``layers`` (in that
      order): True for the units that were reset.
    params_mask: a boolean params-shaped tree: True on every entry that was
      re-initialised or zeroed (incoming weights, biases, norm entries,
      outgoing weights); Adam's moments were zeroed on exactly these entries.
    num_reset: int32, the number of units reset over all layers.
  """
  unit_masks: Tuple[jax.Array, ...]
  params_mask: Any
  num_reset: jax.Array


def dormant_masks(activations: Sequence[jax.Array], tau: float | jax.Array = 0.0
                  ) -> Tuple[jax.Array, ...]:
  r"""Tau-dormant units of each layer: ``s_i <= tau``, s from `probes.dormant_scores`.

    m_i = mean_{batch, space} |a_{., i}|,   s_i = m_i / (mean_j m_j + 1e-9)

  ``tau = 0`` selects the dead units (zero on the whole batch).

  Args:
    activations: per hidden layer, ``[batch, ..., units]`` activations (after
      the nonlinearity) on the probe batch; computed in float32.
    tau: the dormancy threshold (may be traced).

  Returns:
    One boolean ``[units]`` array per layer.
  """
  return tuple(probes.dormant_scores(jnp.asarray(a).astype(jnp.float32)) <= tau
               for a in activations)


def _norm_names(params, layers: Sequence[LayerSpec]) -> list[Optional[str]]:
  """The norm module of each layer: the third entry if given, else ``norm_{i}`` if present."""
  names = []
  for spec in layers:
    if len(spec) == 3:
      names.append(spec[2])
      continue
    match = re.fullmatch(r".*_(\d+)", spec[0])
    guess = f"norm_{match.group(1)}" if match else None
    names.append(guess if guess in params else None)
  given = [n for n in names if n is not None]
  if len(given) != len(set(given)):
    raise ValueError(
        f"two layers of {layers} use the same norm module ({names}); name each "
        "layer's norm explicitly with (layer, next_layer, norm) triples, None for none")
  return names


def reset_masks(params, layers: Sequence[LayerSpec], unit_masks: Sequence[jax.Array]
                ) -> Tuple[Any, Any]:
  r"""The entries that a reset of the given units re-initialises and zeroes.

  For each ``(layer, next_layer[, norm])`` with unit mask ``u`` (``[C]``, C the
  layer's output units or channels):

  * incoming (re-initialised): ``layer``'s ``kernel[..., c]`` (a dense column
    or a conv output channel) and ``bias[c]``; the norm's ``scale[c]`` and
    ``bias[c]``;
  * outgoing (zeroed): ``next_layer``'s kernel entries that read unit c: row c
    of a dense kernel after a dense layer; the input-channel slice
    ``[..., c, :]`` of a conv kernel; after a conv layer and an NHWC
    (channel-fastest, row-major) flatten, every row r of a dense kernel with
    ``r % C == c`` (this also covers pooling before the flatten).

  The norm of a pair is ``norm_{i}`` for a layer named ``*_{i}`` when params
  has such a module, unless a triple names it (or None).

  Args:
    params: the parameters (only shapes and names are read).
    layers: the ``(layer, next_layer)`` pairs (or triples), in forward order.
    unit_masks: one boolean ``[C]`` array per pair.

  Returns:
    ``(incoming, outgoing)``, two boolean params-shaped trees.

  Raises:
    ValueError: a module is missing, listed twice in the same role, or a shape
      does not fit (a unit mask, a norm, or ``next_layer``'s input size).
  """
  if len(layers) != len(unit_masks):
    raise ValueError(f"{len(layers)} layers but {len(unit_masks)} unit masks / activations")
  norms = _norm_names(params, layers)
  incoming, outgoing = {}, {}
  for spec, norm, u in zip(layers, norms, unit_masks):
    if len(spec) not in (2, 3):
      raise ValueError(f"a layer entry is (layer, next_layer) or (layer, next_layer, norm), "
                       f"got {spec!r}")
    name, next_name = spec[0], spec[1]
    layer, nxt = _module(params, name, "layer"), _module(params, next_name, "next layer")
    if "kernel" not in layer or "kernel" not in nxt:
      raise ValueError(f"layers {name!r} and {next_name!r} need a 'kernel' leaf")
    if (name, "kernel") in incoming:
      raise ValueError(f"layer {name!r} is listed twice in {layers}")
    if (next_name, "kernel") in outgoing:
      raise ValueError(f"next layer {next_name!r} is listed twice in {layers}")
    u = jnp.asarray(u)
    kernel_shape = jnp.shape(layer["kernel"])
    units = kernel_shape[-1]
    if u.shape != (units,):
      hint = (" (twice the units: CReLU activations, which ReDo here does not support)"
              if u.shape == (2 * units,) else "")
      raise ValueError(f"layer {name!r} has {units} units (kernel {kernel_shape}) but its "
                       f"activations / unit mask have shape {u.shape}{hint}")
    u = u.astype(bool)
    incoming[(name, "kernel")] = jnp.broadcast_to(u, kernel_shape)
    for leaf, value in layer.items():
      if leaf == "kernel":
        continue
      if jnp.shape(value) != (units,):
        raise ValueError(f"leaf {name}/{leaf} has shape {jnp.shape(value)}; "
                         f"expected ({units},)")
      incoming[(name, leaf)] = u
    if norm is not None:
      for leaf, value in _module(params, norm, "norm").items():
        if jnp.shape(value) != (units,):
          raise ValueError(f"norm {norm}/{leaf} has shape {jnp.shape(value)}; layer {name!r} "
                           f"has {units} units")
        incoming[(norm, leaf)] = u
    next_shape = jnp.shape(nxt["kernel"])
    if len(next_shape) == 2:
      fan_in = next_shape[0]
      conv_to_dense = len(kernel_shape) > 2
      if (fan_in % units) if conv_to_dense else (fan_in != units):
        raise ValueError(
            f"{next_name!r} kernel {next_shape} cannot read the {units} units of {name!r}"
            + (" through an NHWC flatten" if conv_to_dense else ""))
      rows = u[jnp.arange(fan_in) % units]
      outgoing[(next_name, "kernel")] = jnp.broadcast_to(rows[:, None], next_shape)
    else:
      if next_shape[-2] != units:
        raise ValueError(f"{next_name!r} kernel {next_shape} has {next_shape[-2]} input "
                         f"channels; {name!r} has {units}")
      outgoing[(next_name, "kernel")] = jnp.broadcast_to(u[:, None], next_shape)
  return _mask_tree(params, incoming), _mask_tree(params, outgoing)


def reset_units(optimizer: optax.GradientTransformation | None, params, opt_state,
                unit_masks: Sequence[jax.Array], fresh_params, layers: Sequence[LayerSpec]):
  r"""Resets the chosen units: fresh incoming weights, zero outgoing weights and moments.

  With ``I`` and ``O`` the incoming and outgoing masks of `reset_masks`:

    p <- 0          where O
    p <- p_fresh    where I and not O
    p <- p          elsewhere (bit-identical)

  (an entry both incoming and outgoing, e.g. a weight between two reset
  units, is zeroed, so every reset unit ends with all-zero outgoing weights).
  With LayerNorm the norm's scale and bias entries come from ``fresh_params``
  (1 and 0 for flax's LayerNorm). A reset unit whose outgoing weights are zero
  does not change the next layer's input, so when the reset units were dead
  on a batch the network's outputs on that batch are unchanged, exactly
  (except through a LayerNorm, RMSNorm or hybrid norm, whose per-example
  statistics mix all units of a layer).

  Optimizer state: every param-shaped statistic (Adam's ``mu`` and ``nu``) is
  zeroed on exactly ``I | O``, via `plastix.optim.reset_moments`; step counts
  are unchanged.

  Args:
    optimizer: the optimizer that made ``opt_state`` (may be None when
      ``opt_state`` is None).
    params: the current parameters.
    opt_state: the optimizer state, or None to reset the parameters only.
    unit_masks: one boolean ``[units]`` array per entry of ``layers``.
    fresh_params: a new initialisation of the same model (fresh key).
    layers: the ``(layer, next_layer[, norm])`` entries, in forward order.

  Returns:
    ``(params, opt_state, RedoInfo)``.
  """
  _check_same_shapes(params, fresh_params)
  incoming, outgoing = reset_masks(params, layers, unit_masks)

  def one(p, q, i, o):
    return jnp.where(o, jnp.zeros_like(p), jnp.where(i, q.astype(jnp.result_type(p)), p))

  new_params = jax.tree.map(one, params, fresh_params, incoming, outgoing)
  changed = jax.tree.map(jnp.logical_or, incoming, outgoing)
  unit_masks = tuple(jnp.asarray(u).astype(bool) for u in unit_masks)
  num_reset = sum((jnp.sum(u, dtype=jnp.int32) for u in unit_masks), jnp.zeros([], jnp.int32))
  info = RedoInfo(unit_masks=unit_masks, params_mask=changed, num_reset=num_reset)
  return new_params, _reset_moments(optimizer, opt_state, changed), info


def redo(optimizer: optax.GradientTransformation | None, params, opt_state,
         activations: Sequence[jax.Array], fresh_params, layers: Sequence[LayerSpec],
         tau: float | jax.Array = 0.0):
  r"""ReDo (Sokar et al., 2023): recycles the tau-dormant units of the given layers.

  Unit i of a layer is dormant when its score on the probe batch is at most tau:

    s_i = mean|a_i| / (mean_j mean|a_j| + 1e-9) <= tau      (`dormant_masks`)

  Each dormant unit gets fresh incoming weights (kernel column or conv output
  channel, bias entry, and norm scale / bias from ``fresh_params``) and zero
  outgoing weights; see `reset_units` and `reset_masks` for the exact entries.

  Optimizer state: Adam's ``mu`` and ``nu`` are zeroed on exactly the changed
  entries (incoming and outgoing), everything else in the state is kept; step
  counts are unchanged.

  Supported: chains of dense and conv layers with a ReLU-like activation acting
  unit by unit, including a conv-to-dense NHWC flatten. Not supported: CReLU
  (a unit feeds two next-layer inputs) and residual connections (a unit feeds
  more than ``next_layer``); the caller chooses ``layers`` (for example
  `plastix.models.redo_layers`) and a shape that does not fit raises
  ValueError. Running norm statistics (BatchNorm) live outside the parameters:
  reset them with `reset_norm_statistics`.

  Args:
    optimizer: the optimizer that made ``opt_state`` (may be None when
      ``opt_state`` is None).
    params: the current parameters.
    opt_state: the optimizer state, or None.
    activations: per entry of ``layers``, that layer's activations on the probe
      batch, ``[batch, units]`` or ``[batch, height, width, channels]``.
    fresh_params: a new initialisation of the same model (fresh key).
    layers: ``(layer, next_layer)`` pairs (or ``(layer, next_layer, norm)``), in
      forward order, e.g. ``(("dense_0", "dense_1"), ("dense_1", "head"))``.
    tau: the dormancy threshold (0 resets dead units; may be traced).

  Returns:
    ``(params, opt_state, RedoInfo)``.
  """
  if len(activations) != len(layers):
    raise ValueError(f"{len(activations)} activations for {len(layers)} layers")
  return reset_units(optimizer, params, opt_state, dormant_masks(activations, tau),
                     fresh_params, layers)


def reset_norm_statistics(model_state, fresh_model_state, layers: Sequence[LayerSpec],
                          unit_masks: Sequence[jax.Array], collection: str = "batch_stats"):
  r"""Resets the running statistics of the reset units' norms to their initial values.

    stat_c <- stat_fresh_c   for every reset unit c of a layer whose norm keeps
                             running statistics (BatchNorm ``mean`` 0, ``var`` 1)
    stat   <- stat           elsewhere (bit-identical)

  `redo` changes parameters only; a norm that normalises with running
  statistics at evaluation time (BatchNorm, the hybrid norm) would otherwise
  normalise a reset unit's new preactivations with its old statistics. Pass
  ``info.unit_masks`` from `redo`. Norm names follow `reset_masks`
  (``norm_{i}`` when ``model_state[collection]`` has it, or a triple's third
  entry). No optimizer state is involved.

  Args:
    model_state: the non-parameter collections (``{"batch_stats": ...}``), or
      an empty dict / None (returned as is).
    fresh_model_state: the same collections of a fresh initialisation.
    layers: the entries given to `redo`.
    unit_masks: one boolean ``[units]`` array per entry of ``layers``.
    collection: the collection holding the statistics.

  Returns:
    The new model state.
  """
  if not model_state or collection not in model_state:
    return model_state
  stats, fresh = model_state[collection], fresh_model_state[collection]
  _check_same_shapes(stats, fresh, "fresh_model_state")
  if len(layers) != len(unit_masks):
    raise ValueError(f"{len(layers)} layers but {len(unit_masks)} unit masks")
  entries = {}
  for norm, u in zip(_norm_names(stats, layers), unit_masks):
    if norm is None or norm not in stats:
      continue
    u = jnp.asarray(u).astype(bool)
    for leaf, value in stats[norm].items():
      if jnp.shape(value) != u.shape:
        raise ValueError(f"{collection} {norm}/{leaf} has shape {jnp.shape(value)}; "
                         f"the unit mask has {u.shape}")
      entries[(norm, leaf)] = u
  mask = _mask_tree(stats, entries)
  new_stats = jax.tree.map(lambda p, q, m: jnp.where(m, q.astype(jnp.result_type(p)), p),
                           stats, fresh, mask)
  return {**model_state, collection: new_stats}


# ----------------------------------------------------------------------------
# Whole-layer and whole-network resets.


def reset_head(optimizer: optax.GradientTransformation | None, params, opt_state,
               fresh_params, head: str = "head"):
  r"""Re-initialises the last layer: ``p_head <- p_head_fresh``, other leaves unchanged.

  Optimizer state: Adam's ``mu`` and ``nu`` of the head's leaves are zeroed
  (`plastix.optim.reset_moments`); every other entry and the step counts are
  unchanged.

  Args:
    optimizer: the optimizer that made ``opt_state`` (may be None when
      ``opt_state`` is None).
    params: the current parameters.
    opt_state: the optimizer state, or None.
    fresh_params: a new initialisation of the same model (fresh key).
    head: the top-level module name of the last layer.

  Returns:
    ``(params, opt_state)``.
  """
  _check_same_shapes(params, fresh_params)
  new_params = _replace_modules(params, fresh_params, (head,))
  return new_params, _reset_moments(optimizer, opt_state, _module_mask(params, (head,)))


def full_reset(fresh_params, optimizer: optax.GradientTransformation):
  r"""The fresh-network reference: ``(p_fresh, optimizer.init(p_fresh))``.

  Optimizer state: a new one (`plastix.optim.reset_optimizer_state`): Adam's
  ``mu`` and ``nu`` are 0 and every step count is 0, so the next update is a
  first step again, bias correction included.

  Returns:
    ``(params, opt_state)``.
  """
  return fresh_params, optim.reset_optimizer_state(optimizer, fresh_params)


# ----------------------------------------------------------------------------
# Plasticity injection.


class Injection(NamedTuple):
  """The frozen parts of plasticity injection; never passed to the optimizer.

  Attributes:
    old: the injected modules' parameters at injection (theta, frozen).
    fresh0: their fresh initialisation at injection (theta'_0, frozen).
  """
  old: dict
  fresh0: dict


def inject_plasticity(optimizer: optax.GradientTransformation | None, params, opt_state,
                      fresh_params, tail: Sequence[str] = ("head",)):
  r"""Plasticity injection (Nikishin et al., 2023) as a params transformation.

  The network is split into a body phi and a tail h (the modules named in
  ``tail``, normally the last layers). After injection the model computes,
  with `injected_apply`,

    y(x) = h_theta(phi(x)) + [h_theta'(phi(x)) - h_theta'_0(phi(x))]

  where theta (the tail at injection) and theta'_0 (a fresh tail) are frozen in
  the returned `Injection`, and theta' (trainable, starting at theta'_0) takes
  the tail's place in ``params``. At injection theta' = theta'_0, so the
  bracket is exactly 0 and every output is unchanged, bit for bit. The params
  keep their structure, so the optimizer and its state keep working; the body
  keeps training, with gradients through all three tails.

  A single linear tail gains nothing: ``h`` is then linear in its parameters,
  so y equals one linear layer with weights ``theta + theta' - theta'_0`` and
  training theta' is training that layer with fresh moments (up to weight
  decay, which pulls theta' rather than the sum towards 0). Inject at least
  two layers (``("dense_1", "head")``) for a new nonlinear tail.

  Optimizer state: Adam's ``mu`` and ``nu`` are zeroed on the tail's leaves
  (they belong to theta', a new parameter); the step counts are unchanged.
  Injecting again into an injected model is not supported.

  Args:
    optimizer: the optimizer that made ``opt_state`` (may be None when
      ``opt_state`` is None).
    params: the current parameters.
    opt_state: the optimizer state, or None.
    fresh_params: a new initialisation of the same model (fresh key).
    tail: the top-level modules to inject.

  Returns:
    ``(params, opt_state, injection)``: pass both ``params`` and ``injection``
    to `injected_apply`.
  """
  _check_same_shapes(params, fresh_params)
  tail = tuple(tail)
  if not tail:
    raise ValueError("inject_plasticity needs at least one tail module")
  frozen = Injection(old={n: _module(params, n, "tail module") for n in tail},
                     fresh0={n: fresh_params[n] for n in tail})
  new_params = _replace_modules(params, fresh_params, tail)
  return new_params, _reset_moments(optimizer, opt_state, _module_mask(params, tail)), frozen


def injected_apply(model, params, injection: Injection, x, **kwargs):
  r"""The output of an injected model: ``f(x; theta) + [f(x; theta') - f(x; theta'_0)]``.

  ``f(x; t)`` is ``model.apply({"params": params with the tail replaced by t}, x)``:
  the body is shared, and ``injection``'s parameters are frozen with
  ``lax.stop_gradient`` (their gradients are 0). It runs the model three times
  (XLA may share the identical body computations); intermediates are not
  collected.

  Args:
    model: the flax module.
    params: the injected parameters (trainable; from `inject_plasticity`).
    injection: the frozen tails.
    x: the inputs.
    **kwargs: passed to ``model.apply``.

  Returns:
    The combined output.
  """
  tail = tuple(injection.old)
  old = jax.lax.stop_gradient(injection.old)
  fresh0 = jax.lax.stop_gradient(injection.fresh0)
  apply = lambda p: model.apply({"params": p}, x, **kwargs)
  y_old = apply(_replace_modules(params, old, tail))
  y_new = apply(params)
  y_fresh0 = apply(_replace_modules(params, fresh0, tail))
  return jax.tree.map(lambda a, b, c: a + (b - c), y_old, y_new, y_fresh0)


# ----------------------------------------------------------------------------
# Scheduling.


def maybe_reset(should_reset: jax.Array | bool, reset_fn: Callable[[Any], Any], state):
  r"""``reset_fn(state)`` if ``should_reset`` else ``state``, traceable inside ``lax.scan``.

  Uses ``lax.cond``, so ``reset_fn`` must return a pytree with the structure,
  shapes and dtypes of ``state`` (wrap `redo` to drop its `RedoInfo`, for
  instance). Under ``jax.vmap`` with a per-seed predicate both branches run and
  the result is selected per seed.

  Args:
    should_reset: a boolean scalar, e.g. ``(step + 1) % period == 0``.
    reset_fn: a pure function of ``state``.
    state: any pytree, e.g. ``(params, opt_state)``.

  Returns:
    The new state.
  """
  return jax.lax.cond(should_reset, reset_fn, lambda s: s, state)


# ----------------------------------------------------------------------------
# Resets by name: one hook each, shared by every learner.


class Networks(NamedTuple):
  """What a named reset may change: the learner's network, its optimizer state
  and normalisation statistics, and its target network (None without one)."""
  params: Any
  opt_state: Any
  model_state: Any
  target_params: Any = None


class ResetContext(NamedTuple):
  """What a named reset reads: the optimizer, a fresh initialisation (drawn
  with a fresh key), the model's ReDo layers, the hidden activations on the
  learner's probe batch, and the strengths."""
  optimizer: optax.GradientTransformation
  fresh_params: Any
  fresh_model_state: Any
  redo_layers: Sequence[LayerSpec] | None  # None where ReDo does not apply.
  activations: Callable[[Any, Any], Sequence[jax.Array]]  # (params, model_state) -> acts
  redo_tau: float | jax.Array = 0.1
  shrink: float | jax.Array = 0.8
  perturb: float | jax.Array = 0.2


def _redo_hook(nets: Networks, ctx: ResetContext):
  """`redo` at ``redo_tau`` on the probe batch, with `reset_norm_statistics`."""
  acts = ctx.activations(nets.params, nets.model_state)
  params, opt_state, info = redo(ctx.optimizer, nets.params, nets.opt_state, acts,
                                 ctx.fresh_params, ctx.redo_layers, ctx.redo_tau)
  model_state = reset_norm_statistics(nets.model_state, ctx.fresh_model_state,
                                      ctx.redo_layers, info.unit_masks)
  return nets._replace(params=params, opt_state=opt_state, model_state=model_state), \
      info.num_reset


def _shrink_and_perturb_hook(nets: Networks, ctx: ResetContext):
  """``p <- shrink p + perturb p_fresh``; the optimizer state is kept."""
  params = shrink_and_perturb(nets.params, ctx.fresh_params, ctx.shrink, ctx.perturb)
  return nets._replace(params=params), None


def _head_reset_hook(nets: Networks, ctx: ResetContext):
  """`reset_head`; a target network gets the same fresh head."""
  params, opt_state = reset_head(ctx.optimizer, nets.params, nets.opt_state, ctx.fresh_params)
  target = nets.target_params
  if target is not None:
    target, _ = reset_head(None, target, None, ctx.fresh_params)
  return nets._replace(params=params, opt_state=opt_state, target_params=target), None


def _full_reset_hook(nets: Networks, ctx: ResetContext):
  """`full_reset`: a fresh network, optimizer state and statistics; a target
  network becomes the fresh network (a fresh agent's target is its own init)."""
  params, opt_state = full_reset(ctx.fresh_params, ctx.optimizer)
  target = None if nets.target_params is None else ctx.fresh_params
  return Networks(params, opt_state, ctx.fresh_model_state, target), None


# name -> hook(networks, context) -> (networks, units reset or None). A target
# network follows the resets that re-initialise whole layers (head, full); ReDo
# and shrink-and-perturb change part of the network and leave it to its next sync.
HOOKS: dict[str, Callable[[Networks, ResetContext], tuple]] = {
    "redo": _redo_hook,
    "shrink_and_perturb": _shrink_and_perturb_hook,
    "head_reset": _head_reset_hook,
    "full_reset": _full_reset_hook,
}


def apply_named(names: Sequence[str], nets: Networks, ctx: ResetContext):
  """Runs the resets `names` in order (see `HOOKS`).

  Returns ``(networks, units ReDo reset)``: the count is -1 when ``redo`` is
  not among `names`.

  Raises:
    ValueError: an unknown name, or ``redo`` where ``ctx.redo_layers`` is None.
  """
  num_reset = jnp.full([], -1, jnp.int32) if "redo" not in names else jnp.zeros([], jnp.int32)
  for name in names:
    if name not in HOOKS:
      raise ValueError(f"unknown reset {name!r}; choose from {', '.join(METHODS)}")
    if name == "redo" and ctx.redo_layers is None:
      raise ValueError("redo: the model has no ReDo layers (residual streams)")
    nets, count = HOOKS[name](nets, ctx)
    if count is not None:
      num_reset = num_reset + count
  return nets, num_reset
