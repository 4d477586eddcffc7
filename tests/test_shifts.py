import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import shifts

N, C, D = 1000, 10, 12


def _ctx(eps=1.0):
  return shifts.ShiftContext(jnp.arange(N, dtype=jnp.int32) % C, C, eps)


def _task0(ctx, random_labels=False):
  return shifts.initial_task(jax.random.PRNGKey(0), ctx, D, random_labels)


def test_initial_task_is_identity_or_random_labels():
  ctx = _ctx()
  task = _task0(ctx)
  np.testing.assert_array_equal(task.labels, ctx.base_labels)
  np.testing.assert_array_equal(task.input_perm, np.arange(D))
  rand = _task0(ctx, random_labels=True)
  assert rand.labels.min() >= 0 and rand.labels.max() < C
  assert np.mean(rand.labels != ctx.base_labels) == pytest.approx(0.9, abs=0.05)


@pytest.mark.parametrize("eps", [0.0, 0.01, 0.3, 1.0])
def test_label_reset_relabels_exactly_eps_of_the_examples(eps):
  ctx = _ctx(eps)
  task = _task0(ctx)
  new = shifts.label_reset(jax.random.PRNGKey(3), task, ctx)
  changed = np.asarray(new.labels != task.labels)
  if eps == 0.0:
    assert not changed.any()
  else:
    # round(eps*N) are redrawn; a redraw equals the old label with prob 1/C.
    assert changed.sum() <= round(eps * N)
    assert changed.mean() == pytest.approx(eps * (1 - 1 / C), abs=0.03 + 0.1 * eps)
  np.testing.assert_array_equal(new.input_perm, task.input_perm)


def test_label_reset_eps_one_changes_about_nine_tenths():
  ctx = _ctx(1.0)
  task = _task0(ctx)
  fractions = [np.mean(shifts.label_reset(jax.random.PRNGKey(k), task, ctx).labels
                       != task.labels) for k in range(5)]
  assert np.mean(fractions) == pytest.approx(1 - 1 / C, abs=0.02)


def test_label_reset_count_is_traceable_eps():
  ctx = _ctx()
  task = _task0(ctx)

  def reset_mask_count(eps):
    new = shifts.label_reset(jax.random.PRNGKey(1), task._replace(labels=-task.labels - 1),
                             ctx._replace(eps=eps))
    return jnp.sum(new.labels >= 0)  # reset examples are exactly those now >= 0.

  counts = jax.jit(jax.vmap(reset_mask_count))(jnp.array([0.0, 0.01, 0.25, 1.0]))
  np.testing.assert_array_equal(counts, [0, 10, 250, 1000])


def test_class_permutation_is_a_consistent_permutation():
  ctx = _ctx()
  new = shifts.class_permutation(jax.random.PRNGKey(5), _task0(ctx), ctx)
  base, lab = np.asarray(ctx.base_labels), np.asarray(new.labels)
  mapping = {b: set(lab[base == b]) for b in range(C)}
  assert all(len(v) == 1 for v in mapping.values())            # a function of the class,
  assert sorted(v.pop() for v in mapping.values()) == list(range(C))  # and a bijection.


def test_pixel_permutation_is_a_permutation_and_apply_uses_it():
  ctx = _ctx()
  task = shifts.pixel_permutation(jax.random.PRNGKey(7), _task0(ctx), ctx)
  perm = np.asarray(task.input_perm)
  assert sorted(perm) == list(range(D)) and not np.array_equal(perm, np.arange(D))
  x = jnp.arange(2 * D, dtype=jnp.float32).reshape(2, 3, 4)
  idx = jnp.array([4, 7])
  xt, yt = shifts.apply_task(task, x, idx)
  chex.assert_shape(xt, (2, D))
  np.testing.assert_array_equal(xt, np.asarray(x).reshape(2, D)[:, perm])
  np.testing.assert_array_equal(yt, task.labels[idx])


def test_same_key_same_task_and_composite_applies_both():
  ctx = _ctx(0.5)
  task = _task0(ctx)
  key = jax.random.PRNGKey(11)
  a = shifts.switch_task("pixel_permutation+label_reset", key, task, ctx)
  b = shifts.switch_task("pixel_permutation+label_reset", key, task, ctx)
  chex.assert_trees_all_equal(a, b)
  assert not np.array_equal(a.input_perm, task.input_perm)
  assert np.mean(a.labels != task.labels) > 0.3
  c = shifts.switch_task("pixel_permutation+label_reset", jax.random.PRNGKey(12), task, ctx)
  assert not np.array_equal(a.labels, c.labels)


def test_tasks_chain_inside_scan():
  ctx = _ctx(1.0)

  def body(task, k):
    nxt = shifts.switch_task("label_reset", k, task, ctx)
    return nxt, jnp.mean(nxt.labels != task.labels)

  _, changed = jax.jit(lambda t: jax.lax.scan(body, t, jax.random.split(
      jax.random.PRNGKey(0), 6)))(_task0(ctx))
  chex.assert_shape(changed, (6,))
  np.testing.assert_allclose(changed, 0.9, atol=0.04)


def test_unknown_shift_is_named():
  with pytest.raises(ValueError, match="unknown shift 'rotate'"):
    shifts.parse_shift("label_reset+rotate")


def test_permutes_inputs_knows_which_shifts_touch_the_input():
  assert shifts.permutes_inputs("pixel_permutation")
  assert shifts.permutes_inputs("label_reset+pixel_permutation")
  assert not shifts.permutes_inputs("label_reset+class_permutation")
  # Without an input shift the permutation stays the identity, so skipping it is exact.
  ctx = _ctx()
  task = shifts.switch_task("label_reset+class_permutation", jax.random.PRNGKey(0),
                            _task0(ctx), ctx)
  np.testing.assert_array_equal(task.input_perm, np.arange(D))
  x = jnp.arange(3 * D, dtype=jnp.float32).reshape(3, D)
  idx = jnp.arange(3)
  chex.assert_trees_all_equal(shifts.apply_task(task, x, idx),
                              shifts.apply_task(task, x, idx, permute_inputs=False))
