"""Ends a job whose compiled program stops making progress, with one line saying why.

The host loop (`plastix.runner`) waits for each chunk of tasks: its program is
compiled (on the first call), run on the devices and its metrics copied back.
A program that cannot finish (a deadlock inside the runtime, a collective
waiting for a peer that is gone) would keep that wait going forever, silently.
`Watchdog` watches each wait from a thread of its own and, when the wait has
stalled, prints one line on stderr (what was running, how long it waited,
what to try) and ends the process with `STALL_EXIT_CODE`. Everything finished
before the wait is already on disk (checkpoints are written between chunks,
``metrics.csv`` between interventions), so rerunning the command resumes.

When a wait has stalled (`chunk_limits`, from ``config.stall_timeout_s`` = T):

* On CPU devices, when the whole process has been idle for T seconds in a
  row: it used less than `IDLE_CPU_FRACTION` of one core in each poll
  interval. A program that computes (however slowly) or compiles keeps at
  least one core busy, so a slow chunk never counts; a deadlocked one sleeps
  in its waits and uses no CPU at all.
* On accelerators the host legitimately sleeps while the device computes, so
  CPU use says nothing: a wait stalls when it lasts longer than ``max(T,
  SLOWEST_CHUNK_FACTOR x the slowest chunk so far)``. The first wait
  (compilation and the first chunk) has no earlier chunk to scale from and
  is not timed there.

``T = 0`` turns the watch off. The decisions are pure functions
(`advance_idle`, `stall_message`) of a small `Clock` record, so they are
tested with made-up clock readings; `Watchdog` only reads the clocks.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Callable, NamedTuple

# The exit status of a job ended by the watchdog (2 is bad input).
STALL_EXIT_CODE = 3
# ``config.stall_timeout_s`` when a config has no such field.
DEFAULT_STALL_TIMEOUT_S = 300.0
# A poll interval in which the process used less than this share of one core
# counts as idle (a deadlocked JAX process measured under 0.1%; a working one
# keeps at least one core busy, 100%, or its share of a crowded machine).
IDLE_CPU_FRACTION = 0.02
# On accelerators, a wait may last this many times the slowest chunk so far.
SLOWEST_CHUNK_FACTOR = 20.0
# How often the watching thread reads the clocks, at most (seconds).
POLL_S = 1.0


class Limits(NamedTuple):
  """When one wait counts as stalled: `idle_s` seconds of an idle process in a
  row, or `wall_s` seconds in all (None: not by that rule)."""
  idle_s: float | None
  wall_s: float | None


class Clock(NamedTuple):
  """The watch of one wait: when it began, the last clock readings and the
  seconds in a row the process has been idle up to the last reading."""
  start: float
  last_wall: float
  last_cpu: float
  idle_s: float


def chunk_limits(timeout_s: float, platform: str, slowest_chunk_s: float | None) -> Limits:
  """The `Limits` of a wait for a chunk on devices of `platform` (``"cpu"``,
  ``"gpu"``, ``"tpu"``), given ``config.stall_timeout_s`` and the slowest chunk
  finished so far (None before the first):

    cpu:    idle_s = T,  wall_s = None
    other:  idle_s = None,  wall_s = max(T, SLOWEST_CHUNK_FACTOR * slowest)  (None before the first)

  and no limit at all for ``T = 0``.
  """
  if timeout_s <= 0:
    return Limits(None, None)
  if platform == "cpu":
    return Limits(float(timeout_s), None)
  if slowest_chunk_s is None:
    return Limits(None, None)
  return Limits(None, max(float(timeout_s), SLOWEST_CHUNK_FACTOR * slowest_chunk_s))


def start_clock(wall: float, cpu: float) -> Clock:
  """The `Clock` of a wait beginning at wall time `wall` with `cpu` CPU seconds used."""
  return Clock(start=wall, last_wall=wall, last_cpu=cpu, idle_s=0.0)


def advance_idle(clock: Clock, wall: float, cpu: float,
                 idle_fraction: float = IDLE_CPU_FRACTION) -> Clock:
  r"""The clock after a new reading (`wall` seconds, `cpu` process CPU seconds).

  With ``dt = wall - last_wall`` and ``used = cpu - last_cpu``, the interval is
  idle if ``used < idle_fraction * dt``; an idle interval adds dt to the idle
  run, a busy one ends it:

    idle_s' = idle_s + dt   if used < idle_fraction * dt,   else 0.
  """
  dt = wall - clock.last_wall
  if dt <= 0:  # No time has passed: nothing to tell.
    return clock
  used = cpu - clock.last_cpu
  idle = clock.idle_s + dt if used < idle_fraction * dt else 0.0
  return Clock(clock.start, wall, cpu, idle)


def stall_message(clock: Clock, limits: Limits, wall: float, what: str,
                  advice: str) -> str | None:
  """The line to print if the wait has stalled by `limits` at time `wall`, else None.

  `what` says what was running (e.g. ``"[baseline] tasks 3-4 of 20 (4 runs on
  2 cpu devices)"``), `advice` what to try.
  """
  waited = wall - clock.start
  if limits.idle_s is not None and clock.idle_s >= limits.idle_s:
    return (f"error: {what} made no progress for {waited:.0f}s, the process idle (no "
            f"CPU use) for the last {clock.idle_s:.0f}s of it: a deadlock, not a slow "
            f"chunk; {advice}")
  if limits.wall_s is not None and waited >= limits.wall_s:
    return (f"error: {what} made no progress for {waited:.0f}s (the limit: "
            f"{limits.wall_s:.0f}s, from config.stall_timeout_s and {SLOWEST_CHUNK_FACTOR:g}x "
            f"the slowest chunk so far); {advice}")
  return None


def exit_stalled(message: str) -> None:
  """Prints `message` on stderr and ends the process with `STALL_EXIT_CODE`
  (``os._exit``: the main thread is blocked inside the runtime and cannot
  unwind)."""
  try:
    sys.stdout.flush()
  finally:
    print(message, file=sys.stderr, flush=True)
    os._exit(STALL_EXIT_CODE)  # pylint: disable=protected-access


class _Watch(NamedTuple):
  limits: Limits
  what: str
  advice: str


class Watchdog:
  """A thread that ends the process when a watched wait stalls (see the module doc).

  Use as a context manager, and wrap each wait in `watching`::

    with Watchdog() as dog:
      with dog.watching(chunk_limits(600, "cpu", None), "[baseline] tasks 1-5", advice):
        states, metrics = run_chunk(...)
        metrics = jax.device_get(metrics)

  Args:
    on_stall: called with the line when a wait stalls; default `exit_stalled`.
      (Tests pass a recorder; it is called once per stalled wait.)
    poll_s: the most seconds between clock readings.
    wall_clock, cpu_clock: the clocks (default ``time.monotonic`` and
      ``time.process_time``, the CPU time of every thread of the process).
  """

  def __init__(self, on_stall: Callable[[str], None] | None = None, poll_s: float = POLL_S,
               wall_clock: Callable[[], float] = time.monotonic,
               cpu_clock: Callable[[], float] = time.process_time):
    self._on_stall = on_stall or exit_stalled
    self._poll_s = poll_s
    self._wall, self._cpu = wall_clock, cpu_clock
    self._lock = threading.Lock()
    self._watch: _Watch | None = None
    self._clock: Clock | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def __enter__(self) -> "Watchdog":
    self._thread = threading.Thread(target=self._run, name="plastix-watchdog", daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()

  @contextlib.contextmanager
  def watching(self, limits: Limits, what: str, advice: str):
    """Watches the wait inside the ``with`` block under `limits`."""
    with self._lock:
      self._watch = _Watch(limits, what, advice)
      self._clock = start_clock(self._wall(), self._cpu())
    try:
      yield
    finally:
      with self._lock:
        self._watch = self._clock = None

  def _interval(self) -> float:
    """Seconds to the next reading: `poll_s`, shorter for a short limit."""
    watch = self._watch
    limits = [] if watch is None else [l for l in watch.limits if l is not None]
    return max(0.01, min([self._poll_s] + [l / 10 for l in limits]))

  def _run(self) -> None:
    while not self._stop.wait(self._interval()):
      message = None
      with self._lock:
        if self._watch is None:
          continue
        wall = self._wall()
        self._clock = advance_idle(self._clock, wall, self._cpu())
        message = stall_message(self._clock, self._watch.limits, wall, self._watch.what,
                                self._watch.advice)
        if message is not None:
          self._watch = self._clock = None  # Report a stalled wait once.
      if message is not None:
        self._on_stall(message)
