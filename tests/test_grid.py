"""Hyperparameter grids: parsing, validation, and one program equal to separate runs."""

import chex
import jax
import numpy as np
import pytest

from plastix import engine, from_config, grid, results, runner, validation
from tests.conftest import tiny_config


def test_points_are_the_cartesian_product_first_field_slowest():
  pts = grid.points("optimizer.learning_rate=1e-3,3e-4; shift_params.eps=0.1,0.5,1")
  assert len(pts) == 6
  assert pts[0] == {"optimizer.learning_rate": 1e-3, "shift_params.eps": 0.1}
  assert pts[2] == {"optimizer.learning_rate": 1e-3, "shift_params.eps": 1.0}
  assert pts[3] == {"optimizer.learning_rate": 3e-4, "shift_params.eps": 0.1}
  assert grid.label(pts[4]) == "optimizer.learning_rate=0.0003;shift_params.eps=0.5"
  assert grid.points("") == [{}] and grid.label({}) == ""
  assert grid.conditions(["a", "b"], "optimizer.b2=0.9,0.99") == [
      "a [optimizer.b2=0.9]", "a [optimizer.b2=0.99]",
      "b [optimizer.b2=0.9]", "b [optimizer.b2=0.99]"]
  assert grid.conditions(["a"], "") == ["a"]



def test_values_that_print_alike_get_labels_of_their_own():
  # %g keeps 6 digits: 0.0010000001 would print as 0.001, the other point's label.
  pts = grid.points("optimizer.learning_rate=0.0010000001,0.001,1e-5;optimizer.b2=0.9999999")
  labels = [grid.label(p) for p in pts]
  assert labels == ["optimizer.learning_rate=0.0010000001;optimizer.b2=0.9999999",
                    "optimizer.learning_rate=0.001;optimizer.b2=0.9999999",
                    "optimizer.learning_rate=1e-05;optimizer.b2=0.9999999"]
  for p, text in zip(pts, labels):  # every label reads back as its point
    assert grid.points(text) == [p]


@pytest.mark.parametrize("text, message", [
    ("model.width=16,32", "not a traced hyperparameter"),
    ("optimizer.learning_rate", "is not FIELD=V1,V2"),
    ("optimizer.learning_rate=fast", "not numbers"),
    ("optimizer.b1=0.9;optimizer.b1=0.8", "appears twice"),
    ("optimizer.b1=0.9,0.9", "a value appears twice"),
])
def test_bad_grids_are_refused(text, message):
  with pytest.raises(ValueError, match=message):
    grid.parse(text)
  config = tiny_config()
  config.grid = text
  with pytest.raises(validation.ConfigError, match="config.grid"):
    validation.validate(config)


def test_each_point_is_validated_like_the_field():
  config = tiny_config()
  config.grid = "shift_params.eps=0.5,2.0"
  with pytest.raises(validation.ConfigError,
                     match=r"config.grid: point shift_params.eps=2: config.shift_params.eps"):
    validation.validate(config)


def test_a_grid_in_one_program_equals_separate_runs():
  config = tiny_config()
  config.num_tasks = 2
  config.tasks_per_chunk = 2
  config.grid = "optimizer.learning_rate=1e-3,1e-2"
  data, num_classes = from_config.load_train_data(config)
  together = runner.run_intervention(config, "weight_decay", data, num_classes)
  assert together.train_loss.shape == (2 * config.num_seeds, config.num_tasks)
  for g, lr in enumerate((1e-3, 1e-2)):
    alone_config = tiny_config()
    alone_config.num_tasks = 2
    alone_config.optimizer.learning_rate = lr
    alone = runner.run_intervention(alone_config, "weight_decay", data, num_classes)
    runs = slice(g * config.num_seeds, (g + 1) * config.num_seeds)
    chex.assert_trees_all_close(jax_tree_slice(together, runs), alone, rtol=1e-5, atol=1e-6)
  # The two learning rates really differ.
  assert not np.allclose(together.param_norm[:2], together.param_norm[2:])

  rows = results.metrics_to_rows("weight_decay", together, [0, 1], grid.points(config.grid))
  assert len(rows) == 2 * 2 * 2
  assert rows[-1]["hparams"] == "optimizer.learning_rate=0.01"
  assert rows[-1]["optimizer.learning_rate"] == 1e-2 and rows[-1]["seed"] == 1
  summary = results.summarize(rows, grid.conditions(["weight_decay"], config.grid))
  assert list(summary["interventions"]) == [
      "weight_decay [optimizer.learning_rate=0.001]",
      "weight_decay [optimizer.learning_rate=0.01]"]
  assert summary["interventions"]["weight_decay [optimizer.learning_rate=0.01]"][
      "num_seeds"] == 2


@pytest.mark.parametrize("parallel_runs", [1, 2])
def test_runs_in_rows_equal_runs_side_by_side(parallel_runs):
  """parallel_runs trains the runs (here 2 grid points x 2 seeds, so per-run
  hyperparameters) partly in sequence: same metrics and states."""
  config = tiny_config()
  config.num_tasks = 2
  config.grid = "optimizer.learning_rate=1e-3,1e-2"
  data, num_classes = from_config.load_train_data(config)
  hp = from_config.stack_hparams([from_config.hparams(grid.apply_point(config, p))
                             for p in grid.points(config.grid)], repeats=config.num_seeds)
  keys = jax.numpy.tile(from_config.seed_keys(config), (2, 1))
  out = {}
  for rows in (0, parallel_runs):
    config.parallel_runs = rows
    spec = from_config.engine_spec(config, num_classes, data.images.shape[1])
    states = engine.init_states(keys, data, hp, spec=spec)
    out[rows] = engine.run_tasks(states, data, hp, spec=spec, num_tasks=2)
  chex.assert_trees_all_close(out[parallel_runs], out[0], rtol=1e-5, atol=1e-6)
  assert out[0][1].train_loss.shape == (4, 2)
  # The runs differ from each other, so an order mix-up would show.
  assert not np.allclose(out[0][1].param_norm[0], out[0][1].param_norm[2])
  config.parallel_runs = 3
  with pytest.raises(validation.ConfigError, match="config.parallel_runs: must divide the 4"):
    validation.validate(config)
  with pytest.raises(validation.ConfigError, match="multiple of the 4 devices"):
    validation.check_parallel_runs(2, 8, 4)
  validation.check_parallel_runs(8, 8, 4)  # all side by side: fine on any device count


def test_a_grid_point_overrides_the_intervention():
  config = tiny_config()
  config.grid = "optimizer.weight_decay=0.5"
  resolved = grid.apply_point(config, grid.points(config.grid)[0])
  assert resolved.optimizer.weight_decay == 0.5
  hp = from_config.stack_hparams([from_config.hparams(resolved)], repeats=3)
  np.testing.assert_allclose(np.asarray(hp.weight_decay), [0.5] * 3)


def jax_tree_slice(metrics, runs):
  return jax.tree.map(lambda m: m[runs], metrics)
