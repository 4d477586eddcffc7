"""A two-process job (jax.distributed on CPU) writes what a one-process run writes."""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np

from tests.conftest import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--config=configs/shift.py", "--config.num_examples=200", "--config.num_tasks=2",
        "--config.steps_per_task=10", "--config.batch_size=16", "--config.num_seeds=4",
        "--config.tasks_per_chunk=1", "--config.model.width=16",
        "--config.probes.batch_size=32", "--config.interventions=baseline"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=xla_flags(f"--xla_force_host_platform_device_count={devices}"))


def test_two_processes_match_one_process(tmp_path):
  single = tmp_path / "single"
  proc = subprocess.run([sys.executable, "-m", "experiments.synthetic", *ARGS,
                         f"--workdir={single}"], cwd=ROOT, env=_env(4),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]

  shared = tmp_path / "shared"
  outs = _two_processes(shared)
  assert "results in" in outs[0] and "[baseline] task 2/2" in outs[0]
  # Only process 0 reports (the collectives library may print its own lines).
  assert "results in" not in outs[1] and "[baseline]" not in outs[1]
  for name in ("metrics.csv", "summary.json"):
    assert (shared / name).read_bytes() == (single / name).read_bytes(), name
  # Each process wrote its own runs (two devices, one seed each); process 0 merged them.
  for i, runs in enumerate(([0, 1], [2, 3])):
    with np.load(shared / "shares" / "baseline" / f"process_{i}.npz") as share:
      np.testing.assert_array_equal(share["runs"], runs)
      assert share["train_loss"].shape == (2, 2)
  assert not (single / "shares").exists()  # one process: nothing to merge

  # As if killed after task 1: a job of 1 task leaves the checkpoint that a
  # 2-task job has after its first (nothing in the program depends on the task
  # count), so resumed as the 2-task job, each process restores its share of
  # task 1, trains task 2 and writes its share anew.
  partial = tmp_path / "partial"
  _two_processes(partial, "--config.num_tasks=1")
  saved = json.loads((partial / "config.json").read_text())
  (partial / "config.json").write_text(json.dumps(dict(saved, num_tasks=2)))
  moved = tmp_path / "moved"
  shutil.copytree(partial, moved)
  outs = _two_processes(partial)
  assert "resumed from checkpoint after task 1/2" in outs[0]
  assert "[baseline] task 2/2" in outs[0]
  for name in ("metrics.csv", "summary.json"):
    assert (partial / name).read_bytes() == (single / name).read_bytes(), name
  with np.load(partial / "shares" / "baseline" / "process_1.npz") as share:
    assert share["train_loss"].shape == (2, 2)

  # The same checkpoint resumed by one process of four devices, which trains
  # task 2 on the new layout: announced and recorded; with one run per device
  # in both layouts, the devices' programs and so the results are the same.
  proc = subprocess.run([sys.executable, "-m", "experiments.synthetic", *ARGS,
                         f"--workdir={moved}"], cwd=ROOT, env=_env(4),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "resumed from checkpoint after task 1/2" in proc.stdout
  assert "[baseline] task 2/2" in proc.stdout
  assert ("warning: this run last ran on 2 processes, 4 devices and resumes on 1 process, "
          "4 devices") in proc.stderr
  info = json.loads((moved / "run_info.json").read_text())
  assert info["layout"] == {"processes": 2, "run_devices": 4}
  assert [r["layout"] for r in info["resumes"]] == [{"processes": 1, "run_devices": 4}]
  assert info["resumes"][0]["versions"]["jax"] == info["versions"]["jax"]
  for name in ("metrics.csv", "summary.json"):
    assert (moved / name).read_bytes() == (single / name).read_bytes(), name


def _two_processes(workdir, *extra) -> list[str]:
  """Runs the job as two processes of two devices each; their stdouts."""
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "experiments.synthetic", *ARGS, *extra, f"--workdir={workdir}",
       "--config.distributed.enabled=True",
       f"--config.distributed.coordinator_address=localhost:{port}",
       "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"],
      cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
  return [out for out, _ in outs]
