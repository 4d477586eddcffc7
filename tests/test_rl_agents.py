"""The RL agents, replay buffer and loop against values worked out by hand."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import models
from plastix import probe_suite
from plastix.rl import agents
from plastix.rl import loop
from plastix.rl import replay
from plastix.rl.agents import c51 as c51_lib


# ----------------------------------------------------------------------------
# Replay.


def test_replay_ring_overwrites_oldest_and_counts():
  buf = replay.init(5, {"x": jnp.zeros([], jnp.float32)})
  for start in (1, 3, 5):  # three batches of two: 1,2 | 3,4 | 5,6
    buf = replay.add(buf, {"x": jnp.array([start, start + 1], jnp.float32)})
  # Capacity 5: entry 0 (value 1) was overwritten by 6.
  np.testing.assert_array_equal(buf.data["x"], [6, 2, 3, 4, 5])
  assert int(buf.position) == 1 and int(buf.size) == 5


def test_replay_samples_only_written_entries():
  buf = replay.init(100, {"x": jnp.zeros([], jnp.float32)})
  buf = replay.add(buf, {"x": jnp.arange(1, 8, dtype=jnp.float32)})  # 7 of 100 written.
  drawn = replay.sample(buf, jax.random.PRNGKey(0), 2000)["x"]
  assert set(np.asarray(drawn).tolist()) == set(range(1, 8))  # never an unwritten 0.


def test_replay_refuses_a_batch_larger_than_capacity():
  buf = replay.init(2, {"x": jnp.zeros([])})
  with pytest.raises(ValueError, match="buffer_size"):
    replay.add(buf, {"x": jnp.zeros([3])})


# ----------------------------------------------------------------------------
# Losses.


def _batch(action, reward, terminated):
  a = jnp.asarray(action, jnp.int32)
  return agents.Transition(obs=None, action=a, reward=jnp.asarray(reward, jnp.float32),
                           next_obs=None, terminated=jnp.asarray(terminated, jnp.float32))


def test_double_dqn_target_and_huber_by_hand():
  batch = _batch([1], [1.0], [0.0])
  outputs, next_online, next_target = (jnp.array([[1.0, 2.0]]), jnp.array([[3.0, 0.0]]),
                                       jnp.array([[5.0, 7.0]]))
  loss, delta = agents.DQN(2).td_loss(outputs, next_online, next_target, batch, 0.5)
  # Online net picks action 0 at s'; target values it 5: y = 1 + 0.5 * 5 = 3.5.
  np.testing.assert_allclose(delta, [2.0 - 3.5])
  np.testing.assert_allclose(loss, [1.0 * (1.5 - 0.5)])  # |delta| > kappa = 1.
  # The 2015 target takes the target net's own argmax: y = 1 + 0.5 * 7.
  _, delta = agents.DQN(2, double=False).td_loss(outputs, next_online, next_target, batch, 0.5)
  np.testing.assert_allclose(delta, [2.0 - 4.5])
  # A terminal transition does not bootstrap: y = r; small |delta| is quadratic.
  loss, delta = agents.DQN(2).td_loss(outputs, next_online, next_target,
                                      _batch([0], [1.5], [1.0]), 0.5)
  np.testing.assert_allclose(delta, [-0.5])
  np.testing.assert_allclose(loss, [0.125])


def test_c51_projection_worked_example():
  support = jnp.array([-1.0, 0.0, 1.0])
  probs = jnp.array([[0.2, 0.5, 0.3]])
  # Tz = 0.5 + 0.5 z = (0, 0.5, 1): 0.2 -> z=0; 0.5 split evenly to z=0, z=1; 0.3 -> z=1.
  m = c51_lib.project(probs, jnp.array([0.5]), jnp.array([0.5]), support)
  np.testing.assert_allclose(m, [[0.0, 0.45, 0.55]], atol=1e-6)
  # Everything below v_min is clipped onto the first atom.
  m = c51_lib.project(probs, jnp.array([-2.0]), jnp.array([1.0]), support)
  np.testing.assert_allclose(m, [[1.0, 0.0, 0.0]], atol=1e-6)


def _project_by_floor_and_ceil(probs, rewards, discounts, support):
  """The projection as Bellemare et al. write it: b = (Tz - v_min) / dz, mass to floor/ceil."""
  n = len(support)
  dz = (support[-1] - support[0]) / (n - 1)
  out = np.zeros_like(probs)
  for b_i in range(probs.shape[0]):
    for i in range(n):
      tz = np.clip(rewards[b_i] + discounts[b_i] * support[i], support[0], support[-1])
      b = (tz - support[0]) / dz
      lo, hi = int(np.floor(b)), int(np.ceil(b))
      if lo == hi:
        out[b_i, lo] += probs[b_i, i]
      else:
        out[b_i, lo] += probs[b_i, i] * (hi - b)
        out[b_i, hi] += probs[b_i, i] * (b - lo)
  return out


def test_c51_projection_matches_floor_ceil_reference():
  rng = np.random.default_rng(0)
  support = np.linspace(-10.0, 10.0, 51)
  probs = rng.dirichlet(np.ones(51), size=16)
  rewards = rng.normal(0, 3, size=16)
  discounts = rng.choice([0.0, 0.9, 0.99], size=16)
  got = c51_lib.project(jnp.asarray(probs, jnp.float32), jnp.asarray(rewards, jnp.float32),
                        jnp.asarray(discounts, jnp.float32), jnp.asarray(support, jnp.float32))
  np.testing.assert_allclose(got, _project_by_floor_and_ceil(probs, rewards, discounts, support),
                             atol=2e-5)
  np.testing.assert_allclose(np.sum(got, axis=1), 1.0, atol=1e-5)


def test_pqn_lambda_returns_by_hand():
  r, v = jnp.array([[1.0], [0.0], [2.0]]), jnp.array([[10.0], [20.0], [30.0]])
  zeros = jnp.zeros((3, 1))
  returns = lambda lam, term=zeros, ended=zeros: np.asarray(agents.PQN(2, lam=lam).lambda_returns(
      r, term, ended, v, 0.5))[:, 0]
  # G2 = 2 + .5 * 30 = 17; G1 = .5 (.5 * 17 + .5 * 20) = 9.25; G0 = 1 + .5 (.5 * 9.25 + .5 * 10).
  np.testing.assert_allclose(returns(0.5), [5.8125, 9.25, 17.0])
  np.testing.assert_allclose(returns(0.0), [6.0, 10.0, 17.0])      # one-step targets
  np.testing.assert_allclose(returns(1.0), [5.25, 8.5, 17.0])      # the rollout's return
  # An episode that ends at t = 0 bootstraps from v_1 alone; a terminated one not at all.
  end0 = jnp.array([[1.0], [0.0], [0.0]])
  np.testing.assert_allclose(returns(0.5, ended=end0)[0], 6.0)
  np.testing.assert_allclose(returns(0.5, term=end0, ended=end0)[0], 1.0)
  # The one-step TD loss of the probes: y = r + gamma max_a Q(s', a).
  batch = _batch([1], [1.0], [0.0])
  loss, delta = agents.PQN(2).td_loss(jnp.array([[0.0, 3.0]]), None, jnp.array([[2.0, 4.0]]),
                                      batch, 0.5)
  np.testing.assert_allclose(delta, [3.0 - 3.0]) and np.testing.assert_allclose(loss, [0.0])


def test_pqn_takes_epochs_x_minibatches_steps_a_rollout():
  agent = agents.PQN(2, lam=0.5, rollout_steps=5, epochs=3, minibatches=2)
  spec = _spec(Chain(num_envs=2), agent, window_steps=10, probe_batch_size=2)
  hp = _hp()
  states = loop.init_states(jnp.stack([jax.random.PRNGKey(0)]), hp, spec=spec)
  one = jax.jit(jax.vmap(lambda s: loop.rollout_update(spec, hp, s, 0)[0]))(states)
  assert int(one.num_updates[0]) == 3 * 2
  # No target network: the probes' target is the online network after the updates.
  chex.assert_trees_all_equal(one.target_params, one.params)


def test_c51_q_values_are_the_mean_of_the_distribution():
  agent = agents.C51(2, num_atoms=3, v_min=-1.0, v_max=1.0)
  logits = jnp.log(jnp.array([[0.2, 0.5, 0.3, 1.0, 1e-9, 1e-9]]))
  np.testing.assert_allclose(agent.q_values(logits), [[0.1, -1.0]], atol=1e-6)


# ----------------------------------------------------------------------------
# Tiny environments whose optimal values are known.


class Info(NamedTuple):
  games: tuple
  obs_shape: tuple
  num_actions: int


class Out(NamedTuple):
  reward: jax.Array
  terminated: jax.Array
  truncated: jax.Array
  next_obs: jax.Array
  game: jax.Array


@dataclasses.dataclass(frozen=True)
class Bandit:
  """One state; action a pays REWARDS[a] and ends the episode: Q*(a) = REWARDS[a]."""
  num_envs: int = 4
  rewards: tuple = (1.0, 0.5)

  @property
  def info(self):
    return Info(("bandit",), (1, 1, 1), len(self.rewards))

  def reset(self, key):
    return jnp.ones((self.num_envs, 1, 1, 1)), jnp.zeros((self.num_envs,), jnp.int32)

  def step(self, key, state, actions):
    obs = jnp.ones((self.num_envs, 1, 1, 1))
    reward = jnp.asarray(self.rewards, jnp.float32)[actions]
    done = jnp.ones((self.num_envs,), bool)
    return obs, state, Out(reward, done, ~done, obs, jnp.zeros([], jnp.int32))


@dataclasses.dataclass(frozen=True)
class Chain:
  """s0 -(r=0)-> s1 -(r=1)-> end, whatever the action: Q*(s1) = 1, Q*(s0) = gamma."""
  num_envs: int = 4

  @property
  def info(self):
    return Info(("chain",), (1, 1, 2), 2)

  def _obs(self, s):
    return jax.nn.one_hot(s, 2)[:, None, None, :]

  def reset(self, key):
    s = jnp.zeros((self.num_envs,), jnp.int32)
    return self._obs(s), s

  def step(self, key, state, actions):
    terminated = state == 1
    reward = terminated.astype(jnp.float32)
    reached = jnp.minimum(state + 1, 1)
    new = jnp.where(terminated, 0, reached)
    return self._obs(new), new, Out(reward, terminated, jnp.zeros_like(terminated),
                                    self._obs(reached), jnp.zeros([], jnp.int32))


def _spec(env, agent, **kw):
  defaults = dict(window_steps=250, buffer_size=1000, batch_size=32, learning_starts=64,
                  target_update_period=20, eps_start=1.0, eps_end=1.0, eps_decay_steps=1,
                  probe_batch_size=8)
  defaults.update(kw)
  model = models.create({"name": "mlp", "depth": 1, "width": 32}, agent.num_outputs)
  return loop.RLSpec(agent=agent, model=model, env=env, **defaults)


def _hp(gamma=0.9, learning_rate=3e-3, **kw):
  return loop.RLHParams(learning_rate=jnp.float32(learning_rate), weight_decay=jnp.float32(0.0),
                        gamma=jnp.float32(gamma), eps=jnp.float32(1e-8), **kw)


def _train(spec, hp, num_windows, seeds=(0,)):
  keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
  states = loop.init_states(keys, hp, spec=spec)
  return loop.run_windows(states, hp, spec=spec, num_windows=num_windows)


def _q(spec, states, obs):
  params = jax.tree.map(lambda x: x[0], states.params)
  return spec.agent.q_values(models.apply_model(spec.model, params, {}, obs)[0])


AGENTS = [agents.DQN(2), agents.C51(2, num_atoms=21, v_min=-2.0, v_max=2.0),
          agents.PQN(2, lam=0.5, rollout_steps=5, epochs=2, minibatches=2)]


@pytest.mark.parametrize("agent", AGENTS, ids=["dqn", "c51", "pqn"])
def test_one_state_bandit_learns_the_rewards(agent):
  spec = _spec(Bandit(), agent)
  states, metrics = _train(spec, _hp(), num_windows=4)
  q = _q(spec, states, jnp.ones((1, 1, 1, 1)))
  np.testing.assert_allclose(q[0], [1.0, 0.5], atol=0.05)
  # Uniform exploration: the mean return of a window is the mean reward, 0.75.
  np.testing.assert_allclose(metrics.episode_return[0, -1], 0.75, atol=0.05)
  assert int(metrics.num_episodes[0, 0]) == 250 * 4  # every step ends an episode.


@pytest.mark.parametrize("agent", AGENTS, ids=["dqn", "c51", "pqn"])
def test_two_state_chain_learns_the_discounted_values(agent):
  spec = _spec(Chain(), agent)
  states, metrics = _train(spec, _hp(gamma=0.9), num_windows=6)
  q = _q(spec, states, jax.nn.one_hot(jnp.array([0, 1]), 2)[:, None, None, :])
  np.testing.assert_allclose(q[1], [1.0, 1.0], atol=0.05)
  np.testing.assert_allclose(q[0], [0.9, 0.9], atol=0.05)
  np.testing.assert_allclose(metrics.episode_return[0, -1], 1.0)  # every episode pays 1.


def test_a_vmapped_seed_equals_that_seed_alone():
  spec = _spec(Chain(), agents.DQN(2), window_steps=50)
  hp = _hp()
  _, together = _train(spec, hp, num_windows=2, seeds=(0, 1, 2))
  _, alone = _train(spec, hp, num_windows=2, seeds=(1,))
  for a, b in zip(jax.tree.leaves(together), jax.tree.leaves(alone)):
    np.testing.assert_allclose(np.asarray(a)[1], np.asarray(b)[0], rtol=1e-5, atol=1e-6)


def test_updates_before_counts_the_learning_steps():
  spec = _spec(Bandit(num_envs=4), agents.DQN(2), learning_starts=10, train_every=2)
  # (s + 1) * 4 >= 10 from s = 2; the first multiple of 2 from there is s = 2:
  # updates at s = 2, 4, 6, ...
  got = [int(loop.updates_before(spec, s)) for s in range(8)]
  assert got == [0, 0, 0, 1, 1, 2, 2, 3]


def test_epsilon_decays_linearly_to_its_floor():
  spec = _spec(Bandit(), agents.DQN(2), eps_start=1.0, eps_end=0.1, eps_decay_steps=100)
  np.testing.assert_allclose([loop.epsilon(spec, s) for s in (0, 50, 100, 500)],
                             [1.0, 0.55, 0.1, 0.1], atol=1e-6)


def test_target_network_syncs_every_period_updates():
  # learning_starts 0, one update per vector step, sync every 3 updates:
  # after 7 updates the target is the params after update 6.
  spec = _spec(Chain(num_envs=1), agents.DQN(2), window_steps=7, learning_starts=0,
               target_update_period=3, batch_size=4, probe_batch_size=2)
  hp = _hp()
  keys = jnp.stack([jax.random.PRNGKey(0)])
  states = loop.init_states(keys, hp, spec=spec)
  six = jax.jit(jax.vmap(lambda s: jax.lax.scan(
      lambda c, t: loop.agent_step(spec, hp, c, t), s, jnp.arange(6))[0]))(states)
  states, _ = loop.run_windows(states, hp, spec=spec, num_windows=1)
  # (Two compiled programs: equal up to float rounding.)
  chex.assert_trees_all_close(states.target_params, six.params, rtol=1e-4, atol=1e-6)
  assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(states.params),
                                                   jax.tree.leaves(six.params)))


def test_head_reset_every_n_updates_resets_online_and_target_heads():
  spec = _spec(Chain(num_envs=1), agents.DQN(2), window_steps=4, learning_starts=0,
               target_update_period=1000, batch_size=4, probe_batch_size=2,
               resets=("head_reset",), reset_every_updates=4)
  hp = _hp(learning_rate=1e-2)
  states = loop.init_states(jnp.stack([jax.random.PRNGKey(3)]), hp, spec=spec)
  states, _ = loop.run_windows(states, hp, spec=spec, num_windows=1)
  # The 4th update (vector step 3) ran the reset with a network from the reset
  # stream, fold_in(fold_in(rng, 4), 4): online and target heads both equal its head.
  fresh, _ = loop._fresh_network(spec, loop._stream(jax.random.PRNGKey(3), 4, 4))
  online = jax.tree.map(lambda x: x[0], states.params["head"])
  target = jax.tree.map(lambda x: x[0], states.target_params["head"])
  # (The fresh network is drawn inside another compiled program: float rounding.)
  chex.assert_trees_all_close(online, fresh["head"], rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(target, fresh["head"], rtol=1e-4, atol=1e-6)


def test_probes_run_on_the_fixed_states_and_sharpness_on_its_period():
  settings = probe_suite.ProbeSettings(sharpness_every=2, hessian_iters=5)
  spec = _spec(Chain(), agents.DQN(2), window_steps=40, probe_settings=settings)
  _, m = _train(spec, _hp(), num_windows=4)
  sharp = np.asarray(m.sharpness[0])
  assert np.isnan(sharp[[0, 2]]).all() and np.isfinite(sharp[[1, 3]]).all()
  assert np.all(np.isfinite(np.asarray(m.td_error))) and np.all(np.asarray(m.q_mean_abs) >= 0)
  dead = np.asarray(m.dead_fraction)
  assert np.all((dead >= 0) & (dead <= 1))
