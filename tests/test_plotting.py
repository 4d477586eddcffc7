"""The figures: written, with a legend even when a figure's first probe did not run."""

import math
import warnings

import matplotlib
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
