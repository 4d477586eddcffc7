r"""A plain PyTorch DQN on MinAtar: the yardstick of the RL speed benchmark.

One environment of the ``minatar`` package (its numpy ``Environment``, the
game's minimal action set), and the usual MinAtar agent: a 16-channel 3x3
convolution (stride 1), ReLU, flatten, a 128-unit layer, ReLU, and a linear
head of one value per action; Adam; a uniform replay buffer; epsilon-greedy
acting; a target network synced every ``target_update_period`` updates; and,
once ``learning_starts`` transitions are stored, one update on a replay batch
of ``batch_size`` per environment step (``train_every = 1``). The loss is
double DQN with a Huber loss, on a transition ``(s, a, r, s', d)``:

  a* = argmax_b Q(s', b)                    (the online network)
  y  = r + gamma (1 - d) Q_target(s', a*)   (held fixed)
  loss = mean over the batch of huber(Q(s, a) - y),
  huber(x) = x^2 / 2 if |x| <= kappa else kappa (|x| - kappa / 2).

The convolution pads nothing, as the original MinAtar network and plastix's
(``model.cnn_padding = "VALID"`` in ``configs/rl_minatar.py``): ``8 x 8 x 16 =
1024`` features into the 128-unit layer. The hyperparameters default to those
of ``configs/rl_minatar.py``. Seeds run one after another, as PyTorch codebases
run them; the benchmark sets ``torch.set_num_threads`` to the core count.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# MinAtar's module names of the games the benchmark and plastix share.
GAMES = ("breakout", "asterix", "freeway", "space_invaders")


@dataclasses.dataclass(frozen=True)
class Settings:
  """The agent's settings (defaults: ``configs/rl_minatar.py``)."""
  game: str = "breakout"
  buffer_size: int = 100_000
  batch_size: int = 32
  learning_starts: int = 5_000  # transitions stored before the first update.
  train_every: int = 1          # environment steps between updates.
  target_update_period: int = 1_000  # updates between target syncs.
  gamma: float = 0.99
  huber_kappa: float = 1.0
  learning_rate: float = 1e-4
  adam_b1: float = 0.9
  adam_b2: float = 0.999
  adam_eps: float = 3.125e-4
  eps_start: float = 1.0
  eps_end: float = 0.01
  eps_decay_steps: int = 50_000  # environment steps of the linear decay.
  sticky_prob: float = 0.0
  channels: int = 16
  kernel_size: int = 3
  hidden: int = 128


def q_network(in_channels: int, num_actions: int, settings: Settings = Settings()) -> nn.Module:
  """conv(k x k, stride 1, no padding) -> ReLU -> flatten -> Linear(hidden) -> ReLU
  -> Linear(A), on ``[B, C, 10, 10]`` observations (``10 - k + 1`` square maps)."""
  side = 10 - settings.kernel_size + 1
  return nn.Sequential(
      nn.Conv2d(in_channels, settings.channels, settings.kernel_size, stride=1, padding=0),
      nn.ReLU(),
      nn.Flatten(),
      nn.Linear(settings.channels * side * side, settings.hidden),
      nn.ReLU(),
      nn.Linear(settings.hidden, num_actions))


def epsilon(settings: Settings, env_steps: int) -> float:
  """``eps_end + (eps_start - eps_end) max(0, 1 - env_steps / eps_decay_steps)``."""
  frac = max(0.0, 1.0 - env_steps / max(settings.eps_decay_steps, 1))
  return settings.eps_end + (settings.eps_start - settings.eps_end) * frac


def double_dqn_loss(q: torch.Tensor, next_online: torch.Tensor, next_target: torch.Tensor,
                    actions: torch.Tensor, rewards: torch.Tensor, terminated: torch.Tensor,
                    gamma: float, kappa: float) -> torch.Tensor:
  """The mean Huber loss of the double-DQN TD errors (module docstring); `q`,
  `next_online`, `next_target`: ``[B, A]`` values of ``s`` and ``s'``."""
  with torch.no_grad():
    best = next_online.argmax(dim=1, keepdim=True)
    target = rewards + gamma * (1.0 - terminated) * next_target.gather(1, best).squeeze(1)
  chosen = q.gather(1, actions.unsqueeze(1)).squeeze(1)
  return F.huber_loss(chosen, target, delta=kappa)


