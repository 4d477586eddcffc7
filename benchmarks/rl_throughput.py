r"""Speed of plastix's whole RL agent against a plain PyTorch DQN, on MinAtar.

  python -m benchmarks.rl_throughput [--game=breakout] [--seeds=1,8] [--steps=2000]
      [--learning_starts=5000] [--rounds=5] [--torch_seeds=1] [--pqn_envs=128]
      [--buffer_size=100000] [--cpu_devices=0] [--modes=...] [--json_out=FILE]

What is timed is the whole agent: acting in the environment, storing the
transition, and one update on a replay batch of 32 per environment step (the
same replay ratio in every DQN mode), with target syncs. Modes:

* ``plastix_N`` (one per ``--seeds`` count N): plastix's DQN
  (`plastix.rl.loop.run_windows` built by `plastix.rl.from_config` from
  ``configs/rl_minatar.py``), one environment per seed (``num_envs = 1``),
  ``train_every = 1``, N seeds vmapped, on the CPU devices ``experiments.rl``
  splits the host into for N runs (`plastix.rl.from_config.cpu_devices`: on 2
  cores 1 seed on one device, 8 seeds 4 per device on 2; ``--cpu_devices``
  sets another count); the probes off (the reference has none).
* ``torch``: `benchmarks.rl_reference`, the PyTorch DQN of the usual shape on
  the ``minatar`` package's own environment, ``--torch_seeds`` seeds one after
  another, ``torch.set_num_threads`` = the host's cores; ``torch_T``: the same on
  T threads (on a shared machine one thread is the steadier reference: other
  load slows PyTorch's OpenMP threads far more than one).
* ``pqn_E``: plastix's PQN agent (many environments, no replay) with
  ``--pqn_envs`` environments, where the agent exists
  (`plastix.rl.agents.AGENTS`); its own settings otherwise. Reported as a
  throughput beside the others (not at the DQN modes' replay ratio).

Every DQN mode runs the same network, the MinAtar one (16-channel 3x3 conv,
stride 1, no padding; 128 units), Adam, double-DQN Huber loss, a buffer of
``--buffer_size`` transitions per seed, and epsilon decaying over the
``--learning_starts`` warm-up so that every timed step acts at ``eps_end``
(the reference then runs its network to act at nearly every step, as the
plastix program always does).

Method: `benchmarks.pairing` (as `benchmarks.throughput`). Each mode's worker
builds its program or agents, runs the warm-up (``--learning_starts``
environment steps per seed, rounded up to whole rounds of ``--steps``, without
updates until ``learning_starts`` transitions are stored; untimed) and one
untimed round; then in each of ``--rounds`` rounds every worker runs
``--steps`` more environment steps per seed, continuing its run, in rotated
order. A mode's seed-steps/s (environment steps of all its seeds per second)
is from its median round; "vs torch" is the median over rounds of the ratio of
its seed-steps/s to the reference's in the same round.

MFU. Model FLOPs of one environment step at this replay ratio
(`dqn_flops_per_env_step`): with ``M`` the multiply-adds of one forward pass
on one observation, the update takes ``6 M B`` (forward and backward on the
batch's ``s``, the usual convention) ``+ 2 M B`` (the online network on
``s'``) ``+ 2 M B`` (the target network on ``s'``) and acting ``2 M``. MFU is
seed-steps/s times that, over the dense float32 matmul peak measured as
`benchmarks.throughput` measures it (`pairing.machine_info`, the best of a
measurement before and after the rounds). XLA's own count of the compiled
update and acting (`xla_flops`) is printed beside the analytic one.
"""

from __future__ import annotations

import os

# As benchmarks/throughput.py: idle OpenBLAS threads would take cores from XLA's.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json
import math
import statistics
import sys
import time

from absl import app
from absl import flags

from benchmarks import pairing

BATCH = 32            # replay batch of every update.
CHANNELS, KERNEL, HIDDEN = 16, 3, 128   # the MinAtar network.
GAMES = ("breakout", "asterix", "freeway", "space_invaders")


# ----------------------------------------------------------------------------
# FLOPs.


