"""plastix: loss of plasticity, measured and prevented, as pure JAX functions.

``plastix.diagnose`` (`plastix.diagnostics.diagnose`) probes any flax linen
model; it is imported on first use, so ``import plastix`` itself loads no JAX.
"""

__all__ = ["diagnose"]


def __getattr__(name):
  if name == "diagnose":
    from plastix.diagnostics import diagnose  # pylint: disable=g-import-not-at-top
    globals()["diagnose"] = diagnose
    return diagnose
  raise AttributeError(f"module 'plastix' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + __all__)
