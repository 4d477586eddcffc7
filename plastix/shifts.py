r"""Nonstationarity as pure, jittable task generators.

A task is a small pytree, `Task`: the label (and, for regression, the target)
of every training example, a transform of the input, which examples are in
play and how far a gradual switch has gone. A sequence of tasks is built inside
``lax.scan``: every shift is a pure function

  ``shift(key, task_index, base, ctx) -> task``

of a PRNG key, the index of the task being made, the previous task `base` and
the dataset context `ctx`; `make_shift(name, ctx)` closes over `ctx` and gives
the ``(key, task_index, base) -> task`` and ``apply(task, x, y, index, step) ->
(x, y_or_targets)`` pair the engine uses. Shifts compose: ``"a+b"`` applies
shift ``a`` then shift ``b`` at every switch, each with its own key.

Shifts (names usable in configs; parameters are ``config.shift_params``):

===================== ========================================================
``label_reset``       Per-example label reset (Lyle et al., 2024): exactly
                      ``round(eps * N)`` examples, chosen uniformly, get a fresh
                      uniform label. ``eps = 1`` is fresh random labels for all
                      (a new label may equal the old one, so about
                      ``1 - 1/C`` change); the abruptness sweep uses eps in
                      [0.01, 1].
``class_permutation`` Class swap: every label l becomes ``pi[l]`` for a fresh
                      permutation pi of the classes (and the label map
                      ``pi o class_map``).
``pixel_permutation`` Input transformation (permuted MNIST): a fresh random
                      permutation of the flattened input.
``rotation_flip``     Input transformation: a fresh uniformly random element
                      of the square's symmetry group (rotation by k * 90
                      degrees, then an optional left-right flip), applied to
                      the image (as a permutation of pixel positions; every
                      channel moves together). Square images only.
``input_noise``       Input transformation: a fresh fixed noise image
                      ``n ~ N(0, noise_std^2)`` per task, added to every input.
``noisy_labels``      Label noise whose rate changes over tasks: task t shows
                      the clean label ``class_map[y]``, except that each
                      example has, with probability ``r_t``, a uniform random
                      label;
                      ``r_t = noise_start + (noise_end - noise_start) * t /
                      (num_tasks - 1)``.
``class_incremental`` Growing tasks: task t trains on the examples of the
                      first ``min(C, classes_first + t * classes_per_task)``
                      classes (Dohare et al., 2024, class-incremental).
``growing_examples``  Growing tasks: task t trains on the first
                      ``round(N * min(1, examples_first + t * examples_per_task))``
                      examples.
``random_targets``    Regression: every task's targets are a fresh random
                      network's outputs (an MLP of ``target_depth`` x
                      ``target_width``, ``target_dim`` outputs),
                      ``y = c_t + target_scale * z(g(f(x)))`` with ``g =
                      sin(omega .)`` when ``target_omega > 0`` (the 2023
                      probe's high-frequency targets) and the identity
                      otherwise, z standardising each output over the
                      examples (mean 0, std 1); ``c_t =
                      target_offset`` for the first ``offset_tasks`` tasks and 0
                      after (the target-magnitude experiment: pretrain on
                      offset c, then fit fresh targets).
``target_scale``      Growing target magnitude: task t multiplies the targets
                      (regression targets, or one-hot targets under the MSE
                      loss) by ``scale_growth ** t``.
``contextual_bandit`` Makes the task a contextual bandit on the image labels
                      (reward 1 for the right class): it leaves the task as it
                      is and selects the bandit learner
                      (`plastix.learners.bandit`: a DQN-style TD target with
                      discount ``gamma``); the labels keep shifting with the
                      other parts.
``gradual``           Gradual drift: instead of switching at the task boundary,
                      each example's label, target and target scale, and each
                      input position's source pixel and noise offset, moves
                      from the previous task to the new one at its own step,
                      uniform in ``[0, drift_steps)`` of the new task.
===================== ========================================================

Composites act in order: every part receives what the part before it produced
(the first, the previous task). Task 0 (`initial_task`) has the dataset's
labels, or random ones (``initial_labels_random``: by default for a sequence
with a ``label_reset``). A task also carries its label map ``class_map`` (a
clean example of class y has label ``class_map[y]`` while ``mapped``: no label
made random per example) and the classes in play, from which held-out labels
are defined (`held_out_labels`). `parse_shift` and `check_initial_labels`
refuse the combinations without a meaning.

``label_reset+pixel_permutation+target_scale`` is the composite sequence of
the paper (input shift, label reset, growing target scale).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from plastix import composite


class Task(NamedTuple):
  """Everything that defines one task; every field keeps its shape across tasks.

  ``N`` training examples, ``D`` input dimensions, ``R`` regression outputs
  (1 unused column of zeros unless the sequence has ``random_targets``).
  """
  labels: jax.Array             # int32 [N]: the label of each example.
  input_perm: jax.Array         # int32 [D]: x_task = x.reshape(-1)[input_perm] + input_offset.
  input_offset: jax.Array       # float32 [D].
  targets: jax.Array            # float32 [N, R]: regression targets.
  target_scale: jax.Array       # float32 []: multiplies the targets.
  example_order: jax.Array      # int32 [N]: the examples in play come first, ...
  num_active: jax.Array         # int32 []: ... this many of them.
  prev_labels: jax.Array        # int32 [N]: the previous task's, for gradual drift.
  prev_input_perm: jax.Array    # int32 [D].
  prev_targets: jax.Array       # float32 [N, R].
  switch_step: jax.Array        # int32 [N]: step at which example i takes the new label.
  pixel_switch_step: jax.Array  # int32 [D]: step at which position j takes the new pixel.
  prev_input_offset: jax.Array  # float32 [D]: the previous task's, for gradual drift.
  prev_target_scale: jax.Array  # float32 []: the previous task's, for gradual drift.
  # The label map: a clean example of dataset class y has label class_map[y]
  # wherever `mapped` (no per-example random label so far); noisy_labels
  # corrupts training labels only. Held-out labels are defined by it.
  class_map: jax.Array          # int32 [C].
  mapped: jax.Array             # bool []: training labels (before noise) are class_map[y].
  class_active: jax.Array       # bool [C]: the classes in play (class_incremental).
  target_key: jax.Array         # uint32 [2]: the random_targets network's key.


@dataclasses.dataclass(frozen=True)
class ShiftParams:
  """The static parameters of the shifts (``config.shift_params`` but eps)."""
  num_tasks: int = 1
  noise_std: float = 0.1
  noise_start: float = 0.0
  noise_end: float = 0.5
  classes_first: int = 2
  classes_per_task: int = 2
  examples_first: float = 0.1
  examples_per_task: float = 0.1
  target_dim: int = 1
  target_width: int = 256
  target_depth: int = 2
  target_omega: float = 0.0
  target_scale: float = 1.0
  target_offset: float = 0.0
  offset_tasks: int = 1
  scale_growth: float = 2.0
  drift_steps: int = 100


class ShiftContext(NamedTuple):
  """What shifts may read: the dataset and the shifts' parameters."""
  base_labels: jax.Array        # int32 [N], the dataset's own labels.
  num_classes: int              # static.
  eps: jax.Array | float        # fraction relabelled by label_reset; may be traced.
  images: jax.Array | None = None  # float32 [N, D] inputs in [0, 1] (random_targets).
  image_shape: tuple[int, ...] = ()  # (H, W, C) of one example (rotation_flip).
  params: ShiftParams = ShiftParams()


