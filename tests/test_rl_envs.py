"""plastix.rl.envs: vectorised MinAtar games, checked against gymnax itself."""

import functools
import math

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix.rl import envs

# (gymnax id, channels, actions) of each game, from the MinAtar game descriptions.
GAME_FACTS = {
    "breakout": ("Breakout-MinAtar", 4, 3),
    "asterix": ("Asterix-MinAtar", 4, 5),
    "freeway": ("Freeway-MinAtar", 7, 3),
    "space_invaders": ("SpaceInvaders-MinAtar", 6, 4),
}


@functools.partial(jax.jit, static_argnums=0)
def rollout(env, key, actions):
  """Resets, then steps with ``actions [T, E]``; step t uses ``split(k_steps, T)[t]``.

  Returns (first obs, first state, per-step (obs, state, StepOut) stacked on a leading T axis).
  """
  k_reset, k_steps = jax.random.split(key)
  obs, state = env.reset(k_reset)

  def body(state, xs):
    k, a = xs
    obs, state, out = env.step(k, state, a)
    return state, (obs, state, out)

  _, trace = jax.lax.scan(body, state, (jax.random.split(k_steps, actions.shape[0]), actions))
  return obs, state, trace


def step_keys(key, num_steps):
  return jax.random.split(jax.random.split(key)[1], num_steps)


def env_keys(step_key, num_envs):
  """Each env's (step key, reset key) for one ``VecEnv.step(step_key, ...)``, as documented."""
  keys = jax.random.split(jax.random.split(step_key)[1], num_envs)
  pairs = jax.vmap(jax.random.split)(keys)
  return pairs[:, 0], pairs[:, 1]


def random_actions(key, num_steps, num_envs, num_actions):
  return jax.random.randint(key, (num_steps, num_envs), 0, num_actions)


# ----------------------------------------------------------------------------
# Names, validation, static facts.


def test_names_parse_case_insensitively_and_in_sequences():
  assert envs.parse_env_name("Breakout-MinAtar") == ("Breakout-MinAtar",)
  assert envs.parse_env_name("BREAKOUT") == ("Breakout-MinAtar",)
  assert envs.parse_env_name(" space_invaders + SpaceInvaders + freeway-minatar") == (
      "SpaceInvaders-MinAtar", "SpaceInvaders-MinAtar", "Freeway-MinAtar")
  assert envs.parse_env_name("asterix+breakout") == ("Asterix-MinAtar", "Breakout-MinAtar")


@pytest.mark.parametrize("args, field", [
    (("pong", 2, 0.0, 0), "env_name"),
    (("breakout+", 2, 0.0, 0), "env_name"),
    (("", 2, 0.0, 0), "env_name"),
    ((None, 2, 0.0, 0), "env_name"),
    (("breakout", 0, 0.0, 0), "num_envs"),
    (("breakout", 2.0, 0.0, 0), "num_envs"),
    (("breakout", 2, -0.1, 0), "sticky_prob"),
    (("breakout", 2, 1.0, 0), "sticky_prob"),
    (("breakout", 2, math.nan, 0), "sticky_prob"),
    (("breakout", 2, 0.0, -2), "switch_every_steps"),
    (("breakout+freeway", 2, 0.0, 3), "switch_every_steps"),
    (("breakout+freeway", 4, 0.0, 6), "switch_every_steps"),
])
def test_bad_arguments_raise_one_line_naming_the_field(args, field):
  for make in (envs.check, envs.VecEnv):
    with pytest.raises(ValueError) as error:
      make(*args)
    message = str(error.value)
    assert message.startswith(f"{field}: "), message
    assert "\n" not in message
  if field == "env_name":
    for name in ("breakout", "asterix", "freeway", "space_invaders", "Breakout-MinAtar"):
      assert name in message


def test_bad_max_steps_raises():
  with pytest.raises(ValueError, match="^max_steps: "):
    envs.VecEnv("breakout", 2, max_steps=0)


def test_good_arguments_pass_and_return_the_games():
  assert envs.check("breakout+freeway", 4, 0.25, 8) == ("Breakout-MinAtar", "Freeway-MinAtar")
  assert envs.check("breakout", 3, 0, 0) == ("Breakout-MinAtar",)


