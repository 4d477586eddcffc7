"""Interventions by name, each a pure edit of the experiment config.

A name is one component or several joined by ``+`` (``layer_norm+weight_decay``).
Each component returns a new config with one change, so combinations are just
compositions, and a component never needs to know about the others.

| name           | change                                                         |
|----------------|----------------------------------------------------------------|
| baseline       | nothing                                                        |
| layer_norm     | ``model.norm = "layer"``: LayerNorm on preactivations          |
| weight_decay   | ``optimizer.weight_decay = intervention_params.weight_decay``  |
"""

from __future__ import annotations

from typing import Callable

import ml_collections

from plastix import composite


def _baseline(config):
  return config


def _layer_norm(config):
  config.model.norm = "layer"
  return config


def _weight_decay(config):
  config.optimizer.weight_decay = config.intervention_params.weight_decay
  return config


COMPONENTS: dict[str, Callable[[ml_collections.ConfigDict], ml_collections.ConfigDict]] = {
    "baseline": _baseline,
    "layer_norm": _layer_norm,
    "weight_decay": _weight_decay,
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
