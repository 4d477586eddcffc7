"""What a job leaves besides its results: log.txt, TensorBoard event files,
steps.csv and steps.png; absl's --verbosity; checkpoint deletion; local workdirs."""

import csv
import glob
import io
import logging
import os
import re
import struct
import subprocess
import sys

import numpy as np
import pytest
from tensorboardX import record_writer
from tensorboardX.proto import event_pb2

from plastix import joblog
from plastix import tensorboard_log

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config=configs/shift.py", "--config.num_examples=200", "--config.num_tasks=2",
        "--config.steps_per_task=10", "--config.batch_size=16", "--config.num_seeds=2",
        "--config.tasks_per_chunk=1", "--config.model.width=16", "--config.probes.batch_size=32",
        "--config.probes.enabled=False",
        "--config.probes.test_examples=0", "--config.interventions=baseline",
        "--config.cpu_devices=1"]
PREFIX = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [^ ]+:\d+\] ")


def read_events(path: str) -> list:
  """The `event_pb2.Event`s of a TFRecord event file, checking each record's
  length and data checksums (uint64 length, masked crc32c of it, the data, its
  masked crc32c)."""
  with open(path, "rb") as f:
    data = f.read()
  events, i = [], 0
  while i < len(data):
    header = data[i:i + 8]
    (length,) = struct.unpack("<Q", header)
    (header_crc,) = struct.unpack("<I", data[i + 8:i + 12])
    assert header_crc == record_writer.masked_crc32c(header)
    payload = data[i + 12:i + 12 + length]
    (payload_crc,) = struct.unpack("<I", data[i + 12 + length:i + 16 + length])
    assert payload_crc == record_writer.masked_crc32c(payload)
    event = event_pb2.Event()
    event.ParseFromString(payload)
    events.append(event)
    i += 16 + length
  return events


def scalars(folder: str) -> dict:
  """``{tag: [(step, value), ...]}`` of every event file in `folder`, by step."""
  out = {}
  for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
    for event in read_events(path):
      for value in event.summary.value:
        out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return {tag: sorted(points) for tag, points in out.items()}


# --- joblog -----------------------------------------------------------------


@pytest.fixture
def root_level():
  before = logging.root.level
  yield
  logging.root.setLevel(before)


def test_job_log_writes_every_line_with_absl_prefix_and_records_at_the_verbosity(
    tmp_path, root_level):
  out, err = io.StringIO(), io.StringIO()
  path = tmp_path / "log.txt"
  logging.root.setLevel(logging.WARNING)  # what absl's --verbosity=-1 sets
  with joblog.JobLog(stdout=out, stderr=err) as log:
    log.say("before the file opens")
    log.attach(str(path))
    log.say("a progress line")
    log.warn("warning: a warning")
    logging.getLogger("some.library").info("an info record")  # below the verbosity
    logging.getLogger("some.library").warning("a warning record")
    log.record(logging.ERROR, "error: two\nlines")
  log.say("after closing")  # printed, not written
  assert out.getvalue() == "before the file opens\na progress line\nafter closing\n"
  assert err.getvalue() == "warning: a warning\n"
  lines = path.read_text().splitlines()
  assert all(PREFIX.match(line) for line in lines), lines
  texts = [PREFIX.sub("", line) for line in lines]
  assert texts == ["before the file opens", "a progress line", "warning: a warning",
                   "a warning record", "error: two", "lines"]
  assert [line[0] for line in lines] == ["I", "I", "W", "W", "E", "E"]
  assert "test_logging.py:" in lines[1]  # the line that said it
  assert not [h for h in logging.root.handlers if isinstance(h, logging.FileHandler)
              and h.baseFilename == str(path)]

  logging.root.setLevel(logging.INFO)  # --verbosity=0
  with joblog.JobLog(stdout=out) as log:
    log.attach(str(path))  # appends
    logging.getLogger("some.library").info("now an info record")
  assert PREFIX.sub("", path.read_text().splitlines()[-1]) == "now an info record"


