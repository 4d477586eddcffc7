r"""The RL loop: a value-based agent on vectorised environments, one compiled program.

Structure (every loop is a ``lax.scan``; seeds and grid points are a vmapped
leading run axis, as in the supervised engine)::

    run_windows(states)                          # jit(vmap over runs)
      scan over evaluation windows: run_window   # then probes, metrics
        scan over vector steps: agent_step       # act in E envs, store, learn

The two outer loops are `plastix.program.run_periods`, the program the
supervised engine runs too, with `Windows` (an evaluation window per period)
as its learner; the agents (`plastix.rl.agents`) plug into the steps.

One *vector step* acts once in each of the ``num_envs`` environments of a
seed (``num_envs`` environment steps), writes those transitions to the
replay buffer and, every ``train_every`` vector steps once
``learning_starts`` environment steps are stored, takes one gradient step on
a replay batch. Every ``target_update_period`` updates the target network is
synced, and every ``reset_every_updates`` updates the named resets run
(`plastix.resets.apply_named`, the hooks the supervised engine runs at task
ends). Which of these happen is a function of the global step number, which
the scan carries outside the run vmap, so ``lax.cond`` really skips them.

Acting is epsilon-greedy with epsilon decaying linearly from ``eps_start``
to ``eps_end`` over ``eps_decay_steps`` environment steps.

After each window (``window_steps`` vector steps) the loop reports
`WindowMetrics`: the mean return of the episodes that finished in the window,
their number, the mean training loss, and the probes on a fixed batch of
states (collected at the start by a uniform-random policy in separate
environments, `probe_states`) and on a fresh replay batch: dead, dormant and
linearized units, feature rank, parameter norm, the Q-values' magnitude, the
TD error and, on its own period, the sharpness of the TD loss.

An on-policy agent (PQN, ``agent.on_policy``) learns from its own rollouts
instead: the window scans `rollout_update` (acting as above for
``agent.rollout_steps`` vector steps, then epochs of minibatch steps on the
rollout's lambda-returns). With ``eval_env`` and ``eval_steps`` every window
ends with an evaluation phase (`evaluate`).

A seed whose loss is not finite takes no further gradient steps (its
parameters stay as they were; it still acts), as in the supervised engine;
`diverged_step` records the environment step where that happened.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from plastix import curvature
from plastix import models
from plastix import optim
from plastix import probe_suite
from plastix import probes
from plastix import program
from plastix import resets
from plastix.rl import replay
from plastix.rl.agents import Transition

# Independent PRNG streams of each seed's key.
_INIT_STREAM, _PROBE_ENV_STREAM, _ENV_STREAM, _STEP_STREAM, _RESET_STREAM = 0, 1, 2, 3, 4
_SHARPNESS_STREAM, _EVAL_STREAM, _SHUFFLE_STREAM = 5, 6, 7


@dataclasses.dataclass(frozen=True)
class RLSpec:
  """Everything static about an RL run: changing a field compiles a new program."""
  agent: Any                 # an agent of `plastix.rl.agents.AGENTS`.
  model: nn.Module           # its head has ``agent.num_outputs`` outputs.
  env: Any                   # `plastix.rl.envs.VecEnv`, `plastix.rl.atari.AtariEnv`, or anything
                             #   with their interface; optional class attributes: `stateful`
                             #   (games outside the program: `reset(key, state)`, restarted at
                             #   each program's start), `reports_valid` (`StepOut.valid`),
                             #   `shardable` (False: runs are not split over devices).
  window_steps: int          # vector steps per evaluation window.
  buffer_size: int = 100_000  # transitions (per seed).
  batch_size: int = 32
  learning_starts: int = 1000  # environment steps stored before the first update.
  train_every: int = 1       # vector steps between updates.
  target_update_period: int = 1000  # updates between target syncs.
  eps_start: float = 1.0
  eps_end: float = 0.01
  eps_decay_steps: int = 100_000   # environment steps.
  optimizer: str = "adam"
  weight_decay_mask: str = "all"
  coupled_l2: bool = False   # loss += (l2 / 2) ||p||^2 over the decay mask.
  l2_init: bool = False
  normalize_and_project: bool = False
  resets: tuple[str, ...] = ()
  reset_every_updates: int = 0  # 0: never.
  redo_tau: float = 0.1
  shrink: float = 0.8
  perturb: float = 0.2
  probe_settings: probe_suite.ProbeSettings = probe_suite.ProbeSettings()
  probe_batch_size: int = 256   # fixed probe states (and the fresh replay batch).
  run_probes: bool = True
  eval_env: Any = None       # evaluation environments (`evaluate`), or None: no evaluation.
  eval_steps: int = 0        # vector steps of each evaluation phase.
  eval_epsilon: float = 0.001

  @property
  def num_envs(self) -> int:
    return self.env.num_envs


@flax.struct.dataclass
class RLHParams:
  """Traced hyperparameters (float32 scalars); vmappable over a grid."""
  learning_rate: jax.Array
  weight_decay: jax.Array
  gamma: jax.Array
  b1: jax.Array = 0.9
  b2: jax.Array = 0.999
  eps: jax.Array = 1e-8
  l2: jax.Array = 0.0
  l2_init: jax.Array = 0.0


@flax.struct.dataclass
class RLState:
  """One run's whole state; under the loop's vmap every leaf gains a run axis."""
  params: Any
  model_state: Any
  target_params: Any
  opt_state: Any
  buffer: replay.Buffer
  env_state: Any
  obs: jax.Array             # [E, H, W, C] the observations to act on.
  rng: jax.Array
  episode_return: jax.Array  # [E] running return of each env's current episode.
  return_sum: jax.Array      # this window: summed returns of finished episodes,
  episodes: jax.Array        # ... their number,
  loss_sum: jax.Array        # ... the summed training loss,
  num_updates: jax.Array     # ... and the updates taken.
  probe_obs: jax.Array       # [P, H, W, C] fixed probe states.
  reference_means: tuple     # per layer, unit mean preactivations at the last probe.
  diverged_step: jax.Array   # environment step of the first non-finite loss, or -1.
  num_reset: jax.Array       # units ReDo reset this window (-1 without ReDo).
  game: jax.Array            # index of the game the last vector step played.
  eval_env_state: Any = None  # the evaluation environments' state (None: no evaluation).


class WindowMetrics(NamedTuple):
  """What every evaluation window reports; the loop adds [run, window] axes."""
  env_steps: jax.Array       # environment steps per seed at the window's end.
  episode_return: jax.Array  # mean return of the episodes finished in the window (NaN: none).
  num_episodes: jax.Array
  loss: jax.Array            # mean training loss of the window's updates (NaN: none).
  td_error: jax.Array        # mean |Q(s, a) - target| on a fresh replay batch.
  q_mean_abs: jax.Array      # mean |Q(s, a)| over the probe states and actions.
  q_max_mean: jax.Array      # mean max_a Q(s, a) over the probe states.
  dead_fraction: jax.Array
  dormant_fraction: jax.Array
  linearized_fraction: jax.Array
  preact_drift: jax.Array    # since the previous window's probe.
  effective_rank: jax.Array
  srank: jax.Array
  param_norm: jax.Array
  sharpness: jax.Array       # top Hessian eigenvalue of the TD loss (NaN on skipped windows).
  epsilon: jax.Array
  game: jax.Array            # index of the game being played (a sequence's position).
  diverged_step: jax.Array
  num_reset: jax.Array
  eval_return: jax.Array     # mean return of the evaluation episodes that finished (NaN: none).
  eval_episodes: jax.Array   # their number (0 without evaluation).


def optimizer(spec: RLSpec, hp: RLHParams) -> optax.GradientTransformation:
  return optim.training_optimizer(
      spec.optimizer, hp.learning_rate, hp.weight_decay, b1=hp.b1, b2=hp.b2, eps=hp.eps,
      weight_decay_mask=spec.weight_decay_mask,
      l2_init_strength=hp.l2_init if spec.l2_init else None,
      normalize_and_project_kernels=spec.normalize_and_project)


def _stream(rng, stream: int, index=0):
  return program.stream(rng, stream, index)


def _fresh_network(spec: RLSpec, key):
  example = jnp.zeros((1,) + spec.env.info.obs_shape, jnp.float32)
  return models.init_variables(spec.model, key, example)


def epsilon(spec: RLSpec, env_steps) -> jax.Array:
  r"""``eps_end + (eps_start - eps_end) max(0, 1 - env_steps / eps_decay_steps)``."""
  frac = jnp.clip(1.0 - jnp.asarray(env_steps, jnp.float32) / max(spec.eps_decay_steps, 1),
                  0.0, 1.0)
  return spec.eps_end + (spec.eps_start - spec.eps_end) * frac


def probe_states(spec: RLSpec, key) -> jax.Array:
  """``[P, H, W, C]``: P observations of a uniform-random policy in separate
  environments, from the first vector steps (the loop's fixed probe batch)."""
  return _probe_states(spec, key)[0]


def _probe_states(spec: RLSpec, key):
  """`probe_states` and the environments' state after them (an environment
  with host state, `_is_stateful`, plays them before the run's own reset)."""
  env = spec.env
  steps = -(-spec.probe_batch_size // env.num_envs)
  obs, state = env.reset(_stream(key, 0))

  def step(carry, k):
    obs, state = carry
    k_act, k_env = jax.random.split(k)
    actions = jax.random.randint(k_act, (env.num_envs,), 0, env.info.num_actions)
    new_obs, state, _ = env.step(k_env, state, actions)
    return (new_obs, state), obs

  (_, state), seen = jax.lax.scan(step, (obs, state),
                                 jax.random.split(_stream(key, 1), steps))
  return seen.reshape((-1,) + seen.shape[2:])[:spec.probe_batch_size], state


def _is_stateful(env) -> bool:
  """An environment whose games live outside the program (`plastix.rl.atari`):
  its `reset` takes the previous state, to order the calls, and every program
  restarts it."""
  return bool(getattr(env, "stateful", False))


def _reset_env(env, key, state):
  return env.reset(key, state) if _is_stateful(env) else env.reset(key)


def _fast(model: nn.Module) -> nn.Module:
  """`models.patches_model`: the same function, much faster under the run vmap
  on a CPU (per-seed kernels); reverse-mode only, so not for the sharpness probe."""
  return models.patches_model(model)


def _forward(spec: RLSpec, params, model_state, obs):
  return models.apply_model(_fast(spec.model), params, model_state, obs, train=False)[0]


def _reference(spec: RLSpec, params, model_state, probe_obs) -> tuple:
  if not spec.run_probes:
    return ()
  forward = models.forward_with_features(spec.model, params, probe_obs, model_state)
  return probe_suite.unit_means([h.astype(jnp.float32) for h in forward.preactivations])


def init_state(spec: RLSpec, hp: RLHParams, rng: jax.Array) -> RLState:
  """Fresh network, empty replay, reset environments and the fixed probe states."""
  params, model_state = _fresh_network(spec, _stream(rng, _INIT_STREAM))
  probe_obs, probe_env_state = _probe_states(spec, _stream(rng, _PROBE_ENV_STREAM))
  obs, env_state = _reset_env(spec.env, _stream(rng, _ENV_STREAM), probe_env_state)
  example = Transition(obs=_stored(obs[0]), action=jnp.zeros([], jnp.int32),
                       reward=jnp.zeros([], jnp.float32), next_obs=_stored(obs[0]),
                       terminated=jnp.zeros([], jnp.float32),
                       valid=_valid_example(spec))
  eval_env_state = None
  if _evaluates(spec):
    _, eval_env_state = _reset_env(spec.eval_env, _stream(rng, _EVAL_STREAM), None)
  zero = jnp.zeros([], jnp.float32)
  return RLState(
      params=params, model_state=model_state, target_params=params,
      opt_state=optimizer(spec, hp).init(params),
      buffer=replay.init(spec.buffer_size, example), env_state=env_state, obs=obs, rng=rng,
      episode_return=jnp.zeros((spec.num_envs,), jnp.float32), return_sum=zero,
      episodes=zero, loss_sum=zero, num_updates=zero, probe_obs=probe_obs,
      reference_means=_reference(spec, params, model_state, probe_obs),
      diverged_step=jnp.full([], -1, jnp.int32),
      num_reset=jnp.full([], -1 if "redo" not in spec.resets else 0, jnp.int32),
      game=jnp.zeros([], jnp.int32), eval_env_state=eval_env_state)


def _reports_valid(env) -> bool:
  """An environment whose `StepOut.valid` can be False (``reports_valid``)."""
  return bool(getattr(env, "reports_valid", False))


def _valid_example(spec: RLSpec):
  """Replay stores a validity weight only for environments that report one."""
  return jnp.ones([], jnp.float32) if _reports_valid(spec.env) else None


def _evaluates(spec: RLSpec) -> bool:
  return spec.eval_env is not None and spec.eval_steps > 0


def td_loss_fn(spec: RLSpec, hp: RLHParams, target_params, model_state, train: bool = True,
               reverse_only: bool = True):
  """``loss(params, batch) -> (mean loss, (td errors [B], new model_state))``:
  the agent's loss on a replay batch (with the coupled L2 term when on).
  ``reverse_only=False`` builds it on the plain model, for forward-mode
  differentiation (Hessian-vector products)."""
  model = _fast(spec.model) if reverse_only else spec.model

  def loss(params, batch):
    online, new_state = models.apply_model(model, params, model_state, batch.obs, train=train)
    # The next states' values are targets, never differentiated: forward passes
    # alone (the online one only for an agent that picks the next action with it).
    forward = lambda p, x: models.apply_model(model, p, model_state, x, train=False)[0]
    next_online = None
    if spec.agent.uses_next_online:
      next_online = jax.lax.stop_gradient(forward(params, batch.next_obs))
    next_target = forward(target_params, batch.next_obs)
    per_example, td = spec.agent.td_loss(online, next_online, next_target, batch, hp.gamma)
    value = _mean(per_example, batch.valid) + _coupled_l2(spec, hp, params)
    return value, (td, new_state)

  return loss


def _coupled_l2(spec: RLSpec, hp: RLHParams, params) -> jax.Array:
  """``(l2 / 2) ||p||^2`` over the weight-decay mask when ``coupled_l2``, else 0."""
  if not spec.coupled_l2:
    return jnp.zeros([], jnp.float32)
  mask = optim.resolve_mask(optim.WEIGHT_DECAY_MASKS[spec.weight_decay_mask], params)
  sq = sum(jnp.sum(jnp.square(p)) for p, m in
           zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m)
  return 0.5 * hp.l2 * sq


def _mean(x: jax.Array, weight) -> jax.Array:
  """``mean(x)``, or ``sum(w x) / max(sum(w), 1)`` over a batch's validity weights."""
  if weight is None:
    return jnp.mean(x)
  return jnp.sum(x * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def _update(spec: RLSpec, hp: RLHParams, state: RLState, batch, env_steps, loss_fn=None):
  """One gradient step on `batch` (of the agent's TD loss, or of
  ``loss_fn(params, batch) -> (loss, (_, model_state))``); a non-finite loss is
  not applied."""
  if loss_fn is None:
    loss_fn = td_loss_fn(spec, hp, state.target_params, state.model_state)
  (loss, (_, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, batch)
  diverged = state.diverged_step >= 0
  newly = ~diverged & ~jnp.isfinite(loss)
  apply = ~diverged & ~newly
  grads = jax.tree.map(lambda g: jnp.where(apply, g, jnp.zeros_like(g)), grads)
  updates, opt_state = optimizer(spec, hp).update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)
  return state.replace(
      params=keep(params, state.params), opt_state=opt_state,
      model_state=keep(model_state, state.model_state),
      loss_sum=state.loss_sum + jnp.where(apply, loss, 0.0),
      num_updates=state.num_updates + apply.astype(jnp.float32),
      diverged_step=jnp.where(newly, env_steps, state.diverged_step))


def _reset(spec: RLSpec, hp: RLHParams, state: RLState, update_number):
  """The named resets (`plastix.resets.HOOKS`), with fresh layers from the reset stream."""
  fresh_params, fresh_model_state = _fresh_network(
      spec, _stream(state.rng, _RESET_STREAM, update_number))

  def activations(params, model_state):
    return models.forward_with_features(spec.model, params, state.probe_obs,
                                        model_state).activations

  layers = models.redo_layers(spec.model) if "redo" in spec.resets else None
  ctx = resets.ResetContext(optimizer(spec, hp), fresh_params, fresh_model_state, layers,
                            activations, spec.redo_tau, spec.shrink, spec.perturb)
  nets = resets.Networks(state.params, state.opt_state, state.model_state, state.target_params)
  new, count = resets.apply_named(spec.resets, nets, ctx)
  healthy = state.diverged_step < 0
  pick = lambda n, o: jax.tree.map(lambda a, b: jnp.where(healthy, a, b), n, o)
  new = pick(new, nets)
  num_reset = state.num_reset + jnp.where(healthy & (count > 0), count, 0)
  return state.replace(params=new.params, opt_state=new.opt_state,
                       model_state=new.model_state, target_params=new.target_params,
                       num_reset=num_reset)


def updates_before(spec: RLSpec, step) -> jax.Array:
  """Updates taken in vector steps ``0 .. step - 1``: steps ``s`` with
  ``(s + 1) E >= learning_starts`` and ``s % train_every == 0``."""
  first = max(0, -(-spec.learning_starts // spec.num_envs) - 1)
  first = -(-first // spec.train_every) * spec.train_every  # first multiple of train_every.
  step = jnp.asarray(step, jnp.int32)
  return jnp.maximum(0, (step - first + spec.train_every - 1) // spec.train_every)


def _epsilon_greedy(spec: RLSpec, state: RLState, obs, eps, k_eps, k_random) -> jax.Array:
  """int32 ``[len(obs)]``: per observation a uniform-random action with
  probability `eps`, else the online network's greedy one."""
  q = spec.agent.q_values(_forward(spec, state.params, state.model_state, obs))
  explore = jax.random.uniform(k_eps, (obs.shape[0],)) < eps
  random_actions = jax.random.randint(k_random, (obs.shape[0],), 0, q.shape[-1])
  return jnp.where(explore, random_actions, jnp.argmax(q, axis=-1)).astype(jnp.int32)


def _act(spec: RLSpec, state: RLState, step, k_eps, k_random, k_env):
  """Acts epsilon-greedily in every environment, steps them, stores the
  transitions in replay and counts finished episodes: ``(state, (transitions,
  ended))`` (observations stored as uint8, `_stored`; ``ended`` [E]: the step
  ended an episode, terminated or truncated)."""
  actions = _epsilon_greedy(spec, state, state.obs, epsilon(spec, step * spec.num_envs),
                            k_eps, k_random)
  obs, env_state, out = spec.env.step(k_env, state.env_state, actions)
  transitions = Transition(obs=_stored(state.obs), action=actions, reward=out.reward,
                           next_obs=_stored(out.next_obs),
                           terminated=out.terminated.astype(jnp.float32),
                           valid=_valid(out) if _reports_valid(spec.env) else None)
  done, score = _episode_end(out), _score(out)
  episode_return = state.episode_return + score
  state = state.replace(
      buffer=replay.add(state.buffer, transitions), env_state=env_state, obs=obs,
      game=jnp.asarray(out.game, jnp.int32),
      return_sum=state.return_sum + jnp.sum(jnp.where(done, episode_return, 0.0)),
      episodes=state.episodes + jnp.sum(done.astype(jnp.float32)),
      episode_return=jnp.where(done, 0.0, episode_return))
  return state, (transitions, out.terminated | out.truncated)


def agent_step(spec: RLSpec, hp: RLHParams, state: RLState, step):
  """One vector step (module docstring); `step` is the global vector step, shared by runs."""
  key = _stream(state.rng, _STEP_STREAM, step)
  k_eps, k_random, k_env, k_sample = jax.random.split(key, 4)
  env_steps = step * spec.num_envs
  state, _ = _act(spec, state, step, k_eps, k_random, k_env)
  # Shared by every run (a function of `step` only), so lax.cond skips the work.
  # The conds carry the networks only: passing the replay buffer through a
  # cond's operands can cost a copy of it every step.
  learn = ((step + 1) * spec.num_envs >= spec.learning_starts) & (step % spec.train_every == 0)
  batch = replay.sample(state.buffer, k_sample, spec.batch_size)
  batch = batch._replace(obs=_observations(batch.obs), next_obs=_observations(batch.next_obs))
  small = jax.lax.cond(learn, lambda s: _update(spec, hp, s, batch, env_steps),
                       lambda s: s, _networks_only(state))
  number = updates_before(spec, step + 1)  # updates taken so far, this one included.
  sync = learn & (number % spec.target_update_period == 0)
  small = jax.lax.cond(sync, lambda s: s.replace(target_params=s.params), lambda s: s, small)
  if spec.resets and spec.reset_every_updates:
    due = learn & (number % spec.reset_every_updates == 0)
    small = jax.lax.cond(due, lambda s: _reset(spec, hp, s, number), lambda s: s, small)
  return _with_bulk(small, state), None


def is_on_policy(spec: RLSpec) -> bool:
  """An agent that learns from its own rollouts (PQN), not from replay."""
  return bool(getattr(spec.agent, "on_policy", False))


def rollout_updates(spec: RLSpec) -> int:
  """Gradient steps of one rollout of an on-policy agent: epochs x minibatches."""
  return spec.agent.epochs * spec.agent.minibatches


def rollout_update(spec: RLSpec, hp: RLHParams, state: RLState, first_step):
  r"""An on-policy agent's rollout and learning (`plastix.rl.agents.pqn`):

  ``T = agent.rollout_steps`` vector steps from global step `first_step`
  (acting as `agent_step` does, the transitions also written to replay for
  the probes), then with ``v_{t+1} = max_a Q(s'_t, a)`` from the network after
  the rollout and the agent's lambda-returns ``G``, ``epochs`` passes over the
  ``T E`` transitions in ``minibatches`` shuffled minibatches, each a gradient
  step on ``mean_valid (Q(s, a) - G)^2 / 2`` (plus the coupled L2 term). The
  target network is the online one after the updates (PQN has none; the TD
  probe then bootstraps from the online network). The named resets run when
  the update count crosses a multiple of ``reset_every_updates``.
  """
  agent, t_len = spec.agent, spec.agent.rollout_steps
  steps = first_step + jnp.arange(t_len, dtype=jnp.int32)

  def collect(state, step):
    key = _stream(state.rng, _STEP_STREAM, step)
    k_eps, k_random, k_env = jax.random.split(key, 3)
    return _act(spec, state, step, k_eps, k_random, k_env)

  state, (traj, ended) = jax.lax.scan(collect, state, steps)    # leaves [T, E, ...]
  flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), traj)
  next_out = models.apply_model(_fast(spec.model), state.params, state.model_state,
                                _observations(flat.next_obs), train=False)[0]
  next_values = jnp.max(agent.q_values(next_out), axis=-1).reshape(ended.shape)
  returns = agent.lambda_returns(traj.reward, traj.terminated, ended, next_values,
                                 hp.gamma).reshape(-1)
  weights = flat.valid
  env_steps = (first_step + t_len) * spec.num_envs
  model = _fast(spec.model)

  def step_on(small, idx):
    def loss_fn(params, _):
      out, new_state = models.apply_model(model, params, small.model_state,
                                          _observations(flat.obs[idx]), train=True)
      per_example, delta = agent.return_loss(agent.q_values(out), flat.action[idx],
                                             returns[idx])
      w = None if weights is None else weights[idx]
      return _mean(per_example, w) + _coupled_l2(spec, hp, params), (delta, new_state)
    return _update(spec, hp, small, None, env_steps, loss_fn), None

  def epoch(small, k):
    order = jax.random.permutation(k, flat.action.shape[0])
    return jax.lax.scan(step_on, small, order.reshape(agent.minibatches, -1))[0], None

  keys = jax.random.split(_stream(state.rng, _SHUFFLE_STREAM, first_step), agent.epochs)
  small = jax.lax.scan(epoch, _networks_only(state), keys)[0]
  small = small.replace(target_params=small.params)
  if spec.resets and spec.reset_every_updates:
    rollout = first_step // t_len
    before, after = rollout * rollout_updates(spec), (rollout + 1) * rollout_updates(spec)
    due = after // spec.reset_every_updates > before // spec.reset_every_updates
    small = jax.lax.cond(due, lambda s: _reset(spec, hp, s, after), lambda s: s, small)
  return _with_bulk(small, state), None


def _optional(out, field: str):
  """`out`'s optional `StepOut` field (None where the environment does not give it)."""
  return getattr(out, field, None)


def _valid(out):
  valid = _optional(out, "valid")
  return None if valid is None else valid.astype(jnp.float32)


def _episode_end(out) -> jax.Array:
  """Where an episode (a whole game) ended: `StepOut.episode_end`, else terminated | truncated."""
  end = _optional(out, "episode_end")
  return out.terminated | out.truncated if end is None else end


def _score(out) -> jax.Array:
  """What an episode's return sums: the game's own reward (`StepOut.score`), else the reward."""
  score = _optional(out, "score")
  return out.reward if score is None else score


def _networks_only(state: RLState) -> RLState:
  """`state` without its bulk (replay, environments): what updates and resets change."""
  return state.replace(buffer=None, env_state=None, obs=None, eval_env_state=None)


def _with_bulk(small: RLState, state: RLState) -> RLState:
  return small.replace(buffer=state.buffer, env_state=state.env_state, obs=state.obs,
                       eval_env_state=state.eval_env_state)


def _stored(obs: jax.Array) -> jax.Array:
  """Observations as replay stores them: uint8 (MinAtar's are 0/1, Atari's 0..255),
  a quarter of float32's memory; `_observations` reads them back exactly."""
  return obs.astype(jnp.uint8)


def _observations(stored: jax.Array) -> jax.Array:
  return stored.astype(jnp.float32)


def _probe(spec: RLSpec, hp: RLHParams, state: RLState, window) -> dict:
  """The probes at a window's end (module docstring)."""
  forward = models.forward_with_features(spec.model, state.params, state.probe_obs,
                                         state.model_state)
  f32 = lambda hs: [h.astype(jnp.float32) for h in hs]
  preacts, acts = f32(forward.preactivations), f32(forward.activations)
  found = probe_suite.activation_probes(preacts, acts, forward.logits.astype(jnp.float32),
                                        state.reference_means, spec.probe_settings,
                                        forward.features.astype(jnp.float32))
  q = spec.agent.q_values(forward.logits.astype(jnp.float32))
  key = _stream(state.rng, _SHARPNESS_STREAM, window)
  batch = replay.sample(state.buffer, jax.random.fold_in(key, 0), spec.probe_batch_size)
  batch = batch._replace(obs=_observations(batch.obs), next_obs=_observations(batch.next_obs))
  loss_fn = td_loss_fn(spec, hp, state.target_params, state.model_state, train=False,
                       reverse_only=False)
  _, (td, _) = loss_fn(state.params, batch)
  every = spec.probe_settings.sharpness_every
  nan = jnp.float32(jnp.nan)
  if every:
    value_fn = lambda p, b: loss_fn(p, b)[0]
    sharpness = jax.lax.cond(
        (window + 1) % every == 0,
        lambda: curvature.hessian_max_eigenvalue(
            value_fn, state.params, batch, jax.random.fold_in(key, 1),
            spec.probe_settings.hessian_iters).astype(jnp.float32),
        lambda: nan)
  else:
    sharpness = nan
  return dict(td_error=_mean(jnp.abs(td), batch.valid), q_mean_abs=jnp.mean(jnp.abs(q)),
              q_max_mean=jnp.mean(jnp.max(q, axis=-1)),
              dead_fraction=found["dead_fraction"], dormant_fraction=found["dormant_fraction"],
              linearized_fraction=found["linearized_fraction"],
              preact_drift=found["preact_drift"], effective_rank=found["effective_rank"],
              srank=found["srank"], param_norm=probes.param_norm(state.params),
              sharpness=sharpness), probe_suite.unit_means(preacts)


def evaluate(spec: RLSpec, state: RLState, key):
  r"""An evaluation phase: ``eval_steps`` vector steps of the evaluation
  environments, restarted first, acting epsilon-greedily with
  ``eps = eval_epsilon`` and no learning. Returns the state with the
  environments' new state and ``(sum of the finished episodes' returns, their
  number)``; an episode still running at the end is not counted (episodes are
  capped by the environment's own time limit, 27,000 agent steps on Atari)."""
  env = spec.eval_env
  k_reset, k_steps = jax.random.split(key)
  obs, env_state = _reset_env(env, k_reset, state.eval_env_state)
  zeros = jnp.zeros((env.num_envs,), jnp.float32)

  def step(carry, k):
    obs, env_state, running, total, count = carry
    k_eps, k_random, k_env = jax.random.split(k, 3)
    actions = _epsilon_greedy(spec, state, obs, spec.eval_epsilon, k_eps, k_random)
    obs, env_state, out = env.step(k_env, env_state, actions)
    running = running + _score(out)
    done = _episode_end(out)
    total = total + jnp.sum(jnp.where(done, running, 0.0))
    count = count + jnp.sum(done.astype(jnp.float32))
    return (obs, env_state, jnp.where(done, 0.0, running), total, count), None

  zero = jnp.zeros([], jnp.float32)
  (_, env_state, _, total, count), _ = jax.lax.scan(
      step, (obs, env_state, zeros, zero, zero), jax.random.split(k_steps, spec.eval_steps))
  return state.replace(eval_env_state=env_state), (total, count)


PROBE_KEYS = ("td_error", "q_mean_abs", "q_max_mean", "dead_fraction", "dormant_fraction",
              "linearized_fraction", "preact_drift", "effective_rank", "srank", "param_norm",
              "sharpness")


def run_window(spec: RLSpec, hp: RLHParams, state: RLState, window):
  """``window_steps`` vector steps, then the window's metrics; `window` is shared by runs."""
  first = window * spec.window_steps
  if is_on_policy(spec):
    t_len = spec.agent.rollout_steps
    starts = first + t_len * jnp.arange(spec.window_steps // t_len, dtype=jnp.int32)
    state, _ = jax.lax.scan(lambda s, t: rollout_update(spec, hp, s, t), state, starts)
  else:
    steps = first + jnp.arange(spec.window_steps, dtype=jnp.int32)
    state, _ = jax.lax.scan(lambda s, t: agent_step(spec, hp, s, t), state, steps)
  env_steps = (first + spec.window_steps) * spec.num_envs
  if spec.run_probes:
    found, means = _probe(spec, hp, state, window)
    state = state.replace(reference_means=means)
  else:
    found = dict.fromkeys(PROBE_KEYS, jnp.float32(jnp.nan))
  nan = jnp.float32(jnp.nan)
  eval_total, eval_count = jnp.float32(jnp.nan), jnp.zeros([], jnp.float32)
  if _evaluates(spec):
    state, (eval_total, eval_count) = evaluate(spec, state,
                                               _stream(state.rng, _EVAL_STREAM, window))
  metrics = WindowMetrics(
      env_steps=jnp.asarray(env_steps, jnp.int32),
      episode_return=jnp.where(state.episodes > 0,
                               state.return_sum / jnp.maximum(state.episodes, 1), nan),
      num_episodes=state.episodes,
      loss=jnp.where(state.num_updates > 0, state.loss_sum / jnp.maximum(state.num_updates, 1),
                     nan),
      epsilon=epsilon(spec, env_steps),
      game=state.game,
      diverged_step=state.diverged_step, num_reset=state.num_reset,
      eval_return=jnp.where(eval_count > 0, eval_total / jnp.maximum(eval_count, 1), nan),
      eval_episodes=eval_count, **found)
  zero = jnp.zeros([], jnp.float32)
  state = state.replace(return_sum=zero, episodes=zero, loss_sum=zero, num_updates=zero,
                        num_reset=jnp.where(state.num_reset >= 0, 0, -1).astype(jnp.int32))
  return state, metrics


def restart_envs(spec: RLSpec, state: RLState, window) -> RLState:
  """New episodes in every environment before `window` (for environments
  with host state, at each program's start: a resumed run then plays the same
  games as one that never stopped). The unfinished episodes are dropped."""
  key = _stream(state.rng, _ENV_STREAM, window + 1)
  obs, env_state = _reset_env(spec.env, key, state.env_state)
  return state.replace(obs=obs, env_state=env_state,
                       episode_return=jnp.zeros_like(state.episode_return))


class Windows:
  """The RL loop as a `plastix.program.PeriodicLearner`: its period is an
  evaluation window (`run_window`), its state an `RLState`; a program over
  environments with host state (``stateful``) starts with `restart_envs`."""

  def __init__(self, spec: RLSpec):
    self.spec = spec

  def init_state(self, hp: RLHParams, rng: jax.Array) -> RLState:
    return init_state(self.spec, hp, rng)

  def run_period(self, hp: RLHParams, state: RLState, number) -> tuple[RLState, WindowMetrics]:
    return run_window(self.spec, hp, state, number)

  def start(self, state: RLState, first) -> RLState:
    if _is_stateful(self.spec.env):
      return restart_envs(self.spec, state, first)
    return state


@functools.partial(jax.jit, static_argnames="spec")
def init_states(rngs: jax.Array, hp: RLHParams, *, spec: RLSpec) -> RLState:
  """`init_state` for a leading axis of runs; `hp` shared or with a run axis."""
  return program.init_runs(Windows(spec), rngs, hp)


@functools.partial(jax.jit, static_argnames=("spec", "num_windows"), donate_argnums=0)
def run_windows(states: RLState, hp: RLHParams, *, spec: RLSpec, num_windows: int,
                first_window=0):
  """`num_windows` windows for every run of `states` (leading axis): one program,
  `plastix.program.run_periods` with `Windows` as its learner (the program the
  supervised engine runs too).

  `first_window` (traced, shared) is the index of the first of them. Returns
  the new states and `WindowMetrics` with leading axes [run, window].
  """
  return program.run_periods(Windows(spec), states, hp, first_window, num_windows)