ShiftFn = Callable[[jax.Array, jax.Array, Task, ShiftContext], Task]


def _randomize(key, mask, labels, num_classes):
  fresh = jax.random.randint(key, labels.shape, 0, num_classes, dtype=jnp.int32)
  return jnp.where(mask, fresh, labels)


def label_reset(key, task_index, base: Task, ctx: ShiftContext) -> Task:
  """Relabels exactly ``round(eps * N)`` uniformly chosen examples with uniform labels."""
  del task_index
  n = base.labels.shape[0]
  key_pick, key_label = jax.random.split(key)
  # rank[i] is example i's position in a uniform random order; the first k reset.
  rank = jnp.argsort(jax.random.permutation(key_pick, n))
  count = jnp.round(ctx.eps * n).astype(jnp.int32)
  reset = rank < count
  # Once any example holds a random label, labels are no longer a map of the classes.
  return base._replace(labels=_randomize(key_label, reset, base.labels, ctx.num_classes),
                       mapped=base.mapped & (count == 0))


def class_permutation(key, task_index, base: Task, ctx: ShiftContext) -> Task:
  """Class swap: every label l becomes ``pi[l]`` for a fresh random permutation pi.

  It acts on the labels it is given (the previous task's, or what the parts
  before it in a composite made), and on the label map: ``class_map <- pi o
  class_map``. From task 0's true labels every task's labels are therefore a
  uniformly random permutation of the classes; after a label reset, the reset
  labels are permuted.
  """
  del task_index, ctx
  pi = jax.random.permutation(key, base.class_map.shape[0]).astype(jnp.int32)
  return base._replace(labels=pi[base.labels], class_map=pi[base.class_map])


