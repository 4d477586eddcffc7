r"""C51 (Bellemare et al., 2017): a categorical return distribution per action.

The head outputs ``num_atoms`` logits per action; the atoms are
``z_j = v_min + j dz``, ``dz = (v_max - v_min) / (num_atoms - 1)``, and

  p(s, a) = softmax(logits(s, a)),      Q(s, a) = sum_j p_j(s, a) z_j.

For a transition ``(s, a, r, s', d)`` the target distribution is the next
state's distribution under ``a* = argmax_b Q_target(s', b)``, moved by the
Bellman operator and projected back onto the atoms:

  Tz_i = clip(r + gamma (1 - d) z_i, v_min, v_max)
  m_j  = sum_i p_i(s', a*) max(0, 1 - |Tz_i - z_j| / dz)        (`project`)

(each ``Tz_i`` splits its mass between the two atoms around it, in
proportion to its distance from each), and the loss is the cross-entropy
``-sum_j m_j log p_j(s, a)`` with ``m`` held fixed. The TD error reported to
the probes is ``Q(s, a) - (r + gamma (1 - d) Q_target(s', a*))``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def project(probs: jax.Array, rewards: jax.Array, discounts: jax.Array,
            support: jax.Array) -> jax.Array:
  r"""The categorical projection of ``r + discount * Z`` onto `support` (module docstring).

  Args:
    probs: ``[B, N]`` the next state's probabilities over the atoms.
    rewards: ``[B]``.
    discounts: ``[B]``: ``gamma (1 - d)``.
    support: ``[N]`` evenly spaced atoms.

  Returns:
    ``[B, N]`` probabilities on the atoms (each row sums to ``sum(probs)``).
  """
  v_min, v_max = support[0], support[-1]
  dz = (v_max - v_min) / (support.shape[0] - 1)
  tz = jnp.clip(rewards[:, None] + discounts[:, None] * support[None, :], v_min, v_max)
  weight = jnp.clip(1.0 - jnp.abs(tz[:, :, None] - support[None, None, :]) / dz, 0.0, 1.0)
  return jnp.einsum("bi,bij->bj", probs, weight)


@dataclasses.dataclass(frozen=True)
class C51:
  """Categorical DQN over ``num_atoms`` atoms in ``[v_min, v_max]``."""
  num_actions: int
  num_atoms: int = 51
  v_min: float = -10.0
  v_max: float = 10.0

  def __post_init__(self):
    if self.num_atoms < 2:
      raise ValueError(f"num_atoms: must be >= 2 (got {self.num_atoms})")
    if not self.v_max > self.v_min:
      raise ValueError(f"v_max: must exceed v_min {self.v_min} (got {self.v_max})")

  @property
  def num_outputs(self) -> int:
    return self.num_actions * self.num_atoms

  uses_next_online = False  # the next action is the target network's choice.

  @property
  def support(self) -> jax.Array:
    return jnp.linspace(self.v_min, self.v_max, self.num_atoms, dtype=jnp.float32)

  def logits(self, outputs: jax.Array) -> jax.Array:
    return outputs.reshape(outputs.shape[:-1] + (self.num_actions, self.num_atoms))

  def q_values(self, outputs: jax.Array) -> jax.Array:
    return jnp.sum(jax.nn.softmax(self.logits(outputs), axis=-1) * self.support, axis=-1)

  def td_loss(self, outputs, next_online, next_target, batch, gamma):
    """``(cross-entropy [B], TD error [B])`` for a batch of transitions (module docstring)."""
    del next_online  # C51 chooses the next action with the target network.
    take = lambda x, a: jnp.take_along_axis(x, a[:, None, None], axis=1)[:, 0]
    target_logits = self.logits(next_target)
    best = jnp.argmax(self.q_values(next_target), axis=-1)
    next_probs = jax.nn.softmax(take(target_logits, best), axis=-1)
    discounts = gamma * (1.0 - batch.terminated)
    m = jax.lax.stop_gradient(project(next_probs, batch.reward, discounts, self.support))
    log_p = jax.nn.log_softmax(take(self.logits(outputs), batch.action), axis=-1)
    q = jnp.sum(jnp.exp(log_p) * self.support, axis=-1)
    next_q = jnp.sum(next_probs * self.support, axis=-1)
    td = q - jax.lax.stop_gradient(batch.reward + discounts * next_q)
    return -jnp.sum(m * log_p, axis=-1), td
