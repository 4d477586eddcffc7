"""Hyperparameter grids that train as one program, vmapped beside the seeds.

The engine's traced hyperparameters (`engine.HParams`: learning rate, weight
decay, Adam's b1/b2/eps, the shift's eps and the bandit's gamma) do not change
the compiled program, so a grid over them needs no new compilation: every (grid
point, seed) pair is one *run*, and the engine vmaps over a leading run axis of
size ``num_points * num_seeds`` (sharded over devices like the seeds).

A grid is written as a string, so it can be set from the command line::

  --config.grid="optimizer.learning_rate=1e-3,3e-4;shift_params.eps=0.1,1.0"

Fields are separated by ``;``, values by ``,``; the points are the Cartesian
product, the first field varying slowest. Grid values are set after the
intervention's own edits, so a grid over ``optimizer.weight_decay`` overrides
what the ``weight_decay`` intervention sets.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import ml_collections

# Config field -> the `engine.HParams` field it feeds.
GRID_FIELDS = {
    "optimizer.learning_rate": "learning_rate",
    "optimizer.weight_decay": "weight_decay",
    "optimizer.b1": "b1",
    "optimizer.b2": "b2",
    "optimizer.eps": "eps",
    "shift_params.eps": "shift_eps",
    "shift_params.gamma": "gamma",
}

Point = dict  # config field -> float, in the grid's field order.


def parse(grid: str, fields_allowed=None) -> list[tuple[str, tuple[float, ...]]]:
  """``"a=1,2;b=3"`` -> ``[("a", (1.0, 2.0)), ("b", (3.0,))]``; ValueError says what is wrong.

  `fields_allowed` names the traced config fields a grid may set (default
  `GRID_FIELDS`, the supervised engine's; an RL learner passes its own).
  """
  allowed = GRID_FIELDS if fields_allowed is None else fields_allowed
  fields = []
  for entry in (e.strip() for e in grid.split(";")):
    if not entry:
      continue
    field, sep, values = (s.strip() for s in entry.partition("="))
    if not sep or not values:
      raise ValueError(f"{entry!r} is not FIELD=V1,V2,...")
    if field not in allowed:
      raise ValueError(f"{field!r} is not a traced hyperparameter; choose from "
                       f"{', '.join(allowed)}")
    if field in (f for f, _ in fields):
      raise ValueError(f"{field!r} appears twice")
    try:
      parsed = tuple(float(v) for v in values.split(","))
    except ValueError:
      raise ValueError(f"{field}: values {values!r} are not numbers") from None
    if len(set(parsed)) != len(parsed):
      raise ValueError(f"{field}: a value appears twice in {values!r}")
    fields.append((field, parsed))
  return fields


def points(grid: str, fields_allowed=None) -> list[Point]:
  """The grid's points (Cartesian product, first field slowest); ``[{}]`` for no grid."""
  fields = parse(grid, fields_allowed)
  names = [f for f, _ in fields]
  return [dict(zip(names, combo)) for combo in itertools.product(*(v for _, v in fields))]


def format_value(value: float) -> str:
  """A grid value as labels show it: ``%g`` (``0.001``, ``1e-05``, ``1``) where
  that reads back as the same number, else its exact ``repr``
  (``0.0010000001``), so distinct values never share a label."""
  short = f"{value:g}"
  return short if float(short) == value else repr(float(value))


def label(point: Point) -> str:
  """``"optimizer.learning_rate=0.001;shift_params.eps=0.1"``; ``""`` for the empty point."""
  return ";".join(f"{k}={format_value(v)}" for k, v in point.items())


def apply_point(config: ml_collections.ConfigDict, point: Point) -> ml_collections.ConfigDict:
  """A copy of `config` with the point's values set."""
  out = ml_collections.ConfigDict(config.to_dict())
  for field, value in point.items():
    section, name = field.split(".")
    out[section][name] = float(value)
  return out


def condition(intervention: str, point_label: str) -> str:
  """The name of one (intervention, grid point) pair in summaries and plots."""
  return f"{intervention} [{point_label}]" if point_label else intervention


def conditions(interventions: Sequence[str], grid: str, fields_allowed=None) -> list[str]:
  """Every condition of a study: interventions outermost, then grid points."""
  return [condition(name, label(p)) for name in interventions
          for p in points(grid, fields_allowed)]