def test_a_discarded_log_writes_nothing(tmp_path):
  log = joblog.JobLog(stdout=io.StringIO())
  log.say("kept for a file")
  log.discard()
  log.say("not kept")
  log.attach(str(tmp_path / "log.txt"))
  log.close()
  assert (tmp_path / "log.txt").read_text() == ""


# --- tensorboard_log --------------------------------------------------------


def test_run_names_are_folder_safe():
  assert tensorboard_log.run_name("layer_norm+weight_decay", 2) == (
      "layer_norm+weight_decay/seed_2")
  assert tensorboard_log.run_name(
      "layer_norm [optimizer.learning_rate=0.001;shift_params.eps=0.1]", 0) == (
          "layer_norm_optimizer.learning_rate=0.001_shift_params.eps=0.1/seed_0")


def test_event_files_hold_the_rows_at_their_training_steps(tmp_path):
  events = tensorboard_log.TensorBoardLog(str(tmp_path), steps_per_task=10)
  name = tensorboard_log.run_name("baseline", 1)
  assert not events.has_events(name)
  task_rows = [{"intervention": "baseline", "seed": 1, "task": t, "train_loss": 2.0 - t,
                "sharpness": float("nan"), "num_reset": -1, "hparams": "x=1", "x": 1.0}
               for t in (3, 4)]
  step_rows = [{"intervention": "baseline", "seed": 1, "task": 3, "task_step": 5, "step": 35,
                "train_loss": 1.25, "train_accuracy": 0.5}]
  events.write(name, task_rows, step_rows, exclude={"x": 1.0})
  events.close()
  assert events.has_events(name)
  got = scalars(str(tmp_path / name))
  # task t ends at step (t + 1) * 10; NaN (not measured) and the grid field x left out.
  assert got == {"task/train_loss": [(40, -1.0), (50, -2.0)],
                 "task/num_reset": [(40, -1.0), (50, -1.0)],
                 "step/train_loss": [(35, 1.25)], "step/train_accuracy": [(35, 0.5)]}


# --- a tiny job, end to end -------------------------------------------------


