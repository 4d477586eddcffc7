r"""Paired rounds of worker processes: how the speed benchmarks time one thing against another.

A shared machine's speed drifts by tens of percent within minutes, so a
benchmark runs each of the modes it compares in a worker process of its own
(`Worker`), which builds its program once, warms it up, and waits (`serve`).
Then come rounds: in each, every live worker runs its whole workload once, one
after another, in an order rotated from round to round and reversed in every
other round (`round_order`, `paired_rounds`). Modes timed in the same round see
the machine at about the same speed, so a ratio between two modes is the
median over rounds of the ratio of their times in the same round
(`paired_ratio`), with its range over rounds. A round where some mode took over
`UNSTEADY` times its own fastest is unsteady (`unsteady_rounds`): other load
broke the pairing there.

The worker protocol: the worker prints JSON lines prefixed by `PROTOCOL` on
stdout (any other output is ignored): first its preparation's info (or
``{"error": ...}``), then ``{"run_s": seconds}`` for each ``run`` line read from
stdin, and on ``exit`` its peak memory. `machine_info` describes the machine:
the CPU, JAX's backend and the dense float32 matmul peak that model-FLOPs
utilisation is measured against.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import queue
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable

from benchmarks import timing

PROTOCOL = "@@throughput "  # Prefix of the worker's JSON lines on stdout.
WORKER_TIMEOUT_S = 1800.0  # Default wait for a worker's answer.
# A round is unsteady where some mode took more than this many times its own
# fastest: other load on the machine, which slows PyTorch's OpenMP threads far
# more than XLA's, so the pairing of modes cannot cancel it.
UNSTEADY = 1.5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Prepared:
  """A mode ready to time: ``run()`` runs its whole workload once and returns its seconds."""
  compile_s: float
  run: Callable[[], float]
  info: dict = dataclasses.field(default_factory=dict)


def peak_rss_mib() -> float:
  """This process's peak resident memory in MiB."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def say(message: dict) -> None:
  """One answer of the worker protocol on stdout."""
  print(PROTOCOL + json.dumps(message), flush=True)


def error_message(e: Exception) -> dict:
  return {"error": f"{type(e).__name__}: {e}".splitlines()[0]}


def serve(prepare: Callable[[], Prepared]) -> None:
  """The worker: builds its mode with ``prepare()``, warms it up (one untimed run),
  then answers ``run`` (run once, report seconds) and ``exit`` (report peak
  memory) read from stdin."""
  try:
    prepared = prepare()
    prepared.run()  # warm-up
  except Exception as e:  # pylint: disable=broad-except
    say(error_message(e))
    return
  say({"compile_s": prepared.compile_s, **prepared.info})
  for line in sys.stdin:
    if line.strip() == "run":
      try:
        say({"run_s": prepared.run()})
      except Exception as e:  # pylint: disable=broad-except
        say(error_message(e))
        return
    elif line.strip() == "exit":
      break
  say({"peak_rss_mib": peak_rss_mib()})


class WorkerError(RuntimeError):
  """A worker could not prepare its mode, failed a run, or exited."""


def worker_env() -> dict:
  """The environment of a worker: JAX allocates accelerator memory as it needs it,
  since several workers share the device."""
  env = dict(os.environ)
  env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  return env


