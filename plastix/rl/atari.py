r"""Atari 2600 games for the RL loop: ale-py's C++ vector environment, stepped
inside the compiled program.

`AtariEnv` has the interface of `plastix.rl.envs.VecEnv` (``info``,
``num_envs``, ``reset``, ``step`` returning `plastix.rl.envs.StepOut`), so the
loop of `plastix.rl.loop` runs DQN and C51 on Atari unchanged.

Preprocessing (ale-py's ``AtariVectorEnv``, on its own threads): frame skip 4
with max-pooling of the last two frames, 84x84 greyscale, a stack of the last
4 frames, up to ``noop_max`` = 30 no-op actions at each reset, FIRE at reset
in games that need it, sticky actions with probability ``sticky_prob`` = 0.25
(the ``-v5`` default; Machado et al., 2018), episodes capped at
``max_episode_frames`` = 108,000 frames (27,000 agent steps) and reported as
truncated. Observations reach the agent as float32 ``[E, 84, 84, 4]`` in
0..255 (frames last, as the models expect; the replay stores them as uint8,
exactly), the ``nature_cnn`` model scales them by 1/255.

Rewards and episodes. ``StepOut.score`` is the game's own reward (the episode
return is the game score), ``StepOut.reward`` the learning reward,
``sign(score)`` when ``clip_rewards`` (Mnih et al., 2015). An episode is one
game, all lives: ``StepOut.episode_end``. With ``episodic_life`` (training
only, as in the Nature protocol) the loss of a life is ``terminated`` for
learning (no bootstrap) while the game goes on.

Automatic reset (ale-py's "next step" mode). After the step that ends a game,
the next step of that environment ignores its action and starts a new game:
it returns the new game's first observation with reward 0. That step's
transition joins two games, so it is marked ``StepOut.valid = False`` and the
loop leaves it out of every loss and TD probe (it is still stored in replay,
with weight 0: one transition per game).

Seeds and runs. One C++ vector environment of ``num_runs * num_envs``
environments serves every run of the loop (seeds and grid points, the loop's
vmapped run axis): under ``jax.vmap`` the reset and step fold the run axis
into the environment batch (`jax.custom_batching.custom_vmap`), so each run
keeps its own ``num_envs`` environments, seeded from its own key
(``jax.random.randint(key, (E,), 0, 2**31 - 1)`` at each reset). The number of
runs the loop vmaps must equal ``num_runs``; runs are not split over devices.

Host state. The environments live in C++, outside the program's state: the
``token`` of `AtariState` is the last call's handle, from which the next call
computes its own (XLA orders side-effecting calls only by their data); a program restarts its environments with ``reset`` (the loop does so
at the start of every chunk, `stateful`), so a run resumed from a checkpoint
steps the same games as one that never stopped. An episode therefore never
spans two chunks of a run.

Backends. ``"xla"``: ale-py's XLA FFI calls, inside the compiled program.
``"host"``: the same C++ environment stepped from a host callback
(`jax.experimental.io_callback`) at each vector step. Both give the same
observations and rewards for the same seeds (see ``docs/performance.md`` for
their speed).

Sequences. ``env_name`` may join several games with ``+`` (a continual
sequence, as for MinAtar): the step is played in game
``g(t) = (t * num_envs // switch_every) % num_games``; every game then uses
the full 18-action set (a single game uses its minimal set), and at a switch
every environment starts a game of ``g(t + 1)`` (``truncated`` for all).
"""

from __future__ import annotations

import dataclasses
import re
from typing import NamedTuple

import jax
from jax.experimental import io_callback
import jax.numpy as jnp
import numpy as np

from plastix.rl import atari_scores
from plastix.rl.envs import EnvInfo, StepOut

BACKENDS = ("xla", "host")
FULL_ACTIONS = 18
_STACK, _SIZE = 4, 84
OBS_SHAPE = (_SIZE, _SIZE, _STACK)  # one observation as the agent sees it (frames last).


def _rom_ids() -> tuple[str, ...]:
  from ale_py import roms  # pylint: disable=g-import-not-at-top
  return tuple(roms.get_all_rom_ids())