def _synthetic(workdir, *extra):
  return subprocess.run([sys.executable, "-m", "experiments.synthetic", *TINY, *extra,
                         f"--workdir={workdir}"], cwd=ROOT, capture_output=True, text=True,
                        timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
  """Two runs of one job: every step kept (log_every_steps=1), INFO records on
  (--verbosity=0) and checkpoints deleted; and the default verbosity with a mean
  every 5 steps."""
  root = tmp_path_factory.mktemp("jobs")
  every, fives = root / "every_step", root / "fives"
  procs = (_synthetic(every, "--config.log_every_steps=1", "--verbosity=0",
                      "--config.keep_checkpoints=False"),
           _synthetic(fives, "--config.log_every_steps=5"))
  for proc in procs:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return (every, procs[0]), (fives, procs[1])


def _csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_steps_csv_holds_the_hand_averaged_steps_and_the_figure(jobs):
  (every, _), (fives, _) = jobs
  single, grouped = _csv(every / "steps.csv"), _csv(fives / "steps.csv")
  assert len(single) == 2 * 2 * 10 and len(grouped) == 2 * 2 * 2  # seeds x tasks x points
  for key in ("train_loss", "train_accuracy"):
    per_step = np.array([float(r[key]) for r in single]).reshape(2, 2, 2, 5)
    np.testing.assert_allclose([float(r[key]) for r in grouped],
                               per_step.mean(axis=-1).ravel(), rtol=1e-6)
  assert [int(r["step"]) for r in grouped[:4]] == [5, 10, 15, 20]
  assert [int(r["task_step"]) for r in grouped[:4]] == [5, 10, 5, 10]
  # The interval changes no result.
  assert (every / "metrics.csv").read_bytes() == (fives / "metrics.csv").read_bytes()
  assert (fives / "steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_event_files_follow_the_runs(jobs):
  (fives, _) = jobs[1]
  runs = sorted(os.path.relpath(p, fives / "tensorboard")
                for p in glob.glob(str(fives / "tensorboard" / "*" / "*")))
  assert runs == ["baseline/seed_0", "baseline/seed_1"]
  got = scalars(str(fives / "tensorboard" / "baseline" / "seed_1"))
  rows = [r for r in _csv(fives / "metrics.csv") if r["seed"] == "1"]
  assert [s for s, _ in got["task/train_accuracy"]] == [10, 20]
  np.testing.assert_allclose([v for _, v in got["task/train_accuracy"]],
                             [float(r["train_accuracy"]) for r in rows], rtol=1e-6)
  steps = [r for r in _csv(fives / "steps.csv") if r["seed"] == "1"]
  assert [s for s, _ in got["step/train_loss"]] == [5, 10, 15, 20]
  np.testing.assert_allclose([v for _, v in got["step/train_loss"]],
                             [float(r["train_loss"]) for r in steps], rtol=1e-6)
  assert "task/dead_fraction" not in got  # probes off: not measured, not written


def test_log_txt_holds_the_output_and_verbosity_is_honoured(jobs):
  (every, verbose), (fives, quiet) = jobs
  for workdir, proc in ((every, verbose), (fives, quiet)):
    lines = (workdir / "log.txt").read_text().splitlines()
    assert all(PREFIX.match(line) for line in lines)
    texts = [PREFIX.sub("", line) for line in lines]
    for printed in proc.stdout.splitlines():
      assert printed in texts  # every printed line, in the log too
    progress = [t for t in texts if t.startswith("[baseline] task 2/2")]
    assert progress and re.search(r"intervention 1/1  \d+ seed-steps/s  compile \d+\.\ds  "
                                  r"train \d+\.\ds  ETA \d+s$", progress[0])
  # --verbosity=0 adds the INFO records (on stderr and in the log); the default
  # (WARNING) leaves them out.
  timing = "[baseline] task 1: "
  assert timing in verbose.stderr and timing in (every / "log.txt").read_text()
  assert timing not in quiet.stderr and timing not in (fives / "log.txt").read_text()


def test_checkpoints_are_deleted_only_when_asked(jobs):
  (every, proc), (fives, _) = jobs
  assert not (every / "checkpoints").exists()
  assert "checkpoints deleted" in proc.stdout
  assert (fives / "checkpoints" / "baseline").is_dir()


@pytest.mark.parametrize("module", ["synthetic", "study"])
def test_a_bucket_workdir_is_refused_in_one_line(tmp_path, module):
  config = "configs/shift.py" if module == "synthetic" else "configs/studies/abruptness.py"
  proc = subprocess.run([sys.executable, "-m", f"experiments.{module}", f"--config={config}",
                         "--workdir=gs://some-bucket/run"], cwd=tmp_path, capture_output=True,
                        text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu",
                                                          PYTHONPATH=ROOT))
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: --workdir 'gs://some-bucket/run': local paths only (gs:// is not supported); "
      "write to a local or mounted folder and copy it to the bucket afterwards"]
  assert not os.listdir(tmp_path)  # nothing written (no local "gs:" folder)


def test_a_stalled_chunk_leaves_its_line_in_the_log(tmp_path):
  from tests.test_watchdog import STALL_SECOND_CHUNK  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  proc = subprocess.run([sys.executable, "-c", STALL_SECOND_CHUNK, *TINY,
                         "--config.stall_timeout_s=3", f"--workdir={workdir}"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 3, proc.stderr
  stall = proc.stderr.strip().splitlines()[-1]
  assert stall.startswith("error: [baseline] the program for task 2 of 2")
  lines = (workdir / "log.txt").read_text().splitlines()
  assert lines[-1].startswith("E") and PREFIX.sub("", lines[-1]) == stall
  assert any(PREFIX.sub("", line).startswith("[baseline] task 1/2") for line in lines)
