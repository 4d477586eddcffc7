import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import shifts

N, C, D = 1000, 10, 12
T0 = jnp.int32(0)


def _ctx(eps=1.0, images=None, image_shape=(2, 2, 3), **params):
  return shifts.ShiftContext(jnp.arange(N, dtype=jnp.int32) % C, C, eps, images=images,
                             image_shape=image_shape, params=shifts.ShiftParams(**params))


def _task0(ctx, random_labels=False, name="", target_dim=0):
  return shifts.initial_task(jax.random.PRNGKey(0), ctx, D, random_labels, name, target_dim)


def test_initial_task_is_identity_or_random_labels():
  ctx = _ctx()
  task = _task0(ctx)
  np.testing.assert_array_equal(task.labels, ctx.base_labels)
  np.testing.assert_array_equal(task.input_perm, np.arange(D))
  np.testing.assert_array_equal(task.input_offset, np.zeros(D))
  assert int(task.num_active) == N and float(task.target_scale) == 1.0
  rand = _task0(ctx, random_labels=True)
  assert rand.labels.min() >= 0 and rand.labels.max() < C
  assert np.mean(rand.labels != ctx.base_labels) == pytest.approx(0.9, abs=0.05)


@pytest.mark.parametrize("eps", [0.0, 0.01, 0.3, 1.0])
def test_label_reset_relabels_exactly_eps_of_the_examples(eps):
  ctx = _ctx(eps)
  task = _task0(ctx)
  new = shifts.label_reset(jax.random.PRNGKey(3), T0, task, ctx)
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
  fractions = [np.mean(shifts.label_reset(jax.random.PRNGKey(k), T0, task, ctx).labels
                       != task.labels) for k in range(5)]
  assert np.mean(fractions) == pytest.approx(1 - 1 / C, abs=0.02)


def test_label_reset_count_is_traceable_eps():
  ctx = _ctx()
  task = _task0(ctx)

  def reset_mask_count(eps):
    new = shifts.label_reset(jax.random.PRNGKey(1), T0, task._replace(labels=-task.labels - 1),
                             ctx._replace(eps=eps))
    return jnp.sum(new.labels >= 0)  # reset examples are exactly those now >= 0.

  counts = jax.jit(jax.vmap(reset_mask_count))(jnp.array([0.0, 0.01, 0.25, 1.0]))
  np.testing.assert_array_equal(counts, [0, 10, 250, 1000])


def test_class_permutation_is_a_consistent_permutation():
  ctx = _ctx()
  new = shifts.class_permutation(jax.random.PRNGKey(5), T0, _task0(ctx), ctx)
  base, lab = np.asarray(ctx.base_labels), np.asarray(new.labels)
  mapping = {b: set(lab[base == b]) for b in range(C)}
  assert all(len(v) == 1 for v in mapping.values())            # a function of the class,
  assert sorted(v.pop() for v in mapping.values()) == list(range(C))  # and a bijection.


def test_pixel_permutation_is_a_permutation_and_apply_uses_it():
  ctx = _ctx()
  task = shifts.pixel_permutation(jax.random.PRNGKey(7), T0, _task0(ctx), ctx)
  perm = np.asarray(task.input_perm)
  assert sorted(perm) == list(range(D)) and not np.array_equal(perm, np.arange(D))
  x = jnp.arange(2 * D, dtype=jnp.float32).reshape(2, 3, 4)
  idx = jnp.array([4, 7])
  xt, yt, _ = shifts.apply_task(task, x, idx)
  chex.assert_shape(xt, (2, D))
  np.testing.assert_array_equal(xt, np.asarray(x).reshape(2, D)[:, perm])
  np.testing.assert_array_equal(yt, task.labels[idx])


