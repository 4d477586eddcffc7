"""plastix: loss of plasticity, measured and prevented, as pure JAX functions.

``plastix.diagnose`` (`plastix.diagnostics.diagnose`) probes any flax linen
model, and ``plastix.results.load(workdir)`` reads a run's or a study's tidy
table; both are imported on first use, so ``import plastix`` itself loads no JAX.
"""

import importlib

__all__ = ["diagnose", "results"]


def __getattr__(name):
  if name == "diagnose":
    from plastix.diagnostics import diagnose  # pylint: disable=g-import-not-at-top
    globals()["diagnose"] = diagnose
    return diagnose
  if name == "results":
    module = importlib.import_module("plastix.results")
    globals()["results"] = module
    return module
  raise AttributeError(f"module 'plastix' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + __all__)