def test_info_of_a_sequence():
  info = envs.VecEnv("breakout+space_invaders+asterix", 2, switch_every=4).info
  assert info == envs.EnvInfo(
      games=("Breakout-MinAtar", "SpaceInvaders-MinAtar", "Asterix-MinAtar"),
      obs_shape=(10, 10, 6), num_actions=5, game_actions=(3, 4, 5), game_channels=(4, 6, 4))
  hash(envs.VecEnv("breakout", 2))  # static under jit


def test_game_index_follows_the_formula():
  env = envs.VecEnv("breakout+asterix+freeway", 4, switch_every=8)
  t = jnp.arange(14)
  # (t * 4 // 8) % 3
  np.testing.assert_array_equal(env.game_index(t), [0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2, 0, 0])
  assert int(env.game_index(jnp.int32(2**31 - 1))) == (2**31 - 1) // 2 % 3  # no overflow
  never = envs.VecEnv("breakout+asterix", 4)
  np.testing.assert_array_equal(never.game_index(t), np.zeros(14))


# ----------------------------------------------------------------------------
# Shapes and the gymnax reference.

# One sequence shared by several tests (one compiled rollout): 2 vector steps per game.
SEQ = envs.VecEnv("breakout+space_invaders", 2, switch_every=4)
SEQ_STEPS = 10


def seq_rollout():
  key = jax.random.key(13)
  actions = random_actions(jax.random.key(14), SEQ_STEPS, SEQ.num_envs, 4)
  return key, actions, rollout(SEQ, key, actions)


def check_shapes(env, obs0, state0, trace, num_steps):
  """Shapes, dtypes and 0/1 values of a `rollout`."""
  obs, state, out = trace
  num_envs, channels = env.num_envs, env.info.obs_shape[-1]
  assert obs0.shape == (num_envs, 10, 10, channels) and obs0.dtype == jnp.float32
  assert obs.shape == (num_steps, num_envs, 10, 10, channels) and obs.dtype == jnp.float32
  assert out.next_obs.shape == obs.shape and out.next_obs.dtype == jnp.float32
  assert out.reward.shape == (num_steps, num_envs) and out.reward.dtype == jnp.float32
  assert out.terminated.shape == (num_steps, num_envs) and out.terminated.dtype == jnp.bool_
  assert out.truncated.shape == (num_steps, num_envs) and out.truncated.dtype == jnp.bool_
  assert out.game.shape == (num_steps,) and out.game.dtype == jnp.int32
  assert state0.t.shape == () and state0.t.dtype == jnp.int32
  assert state0.last_action.shape == (num_envs,) and state0.last_action.dtype == jnp.int32
  assert len(state0.games) == len(env.info.games)
  np.testing.assert_array_equal(state.t, np.arange(1, num_steps + 1))
  for x in (obs0, obs, out.next_obs):
    assert set(np.unique(np.asarray(x))) <= {0.0, 1.0}


@pytest.mark.parametrize("name", list(GAME_FACTS))
def test_each_game_equals_gymnax_step_with_the_same_keys(name):
  """With sticky_prob=0, a game's steps are gymnax's own auto-resetting step."""
  num_envs, num_steps, max_steps = 3, 30, 9
  game_id, channels, num_actions = GAME_FACTS[name]
  env = envs.VecEnv(name, num_envs, max_steps=max_steps)
  assert env.info.obs_shape == (10, 10, channels) and env.info.num_actions == num_actions
  key = jax.random.key(1)
  actions = random_actions(jax.random.key(2), num_steps, num_envs, num_actions)
  obs0, state0, trace = rollout(env, key, actions)
  check_shapes(env, obs0, state0, trace, num_steps)
  obs, state, out = trace

  genv, params = gymnax.make(game_id)
  params = params.replace(max_steps_in_episode=max_steps)
  ref_obs, ref_state = jax.vmap(genv.reset, in_axes=(0, None))(
      jax.random.split(jax.random.split(key)[0], num_envs), params)
  np.testing.assert_array_equal(obs0, ref_obs)
  vstep = jax.jit(jax.vmap(genv.step, in_axes=(0, 0, 0, None)))
  for t, k in enumerate(step_keys(key, num_steps)):
    keys = jax.random.split(jax.random.split(k)[1], num_envs)
    ref_obs, ref_state, reward, terminated, truncated, info = vstep(
        keys, ref_state, actions[t], params)
    np.testing.assert_array_equal(obs[t], ref_obs)
    np.testing.assert_array_equal(out.next_obs[t], info["final_observation"])
    np.testing.assert_array_equal(out.reward[t], reward)
    np.testing.assert_array_equal(out.terminated[t], terminated)
    np.testing.assert_array_equal(out.truncated[t], truncated)
    jax.tree.map(np.testing.assert_array_equal,
                 jax.tree.map(lambda x, t=t: x[t], state.games[0]), ref_state)
  assert out.truncated.any()  # the time limit was reached in this run


