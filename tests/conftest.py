"""Shared fixtures: a tiny config that compiles and runs in seconds."""

import os
import subprocess
import sys
import tempfile

# Many tests (and the command-line runs they start in subprocesses, which
# inherit the environment) compile the same small programs: share compiled
# programs through JAX's persistent cache, keyed by the program itself.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "plastix-tests-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
# The test programs are tiny, so compiling them costs far more than running
# them: with XLA's backend (LLVM) optimisations off, the suite takes about a
# third less time on a cold cache. Read when JAX starts its backend, so set
# here, before any test runs a computation; subprocesses inherit it.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

import jax  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

# In case a plugin imported jax before the variables above were set.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from configs import shift  # pylint: disable=g-import-not-at-top


def xla_flags(*flags: str) -> str:
  """The tests' XLA_FLAGS with `flags` added, for a subprocess's environment."""
  return " ".join([os.environ["XLA_FLAGS"], *flags])


def run_rl(args, timeout=600):
  """``python -m experiments.rl`` with `args`, from the repository root."""
  return subprocess.run([sys.executable, "-m", "experiments.rl", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)


def assert_bad_input(out, field: str, workdir) -> None:
  """A refused command: exit status 2, one line ``error: <field>...``, and
  nothing written to `workdir`."""
  assert out.returncode == 2, out.stderr[-2000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {field}"), out.stderr
  assert not os.path.exists(os.path.join(workdir, "config.json"))


def tiny_config():
  """configs/shift.py shrunk to a few hundred examples and steps."""
  config = shift.get_config()
  config.num_examples = 200
  config.num_tasks = 4
  config.steps_per_task = 12
  config.log_every_steps = 2  # divides 12 and the other step counts tests set
  config.batch_size = 16
  config.num_seeds = 2
  config.tasks_per_chunk = 2
  config.model.depth = 2
  config.model.width = 16
  config.probes.batch_size = 32
  return config


@pytest.fixture
def config():
  return tiny_config()
