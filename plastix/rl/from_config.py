"""An RL config (``configs/rl_minatar.py``) as the loop's arguments, checked field by field.

`check` raises ``ValueError("<field>: ...")`` for the first bad field of a
config and of each of its interventions, before anything compiles (the entry
point prints it as one line and exits with status 2); `spec` and `hparams`
build the loop's static spec and traced hyperparameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from plastix import from_config as supervised_config
from plastix import grid as grid_lib
from plastix import interventions
from plastix import models
from plastix import optim
from plastix import probe_suite
from plastix import resets
from plastix import sharding
from plastix.rl import agents
from plastix.rl import atari
from plastix.rl import envs
from plastix.rl import loop

# Config field -> the `loop.RLHParams` field it feeds (a grid may set these).
GRID_FIELDS = {
    **{k: v for k, v in grid_lib.GRID_FIELDS.items() if k.startswith("optimizer.")},
    "loss.l2": "l2",
    "optimizer.l2_init": "l2_init",
    "td.gamma": "gamma",
}
# Supervised interventions with no meaning for a value-based agent's TD loss.
NOT_FOR_RL = ("two_hot", "hl_gauss", "label_smoothing", "grad_norm_penalty")


def _require(ok: bool, field: str, message: str, value) -> None:
  if not ok:
    raise ValueError(f"{field}: {message} (got {value!r})")


SUITES = ("minatar", "atari")


def suite(config: ml_collections.ConfigDict) -> str:
  """``config.suite``: "minatar" (gymnax, `plastix.rl.envs`) or "atari" (ale-py,
  `plastix.rl.atari`); "minatar" where the field is missing."""
  return config.get("suite", "minatar")


def parse_env_name(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  if suite(config) == "atari":
    return atari.parse_env_name(config.env_name)
  return envs.parse_env_name(config.env_name)


def num_runs(config: ml_collections.ConfigDict) -> int:
  """Runs the loop vmaps: ``num_seeds`` x grid points."""
  return int(config.num_seeds) * len(grid_lib.points(config.grid, GRID_FIELDS))


def cpu_devices(config: ml_collections.ConfigDict) -> int | None:
  """The CPU devices to split this host into for `config`'s runs, or None to
  leave JAX's own devices (`plastix.sharding`).

  ``config.cpu_devices = n > 0`` is taken as given. 0 (automatic) gives
  `sharding.cpu_device_count` for the runs (seeds x grid points) and this
  host's cores: each device steps and trains its share of the runs, which on
  2 cores ran DQN on MinAtar with 8 seeds 1.46x faster than one device
  (docs/performance.md). None for the Atari suite (one ale-py
  vector env serves every run of a process: its runs stay on one device) and
  where ``JAX_NUM_CPU_DEVICES`` or ``XLA_FLAGS`` already set the count.
  """
  requested = int(config.get("cpu_devices", 0))
  if requested > 0:
    return requested
  if suite(config) == "atari" or sharding.forced_cpu_device_count() is not None:
    return None
  return sharding.cpu_device_count(num_runs(config), sharding.host_cores())


def switch_every(config: ml_collections.ConfigDict) -> int:
  """Env steps per game of a ``+`` sequence: ``switch_every_steps``, or when 0
  an equal share of ``total_env_steps`` (rounded down to whole vector steps);
  0 for a single game."""
  games = parse_env_name(config)
  if len(games) == 1:
    return int(config.switch_every_steps)
  if config.switch_every_steps:
    return int(config.switch_every_steps)
  share = config.total_env_steps // len(games)
  return share - share % config.num_envs


def _atari_env(config: ml_collections.ConfigDict, role: str):
  a = config.atari
  train = role == "train"
  return atari.AtariEnv(
      config.env_name, int(config.num_envs), num_runs=num_runs(config),
      sticky_prob=float(config.sticky_prob), switch_every=switch_every(config) if train else 0,
      episodic_life=bool(a.episodic_life) and train, clip_rewards=bool(a.clip_rewards),
      noop_max=int(a.noop_max), max_episode_frames=int(a.max_episode_frames),
      backend=a.backend, role=role, num_threads=int(a.num_threads))


def make_env(config: ml_collections.ConfigDict):
  """The training environments: `envs.VecEnv` (MinAtar) or `atari.AtariEnv`."""
  if suite(config) == "atari":
    return _atari_env(config, "train")
  return envs.VecEnv(config.env_name, int(config.num_envs), float(config.sticky_prob),
                     switch_every(config))


def make_eval_env(config: ml_collections.ConfigDict):
  """The evaluation environments (same game and settings, no episodic life,
  never switching), or None when ``eval_steps`` is 0."""
  if not config.get("eval_steps", 0):
    return None
  if suite(config) == "atari":
    return _atari_env(config, "eval")
  return envs.VecEnv(config.env_name, int(config.num_envs), float(config.sticky_prob), 0)


def obs_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """One observation's shape, without building the environments."""
  if suite(config) == "atari":
    return atari.OBS_SHAPE
  return (10, 10, 1)


