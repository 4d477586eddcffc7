r"""Plasticity diagnostics for any Flax linen model, in one jittable call.

`diagnose` runs a model you wrote (no sowing, no change to it) on a batch,
reads its hidden layers' outputs through flax's method interception
(``nn.intercept_methods``), and returns the every-task probes under the names
of ``metrics.csv``: dead, dormant and linearized units, feature rank and
singular values, preactivation statistics, predictive entropy and parameter
norms, and, given a loss, sharpness, the NTK's conditioning and gradient
alignment. The numbers come from the same functions the engine runs
(`probe_suite.activation_probes`, `probe_suite.expensive_probe`), so a column
means the same thing here and in a study.

What is read from the forward pass (``layers="auto"``):

* the hidden layers: every ``nn.Dense`` and ``nn.Conv`` call except the last
  one applied, which is the head, and except any other whose output the model
  returns as it is (a second head, e.g. the policy of an actor-critic
  returning ``(logits, value)``); or, with ``layers=[...]``, the modules at the
  paths named (``"encoder/fc1"`` or ``("encoder", "fc1")``: the keys of the
  module's parameters under ``variables["params"]``), which is how to leave
  out a head whose output is transformed before it is returned;
* a layer's preactivation ``h``: the module's output, or, when a norm layer
  (`NORM_TYPES`) is applied directly to that output (its input is the very
  array the layer returned), the norm's output: the paper measures
  preactivations after normalisation;
* its activation ``a = activation(h)``: the nonlinearity the model applies,
  passed by the caller because the interception sees modules, not functions;
* the representation the head reads: the input of the last ``nn.Dense`` /
  ``nn.Conv`` applied, flattened per example to ``[examples, D]``;
* the logits: the model's return value (or ``logits_fn`` of it).

A module called more than once gives one layer per call, in call order.
Modules inside flax's lifted transforms (``nn.scan``, ``nn.vmap``,
``nn.remat``, ``nn.jit``) are traced in their own scope and cannot be read
this way.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from plastix import probe_suite
from plastix import probes

LINEAR_TYPES = (nn.Dense, nn.Conv)
NORM_TYPES = (nn.LayerNorm, nn.RMSNorm, nn.BatchNorm, nn.GroupNorm, nn.InstanceNorm)
# The expensive probes that need only a loss on the model's outputs (the
# engine's "plasticity" probe also needs an optimizer and a fresh network).
EXPENSIVE = ("sharpness", "ntk", "alignment")


class LayerInfo(NamedTuple):
  """One probed layer: its module path and the path whose output is its preactivation."""
  path: str           # "/"-joined, e.g. "encoder/fc1".
  preactivation: str  # the same path, or that of the norm applied to its output.


@dataclasses.dataclass(frozen=True, eq=False)
class _Call:
  """One ``__call__`` of a submodule seen during the forward pass."""
  path: tuple[str, ...]
  module_type: type
  inputs: Any
  output: Any


def _first_argument(args: tuple, kwargs: dict):
  if args:
    return args[0]
  return next(iter(kwargs.values()), None)


def _returns_state(apply_kwargs: dict) -> bool:
  """Whether ``model.apply(..., **apply_kwargs)`` returns ``(output, state)``."""
  return (apply_kwargs.get("mutable", False) is not False
          or bool(apply_kwargs.get("capture_intermediates", False)))


def _apply(model: nn.Module, variables, inputs, apply_kwargs: dict):
  """The model's return value (without the mutated collections, if any)."""
  out = model.apply(variables, inputs, **apply_kwargs)
  return out[0] if _returns_state(apply_kwargs) else out


def _forward(model: nn.Module, variables, inputs, apply_kwargs: dict):
  """Runs `model` once; returns its output and every submodule call, in the order
  the calls returned (leaf modules such as Dense and norms: the order applied)."""
  calls = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and context.module.path:
      calls.append(_Call(tuple(context.module.path), type(context.module),
                         _first_argument(args, kwargs), out))
    return out

  with nn.intercept_methods(record):
    out = _apply(model, variables, inputs, apply_kwargs)
  return out, calls


def _path_string(path: Sequence[str]) -> str:
  return "/".join(path)


def _as_path(name) -> tuple[str, ...]:
  if isinstance(name, str):
    return tuple(part for part in name.split("/") if part)
  if isinstance(name, (tuple, list)) and all(isinstance(p, str) for p in name):
    return tuple(name)
  raise ValueError(f"a layer path must be a string like 'encoder/fc1' or a tuple of names, "
                   f"got {name!r}")


