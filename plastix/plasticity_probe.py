"""The plasticity probe of Lyle et al. (2023): how well a copy fits fresh targets.

A copy of the current parameters is trained, with a fresh state of the same
optimizer, on probe targets

    g(x) = a + sin(omega * f(x; theta_target)),

where ``theta_target`` is a fresh initialisation of the same architecture and
``a`` is the probed network's mean prediction on the probe inputs. The final
probe loss, minus that of a freshly initialised network fitting the same
target networks, is the plasticity loss (lower is better; 0 = as plastic as a
fresh network). Everything is one scanned, jittable, seed-vmappable program.

Keys: ``net_key, batch_key = split(key)``; `probe_networks` draws the fresh
reference network and the K target networks from ``net_key``, and target k's
minibatches come from ``split(batch_key, K)[k]``.

Models with state outside their parameters (batch-norm running statistics)
pass ``model_state``: every network is then ``(params, model_state)``, applied
as ``apply_fn(params, x, model_state)``, and each keeps its own state: the
probed network its trained statistics, the fresh and target networks those of
their initialisation. A state is an input of the fits, never updated by them
(the networks run in eval mode) and never trained by the optimizer.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

ApplyFn = Callable[..., jax.Array]  # apply_fn(params, x), or (params, x, model_state).
InitFn = Callable[[jax.Array], Any]  # init_fn(key) -> params, or (params, model_state).

PAPER_OMEGA = 1e5  # the frequency of the 2023 paper's probe targets.


def _apply(apply_fn: ApplyFn, params, x: jax.Array, model_state) -> jax.Array:
  """`apply_fn` on a network: ``(params, x)``, or with its state where it has one."""
  return apply_fn(params, x) if model_state is None else apply_fn(params, x, model_state)


def probe_target(apply_fn: ApplyFn, params, target_params, x: jax.Array,
                 omega: float = PAPER_OMEGA, *, model_state=None,
                 target_state=None) -> jax.Array:
  r"""Probe targets ``g(x_n) = a + sin(omega f(x_n; theta_target))``, ``a = mean_n f(x_n; theta)``.

  ``a`` (one value per output) centres the targets on what the probed network
  already predicts, so an output offset is not mistaken for lost plasticity.

  Args:
    apply_fn: ``apply_fn(params, x) -> [batch, outputs]``.
    params: the probed parameters theta (they set ``a``).
    target_params: a fresh initialisation theta_target.
    x: ``[n, ...]`` probe inputs.
    omega: the frequency; large omega makes targets look random in x.
    model_state, target_state: the two networks' states, for a model that
      has one (then ``apply_fn(params, x, model_state)``); None without.

  Returns:
    ``[n, outputs]`` targets.
  """
  offset = jnp.mean(_apply(apply_fn, params, x, model_state), axis=0)
  return offset + jnp.sin(omega * _apply(apply_fn, target_params, x, target_state))


def _mse(apply_fn: ApplyFn, params, x: jax.Array, y: jax.Array, model_state) -> jax.Array:
  return jnp.mean(jnp.square(_apply(apply_fn, params, x, model_state) - y))


def fit_target(apply_fn: ApplyFn, optimizer: optax.GradientTransformation, params,
               x: jax.Array, y: jax.Array, key: jax.Array, num_steps: int,
               batch_size: int | None = None, *, model_state=None) -> jax.Array:
  r"""Trains a copy of `params` on ``(x, y)`` and returns its final loss on all of x.

    theta_0 = params,  s_0 = optimizer.init(params)
    theta_{t+1} = step of `optimizer` on mean_{n in B_t} mean_c (f_c(x_n; theta_t) - y_{n,c})^2
    returns  mean_{n, c} (f_c(x_n; theta_S) - y_{n,c})^2        (S = num_steps)

  B_t is all of x when `batch_size` is None, else `batch_size` indices drawn
  uniformly with replacement from `key`. A `model_state` (see the module
  docstring) is held fixed: only `params` are trained.
  """
  x, y = jnp.asarray(x), jnp.asarray(y)

  def step(carry, idx):
    p, opt_state = carry
    xb, yb = (x, y) if batch_size is None else (x[idx], y[idx])
    grads = jax.grad(lambda q: _mse(apply_fn, q, xb, yb, model_state))(p)
    updates, opt_state = optimizer.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), None

  if batch_size is None:
    indices = jnp.zeros((num_steps, 0), jnp.int32)  # unused: every step sees all of x.
  else:
    indices = jax.random.randint(key, (num_steps, batch_size), 0, x.shape[0])
  (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), indices)
  return _mse(apply_fn, params, x, y, model_state)


def probe_networks(init_fn: InitFn, key: jax.Array, num_targets: int):
  r"""The fresh reference network and the `num_targets` target networks of `key`.

    net_key, batch_key = split(key),   nets = vmap(init_fn)(split(net_key, K + 1)),
    fresh = nets[0],   targets = nets[1:]      (a leading axis of size K)

  One vmapped init builds all K + 1 networks (one init in the compiled program);
  with an `init_fn` that returns ``(params, model_state)``, each network is such
  a pair.
  """
  net_key, _ = jax.random.split(key)
  nets = jax.vmap(init_fn)(jax.random.split(net_key, num_targets + 1))
  return jax.tree.map(lambda a: a[0], nets), jax.tree.map(lambda a: a[1:], nets)


def probe_loss(apply_fn: ApplyFn, optimizer: optax.GradientTransformation, params,
               target_params, x: jax.Array, key: jax.Array, *, num_steps: int = 2000,
               omega: float = PAPER_OMEGA, batch_size: int | None = None,
               model_state=None, target_states=None) -> jax.Array:
  r"""Mean final probe loss of `params` over K target networks.

    L(theta) = 1/K sum_k fit_target(theta, x, g_k(x), S, batch_key_k),
    g_k(x) = a(theta) + sin(omega f(x; theta_target_k)),   batch_key_k = split(key, K)[k],

  the K targets computed at once (a vmap over target networks) and fitted one
  after another (a scan), each from `params` with a fresh optimizer state (see
  `fit_target` for the loss and the minibatches).

  Args:
    apply_fn: ``apply_fn(params, x) -> [batch, outputs]``.
    optimizer: the optimizer of every fit.
    params: the probed parameters theta.
    target_params: K target networks stacked on a leading axis (`probe_networks`).
    x: ``[n, ...]`` probe inputs.
    key: PRNG key of the minibatches.
    num_steps: S, optimizer steps per target.
    omega: target frequency.
    batch_size: minibatch size; None for full-batch steps.
    model_state: the probed network's state, for a model that has one (then
      ``apply_fn(params, x, model_state)``); None without.
    target_states: the target networks' states, stacked like `target_params`
      (with `model_state`).

  Returns:
    A float scalar.
  """
  targets = jax.vmap(lambda t, ts: probe_target(apply_fn, params, t, x, omega,
                                                model_state=model_state, target_state=ts))(
                                                    target_params, target_states)
  batch_keys = jax.random.split(key, targets.shape[0])

  def one_target(_, target):
    y, batch_key = target
    return None, fit_target(apply_fn, optimizer, params, x, y, batch_key, num_steps,
                            batch_size, model_state=model_state)

  _, losses = jax.lax.scan(one_target, None, (targets, batch_keys))
  return jnp.mean(losses)


def plasticity_loss(apply_fn: ApplyFn, init_fn: InitFn, optimizer: optax.GradientTransformation,
                    params, x: jax.Array, key: jax.Array, *, num_targets: int = 10,
                    num_steps: int = 2000, omega: float = PAPER_OMEGA,
                    batch_size: int | None = None, model_state=None) -> dict[str, jax.Array]:
  r"""The 2023 plasticity loss: probe loss of `params` minus that of a fresh network.

    fresh, targets = probe_networks(init_fn, key, K),   batch_key = split(key)[1]
    probe_loss       = L(params)    (`probe_loss` on the K targets, S steps each)
    fresh_probe_loss = L(fresh)     (the same K target networks and minibatches)
    plasticity_loss  = probe_loss - fresh_probe_loss

  Each network's targets are centred on its own mean prediction. The two
  networks run as one vmapped program, so passing ``params == fresh`` (and,
  with a state, ``model_state`` equal to the fresh one's) gives exactly 0.
  `apply_fn`, `init_fn`, `optimizer`, `num_targets`, `num_steps` and
  `batch_size` are static (close over them under jit); `params`, `x`, `key`,
  `omega` and `model_state` may be traced and vmapped over seeds. Cost: about
  ``2 * num_targets * num_steps`` optimizer steps.

  Args:
    apply_fn: ``apply_fn(params, x) -> [batch, outputs]`` (with `model_state`:
      ``apply_fn(params, x, model_state)``).
    init_fn: ``init_fn(key) -> params`` for a fresh network of the same
      architecture (``-> (params, model_state)`` with `model_state`).
    optimizer: the training optimizer (a fresh state is made for every fit).
    params: the probed parameters.
    x: ``[n, ...]`` probe inputs.
    key: PRNG key of the fresh network, the target networks and the minibatches.
    num_targets: K, how many probe targets are fitted (10 in the paper).
    num_steps: S, optimizer steps per target (2,000 in the paper).
    omega: target frequency (1e5 in the paper).
    batch_size: minibatch size; None for full-batch steps.
    model_state: the probed network's state (batch-norm statistics), for a
      model that has one: then ``apply_fn(params, x, model_state)`` and
      ``init_fn(key) -> (params, model_state)``, and the fresh and target
      networks use their own initial states. None for a model without.

  Returns:
    A dict of float scalars: ``probe_loss``, ``fresh_probe_loss``, ``plasticity_loss``.
  """
  fresh, targets = probe_networks(init_fn, key, num_targets)
  fresh_state = target_states = None
  if model_state is not None:
    (fresh, fresh_state), (targets, target_states) = fresh, targets
  batch_key = jax.random.split(key)[1]
  stack = lambda a, b: jax.tree.map(lambda u, v: jnp.stack([u, v]), a, b)
  losses = jax.vmap(lambda p, s: probe_loss(
      apply_fn, optimizer, p, targets, x, batch_key, num_steps=num_steps, omega=omega,
      batch_size=batch_size, model_state=s, target_states=target_states))(
          stack(params, fresh), stack(model_state, fresh_state))
  return dict(probe_loss=losses[0], fresh_probe_loss=losses[1],
              plasticity_loss=losses[0] - losses[1])