def make_agent(config: ml_collections.ConfigDict, num_actions: int):
  td = config.td
  if config.agent == "dqn":
    return agents.DQN(num_actions, double=bool(td.double), huber_kappa=float(td.huber_kappa))
  if config.agent == "pqn":
    p = config.pqn
    return agents.PQN(num_actions, lam=float(p.lam), rollout_steps=int(p.rollout_steps),
                      epochs=int(p.epochs), minibatches=int(p.minibatches))
  return agents.C51(num_actions, num_atoms=int(td.num_atoms), v_min=float(td.v_min),
                    v_max=float(td.v_max))


def _check_one(config: ml_collections.ConfigDict) -> None:
  """The fields of one resolved config (an intervention applied)."""
  _require(config.agent in agents.AGENTS, "agent", f"choose one of {', '.join(agents.AGENTS)}",
           config.agent)
  _require(suite(config) in SUITES, "suite", f"choose one of {', '.join(SUITES)}",
           suite(config))
  for field in ("total_env_steps", "num_envs", "num_seeds", "eval_every_steps",
                "windows_per_chunk"):
    value = config[field]
    _require(isinstance(value, int) and value >= 1, field, "must be a positive integer", value)
  devices = config.get("cpu_devices", 0)
  _require(isinstance(devices, int) and not isinstance(devices, bool) and devices >= 0,
           "cpu_devices", "must be an integer >= 0 (0 = chosen for the runs and cores)", devices)
  _require(devices <= 1 or suite(config) != "atari", "cpu_devices",
           "the atari suite steps one ale-py vector env for every run of a process, on one "
           "device; set 0 or 1", devices)
  _require(config.eval_every_steps % config.num_envs == 0, "eval_every_steps",
           f"must be a multiple of num_envs={config.num_envs}", config.eval_every_steps)
  _require(config.total_env_steps % config.eval_every_steps == 0, "total_env_steps",
           f"must be a multiple of eval_every_steps={config.eval_every_steps}",
           config.total_env_steps)
  games = parse_env_name(config)
  if len(games) > 1 and not config.switch_every_steps:
    _require(switch_every(config) > 0, "switch_every_steps",
             f"total_env_steps={config.total_env_steps} is too short to share between "
             f"{len(games)} games", config.switch_every_steps)
  if suite(config) == "atari":
    a = config.get("atari")
    _require(a is not None, "atari", "the atari suite needs the atari section of "
             "configs/rl_atari.py", a)
    for field in ("episodic_life", "clip_rewards"):
      _require(isinstance(a[field], bool), f"atari.{field}", "must be True or False", a[field])
    _require(isinstance(a.num_threads, int) and a.num_threads >= 0, "atari.num_threads",
             "must be an integer >= 0", a.num_threads)
    atari.check(config.env_name, config.num_envs, num_runs(config), config.sticky_prob,
                switch_every(config), a.noop_max, a.max_episode_frames, a.backend)
  else:
    envs.check(config.env_name, config.num_envs, config.sticky_prob, switch_every(config))
  eval_steps = config.get("eval_steps", 0)
  _require(isinstance(eval_steps, int) and eval_steps >= 0 and eval_steps % config.num_envs == 0,
           "eval_steps", f"must be a multiple of num_envs={config.num_envs} (0: no evaluation)",
           eval_steps)
  if eval_steps:
    _require(len(games) == 1, "eval_steps", "evaluation phases run on a single game; a "
             "sequence reports its training episodes (set eval_steps=0)", eval_steps)
  eval_epsilon = config.get("eval_epsilon", 0.001)
  _require(isinstance(eval_epsilon, (int, float)) and 0.0 <= eval_epsilon <= 1.0,
           "eval_epsilon", "must be in [0, 1]", eval_epsilon)
  if config.agent == "pqn":
    p = config.get("pqn")
    _require(p is not None, "pqn", "the pqn agent needs the pqn section of "
             "configs/rl_minatar.py", p)
    for field in ("rollout_steps", "epochs", "minibatches"):
      _require(isinstance(p[field], int) and p[field] >= 1, f"pqn.{field}",
               "must be a positive integer", p[field])
    _require(0.0 <= p.lam <= 1.0, "pqn.lam", "must be in [0, 1]", p.lam)
    rollout = p.rollout_steps * config.num_envs
    _require(config.eval_every_steps % rollout == 0, "eval_every_steps",
             f"must be a multiple of a rollout, pqn.rollout_steps x num_envs = {rollout}",
             config.eval_every_steps)
    _require(rollout % p.minibatches == 0, "pqn.minibatches",
             f"must divide a rollout's {rollout} transitions", p.minibatches)
  r = config.replay
  _require(r.buffer_size >= max(config.num_envs, r.batch_size), "replay.buffer_size",
           "must hold at least one vector step and one batch", r.buffer_size)
  _require(r.batch_size >= 1, "replay.batch_size", "must be >= 1", r.batch_size)
  _require(r.learning_starts >= 0, "replay.learning_starts", "must be >= 0", r.learning_starts)
  _require(r.train_every >= 1, "replay.train_every", "must be >= 1", r.train_every)
  td = config.td
  _require(0.0 <= td.gamma <= 1.0, "td.gamma", "must be in [0, 1]", td.gamma)
  _require(td.target_update_period >= 1, "td.target_update_period", "must be >= 1",
           td.target_update_period)
  _require(td.huber_kappa > 0, "td.huber_kappa", "must be > 0", td.huber_kappa)
  _require(td.num_atoms >= 2, "td.num_atoms", "must be >= 2", td.num_atoms)
  _require(td.v_max > td.v_min, "td.v_max", f"must exceed td.v_min={td.v_min}", td.v_max)
  ex = config.exploration
  for field in ("eps_start", "eps_end"):
    _require(0.0 <= ex[field] <= 1.0, f"exploration.{field}", "must be in [0, 1]", ex[field])
  _require(ex.eps_decay_steps >= 1, "exploration.eps_decay_steps", "must be >= 1",
           ex.eps_decay_steps)
  model = models.create(config.model, 1, obs_shape(config))  # raises "model.<field>: ..."
  o = config.optimizer
  _require(o.name in optim.OPTIMIZERS, "optimizer.name",
           f"choose one of {', '.join(optim.OPTIMIZERS)}", o.name)
  _require(o.weight_decay_mask in optim.WEIGHT_DECAY_MASKS, "optimizer.weight_decay_mask",
           f"choose one of {', '.join(optim.WEIGHT_DECAY_MASKS)}", o.weight_decay_mask)
  _require(o.learning_rate > 0, "optimizer.learning_rate", "must be > 0", o.learning_rate)
  names = resets.parse_methods(config.resets.methods)
  for name in names:
    _require(name in resets.METHODS, "resets.methods",
             f"unknown reset {name!r}; choose from {', '.join(resets.METHODS)}",
             config.resets.methods)
  if names:
    _require(config.resets.period_updates >= 1, "resets.period_updates", "must be >= 1",
             config.resets.period_updates)
  if "redo" in names:
    _require(config.model.activation != "crelu", "resets.methods",
             "redo cannot recycle CReLU units (each feeds two inputs of the next layer)",
             config.resets.methods)
    try:
      models.redo_layers(model)
    except ValueError as e:
      raise ValueError(f"resets.methods: {e}") from None
  _require(config.probes.batch_size >= 1, "probes.batch_size", "must be >= 1",
           config.probes.batch_size)
  _require(config.probes.sharpness_every >= 0, "probes.sharpness_every", "must be >= 0",
           config.probes.sharpness_every)


