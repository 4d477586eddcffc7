"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import time


def best_time(fn, *args, repeats: int) -> float:
  """Seconds of the fastest of `repeats` calls ``fn(*args)`` after one untimed
  call (which compiles), each waited for with ``jax.block_until_ready``."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best
