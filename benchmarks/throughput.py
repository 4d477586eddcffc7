r"""Throughput of plastix's engine against the usual ways of running the same study.

  python -m benchmarks.throughput [--steps=600] [--seeds=1,8] [--widths=256,32]

Every cell runs in its own subprocess (so peak memory is its own) on the same
workload: a depth-2 ReLU MLP on 784-pixel inputs, Adam (lr 1e-3), batch 128,
minibatches sampled uniformly from 1,000 Fashion-MNIST images whose labels are
reset every 300 steps. Modes:

* ``engine``: plastix, jit of vmap over seeds of scan over tasks and steps,
  probes at every task end (``engine_noprobe``: the same without probes;
  ``engine_rows``: with ``parallel_runs = 2``, two seeds side by side and
  the rest in sequence inside the same program, for more than 2 seeds);
* ``jax_loop``: the same flax model and optax optimizer, a jitted update per
  step called from a Python loop with numpy minibatches, seeds one after another;
* ``torch``: a PyTorch eager reference (same model, Adam, batch size and
  sampling), seeds one after another; needs ``pip install torch==2.13.0``.

It also measures the machine's dense float32 matmul peak (jnp.dot of 2048^2
matrices) to report model-FLOPs utilisation: MFU = seed-steps/s * 6 * B *
sum(fan_in * fan_out) / peak. Each cell is the fastest of ``--rounds`` (3)
timed runs, each after a warm-up in its own process, taken in round-robin over
the modes of a row group; results print as a markdown table. The probes' cost
is measured apart, as the median ratio of ``--probe_pairs`` back-to-back runs
with and without probes in one process (see `run_probe_pairs`).
"""

from __future__ import annotations

import os

# The probes' SVDs run through LAPACK in OpenBLAS on CPU; its idle threads spin
# and take cores from XLA's own threads, which measured ~30% slower training of
# a small MLP. One OpenBLAS thread costs the probes nothing measurable. Set
# before numpy or scipy load OpenBLAS; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import json
import platform
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags

_MODE = flags.DEFINE_string("mode", None, "Internal: run one cell and print JSON.")
_STEPS = flags.DEFINE_integer(
    "steps", 1500, "Training steps per seed (multiple of 300); widths of 64 or less run "
    "4x as many, so that every timed run lasts a second or more.")
_SEEDS = flags.DEFINE_list("seeds", ["1", "8"], "Seed counts to measure.")
_WIDTHS = flags.DEFINE_list("widths", ["256", "32"], "MLP widths to measure.")
_WIDTH = flags.DEFINE_integer("width", 256, "Internal: width of one cell.")
_NSEEDS = flags.DEFINE_integer("num_seeds", 1, "Internal: seeds of one cell.")

BATCH, DEPTH, STEPS_PER_TASK, EXAMPLES, INPUT_DIM, CLASSES = 128, 2, 300, 1000, 784, 10
MODES = ("engine", "engine_noprobe", "engine_rows", "jax_loop", "torch")
ROWS = 2  # engine_rows: the engine with config.parallel_runs = ROWS (runs > ROWS only).
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed runs per cell, taken in round-robin.")
_PROBE_PAIRS = flags.DEFINE_integer(
    "probe_pairs", 5, "Paired runs with and without probes for the probe cost (0: skip).")


def model_flops_per_step(width: int) -> float:
  """Forward + backward FLOPs of one step: 6 * batch * sum of fan_in * fan_out."""
  dims = [INPUT_DIM] + [width] * DEPTH + [CLASSES]
  return 6.0 * BATCH * sum(a * b for a, b in zip(dims, dims[1:]))


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _config(width: int, num_seeds: int, num_tasks: int):
  from configs import shift  # pylint: disable=g-import-not-at-top
  config = shift.get_config()
  config.model.width, config.model.depth = width, DEPTH
  config.num_seeds, config.num_tasks = num_seeds, num_tasks
  config.steps_per_task, config.batch_size = STEPS_PER_TASK, BATCH
  config.num_examples = EXAMPLES
  return config


def _engine_program(width: int, num_seeds: int, steps: int, probes: bool = True,
                    parallel_runs: int = 0):
  """The compiled engine for one cell: ``(compile seconds, run)``, where
  ``run()`` trains every seed from fresh states and returns its seconds."""
  import jax  # pylint: disable=g-import-not-at-top
  from plastix import engine, from_config  # pylint: disable=g-import-not-at-top
  num_tasks = steps // STEPS_PER_TASK
  config = _config(width, num_seeds, num_tasks)
  config.probes.enabled = probes
  config.parallel_runs = parallel_runs
  data, num_classes = from_config.load_train_data(config)
  spec = from_config.engine_spec(config, num_classes, data.images.shape[1])
  hp = from_config.hparams(config)
  init = lambda: engine.init_states(from_config.seed_keys(config), data, hp, spec=spec)
  states = jax.block_until_ready(init())  # outside the timer: init_states compiles too
  start = time.perf_counter()
  compiled = engine.run_tasks.lower(states, data, hp, spec=spec, num_tasks=num_tasks).compile()
  compile_s = time.perf_counter() - start

  def run() -> float:
    states = jax.block_until_ready(init())  # the states are donated
    start = time.perf_counter()
    jax.block_until_ready(compiled(states, data, hp))
    return time.perf_counter() - start

  return compile_s, run


