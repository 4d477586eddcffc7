"""A study: several experiments (cells) compared side by side, run into one folder.

A study config is an experiment config (``configs/shift.py``'s fields, every
one overridable, applied to every cell) with a ``study`` section::

  config.study.name = "abruptness"
  config.study.scale = "cpu"                # or "paper"
  config.study.title = "..."                # one line
  config.study.description = "..."          # what it tests, the paper's finding
  config.study.sweeps = "shift_params.eps"  # swept fields, ","-joined (report axes)
  config.study.cells = ConfigDict({         # name -> "field=value;field=value"
      "relu": "model.activation=relu",
      "gelu": "model.activation=gelu"})

A *cell* is the config with its fields set: values that change the compiled
program (model, shift, activation, static shift parameters, dataset, even the
interventions). Everything traced (seeds, and a ``grid`` over eps, gamma,
learning rate or weight decay) is vmapped inside each cell's one program per
intervention. A cell's value is parsed by the type of the field it sets
(``model.cnn_channels=(16, 32)`` is a tuple; a string needs no quotes).

`cells(config)` lists them, `cell_config(config, cell)` makes the cell's own
experiment config (the ``study`` section removed, ``name`` = ``<study>/<cell>``),
which `plastix.experiment` runs into ``<workdir>/cells/<cell>/``; `units`
counts a cell's work for progress and ETAs. ``study.json`` (`study_record`)
describes the study for `plastix.report`.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import platform
from typing import Any

import ml_collections

from plastix import grid as grid_lib
from plastix import interventions as interventions_lib

CELLS_DIR = "cells"


class StudyError(ValueError):
  """A study config is malformed (the message names the field)."""


@dataclasses.dataclass(frozen=True)
class Cell:
  """One cell of a study: its name, index and the fields it sets."""
  index: int
  name: str
  overrides: dict[str, Any]

  @property
  def dir(self) -> str:
    """The cell's workdir relative to the study's."""
    return os.path.join(CELLS_DIR, self.name)


def _typed(field: str, text: str, current: Any) -> Any:
  """`text` as a value of `current`'s type (the field's in the base config)."""
  text = text.strip()
  if isinstance(current, bool):
    if text.lower() in ("true", "1"):
      return True
    if text.lower() in ("false", "0"):
      return False
    raise StudyError(f"{field}: {text!r} is not a boolean")
  if isinstance(current, (int, float)) and not isinstance(current, bool):
    try:
      value = float(text)
    except ValueError:
      raise StudyError(f"{field}: {text!r} is not a number") from None
    return int(value) if isinstance(current, int) and value == int(value) else value
  if isinstance(current, (tuple, list)):
    try:
      return tuple(ast.literal_eval(text))
    except (ValueError, SyntaxError, TypeError):
      raise StudyError(f"{field}: {text!r} is not a tuple such as (16, 32)") from None
  if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
    text = text[1:-1]
  return text


def _field(config: ml_collections.ConfigDict, field: str) -> Any:
  node = config
  for part in field.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise StudyError(f"{field!r} is not a config field")
    node = node[part]
  return node


def parse_overrides(text: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """``"model.name=cnn;shift_params.target_offset=10"`` -> typed ``{field: value}``."""
  out = {}
  for entry in (e.strip() for e in text.split(";")):
    if not entry:
      continue
    field, sep, value = (s.strip() for s in entry.partition("="))
    if not sep:
      raise StudyError(f"{entry!r} is not FIELD=VALUE")
    current = _field(config, field)
    if isinstance(current, ml_collections.ConfigDict):
      raise StudyError(f"{field!r} is a section, not a field")
    if field.startswith("study."):
      raise StudyError(f"{field!r}: a cell cannot change the study itself")
    out[field] = _typed(field, value, current)
  return out


def cells(config: ml_collections.ConfigDict) -> list[Cell]:
  """The study's cells in order; raises `StudyError` naming a bad cell."""
  if "study" not in config:
    raise StudyError("the config has no `study` section (a study config sets "
                     "config.study.cells; see plastix.study)")
  entries = config.study.cells
  if not len(entries):  # pylint: disable=g-explicit-length-test
    raise StudyError("config.study.cells is empty")
  out = []
  for i, (name, text) in enumerate(entries.items()):
    if not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
      raise StudyError(f"config.study.cells: cell name {name!r} must be letters, digits, "
                       "'_', '-' or '.' (it names a folder)")
    try:
      out.append(Cell(i, name, parse_overrides(text, config)))
    except StudyError as e:
      raise StudyError(f"config.study.cells.{name}: {e}") from None
  return out