def _called_modules(calls: Sequence[_Call]) -> str:
  seen = dict.fromkeys(f"{_path_string(c.path)} ({c.module_type.__name__})" for c in calls)
  return ", ".join(seen) or "none"


def _select(model: nn.Module, calls: Sequence[_Call], layers, output):
  """``(hidden calls, preactivation calls, head call)`` from the recorded calls."""
  linear = [c for c in calls if issubclass(c.module_type, LINEAR_TYPES)]
  returned = {id(leaf) for leaf in jax.tree.leaves(output)}
  name = type(model).__name__
  if not linear:
    raise ValueError(f"diagnose found no nn.Dense or nn.Conv applied in {name}'s forward pass "
                     f"(it reads the head's input from the last one applied); modules "
                     f"called: {_called_modules(calls)}")
  head = linear[-1]
  if isinstance(layers, str):
    if layers != "auto":
      raise ValueError(f"layers must be 'auto' or a list of module paths, got {layers!r}; "
                       f"for one layer write layers=[{layers!r}]")
    hidden = [c for c in linear[:-1] if id(c.output) not in returned]
    if not hidden:
      heads = ", ".join(repr(_path_string(c.path)) for c in linear)
      raise ValueError(f"diagnose found no hidden nn.Dense or nn.Conv in {name}: {heads} "
                       f"{'is the head' if len(linear) == 1 else 'are the head or outputs'}; "
                       f"name the hidden modules with layers=[...] (modules called: "
                       f"{_called_modules(calls)})")
  else:
    paths = [_as_path(p) for p in layers]
    if not paths:
      raise ValueError("layers is empty; pass 'auto' or at least one module path")
    missing = [p for p in paths if not any(c.path == p for c in calls)]
    if missing:
      raise ValueError(f"no module at {', '.join(repr(_path_string(p)) for p in missing)} is "
                       f"called in {name}'s forward pass; modules called: "
                       f"{_called_modules(calls)}")
    hidden = [c for p in paths for c in calls if c.path == p]
  preact = []
  for c in hidden:
    norm = next((n for n in calls if issubclass(n.module_type, NORM_TYPES)
                 and n.inputs is c.output), None)
    preact.append(c if norm is None else norm)
  for c, p in zip(hidden, preact):
    if not isinstance(p.output, jax.Array) or p.output.ndim < 1:
      raise ValueError(f"the output of '{_path_string(p.path)}' (for layer "
                       f"'{_path_string(c.path)}') is not an array with units on its last "
                       f"axis: {type(p.output).__name__}")
  return hidden, preact, head


def _activations(activation, count: int) -> list[Callable]:
  if callable(activation):
    return [activation] * count
  activation = list(activation)
  if len(activation) != count or not all(callable(f) for f in activation):
    raise ValueError(f"activation must be a callable or a sequence of one callable per probed "
                     f"layer ({count} layers), got {len(activation)} items")
  return activation


def _head_features(x: jax.Array) -> jax.Array:
  """The head's input as ``[examples, D]``: every axis after the first flattened."""
  x = jnp.asarray(x, jnp.float32)
  return x.reshape(1, -1) if x.ndim < 2 else x.reshape(x.shape[0], -1)


def _logits(output, logits_fn: Callable | None) -> jax.Array:
  logits = output if logits_fn is None else logits_fn(output)
  if not isinstance(logits, jax.Array):
    raise ValueError(f"predictive_entropy reads the model's output as logits, but it returned "
                     f"{type(logits).__name__}; pass logits_fn= mapping the output to a "
                     f"[batch, classes] array")
  return logits.astype(jnp.float32)


def _params(variables):
  if not hasattr(variables, "keys") or "params" not in variables:
    raise ValueError("variables must be the model's flax variables, a dict with a 'params' "
                     "entry (what model.init returns)")
  return variables["params"]


def diagnosed_layers(model: nn.Module, variables, inputs, *, layers="auto",
                     **apply_kwargs) -> list[LayerInfo]:
  """The layers `diagnose` probes, in the order of its ``*_layer<i>`` columns.

  Traces the forward pass abstractly (``jax.eval_shape``): no computation.
  Arguments as in `diagnose`.
  """
  found = []

  def trace(v, x):
    output, calls = _forward(model, v, x, apply_kwargs)
    hidden, preact, _ = _select(model, calls, layers, output)
    found.extend(LayerInfo(_path_string(c.path), _path_string(p.path))
                 for c, p in zip(hidden, preact))

  jax.eval_shape(trace, variables, inputs)
  return found