def run_engine(width: int, num_seeds: int, steps: int, probes: bool = True,
               parallel_runs: int = 0) -> dict:
  compile_s, run = _engine_program(width, num_seeds, steps, probes, parallel_runs)
  run()  # warm-up
  return {"compile_s": compile_s, "run_s": run()}


def run_probe_pairs(width: int, num_seeds: int, steps: int) -> dict:
  """The probes' share of training time, from `--probe_pairs` runs of the
  engine with and without probes alternated in one process: the median of the
  paired time ratios. Pairs taken back to back see the same machine speed, so
  this is far less noisy than comparing cells run in separate processes."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  _, with_probes = _engine_program(width, num_seeds, steps, probes=True)
  _, without = _engine_program(width, num_seeds, steps, probes=False)
  with_probes(), without()  # warm-up
  ratios = [with_probes() / without() for _ in range(_PROBE_PAIRS.value)]
  return {"probe_cost": float(np.median(ratios)) - 1.0,
          "probe_cost_range": [min(ratios) - 1.0, max(ratios) - 1.0]}


def run_jax_loop(width: int, num_seeds: int, steps: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from plastix import data as data_lib, models  # pylint: disable=g-import-not-at-top
  ds = data_lib.load("fashion_mnist_small", "train")
  images = ds.images[:EXAMPLES].reshape(EXAMPLES, -1).astype(np.float32) / 255.0
  model = models.MLP(hidden_sizes=(width,) * DEPTH, num_outputs=CLASSES)
  tx = optax.adam(1e-3)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      logits = model.apply({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def one_seed(seed, steps=steps):
    rng = np.random.default_rng(seed)
    params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, INPUT_DIM)))["params"]
    opt_state = tx.init(params)
    jax.block_until_ready(params)
    start = time.perf_counter()
    for t in range(steps):
      if t % STEPS_PER_TASK == 0:
        labels = rng.integers(0, CLASSES, EXAMPLES).astype(np.int32)
      idx = rng.integers(0, EXAMPLES, BATCH)
      params, opt_state, loss = step(params, opt_state, images[idx], labels[idx])
    jax.block_until_ready(loss)
    return time.perf_counter() - start

  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, INPUT_DIM)))["params"]
  start = time.perf_counter()
  jax.block_until_ready(step(params, tx.init(params), images[:BATCH], np.zeros(BATCH, np.int32)))
  compile_s = time.perf_counter() - start
  one_seed(0, STEPS_PER_TASK)  # warm-up
  return {"compile_s": compile_s, "run_s": sum(one_seed(seed) for seed in range(num_seeds))}


def run_torch(width: int, num_seeds: int, steps: int) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from plastix import data as data_lib  # pylint: disable=g-import-not-at-top
  ds = data_lib.load("fashion_mnist_small", "train")
  images = torch.from_numpy(
      ds.images[:EXAMPLES].reshape(EXAMPLES, -1).astype(np.float32) / 255.0)

  def one_seed(seed, steps=steps):
    torch.manual_seed(seed)
    layers, fan_in = [], INPUT_DIM
    for _ in range(DEPTH):
      layers += [torch.nn.Linear(fan_in, width), torch.nn.ReLU()]
      fan_in = width
    net = torch.nn.Sequential(*layers, torch.nn.Linear(fan_in, CLASSES))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    start = time.perf_counter()
    for t in range(steps):
      if t % STEPS_PER_TASK == 0:
        labels = torch.randint(0, CLASSES, (EXAMPLES,))
      idx = torch.randint(0, EXAMPLES, (BATCH,))
      loss = loss_fn(net(images[idx]), labels[idx])
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
    return time.perf_counter() - start

  one_seed(0, STEPS_PER_TASK)  # warm-up
  run_s = sum(one_seed(seed) for seed in range(num_seeds))
  return {"compile_s": 0.0, "run_s": run_s, "torch": torch.__version__,
          "torch_threads": torch.get_num_threads()}


def matmul_peak_flops(n: int = 2048, repeats: int = 30) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  jax.block_until_ready(dot(a, a))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(dot(a, a))
    best = min(best, time.perf_counter() - start)
  return 2.0 * n ** 3 / best


def task_scaling(width: int, num_seeds: int) -> dict:
  """Compilations and peak memory for a run of 2 chunks vs one of 20 chunks."""
  from plastix import engine, from_config, runner  # pylint: disable=g-import-not-at-top
  out = {}
  for num_tasks in (2, 20):
    config = _config(width, num_seeds, num_tasks)
    config.steps_per_task, config.tasks_per_chunk = 30, 1
    data, num_classes = from_config.load_train_data(config)
    runner.run_intervention(config, "baseline", data, num_classes)
    out[f"compiled_programs_after_{num_tasks}_tasks"] = engine.run_tasks._cache_size()
    out[f"peak_rss_mib_after_{num_tasks}_tasks"] = round(_peak_rss_mib(), 1)
  return out


def _cell(mode: str, width: int, num_seeds: int, steps: int) -> dict:
  env = dict(os.environ)
  cmd = [sys.executable, "-m", "benchmarks.throughput", f"--mode={mode}", f"--width={width}",
         f"--num_seeds={num_seeds}", f"--steps={steps}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
  if proc.returncode != 0:
    return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _rounds(modes, width: int, num_seeds: int, steps: int) -> dict:
  """Each mode's cell run `--rounds` times in round-robin (m1 m2 ... m1 m2 ...),
  so that a slow spell of a shared machine hits every mode alike; per mode the
  fastest run, its first compile time and its largest peak memory."""
  best = {}
  for _ in range(_ROUNDS.value):
    for mode in modes:
      c = _cell(mode, width, num_seeds, steps)
      old = best.get(mode)
      if old is None or "error" in old:
        best[mode] = c
      elif "error" not in c:
        best[mode] = dict(old, run_s=min(old["run_s"], c["run_s"]),
                          peak_rss_mib=max(old["peak_rss_mib"], c["peak_rss_mib"]))
  return best


def main(argv):
  del argv
  if _MODE.value:
    runners = {"engine": run_engine, "jax_loop": run_jax_loop, "torch": run_torch,
               "engine_noprobe": lambda w, s, n: run_engine(w, s, n, probes=False),
               "engine_rows": lambda w, s, n: run_engine(w, s, n, parallel_runs=ROWS),
               "probe_pairs": run_probe_pairs,
               "matmul": lambda w, s, n: {"flops": matmul_peak_flops()},
               "scaling": lambda w, s, n: task_scaling(w, s)}
    out = runners[_MODE.value](_WIDTH.value, _NSEEDS.value, _STEPS.value)
    out["peak_rss_mib"] = _peak_rss_mib()
    print(json.dumps(out))
    return

  # The peak is the best of two measurements, before and after the cells: on a
  # shared machine a single one can come out low, which would inflate MFU.
  peak = _cell("matmul", 0, 1, _STEPS.value)["flops"]
  rows = []
  for width in map(int, _WIDTHS.value):
    steps = _STEPS.value * (4 if width <= 64 else 1)
    for num_seeds in map(int, _SEEDS.value):
      modes = [m for m in MODES if m != "engine_rows" or num_seeds > ROWS]
      cells = _rounds(modes, width, num_seeds, steps)
      rate = {m: num_seeds * steps / c["run_s"] for m, c in cells.items() if "run_s" in c}
      pairs = _cell("probe_pairs", width, num_seeds, steps) if _PROBE_PAIRS.value else {}
      rows.append((width, num_seeds, steps, cells, rate, pairs))
      print(f"measured width {width}, {num_seeds} seeds", file=sys.stderr, flush=True)
  peak = max(peak, _cell("matmul", 0, 1, _STEPS.value)["flops"])

  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"dense f32 matmul peak {peak / 1e9:.1f} GFLOP/s; {_ROUNDS.value} rounds\n")
  print("| width | seeds | steps per seed | mode | seed-steps/s | vs torch | vs jax_loop | MFU "
        "| compile s | peak RSS MiB |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for width, num_seeds, steps, cells, rate, pairs in rows:
    for mode, c in cells.items():
      if "error" in c:
        print(f"| {width} | {num_seeds} | {steps} | {mode} | n/a ({c['error']}) | | | | | |")
        continue
      ratio = lambda ref, mode=mode: f"{rate[mode] / rate[ref]:.2f}x" if ref in rate else "n/a"
      mfu = rate[mode] * model_flops_per_step(width) / peak
      print(f"| {width} | {num_seeds} | {steps} | {mode} | {rate[mode]:.0f} | {ratio('torch')} | "
            f"{ratio('jax_loop')} | {100 * mfu:.1f}% | {c['compile_s']:.2f} | "
            f"{c['peak_rss_mib']:.0f} |")
    if "probe_cost" in pairs:
      low, high = (100 * c for c in pairs["probe_cost_range"])
      print(f"|  |  |  | probe cost | {100 * pairs['probe_cost']:.1f}% of training time "
            f"(median of {_PROBE_PAIRS.value} paired runs; {low:.1f} to {high:.1f}%) | | | | | |")
  scaling = _cell("scaling", int(_WIDTHS.value[0]), int(_SEEDS.value[-1]), _STEPS.value)
  print("\ntask scaling (2 vs 20 tasks of the same chunk program): " + json.dumps(scaling))


if __name__ == "__main__":
  app.run(main)