def cell_config(config: ml_collections.ConfigDict, cell: Cell) -> ml_collections.ConfigDict:
  """The experiment config of `cell`: the study's config with the cell's fields
  set, its ``study`` section removed and ``name`` ``<study>/<cell>``."""
  base = config.to_dict()
  base.pop("study", None)
  out = ml_collections.ConfigDict(base)
  for field, value in cell.overrides.items():
    *sections, name = field.split(".")
    node = out
    for s in sections:
      node = node[s]
    node[name] = value
  out.name = f"{config.study.name}/{cell.name}"
  return out


def is_rl(config: ml_collections.ConfigDict) -> bool:
  """Whether a cell's config is an RL agent's (``configs/rl_minatar.py``)."""
  return "agent" in config


def experiment_module(config: ml_collections.ConfigDict):
  """The library that runs a cell: `plastix.rl.experiment` for an RL config,
  `plastix.experiment` otherwise (each has `prepare`, `run` and `UsageError`)."""
  if is_rl(config):
    from plastix.rl import experiment  # pylint: disable=g-import-not-at-top
  else:
    from plastix import experiment  # pylint: disable=g-import-not-at-top
  return experiment


def units(config: ml_collections.ConfigDict) -> int:
  """A cell's work for progress: interventions x runs (seeds x grid points) x tasks x steps
  (x environment steps for an RL cell)."""
  names = interventions_lib.parse_list(config.interventions)
  if is_rl(config):
    from plastix.rl import from_config as rl_config  # pylint: disable=g-import-not-at-top
    runs = config.num_seeds * len(grid_lib.points(config.grid, rl_config.GRID_FIELDS))
    return len(names) * runs * config.total_env_steps
  runs = config.num_seeds * len(grid_lib.points(config.grid))
  return len(names) * runs * config.num_tasks * config.steps_per_task


def architecture(config: ml_collections.ConfigDict) -> str:
  """A cell's architecture for the report's axes: the model's name."""
  return str(config.model.name)


def sweeps(config: ml_collections.ConfigDict) -> list[str]:
  """``config.study.sweeps`` as a list of fields."""
  return [s.strip() for s in config.study.get("sweeps", "").split(",") if s.strip()]


def machine() -> str:
  """A one-line description of this machine: processor, cores, JAX backend."""
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return f"{platform.machine()}, {model}, {cores} cores"


def study_record(config: ml_collections.ConfigDict, cell_list: list[Cell], command: str,
                 previous: dict | None = None) -> dict:
  """study.json's content: the study, its cells and how it was run; a cell's
  ``wall_time_s`` and ``complete`` are kept from `previous` (the file as it was)."""
  before = {c["name"]: c for c in (previous or {}).get("cells", [])}
  s = config.study
  return {
      "study": s.name, "scale": s.scale, "title": s.get("title", s.name),
      "description": s.get("description", ""), "command": command, "machine": machine(),
      "sweeps": sweeps(config),
      "cells": [{"name": c.name, "index": c.index, "dir": c.dir, "overrides": c.overrides,
                 "architecture": architecture(cell_config(config, c)),
                 "wall_time_s": before.get(c.name, {}).get("wall_time_s"),
                 "complete": before.get(c.name, {}).get("complete", False)}
                for c in cell_list],
      "wall_time_s": (previous or {}).get("wall_time_s"),
  }
