"""The probe set the engine runs at task ends: which probes, how often, with what settings.

Two kinds of probe, both pure functions of one network (the engine vmaps
them over seeds):

* *Activation probes* (`activation_probes`), every task end: they read the
  hidden layers' preactivations and activations on the fixed probe batch
  (dead, dormant and linearized units, feature rank and singular values,
  preactivation statistics and their drift, predictive entropy).
* *Expensive probes* (`sharpness`, `ntk`, `alignment`, `plasticity`), every
  ``<name>_every`` tasks (0 = never): the engine runs them under a
  ``lax.cond`` on the task number, which is the same for every seed, so
  skipped tasks cost nothing; their columns are NaN on skipped tasks.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from plastix import curvature
from plastix import gradients
from plastix import ntk
from plastix import plasticity_probe
from plastix import probes

EXPENSIVE = ("sharpness", "ntk", "alignment", "plasticity")
EXPENSIVE_COLUMNS = {
    "sharpness": ("sharpness",),
    "ntk": ("ntk_diagonal_share", "ntk_off_diagonal_mass", "ntk_effective_rank",
            "ntk_top_eigenvalue_share"),
    "alignment": ("gradient_alignment",),
    "plasticity": ("probe_loss", "fresh_probe_loss", "plasticity_probe_loss"),
}


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
  """Static settings of the probe set (``config.probes``)."""
  dormant_tau: float = 0.025
  srank_delta: float = 0.01
  linearized_threshold: float = 0.1   # smooth units: std of the preactivation below this.
  top_singular_values: int = 4        # of the penultimate features.
  histogram_edges: tuple[float, ...] = tuple(x / 4 for x in range(-12, 13))  # [-3, 3]
  sharpness_every: int = 0
  hessian_iters: int = 20
  ntk_every: int = 0
  ntk_examples: int = 64
  alignment_every: int = 0
  alignment_examples: int = 64
  plasticity_every: int = 0
  plasticity_targets: int = 1
  plasticity_steps: int = 200
  plasticity_omega: float = 1e5
  plasticity_batch: int = 64
  within_task_every: int = 0          # steps between within-task drift probes (0 = off).

  def every(self, name: str) -> int:
    return getattr(self, f"{name}_every")


def _features(activations: jax.Array) -> jax.Array:
  """``[examples, units]``: conv maps and token sequences are averaged over positions."""
  if activations.ndim > 2:
    return jnp.mean(activations, axis=tuple(range(1, activations.ndim - 1)))
  return activations


def unit_means(preactivations: Sequence[jax.Array]) -> tuple[jax.Array, ...]:
  """Per-unit mean preactivation of every layer (the reference for drift)."""
  return tuple(probes.preactivation_stats(h)["unit_mean"] for h in preactivations)


def unit_weights(per_layer_units: Sequence[jax.Array]) -> jax.Array:
  """``[layers]``: each layer's share of all units (the last axis counts units)."""
  units = jnp.array([u.shape[-1] for u in per_layer_units], jnp.float32)
  return units / jnp.sum(units)


def mean_drift(means: Sequence[jax.Array], reference_means: Sequence[jax.Array]):
  """``(drift, layer_drift [layers])``: `probes.mean_drift` of each layer's unit
  means from the reference, and its average over all units."""
  layer_drift = jnp.stack([probes.mean_drift(m, r) for m, r in zip(means, reference_means)])
  return jnp.sum(unit_weights(means) * layer_drift), layer_drift


def mean_histograms(means: Sequence[jax.Array], edges: jax.Array) -> jax.Array:
  """``[layers, bins]``: `probes.histogram` of each layer's unit means."""
  return jnp.stack([probes.histogram(m, edges) for m in means])