def _snake(name: str) -> str:
  """``MsPacman`` -> ``ms_pacman``; ``ALE/Pong-v5`` -> ``pong``."""
  if name.startswith("ALE/"):
    name = name[len("ALE/"):]
  name = re.sub(r"-v\d+$", "", name)
  if "_" in name or name.islower():
    return name.lower()
  return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def parse_env_name(env_name: str) -> tuple[str, ...]:
  """ROM ids of ``env_name``: games (``Pong``, ``ms_pacman``, ``ALE/Pong-v5``)
  joined by ``+``. Raises ``ValueError("env_name: ...")`` for an unknown game."""
  if not isinstance(env_name, str) or not env_name.strip():
    raise ValueError(f"env_name: must name an Atari game (got {env_name!r})")
  known = _rom_ids()
  games = []
  for part in env_name.split("+"):
    game = _snake(part.strip())
    if game not in known:
      close = [k for k in known if k.replace("_", "") == game.replace("_", "")]
      hint = f"did you mean {close[0]!r}? " if close else ""
      raise ValueError(f"env_name: unknown Atari game {part.strip()!r}; {hint}ale-py has "
                       f"{len(known)} ROMs, e.g. pong, breakout, space_invaders, ms_pacman "
                       "(CamelCase and ALE/<Game>-v5 ids work too)")
    games.append(game)
  return tuple(games)


def check(env_name: str, num_envs: int, num_runs: int, sticky_prob: float, switch_every: int,
          noop_max: int, max_episode_frames: int, backend: str) -> None:
  """Raises ``ValueError("<field>: ...")`` naming the first bad setting."""
  games = parse_env_name(env_name)
  ok_int = lambda v, low: isinstance(v, int) and not isinstance(v, bool) and v >= low
  if not ok_int(num_envs, 1):
    raise ValueError(f"num_envs: must be a positive integer (got {num_envs!r})")
  if not ok_int(num_runs, 1):
    raise ValueError(f"num_seeds: must be a positive integer (got {num_runs!r})")
  if not (isinstance(sticky_prob, (int, float)) and 0.0 <= sticky_prob <= 1.0):
    raise ValueError(f"sticky_prob: must be in [0, 1] (got {sticky_prob!r})")
  if not ok_int(switch_every, 0) or (switch_every and switch_every % num_envs):
    raise ValueError(f"switch_every_steps: must be a multiple of num_envs={num_envs} "
                     f"(got {switch_every!r})")
  if len(games) > 1 and not switch_every:
    raise ValueError("switch_every_steps: a sequence of games needs a switch period")
  if not ok_int(noop_max, 0):
    raise ValueError(f"atari.noop_max: must be an integer >= 0 (got {noop_max!r})")
  if not ok_int(max_episode_frames, 4):
    raise ValueError(f"atari.max_episode_frames: must be an integer >= 4 "
                     f"(got {max_episode_frames!r})")
  if backend not in BACKENDS:
    raise ValueError(f"atari.backend: choose one of {', '.join(BACKENDS)} (got {backend!r})")


class AtariState(NamedTuple):
  """Per-run bookkeeping of an `AtariEnv` (the games themselves live in C++)."""
  token: jax.Array   # uint8 [8]: the last call's output handle; the next call computes
                     #   its handle from it, which orders the calls (`_Game._live`).
  lives: jax.Array   # int32 [E]: lives left after the last step.
  over: jax.Array    # bool [E]: the last step ended a game (this step is the automatic reset).
  t: jax.Array       # int32 []: vector steps taken so far.


