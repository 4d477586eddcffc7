"""`ConfigError` and the check of one config field.

Every component that reads config fields checks them itself: `plastix.validation`
the experiment as a whole, each learner of `plastix.learners` its own settings.
Each raises `ConfigError` naming the offending field, and an entry point prints
it as one line and exits with status 2. This module imports nothing from
plastix, so any component can use it.
"""

from __future__ import annotations


class ConfigError(ValueError):
  """A config field has an invalid value."""

  def __init__(self, field: str, message: str):
    super().__init__(f"config.{field}: {message}")
    self.field = field


def get(config, field: str):
  """The value of dotted `field` ("loss.name") of `config`; ConfigError if missing."""
  node = config
  for part in field.split("."):
    if part not in node:
      raise ConfigError(field, "missing")
    node = node[part]
  return node


def check(config, field: str, ok, message: str) -> None:
  """Raises ``ConfigError(field, "<message> (got <value>)")`` unless ``ok(value)``
  (a TypeError in `ok` counts as not ok)."""
  value = get(config, field)
  try:
    good = ok(value)
  except TypeError:
    good = False
  if not good:
    raise ConfigError(field, f"{message} (got {value!r})")


def positive_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v > 0


def integer(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def one_of(options):
  return lambda v: v in options
