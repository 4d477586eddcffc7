"""Running every intervention of an RL config into a workdir: the library behind
``experiments.rl``.

* `prepare(config)` checks every field (and every intervention's edit of it)
  before anything compiles; bad input raises `plastix.experiment.UsageError`.
* `run(prepared, workdir)` trains each intervention, all seeds and grid points
  in one program (`plastix.rl.loop.run_windows`, in chunks of
  ``windows_per_chunk`` evaluation windows), and writes ``config.json``,
  ``run_info.json``, ``metrics.csv`` (after every intervention),
  ``summary.json``, ``returns.png``, ``probes.png`` and ``checkpoints/``. The
  same call on a workdir of the same config resumes it, inside an
  intervention from its last checkpoint; a different config is refused.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, NamedTuple

import ml_collections

from plastix import experiment as base
from plastix import grid as grid_lib
from plastix import results as base_results
from plastix import interventions
from plastix.rl import from_config

UsageError = base.UsageError
# RL config fields added after RL workdirs were first written -> the value that
# means what the older code did (`plastix.experiment.is_resumable`).
# (cpu_devices 0: the run resumes on the split its run_info.json records, none
# for the older runs; model.cnn_padding: the MinAtar CNN was SAME-padded.)
ADDED_FIELDS = {"suite": "minatar", "eval_steps": 0, "eval_epsilon": 0.001, "pqn.lam": 0.65,
                "pqn.rollout_steps": 32, "pqn.epochs": 2, "pqn.minibatches": 4,
                "cpu_devices": 0, "model.cnn_padding": "SAME"}


class Prepared(NamedTuple):
  config: ml_collections.ConfigDict
  names: tuple[str, ...]


def prepare(config: ml_collections.ConfigDict) -> Prepared:
  """Checks `config`; raises `UsageError` (one line naming the field)."""
  try:
    names = from_config.check(config)
  except ValueError as e:
    raise UsageError(str(e)) from None
  return Prepared(config, names)


def cpu_split(config: ml_collections.ConfigDict, saved_info: dict | None) -> int | None:
  """The CPU devices a run splits this host into: `from_config.cpu_devices`
  for a new run (`saved_info` None); a resumed run keeps the split its
  run_info.json records (None for a run from before the split existed, or
  where run_info.json is lost), unless ``config.cpu_devices`` sets one."""
  # pylint: disable-next=protected-access
  return base._resumed_split(config, from_config.cpu_devices(config), saved_info or {})


def use_split(config: ml_collections.ConfigDict, split: int | None) -> int | None:
  """Splits the CPU into `split` devices (`sharding.use_cpu_devices`); the split
  in effect. Where JAX already runs in this process (a notebook, a test), its
  devices stay: a `UsageError` if ``config.cpu_devices`` asked for another
  count, else None (JAX's own devices)."""
  import jax  # pylint: disable=g-import-not-at-top
  from plastix import sharding  # pylint: disable=g-import-not-at-top
  if split is None:
    return None
  try:
    sharding.use_cpu_devices(split)
    return split
  except RuntimeError:
    have = jax.local_device_count("cpu")
    if have == split:
      return split
    if config.get("cpu_devices", 0):
      raise UsageError(f"cpu_devices: JAX already runs on {have} CPU devices in this process; "
                       f"run {split} in a new process") from None
    return None


def layout_runs(config: ml_collections.ConfigDict, spec):
  """Every run of `config` (seeds x grid points), laid out over the devices:
  ``(grid points, keys, hparams, number of real runs)``.

  On more than one device the runs split over all of them (padded with copies
  of the last run to a multiple of them, `plastix.sharding.pad_runs`; drop the
  copies with `sharding.unpad`), as the supervised runs are, unless the
  environment says it is not ``shardable``.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from plastix import sharding  # pylint: disable=g-import-not-at-top
  points, hp = from_config.grid_hparams(config)
  keys = from_config.seed_keys(config, len(points))
  num_real = keys.shape[0]
  if jax.device_count() > 1 and getattr(spec.env, "shardable", True):
    mesh = sharding.seed_mesh()
    (keys, hp), _ = sharding.pad_runs((keys, hp), mesh.size)
    keys, hp = sharding.shard_seeds(keys, mesh), sharding.shard_seeds(hp, mesh)
  return points, keys, hp, num_real


def init_runs(spec, keys, hp):
  """`loop.init_states` for `layout_runs`'s keys and hyperparameters, every leaf
  placed like the keys. `init_states` leaves the leaves that do not depend on
  the key (the empty replay buffer, counts) replicated, a copy on every
  device, while a chunk returns every leaf split by runs: placed alike, every
  chunk runs one compiled program, and each device holds only its runs."""
  from plastix import sharding  # pylint: disable=g-import-not-at-top
  from plastix.rl import loop  # pylint: disable=g-import-not-at-top
  states = loop.init_states(keys, hp, spec=spec)
  if len(keys.sharding.device_set) > 1:
    states = sharding.shard_seeds(states, keys.sharding.mesh)
  return states


def _run_intervention(config, name: str, progress, checkpoint_dir: str, job: dict):
  """Every seed and grid point of `config` under intervention `name`: WindowMetrics [run, window]."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from plastix import checkpointing, sharding, watchdog  # pylint: disable=g-import-not-at-top
  from plastix.rl import loop  # pylint: disable=g-import-not-at-top
  resolved = interventions.apply(config, name)
  spec = from_config.spec(resolved)
  points, keys, hp, num_real = layout_runs(resolved, spec)
  total_windows = resolved.total_env_steps // resolved.eval_every_steps
  chunk = min(resolved.windows_per_chunk, total_windows)
  states = init_runs(spec, keys, hp)
  ckpt = checkpointing.Checkpointer(checkpoint_dir)
  done, parts = 0, []
  latest = ckpt.latest_tasks_done()
  if latest is not None:
    _, like = jax.eval_shape(lambda s: loop.run_windows(s, hp, spec=spec, num_windows=latest),
                             states)
    states, restored = ckpt.restore(latest, states,
                                    jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), like))
    parts.append(jax.tree.map(np.asarray, restored))
    done = latest
    progress(f"[{name}] resumed from checkpoint after {done * resolved.eval_every_steps} "
             "env steps")
  timeout_s = float(resolved.stall_timeout_s)
  platform = jax.default_backend()
  slowest = None
  with watchdog.Watchdog() as dog:
    while done < total_windows:
      n = min(chunk, total_windows - done)
      what = (f"[{name}] the program for env steps {done * resolved.eval_every_steps + 1}-"
              f"{(done + n) * resolved.eval_every_steps} ({num_real} runs on "
              f"{jax.device_count()} {platform} devices)")
      started = time.perf_counter()
      with dog.watching(watchdog.chunk_limits(timeout_s, platform, slowest), what,
                        "the same command resumes from the last checkpoint"):
        states, metrics = loop.run_windows(states, hp, spec=spec, num_windows=n,
                                           first_window=done)
        metrics = jax.tree.map(np.asarray, metrics)
      elapsed = time.perf_counter() - started
      slowest = max(slowest or 0.0, elapsed)
      parts.append(metrics)
      done += n
      so_far = jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *parts)
      parts = [so_far]
      ckpt.save(done, states, so_far)
      job["steps_done"] += n * resolved.eval_every_steps * num_real
      rate = n * resolved.eval_every_steps * num_real / elapsed
      last = metrics.episode_return[:num_real, -1]
      ret = np.nanmean(last) if np.isfinite(last).any() else float("nan")
      remaining = job["steps_total"] - job["steps_done"]
      progress(f"[{name} {job['index']}/{job['count']}] env steps "
               f"{done * resolved.eval_every_steps}/{resolved.total_env_steps}  return "
               f"{ret:.2f}  {rate:,.0f} seed-steps/s  eta {remaining / rate:.0f}s")
  ckpt.close()
  metrics = jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *parts)
  return sharding.unpad(metrics, num_real), points