class Worker:
  """One mode's worker process (`command`, run from the repository root), driven
  over its stdin and stdout; its stderr goes to a temporary file (read back to
  explain a failure), so no pipe can fill up.

  A thread moves the worker's stdout lines into a queue, so that every answer
  (the preparation, each run, the exit) is awaited for at most `timeout_s`
  seconds: a worker that hangs fails its mode instead of the whole benchmark.
  """

  def __init__(self, mode: str, command: list[str], timeout_s: float = WORKER_TIMEOUT_S):
    self.mode, self.timeout_s, self._hung = mode, timeout_s, False
    self._log = tempfile.TemporaryFile(mode="w+")
    self._proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self._log, text=True, env=worker_env(), cwd=ROOT)
    self._lines = queue.Queue()
    threading.Thread(target=self._pump, daemon=True).start()
    try:
      self.info = self._read()
    except WorkerError:
      self.close()
      raise

  def _pump(self) -> None:
    """Puts every stdout line of the worker into the queue, then None at its end."""
    try:
      for line in self._proc.stdout:
        self._lines.put(line)
    finally:
      self._proc.stdout.close()
      self._lines.put(None)

  def _read(self) -> dict:
    deadline = time.monotonic() + self.timeout_s
    while True:
      try:
        line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
      except queue.Empty:
        self._hung = True
        raise WorkerError(f"{self.mode} worker sent no answer in {self.timeout_s:g} s") from None
      if line is None:
        self._lines.put(None)  # the end stays visible to a later read
        break
      if line.startswith(PROTOCOL):
        message = json.loads(line[len(PROTOCOL):])
        if "error" in message:
          raise WorkerError(message["error"])
        return message
    try:  # its stdout ended: let it finish writing its stderr
      self._proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
      pass
    self._log.seek(0)
    lines = self._log.read().strip().splitlines() or ["exited"]
    raise WorkerError(lines[-1])

  def _send(self, command: str) -> None:
    try:
      self._proc.stdin.write(command + "\n")
      self._proc.stdin.flush()
    except (BrokenPipeError, ValueError) as e:  # the worker has exited
      raise WorkerError(f"{self.mode} worker exited") from e

  def run(self) -> float:
    """Runs the workload once; its seconds."""
    self._send("run")
    return self._read()["run_s"]

  def close(self) -> dict:
    """Ends the worker (killing it if it does not exit, or at once if it hung); its
    info and peak memory."""
    info = dict(getattr(self, "info", {}))
    try:
      if self._hung:
        self._proc.kill()
      elif self._proc.poll() is None:
        self._send("exit")
        info.update(self._read())
      self._proc.wait(timeout=60)
    except (WorkerError, subprocess.TimeoutExpired):
      self._proc.kill()
      self._proc.wait()
    finally:
      for stream in (self._proc.stdin, self._log):
        if stream is not None and not stream.closed:
          stream.close()
    return info


def round_order(modes: list[str], r: int) -> list[str]:
  """The order of round `r`: `modes` rotated by `r`, reversed in odd rounds, so that
  over the rounds each mode runs early and late and after different modes."""
  k = r % len(modes) if modes else 0
  order = modes[k:] + modes[:k]
  return order[::-1] if r % 2 else order


def paired_rounds(modes, start: Callable[[str], Worker], rounds: int,
                  pause_s: float = 0.2) -> dict:
  """``{mode: {"times": [seconds per round], **worker info}}``, or ``{"error": ...}``
  for a mode that failed (with the times of the rounds it finished, if any).

  Each mode's worker is prepared in turn (``start(mode)``, which raises
  `WorkerError` for a mode that cannot start); then every round times each
  live worker once, in `round_order`. `pause_s` between runs lets the previous
  worker's threads go idle. A worker that fails is dropped from later rounds.
  """
  cells, workers = {}, {}
  try:
    for mode in modes:
      try:
        workers[mode] = start(mode)
        cells[mode] = {"times": []}
      except WorkerError as e:
        cells[mode] = {"error": str(e)}
    for r in range(rounds):
      for mode in round_order([m for m in workers if "error" not in cells[m]], r):
        time.sleep(pause_s)
        try:
          cells[mode]["times"].append(workers[mode].run())
        except WorkerError as e:
          cells[mode]["error"] = f"round {r + 1}: {e}"
  finally:
    for mode, w in workers.items():
      cells[mode].update(w.close())
  return cells


def paired_ratio(cells: dict, slow: str, fast: str):
  """``(median, min, max)`` over rounds of ``time[slow] / time[fast]`` in the same
  round: how many times faster `fast` ran than `slow`, over the rounds both
  finished; None if either is missing or they share no finished round."""
  if "times" not in cells.get(slow, {}) or "times" not in cells.get(fast, {}):
    return None
  ratios = [s / f for s, f in zip(cells[slow]["times"], cells[fast]["times"])]
  if not ratios:  # a mode that failed in its first round
    return None
  return statistics.median(ratios), min(ratios), max(ratios)


def unsteady_rounds(cells: dict, factor: float = UNSTEADY) -> dict:
  """``{round: [(mode, time / its fastest time), ...]}`` for the rounds (0-based) in
  which some mode took more than `factor` times its own fastest round."""
  slow = {}
  for mode, c in cells.items():
    times = c.get("times") or []
    fastest = min(times, default=0.0)
    for r, t in enumerate(times):
      if t > factor * fastest:
        slow.setdefault(r, []).append((mode, t / fastest))
  return dict(sorted(slow.items()))


