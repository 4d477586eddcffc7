"""The figures: what they draw, which panels they leave out, what they say their bands are."""

import math
import warnings

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest

matplotlib.use("Agg")

from plastix import plotting  # pylint: disable=g-import-not-at-top


def _rows():
  return [{"intervention": name, "seed": seed, "task": task, "diverged_task": -1,
           "sharpness": math.nan, "train_accuracy": 0.5 + 0.1 * task}
          for name in ("baseline", "layer_norm") for seed in range(2) for task in range(3)]


@pytest.fixture
def figures(monkeypatch):
  """The figures the plotting functions save, kept open to inspect (in order)."""
  saved = []
  monkeypatch.setattr(plotting, "_save", lambda fig, path: saved.append(fig))
  yield saved
  for fig in saved:
    plt.close(fig)


def _curve_rows():
  """Two seeds per condition whose accuracy is a + 0.1 t (seed 0: a = 0.5,
  seed 1: a = 0.7), so mean 0.6 + 0.1 t and std 0.1 (ddof 0); dead_fraction
  0 everywhere; sharpness never measured."""
  return [{"intervention": name, "seed": seed, "task": task, "diverged_task": -1,
           "train_loss": 1.0 - 0.1 * task, "train_accuracy": 0.5 + 0.2 * seed + 0.1 * task,
           "dead_fraction": 0.0, "param_norm": 10.0 + task + seed, "sharpness": math.nan}
          for name in ("baseline", "layer_norm") for seed in range(2) for task in range(3)]


def test_legend_names_every_condition_on_the_last_panel_drawn(tmp_path, monkeypatch):
  legends = []
  real_legend = matplotlib.axes.Axes.legend

  def record(ax, *args, **kwargs):
    legends.append((ax.get_ylabel(), list(args[1]) if len(args) > 1 else None))
    return real_legend(ax, *args, **kwargs)

  monkeypatch.setattr(matplotlib.axes.Axes, "legend", record)
  path = tmp_path / "panels.png"
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # matplotlib warns on a legend with no curves
    drawn = plotting.plot_panels(_curve_rows(), ["baseline", "layer_norm"],
                                 [("sharpness", "sharpness"), ("train_accuracy", "accuracy"),
                                  ("param_norm", "norm")], str(path))
  assert drawn == ["train_accuracy", "param_norm"]
  assert legends == [("norm", ["baseline", "layer_norm"])]
  assert path.stat().st_size > 0


def test_a_figure_with_nothing_measured_is_not_written(tmp_path, monkeypatch):
  monkeypatch.setattr(matplotlib.axes.Axes, "legend",
                      lambda *a, **k: pytest.fail("legend on a figure with no curves"))
  assert plotting.plot_panels(_rows(), ["baseline"], [("sharpness", "sharpness")],
                              str(tmp_path / "empty.png")) == []
  assert not (tmp_path / "empty.png").exists()


def test_panels_not_measured_or_flat_are_left_out_and_named(figures):
  drawn = plotting.plot_panels(
      _curve_rows(), ["baseline", "layer_norm"],
      [("sharpness", "top Hessian eigenvalue"), ("train_accuracy", "accuracy"),
       ("dead_fraction", "dead units"), ("no_such_column", "absent")], "unused.png")
  assert drawn == ["train_accuracy"]
  (fig,) = figures
  assert [ax.get_ylabel() for ax in fig.axes] == ["accuracy"]
  notes = [t.get_text() for t in fig.texts if t is not fig._suptitle]
  assert notes == ["not shown: not measured in this run: top Hessian eigenvalue, absent; "
                   "0 in every run: dead units"]


def test_omission():
  nan = np.full((2, 3), np.nan)
  assert plotting.omission([nan, nan]) == "not measured in this run"
  assert plotting.omission([]) == "not measured in this run"
  assert plotting.omission([np.zeros((2, 3)), np.array([[0.0, np.nan]])]) == "0 in every run"
  assert plotting.omission([np.zeros((2, 3)), np.array([[0.0, 1e-3]])]) is None
  # One value is a measurement, not a flat panel (a run of one task and seed).
  assert plotting.omission([np.array([[0.0]])]) is None


