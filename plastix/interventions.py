"""Interventions by name, each a pure edit of the experiment config.

A name is one component or several joined by ``+``
(``layer_norm+weight_decay+redo``). Each component returns a new config with
one change, so combinations are just compositions, and a component never needs
to know about the others. Strengths come from ``config.intervention_params``.

| name                  | change                                                   | reference |
|-----------------------|----------------------------------------------------------|-----------|
| baseline              | nothing                                                  | |
| layer_norm            | ``model.norm = "layer"``: LayerNorm on preactivations    | Ba et al., 2016; Lyle et al., 2024 |
| batch_norm            | ``model.norm = "batch"``                                 | Ioffe & Szegedy, 2015 |
| rms_norm              | ``model.norm = "rms"``                                   | Zhang & Sennrich, 2019 |
| hybrid_norm           | ``model.norm = "hybrid"``: batch mean, per-example std   | Lyle et al., 2024 |
| weight_decay          | ``optimizer.weight_decay``: decoupled decay              | Loshchilov & Hutter, 2019 |
| l2                    | ``loss.l2``: coupled L2, ``(l2/2)||p||^2`` in the loss   | Lyle et al., 2024 (1e-5) |
| l2_init               | ``optimizer.l2_init``: ``g += s (p - p_0)``              | Kumar et al., 2023 |
| normalize_and_project | ``optimizer.normalize_and_project``: kernels at init norm | Lyle et al., 2024 |
| grad_norm_penalty     | ``loss.grad_norm_penalty``: ``+ s ||grad L||^2``         | Lyle et al., 2024 |
| label_smoothing       | ``loss.label_smoothing``                                 | Lyle et al., 2024 (bandit) |
| leaky_relu, gelu, tanh, crelu | ``model.activation``                             | Shang et al., 2016 (CReLU); Abbas et al., 2023 |
| redo                  | ReDo at task ends (``resets.methods``)                   | Sokar et al., 2023 |
| shrink_and_perturb    | ``p <- shrink p + perturb p_fresh`` at task ends         | Ash & Adams, 2020 |
| head_reset            | re-initialise the last layer at task ends                | Nikishin et al., 2022 |
| full_reset            | a fresh network at task ends (the reference)             | |
| two_hot, hl_gauss     | ``loss.name``: distributional regression targets         | Lyle et al., 2023; Farebrother et al., 2024 |
"""

from __future__ import annotations

import functools
from typing import Callable

import ml_collections

from plastix import composite
from plastix import resets

Edit = Callable[[ml_collections.ConfigDict], ml_collections.ConfigDict]


def _baseline(config):
  return config


def _set(section: str, field: str, value, config):
  config[section][field] = value
  return config


def _set_from_params(section: str, field: str, param: str, config):
  config[section][field] = config.intervention_params[param]
  return config


def _add_reset(name: str, config):
  """Adds reset `name` to ``resets.methods`` unless the config runs it already."""
  methods = config.resets.methods.strip()
  if name not in resets.parse_methods(methods):
    config.resets.methods = f"{methods}+{name}" if methods else name
  return config


def _setter(section, field, value) -> Edit:
  return functools.partial(_set, section, field, value)


def _from_params(section, field, param) -> Edit:
  return functools.partial(_set_from_params, section, field, param)


COMPONENTS: dict[str, Edit] = {
    "baseline": _baseline,
    "layer_norm": _setter("model", "norm", "layer"),
    "batch_norm": _setter("model", "norm", "batch"),
    "rms_norm": _setter("model", "norm", "rms"),
    "hybrid_norm": _setter("model", "norm", "hybrid"),
    "weight_decay": _from_params("optimizer", "weight_decay", "weight_decay"),
    "l2": _from_params("loss", "l2", "l2"),
    "l2_init": _from_params("optimizer", "l2_init", "l2_init"),
    "normalize_and_project": _setter("optimizer", "normalize_and_project", True),
    "grad_norm_penalty": _from_params("loss", "grad_norm_penalty", "grad_norm_penalty"),
    "label_smoothing": _from_params("loss", "label_smoothing", "label_smoothing"),
    "leaky_relu": _setter("model", "activation", "leaky_relu"),
    "gelu": _setter("model", "activation", "gelu"),
    "tanh": _setter("model", "activation", "tanh"),
    "crelu": _setter("model", "activation", "crelu"),
    "redo": functools.partial(_add_reset, "redo"),
    "shrink_and_perturb": functools.partial(_add_reset, "shrink_and_perturb"),
    "head_reset": functools.partial(_add_reset, "head_reset"),
    "full_reset": functools.partial(_add_reset, "full_reset"),
    "two_hot": _setter("loss", "name", "two_hot"),
    "hl_gauss": _setter("loss", "name", "hl_gauss"),
}


def parse(name: str) -> tuple[str, ...]:
  """The components of intervention `name`; ValueError names an unknown one."""
  return composite.split_composite(name, COMPONENTS, "intervention")


def parse_list(names: str) -> tuple[str, ...]:
  """Splits the config's comma-separated ``interventions`` and checks each name."""
  items = tuple(n.strip() for n in names.split(",") if n.strip())
  for item in items:
    parse(item)
  if len(set(items)) != len(items):
    raise ValueError(f"interventions {names!r} lists a name twice")
  return items


def apply(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """A copy of `config` with intervention `name` applied (the input is not changed)."""
  out = ml_collections.ConfigDict(config.to_dict())
  for part in parse(name):
    out = COMPONENTS[part](out)
  return out