def unsteady_note(cells: dict, factor: float = UNSTEADY) -> str | None:
  """``"2 of 7 (a mode over 1.5x its fastest time: round 2: torch 1.9x; ...)"``
  for the unsteady rounds of `cells`, or None where there are none."""
  slow = unsteady_rounds(cells, factor)
  if not slow:
    return None
  rounds = max(len(c.get("times") or []) for c in cells.values())
  which = "; ".join(f"round {r + 1}: " + ", ".join(f"{m} {x:.1f}x" for m, x in modes)
                    for r, modes in slow.items())
  return f"{len(slow)} of {rounds} (a mode over {factor}x its fastest time: {which})"


def format_ratio(ratio, percent: bool = False) -> str:
  """A `paired_ratio` as ``"2.00x (1.90-2.10)"`` (or in percent); n/a for None."""
  if ratio is None:
    return "n/a"
  median, low, high = ratio
  if percent:
    return f"{100 * median:.0f}% ({100 * low:.0f}-{100 * high:.0f})"
  return f"{median:.2f}x ({low:.2f}-{high:.2f})"


def format_mib(mib) -> str:
  """Peak memory in MiB; n/a for a worker that did not report it (no reply on exit)."""
  return "n/a" if mib is None else f"{mib:.0f}"


def one_shot(command: list[str], timeout_s: float = 3600) -> dict:
  """The last protocol answer of `command`, a measurement run to its end in a
  process of its own (from the repository root)."""
  proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                        env=worker_env(), cwd=ROOT)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(PROTOCOL)]
  if proc.returncode or not lines:
    raise WorkerError((proc.stderr.strip().splitlines() or ["failed"])[-1])
  return json.loads(lines[-1][len(PROTOCOL):])


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
  """The host CPU's model name (Linux's /proc/cpuinfo), else what `platform` knows."""
  try:
    with open(cpuinfo, encoding="utf-8") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
          return value.strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def matmul_peak_flops(n: int = 2048, repeats: int = 30) -> float:
  """FLOP/s of the fastest of `repeats` float32 ``n x n`` matrix products: ``2 n^3 / t``."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  return 2.0 * n ** 3 / timing.best_time(jax.jit(jnp.dot), a, a, repeats=repeats)


def machine_info() -> dict:
  """The machine as the benchmarks report it: the matmul peak (``flops``), JAX's
  backend, version and devices, the CPU model and its cores, and JAX's float32
  matmul precision ("default" may be TF32 on a GPU)."""
  import jax  # pylint: disable=g-import-not-at-top
  from plastix import sharding  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  return {"flops": matmul_peak_flops(), "backend": jax.default_backend(), "jax": jax.__version__,
          "devices": len(devices), "device_kind": devices[0].device_kind,
          "cpu": cpu_model(), "cores": sharding.host_cores(),
          "jax_matmul_precision": str(jax.config.jax_default_matmul_precision or "default")}


def machine_line(machine: dict) -> str:
  """``machine: x86_64, <cpu>, <n> cores; JAX <v> on <n> x <device> (float32 matmul
  precision <p>)`` from a `machine_info` dict."""
  return (f"machine: {platform.machine()}, {machine['cpu']}, {machine['cores']} cores; "
          f"JAX {machine['jax']} on {machine['devices']} x {machine['device_kind']} "
          f"(float32 matmul precision {machine['jax_matmul_precision']})")


def torch_info(torch, device: str) -> dict:
  """PyTorch's version, threads, device and float32 matmul precision, as reported."""
  return {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
          "torch_device": device,
          "torch_matmul_precision": torch.get_float32_matmul_precision()}


def torch_line(info: dict) -> str:
  """``torch <v> on <device> (<n> threads, float32 matmul precision <p>)``."""
  return (f"torch {info['torch']} on {info['torch_device']} ({info['torch_threads']} threads, "
          f"float32 matmul precision {info['torch_matmul_precision']})")


def refuse(message: str) -> None:
  """Bad command-line input: one line on stderr, exit status 2."""
  print(message, file=sys.stderr)
  sys.exit(2)
