"""Composite names: ``"a+b"`` selects registered components a and b, in order."""

from __future__ import annotations

from typing import Collection


def split_composite(name: str, known: Collection[str], kind: str) -> tuple[str, ...]:
  """The ``+``-separated parts of `name`; ValueError names the first unknown part.

  Args:
    name: e.g. ``"layer_norm+weight_decay"``.
    known: the registered component names.
    kind: what a component is, for the message (``"shift"``, ``"intervention"``).
  """
  parts = tuple(p.strip() for p in name.split("+"))
  for part in parts:
    if part not in known:
      raise ValueError(f"unknown {kind} {part!r} in {name!r}; choose from "
                       f"{', '.join(known)} (combine with '+')")
  return parts