def activation_probes(preacts: Sequence[jax.Array], acts: Sequence[jax.Array],
                      logits: jax.Array, reference_means: Sequence[jax.Array],
                      settings: ProbeSettings, features: jax.Array | None = None) -> dict:
  r"""The every-task probes from one forward pass on the probe batch.

  Layer fractions are averaged over layers weighted by their unit counts:

  * dead_fraction, dormant_fraction: `probes.dormant_fraction` at 0 and tau;
  * linearized_fraction: ReLU units positive on the whole batch;
  * linearized_fraction_smooth: units whose preactivation std over the batch
    is below ``linearized_threshold`` (`probes.linearized_fraction_smooth`);
  * preact_mean_spread: std over units of the per-unit mean preactivation;
  * preact_std_mean: mean over units of the per-unit std;
  * preact_drift: mean over units of ``|m_i - m_i^ref|``, the change of each
    unit's mean preactivation since the start of the task (`probes.mean_drift`);
  * effective_rank, srank, feature_singular_values (top k): of `features`,
    the representation ``[examples, D]`` the model's linear head reads
    (`models.forward_with_features`); without it, of the last hidden layer's
    activations (averaged over positions for conv maps and tokens), which is
    the same array for an MLP;
  * predictive_entropy: mean ``-sum p log p`` of the outputs' softmax;
  * layer_dead_fraction, layer_preact_drift, layer_preact_mean_spread
    ``[layers]``: the per-layer values; and preact_histogram ``[layers, bins]``:
    counts of per-unit mean preactivations in ``histogram_edges``.
  """
  weight, pre_weight = unit_weights(acts), unit_weights(preacts)
  layer_mean = lambda f, hs, w: jnp.sum(w * jnp.stack([f(h) for h in hs]))
  stats = [probes.preactivation_stats(h) for h in preacts]
  means = [st["unit_mean"] for st in stats]
  drift, layer_drift = mean_drift(means, reference_means)
  features = _features(acts[-1]) if features is None else features
  edges = jnp.asarray(settings.histogram_edges, jnp.float32)
  layer_dead = jnp.stack([probes.dormant_fraction(a, 0.0) for a in acts])
  return dict(
      dead_fraction=jnp.sum(weight * layer_dead),
      dormant_fraction=layer_mean(lambda a: probes.dormant_fraction(a, settings.dormant_tau),
                                  acts, weight),
      linearized_fraction=layer_mean(probes.linearized_fraction, preacts, pre_weight),
      linearized_fraction_smooth=layer_mean(
          lambda h: probes.linearized_fraction_smooth(h, settings.linearized_threshold),
          preacts, pre_weight),
      preact_mean_spread=jnp.sum(pre_weight * jnp.stack([s["spread_of_means"] for s in stats])),
      preact_std_mean=jnp.sum(pre_weight * jnp.stack([s["mean_of_stds"] for s in stats])),
      preact_drift=drift,
      effective_rank=probes.effective_rank(features),
      srank=probes.srank(features, settings.srank_delta),
      feature_singular_values=probes.top_singular_values(features,
                                                         settings.top_singular_values),
      predictive_entropy=probes.predictive_entropy(logits.astype(jnp.float32)),
      layer_dead_fraction=layer_dead,
      layer_preact_drift=layer_drift,
      layer_preact_mean_spread=jnp.stack([st["spread_of_means"] for st in stats]),
      preact_histogram=mean_histograms(means, edges),
  )


def expensive_probe(name: str, settings: ProbeSettings, *, loss_fn: Callable,
                    apply_fn: Callable, init_fn: Callable,
                    optimizer: optax.GradientTransformation, params, batch, key,
                    model_state=None) -> dict:
  """One expensive probe's columns (see `EXPENSIVE_COLUMNS`).

  * sharpness: the top Hessian eigenvalue of ``loss_fn`` on ``batch`` by
    ``hessian_iters`` power iterations (`curvature.hessian_max_eigenvalue`);
  * ntk: `ntk.ntk_stats` of the empirical NTK (trace over outputs) on the
    first ``ntk_examples`` inputs;
  * alignment: mean pairwise cosine of per-example gradients on the first
    ``alignment_examples`` (`gradients.loss_gradient_alignment`);
  * plasticity: the 2023 probe (`plasticity_probe.plasticity_loss`) with
    ``plasticity_targets`` targets of ``plasticity_steps`` steps; its
    ``plasticity_loss`` is the column ``plasticity_probe_loss``.

  Args:
    name: one of `EXPENSIVE`.
    settings: the probe settings.
    loss_fn: ``loss_fn(params, (x, y)) -> scalar`` mean loss on a batch.
    apply_fn: ``apply_fn(params, x) -> outputs`` (eval mode); with
      `model_state`, ``apply_fn(params, x, model_state)``.
    init_fn: ``init_fn(key) -> params`` of a fresh network; with
      `model_state`, ``-> (params, model_state)``.
    optimizer: the training optimizer.
    params: the probed parameters.
    batch: ``(x, y)`` the probe batch (``y`` may be a pytree whose leaves share
      x's leading axis).
    key: PRNG key.
    model_state: the probed network's state outside its parameters (batch-norm
      statistics), None for a model without. The plasticity probe's fresh and
      target networks use their own initial states
      (`plasticity_probe.plasticity_loss`).
  """
  x, y = batch
  probed_apply = apply_fn if model_state is None else (
      lambda p, inputs: apply_fn(p, inputs, model_state))
  if name == "sharpness":
    return {"sharpness": curvature.hessian_max_eigenvalue(loss_fn, params, batch, key,
                                                          settings.hessian_iters)}
  if name == "ntk":
    gram = ntk.ntk_gram(probed_apply, params, x, num_examples=settings.ntk_examples)
    stats = ntk.ntk_stats(gram)
    return {f"ntk_{k}": stats[k] for k in ("diagonal_share", "off_diagonal_mass",
                                           "effective_rank", "top_eigenvalue_share")}
  if name == "alignment":
    n = settings.alignment_examples
    first = jax.tree.map(lambda a: a[:n], (x, y))  # y may be a pytree of targets.
    return {"gradient_alignment": gradients.loss_gradient_alignment(loss_fn, params, first)}
  if name == "plasticity":
    out = plasticity_probe.plasticity_loss(
        apply_fn, init_fn, optimizer, params, x, key, num_targets=settings.plasticity_targets,
        num_steps=settings.plasticity_steps, omega=settings.plasticity_omega,
        batch_size=min(settings.plasticity_batch, x.shape[0]), model_state=model_state)
    return {"probe_loss": out["probe_loss"], "fresh_probe_loss": out["fresh_probe_loss"],
            "plasticity_probe_loss": out["plasticity_loss"]}
  raise ValueError(f"unknown expensive probe {name!r}; choose from {', '.join(EXPENSIVE)}")


def not_measured(name: str) -> dict:
  """NaN for every column of expensive probe `name` (a task it skips)."""
  return {k: jnp.float32(jnp.nan) for k in EXPENSIVE_COLUMNS[name]}