def check(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Checks `config` and every intervention applied to it; returns the intervention
  names. Raises ``ValueError("<field>: ...")`` for the first bad field."""
  try:
    names = interventions.parse_list(config.interventions)
  except ValueError as e:
    raise ValueError(f"interventions: {e}") from None
  for name in names:
    for part in interventions.parse(name):
      _require(part not in NOT_FOR_RL, "interventions",
               f"{part} has no meaning for a TD-learning agent", name)
  try:
    grid_lib.parse(config.grid, GRID_FIELDS)
  except ValueError as e:
    raise ValueError(f"grid: {e}") from None
  for name in names:
    _check_one(interventions.apply(config, name))
  return names


def probe_settings(config: ml_collections.ConfigDict) -> probe_suite.ProbeSettings:
  p = config.probes
  return probe_suite.ProbeSettings(
      dormant_tau=float(p.dormant_tau), srank_delta=float(p.srank_delta),
      linearized_threshold=float(p.linearized_threshold),
      top_singular_values=int(p.top_singular_values), sharpness_every=int(p.sharpness_every),
      hessian_iters=int(p.hessian_iters))


def spec(config: ml_collections.ConfigDict) -> loop.RLSpec:
  """The loop's static spec for one resolved config (an intervention applied)."""
  env = make_env(config)
  agent = make_agent(config, env.info.num_actions)
  model = models.create(config.model, agent.num_outputs, env.info.obs_shape)
  eval_env = make_eval_env(config)
  r, td, ex, o, rs = config.replay, config.td, config.exploration, config.optimizer, config.resets
  return loop.RLSpec(
      agent=agent, model=model, env=env,
      window_steps=config.eval_every_steps // config.num_envs,
      buffer_size=int(r.buffer_size), batch_size=int(r.batch_size),
      learning_starts=int(r.learning_starts), train_every=int(r.train_every),
      target_update_period=int(td.target_update_period),
      eps_start=float(ex.eps_start), eps_end=float(ex.eps_end),
      eps_decay_steps=int(ex.eps_decay_steps), optimizer=o.name,
      weight_decay_mask=o.weight_decay_mask, coupled_l2=bool(config.loss.l2),
      l2_init=bool(o.l2_init), normalize_and_project=bool(o.normalize_and_project),
      resets=resets.parse_methods(rs.methods), reset_every_updates=int(rs.period_updates),
      redo_tau=float(rs.redo_tau), shrink=float(rs.shrink), perturb=float(rs.perturb),
      probe_settings=probe_settings(config), probe_batch_size=int(config.probes.batch_size),
      run_probes=bool(config.probes.enabled), eval_env=eval_env,
      eval_steps=int(config.get("eval_steps", 0)) // int(config.num_envs),
      eval_epsilon=float(config.get("eval_epsilon", 0.001)))


def hparams(config: ml_collections.ConfigDict) -> loop.RLHParams:
  f = lambda v: jnp.float32(v)
  o = config.optimizer
  return loop.RLHParams(learning_rate=f(o.learning_rate), weight_decay=f(o.weight_decay),
                        gamma=f(config.td.gamma), b1=f(o.b1), b2=f(o.b2), eps=f(o.eps),
                        l2=f(config.loss.l2), l2_init=f(o.l2_init))


def grid_hparams(config: ml_collections.ConfigDict) -> tuple[list, loop.RLHParams]:
  """``(grid points, hparams with a leading run axis [points x seeds])``: run
  ``g * num_seeds + s`` is grid point g, seed s."""
  points = grid_lib.points(config.grid, GRID_FIELDS)
  per_point = [hparams(grid_lib.apply_point(config, p)) for p in points]
  return points, supervised_config.stack_hparams(per_point, repeats=config.num_seeds)


def seed_keys(config: ml_collections.ConfigDict, num_points: int = 1) -> jax.Array:
  """Seed s's key is ``fold_in(PRNGKey(config.seed), s)`` (as in the supervised
  runs), the same at every grid point: ``[num_points * num_seeds, 2]``."""
  return jnp.tile(supervised_config.seed_keys(config), (num_points, 1))


def build(config: ml_collections.ConfigDict):
  """``(spec, hparams)`` of `config` as it stands (no intervention applied)."""
  check(config)
  return spec(config), hparams(config)