def pixel_permutation(key, task_index, base: Task, ctx: ShiftContext) -> Task:
  """A fresh random permutation of the flattened input dimensions."""
  del task_index, ctx
  d = base.input_perm.shape[0]
  return base._replace(input_perm=jax.random.permutation(key, d).astype(jnp.int32))


def dihedral_permutations(height: int, width: int, channels: int) -> jax.Array:
  """``[8, H*W*C]`` flat-index permutations of the square's 8 symmetries.

  Row ``2k + f`` rotates the image by ``k * 90`` degrees counter-clockwise
  (``jnp.rot90``) and then, if f = 1, flips it left-right (``jnp.fliplr``);
  row 0 is the identity. ``x.reshape(-1)[perm]`` is the transformed image.
  """
  if height != width:
    raise ValueError(f"rotation_flip needs square images, got {height}x{width}")
  index = jnp.arange(height * width * channels).reshape(height, width, channels)
  perms = []
  for k in range(4):
    rotated = jnp.rot90(index, k, axes=(0, 1))
    perms += [rotated.reshape(-1), jnp.flip(rotated, axis=1).reshape(-1)]
  return jnp.stack(perms).astype(jnp.int32)


def rotation_flip(key, task_index, base: Task, ctx: ShiftContext) -> Task:
  """A uniformly random rotation by a multiple of 90 degrees and optional flip of the image."""
  del task_index
  perms = dihedral_permutations(*ctx.image_shape)
  return base._replace(input_perm=perms[jax.random.randint(key, (), 0, perms.shape[0])])


def input_noise(key, task_index, base: Task, ctx: ShiftContext) -> Task:
  """A fresh fixed noise image ``n ~ N(0, noise_std^2)`` added to every input of the task."""
  del task_index
  noise = ctx.params.noise_std * jax.random.normal(key, base.input_offset.shape)
  return base._replace(input_offset=noise.astype(jnp.float32))


def noise_rate(task_index, params: ShiftParams) -> jax.Array:
  """``r_t = noise_start + (noise_end - noise_start) * t / (num_tasks - 1)``."""
  frac = task_index / max(params.num_tasks - 1, 1)
  return params.noise_start + (params.noise_end - params.noise_start) * frac


def noisy_labels(key, task_index, base: Task, ctx: ShiftContext) -> Task:
  """The clean labels ``class_map[y]``, each replaced by a uniform label with probability ``r_t``.

  The clean labels are the label map's (the dataset's labels, or their class
  permutation so far), so the noise of task t has rate ``r_t`` and never
  compounds over tasks; the label map, and so held-out labels, stay clean.
  """
  key_pick, key_label = jax.random.split(key)
  n = base.labels.shape[0]
  noisy = jax.random.uniform(key_pick, (n,)) < noise_rate(task_index, ctx.params)
  clean = base.class_map[ctx.base_labels]
  return base._replace(labels=_randomize(key_label, noisy, clean, ctx.num_classes))


def _activate(base: Task, active: jax.Array) -> Task:
  """Puts the examples where `active` first in `example_order` (stable)."""
  order = jnp.argsort(~active, stable=True).astype(jnp.int32)
  return base._replace(example_order=order, num_active=jnp.sum(active).astype(jnp.int32))


def class_incremental(key, task_index, base: Task, ctx: ShiftContext) -> Task:
  """Task t trains on the examples of classes ``< min(C, classes_first + t * classes_per_task)``."""
  del key
  p = ctx.params
  k = jnp.minimum(ctx.num_classes, p.classes_first + task_index * p.classes_per_task)
  task = _activate(base, ctx.base_labels < k)
  return task._replace(class_active=jnp.arange(base.class_active.shape[0]) < k)


