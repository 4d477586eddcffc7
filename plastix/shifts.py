"""Nonstationarity as pure, jittable task shifts.

A task is a small pytree, `Task`: the label of every training example and a
permutation of the flattened input. A sequence of tasks is built inside
``lax.scan`` by `switch_task`, from a PRNG key and the previous task, so that a
whole run of tasks compiles into one program. Shifts compose: ``"a+b"`` applies
shift ``a`` then shift ``b`` at every switch.

Shifts (names usable in configs):

* ``label_reset`` (per-example label reset; Lyle et al., 2024): exactly
  ``round(eps * N)`` examples, chosen uniformly, get a fresh label drawn
  uniformly from the classes. ``eps = 1`` is fresh random labels for all; a new
  label may equal the old one, so ``eps = 1`` changes about ``1 - 1/C`` of them.
* ``class_permutation`` (class swap): labels become ``pi[y]`` for the original
  label y and a fresh random permutation pi of the classes.
* ``pixel_permutation`` (input transformation, permuted MNIST): a fresh random
  permutation of the flattened input dimensions.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from plastix import composite


class Task(NamedTuple):
  """What defines one task: labels and an input permutation."""
  labels: jax.Array      # int32 [N]: the label of each training example.
  input_perm: jax.Array  # int32 [D]: x_task = x.reshape(-1)[input_perm].


class ShiftContext(NamedTuple):
  """What shifts may read: the dataset's labels and the shift's parameters."""
  base_labels: jax.Array  # int32 [N], the dataset's own labels.
  num_classes: int        # static.
  eps: jax.Array | float  # fraction relabelled by label_reset; may be traced.


ShiftFn = Callable[[jax.Array, Task, ShiftContext], Task]


def label_reset(key: jax.Array, task: Task, ctx: ShiftContext) -> Task:
  """Relabels exactly ``round(eps * N)`` uniformly chosen examples with uniform labels."""
  n = task.labels.shape[0]
  key_pick, key_label = jax.random.split(key)
  # rank[i] is example i's position in a uniform random order; the first k reset.
  rank = jnp.argsort(jax.random.permutation(key_pick, n))
  reset = rank < jnp.round(ctx.eps * n).astype(jnp.int32)
  fresh = jax.random.randint(key_label, (n,), 0, ctx.num_classes, dtype=jnp.int32)
  return task._replace(labels=jnp.where(reset, fresh, task.labels))


def class_permutation(key: jax.Array, task: Task, ctx: ShiftContext) -> Task:
  """Labels become ``pi[base_label]`` for a fresh random permutation pi of the classes."""
  pi = jax.random.permutation(key, ctx.num_classes).astype(jnp.int32)
  return task._replace(labels=pi[ctx.base_labels])


def pixel_permutation(key: jax.Array, task: Task, ctx: ShiftContext) -> Task:
  """A fresh random permutation of the flattened input dimensions."""
  del ctx
  d = task.input_perm.shape[0]
  return task._replace(input_perm=jax.random.permutation(key, d).astype(jnp.int32))


SHIFTS: dict[str, ShiftFn] = {
    "label_reset": label_reset,
    "class_permutation": class_permutation,
    "pixel_permutation": pixel_permutation,
}


def parse_shift(name: str) -> tuple[str, ...]:
  """Splits ``"a+b"`` into its parts; raises ValueError naming an unknown part."""
  return composite.split_composite(name, SHIFTS, "shift")


def initial_task(key: jax.Array, ctx: ShiftContext, input_dim: int,
                 random_labels: bool) -> Task:
  """Task 0: identity input permutation; the dataset's labels or uniform random ones."""
  labels = ctx.base_labels.astype(jnp.int32)
  if random_labels:
    labels = jax.random.randint(key, labels.shape, 0, ctx.num_classes, dtype=jnp.int32)
  return Task(labels=labels, input_perm=jnp.arange(input_dim, dtype=jnp.int32))


def switch_task(name: str, key: jax.Array, task: Task, ctx: ShiftContext) -> Task:
  """The next task: applies each part of shift `name` in turn, each with its own key."""
  parts = parse_shift(name)
  for part, k in zip(parts, jax.random.split(key, len(parts))):
    task = SHIFTS[part](k, task, ctx)
  return task


INPUT_SHIFTS = frozenset({"pixel_permutation"})  # The shifts that change input_perm.


def permutes_inputs(name: str) -> bool:
  """Whether shift `name` ever changes `Task.input_perm` (else it stays the identity)."""
  return any(part in INPUT_SHIFTS for part in parse_shift(name))


def apply_task(task: Task, x: jax.Array, example_index: jax.Array,
               permute_inputs: bool = True):
  """Inputs and labels of examples `example_index` under `task`.

  Args:
    task: the current task.
    x: ``[B, ...]`` inputs of those examples (any float dtype).
    example_index: ``[B]`` int indices into the training set.
    permute_inputs: False skips the gather by ``task.input_perm``, for a
      sequence whose shift never changes it (see `permutes_inputs`).

  Returns:
    ``(x_task [B, D], y_task [B])``.
  """
  x = x.reshape((x.shape[0], -1))
  if permute_inputs:
    x = x[:, task.input_perm]
  return x, task.labels[example_index]
