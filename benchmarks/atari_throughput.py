r"""Agent steps per second on Atari: the environments inside the compiled program
against the same environments stepped from the host, and where the time goes.

  python -m benchmarks.atari_throughput [--game=Pong] [--seeds=1] [--num_envs=8]
      [--steps=4000] [--rounds=3] [--learning_starts=2000] [--json_out=FILE]

Modes, each in a worker process of its own (`benchmarks.pairing`), timed in
paired rounds (each round runs every mode once, in rotated order):

* ``env_xla`` / ``env_host``: the environments alone, uniform-random actions,
  ``--steps`` agent steps per seed in one jitted ``lax.scan`` of
  `plastix.rl.atari.AtariEnv` steps (backend ``xla``: ale-py's FFI calls;
  ``host``: host callbacks into the same C++ environment).
* ``act_xla``: the loop of `configs/rl_atari.py:cpu` (C51, the Nature torso)
  with learning off: environments, acting (a forward pass per vector step) and
  replay writes.
* ``agent_xla`` / ``agent_host``: the whole agent at ``:cpu``'s replay ratio
  (one batch-32 update per vector step of ``--num_envs`` environments).

A mode's agent steps/s (environment steps of all its seeds per second) is
from its median round. Every program of the loop first restarts its
environments with seeded resets (ale-py reloads each game: about a second for
8 environments), which a run pays once per chunk of windows: the loop modes
time it alone (``restart s``, a program of no window) and leave it out of
their rounds. The split of the whole agent's time (``agent_xla``):
environments ``t(env_xla) / t(agent_xla)``, acting and replay
``(t(act_xla) - t(env_xla)) / t(agent_xla)``, learning
``(t(agent_xla) - t(act_xla)) / t(agent_xla)``, each a median over rounds of
the same round's times. The default backend is the faster of ``agent_xla``
and ``agent_host`` (their paired ratio is printed).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json  # pylint: disable=g-import-not-at-top
import statistics
import sys
import time

from absl import app
from absl import flags

from benchmarks import pairing

FLAGS = flags.FLAGS
MODES = ("env_xla", "env_host", "act_xla", "agent_xla", "agent_host")


def atari_config(game: str, num_seeds: int, num_envs: int, steps: int, learning_starts: int,
                 backend: str, learn: bool):
  """`configs/rl_atari.py:cpu` for one benchmark mode: one window of `steps`
  env steps a run, no probes, no evaluation, one intervention."""
  from configs import rl_atari  # pylint: disable=g-import-not-at-top
  config = rl_atari.get_config("cpu")
  config.env_name, config.num_seeds, config.num_envs = game, num_seeds, num_envs
  config.total_env_steps = config.eval_every_steps = steps
  config.eval_steps = 0
  config.interventions = "baseline"
  config.probes.enabled = False
  config.atari.backend = backend
  config.replay.learning_starts = learning_starts if learn else 10**9
  config.replay.buffer_size = max(4 * steps, learning_starts + steps)
  config.exploration.eps_decay_steps = max(1, learning_starts)
  return config


def prepare_env(game: str, num_seeds: int, num_envs: int, steps: int,
                backend: str) -> pairing.Prepared:
  """The environments alone: a jitted scan of random-action vector steps."""
  import jax  # pylint: disable=g-import-not-at-top
  from plastix.rl import atari  # pylint: disable=g-import-not-at-top
  env = atari.AtariEnv(game, num_envs, num_runs=num_seeds, backend=backend)
  vector_steps = steps // num_envs

  def one(key, state):
    def body(state, k):
      actions = jax.random.randint(k, (num_envs,), 0, env.info.num_actions)
      _, state, out = env.step(k, state, actions)
      return state, out.score.sum()
    return jax.lax.scan(body, state, jax.random.split(key, vector_steps))

  keys = jax.random.split(jax.random.key(0), num_seeds)
  _, states = jax.jit(jax.vmap(lambda k: env.reset(k)))(keys)
  start = time.perf_counter()
  compiled = jax.jit(jax.vmap(one)).lower(keys, states).compile()
  compile_s = time.perf_counter() - start
  carry = {"states": states, "round": 0}

  def run() -> float:
    start = time.perf_counter()
    round_keys = jax.vmap(lambda k: jax.random.fold_in(k, carry["round"]))(keys)
    states, scores = compiled(round_keys, carry["states"])
    jax.block_until_ready((states, scores))
    carry.update(states=states, round=carry["round"] + 1)
    return time.perf_counter() - start

  return pairing.Prepared(compile_s, run, {"agent_steps": num_seeds * vector_steps * num_envs})


def prepare_agent(game: str, num_seeds: int, num_envs: int, steps: int, learning_starts: int,
                  backend: str, learn: bool) -> pairing.Prepared:
  """The loop (`plastix.rl.loop.run_windows`) for one window of `steps` a run."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from benchmarks import rl_throughput  # pylint: disable=g-import-not-at-top
  from plastix.rl import loop  # pylint: disable=g-import-not-at-top
  config = atari_config(game, num_seeds, num_envs, steps, learning_starts, backend, learn)
  spec, hp, compile_s, carry, run = rl_throughput.loop_runner(config)

  if learn:  # fill the replay past learning_starts, untimed
    for _ in range(-(-learning_starts // steps)):
      run()
  # Every program first restarts the environments (seeded resets: ale-py
  # reloads each game, about a second for 8 of them); a run pays it once per
  # chunk of windows. Timed alone (a program of no window) and left out.
  restart = loop.run_windows.lower(carry["states"], hp, spec=spec, num_windows=0,
                                   first_window=jnp.int32(0)).compile()
  restarts = []
  for _ in range(3):
    start = time.perf_counter()
    carry["states"], _ = restart(carry["states"], hp, first_window=jnp.int32(carry["window"]))
    jax.block_until_ready(carry["states"])
    restarts.append(time.perf_counter() - start)
  restart_s = statistics.median(restarts)

  def timed() -> float:
    seconds = run()
    if learn and not np.isfinite(carry["loss"]):
      raise RuntimeError(f"no finite training loss in window {carry['window']}")
    return max(seconds - restart_s, 1e-9)

  return pairing.Prepared(compile_s, timed, {"agent_steps": num_seeds * steps,
                                             "restart_s": restart_s})


def prepare(mode: str) -> pairing.Prepared:
  kind, backend = mode.split("_")
  args = (FLAGS.game, FLAGS.seeds, FLAGS.num_envs, FLAGS.steps)
  if kind == "env":
    return prepare_env(*args, backend)
  return prepare_agent(*args, FLAGS.learning_starts, backend, learn=kind == "agent")


def _median_share(cells: dict, part: list[str], minus: list[str], whole: str):
  """Median over rounds of ``(sum t(part) - sum t(minus)) / t(whole)``."""
  names = part + minus + [whole]
  if any("times" not in cells.get(m, {}) for m in names):
    return None
  rounds = min(len(cells[m]["times"]) for m in names)
  if not rounds:
    return None
  shares = [(sum(cells[m]["times"][r] for m in part) - sum(cells[m]["times"][r] for m in minus))
            / cells[whole]["times"][r] for r in range(rounds)]
  return statistics.median(shares)


def report(cells: dict) -> list[str]:
  """The table's rows and the split and backend lines."""
  lines = ["| mode | agent steps/s | per seed | restart s | compile s | peak RSS MiB |",
           "|---|---|---|---|---|---|"]
  for mode, c in cells.items():
    if "error" in c:
      lines.append(f"| {mode} | n/a ({c['error']}) | | | | |")
      continue
    rate = c["agent_steps"] / statistics.median(c["times"])
    restart = f"{c['restart_s']:.2f}" if "restart_s" in c else ""
    lines.append(f"| {mode} | {rate:.0f} | {rate / FLAGS.seeds:.0f} | {restart} | "
                 f"{c['compile_s']:.1f} | {pairing.format_mib(c.get('peak_rss_mib'))} |")
  note = pairing.unsteady_note(cells)
  if note:
    lines.append(f"| unsteady rounds | {note} | | | | |")
  split = [(_median_share(cells, ["env_xla"], [], "agent_xla"), "environments"),
           (_median_share(cells, ["act_xla"], ["env_xla"], "agent_xla"), "acting and replay"),
           (_median_share(cells, ["agent_xla"], ["act_xla"], "agent_xla"), "learning")]
  if all(s is not None for s, _ in split):
    lines.append("\nsplit of agent_xla's time (median over rounds): "
                 + ", ".join(f"{name} {100 * s:.0f}%" for s, name in split))
  for kind in ("env", "agent"):
    ratio = pairing.paired_ratio(cells, f"{kind}_host", f"{kind}_xla")
    if ratio:
      lines.append(f"{kind}: xla backend vs host backend (paired, time_host / time_xla): "
                   f"{pairing.format_ratio(ratio)}")
  return lines


def define_flags() -> None:
  flags.DEFINE_string("game", "Pong", "Atari game.")
  flags.DEFINE_integer("seeds", 1, "Seeds vmapped in each program.")
  flags.DEFINE_integer("num_envs", 8, "Environments per seed.")
  flags.DEFINE_integer("steps", 4000, "Agent steps per seed in a round.")
  flags.DEFINE_integer("rounds", 3, "Timed rounds.")
  flags.DEFINE_integer("learning_starts", 2000, "Agent steps stored before the first update.")
  flags.DEFINE_list("modes", list(MODES), f"Modes to time: {', '.join(MODES)}.")
  flags.DEFINE_string("mode", None, "Internal: run as the worker of this mode.")
  flags.DEFINE_string("json_out", None, "Also write the raw cells here.")
  flags.DEFINE_float("worker_timeout_s", pairing.WORKER_TIMEOUT_S,
                     "Seconds to wait for a worker's answer.")


def check_flags() -> None:
  for mode in FLAGS.modes:
    if mode not in MODES:
      pairing.refuse(f"--modes: unknown mode {mode!r}; choose from {', '.join(MODES)}")
  for name in ("seeds", "num_envs", "steps", "rounds"):
    if FLAGS[name].value < 1:
      pairing.refuse(f"--{name}: must be at least 1 (got {FLAGS[name].value})")
  if FLAGS.steps % FLAGS.num_envs:
    pairing.refuse(f"--steps: must be a multiple of --num_envs={FLAGS.num_envs} "
                   f"(got {FLAGS.steps})")
  from plastix.rl import atari  # pylint: disable=g-import-not-at-top
  try:
    atari.parse_env_name(FLAGS.game)
  except ValueError as e:
    pairing.refuse(f"--game: {e}")


def main(argv):
  del argv
  if FLAGS.mode == "matmul":
    pairing.say(pairing.machine_info())
    return
  if FLAGS.mode:
    pairing.serve(lambda: prepare(FLAGS.mode))
    return
  check_flags()
  here = [sys.executable, "-m", "benchmarks.atari_throughput"]
  machine = pairing.one_shot(here + ["--mode=matmul"])
  passed = [f"--{name}={FLAGS[name].value}" for name in
            ("game", "seeds", "num_envs", "steps", "learning_starts")]
  cells = pairing.paired_rounds(
      FLAGS.modes, lambda m: pairing.Worker(m, here + [f"--mode={m}", *passed],
                                            FLAGS.worker_timeout_s), FLAGS.rounds)
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w", encoding="utf-8") as f:
      json.dump({"machine": machine, "cells": cells}, f, indent=1)
  print(pairing.machine_line(machine) + f"; {FLAGS.game}, {FLAGS.seeds} seed(s) x "
        f"{FLAGS.num_envs} envs, {FLAGS.rounds} rounds of {FLAGS.steps} agent steps per seed\n")
  print("\n".join(report(cells)))


if __name__ == "__main__":
  define_flags()
  app.run(main)