def growing_examples(key, task_index, base: Task, ctx: ShiftContext) -> Task:
  """Task t trains on the first ``round(N * min(1, examples_first + t * examples_per_task))``."""
  del key
  p = ctx.params
  n = base.labels.shape[0]
  frac = jnp.minimum(1.0, p.examples_first + task_index * p.examples_per_task)
  count = jnp.maximum(1, jnp.round(frac * n).astype(jnp.int32))
  return _activate(base, jnp.arange(n) < count)


class TargetNetwork(nn.Module):
  """The random network whose outputs are regression targets: a ReLU MLP."""
  width: int
  depth: int
  outputs: int

  @nn.compact
  def __call__(self, x):
    for _ in range(self.depth):
      x = nn.relu(nn.Dense(self.width)(x))
    return nn.Dense(self.outputs)(x)


def regression_targets(key, task_index, images: jax.Array, params: ShiftParams,
                       held_out: jax.Array | None = None) -> jax.Array:
  r"""Targets of every example for task `task_index` from a fresh random network.

    u = g(f(x; theta)),  g = sin(omega .) if omega > 0 else identity,
    y = c_t + target_scale * (u - mean(u)) / std(u),

  theta a fresh `TargetNetwork` init from `key`, mean and std over the N
  examples per output, ``c_t = target_offset`` for ``t < offset_tasks`` and 0
  after. So each output has mean exactly ``c_t`` and std ``target_scale``.

  With `held_out` (other inputs, e.g. a test split), returns the same function
  of those inputs instead: the same network, standardised with the mean and
  std of `images`, so they are the held-out targets of the same task.

  Returns:
    float32 ``[N, target_dim]`` (``[M, target_dim]`` for M `held_out` inputs).
  """
  net = TargetNetwork(params.target_width, params.target_depth, params.target_dim)
  theta = net.init(key, images[:1])
  g = lambda x: (jnp.sin(params.target_omega * net.apply(theta, x)) if params.target_omega > 0
                 else net.apply(theta, x))
  u = g(images)
  mean, std = jnp.mean(u, axis=0), jnp.std(u, axis=0) + 1e-12
  if held_out is not None:
    u = g(held_out)
  u = (u - mean) / std
  offset = jnp.where(task_index < params.offset_tasks, params.target_offset, 0.0)
  return (offset + params.target_scale * u).astype(jnp.float32)