def diagnose(model: nn.Module, variables, inputs, *, activation=jax.nn.relu, layers="auto",
             dormant_tau: float = 0.025, srank_delta: float = 0.01,
             top_singular_values: int = 4, linearized_threshold: float = 0.1,
             logits_fn: Callable | None = None, loss_fn: Callable | None = None,
             targets=None, expensive: Sequence[str] = EXPENSIVE, key: jax.Array | None = None,
             hessian_iters: int = 20, ntk_examples: int = 64, alignment_examples: int = 64,
             **apply_kwargs) -> dict[str, jax.Array]:
  r"""Plasticity probes of any flax linen model on one batch, under ``metrics.csv``'s names.

  Runs ``model.apply(variables, inputs, **apply_kwargs)`` once, reads the
  hidden layers (see the module docstring: every ``nn.Dense`` / ``nn.Conv``
  but the last one applied, or the paths in `layers`; a norm applied directly
  to a layer's output gives its preactivation h), applies `activation` to get
  a, and computes (``L`` layers, ``U_l`` units of layer l on its last axis,
  means over the batch and, for conv maps, space):

  * ``dead_fraction``, ``dormant_fraction``: ``sum_l w_l mean_i [s_i <= tau]``
    with the ReDo score ``s_i = mean|a_i| / (mean_j mean|a_j| + 1e-9)``,
    ``tau = 0`` and `dormant_tau`, ``w_l = U_l / sum_k U_k`` (of the
    activations); ``dead_fraction_layer<i>`` per layer;
  * ``linearized_fraction``: ``sum_l w_l mean_i [h_i > 0 on every example]``
    (ReLU units acting as the identity); ``linearized_fraction_smooth``:
    ``sum_l w_l mean_i [std h_i < linearized_threshold]`` (weights of the
    preactivations);
  * ``preact_mean_spread``: ``sum_l w_l std_i m_i`` with ``m_i = mean h_i``
    (``preact_mean_spread_layer<i>`` per layer); ``preact_std_mean``:
    ``sum_l w_l mean_i std h_i`` (population standard deviations);
  * ``effective_rank``: ``exp(-sum_k p_k log p_k)``, ``p = sigma / sum sigma``;
    ``srank``: ``min {k >= 1 : sum_{j<=k} sigma_j >= (1 - srank_delta) sum
    sigma}`` (int32; both 0 for all-zero features); ``feature_sv<i>``: the
    `top_singular_values` largest sigma (zero-padded); sigma the singular
    values of the head's input ``[examples, D]`` (flattened per example);
  * ``predictive_entropy``: ``mean_n -sum_c p_nc log p_nc``, ``p_n =
    softmax(z_n)``, z the model's output read as logits (or ``logits_fn`` of
    it);
  * ``param_norm``: ``sqrt(sum p^2)`` over ``variables["params"]``;
    ``param_norm_<module>`` per top-level entry of ``variables["params"]``.

  With `loss_fn`, also the expensive probes named in `expensive`:

  * ``sharpness``: the top Hessian eigenvalue of ``theta -> loss_fn(f(theta;
    inputs), targets)`` by `hessian_iters` power iterations from a random
    start drawn with `key`;
  * ``ntk_diagonal_share``, ``ntk_off_diagonal_mass``, ``ntk_effective_rank``,
    ``ntk_top_eigenvalue_share``: of the empirical NTK ``K_ij = sum_c <grad
    z_c(x_i), grad z_c(x_j)>`` of the logits on the first `ntk_examples`
    inputs: ``tr K / sum|K_ij|``, its complement, the effective rank of K's
    eigenvalues, ``lambda_max / tr K``;
  * ``gradient_alignment``: the mean cosine over pairs ``i != j`` of the
    per-example loss gradients on the first `alignment_examples` examples
    (each example a batch of one).

  Gradients are with respect to ``variables["params"]``; the other
  collections (batch statistics) are held fixed. An input on which no unit
  fires gives ``dead_fraction`` 1 and ranks 0, not an error.

  Pure: jittable as ``jax.jit(functools.partial(diagnose, model, **static))``
  and vmappable over `variables` (a stack of seeds' parameters) and over a
  leading axis of `inputs` (a stack of batches). `model`, `layers`,
  `activation`, the settings and `apply_kwargs` (e.g. ``train=False``) are
  static: bind them with ``functools.partial``, not as jitted arguments.

  Args:
    model: a ``flax.linen.Module``.
    variables: its variables, ``{"params": ..., **other collections}``.
    inputs: the batch, ``model.apply``'s first argument (an array for the
      NTK and alignment probes).
    activation: the nonlinearity applied to each probed layer's
      preactivation, or a sequence of one per layer.
    layers: "auto", or a list of module paths (``"block/fc"`` or
      ``("block", "fc")``: a tuple path goes inside the list), whose order
      is that of the layer columns.
    dormant_tau, srank_delta, top_singular_values, linearized_threshold: the
      probe settings (the engine's ``probes.*`` defaults).
    logits_fn: maps the model's return value to the ``[batch, classes]``
      logits (default: the return value itself); for a model returning a
      tuple, e.g. ``lambda out: out[0]``.
    loss_fn: ``loss_fn(outputs, targets) -> scalar``, the mean loss of the
      model's return value on the batch (before `logits_fn`); None: no
      expensive probes.
    targets: the second argument of `loss_fn`, a pytree whose leaves share the
      batch's leading axis (or None).
    expensive: which of `EXPENSIVE` to run when `loss_fn` is given.
    key: PRNG key of the sharpness start vector (default ``PRNGKey(0)``).
    hessian_iters, ntk_examples, alignment_examples: the expensive probes'
      sizes.
    **apply_kwargs: passed to ``model.apply`` (``train=False``,
      ``mutable=[...]``: then the output is the first of the pair).

  Returns:
    A dict of scalars (the layer and singular-value columns one per index).
    `diagnosed_layers` names the layers behind ``*_layer<i>``.

  Raises:
    TypeError: `model` is not a flax linen module.
    ValueError: no ``nn.Dense`` / ``nn.Conv`` is applied, "auto" finds only
      the head, a path in `layers` names no module called in the forward
      pass, or an argument is malformed; the message names what is missing.
  """
  if not isinstance(model, nn.Module):
    raise TypeError(f"diagnose takes a flax.linen.Module, got {type(model).__name__}")
  unknown = [name for name in expensive if name not in EXPENSIVE]
  if unknown:
    raise ValueError(f"unknown expensive probe(s) {unknown}; choose from {EXPENSIVE}")
  params = _params(variables)
  output, calls = _forward(model, variables, inputs, apply_kwargs)
  hidden, preact_calls, head = _select(model, calls, layers, output)
  activations = _activations(activation, len(hidden))
  preacts = [jnp.asarray(p.output, jnp.float32) for p in preact_calls]
  acts = [jnp.asarray(f(p.output), jnp.float32) for f, p in zip(activations, preact_calls)]
  settings = probe_suite.ProbeSettings(
      dormant_tau=dormant_tau, srank_delta=srank_delta, top_singular_values=top_singular_values,
      linearized_threshold=linearized_threshold, hessian_iters=hessian_iters,
      ntk_examples=ntk_examples, alignment_examples=alignment_examples)
  # Drift is measured against the layers' own means (0): it needs a reference
  # from an earlier time, which one forward pass does not have.
  found = probe_suite.activation_probes(preacts, acts, _logits(output, logits_fn),
                                        probe_suite.unit_means(preacts), settings,
                                        _head_features(head.inputs))
  out = {name: found[name] for name in (
      "dead_fraction", "dormant_fraction", "linearized_fraction", "linearized_fraction_smooth",
      "effective_rank", "srank", "preact_mean_spread", "preact_std_mean",
      "predictive_entropy")}
  out.update({f"feature_sv{i}": s for i, s in enumerate(found["feature_singular_values"])})
  out["param_norm"] = probes.param_norm(params)
  out.update({f"param_norm_{k}": v for k, v in probes.layer_param_norms(params).items()})
  out.update({f"dead_fraction_layer{i}": v for i, v in enumerate(found["layer_dead_fraction"])})
  out.update({f"preact_mean_spread_layer{i}": v
              for i, v in enumerate(found["layer_preact_mean_spread"])})
  if loss_fn is not None:
    out.update(_expensive(model, variables, inputs, targets, loss_fn, logits_fn, expensive,
                          settings, key, apply_kwargs))
  return out


def _expensive(model, variables, inputs, targets, loss_fn, logits_fn, names, settings, key,
               apply_kwargs) -> dict:
  """The expensive probes `names` through `probe_suite.expensive_probe`."""
  rest = {k: v for k, v in variables.items() if k != "params"}
  run = lambda p, x: _apply(model, {"params": p, **rest}, x, apply_kwargs)
  loss = lambda p, batch: loss_fn(run(p, batch[0]), batch[1])
  apply_fn = lambda p, x: _logits(run(p, x), logits_fn)
  key = jax.random.PRNGKey(0) if key is None else key
  out = {}
  for name in names:
    out.update(probe_suite.expensive_probe(
        name, settings, loss_fn=loss, apply_fn=apply_fn, init_fn=None, optimizer=None,
        params=variables["params"], batch=(inputs, targets), key=key))
  return out
