"""Long runs survive: a SIGKILLed run resumes to the very same results."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from plastix import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--config=configs/shift.py", "--config.num_examples=200", "--config.num_tasks=6",
        "--config.steps_per_task=40", "--config.batch_size=16", "--config.num_seeds=2",
        "--config.tasks_per_chunk=1", "--config.model.width=24",
        "--config.probes.batch_size=32", "--config.interventions=baseline,layer_norm"]


def _cmd(workdir):
  return [sys.executable, "-m", "experiments.synthetic", *ARGS, f"--workdir={workdir}"]


def _run(workdir, *extra, prefix=(), env=None):
  proc = subprocess.run([*prefix, *_cmd(workdir), *extra], cwd=ROOT, capture_output=True,
                        text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr
  return proc


def test_sigkill_then_resume_gives_identical_results(tmp_path):
  reference = tmp_path / "reference"
  _run(reference)

  workdir = tmp_path / "killed"
  proc = subprocess.Popen(_cmd(workdir), cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  # Kill once the second intervention is part-way: one finished, one partial.
  partial = workdir / "checkpoints" / "layer_norm" / "2"
  deadline = time.time() + 300
  while not partial.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  assert proc.poll() is None, "run finished before it could be killed"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (workdir / "summary.json").exists()

  resumed = _run(workdir)
  assert "[baseline] resumed from checkpoint after task 6/6" in resumed.stdout
  assert "[layer_norm] resumed from checkpoint after task" in resumed.stdout
  for name in ("metrics.csv", "summary.json"):
    assert (workdir / name).read_bytes() == (reference / name).read_bytes(), name
  leftovers = [p.name for p in workdir.iterdir() if p.name.startswith(".tmp-")]
  assert not leftovers


def test_workdir_with_another_config_is_refused(tmp_path):
  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "config.json").write_text('{"num_tasks": 99}')
  proc = subprocess.run(_cmd(workdir), cwd=ROOT, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 2
  assert "different config" in proc.stderr and "num_tasks" in proc.stderr
  assert (workdir / "config.json").read_text() == '{"num_tasks": 99}'  # not overwritten


def test_job_layout_fields_do_not_block_a_resume(tmp_path):
  workdir = tmp_path / "w"
  _run(workdir)
  (workdir / "run_info.json").unlink()  # as if killed before it was written
  proc = subprocess.run(_cmd(workdir) + ["--config.distributed.process_id=0"], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr
  assert "[layer_norm] resumed from checkpoint after task 6/6" in proc.stdout
  # The resume still records itself.
  info = json.loads((workdir / "run_info.json").read_text())
  assert info["unrecorded_start"] is True
  assert [r["layout"]["processes"] for r in info["resumes"]] == [1]


@pytest.mark.skipif(sharding.host_cores() < 2, reason="needs 2 cores to split differently")
def test_a_resumed_run_keeps_the_cpu_split_it_started_with(tmp_path):
  workdir = tmp_path / "w"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  # Started on one core: config.cpu_devices = 0 makes one device for the 2 runs.
  proc = _run(workdir, prefix=["taskset", "-c", "0"], env=env)
  assert "2 seeds on 1 cpu device," in proc.stdout
  assert json.loads((workdir / "run_info.json").read_text())["cpu_devices"] == 1
  # Resumed with every core (where 0 would now make 2 devices): still one.
  proc = _run(workdir, env=env)
  assert "2 seeds on 1 cpu device," in proc.stdout
  assert "[layer_norm] resumed from checkpoint after task 6/6" in proc.stdout
  # A workdir from before config.cpu_devices existed resumes on JAX's own devices.
  for name in ("config.json", "run_info.json"):
    saved = json.loads((workdir / name).read_text())
    del saved["cpu_devices"]
    (workdir / name).write_text(json.dumps(saved))
  assert "2 seeds on 1 cpu device," in _run(workdir, env=env).stdout
  fresh = _run(tmp_path / "fresh", "--config.num_tasks=1", env=env)
  assert "2 seeds on 2 cpu devices," in fresh.stdout  # what 0 makes now


def _config(cpu_devices=0, distributed=False):
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict({"cpu_devices": cpu_devices,
                                    "distributed": {"enabled": distributed}})


def test_a_resume_keeps_the_saved_split_of_a_one_process_run_only():
  from plastix import experiment  # pylint: disable=g-import-not-at-top
  saved = {"cpu_devices": 2}
  assert experiment._resumed_split(_config(), 3, saved) == 2  # the split it started with
  # A workdir from before run_info.json held a split: JAX's own devices, as it started.
  assert experiment._resumed_split(_config(), 3, {"versions": {}}) is None
  assert experiment._resumed_split(_config(), 3, {}) == 3  # run_info.json lost: as if new
  assert experiment._resumed_split(_config(cpu_devices=4), 4, saved) == 4  # set: as given
  # Resumed as a multi-process job: each process keeps JAX's own devices.
  assert experiment._resumed_split(_config(distributed=True), None, saved) is None


def test_a_resume_on_another_layout_is_announced():
  from plastix import experiment  # pylint: disable=g-import-not-at-top
  two_by_two = {"processes": 2, "run_devices": 4}
  one = {"processes": 1, "run_devices": 1}
  assert experiment._resume_note({"layout": two_by_two}, dict(two_by_two)) is None
  assert experiment._resume_note({}, one) is None  # layout not recorded
  note = experiment._resume_note({"layout": two_by_two}, one)
  assert note.startswith("warning: this run last ran on 2 processes, 4 devices and "
                         "resumes on 1 process, 1 device:")
  # Against the latest resume's layout, not the start's.
  moved = {"layout": one, "resumes": [{"layout": two_by_two}]}
  assert experiment._resume_note(moved, one).startswith(
      "warning: this run last ran on 2 processes, 4 devices and resumes on 1 process")
  assert experiment._resume_note(moved, dict(two_by_two)) is None