def test_curves_are_the_mean_and_a_one_std_band_which_the_figure_states(figures):
  # Three seeds at 0.5, 0.6 and 1.0 (+ 0.1 t): mean 0.7, std sqrt(0.14 / 3)
  # (ddof 0), a band narrower than their min-max.
  rows = [{"intervention": "baseline", "seed": seed, "task": task, "diverged_task": -1,
           "train_accuracy": (0.5, 0.6, 1.0)[seed] + 0.1 * task}
          for seed in range(3) for task in range(3)]
  plotting.plot_panels(rows, ["baseline"], [("train_accuracy", "accuracy")], "unused.png",
                       title="study")
  (fig,) = figures
  assert fig._suptitle.get_text() == "study\nmean ± 1 std over 3 seeds (ddof 0)"
  (ax,) = fig.axes
  line = ax.get_lines()[0]
  np.testing.assert_allclose(line.get_xdata(), [0, 1, 2])
  np.testing.assert_allclose(line.get_ydata(), [0.7, 0.8, 0.9])
  band = ax.collections[0].get_paths()[0].vertices
  std = math.sqrt(0.14 / 3)
  for task, mean in enumerate([0.7, 0.8, 0.9]):
    ys = band[np.isclose(band[:, 0], task), 1]
    np.testing.assert_allclose([ys.min(), ys.max()], [mean - std, mean + std])


def test_band_note_counts_the_seeds_kept():
  rows = _curve_rows()
  assert plotting.band_note(rows, ["baseline"]) == "mean ± 1 std over 2 seeds (ddof 0)"
  for r in rows:
    if r["intervention"] == "layer_norm" and r["seed"] == 1:
      r["diverged_task"] = 1
  assert plotting.band_note(rows, ["baseline", "layer_norm"]) == (
      "mean ± 1 std over 1–2 seeds (ddof 0); diverged seeds left out")


def test_chance_is_drawn_on_accuracy_panels_only(figures):
  plotting.plot_panels(_curve_rows(), ["baseline"],
                       [("train_accuracy", "accuracy"), ("param_norm", "norm")], "a.png",
                       chance=plotting.chance_accuracy("label_reset", 10))
  plotting.plot_panels(_curve_rows(), ["baseline"], [("train_accuracy", "accuracy")], "b.png")
  with_chance, without = figures
  accuracy, norm = with_chance.axes
  chance = [l for l in accuracy.get_lines() if l.get_label().startswith("chance")]
  assert len(chance) == 1 and chance[0].get_label() == "chance (1/10)"
  np.testing.assert_allclose(chance[0].get_ydata(), [0.1, 0.1])
  assert not [l for l in norm.get_lines() if l.get_label().startswith("chance")]
  assert not [l for l in without.axes[0].get_lines() if l.get_label().startswith("chance")]


def test_chance_accuracy():
  assert plotting.chance_accuracy("label_reset", 10) == pytest.approx(0.1)
  assert plotting.chance_accuracy("class_permutation", 100) == pytest.approx(0.01)
  assert plotting.chance_accuracy("random_targets", 10) is None
  assert plotting.chance_accuracy("contextual_bandit", 10) is None


def test_a_regression_shows_the_train_loss_in_place_of_accuracy(figures):
  rows = [dict(r, train_accuracy=math.nan) for r in _curve_rows()]
  assert plotting.plot_plasticity(rows, ["baseline"], "p.png", chance=None) == [
      "train_loss", "param_norm"]  # dead_fraction is 0 in every run