def run(prepared: Prepared, workdir: str,
        progress: Callable[[str], None] | None = None, log=None) -> dict:
  """Trains every intervention of ``prepared.config`` into `workdir` (module docstring).

  `progress` is called with each progress line (default: ``log.say``, or
  print); `log`, a `plastix.joblog.JobLog`, is attached to ``<workdir>/log.txt``.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from plastix import joblog  # pylint: disable=g-import-not-at-top
  from plastix.rl import atari_scores, plotting, results  # pylint: disable=g-import-not-at-top
  config, names = prepared
  say = progress or (log.say if log else (lambda line: print(line, flush=True)))
  config_dict = json.loads(json.dumps(config.to_dict()))
  # Fields added since RL workdirs were first written, with their old meaning.
  resuming = base.is_resumable(workdir, config_dict, added_fields=ADDED_FIELDS)
  # pylint: disable-next=protected-access
  saved_info = base._saved_run_info(workdir) if resuming else None
  # Before JAX's first operation: the CPU device count is fixed then.
  split = use_split(config, cpu_split(config, saved_info))
  base._prepare_workdir(workdir)  # pylint: disable=protected-access
  if log is not None:
    log.attach(os.path.join(workdir, joblog.LOG_FILE))
  layout = {"processes": jax.process_count(), "run_devices": jax.device_count()}
  if not resuming:
    base_results.write_json(os.path.join(workdir, "config.json"), config_dict)
    base_results.write_json(os.path.join(workdir, "run_info.json"), base.run_info(split, layout))
  points = grid_lib.points(config.grid, from_config.GRID_FIELDS)
  runs = config.num_seeds * len(points)
  env = from_config.make_env(config)
  say(f"{config.name}: {config.agent} on {'+'.join(env.info.games)} ({config.num_envs} envs "
      f"per seed), {config.total_env_steps} env steps, {config.num_seeds} seeds"
      f"{f' x {len(points)} grid points' if len(points) > 1 else ''} on "
      f"{jax.device_count()} {jax.default_backend()} device(s), interventions "
      f"{', '.join(names)}")
  start = time.perf_counter()
  job = {"steps_total": len(names) * runs * config.total_env_steps, "steps_done": 0,
         "count": len(names), "index": 0}
  rows = []
  seeds = list(range(config.num_seeds))
  for i, name in enumerate(names):
    job["index"] = i + 1
    try:
      metrics, points = _run_intervention(config, name, say,
                                          os.path.join(workdir, "checkpoints", name), job)
    except base._version_mismatch() as e:  # pylint: disable=protected-access
      raise UsageError(f"--workdir {workdir!r}: {e}") from None
    rows.extend(results.metrics_to_rows(name, metrics, seeds, points))
    base_results.write_csv(os.path.join(workdir, "metrics.csv"), rows)
  conditions = grid_lib.conditions(names, config.grid, from_config.GRID_FIELDS)
  games = from_config.parse_env_name(config)
  normalize = None
  if from_config.suite(config) == "atari" and len(games) == 1:
    normalize = lambda score: atari_scores.normalized(games[0], score)
  summary = results.summarize(rows, conditions, normalize,
                              evaluated=bool(config.get("eval_steps", 0)))
  base_results.write_json(os.path.join(workdir, "summary.json"), summary)
  title = f"{config.name}: {config.agent} on {config.env_name}"
  plotting.plot_returns(rows, conditions, os.path.join(workdir, "returns.png"), title)
  plotting.plot_probes(rows, conditions, os.path.join(workdir, "probes.png"), title)
  say(f"trained in {time.perf_counter() - start:.0f}s")
  return summary
