"""The figures: written, with a legend even when a figure's first probe did not run."""

import math
import warnings

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from plastix import plotting  # pylint: disable=g-import-not-at-top


def _rows():
  return [{"intervention": name, "seed": seed, "task": task, "diverged_task": -1,
           "sharpness": math.nan, "train_accuracy": 0.5 + 0.1 * task}
          for name in ("baseline", "layer_norm") for seed in range(2) for task in range(3)]


def test_legend_goes_on_the_first_panel_with_curves(tmp_path, monkeypatch):
  legends = []
  real_legend = matplotlib.axes.Axes.legend

  def record(ax, *args, **kwargs):
    legends.append(ax.get_ylabel())
    return real_legend(ax, *args, **kwargs)

  monkeypatch.setattr(matplotlib.axes.Axes, "legend", record)
  path = tmp_path / "panels.png"
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # matplotlib warns on a legend with no curves
    plotting.plot_panels(_rows(), ["baseline", "layer_norm"],
                         [("sharpness", "sharpness"), ("train_accuracy", "accuracy")],
                         str(path))
  assert legends == ["accuracy"]
  assert path.stat().st_size > 0


def test_no_legend_when_nothing_was_measured(tmp_path, monkeypatch):
  monkeypatch.setattr(matplotlib.axes.Axes, "legend",
                      lambda *a, **k: pytest.fail("legend on a figure with no curves"))
  plotting.plot_panels(_rows(), ["baseline"], [("sharpness", "sharpness")],
                       str(tmp_path / "empty.png"))
  assert (tmp_path / "empty.png").stat().st_size > 0


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


def test_histogram_figures_sum_the_seeds_not_excluded(tmp_path, monkeypatch):
  grids = []
  monkeypatch.setattr(plotting, "_histogram_grid",
                      lambda edges, panels, path, **_: grids.append(panels))
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
  kept, every_seed, within_kept = grids
  assert [list(c) for c, _ in kept[0]] == [[101, 0], [101, 0]]  # seed 1 left out
  assert [list(c) for c, _ in every_seed[0]] == [[111, 0], [111, 0]]
  assert [list(c) for c, _ in within_kept[0]] == [[0, 101], [0, 101]]