def _summary_rows():
  """Condition a: task-0 accuracy 0.8, 0.9, 1.0 over seeds 0-2, then 0.5, so
  plasticity loss 0.3, 0.4, 0.5 (mean 0.4, std sqrt(0.02 / 3)) and final
  accuracy 0.5 (std 0). Condition b: task 0 at 0.6, then 0.2, 0.3, 0.4 over
  seeds 0-2, of which seed 2 diverged: plasticity loss 0.4, 0.3 (mean 0.35,
  std 0.05), final accuracy 0.2, 0.3 (mean 0.25, std 0.05)."""
  rows = []
  for name in ("a", "b"):
    for seed in range(3):
      for task in range(4):
        if name == "a":
          acc = 0.8 + 0.1 * seed if task == 0 else 0.5
        else:
          acc = 0.6 if task == 0 else 0.2 + 0.1 * seed
        diverged = name == "b" and seed == 2 and task == 3
        rows.append({"intervention": name, "seed": seed, "task": task,
                     "diverged_task": 3 if diverged else -1,
                     "diverged_step": 7 if diverged else -1, "train_loss": 1.0,
                     "train_accuracy": acc, "dead_fraction": 0.1, "param_norm": 1.0})
  return rows


def test_bar_chart_heights_and_error_bars_are_the_means_and_stds(figures):
  drawn = plotting.plot_summary_bars(_summary_rows(), ["a", "b"], "bars.png", title="t",
                                     chance=0.1)
  assert drawn == ["plasticity_loss", "final_task_accuracy"]
  (fig,) = figures
  assert "error bars ± 1 std over 2–3 seeds (ddof 0); diverged seeds left out" in (
      fig._suptitle.get_text())
  expected = {"plasticity_loss": ([0.4, 0.35], [math.sqrt(0.02 / 3), 0.05]),
              "final_task_accuracy": ([0.5, 0.25], [0.0, 0.05])}
  for ax, key in zip(fig.axes, drawn):
    means, stds = expected[key]
    (bars,) = [c for c in ax.containers if isinstance(c, matplotlib.container.BarContainer)]
    np.testing.assert_allclose([p.get_width() for p in bars.patches], means, atol=1e-12)
    segments = bars.errorbar.lines[2][0].get_segments()
    np.testing.assert_allclose([(s[1, 0] - s[0, 0]) / 2 for s in segments], stds, atol=1e-12)
    np.testing.assert_allclose([(s[1, 0] + s[0, 0]) / 2 for s in segments], means, atol=1e-12)
  assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a", "b"]
  chance = [l for l in fig.axes[1].get_lines() if l.get_label().startswith("chance")]
  np.testing.assert_allclose(chance[0].get_xdata(), [0.1, 0.1])


def test_no_bar_chart_for_a_regression(tmp_path):
  rows = [dict(r, train_accuracy=math.nan) for r in _summary_rows()]
  assert plotting.plot_summary_bars(rows, ["a", "b"], str(tmp_path / "b.png")) == []
  assert not (tmp_path / "b.png").exists()


def test_a_figure_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
  path = tmp_path / "plasticity.png"
  plotting.plot_panels(_rows(), ["baseline"], [("train_accuracy", "accuracy")], str(path))
  drawn = path.read_bytes()
  assert drawn.startswith(b"\x89PNG\r\n\x1a\n")

  def killed_midway(fig, target, **kwargs):  # part of the file, then the end
    del fig, kwargs
    if hasattr(target, "write"):
      target.write(b"\x89PNG")
    else:
      with open(target, "wb") as f:
        f.write(b"\x89PNG")
    raise KeyboardInterrupt

  monkeypatch.setattr(matplotlib.figure.Figure, "savefig", killed_midway)
  with pytest.raises(KeyboardInterrupt):
    plotting.plot_panels(_rows(), ["baseline"], [("train_accuracy", "accuracy")], str(path))
  assert path.read_bytes() == drawn  # the last whole figure
  assert sorted(p.name for p in tmp_path.iterdir()) == ["plasticity.png"]