def forward_macs(obs_shape, num_actions: int, channels: int = CHANNELS, kernel: int = KERNEL,
                 hidden: int = HIDDEN) -> int:
  """Multiply-adds of one forward pass on one ``(H, W, C)`` observation, with
  ``P = (H - k + 1)(W - k + 1)`` positions of the unpadded conv:
  ``P channels k^2 C + P channels hidden + hidden A``."""
  h, w, c = obs_shape
  positions = (h - kernel + 1) * (w - kernel + 1)
  return (positions * channels * kernel * kernel * c + positions * channels * hidden
          + hidden * num_actions)


def dqn_flops_per_env_step(obs_shape, num_actions: int, batch: int = BATCH,
                           updates_per_env_step: float = 1.0) -> dict:
  """Model FLOPs of one environment step (module docstring): ``update`` =
  ``10 M B`` per update times `updates_per_env_step`, ``act`` = ``2 M``, and
  their ``total``."""
  m = forward_macs(obs_shape, num_actions)
  update = 10.0 * m * batch * updates_per_env_step
  return {"update": update, "act": 2.0 * m, "total": update + 2.0 * m}


# ----------------------------------------------------------------------------
# The modes.


def parse_mode(mode: str) -> tuple[str, int]:
  """``"plastix_8" -> ("plastix", 8)`` (seeds), ``"pqn_128" -> ("pqn", 128)``
  (environments), ``"torch" -> ("torch", 0)`` (threads: the cores), ``"torch_1" ->
  ("torch", 1)``; ValueError for anything else."""
  if mode == "torch":
    return "torch", 0
  kind, _, number = mode.partition("_")
  if kind in ("plastix", "pqn", "torch") and number.isdigit() and int(number) > 0:
    return kind, int(number)
  raise ValueError(f"unknown mode {mode!r}: plastix_<seeds>, pqn_<envs>, torch or "
                   "torch_<threads>")


def warmup_rounds(learning_starts: int, steps: int) -> int:
  """Untimed rounds of `steps` environment steps that store at least `learning_starts`."""
  return max(1, math.ceil(learning_starts / steps))


def rl_config(game: str, agent: str, num_seeds: int, num_envs: int, steps: int,
              learning_starts: int, buffer_size: int, cpu_devices: int = 0):
  """``configs/rl_minatar.py`` for a benchmark mode: one evaluation window per
  round of `steps` environment steps per seed (whole vector steps), the probes
  off, epsilon at its end after the warm-up."""
  from configs import rl_minatar  # pylint: disable=g-import-not-at-top
  config = rl_minatar.get_config()
  config.agent, config.env_name = agent, game
  config.num_seeds, config.num_envs = num_seeds, num_envs
  config.eval_every_steps = steps
  config.total_env_steps = steps * (warmup_rounds(learning_starts, steps) + 1)
  config.interventions = "baseline"
  config.cpu_devices = cpu_devices
  config.probes.enabled = False
  if agent != "pqn":
    config.replay.learning_starts = learning_starts
    config.replay.buffer_size = buffer_size
    config.replay.batch_size = BATCH
    config.replay.train_every = 1
    config.exploration.eps_decay_steps = max(1, learning_starts)
  return config


