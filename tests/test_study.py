"""Studies: cells, their configs, the study runner (every cell, resume, --cell), the final fit."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from configs import shift as shift_config
from plastix import engine
from plastix import from_config
from plastix import study
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDIES = ("abruptness", "shift_types", "norm_sharpness", "target_magnitude",
           "intervention_matrix", "bandit", "plasticity_probe_2023")


def _study(cells):
  config = shift_config.get_config()
  config.study = {"name": "s", "scale": "cpu", "title": "t", "description": "d",
                  "sweeps": "", "cells": cells}
  return config


def test_cells_are_typed_by_their_fields_and_sorted_by_name():
  config = _study({"b_cnn": "model.name=cnn;model.cnn_channels=(8, 16);num_seeds=2",
                   "a_mlp": "model.name=mlp;shift_params.target_offset=10;"
                            "probes.enabled=False;shift=label_reset+pixel_permutation"})
  cells = study.cells(config)
  assert [c.name for c in cells] == ["a_mlp", "b_cnn"] and [c.index for c in cells] == [0, 1]
  assert cells[0].overrides == {"model.name": "mlp", "shift_params.target_offset": 10.0,
                                "probes.enabled": False,
                                "shift": "label_reset+pixel_permutation"}
  assert cells[1].overrides == {"model.name": "cnn", "model.cnn_channels": (8, 16),
                                "num_seeds": 2}
  assert isinstance(cells[1].overrides["num_seeds"], int)
  cell = study.cell_config(config, cells[1])
  assert "study" not in cell and cell.name == "s/b_cnn"
  assert cell.model.cnn_channels == (8, 16) and cell.num_seeds == 2
  assert config.num_seeds == 3  # the study's own config is left alone
  assert study.units(cell) == 4 * 2 * 20 * 300  # interventions x runs x tasks x steps


@pytest.mark.parametrize("cells, message", [
    ({"a": "model.nam=cnn"}, "'model.nam' is not a config field"),
    ({"a": "model=cnn"}, "is a section"),
    ({"a": "num_seeds=three"}, "not a number"),
    ({"a": "model.cnn_channels=8"}, "not a tuple"),
    ({"a": "model.name"}, "is not FIELD=VALUE"),
    ({"a/b": "model.name=cnn"}, "must be letters"),
    ({}, "is empty"),
])
def test_bad_cells_name_what_is_wrong(cells, message):
  with pytest.raises(study.StudyError, match=message):
    study.cells(_study(cells))


@pytest.mark.parametrize("name", STUDIES)
def test_every_study_builds_at_both_scales_and_its_cpu_cells_validate(name):
  from plastix import experiment  # pylint: disable=g-import-not-at-top
  module = __import__(f"configs.studies.{name}", fromlist=["get_config"])
  paper = module.get_config("paper")
  assert paper.study.scale == "paper" and study.cells(paper)
  config = module.get_config()  # :cpu is the default
  assert config.study.scale == "cpu" and config.dataset == "fashion_mnist_small"
  for cell in study.cells(config):
    experiment.prepare(study.cell_config(config, cell))  # raises UsageError if invalid
  with pytest.raises(ValueError, match="unknown scale"):
    module.get_config("laptop")


STUDY_FILE = textwrap.dedent("""
    import ml_collections
    from configs import shift

    def get_config(scale="cpu"):
      config = shift.get_config()
      config.num_examples, config.num_tasks, config.steps_per_task = 200, 2, 10
      config.batch_size, config.num_seeds, config.model.width = 16, 1, 16
      config.probes.batch_size, config.probes.test_examples = 32, 100
      config.interventions = "baseline,layer_norm"
      config.shift = "class_permutation"
      config.study = ml_collections.ConfigDict(dict(
          name="tiny", scale=scale, title="A tiny study", description="two cells",
          sweeps="", cells=dict(a_relu="model.activation=relu",
                                b_tanh="model.activation=tanh")))
      return config
    """)


def _study_cmd(path, workdir, *extra):
  return [sys.executable, "-m", "experiments.study", f"--config={path}",
          f"--workdir={workdir}", *extra]


def _run(cmd, cwd=ROOT, timeout=600):
  env = {k: v for k, v in os.environ.items() if k != "SLURM_ARRAY_TASK_ID"}
  return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                        env=dict(env, JAX_PLATFORMS="cpu"))


def test_a_study_runs_every_cell_resumes_and_runs_one_cell(tmp_path):
  path = tmp_path / "tiny.py"
  path.write_text(STUDY_FILE)
  workdir = tmp_path / "study"
  # One cell alone (as a cluster array task would), into the shared folder.
  proc = _run(_study_cmd(path, workdir, "--cell=1"))
  assert proc.returncode == 0, proc.stderr
  assert (workdir / "cells" / "b_tanh" / "summary.json").exists()
  assert not (workdir / "cells" / "a_relu").exists()
  # The whole study: the finished cell is skipped, the other runs in a process of its own.
  proc = _run(_study_cmd(path, workdir))
  assert proc.returncode == 0, proc.stderr
  assert "[cell 2/2 b_tanh] done already" in proc.stdout
  assert "[cell 1/2 a_relu]" in proc.stdout and "of the study, ETA" in proc.stdout
  record = json.loads((workdir / "study.json").read_text())
  assert record["study"] == "tiny" and record["scale"] == "cpu"
  assert [c["name"] for c in record["cells"]] == ["a_relu", "b_tanh"]
  assert all(c["complete"] and c["wall_time_s"] > 0 for c in record["cells"])
  assert record["cells"][1]["overrides"] == {"model.activation": "tanh"}
  assert record["command"].startswith("python -m experiments.study --config=")
  for cell, activation in (("a_relu", "relu"), ("b_tanh", "tanh")):
    folder = workdir / "cells" / cell
    config = json.loads((folder / "config.json").read_text())
    assert config["model"]["activation"] == activation and config["name"] == f"tiny/{cell}"
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary["interventions"]) == {"baseline", "layer_norm"}
    assert summary["interventions"]["baseline"]["final_task_test_accuracy"] is not None
  # Again: nothing left to run.
  proc = _run(_study_cmd(path, workdir))
  assert proc.returncode == 0 and proc.stdout.count("done already") == 2, proc.stdout


@pytest.mark.parametrize("extra, message", [
    (["--cell=7"], "--cell: 7 is not a cell"),
    (["--config.study.cells.a_relu=model.activation=swish"], "cell 'a_relu': config.model"),
    (["--config.num_task=3"], "did you mean 'num_tasks'"),
])
def test_bad_study_input_is_one_line_and_exit_2(tmp_path, extra, message):
  path = tmp_path / "tiny.py"
  path.write_text(STUDY_FILE)
  proc = _run(_study_cmd(path, tmp_path / "w", *extra), timeout=300)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], proc.stderr


def test_the_final_fit_is_the_same_task_for_every_condition_and_matches_by_hand():
  config = tiny_config()
  config.num_tasks, config.num_seeds = 1, 1
  config.probes.final_fit_steps = 12
  data, num_classes = from_config.load_train_data(config)
  hp = from_config.hparams(config)
  spec = from_config.engine_spec(config, num_classes, data.images.shape[1], data.image_shape)
  config.model.norm = "layer"
  other = from_config.engine_spec(config, num_classes, data.images.shape[1], data.image_shape)
  key = jax.random.PRNGKey(7)
  a = engine.final_fit_task(spec, hp, key, data)
  b = engine.final_fit_task(other, hp, key, data)
  np.testing.assert_array_equal(a.labels, b.labels)
  assert np.mean(np.asarray(a.labels) == np.asarray(data.labels)) < 0.3  # fresh labels
  # The run's numbers: the final fit on the last task's row only.
  keys = from_config.seed_keys(config)
  states = engine.init_states(keys, data, hp, spec=spec)
  _, metrics = engine.run_tasks(states, data, hp, spec=spec, num_tasks=1)
  assert np.isfinite(metrics.final_fit_accuracy).all()
  # By hand: the same task trained without a final fit, then `final_fit` on its state.
  without = dataclasses.replace(spec, final_fit_steps=0, final_fit_task=-1)
  states = engine.init_states(keys, data, hp, spec=without)
  trained, plain = engine.run_tasks(states, data, hp, spec=without, num_tasks=1)
  assert np.isnan(plain.final_fit_accuracy).all()
  by_hand = jax.vmap(lambda s: engine.final_fit(spec, hp, data, s))(trained)
  for key_name, value in by_hand.items():
    np.testing.assert_allclose(getattr(metrics, key_name)[:, 0], value, rtol=1e-4, atol=1e-6)
  assert float(by_hand["final_fit_loss_new_network"][0]) > 0


def test_final_fit_is_in_summary_with_the_gap():
  from plastix import results, runner  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  config.num_tasks = 2
  config.probes.final_fit_steps = 10
  m = runner.run_intervention(config, "baseline", *from_config.load_train_data(config))
  assert np.isnan(m.final_fit_accuracy[:, 0]).all() and np.isfinite(
      m.final_fit_accuracy[:, 1]).all()
  rows = results.metrics_to_rows("baseline", m, [0, 1])
  s = results.summarize(rows, ["baseline"])["interventions"]["baseline"]
  trained = m.final_fit_accuracy[:, 1]
  fresh = m.final_fit_accuracy_new_network[:, 1]
  assert s["final_fit_accuracy"] == pytest.approx(float(np.mean(trained)))
  assert s["final_fit_gap"] == pytest.approx(float(np.mean(fresh - trained)))
  assert s["final_fit_gap_std"] == pytest.approx(float(np.std(fresh - trained)), abs=1e-7)
