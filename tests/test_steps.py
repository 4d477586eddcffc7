"""The per-step log: means over every log_every_steps steps, kept inside the scan."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from plastix import engine
from plastix import from_config
from plastix import results
from plastix import runner
from plastix import validation
from tests.conftest import tiny_config


def test_step_means_are_window_means():
  values = jnp.arange(12.0)
  # [0..2], [3..5], [6..8], [9..11] -> 1, 4, 7, 10.
  np.testing.assert_array_equal(engine.step_means(values, 3), [1.0, 4.0, 7.0, 10.0])
  np.testing.assert_array_equal(engine.step_means(values, 12), [5.5])
  np.testing.assert_array_equal(engine.step_means(values, 1), values)
  assert engine.step_means(values, 0) is None
  with pytest.raises(ValueError, match="must divide the 12 steps"):
    engine.step_means(values, 5)


def test_with_log_every_checks_the_interval():
  config = tiny_config()
  data, num_classes = from_config.load_train_data(config)
  spec = from_config.engine_spec(config, num_classes, data.images.shape[1])
  assert spec.log_every_steps == 0  # the spec alone keeps no steps
  assert engine.with_log_every(spec, 4).log_every_steps == 4
  with pytest.raises(ValueError, match="divide steps_per_task=12"):
    engine.with_log_every(spec, 5)


def test_log_every_steps_is_validated_naming_the_field():
  config = tiny_config()
  config.log_every_steps = 5  # 12 steps per task
  with pytest.raises(validation.ConfigError,
                     match=r"^config\.log_every_steps: .*divides steps_per_task = 12"):
    validation.validate(config)
  config.log_every_steps = -1
  with pytest.raises(validation.ConfigError, match=r"^config\.log_every_steps"):
    validation.validate(config)
  config.log_every_steps = 0  # off
  validation.validate(config)
  config = ml_collections.ConfigDict({**config.to_dict(), "tensorboard": "yes"})
  with pytest.raises(validation.ConfigError, match=r"^config\.tensorboard: must be True"):
    validation.validate(config)


def test_kept_means_equal_the_hand_averaged_steps_and_training_is_unchanged():
  config = tiny_config()
  config.interventions = "baseline"
  data = from_config.load_train_data(config)
  config.log_every_steps = 1  # every step's own loss and accuracy
  every_step = runner.run_intervention(config, "baseline", *data)
  config.log_every_steps = 3
  kept = runner.run_intervention(config, "baseline", *data)
  config.log_every_steps = 0
  none = runner.run_intervention(config, "baseline", *data)

  runs, tasks, steps = every_step.step_loss.shape
  assert (runs, tasks, steps) == (config.num_seeds, config.num_tasks, config.steps_per_task)
  assert kept.step_loss.shape == (runs, tasks, steps // 3)
  for field in ("step_loss", "step_accuracy"):
    by_hand = getattr(every_step, field).astype(np.float64).reshape(runs, tasks, -1, 3)
    np.testing.assert_allclose(getattr(kept, field), by_hand.mean(axis=-1), rtol=1e-6)
  # The last accuracy_steps steps of a task are what train_loss averages.
  window = from_config.accuracy_steps(config)
  np.testing.assert_allclose(every_step.train_loss,
                             every_step.step_loss[..., -window:].mean(axis=-1), rtol=1e-6)
  assert none.step_loss is None and none.step_accuracy is None
  # Keeping the steps changes no training result.
  for other in (kept, none):
    for field in ("train_loss", "train_accuracy", "param_norm", "dead_fraction"):
      np.testing.assert_array_equal(getattr(other, field), getattr(every_step, field))


def _metrics(loss, accuracy):
  z = np.zeros(loss.shape[:2])
  fields = {f: z for f in engine.TaskMetrics._fields}
  fields.update(layer_param_norm={}, layer_grad_norm={}, step_loss=loss,
                step_accuracy=accuracy)
  return engine.TaskMetrics(**fields)


def test_step_rows_place_each_mean_at_the_end_of_its_window():
  # 2 runs (1 seed x 2 grid points), 2 tasks of 6 steps, a mean every 3 steps.
  loss = np.arange(8.0).reshape(2, 2, 2)
  points = [{"optimizer.learning_rate": 0.1}, {"optimizer.learning_rate": 0.2}]
  rows = results.step_rows("ln", _metrics(loss, loss / 10), [7], 6, points, first_task=4)
  assert len(rows) == 8
  assert [(r["task"], r["task_step"], r["step"]) for r in rows[:4]] == [
      (4, 3, 27), (4, 6, 30), (5, 3, 33), (5, 6, 36)]
  last = rows[-1]  # run 1 (grid point 1), task 5, second window
  assert last["seed"] == 7 and last["train_loss"] == 7.0 and last["train_accuracy"] == 0.7
  assert last["optimizer.learning_rate"] == 0.2
  assert last["hparams"] == "optimizer.learning_rate=0.2"
  assert results.step_rows("ln", _metrics(loss, loss)._replace(step_loss=None), [7], 6,
                           points) == []


def test_steps_csv_round_trips(tmp_path):
  loss = np.array([[[1.5, 2.5]]])
  rows = results.step_rows("baseline", _metrics(loss, loss / 4), [0], 10)
  path = tmp_path / "steps.csv"
  results.write_csv(str(path), rows, base=results.STEP_COLUMNS)
  assert path.read_text().splitlines()[0] == ",".join(results.STEP_COLUMNS)
  back = results.read_csv(str(path))
  assert back == rows
  assert isinstance(back[0]["step"], int) and back[1]["step"] == 10


def test_step_curves_and_their_figure(tmp_path):
  from plastix import plotting  # pylint: disable=g-import-not-at-top
  rows = [{"intervention": "ln", "seed": s, "task": t, "task_step": j, "step": 4 * t + j,
           "train_loss": 10.0 * s + 4 * t + j, "train_accuracy": float("nan")}
          for s in (1, 0) for t in (0, 1) for j in (2, 4)]
  rows.append(dict(rows[0], intervention="other"))
  steps, values = plotting.step_curves(rows, "ln", "train_loss")
  np.testing.assert_array_equal(steps, [2, 4, 6, 8])
  np.testing.assert_array_equal(values, [[2, 4, 6, 8], [12, 14, 16, 18]])  # seeds 0, 1
  _, kept = plotting.step_curves(rows, "ln", "train_loss", exclude=np.array([False, True]))
  np.testing.assert_array_equal(kept, [[2, 4, 6, 8]])
  # A regression's accuracy (NaN throughout) is left out of the figure.
  path = tmp_path / "steps.png"
  assert plotting.plot_step_curves(rows, ["ln"], str(path), 4) == ["train_loss"]
  assert path.read_bytes()[:4] == b"\x89PNG"
  assert plotting.plot_step_curves([], ["ln"], str(tmp_path / "none.png"), 4) == []
  assert not (tmp_path / "none.png").exists()