def _key_data(key: jax.Array) -> jax.Array:
  """uint32 ``[2]`` data of a raw or typed PRNG key."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return key.astype(jnp.uint32)


def random_targets(key, task_index, base: Task, ctx: ShiftContext) -> Task:
  """Fresh regression targets from a fresh random network (see `regression_targets`)."""
  if ctx.images is None:
    raise ValueError("random_targets needs ShiftContext.images")
  return base._replace(targets=regression_targets(key, task_index, ctx.images, ctx.params),
                       target_key=_key_data(key))


def target_scale(key, task_index, base: Task, ctx: ShiftContext) -> Task:
  """Growing target magnitude: ``target_scale = scale_growth ** t``."""
  del key
  scale = jnp.power(jnp.float32(ctx.params.scale_growth), task_index)
  return base._replace(target_scale=scale.astype(jnp.float32))


def contextual_bandit(key, task_index, base: Task, ctx: ShiftContext) -> Task:
  """Marks the sequence as a contextual bandit (`objective`); the task itself is unchanged."""
  del key, task_index, ctx
  return base


def gradual(key, task_index, base: Task, ctx: ShiftContext) -> Task:
  """Spreads the switch just made over the first ``drift_steps`` steps of the task.

  Used as the last part of a composite; `switch_task` hands it the previous
  task in ``prev_*`` fields, and this draws when each example and each input
  position switches.
  """
  del task_index
  key_ex, key_px = jax.random.split(key)
  steps = max(ctx.params.drift_steps, 1)
  return base._replace(
      switch_step=jax.random.randint(key_ex, base.switch_step.shape, 0, steps, jnp.int32),
      pixel_switch_step=jax.random.randint(key_px, base.pixel_switch_step.shape, 0, steps,
                                           jnp.int32))


SHIFTS: dict[str, ShiftFn] = {
    "label_reset": label_reset,
    "class_permutation": class_permutation,
    "pixel_permutation": pixel_permutation,
    "rotation_flip": rotation_flip,
    "input_noise": input_noise,
    "noisy_labels": noisy_labels,
    "class_incremental": class_incremental,
    "growing_examples": growing_examples,
    "random_targets": random_targets,
    "target_scale": target_scale,
    "contextual_bandit": contextual_bandit,
    "gradual": gradual,
}
# Shifts that follow a schedule in the task index also shape task 0.
SCHEDULED = frozenset({"noisy_labels", "class_incremental", "growing_examples",
                       "random_targets", "target_scale"})
INPUT_SHIFTS = frozenset({"pixel_permutation", "rotation_flip"})  # change input_perm.
INITIAL_LABELS = ("auto", "true", "random")
# Shifts whose meaning is a map of the dataset's classes: they need true labels.
CLASS_SHIFTS = frozenset({"class_permutation", "noisy_labels", "class_incremental"})
LABEL_SHIFTS = frozenset({"label_reset", "class_permutation", "noisy_labels"})  # change labels.


def parse_shift(name: str) -> tuple[str, ...]:
  """Splits ``"a+b"`` into its parts; raises ValueError naming an unknown part."""
  parts = composite.split_composite(name, SHIFTS, "shift")
  if "gradual" in parts and parts[-1] != "gradual":
    raise ValueError(f"'gradual' must be the last part of {name!r}")
  if "random_targets" in parts and "contextual_bandit" in parts:
    raise ValueError(f"{name!r}: random_targets and contextual_bandit are different objectives")
  if "random_targets" in parts:
    for part in sorted(LABEL_SHIFTS & set(parts)):
      raise ValueError(f"{name!r}: random_targets trains on regression targets, so {part} "
                       "would change labels nothing reads")
  if "contextual_bandit" in parts and "target_scale" in parts:
    raise ValueError(f"{name!r}: target_scale scales regression or one-hot targets, and the "
                     "contextual bandit trains on rewards")
  if "label_reset" in parts:
    for part in sorted((CLASS_SHIFTS - {"class_permutation"}) & set(parts)):
      raise ValueError(f"{name!r}: {part} needs labels that are a map of the classes, and "
                       "label_reset makes them random per example")
  if "gradual" in parts:
    for part in sorted(GROWING & set(parts)):
      raise ValueError(f"{name!r}: gradual cannot spread {part} (the examples in play "
                       "change at the task boundary, not at each example's own step)")
  return parts


def check_initial_labels(name: str, initial_labels: str) -> None:
  """Raises ValueError where task 0's labels setting has no meaning for shift `name`:
  random labels under a shift defined on the dataset's classes, or under a
  regression (which trains on targets, not labels)."""
  parts = parse_shift(name)
  if initial_labels != "random":
    return
  for part in sorted(CLASS_SHIFTS & set(parts)):
    raise ValueError(f"'random' labels are not classes, which {part} maps; use 'auto' or 'true'")
  if "random_targets" in parts:
    raise ValueError("random_targets trains on regression targets, not labels; use 'auto'")


def objective(name: str) -> str:
  """The name of the learner (`plastix.learners.LEARNERS`) a sequence of shift
  `name` trains: "regression" with random_targets, "bandit" with
  contextual_bandit, else "classification"."""
  parts = parse_shift(name)
  if "random_targets" in parts:
    return "regression"
  if "contextual_bandit" in parts:
    return "bandit"
  return "classification"


def has_targets(name: str) -> bool:
  """Whether shift `name` gives each task regression targets (random_targets)."""
  return "random_targets" in parse_shift(name)


GROWING = frozenset({"class_incremental", "growing_examples"})  # change the examples in play.


def grows_tasks(name: str) -> bool:
  """Whether shift `name` ever limits the examples in play (else all N are)."""
  return any(part in GROWING for part in parse_shift(name))


def adds_noise(name: str) -> bool:
  """Whether shift `name` ever sets `Task.input_offset` (else it stays zero)."""
  return "input_noise" in parse_shift(name)


def permutes_inputs(name: str) -> bool:
  """Whether shift `name` ever changes `Task.input_perm` (else it stays the identity)."""
  return any(part in INPUT_SHIFTS for part in parse_shift(name))


def is_gradual(name: str) -> bool:
  return "gradual" in parse_shift(name)


def initial_task(key: jax.Array, ctx: ShiftContext, input_dim: int,
                 random_labels: bool, name: str = "", target_dim: int = 0) -> Task:
  """Task 0: the identity input transform, every example and class in play.

  Labels are the dataset's (the label map the identity), or uniform random
  ones with `random_labels` (then no label map: held-out labels are
  undefined); the scheduled parts of shift `name` (noisy labels, growing
  tasks, regression targets, target scale) are applied for task index 0.
  """
  key_labels, key_parts = key, jax.random.fold_in(key, 1)
  n = ctx.base_labels.shape[0]
  labels = ctx.base_labels.astype(jnp.int32)
  if random_labels:
    labels = jax.random.randint(key_labels, labels.shape, 0, ctx.num_classes,
                                dtype=jnp.int32)
  identity = jnp.arange(input_dim, dtype=jnp.int32)
  targets = jnp.zeros((n, target_dim), jnp.float32)
  no_offset, one = jnp.zeros((input_dim,), jnp.float32), jnp.ones([], jnp.float32)
  task = Task(labels=labels, input_perm=identity, input_offset=no_offset, targets=targets,
              target_scale=one,
              example_order=jnp.arange(n, dtype=jnp.int32), num_active=jnp.int32(n),
              prev_labels=labels, prev_input_perm=identity, prev_targets=targets,
              switch_step=jnp.zeros((n,), jnp.int32),
              pixel_switch_step=jnp.zeros((input_dim,), jnp.int32),
              prev_input_offset=no_offset, prev_target_scale=one,
              class_map=jnp.arange(ctx.num_classes, dtype=jnp.int32),
              mapped=jnp.asarray(not random_labels),
              class_active=jnp.ones((ctx.num_classes,), bool),
              target_key=jnp.zeros((2,), jnp.uint32))
  parts = [p for p in parse_shift(name) if p in SCHEDULED] if name else []
  for part, k in zip(parts, jax.random.split(key_parts, max(len(parts), 1))):
    task = SHIFTS[part](k, jnp.int32(0), task, ctx)
  return task._replace(prev_labels=task.labels, prev_targets=task.targets,
                       prev_input_offset=task.input_offset,
                       prev_target_scale=task.target_scale)


def switch_task(name: str, key: jax.Array, task: Task, ctx: ShiftContext,
                task_index=None) -> Task:
  """The next task (index `task_index`): each part of `name` in turn, each with its own key.

  `task_index` defaults to a scalar 0 for shifts that do not read it. Without
  ``gradual`` the switch is abrupt (``switch_step = 0``).
  """
  parts = parse_shift(name)
  task_index = jnp.int32(0) if task_index is None else task_index
  prev = task._replace(prev_labels=task.labels, prev_input_perm=task.input_perm,
                       prev_targets=task.targets, prev_input_offset=task.input_offset,
                       prev_target_scale=task.target_scale,
                       switch_step=jnp.zeros_like(task.switch_step),
                       pixel_switch_step=jnp.zeros_like(task.pixel_switch_step))
  task = prev
  for part, k in zip(parts, jax.random.split(key, len(parts))):
    task = SHIFTS[part](k, task_index, task, ctx)
  return task


def apply_task(task: Task, x: jax.Array, example_index: jax.Array,
               permute_inputs: bool = True, step=None, gradual: bool = False,
               add_offset: bool = True):
  """Inputs and labels (or regression targets) of examples `example_index` under `task`.

  Args:
    task: the current task.
    x: ``[B, ...]`` inputs of those examples (any float dtype).
    example_index: ``[B]`` int indices into the training set.
    permute_inputs: False skips the gather by ``task.input_perm``, for a
      sequence whose shift never changes it (see `permutes_inputs`).
    step: the step within the task, for gradual drift.
    gradual: whether the sequence drifts gradually (see `is_gradual`). Then
      example i shows the previous task's label, target and target scale
      until ``step >= switch_step[i]``, and input position j the previous
      task's source pixel and noise offset until ``step >= pixel_switch_step[j]``.
    add_offset: False skips adding ``task.input_offset``, for a sequence whose
      shift never sets it (see `adds_noise`).

  Returns:
    ``(x_task [B, D], labels [B], targets [B, R])``, targets times
    ``task.target_scale``.
  """
  x = x.reshape((x.shape[0], -1))
  labels, targets = task.labels[example_index], task.targets[example_index]
  if not gradual:
    if permute_inputs:
      x = x[:, task.input_perm]
    if add_offset:
      x = x + task.input_offset.astype(x.dtype)
    return x, labels, targets * task.target_scale
  step = jnp.int32(0) if step is None else step
  new_example = step >= task.switch_step[example_index]
  labels = jnp.where(new_example, labels, task.prev_labels[example_index])
  targets = jnp.where(new_example[:, None], targets * task.target_scale,
                      task.prev_targets[example_index] * task.prev_target_scale)
  new_pixel = step >= task.pixel_switch_step
  if permute_inputs:
    x = jnp.where(new_pixel[None, :], x[:, task.input_perm], x[:, task.prev_input_perm])
  if add_offset:
    x = x + jnp.where(new_pixel, task.input_offset, task.prev_input_offset).astype(x.dtype)
  return x, labels, targets


def held_out_inputs(task: Task, x: jax.Array) -> jax.Array:
  """``[M, D]`` held-out inputs under `task`'s input transform (permutation and
  noise offset) as the task ends, every input position switched."""
  x = x.reshape((x.shape[0], -1))
  return x[:, task.input_perm] + task.input_offset.astype(x.dtype)


def held_out_labels(task: Task, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(labels [M], weights [M])`` of held-out examples of dataset classes `y` under `task`.

  A held-out example of class y has label ``class_map[y]`` (the dataset's
  label through every class permutation so far; noisy labels corrupt
  training labels only) and weight 1 if its class is in play
  (``class_active[y]``), else 0. Where labels are random per example
  (``task.mapped`` False: random initial labels, or a label reset) no
  held-out label is defined and every weight is 0.
  """
  weights = (task.class_active[y] & task.mapped).astype(jnp.float32)
  return task.class_map[y], weights