def xla_flops(spec, hp) -> dict:
  """XLA's cost analysis (``flops``) of the compiled DQN update (the TD loss's value
  and gradient on a batch of `BATCH`, `plastix.rl.loop.td_loss_fn`) and of acting
  (the network on one observation)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from plastix import models  # pylint: disable=g-import-not-at-top
  from plastix.rl import loop  # pylint: disable=g-import-not-at-top
  from plastix.rl.agents import Transition  # pylint: disable=g-import-not-at-top
  obs_shape = spec.env.info.obs_shape
  params, model_state = models.init_variables(spec.model, jax.random.PRNGKey(0),
                                              jnp.zeros((1,) + obs_shape))
  obs = jnp.zeros((BATCH,) + obs_shape, jnp.float32)
  # Separate arrays for the next states and the target network, as in the
  # loop: the same buffers would let XLA merge the passes that read them.
  batch = Transition(obs=obs, action=jnp.zeros(BATCH, jnp.int32),
                     reward=jnp.zeros(BATCH, jnp.float32), next_obs=obs + 1.0,
                     terminated=jnp.zeros(BATCH, jnp.float32))
  target_params = jax.tree.map(lambda p: p + 1.0, params)

  def update(params, target_params, batch):
    loss_fn = loop.td_loss_fn(spec, hp, target_params, model_state)
    return jax.value_and_grad(loss_fn, has_aux=True)(params, batch)

  def act(params, obs):
    return models.apply_model(spec.model, params, model_state, obs)[0]

  def count(fn, *args) -> float:
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per program
      analysis = analysis[0]
    return float(analysis.get("flops", float("nan")))

  return {"xla_update_flops": count(update, params, target_params, batch),
          "xla_act_flops": count(act, params, obs[:1])}


def loop_runner(config):
  """plastix's loop for `config` as ``experiments.rl`` lays it out: the CPU split
  into `plastix.rl.from_config.cpu_devices` devices (call this before JAX's
  first operation) and the runs over them (`plastix.rl.experiment.layout_runs`),
  compiled for one window: ``(spec, hp, compile_s, carry, run)``, with `hp` one
  run's hyperparameters. ``run()`` continues every run by one window and
  returns its seconds; `carry` holds the states, the next window's index, the
  last window's mean training loss and ``devices``, the devices the runs span."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from plastix.rl import experiment, from_config, loop  # pylint: disable=g-import-not-at-top
  from_config.check(config)
  experiment.use_split(config, from_config.cpu_devices(config))
  spec = from_config.spec(config)
  _, keys, run_hp, _ = experiment.layout_runs(config, spec)
  states = experiment.init_runs(spec, keys, run_hp)
  start = time.perf_counter()
  compiled = loop.run_windows.lower(states, run_hp, spec=spec, num_windows=1,
                                    first_window=jnp.int32(0)).compile()
  compile_s = time.perf_counter() - start
  hp = from_config.hparams(config)
  carry = {"states": states, "window": 0, "loss": float("nan"),
           "devices": len(jax.tree.leaves(states)[0].devices())}

  def run() -> float:
    start = time.perf_counter()
    states, metrics = compiled(carry["states"], run_hp,
                               first_window=jnp.int32(carry["window"]))
    jax.block_until_ready(states)
    seconds = time.perf_counter() - start
    carry.update(states=states, window=carry["window"] + 1,
                 loss=float(np.nanmean(np.asarray(metrics.loss))))
    return seconds

  return spec, hp, compile_s, carry, run


def prepare_plastix(agent: str, game: str, num_seeds: int, num_envs: int, steps: int,
                    learning_starts: int, buffer_size: int,
                    cpu_devices: int = 0) -> pairing.Prepared:
  """plastix's loop for one mode, compiled, warmed up; each run continues every
  seed's run for `steps` environment steps (one evaluation window)."""
  config = rl_config(game, agent, num_seeds, num_envs, steps, learning_starts, buffer_size,
                     cpu_devices)
  spec, hp, compile_s, carry, run = loop_runner(config)
  for _ in range(warmup_rounds(learning_starts, steps) if agent != "pqn" else 0):
    run()
  info = {"seed_steps": num_seeds * steps, "num_seeds": num_seeds, "num_envs": num_envs,
          "agent": agent, "obs_shape": list(spec.env.info.obs_shape),
          "num_actions": spec.env.info.num_actions, "warmup_env_steps": carry["window"] * steps,
          "devices": carry["devices"]}
  if agent != "pqn":
    info.update(xla_flops(spec, hp))

  def timed() -> float:
    seconds = run()
    if not math.isfinite(carry["loss"]) and agent != "pqn":
      raise RuntimeError(f"no finite training loss in window {carry['window']}")
    return seconds

  return pairing.Prepared(compile_s, timed, info)


