"""A two-process job (jax.distributed on CPU) writes what a one-process run writes."""

import os
import socket
import subprocess
import sys

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
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def test_two_processes_match_one_process(tmp_path):
  single = tmp_path / "single"
  proc = subprocess.run([sys.executable, "-m", "experiments.synthetic", *ARGS,
                         f"--workdir={single}"], cwd=ROOT, env=_env(4),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]

  shared = tmp_path / "shared"
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "experiments.synthetic", *ARGS, f"--workdir={shared}",
       "--config.distributed.enabled=True",
       f"--config.distributed.coordinator_address=localhost:{port}",
       "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"],
      cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
  assert "results in" in outs[0][0] and "[baseline] task 2/2" in outs[0][0]
  # Only process 0 reports (the collectives library may print its own lines).
  assert "results in" not in outs[1][0] and "[baseline]" not in outs[1][0]
  for name in ("metrics.csv", "summary.json"):
    assert (shared / name).read_bytes() == (single / name).read_bytes(), name