def initial_labels_random(name: str, initial_labels: str = "auto") -> bool:
  """Whether task 0 of shift `name` has uniform random labels.

  ``initial_labels`` is ``"true"`` (the dataset's labels), ``"random"``, or
  ``"auto"``: random for a sequence with a ``label_reset`` (every task is then
  a relabelling of random labels, task 0 included), the dataset's otherwise.
  """
  if initial_labels not in INITIAL_LABELS:
    raise ValueError(f"unknown initial_labels {initial_labels!r}; choose one of "
                     f"{', '.join(INITIAL_LABELS)}")
  if initial_labels == "auto":
    return "label_reset" in parse_shift(name)
  return initial_labels == "random"


def sample_index(key: jax.Array, task: Task, batch_size: int) -> jax.Array:
  """``[batch_size]`` example indices drawn uniformly (with replacement) from those in play."""
  pos = jax.random.randint(key, (batch_size,), 0, jnp.maximum(task.num_active, 1))
  return task.example_order[pos]


@dataclasses.dataclass(frozen=True)
class Shift:
  """A named shift bound to its context: the generator and the view of a task."""
  name: str
  ctx: ShiftContext
  input_dim: int
  random_initial_labels: bool = False

  def init(self, key: jax.Array) -> Task:
    """Task 0 (see `initial_task`)."""
    # Without regression targets one unused column (checkpoints cannot hold empty arrays).
    target_dim = self.ctx.params.target_dim if has_targets(self.name) else 1
    return initial_task(key, self.ctx, self.input_dim, self.random_initial_labels,
                        self.name, target_dim)

  def switch(self, key: jax.Array, task_index, base: Task) -> Task:
    """``(key, task_index, base) -> task``: the task with index `task_index` after `base`."""
    return switch_task(self.name, key, base, self.ctx, task_index)

  def apply(self, task: Task, x: jax.Array, y: jax.Array, index: jax.Array, step=None):
    """``(x, y_or_targets)`` of a batch: inputs and labels, or regression targets.

    `y` are the dataset's labels of the batch and `index` their example
    indices (the labels of a task are per example, so `index` selects them).
    """
    del y
    x, labels, targets = apply_task(task, x, index, permutes_inputs(self.name), step,
                                    is_gradual(self.name), adds_noise(self.name))
    return x, (targets if has_targets(self.name) else labels)


def make_shift(name: str, ctx: ShiftContext, input_dim: int,
               random_initial_labels: bool = False) -> Shift:
  """Shift `name` (checked) bound to `ctx`."""
  parse_shift(name)
  return Shift(name, ctx, input_dim, random_initial_labels)