def prepare_torch(game: str, num_seeds: int, steps: int, learning_starts: int,
                  buffer_size: int, threads: int = 0) -> pairing.Prepared:
  """`benchmarks.rl_reference` agents, warmed up; each run continues every seed's
  run for `steps` environment steps, seeds one after another, on `threads`
  threads (0: the host's cores)."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import rl_reference  # pylint: disable=g-import-not-at-top
  from plastix import sharding  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads or sharding.host_cores())
  settings = rl_reference.Settings(game=game, buffer_size=buffer_size, batch_size=BATCH,
                                   learning_starts=learning_starts,
                                   eps_decay_steps=max(1, learning_starts))
  agents = [rl_reference.Agent(settings, seed) for seed in range(num_seeds)]
  warmup = warmup_rounds(learning_starts, steps) * steps
  for a in agents:
    a.run(warmup)

  def run() -> float:
    seconds = 0.0
    for a in agents:
      start = time.perf_counter()
      a.run(steps)
      seconds += time.perf_counter() - start
      if not math.isfinite(a.last_loss):
        raise RuntimeError(f"the reference's loss is {a.last_loss}")
    return seconds

  channels = agents[0].env.state_shape()[2]
  return pairing.Prepared(0.0, run, {
      "seed_steps": num_seeds * steps, "num_seeds": num_seeds, "num_envs": 1,
      "obs_shape": [10, 10, channels], "num_actions": len(agents[0].actions),
      "warmup_env_steps": warmup, **pairing.torch_info(torch, "cpu")})


def prepare(mode: str, game: str, steps: int, learning_starts: int, buffer_size: int,
            torch_seeds: int, cpu_devices: int = 0) -> pairing.Prepared:
  """The named mode (`parse_mode`), built, warmed up and ready to time."""
  kind, number = parse_mode(mode)
  if kind == "torch":
    return prepare_torch(game, torch_seeds, steps, learning_starts, buffer_size, number)
  if kind == "plastix":
    return prepare_plastix("dqn", game, number, 1, steps, learning_starts, buffer_size,
                           cpu_devices)
  # PQN's windows are whole rollouts (configs/rl_minatar.py's pqn.rollout_steps).
  from configs import rl_minatar  # pylint: disable=g-import-not-at-top
  rollout = rl_minatar.get_config().pqn.rollout_steps * number
  pqn_steps = max(rollout, steps * number // rollout * rollout)
  return prepare_plastix("pqn", game, 1, number, pqn_steps, learning_starts, buffer_size)


def pqn_available() -> bool:
  """Whether plastix has a PQN agent (`plastix.rl.agents.AGENTS`)."""
  from plastix.rl import agents  # pylint: disable=g-import-not-at-top
  return "pqn" in agents.AGENTS


def default_modes(seeds, pqn_envs: int, with_pqn: bool) -> list[str]:
  return ([f"plastix_{n}" for n in seeds] + ["torch"]
          + ([f"pqn_{pqn_envs}"] if with_pqn else []))


# ----------------------------------------------------------------------------
# The report.


def per_step_cells(cells: dict) -> dict:
  """`cells` with every round's time divided by the mode's seed-steps in a round:
  seconds per seed-step, so that `pairing.paired_ratio` of two modes that ran
  different amounts of work compares their speeds."""
  out = {}
  for mode, c in cells.items():
    if "times" in c and c.get("seed_steps"):
      out[mode] = {"times": [t / c["seed_steps"] for t in c["times"]]}
  return out


def seed_steps_per_s(cell: dict) -> float:
  """Environment steps of all a mode's seeds per second, from its median round."""
  return cell["seed_steps"] / statistics.median(cell["times"])


HEADER = ("| mode | seeds | envs per seed | devices | seed-steps/s | per seed "
          "| vs torch (paired) | MFU | compile s | peak RSS MiB |")


def table_lines(cells: dict, peak: float) -> list[str]:
  """The markdown rows: per mode the devices its runs span (the CPU split of
  ``experiments.rl``; 1 for PyTorch), its seed-steps/s (median round), per seed, its
  paired speed relative to ``torch``, the MFU of the DQN modes
  (`dqn_flops_per_env_step`), compile time and peak memory; then the unsteady
  rounds, if any."""
  per_step = per_step_cells(cells)
  lines = []
  for mode, c in cells.items():
    if "error" in c:
      lines.append(f"| {mode} | | | | n/a ({c['error']}) | | | | | |")
      continue
    rate = seed_steps_per_s(c)
    kind, _ = parse_mode(mode)
    if kind == "pqn":
      mfu = "n/a"
    else:
      flops = dqn_flops_per_env_step(c["obs_shape"], c["num_actions"])["total"]
      mfu = f"{100 * rate * flops / peak:.1f}%"
    vs = "1.00x" if mode == "torch" else pairing.format_ratio(
        pairing.paired_ratio(per_step, "torch", mode))
    lines.append(f"| {mode} | {c['num_seeds']} | {c['num_envs']} | {c.get('devices', 1)} | "
                 f"{rate:.0f} | "
                 f"{rate / c['num_seeds']:.0f} | {vs} | {mfu} | {c['compile_s']:.1f} | "
                 f"{pairing.format_mib(c.get('peak_rss_mib'))} |")
  note = pairing.unsteady_note(cells)
  if note:
    lines.append(f"| unsteady rounds | | | | {note} | | | | | |")
  return lines