class _Game:
  """One game's C++ vector environment and its FFI calls (cached per `AtariEnv`)."""

  def __init__(self, env: "AtariEnv", game: str):
    from ale_py.vector_env import AtariVectorEnv  # pylint: disable=g-import-not-at-top
    self.size = env.num_runs * env.num_envs
    self.vec = AtariVectorEnv(
        game, self.size, repeat_action_probability=float(env.sticky_prob),
        full_action_space=env.full_action_space, noop_max=env.noop_max,
        max_num_frames_per_episode=env.max_episode_frames, episodic_life=False,
        life_loss_info=False, reward_clipping=False, stack_num=_STACK, img_height=_SIZE,
        img_width=_SIZE, frameskip=4, maxpool=True, grayscale=True, use_fire_reset=True,
        num_threads=env.num_threads)
    self.num_actions = int(self.vec.single_action_space.n)
    with jax.ensure_compile_time_eval():  # may be first called while tracing.
      handle, self.xla_reset, self.xla_step = self.vec.xla()
      self.handle = np.asarray(handle)

  # Flat calls: [size] in, [size, ...] out; `token` only orders them.
  def _live(self, token):
    """The live handle, computed from `token` (the previous call's output) so
    that the call waits for that one: XLA orders side-effecting calls only by
    their data (it drops optimisation barriers on the CPU). A token that is not
    the live handle (the first call's zeros, or one restored from a checkpoint
    of another process) gives the live handle too."""
    live = jnp.asarray(self.handle)
    return jnp.where(jnp.all(token == live), token, live)

  def _shapes(self, *extra):
    return (jax.ShapeDtypeStruct((8,), jnp.uint8),
            jax.ShapeDtypeStruct((self.size, _STACK, _SIZE, _SIZE), jnp.uint8)) + extra

  def reset(self, backend: str, token, seeds):
    if backend == "xla":
      token, (obs, info) = self.xla_reset(self._live(token), seeds)
      return token, obs, info["lives"]

    def host(token, seeds):
      obs, info = self.vec.reset(seed=np.asarray(seeds, np.int64))
      return (np.asarray(token), np.asarray(obs, np.uint8),
              np.asarray(info["lives"], np.int32))

    lives = jax.ShapeDtypeStruct((self.size,), jnp.int32)
    return io_callback(host, self._shapes(lives), token, seeds)

  def step(self, backend: str, token, actions):
    if backend == "xla":
      token, (obs, reward, term, trunc, info) = self.xla_step(self._live(token), actions)
      return token, obs, reward, term, trunc, info["lives"]

    def host(token, actions):
      obs, reward, term, trunc, info = self.vec.step(np.asarray(actions, np.int32))
      return (np.asarray(token), np.asarray(obs, np.uint8), np.asarray(reward, np.int32),
              np.asarray(term, np.bool_), np.asarray(trunc, np.bool_),
              np.asarray(info["lives"], np.int32))

    vec = lambda dtype: jax.ShapeDtypeStruct((self.size,), dtype)
    return io_callback(
        host, self._shapes(vec(jnp.int32), vec(jnp.bool_), vec(jnp.bool_), vec(jnp.int32)),
        token, actions)


_GAMES: dict[tuple, _Game] = {}