def test_dihedral_permutations_by_hand():
  # One channel, 2x2 image [[a, b], [c, d]] = flat [0, 1, 2, 3].
  perms = np.asarray(shifts.dihedral_permutations(2, 2, 1))
  assert perms.shape == (8, 4)
  np.testing.assert_array_equal(perms[0], [0, 1, 2, 3])  # identity
  np.testing.assert_array_equal(perms[1], [1, 0, 3, 2])  # left-right flip
  np.testing.assert_array_equal(perms[2], [1, 3, 0, 2])  # rot90 ccw: [[b, d], [a, c]]
  np.testing.assert_array_equal(perms[4], [3, 2, 1, 0])  # rot180
  assert len({tuple(p) for p in perms}) == 8  # eight distinct symmetries
  # With channels, a pixel's channels move together.
  perms3 = np.asarray(shifts.dihedral_permutations(2, 2, 3))
  np.testing.assert_array_equal(perms3[2].reshape(4, 3) // 3, perms[2][:, None].repeat(3, 1))
  with pytest.raises(ValueError, match="square"):
    shifts.dihedral_permutations(2, 3, 1)


def test_rotation_flip_picks_each_symmetry():
  ctx = _ctx()  # image_shape (2, 2, 3): D = 12
  perms = {tuple(np.asarray(shifts.rotation_flip(jax.random.PRNGKey(k), T0, _task0(ctx),
                                                  ctx).input_perm)) for k in range(60)}
  valid = {tuple(p) for p in np.asarray(shifts.dihedral_permutations(2, 2, 3))}
  assert perms == valid


def test_input_noise_has_the_requested_std_and_is_added():
  ctx = _ctx(noise_std=0.3)
  n = N
  task = _task0(shifts.ShiftContext(ctx.base_labels, C, 1.0, params=ctx.params))
  task = task._replace(input_perm=jnp.arange(n), input_offset=jnp.zeros(n),
                       pixel_switch_step=jnp.zeros(n, jnp.int32), prev_input_perm=jnp.arange(n))
  new = shifts.input_noise(jax.random.PRNGKey(2), T0, task, ctx)
  assert float(jnp.std(new.input_offset)) == pytest.approx(0.3, rel=0.1)
  assert abs(float(jnp.mean(new.input_offset))) < 0.05
  x = jnp.ones((2, n))
  xt, _, _ = shifts.apply_task(new, x, jnp.array([0, 1]), permute_inputs=False)
  np.testing.assert_allclose(xt, 1.0 + np.tile(np.asarray(new.input_offset), (2, 1)),
                             rtol=1e-6)


def test_noisy_labels_rate_follows_its_schedule():
  ctx = _ctx(noise_start=0.0, noise_end=0.8, num_tasks=5)
  np.testing.assert_allclose([shifts.noise_rate(t, ctx.params) for t in range(5)],
                             [0.0, 0.2, 0.4, 0.6, 0.8], atol=1e-7)
  task = _task0(ctx)
  for t, rate in [(0, 0.0), (2, 0.4), (4, 0.8)]:
    new = shifts.noisy_labels(jax.random.PRNGKey(t), jnp.int32(t), task, ctx)
    # Noisy labels are uniform, so a fraction rate * (1 - 1/C) differ from the truth.
    assert np.mean(new.labels != ctx.base_labels) == pytest.approx(rate * 0.9, abs=0.04)


def test_class_incremental_grows_the_classes_and_sampling_follows():
  ctx = _ctx(classes_first=2, classes_per_task=3)
  task = _task0(ctx, name="class_incremental")
  assert int(task.num_active) == 200  # classes 0 and 1 of 10, 100 examples each
  for t, classes in [(1, 5), (2, 8), (3, 10), (7, 10)]:
    new = shifts.class_incremental(None, jnp.int32(t), task, ctx)
    assert int(new.num_active) == 100 * classes
    active = np.asarray(new.example_order[:int(new.num_active)])
    assert set(np.asarray(ctx.base_labels)[active]) == set(range(classes))
    assert sorted(np.asarray(new.example_order)) == list(range(N))  # still a permutation
  new = shifts.class_incremental(None, jnp.int32(1), task, ctx)
  idx = shifts.sample_index(jax.random.PRNGKey(0), new, 4000)
  assert np.asarray(ctx.base_labels)[np.asarray(idx)].max() == 4
  assert len(set(np.asarray(idx))) > 450  # draws cover the 500 examples in play


def test_growing_examples_counts():
  ctx = _ctx(examples_first=0.1, examples_per_task=0.25)
  task = _task0(ctx, name="growing_examples")
  assert int(task.num_active) == 100
  np.testing.assert_array_equal(task.example_order[:100], np.arange(100))
  for t, count in [(1, 350), (3, 850), (4, 1000)]:
    assert int(shifts.growing_examples(None, jnp.int32(t), task, ctx).num_active) == count


def test_random_targets_have_the_requested_mean_and_scale():
  images = jax.random.uniform(jax.random.PRNGKey(0), (N, D))
  ctx = _ctx(images=images, target_dim=3, target_width=16, target_depth=2, target_scale=2.5,
             target_offset=100.0, offset_tasks=2, target_omega=0.0)
  task = _task0(ctx, name="random_targets", target_dim=3)
  chex.assert_shape(task.targets, (N, 3))
  np.testing.assert_allclose(task.targets.mean(0), [100.0] * 3, rtol=1e-5)
  np.testing.assert_allclose(task.targets.std(0), [2.5] * 3, rtol=1e-3)
  t1 = shifts.random_targets(jax.random.PRNGKey(1), jnp.int32(1), task, ctx)
  t2 = shifts.random_targets(jax.random.PRNGKey(1), jnp.int32(2), task, ctx)
  np.testing.assert_allclose(t1.targets.mean(0), [100.0] * 3, rtol=1e-5)  # still offset
  np.testing.assert_allclose(t2.targets.mean(0), [0.0] * 3, atol=1e-4)    # fresh, no offset
  np.testing.assert_allclose(t2.targets - t2.targets.mean(0),
                             t1.targets - t1.targets.mean(0), atol=1e-3)  # same key, same f
  # The targets are a function of x: the network's outputs, standardised.
  net = shifts.TargetNetwork(16, 2, 3)
  u = net.apply(net.init(jax.random.PRNGKey(1), images[:1]), images)
  z = (u - u.mean(0)) / u.std(0)
  np.testing.assert_allclose(t2.targets, 2.5 * z, atol=1e-4)
  # High-frequency variant: sin(omega f), standardised.
  ctx_sin = ctx._replace(params=shifts.ShiftParams(target_dim=3, target_width=16,
                                                  target_omega=50.0))
  t3 = shifts.random_targets(jax.random.PRNGKey(1), jnp.int32(5), task, ctx_sin)
  s = np.sin(50.0 * np.asarray(u))
  np.testing.assert_allclose(t3.targets, (s - s.mean(0)) / s.std(0), atol=2e-3)


def test_target_scale_grows_geometrically_and_scales_targets():
  ctx = _ctx(scale_growth=3.0)
  task = _task0(ctx, name="target_scale", target_dim=2)
  assert float(task.target_scale) == 1.0
  task = task._replace(targets=jnp.ones((N, 2)))
  new = shifts.target_scale(None, jnp.int32(2), task, ctx)
  assert float(new.target_scale) == pytest.approx(9.0)
  _, _, targets = shifts.apply_task(new, jnp.zeros((2, D)), jnp.array([0, 1]), False)
  np.testing.assert_allclose(targets, 9.0 * np.ones((2, 2)))


def test_gradual_drift_switches_each_example_at_its_own_step():
  ctx = _ctx(1.0, drift_steps=100)
  name = "label_reset+pixel_permutation+gradual"
  task = _task0(ctx)
  new = shifts.switch_task(name, jax.random.PRNGKey(4), task, ctx, jnp.int32(1))
  np.testing.assert_array_equal(new.prev_labels, task.labels)
  idx = jnp.arange(N)
  x = jnp.tile(jnp.arange(D, dtype=jnp.float32), (N, 1))
  for step in (0, 25, 50, 99, 100, 150):
    xt, labels, _ = shifts.apply_task(new, x, idx, True, jnp.int32(step), gradual=True)
    on_new = np.asarray(new.switch_step) <= step
    np.testing.assert_array_equal(labels, np.where(on_new, new.labels, task.labels))
    if step >= 100:
      assert on_new.all()
      np.testing.assert_array_equal(xt[0], np.asarray(new.input_perm, np.float32))
    else:
      assert on_new.mean() == pytest.approx((step + 1) / 100, abs=0.06)
  xt0, _, _ = shifts.apply_task(new, x, idx, True, jnp.int32(0), gradual=True)
  moved = np.asarray(new.pixel_switch_step) <= 0
  np.testing.assert_array_equal(xt0[0], np.where(moved, new.input_perm, task.input_perm))
  with pytest.raises(ValueError, match="last part"):
    shifts.parse_shift("gradual+label_reset")


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


@pytest.mark.parametrize("name", sorted(shifts.SHIFTS))
def test_every_shift_is_deterministic_in_its_key_and_runs_in_scan(name):
  images = jax.random.uniform(jax.random.PRNGKey(0), (N, D))
  ctx = _ctx(0.5, images=images, target_dim=2, target_width=8)
  shift = shifts.make_shift(name, ctx, D)
  task0 = shift.init(jax.random.PRNGKey(0))

  def body(task, t):
    nxt = shift.switch(jax.random.fold_in(jax.random.PRNGKey(1), t), t, task)
    x, y = shift.apply(nxt, images[:4], ctx.base_labels[:4], jnp.arange(4), jnp.int32(3))
    return nxt, (x, y)

  run = jax.jit(lambda t: jax.lax.scan(body, t, jnp.arange(1, 4)))
  last_a, out_a = run(task0)
  last_b, out_b = run(task0)
  chex.assert_trees_all_equal((last_a, out_a), (last_b, out_b))
  chex.assert_trees_all_equal_shapes(last_a, task0)
  y = out_a[1]
  if shifts.objective(name) == "regression":
    chex.assert_shape(y, (3, 4, 2))
  else:
    chex.assert_shape(y, (3, 4))


def test_objectives_and_parse_errors():
  assert shifts.objective("label_reset") == "classification"
  assert shifts.objective("random_targets+target_scale") == "regression"
  assert shifts.objective("label_reset+contextual_bandit") == "bandit"
  with pytest.raises(ValueError, match="different objectives"):
    shifts.parse_shift("random_targets+contextual_bandit")
  with pytest.raises(ValueError, match="unknown shift 'rotate'"):
    shifts.parse_shift("label_reset+rotate")


def test_tasks_chain_inside_scan():
  ctx = _ctx(1.0)

  def body(task, k):
    nxt = shifts.switch_task("label_reset", k, task, ctx)
    return nxt, jnp.mean(nxt.labels != task.labels)

  _, changed = jax.jit(lambda t: jax.lax.scan(body, t, jax.random.split(
      jax.random.PRNGKey(0), 6)))(_task0(ctx))
  chex.assert_shape(changed, (6,))
  np.testing.assert_allclose(changed, 0.9, atol=0.04)


def test_permutes_inputs_knows_which_shifts_touch_the_input():
  assert shifts.permutes_inputs("pixel_permutation")
  assert shifts.permutes_inputs("label_reset+rotation_flip")
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