def test_sequence_shapes():
  assert SEQ.info.obs_shape == (10, 10, 6) and SEQ.info.num_actions == 4
  _, _, (obs0, state0, trace) = seq_rollout()
  check_shapes(SEQ, obs0, state0, trace, SEQ_STEPS)


# ----------------------------------------------------------------------------
# Episode ends.


def _is_first_breakout_obs(obs):
  """A fresh Breakout screen: paddle at (9, 4), ball and its trail both at row 3 of
  column 0 or 9, bricks filling rows 1-3."""
  bricks = np.zeros((10, 10))
  bricks[1:4] = 1
  paddle = np.zeros((10, 10))
  paddle[9, 4] = 1
  ball = np.argwhere(obs[..., 1])
  return (np.array_equal(obs[..., 0], paddle) and np.array_equal(obs[..., 3], bricks)
          and len(ball) == 1 and ball[0][0] == 3 and ball[0][1] in (0, 9)
          and np.array_equal(obs[..., 2], obs[..., 1]))


def test_auto_reset_after_a_game_over():
  num_envs, num_steps = 4, 40
  env = envs.VecEnv("breakout", num_envs)
  obs0, _, (obs, state, out) = rollout(
      env, jax.random.key(3), jnp.zeros((num_steps, num_envs), jnp.int32))
  assert all(_is_first_breakout_obs(np.asarray(o)) for o in obs0)
  ends = np.argwhere(np.asarray(out.terminated))
  assert len(ends)  # the no-op paddle misses the ball within 40 steps
  assert not np.asarray(out.truncated).any()
  for t, i in ends:
    assert _is_first_breakout_obs(np.asarray(obs[t, i]))
    assert int(state.games[0].time[t, i]) == 0
    # The observation reached: the ball on the bottom row, where the game ends.
    assert np.asarray(out.next_obs[t, i, 9, :, 1]).sum() == 1
    assert not _is_first_breakout_obs(np.asarray(out.next_obs[t, i]))
  live = ~np.asarray(out.terminated)
  np.testing.assert_array_equal(np.asarray(obs)[live], np.asarray(out.next_obs)[live])


# Breakout with a time limit of 5 steps: its ball, 6 rows above the bottom at the
# start, cannot end the game before step 6, so every episode ends by the limit.
LIMIT = 5
LIMITED = envs.VecEnv("breakout", 4, max_steps=LIMIT)
LIMITED_STEPS = 12


def test_time_limit_truncates_and_is_not_a_termination():
  actions = random_actions(jax.random.key(4), LIMITED_STEPS, LIMITED.num_envs, 3)
  _, _, (obs, state, out) = rollout(LIMITED, jax.random.key(8), actions)
  truncated = np.zeros((LIMITED_STEPS, LIMITED.num_envs), bool)
  truncated[[4, 9]] = True  # steps 5 and 10
  np.testing.assert_array_equal(out.truncated, truncated)
  assert not np.asarray(out.terminated).any()
  np.testing.assert_array_equal(state.games[0].time[:, 0], [1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2])
  for i in range(LIMITED.num_envs):
    assert _is_first_breakout_obs(np.asarray(obs[4, i]))
    assert not _is_first_breakout_obs(np.asarray(out.next_obs[4, i]))

  # The reference itself: gymnax's terminal flag leaves the limit out.
  genv, params = gymnax.make("Breakout-MinAtar")
  params = params.replace(max_steps_in_episode=LIMIT)
  _, s = genv.reset_env(jax.random.key(0), params)
  for k in jax.random.split(jax.random.key(1), LIMIT):
    _, s, _, done, _ = genv.step_env(k, s, 0, params)
  assert int(s.time) == LIMIT and not bool(done)
  assert not bool(genv.is_terminal(s, params)) and bool(genv.is_truncated(s, params))