def test_a_figure_takes_the_format_of_its_extension(tmp_path):
  for name, magic in (("f.pdf", b"%PDF"), ("f.svg", b"<?xml"), ("f.png", b"\x89PNG")):
    plotting.plot_panels(_rows(), ["baseline"], [("train_accuracy", "accuracy")],
                         str(tmp_path / name))
    assert (tmp_path / name).read_bytes().startswith(magic), name


def test_histogram_figures_average_the_seeds_not_excluded(tmp_path, monkeypatch):
  grids = []
  monkeypatch.setattr(plotting, "_histogram_figure",
                      lambda edges, rows, labels, path, title, colormap: grids.append(
                          (rows, labels, title)))
  # 3 seeds, 2 tasks, 1 layer, 2 bins; seed s puts 10**s units in bin 0.
  counts = np.zeros((3, 2, 1, 2), np.int32)
  counts[:, :, 0, 0] = np.array([1, 10, 100])[:, None]
  within = np.zeros((3, 2, 2, 1, 2), np.int32)
  within[:, :, :, 0, 1] = np.array([1, 10, 100])[:, None, None]
  histograms = {"edges": np.array([0.0, 1.0, 2.0]), "a": counts, "a/within_task": within}
  diverged = {"a": np.array([False, True, False])}
  plotting.plot_histograms(histograms, ["a"], str(tmp_path / "h.png"), num_times=2,
                           exclude=diverged)
  plotting.plot_histograms(histograms, ["a"], str(tmp_path / "h.png"), num_times=2)
  plotting.plot_within_task_histograms(histograms, ["a"], 5, str(tmp_path / "w.png"),
                                       exclude=diverged)
  (kept, labels, title), (every_seed, _, title_all), (within_kept, within_labels, _) = grids
  # [series, layer, bin] per condition: seed 1 left out, the others averaged.
  np.testing.assert_allclose(kept[0][1], [[[50.5, 0]], [[50.5, 0]]])
  np.testing.assert_allclose(every_seed[0][1], [[[37, 0]], [[37, 0]]])
  np.testing.assert_allclose(within_kept[0][1], [[[0, 50.5]], [[0, 50.5]]])
  assert labels == ["end of task 0", "end of task 1"]
  assert within_labels == ["step 5", "step 10"]
  assert title.endswith("mean over 2 seeds; diverged seeds left out")
  assert title_all.endswith("mean over 3 seeds")


def test_histograms_show_every_hidden_layer_on_one_y_scale(figures):
  rng = np.random.default_rng(0)
  names = [f"condition {i}" for i in range(9)]
  histograms = {"edges": np.linspace(-3, 3, 7)}
  for i, name in enumerate(names):  # 2 seeds, 3 tasks, 3 layers, 6 bins
    histograms[name] = rng.integers(0, 10 * (i + 1), (2, 3, 3, 6))
  plotting.plot_histograms(histograms, names, "h.png", num_times=2)
  (fig,) = figures
  axes = np.asarray(fig.axes).reshape(len(names), 3)
  assert len({ax.get_ylim() for ax in fig.axes}) == 1  # one y scale
  top = max(histograms[n][:, [0, 2]].mean(axis=0).max() for n in names)
  assert axes[0, 0].get_ylim()[1] >= top
  assert [ax.get_title(loc="left") for ax in axes[:, 0]] == names
  assert [ax.get_xlabel() for ax in axes[-1]] == [
      f"unit's mean preactivation, hidden layer {l}" for l in (1, 2, 3)]
  assert fig._supylabel.get_text() == "units per bin (mean over seeds)"
  # Each panel: an outline per task end shown (tasks 0 and 2), its layer's seed mean.
  patches = axes[4, 2].patches
  assert len(patches) == 2
  np.testing.assert_allclose(patches[1].get_data().values,
                             histograms["condition 4"][:, 2, 2].mean(axis=0))
