"""Value-based agents: what a network's outputs mean and how they are trained.

An agent is a small frozen dataclass (hashable, so it is part of the loop's
static spec) with:

* ``num_outputs``: the size of the network's head for ``num_actions`` actions;
* ``uses_next_online``: whether the loss reads the online network on the next
  states (the loop then runs that forward pass, without gradients);
* ``q_values(outputs) -> [B, A]``: action values, for acting and the probes;
* ``td_loss(outputs, next_online, next_target, batch, gamma) -> (loss [B], td [B])``:
  the per-transition loss on a replay batch (`Transition`) given the online
  network's outputs on ``batch.obs`` and both networks' outputs on
  ``batch.next_obs`` (``next_online`` is None when ``uses_next_online`` is
  False), and the TD error ``Q(s, a) - target`` it implies (for
  the probes, in units of return).

An on-policy agent (``on_policy = True``: PQN) learns from its own rollouts
instead of replay: it has ``rollout_steps``, ``epochs``, ``minibatches``,
``lambda_returns`` and ``return_loss``, and the loop runs
`plastix.rl.loop.rollout_update` for it.

`AGENTS` maps a config's ``agent`` name to its class; a new agent is a new
module here plus one entry.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from plastix.rl.agents.c51 import C51
from plastix.rl.agents.dqn import DQN
from plastix.rl.agents.pqn import PQN


class Transition(NamedTuple):
  """One step of experience, as stored in replay (leading axes added by batching)."""
  obs: jax.Array         # float32 [..., H, W, C]
  action: jax.Array      # int32
  reward: jax.Array      # float32
  next_obs: jax.Array    # the observation the action led to (before any reset)
  terminated: jax.Array  # float32: 1 where the episode ended by the game (no bootstrap)
  valid: Any = None      # float32 weight in the losses: 0 for a step that joins two
                         #   episodes (`plastix.rl.envs.StepOut.valid`); None: all 1.


AGENTS = {"dqn": DQN, "c51": C51, "pqn": PQN}