# ----------------------------------------------------------------------------
# Actions.


def test_invalid_actions_act_as_noop():
  _, state = SEQ.reset(jax.random.key(5))
  step = jax.jit(SEQ.step)
  k = jax.random.key(7)
  noop = step(k, state, jnp.zeros(2, jnp.int32))
  assert int(noop[2].game) == 0 and not np.asarray(noop[2].truncated).any()  # Breakout
  for bad in ([3, -1], [7, 100]):  # 3 (fire) is Space Invaders' only; Breakout has 3 actions
    jax.tree.map(np.testing.assert_array_equal, step(k, state, jnp.array(bad)), noop)
  np.testing.assert_array_equal(noop[1].last_action, [0, 0])
  left = step(k, state, jnp.ones(2, jnp.int32))
  assert not np.array_equal(left[0][..., 0], noop[0][..., 0])  # the test can tell actions apart


def test_sticky_one_repeats_the_first_action_of_each_episode():
  key = jax.random.key(8)
  num_envs = LIMITED.num_envs
  actions = random_actions(jax.random.key(9), LIMITED_STEPS, num_envs, 3)
  sticky = envs.VecEnv("breakout", num_envs, sticky_prob=0.999999, max_steps=LIMIT)
  _, _, (obs, state, out) = rollout(sticky, key, actions)
  last = np.asarray(state.last_action)
  a = np.asarray(actions)
  # Episodes: steps 1-5, 6-10, 11-12; the executed action is each episode's first choice.
  executed = np.concatenate([np.broadcast_to(a[0], (5, num_envs)),
                             np.broadcast_to(a[5], (5, num_envs)),
                             np.broadcast_to(a[10], (2, num_envs))])
  np.testing.assert_array_equal(last[[4, 9]], -1)
  keep = np.ones(LIMITED_STEPS, bool)
  keep[[4, 9]] = False
  np.testing.assert_array_equal(last[keep], executed[keep])
  assert not np.array_equal(executed, a)  # the chosen actions did change

  # What the game saw: the same as choosing the executed actions without stickiness.
  _, _, (obs_ref, _, out_ref) = rollout(LIMITED, key, jnp.asarray(executed))
  np.testing.assert_array_equal(obs, obs_ref)
  np.testing.assert_array_equal(out.next_obs, out_ref.next_obs)


def test_sticky_repeats_with_the_given_probability():
  num_envs, num_steps, p = 32, 100, 0.3
  actions = random_actions(jax.random.key(10), num_steps, num_envs, 3)
  env = envs.VecEnv("breakout", num_envs, sticky_prob=p)
  _, _, (_, state, out) = rollout(env, jax.random.key(11), actions)
  executed = np.asarray(state.last_action)
  done = np.asarray(out.terminated | out.truncated)
  chosen = np.asarray(actions)
  np.testing.assert_array_equal(executed[done], -1)
  np.testing.assert_array_equal(executed[0], chosen[0])  # an episode's first action
  prev, now, want = executed[:-1], executed[1:], chosen[1:]
  fresh = prev == -1  # the previous step ended an episode: the chosen action is played
  np.testing.assert_array_equal(now[fresh & ~done[1:]], want[fresh & ~done[1:]])
  inside = ~fresh & ~done[1:]
  assert np.all((now == prev) | (now == want) | ~inside)
  differ = inside & (want != prev)
  repeat_rate = np.mean(now[differ] == prev[differ])
  assert differ.sum() > 1500
  assert abs(repeat_rate - p) < 0.04, repeat_rate


# ----------------------------------------------------------------------------
# Sequences.


