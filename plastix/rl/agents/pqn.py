r"""PQN: parallel Q-learning with lambda-returns, no replay and no target network
(Gallici et al., 2024, "Simplifying Deep Temporal Difference Learning").

The agent acts epsilon-greedily in many environments for a rollout of ``T``
vector steps, then learns from that rollout alone: ``epochs`` passes over its
``T x E`` transitions in ``minibatches`` shuffled minibatches, regressing
``Q(s_t, a_t)`` on the lambda-return

  v_{t+1} = max_a Q(s'_t, a)                          (the network after the rollout)
  G_t = r_t + gamma (1 - d_t) v_{t+1}                  if the episode ended at t, or t = T - 1
  G_t = r_t + gamma (1 - d_t) [lambda G_{t+1} + (1 - lambda) v_{t+1}]   otherwise

with ``d_t`` = 1 when the game ended (terminated: no bootstrap) and ``s'_t``
the state the step reached; an episode that ended by truncation bootstraps
from ``v_{t+1}`` and does not mix in the next episode's return. The loss is
``(Q(s_t, a_t) - G_t)^2 / 2`` with ``G_t`` held fixed. ``lambda = 0`` gives
one-step Q-learning targets; ``lambda = 1`` the discounted return of the rest
of the rollout, bootstrapped at its end. The paper's networks normalise their
hidden layers (LayerNorm): ``model.norm = "layer"`` in ``configs/rl_minatar.py``
terms, which is what lets it drop the target network.

For the loop's probes (the TD error on a replay batch) the agent also has the
one-step loss ``td_loss`` with ``y = r + gamma (1 - d) max_a Q(s', a)``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class PQN:
  """PQN's settings; the head outputs one value per action."""
  num_actions: int
  lam: float = 0.65
  rollout_steps: int = 32
  epochs: int = 2
  minibatches: int = 4

  on_policy = True           # the loop runs `plastix.rl.loop.rollout_update`, not replay updates.
  uses_next_online = False

  @property
  def num_outputs(self) -> int:
    return self.num_actions

  def q_values(self, outputs: jax.Array) -> jax.Array:
    return outputs

  def td_loss(self, outputs, next_online, next_target, batch, gamma):
    """One-step ``(delta^2 / 2 [B], delta [B])``, ``y = r + gamma (1 - d) max_a Q(s', a)``."""
    del next_online
    q = jnp.take_along_axis(outputs, batch.action[:, None], axis=-1)[:, 0]
    target = batch.reward + gamma * (1.0 - batch.terminated) * jnp.max(next_target, axis=-1)
    delta = q - jax.lax.stop_gradient(target)
    return 0.5 * jnp.square(delta), delta

  def lambda_returns(self, rewards, terminated, ended, next_values, gamma):
    """``G [T, E]`` from ``[T, E]`` rewards, terminated, episode ends and
    ``v_{t+1}`` (module docstring), by a reverse scan over t."""
    rewards, terminated = jnp.asarray(rewards, jnp.float32), jnp.asarray(terminated, jnp.float32)
    ended = jnp.asarray(ended, jnp.float32)

    def back(g_next, xs):
      r, d, e, v = xs
      mixed = self.lam * g_next + (1.0 - self.lam) * v
      g = r + gamma * (1.0 - d) * (e * v + (1.0 - e) * mixed)
      return g, g

    last = rewards.shape[0] - 1
    # At t = T - 1 there is no G_{t+1}: treat the rollout's end as an episode end.
    ended = ended.at[last].set(1.0)
    _, returns = jax.lax.scan(back, jnp.zeros_like(rewards[0]),
                              (rewards, terminated, ended, next_values), reverse=True)
    return jax.lax.stop_gradient(returns)

  def return_loss(self, outputs, actions, returns):
    """``(Q(s, a) - G)^2 / 2 [B]`` and the error ``Q(s, a) - G [B]``."""
    q = jnp.take_along_axis(outputs, actions[:, None], axis=-1)[:, 0]
    delta = q - returns
    return 0.5 * jnp.square(delta), delta