def flops_line(cells: dict) -> str | None:
  """The analytic model FLOPs of one environment step and XLA's count, from the
  first DQN mode that reported them."""
  for mode, c in cells.items():
    if "xla_update_flops" in c:
      flops = dqn_flops_per_env_step(c["obs_shape"], c["num_actions"])
      return (f"model FLOPs per environment step ({mode}'s network, obs "
              f"{'x'.join(map(str, c['obs_shape']))}, {c['num_actions']} actions, batch {BATCH}): "
              f"{flops['total'] / 1e6:.2f} M (update {flops['update'] / 1e6:.2f} M, acting "
              f"{flops['act'] / 1e6:.3f} M); XLA's count of the compiled update "
              f"{c['xla_update_flops'] / 1e6:.2f} M, of acting {c['xla_act_flops'] / 1e6:.3f} M")
  return None


def target_line(cells: dict, seeds: int, target: float = 4.0,
                reference: str = "torch") -> str | None:
  """Whether plastix with `seeds` seeds reached `target` times the seed-steps/s
  of `reference` (a PyTorch mode; the paired median)."""
  mode = f"plastix_{seeds}"
  ratio = pairing.paired_ratio(per_step_cells(cells), reference, mode)
  if ratio is None:
    return None
  met = "met" if ratio[0] >= target else "not met"
  return (f"target: {mode} at least {target:g}x {reference}'s seed-steps/s: "
          f"{pairing.format_ratio(ratio)}, {met}")


# ----------------------------------------------------------------------------
# Entry point.


def define_flags() -> None:
  """The command line's flags; defined only when this module runs as a program (so
  that it can be imported beside `benchmarks.throughput`, whose flags share names)."""
  flags.DEFINE_string("mode", None, "Internal: run one mode as a worker process.")
  flags.DEFINE_string("game", "breakout",
                      "MinAtar game: breakout, asterix, freeway or space_invaders.")
  flags.DEFINE_list("seeds", ["1", "8"], "plastix DQN seed counts to measure.")
  flags.DEFINE_integer("steps", 2000, "Timed environment steps per seed in each round.")
  flags.DEFINE_integer("learning_starts", 5000, "Environment steps per seed stored before the "
                       "first update (the untimed warm-up).")
  flags.DEFINE_integer("rounds", 5, "Timed rounds of every mode, in rotated order.")
  flags.DEFINE_integer("torch_seeds", 1, "Seeds of the PyTorch reference, one after another.")
  flags.DEFINE_integer("pqn_envs", 128, "Environments of the PQN mode (where the agent exists).")
  flags.DEFINE_integer("buffer_size", 100_000, "Replay capacity per seed.")
  flags.DEFINE_integer("cpu_devices", 0, "CPU devices of the plastix DQN modes (the config's "
                       "cpu_devices; 0: as experiments.rl chooses for the runs and cores).")
  flags.DEFINE_list("modes", None, "Modes to measure (default: plastix_N for every --seeds "
                    "count, torch, and pqn_E where plastix has PQN).")
  flags.DEFINE_string("json_out", "", "Also write the per-round times and worker info to "
                      "this file.")
  flags.DEFINE_float("worker_timeout_s", pairing.WORKER_TIMEOUT_S, "Seconds to wait for a "
                     "worker's answer before killing it and reporting the mode as failed.")


FLAGS = flags.FLAGS

def _command(mode: str) -> list[str]:
  """A worker of `mode` with this run's settings."""
  return [sys.executable, "-m", "benchmarks.rl_throughput", f"--mode={mode}"] + [
      f"--{name}={FLAGS[name].value}" for name in ("game", "steps", "learning_starts",
                                                   "buffer_size", "torch_seeds",
                                                   "cpu_devices")]