def test_padded_channels_are_zero():
  key, _, (obs0, _, (obs, _, out)) = seq_rollout()
  ref_obs, _ = jax.vmap(gymnax.make("Breakout-MinAtar")[0].reset)(
      jax.random.split(jax.random.split(key)[0], SEQ.num_envs))
  np.testing.assert_array_equal(obs0[..., :4], ref_obs)
  np.testing.assert_array_equal(obs0[..., 4:], 0)
  played = np.asarray(out.game) == 0  # steps played in Breakout
  np.testing.assert_array_equal(np.asarray(out.next_obs)[played][..., 4:], 0)
  after = np.asarray(SEQ.game_index(jnp.arange(1, SEQ_STEPS + 1))) == 0  # obs from Breakout
  np.testing.assert_array_equal(after, [1, 0, 0, 1, 1, 0, 0, 1, 1, 0])  # g(t) = (t // 2) % 2
  np.testing.assert_array_equal(np.asarray(obs)[after][..., 4:], 0)
  # Space Invaders' own channels 4-5 (the bullets) do show.
  assert np.asarray(out.next_obs)[~played][..., 4:].any()


def test_game_switch_resets_every_env_and_truncates():
  key, actions, (_, _, (obs, state, out)) = seq_rollout()
  num_envs = SEQ.num_envs
  np.testing.assert_array_equal(out.game, [0, 0, 1, 1, 0, 0, 1, 1, 0, 0])
  switch = np.zeros((SEQ_STEPS, num_envs), bool)
  switch[1::2] = True
  np.testing.assert_array_equal(out.truncated, switch)
  assert not np.asarray(out.terminated).any()
  np.testing.assert_array_equal(np.asarray(state.last_action)[1::2], -1)
  np.testing.assert_array_equal(np.asarray(state.last_action)[::2],
                                np.where(np.asarray(out.game)[::2, None] == 0,
                                         np.where(actions[::2] < 3, actions[::2], 0),
                                         actions[::2]))
  ks = step_keys(key, SEQ_STEPS)
  for t in range(1, SEQ_STEPS, 2):
    new = 1 - int(out.game[t])
    genv, params = gymnax.make(SEQ.info.games[new])
    _, reset_keys = env_keys(ks[t], num_envs)
    first, _ = jax.vmap(genv.reset_env, in_axes=(0, None))(reset_keys, params)
    channels = first.shape[-1]
    np.testing.assert_array_equal(obs[t, ..., :channels], first)
    np.testing.assert_array_equal(obs[t, ..., channels:], 0)
    np.testing.assert_array_equal(state.games[new].time[t], 0)
    assert not np.array_equal(out.next_obs[t], obs[t])


def test_vmapped_seeds_equal_each_seed_alone():
  num_envs, num_steps, num_seeds = 2, 8, 3
  env = envs.VecEnv("breakout+space_invaders", num_envs, sticky_prob=0.4, switch_every=6,
                    max_steps=5)
  keys = jax.random.split(jax.random.key(15), num_seeds)
  actions = jax.vmap(lambda k: random_actions(k, num_steps, num_envs, 4))(
      jax.random.split(jax.random.key(16), num_seeds))
  together = jax.jit(jax.vmap(functools.partial(rollout, env)))(keys, actions)
  for s in range(num_seeds):
    alone = rollout(env, keys[s], actions[s])
    jax.tree.map(lambda x, y, s=s: np.testing.assert_array_equal(x[s], y), together, alone)
  assert np.asarray(together[2][2].truncated).any()

  # reset and step vmapped on their own: the states carry a seed axis (t included).
  obs, state = jax.vmap(env.reset)(jax.vmap(lambda k: jax.random.split(k)[0])(keys))
  assert state.t.shape == (num_seeds,)
  np.testing.assert_array_equal(obs, together[0])
  step = jax.jit(jax.vmap(env.step))
  ks = jax.vmap(lambda k: step_keys(k, num_steps))(keys)
  for t in range(num_steps):
    obs, state, out = step(ks[:, t], state, actions[:, t])
    jax.tree.map(lambda x, y, t=t: np.testing.assert_array_equal(x, y[:, t]),
                 (obs, state, out), together[2])
