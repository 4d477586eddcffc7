"""Vectorised MinAtar environments as pure functions, for jit, vmap and scan.

`VecEnv` runs ``num_envs`` copies of a MinAtar game from ``gymnax``, or a
continual sequence of games, with no host state: ``reset`` and ``step`` take a
PRNG key and an `EnvState` pytree and return new ones, so a whole training run
compiles into one ``lax.scan`` and a leading seed axis can be ``jax.vmap``ped.

Games and names. ``env_name`` is a gymnax id (``"Breakout-MinAtar"``) or a
short name, case-insensitive: ``breakout``, ``asterix``, ``freeway``,
``space_invaders`` (or ``spaceinvaders``). Several joined by ``+``
(``"breakout+freeway"``) make a continual sequence.

| game                  | channels | actions                        |
|-----------------------|----------|--------------------------------|
| Breakout-MinAtar      | 4        | 3: no-op, left, right          |
| Asterix-MinAtar       | 4        | 5: no-op, left, up, right, down|
| Freeway-MinAtar       | 7        | 3: no-op, up, down             |
| SpaceInvaders-MinAtar | 6        | 4: no-op, left, right, fire    |

Observations are float32 ``[E, 10, 10, C]`` with ``C`` the largest channel
count of the sequence; a game with fewer channels fills the first ones and the
rest are zero.

Padded actions. An agent has one Q-head sized for the largest action set of the
sequence (``EnvInfo.num_actions``), as continual-RL work over several games
does, so that the network does not change shape at a game switch. An action
index outside a game's own set (``a < 0`` or ``a >= `` its count) acts as
action 0, the no-op, in every game.

Episode ends. `StepOut` separates the two ways an episode ends:

* ``terminated``: the game is over (the ball passed the paddle, the player was
  hit). The transition's target does not bootstrap.
* ``truncated``: the time limit was reached (the gymnax ``time`` field of the
  stepped state ``>= max_steps_in_episode``: 1000 steps, 2500 in Freeway, or
  the ``max_steps`` given) or the sequence switched games at this step. The
  target bootstraps from ``next_obs``.

Both may be True at once (a game over on the last allowed step); a transition
with ``terminated`` never bootstraps. gymnax 1.0.1's ``step_env`` reports only
the game's own end (its ``is_terminal`` is ``is_terminated``, without the time
limit); Freeway has no game over, so its episodes end only by truncation.

Automatic reset. ``step`` starts a new episode in every environment whose
episode ended: the returned ``obs`` is the new episode's first observation and
``StepOut.next_obs`` is the observation the step reached (the replay's ``s'``).

Sticky actions. With probability ``sticky_prob``, independently per
environment and step, the environment repeats the action it executed at the
previous step instead of the chosen one (Machado et al., 2018):
``a_t = a_{t-1}`` if ``u_t < sticky_prob`` else the chosen action, with
``u_t ~ U[0, 1)``. The first action of an episode is always the chosen one.
``EnvState.last_action`` holds the executed action (after the no-op mapping
above), -1 at the start of an episode.

Continual sequence. With ``t`` the vector steps taken so far
(``EnvState.t``), the step is played in game
``g(t) = (t * num_envs // switch_every) % num_games`` (``0`` when
``switch_every == 0``). When ``g(t + 1) != g(t)``, every environment starts a
new episode of game ``g(t + 1)`` after the step, and the step reports
``truncated`` for all of them and ``game = g(t)``. ``EnvState.games`` holds one
vectorised gymnax state per game of the sequence, of which only game ``g(t)``'s
is live; the step picks the game's code with ``lax.switch``. When the step
counter is not batched (``vmap`` of a whole run whose counter starts at a
constant), only the live game is stepped; when ``t`` itself is batched, XLA
evaluates every game's branch and selects one.

Keys. ``reset(key)``: environment ``i`` starts from gymnax ``reset_env`` with
``jax.random.split(key, E)[i]`` (every game of the sequence alike).
``step(key, ...)``: ``k_sticky, k_envs = jax.random.split(key)``; environment
``i`` gets ``jax.random.split(k_envs, E)[i]``, which it splits into a step key
and a reset key as gymnax's own ``Environment.step`` does, so with
``sticky_prob = 0`` one game's step equals gymnax's ``step`` with these keys.
The sticky draws are ``jax.random.uniform(k_sticky, (E,))``.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

# Short name -> gymnax id.
GAMES = {
    "breakout": "Breakout-MinAtar",
    "asterix": "Asterix-MinAtar",
    "freeway": "Freeway-MinAtar",
    "space_invaders": "SpaceInvaders-MinAtar",
}

# Every accepted spelling, lower case -> gymnax id.
_ALIASES = {
    **GAMES,
    "spaceinvaders": "SpaceInvaders-MinAtar",
    **{game_id.lower(): game_id for game_id in GAMES.values()},
}


class EnvInfo(NamedTuple):
  """Static facts of a `VecEnv` (hashable)."""
  games: tuple[str, ...]             # gymnax ids, in sequence order.
  obs_shape: tuple[int, int, int]    # (10, 10, C_max).
  num_actions: int                   # largest action set of the sequence.
  game_actions: tuple[int, ...]      # each game's own action count.
  game_channels: tuple[int, ...]     # each game's own channel count.


class EnvState(NamedTuple):
  """State of a `VecEnv`: a pytree of arrays."""
  games: tuple[Any, ...]   # one gymnax state per game, leaves [E, ...]; only g(t)'s is live.
  last_action: jax.Array   # int32 [E]: action executed at the previous step, -1 at an
                           #   episode's start.
  t: jax.Array             # int32 []: vector steps taken so far.


class StepOut(NamedTuple):
  """What a `VecEnv.step` reports besides the next observation and state."""
  reward: jax.Array        # float32 [E].
  terminated: jax.Array    # bool [E]: the game ended the episode (no bootstrap).
  truncated: jax.Array     # bool [E]: the time limit or a game switch ended it (bootstrap).
  next_obs: jax.Array      # float32 [E, 10, 10, C]: the observation this step reached,
                           #   before any automatic reset.
  game: jax.Array          # int32 []: index of the game these steps were played in.
  # Optional, for environments that need them (None: the defaults in brackets).
  valid: Any = None        # bool [E]: the transition is real experience [all True]; False
                           #   for an automatic-reset step that joins two episodes.
  score: Any = None        # float32 [E]: the game's own reward, summed into episode
                           #   returns [reward].
  episode_end: Any = None  # bool [E]: an episode (a whole game) ended [terminated | truncated].


def _valid_names() -> str:
  short = ", ".join(GAMES) + " (or spaceinvaders)"
  return f"{short}, or the gymnax ids {', '.join(GAMES.values())}"


def parse_env_name(env_name: str) -> tuple[str, ...]:
  """The gymnax ids of ``env_name``: ``"breakout+Freeway-MinAtar"`` ->
  ``("Breakout-MinAtar", "Freeway-MinAtar")``. Raises ValueError
  (``env_name: ...``) on an unknown or empty name."""
  if not isinstance(env_name, str):
    raise ValueError(f"env_name: must be a string of game names joined by '+' "
                     f"(got {env_name!r}); valid names: {_valid_names()}")
  games = []
  for part in env_name.split("+"):
    game = _ALIASES.get(part.strip().lower())
    if game is None:
      raise ValueError(f"env_name: unknown game {part.strip()!r} in {env_name!r}; valid names: "
                       f"{_valid_names()}; join several with '+'")
    games.append(game)
  return tuple(games)


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check(env_name: str, num_envs: int, sticky_prob: float, switch_every: int,
          max_steps: Optional[int] = None) -> tuple[str, ...]:
  """Validates a `VecEnv`'s arguments; returns the gymnax ids of ``env_name``.

  Raises ValueError whose one-line message starts with the config field's name
  (``env_name: ``, ``num_envs: ``, ``sticky_prob: ``, ``switch_every_steps: ``,
  ``max_steps: ``).
  """
  games = parse_env_name(env_name)
  if not _is_int(num_envs) or num_envs < 1:
    raise ValueError(f"num_envs: must be an integer >= 1 (got {num_envs!r})")
  if (isinstance(sticky_prob, bool) or not isinstance(sticky_prob, numbers.Real)
      or not 0.0 <= sticky_prob < 1.0):
    raise ValueError(f"sticky_prob: must be a number in [0, 1) (got {sticky_prob!r})")
  if not _is_int(switch_every) or switch_every < 0:
    raise ValueError(f"switch_every_steps: must be an integer >= 0, 0 = never switch games "
                     f"(got {switch_every!r})")
  if switch_every > 0 and switch_every % num_envs:
    raise ValueError(f"switch_every_steps: must be a multiple of num_envs={num_envs} "
                     f"(got {switch_every})")
  if max_steps is not None and (not _is_int(max_steps) or max_steps < 1):
    raise ValueError(f"max_steps: must be an integer >= 1 or None (got {max_steps!r})")
  return games


@functools.lru_cache(maxsize=None)
def _gymnax_env(game: str, max_steps: Optional[int]):
  """The gymnax environment and its parameters (time limit ``max_steps`` if given)."""
  import gymnax  # pylint: disable=g-import-not-at-top
  # Built concretely even when first asked for inside a trace: the environment
  # keeps arrays (its action set) and is cached across traces.
  with jax.ensure_compile_time_eval():
    env, params = gymnax.make(game)
  if max_steps is not None:
    params = params.replace(max_steps_in_episode=max_steps)
  return env, params


def _strong(tree):
  """Every leaf as an array of its own dtype without weak typing, so that the
  states of every ``lax.switch`` branch have one type."""
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.asarray(x).dtype), tree)


def _pad(obs: jax.Array, channels: int) -> jax.Array:
  """``obs [..., C]`` as float32 ``[..., channels]``, zeros in the added channels."""
  obs = obs.astype(jnp.float32)
  extra = channels - obs.shape[-1]
  return jnp.pad(obs, [(0, 0)] * (obs.ndim - 1) + [(0, extra)]) if extra else obs


@dataclasses.dataclass(frozen=True)
class VecEnv:
  """``num_envs`` MinAtar environments, or a continual sequence of games (see
  the module docstring for the conventions).

  Attributes:
    env_name: game names joined by ``+``.
    num_envs: environments stepped together (``E``).
    sticky_prob: probability of repeating the previous executed action.
    switch_every: env steps (vector steps * num_envs) per game of a sequence;
      0 = never switch.
    max_steps: time limit of every game's episodes; None = each game's own.
  """
  env_name: str
  num_envs: int
  sticky_prob: float = 0.0
  switch_every: int = 0
  max_steps: Optional[int] = None

  def __post_init__(self):
    check(self.env_name, self.num_envs, self.sticky_prob, self.switch_every, self.max_steps)

  @property
  def games(self) -> tuple[str, ...]:
    return parse_env_name(self.env_name)

  def _envs(self):
    return tuple(_gymnax_env(game, self.max_steps) for game in self.games)

  @property
  def info(self) -> EnvInfo:
    envs = self._envs()
    actions = tuple(int(env.num_actions) for env, _ in envs)
    channels = tuple(int(env.obs_shape[-1]) for env, _ in envs)
    height, width = envs[0][0].obs_shape[:2]
    return EnvInfo(games=self.games, obs_shape=(height, width, max(channels)),
                   num_actions=max(actions), game_actions=actions, game_channels=channels)

  def game_index(self, t: jax.Array) -> jax.Array:
    """``g(t) = (t * num_envs // switch_every) % num_games``, int32 (0 without
    switching). Computed as ``t // (switch_every // num_envs)``, which is equal
    (``switch_every`` is a multiple of ``num_envs``) and does not overflow."""
    t = jnp.asarray(t, jnp.int32)
    if self.switch_every == 0 or len(self.games) == 1:
      return jnp.zeros_like(t)
    return (t // (self.switch_every // self.num_envs)) % len(self.games)

  def _reset_game(self, index: int, keys: jax.Array):
    """Game ``index`` reset in every env: (obs float32 [E, 10, 10, C_max], state)."""
    env, params = self._envs()[index]
    obs, state = jax.vmap(env.reset_env, in_axes=(0, None))(keys, params)
    return _pad(obs, self.info.obs_shape[-1]), _strong(state)

  def reset(self, key: jax.Array) -> tuple[jax.Array, EnvState]:
    """First observations float32 ``[E, 10, 10, C_max]`` of game 0 and the state."""
    keys = jax.random.split(key, self.num_envs)
    resets = [self._reset_game(i, keys) for i in range(len(self.games))]
    state = EnvState(games=tuple(s for _, s in resets),
                     last_action=jnp.full((self.num_envs,), -1, jnp.int32),
                     t=jnp.zeros([], jnp.int32))
    return resets[0][0], state

  def _step_game(self, index: int, games: tuple, actions: jax.Array, step_keys: jax.Array,
                 reset_keys: jax.Array):
    """Steps game ``index`` in every env and resets the envs whose episode ended.

    Returns (obs, games with slot ``index`` replaced, reward, terminated, time
    limit reached, next_obs, executed actions); the same structure for every
    ``index``.
    """
    env, params = self._envs()[index]
    channels = self.info.obs_shape[-1]
    actions = jnp.where((actions >= 0) & (actions < env.num_actions), actions, 0)

    def one(key_step, key_reset, state, action):
      obs_st, state_st, reward, terminated, _ = env.step_env(key_step, state, action, params)
      limit = state_st.time >= params.max_steps_in_episode
      done = terminated | limit
      obs_re, state_re = env.reset_env(key_reset, params)
      state_new = jax.tree.map(lambda r, s: jnp.where(done, r, s), state_re, state_st)
      obs = jnp.where(done, obs_re, obs_st)
      return obs, state_new, reward, terminated, limit, obs_st

    obs, state, reward, terminated, limit, next_obs = jax.vmap(one)(
        step_keys, reset_keys, games[index], actions)
    state = jax.tree.map(lambda new, old: new.astype(old.dtype), state, games[index])
    games = games[:index] + (state,) + games[index + 1:]
    return (_pad(obs, channels), games, reward.astype(jnp.float32), terminated.astype(bool),
            limit.astype(bool), _pad(next_obs, channels), actions)

  def step(self, key: jax.Array, state: EnvState, actions: jax.Array
           ) -> tuple[jax.Array, EnvState, StepOut]:
    """One step of every env with ``actions`` int ``[E]``; see the module docstring.

    Returns (obs float32 [E, 10, 10, C_max], after any automatic reset or game
    switch; the new state; `StepOut`).
    """
    num_games = len(self.games)
    actions = jnp.asarray(actions, jnp.int32)
    if actions.shape != (self.num_envs,):
      raise ValueError(f"actions: expected shape ({self.num_envs},), got {actions.shape}")
    k_sticky, k_envs = jax.random.split(key)
    if self.sticky_prob > 0:
      stick = jax.random.uniform(k_sticky, (self.num_envs,)) < self.sticky_prob
      actions = jnp.where(stick & (state.last_action >= 0), state.last_action, actions)
    keys = jax.vmap(jax.random.split)(jax.random.split(k_envs, self.num_envs))
    step_keys, reset_keys = keys[:, 0], keys[:, 1]

    game = self.game_index(state.t)
    branches = [functools.partial(self._step_game, i) for i in range(num_games)]
    if num_games == 1:
      out = branches[0](state.games, actions, step_keys, reset_keys)
    else:
      out = jax.lax.switch(game, branches, state.games, actions, step_keys, reset_keys)
    obs, games, reward, terminated, truncated, next_obs, executed = out

    t = state.t + 1
    if num_games > 1 and self.switch_every > 0:
      new_game = self.game_index(t)
      switching = new_game != game

      def switch(games):
        def reset_into(i, games):
          first_obs, fresh = self._reset_game(i, reset_keys)
          return first_obs, games[:i] + (fresh,) + games[i + 1:]
        return jax.lax.switch(new_game, [functools.partial(reset_into, i)
                                         for i in range(num_games)], games)

      obs, games = jax.lax.cond(switching, switch, lambda games: (obs, games), games)
      truncated = truncated | switching
    done = terminated | truncated
    new_state = EnvState(games=games, last_action=jnp.where(done, -1, executed), t=t)
    return obs, new_state, StepOut(reward=reward, terminated=terminated, truncated=truncated,
                                   next_obs=next_obs, game=game)