def check_flags() -> None:
  """Refuses bad flags (one line, exit status 2) before any worker starts."""
  if FLAGS.game not in GAMES:
    pairing.refuse(f"--game: choose one of {', '.join(GAMES)} (got {FLAGS.game})")
  for name in ("steps", "rounds", "torch_seeds", "pqn_envs"):
    if FLAGS[name].value < 1:
      pairing.refuse(f"--{name}: must be at least 1 (got {FLAGS[name].value})")
  if FLAGS.learning_starts < BATCH:
    pairing.refuse(f"--learning_starts: must be at least the batch of {BATCH} "
                   f"(got {FLAGS.learning_starts})")
  if FLAGS.buffer_size < BATCH:
    pairing.refuse(f"--buffer_size: must hold at least one batch of {BATCH} "
                   f"(got {FLAGS.buffer_size})")
  if not FLAGS.seeds or not all(v.isdigit() and int(v) > 0 for v in FLAGS.seeds):
    pairing.refuse(f"--seeds: must be positive integers (got {','.join(FLAGS.seeds)})")
  for mode in FLAGS.modes or ():
    try:
      parse_mode(mode)
    except ValueError as e:
      pairing.refuse(f"--modes: {e}")
  if FLAGS.cpu_devices < 0:
    pairing.refuse(f"--cpu_devices: must be at least 0 (got {FLAGS.cpu_devices})")
  if not FLAGS.worker_timeout_s > 0:
    pairing.refuse(f"--worker_timeout_s: must be positive (got {FLAGS.worker_timeout_s})")


def main(argv):
  del argv
  if FLAGS.mode == "matmul":
    pairing.say(pairing.machine_info())
    return
  if FLAGS.mode == "pqn_available":
    pairing.say({"pqn": pqn_available()})
    return
  if FLAGS.mode:
    pairing.serve(lambda: prepare(FLAGS.mode, FLAGS.game, FLAGS.steps, FLAGS.learning_starts,
                                  FLAGS.buffer_size, FLAGS.torch_seeds, FLAGS.cpu_devices))
    return

  check_flags()
  here = [sys.executable, "-m", "benchmarks.rl_throughput"]
  # JAX runs only in the workers; the peak is the best of a measurement before
  # and after the rounds (a single one can come out low on a shared machine).
  machine = pairing.one_shot(here + ["--mode=matmul"])
  modes = FLAGS.modes or default_modes(
      FLAGS.seeds, FLAGS.pqn_envs, pairing.one_shot(here + ["--mode=pqn_available"])["pqn"])
  cells = pairing.paired_rounds(
      modes, lambda mode: pairing.Worker(mode, _command(mode), FLAGS.worker_timeout_s),
      FLAGS.rounds)
  peak = max(machine["flops"], pairing.one_shot(here + ["--mode=matmul"])["flops"])
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w", encoding="utf-8") as f:
      json.dump({"machine": machine, "peak": peak, "cells": cells}, f, indent=1)

  torch_cell = next((c for m, c in cells.items()
                     if parse_mode(m)[0] == "torch" and "torch" in c), {})
  warmup = warmup_rounds(FLAGS.learning_starts, FLAGS.steps) * FLAGS.steps
  print(pairing.machine_line(machine)
        + (f"; {pairing.torch_line(torch_cell)}" if torch_cell else "")
        + f"; dense f32 matmul peak {peak / 1e9:.1f} GFLOP/s; {FLAGS.game}, {FLAGS.rounds} "
        f"rounds of {FLAGS.steps} env steps per seed after {warmup} warm-up steps\n")
  print(HEADER)
  print("|" + "---|" * (HEADER.count("|") - 1))
  print("\n".join(table_lines(cells, peak)))
  references = [m for m in modes if parse_mode(m)[0] == "torch"]
  extra = [flops_line(cells)] + [target_line(cells, int(n), reference=r)
                                 for r in references for n in FLAGS.seeds]
  if FLAGS.modes is None and not any(parse_mode(m)[0] == "pqn" for m in modes):
    extra.append("pqn: plastix has no PQN agent (plastix.rl.agents.AGENTS); not measured")
  print("\n" + "\n".join(line for line in extra if line))


if __name__ == "__main__":
  define_flags()
  app.run(main)