@dataclasses.dataclass(frozen=True)
class AtariEnv:
  """``num_envs`` Atari environments per run for ``num_runs`` runs (module docstring).

  Attributes:
    env_name: games joined by ``+`` (``Pong``, ``ms_pacman``, ``ALE/Pong-v5``).
    num_envs: environments per run (``E``).
    num_runs: runs the loop vmaps (seeds x grid points).
    sticky_prob: ale-py's repeat-action probability.
    switch_every: env steps per game of a sequence (0: one game).
    episodic_life: a lost life is ``terminated`` for learning.
    clip_rewards: the learning reward is ``sign(score)``.
    noop_max: up to this many no-ops at each reset.
    max_episode_frames: a game is truncated after this many frames.
    backend: "xla" (FFI calls in the program) or "host" (host callbacks).
    role: a name; environments of different roles (training, evaluation) are
      different C++ environments.
    num_threads: ale-py's worker threads (0: one per core).
  """
  env_name: str
  num_envs: int
  num_runs: int = 1
  sticky_prob: float = 0.25
  switch_every: int = 0
  episodic_life: bool = True
  clip_rewards: bool = True
  noop_max: int = 30
  max_episode_frames: int = 108_000
  backend: str = "xla"
  role: str = "train"
  num_threads: int = 0

  stateful = True       # the loop restarts the environments at each program's start.
  reports_valid = True  # StepOut.valid is False for the automatic-reset steps.
  shardable = False     # one C++ environment serves every run: no device split.

  def __post_init__(self):
    check(self.env_name, self.num_envs, self.num_runs, self.sticky_prob, self.switch_every,
          self.noop_max, self.max_episode_frames, self.backend)

  @property
  def games(self) -> tuple[str, ...]:
    return parse_env_name(self.env_name)

  @property
  def full_action_space(self) -> bool:
    return len(self.games) > 1

  def _game(self, index: int) -> _Game:
    key = (self, index)
    if key not in _GAMES:
      _GAMES[key] = _Game(self, self.games[index])
    return _GAMES[key]

  @property
  def info(self) -> EnvInfo:
    actions = tuple(self._game(i).num_actions for i in range(len(self.games)))
    return EnvInfo(games=self.games, obs_shape=OBS_SHAPE,
                   num_actions=max(actions), game_actions=actions,
                   game_channels=(_STACK,) * len(self.games))

  def normalized(self, game: str, score: float):
    return atari_scores.normalized(game, score)

  def game_index(self, t: jax.Array) -> jax.Array:
    t = jnp.asarray(t, jnp.int32)
    if self.switch_every == 0 or len(self.games) == 1:
      return jnp.zeros_like(t)
    return (t // (self.switch_every // self.num_envs)) % len(self.games)

  # -- the C++ calls, with the run axis folded into the environment batch ----

  def _fold(self, axis_size: int, args, batched):
    if axis_size != self.num_runs:
      raise ValueError(f"AtariEnv was built for num_runs={self.num_runs} runs, but the loop "
                       f"vmaps {axis_size}")
    out = []
    for a, b in zip(args, batched):
      out.append(a if b else jnp.broadcast_to(a, (axis_size,) + jnp.shape(a)))
    return out

  def _tile(self, x):
    """One run's ``[E, ...]`` as every run's ``[R E, ...]`` (a call outside the run
    vmap: with ``num_runs > 1`` every run's environments get the same inputs,
    and the first run's outputs come back; JAX also traces this for shapes)."""
    return jnp.tile(x, (self.num_runs,) + (1,) * (x.ndim - 1))

  def _call_reset(self, token, t, seeds):
    """Per run: (token, obs uint8 [E, 4, 84, 84], lives [E]) after resetting game g(t)."""

    def flat(token, t, seeds):  # token [8], t [], seeds [N]
      return self._call_flat_reset(self.game_index(t), token, seeds)

    @jax.custom_batching.custom_vmap
    def call(token, t, seeds):
      token, obs, lives = flat(token, t, self._tile(seeds))
      return token, obs[:self.num_envs], lives[:self.num_envs]

    @call.def_vmap
    def rule(axis_size, in_batched, token, t, seeds):
      token, t, seeds = self._fold(axis_size, (token, t, seeds), in_batched)
      new, obs, lives = flat(token[0], t[0], seeds.reshape(-1))
      e = self.num_envs
      out = (jnp.broadcast_to(new, (axis_size, 8)), obs.reshape((axis_size, e) + obs.shape[1:]),
             lives.reshape(axis_size, e))
      return out, (True, True, True)

    return call(token, t, seeds)

  def _call_step(self, token, t, actions, seeds):
    """Per run: (token, reached, reward, term, trunc, lives, switched, obs) of one
    vector step in game g(t): `reached` the frames the step reached, `obs` the
    ones to act on next (at a switch, game g(t + 1) is reset with `seeds` and
    `obs` and `lives` are its first)."""

    def flat(token, t, actions, seeds):
      g = self.game_index(t)
      branches = [lambda tok, a, i=i: self._game(i).step(self.backend, tok, a)
                  for i in range(len(self.games))]
      if len(branches) == 1:
        token, reached, reward, term, trunc, lives = branches[0](token, actions)
        return token, reached, reward, term, trunc, lives, jnp.zeros([], jnp.bool_), reached
      token, reached, reward, term, trunc, lives = jax.lax.switch(g, branches, token, actions)
      g1 = self.game_index(t + 1)
      switched = g1 != g
      token, obs, lives = jax.lax.cond(
          switched, lambda tok: self._call_flat_reset(g1, tok, seeds),
          lambda tok: (tok, reached, lives), token)
      return token, reached, reward, term, trunc, lives, switched, obs

    @jax.custom_batching.custom_vmap
    def call(token, t, actions, seeds):
      token, *outs = flat(token, t, self._tile(actions), self._tile(seeds))
      e = self.num_envs
      reached, reward, term, trunc, lives, switched, obs = outs
      return token, reached[:e], reward[:e], term[:e], trunc[:e], lives[:e], switched, obs[:e]

    @call.def_vmap
    def rule(axis_size, in_batched, token, t, actions, seeds):
      token, t, actions, seeds = self._fold(axis_size, (token, t, actions, seeds), in_batched)
      new, *per_env_out = flat(token[0], t[0], actions.reshape(-1).astype(jnp.int32),
                               seeds.reshape(-1))
      e = self.num_envs
      per_env = lambda x: x.reshape((axis_size, e) + x.shape[1:])
      reached, reward, term, trunc, lives, switched, obs = per_env_out
      out = (jnp.broadcast_to(new, (axis_size, 8)), per_env(reached), per_env(reward),
             per_env(term), per_env(trunc), per_env(lives),
             jnp.broadcast_to(switched, (axis_size,)), per_env(obs))
      return out, (True,) * 8

    return call(token, t, actions, seeds)

  def _call_flat_reset(self, index, token, seeds):
    """Game `index` (traced) reset in all ``[N]`` environments: (token, obs, lives)."""
    branches = [lambda tok, s, i=i: self._game(i).reset(self.backend, tok, s)
                for i in range(len(self.games))]
    if len(branches) == 1:
      return branches[0](token, seeds)
    return jax.lax.switch(index, branches, token, seeds)

  # -- the VecEnv interface ---------------------------------------------------

  def _seeds(self, key):
    return jax.random.randint(key, (self.num_envs,), 0, 2**31 - 1, dtype=jnp.int32)

  @staticmethod
  def _frames_last(obs):
    """uint8 [E, 4, 84, 84] -> float32 [E, 84, 84, 4]."""
    return jnp.transpose(obs, (0, 2, 3, 1)).astype(jnp.float32)

  def reset(self, key: jax.Array, state: AtariState | None = None):
    """Starts a game of g(t) in every environment (``t`` of `state`, else 0)."""
    token = jnp.zeros((8,), jnp.uint8) if state is None else state.token
    t = jnp.zeros([], jnp.int32) if state is None else state.t
    token, obs, lives = self._call_reset(token, t, self._seeds(key))
    return self._frames_last(obs), AtariState(
        token=token, lives=lives, over=jnp.zeros((self.num_envs,), jnp.bool_), t=t)

  def step(self, key: jax.Array, state: AtariState, actions: jax.Array):
    """One vector step (module docstring): ``(obs, state, StepOut)``."""
    actions = jnp.asarray(actions, jnp.int32)
    token, reached, score, term, trunc, lives, switched, obs = self._call_step(
        state.token, state.t, actions, self._seeds(key))
    valid = ~state.over
    life_lost = valid & (lives < state.lives) & ~switched
    terminated = term | (life_lost if self.episodic_life else jnp.zeros_like(term))
    score = score.astype(jnp.float32)
    reward = jnp.sign(score) if self.clip_rewards else score
    ended = term | trunc
    # A switch ends every game (truncated); the next step is a normal one.
    new_state = AtariState(token=token, lives=lives, over=ended & ~switched, t=state.t + 1)
    out = StepOut(reward=reward, terminated=terminated & valid,
                  truncated=(trunc | switched) & valid, next_obs=self._frames_last(reached),
                  game=self.game_index(state.t), valid=valid, score=score,
                  episode_end=(ended | switched) & valid)
    return self._frames_last(obs), new_state, out