class ReplayBuffer:
  """A ring of ``capacity`` transitions in numpy arrays (observations channels-first,
  as booleans); `sample` draws uniformly, with replacement, from the filled entries."""

  def __init__(self, capacity: int, obs_shape: tuple[int, ...]):
    self.obs = np.zeros((capacity,) + obs_shape, np.bool_)
    self.next_obs = np.zeros((capacity,) + obs_shape, np.bool_)
    self.actions = np.zeros(capacity, np.int64)
    self.rewards = np.zeros(capacity, np.float32)
    self.terminated = np.zeros(capacity, np.float32)
    self.capacity, self.position, self.size = capacity, 0, 0

  def add(self, obs, action: int, reward: float, next_obs, terminated: bool) -> None:
    i = self.position
    self.obs[i], self.actions[i], self.rewards[i] = obs, action, reward
    self.next_obs[i], self.terminated[i] = next_obs, terminated
    self.position = (i + 1) % self.capacity
    self.size = min(self.size + 1, self.capacity)

  def sample(self, rng: np.random.Generator, batch_size: int):
    """``(obs, actions, rewards, next_obs, terminated)`` as tensors (observations float)."""
    index = rng.integers(0, self.size, batch_size)
    return (torch.from_numpy(self.obs[index]).float(), torch.from_numpy(self.actions[index]),
            torch.from_numpy(self.rewards[index]), torch.from_numpy(self.next_obs[index]).float(),
            torch.from_numpy(self.terminated[index]))


class Agent:
  """One seed's DQN agent in one MinAtar environment; `run` steps it."""

  def __init__(self, settings: Settings, seed: int):
    from minatar import Environment  # pylint: disable=g-import-not-at-top
    if settings.game not in GAMES:
      raise ValueError(f"game: choose one of {', '.join(GAMES)} (got {settings.game!r})")
    self.settings = settings
    torch.manual_seed(seed)
    self.rng = np.random.default_rng(seed)
    self.env = Environment(settings.game, sticky_action_prob=settings.sticky_prob)
    self.env.seed(seed)
    self.env.reset()
    self.actions = self.env.minimal_action_set()
    channels = self.env.state_shape()[2]
    self.net = q_network(channels, len(self.actions), settings)
    self.target = q_network(channels, len(self.actions), settings)
    self.target.load_state_dict(self.net.state_dict())
    self.optimizer = torch.optim.Adam(self.net.parameters(), lr=settings.learning_rate,
                                      betas=(settings.adam_b1, settings.adam_b2),
                                      eps=settings.adam_eps)
    self.buffer = ReplayBuffer(settings.buffer_size, (channels, 10, 10))
    self.obs = self._observe()
    self.env_steps = self.updates = 0
    self.episode_return, self.returns, self.last_loss = 0.0, [], float("nan")

  def _observe(self) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(self.env.state(), -1, 0))

  def act(self) -> int:
    """An epsilon-greedy action index (into the minimal action set)."""
    if self.rng.random() < epsilon(self.settings, self.env_steps):
      return int(self.rng.integers(len(self.actions)))
    with torch.no_grad():
      q = self.net(torch.from_numpy(self.obs).float().unsqueeze(0))
    return int(q.argmax(dim=1).item())

  def update(self) -> float:
    """One gradient step on a replay batch; its loss."""
    s = self.settings
    obs, actions, rewards, next_obs, terminated = self.buffer.sample(self.rng, s.batch_size)
    q = self.net(obs)
    with torch.no_grad():
      next_online, next_target = self.net(next_obs), self.target(next_obs)
    loss = double_dqn_loss(q, next_online, next_target, actions, rewards, terminated, s.gamma,
                           s.huber_kappa)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    self.updates += 1
    if self.updates % s.target_update_period == 0:
      self.target.load_state_dict(self.net.state_dict())
    return loss.item()

  def step(self) -> None:
    """One environment step: act, store the transition, and learn when due."""
    s = self.settings
    action = self.act()
    reward, terminated = self.env.act(self.actions[action])
    next_obs = self._observe()
    self.buffer.add(self.obs, action, reward, next_obs, terminated)
    self.env_steps += 1
    self.episode_return += reward
    if terminated:
      self.returns.append(self.episode_return)
      self.episode_return = 0.0
      self.env.reset()
      next_obs = self._observe()
    self.obs = next_obs
    # As plastix's loop: the step that stores transition number `learning_starts`
    # takes the first update, then every `train_every`-th step.
    if self.env_steps >= s.learning_starts and (self.env_steps - 1) % s.train_every == 0:
      self.last_loss = self.update()

  def run(self, env_steps: int) -> None:
    for _ in range(env_steps):
      self.step()
