r"""Throughput of plastix's engine against the usual ways of running the same study.

  python -m benchmarks.throughput [--steps=600] [--seeds=1,3,8] [--widths=256,32]
                                  [--rounds=7] [--modes=...] [--json_out=FILE]

Every mode trains the same workload: a depth-2 ReLU MLP on 784-pixel inputs,
Adam (lr 1e-3), batch 128, minibatches sampled uniformly from 1,000
Fashion-MNIST images whose labels are reset every 300 steps, `--steps` steps
per seed (4x as many for widths of 64 or less, whose steps are shorter; a
timed 1-seed run of the engine lasts 0.5-0.8 s on a 2-core CPU). Modes:

* ``engine``: plastix, jit of vmap over seeds of scan over tasks and steps,
  probes at every task end (``engine_noprobe``: the same without probes;
  ``engine_rows``: on one device, with ``parallel_runs = 2`` for an even seed
  count (two seeds side by side, the rest in sequence inside the same
  program) or 1 for an odd one (every seed in sequence), for more than 2
  seeds; only on request;
  ``engine_bf16``: with ``model.dtype = "bfloat16"``, for accelerators). The
  seeds are sharded over the devices as the experiment runner shards them: on
  a CPU over as many devices as `plastix.sharding.cpu_device_count` splits the
  host into for the seed count (``config.cpu_devices = 0``);
  ``engine_one_device`` is ``engine`` on one CPU device, with XLA's threads
  splitting each operation instead (CPU only).
* ``jax_loop``: the same flax model and optax optimizer, a jitted update per
  step called from a Python loop with numpy minibatches, seeds one after another.
* ``torch``: a PyTorch eager reference (same model, Adam, batch size and
  sampling; PyTorch's own initialisation, which does not change the speed),
  seeds one after another, on `--torch_device`, as the field's PyTorch
  codebases train: ``torch.optim.Adam``'s default update (on a CPU a loop over
  the parameters, on a GPU its ``foreach`` update); ``torch_fused``: the same
  with ``Adam(fused=True)``, PyTorch's fastest Adam. Both need
  ``pip install torch==2.13.0`` (the CPU build).
* ``matmul_floor``: only the step's eight matrix products (three forward, five
  backward, as the engine differentiates the same layers without their
  ReLUs) and an SGD update, seeds vmapped and sharded over the same devices
  as ``engine``'s: what XLA's float32 matmul kernels alone take for the
  workload, a practical bound on a JAX program of this model on this machine
  (its inputs are fixed, so it skips the gather of a minibatch; with bfloat16
  layers, `engine_bf16` can beat it). The "of floor" column is a mode's speed
  as a share of the floor's.
* ``torch_floor``: PyTorch's counterpart of ``matmul_floor`` (`torch_floor_step`),
  seeds one after another: the same eight products, eager, with autograd and an
  SGD update, on PyTorch's own float32 kernels. Its ratio to ``torch`` bounds
  what any program on PyTorch's kernels could gain over the reference by
  removing everything but the products; ``matmul_floor`` against it compares
  XLA's kernels with PyTorch's on the workload's shapes.

Method (`benchmarks.pairing`, shared with the RL benchmark). The modes of a
row group (one width and seed count) each run in a worker process of their
own, which builds its program or model once, trains the workload once to warm
up, and waits. Then come `--rounds` rounds: in each,
every worker trains the whole workload once, one after another, in an order
rotated from round to round and reversed in every other round
(`round_order`). Modes timed in the same round see the machine at about
the same speed, so a ratio between two modes is the median over rounds of the
ratio of their times in the same round (with its range over rounds); a mode's
seed-steps/s is from its median time. The probes' cost is the same paired
ratio of ``engine`` to ``engine_noprobe``. Other load on the machine breaks
the pairing (it slows PyTorch's OpenMP threads several times more than
XLA's): a round where some mode took over `pairing.UNSTEADY` times its fastest is
listed under the row group as unsteady.

The machine's dense float32 matmul peak (jnp.dot of 2048^2 matrices, the best
of a measurement before and after the cells) gives model-FLOPs utilisation:
MFU = seed-steps/s * 6 * B * sum(fan_in * fan_out) / peak (the usual
convention; it counts the first layer's input gradient, which is not
computed). Results print as a markdown table; each row group also goes to
stderr as soon as it is measured.

Task scaling, last: runs of `SCALING_TASKS` short tasks (one task a chunk)
one after another in one process count the compiled programs (more tasks
must compile none), and each count run again in a fresh process gives that
run's peak memory (`task_memory`), with the size of the metrics it returns.
"""

from __future__ import annotations

import os

# The probes' SVDs run through LAPACK in OpenBLAS on CPU; its idle threads spin
# and take cores from XLA's own threads, which measured ~30% slower training of
# a small MLP. One OpenBLAS thread costs the probes nothing measurable. Set
# before numpy or scipy load OpenBLAS; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import functools
import json
import statistics
import sys
import time

from absl import app
from absl import flags

from benchmarks import pairing

_MODE = flags.DEFINE_string("mode", None, "Internal: run one mode as a worker process.")
_STEPS = flags.DEFINE_integer(
    "steps", 600, "Training steps per seed (a multiple of 300); widths of 64 or less run "
    "4x as many.")
_SEEDS = flags.DEFINE_list("seeds", ["1", "3", "8"],
                           "Seed counts to measure (3 is the default study's).")
_WIDTHS = flags.DEFINE_list("widths", ["256", "32"], "MLP widths to measure.")
_MODES = flags.DEFINE_list(
    "modes", None, "Modes to measure (default: engine, engine_noprobe, engine_one_device on "
    "a CPU or engine_bf16 on an accelerator, jax_loop, torch, torch_fused, matmul_floor, "
    "torch_floor).")
_ROUNDS = flags.DEFINE_integer("rounds", 7, "Timed runs of every mode, in rotated order.")
_TORCH_DEVICE = flags.DEFINE_string(
    "torch_device", "auto", "Device of the PyTorch reference: cpu, cuda, or auto (cuda "
    "when PyTorch sees a GPU).")
_JSON_OUT = flags.DEFINE_string(
    "json_out", "", "Also write every mode's per-round times and worker info to this file.")
_WIDTH = flags.DEFINE_integer("width", 256, "Internal: width of one cell.")
_NSEEDS = flags.DEFINE_integer("num_seeds", 1, "Internal: seeds of one cell.")
_NTASKS = flags.DEFINE_integer("num_tasks", 2, "Internal: tasks of one task-memory run.")
WORKER_TIMEOUT_S = pairing.WORKER_TIMEOUT_S
_WORKER_TIMEOUT = flags.DEFINE_float(
    "worker_timeout_s", WORKER_TIMEOUT_S, "Seconds to wait for a worker's answer (its preparation or "
    "one run) before killing it and reporting the mode as failed.")

BATCH, DEPTH, STEPS_PER_TASK, EXAMPLES, INPUT_DIM, CLASSES = 128, 2, 300, 1000, 784, 10
MODES = ("engine", "engine_noprobe", "engine_one_device", "engine_rows", "engine_bf16",
         "jax_loop", "torch", "torch_fused", "matmul_floor", "torch_floor")
# Measured unless --modes says otherwise: engine_rows only on request (it was
# no faster than every seed side by side), engine_bf16 only on accelerators and
# engine_one_device only on a CPU.
DEFAULT_MODES = {"cpu": ("engine", "engine_noprobe", "engine_one_device", "jax_loop", "torch",
                         "torch_fused", "matmul_floor", "torch_floor"),
                 "accelerator": ("engine", "engine_noprobe", "engine_bf16", "jax_loop", "torch",
                                 "torch_fused", "matmul_floor", "torch_floor")}
ROWS = 2  # engine_rows: ROWS seeds side by side per device (see `_rows`).
# A mode ready to time: ``run()`` trains every seed once and returns its seconds.
Prepared = pairing.Prepared


def model_flops_per_step(width: int) -> float:
  """Forward + backward FLOPs of one step: 6 * batch * sum of fan_in * fan_out."""
  dims = [INPUT_DIM] + [width] * DEPTH + [CLASSES]
  return 6.0 * BATCH * sum(a * b for a, b in zip(dims, dims[1:]))


def _config(width: int, num_seeds: int, num_tasks: int):
  from configs import shift  # pylint: disable=g-import-not-at-top
  config = shift.get_config()
  config.model.width, config.model.depth = width, DEPTH
  config.num_seeds, config.num_tasks = num_seeds, num_tasks
  config.steps_per_task, config.batch_size = STEPS_PER_TASK, BATCH
  config.num_examples = EXAMPLES
  return config


def _images():
  """The workload's 1,000 images, flattened, as float32 in [0, 1] (numpy)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from plastix import data as data_lib  # pylint: disable=g-import-not-at-top
  ds = data_lib.load("fashion_mnist_small", "train")
  return ds.images[:EXAMPLES].reshape(EXAMPLES, -1).astype(np.float32) / 255.0


def split_devices(width: int, num_seeds: int, one_device: bool = False):
  """Splits a CPU host into devices for `num_seeds` runs as the experiment runner
  does (``config.cpu_devices = 0``), or into one device; before any JAX operation.

  Returns the seed mesh over every device where their count divides the seeds
  (as the runner would shard them), else None (every seed on one device).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from plastix import from_config, sharding  # pylint: disable=g-import-not-at-top
  config = _config(width, num_seeds, 1)
  config.cpu_devices = 1 if one_device else 0
  examples = from_config.load_dataset(config, "train").images[:EXAMPLES]
  count = from_config.cpu_devices(config, num_seeds, examples.nbytes)
  if count is not None:
    sharding.use_cpu_devices(count)
  devices = jax.device_count()
  return sharding.seed_mesh() if devices > 1 and num_seeds % devices == 0 else None


def prepare_engine(width: int, num_seeds: int, steps: int, probes: bool = True,
                   rows: bool = False, dtype: str = "float32",
                   one_device: bool = False) -> Prepared:
  """The compiled engine for one cell; each run trains every seed from fresh states.

  The seeds are split over every device (as the experiment runner does, a CPU
  host split into devices by `split_devices`) where their count divides the
  seeds; `rows` then sets ``parallel_runs`` to a multiple of the device count,
  as the runner requires.
  """
  mesh = split_devices(width, num_seeds, one_device)
  import jax  # pylint: disable=g-import-not-at-top
  from plastix import engine, from_config, sharding  # pylint: disable=g-import-not-at-top
  if one_device and jax.default_backend() != "cpu":
    raise ValueError(f"one device is a CPU mode; the default backend is "
                     f"{jax.default_backend()}")
  num_tasks = steps // STEPS_PER_TASK
  devices, sharded = jax.device_count(), mesh is not None
  config = _config(width, num_seeds, num_tasks)
  config.probes.enabled = probes
  config.parallel_runs = _rows(num_seeds, devices if sharded else 1) if rows else 0
  config.model.dtype = dtype
  data, num_classes = from_config.load_train_data(config)
  spec = from_config.engine_spec(config, num_classes, data.images.shape[1])
  hp = from_config.hparams(config)
  keys = from_config.seed_keys(config)
  info = {"devices": devices, "sharded": sharded, "parallel_runs": config.parallel_runs}
  if sharded:
    keys, data = sharding.shard_seeds(keys, mesh), sharding.replicate(data, mesh)
  init = lambda: engine.init_states(keys, data, hp, spec=spec)
  states = jax.block_until_ready(init())  # outside the timer: init_states compiles too
  start = time.perf_counter()
  compiled = engine.run_tasks.lower(states, data, hp, spec=spec, num_tasks=num_tasks).compile()
  compile_s = time.perf_counter() - start

  def run() -> float:
    states = jax.block_until_ready(init())  # the states are donated
    start = time.perf_counter()
    jax.block_until_ready(compiled(states, data, hp))
    return time.perf_counter() - start

  return Prepared(compile_s, run, info)


def prepare_jax_loop(width: int, num_seeds: int, steps: int) -> Prepared:
  """A jitted flax/optax step called from a Python loop, seeds one after another."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from plastix import models  # pylint: disable=g-import-not-at-top
  images = _images()
  model = models.MLP(hidden_sizes=(width,) * DEPTH, num_outputs=CLASSES)
  tx = optax.adam(1e-3)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, x, y):
    def loss_fn(p):
      logits = model.apply({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def one_seed(seed: int) -> float:
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
  opt_state = tx.init(params)
  start = time.perf_counter()
  jax.block_until_ready(step(params, opt_state, images[:BATCH], np.zeros(BATCH, np.int32)))
  compile_s = time.perf_counter() - start
  return Prepared(compile_s, lambda: sum(one_seed(seed) for seed in range(num_seeds)))


def _torch_device(torch) -> str:
  name = _TORCH_DEVICE.value
  if name == "auto":
    return "cuda" if torch.cuda.is_available() else "cpu"
  return name


def _torch_setup(torch):
  """``(device, sync, info)`` of the PyTorch modes: `--torch_device`, a function
  that waits for its queued work, and the version, threads and precision."""
  device = _torch_device(torch)
  sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
  return device, sync, pairing.torch_info(torch, device)


def prepare_torch(width: int, num_seeds: int, steps: int, fused: bool = False) -> Prepared:
  """The PyTorch eager reference, seeds one after another; with `fused`, Adam's
  single-kernel update (``torch.optim.Adam(fused=True)``) instead of its default
  loop over the parameters."""
  import torch  # pylint: disable=g-import-not-at-top
  device, sync, info = _torch_setup(torch)
  images = torch.from_numpy(_images()).to(device)

  def one_seed(seed: int) -> float:
    torch.manual_seed(seed)
    layers, fan_in = [], INPUT_DIM
    for _ in range(DEPTH):
      layers += [torch.nn.Linear(fan_in, width), torch.nn.ReLU()]
      fan_in = width
    net = torch.nn.Sequential(*layers, torch.nn.Linear(fan_in, CLASSES)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=fused)
    loss_fn = torch.nn.CrossEntropyLoss()
    sync()
    start = time.perf_counter()
    for t in range(steps):
      if t % STEPS_PER_TASK == 0:
        labels = torch.randint(0, CLASSES, (EXAMPLES,), device=device)
      idx = torch.randint(0, EXAMPLES, (BATCH,), device=device)
      loss = loss_fn(net(images[idx]), labels[idx])
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
    sync()
    return time.perf_counter() - start

  return Prepared(0.0, lambda: sum(one_seed(seed) for seed in range(num_seeds)), info)


def torch_floor_step(torch, width: int, seed: int = 0, device: str = "cpu"):
  """``(step, kernels)``: PyTorch's counterpart of `matmul_floor_program`, one seed.

  The same bias-free linear MLP, fixed inputs and loss ``|f(x)|^2 / 2``, run
  eagerly: ``step()`` is a forward pass (three products), ``torch.autograd.grad``
  (five: a kernel gradient per layer and an input gradient for every layer but
  the first, whose inputs need none) and an SGD update of `kernels`. What
  PyTorch's float32 kernels and its eager autograd alone take for the
  workload's products, without its loss, Adam or minibatch gather.
  """
  generator = torch.Generator().manual_seed(seed)
  dims = [INPUT_DIM] + [width] * DEPTH + [CLASSES]
  kernels = [(torch.randn(a, b, generator=generator) / a ** 0.5).to(device).requires_grad_()
             for a, b in zip(dims, dims[1:])]
  inputs = torch.rand(BATCH, INPUT_DIM, generator=generator).to(device)

  def step() -> None:
    x = inputs
    for w in kernels:
      x = x @ w
    grads = torch.autograd.grad(0.5 * x.square().sum(), kernels)
    with torch.no_grad():
      torch._foreach_add_(kernels, grads, alpha=-1e-6)  # pylint: disable=protected-access

  return step, kernels


def prepare_torch_floor(width: int, num_seeds: int, steps: int) -> Prepared:
  """`torch_floor_step` for every seed, one after another."""
  import torch  # pylint: disable=g-import-not-at-top
  device, sync, info = _torch_setup(torch)

  def one_seed(seed: int) -> float:
    step, _ = torch_floor_step(torch, width, seed, device)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
      step()
    sync()
    return time.perf_counter() - start

  return Prepared(0.0, lambda: sum(one_seed(seed) for seed in range(num_seeds)), info)


def matmul_floor_program(width: int, num_seeds: int, steps: int, mesh=None):
  """``(program, (kernels, inputs))``: the step's matrix products alone, for `steps` steps.

  A bias-free linear MLP of the workload's shapes with loss ``|f(x)|^2 / 2``,
  differentiated as the engine differentiates its dense layers
  (`plastix.matmul.kernel_layout_matmul`: three forward and five backward
  products; no input gradient) and updated by SGD, each seed on its own
  inputs (as each seed of the engine draws its own minibatches), seeds
  vmapped, steps in a `lax.scan`: what XLA's matmul kernels alone take for
  the workload. With a `mesh` (`plastix.sharding.seed_mesh`), the seeds are
  sharded over it.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  dims = [INPUT_DIM] + [width] * DEPTH + [CLASSES]
  keys = jax.random.split(jax.random.PRNGKey(0), len(dims))
  kernels = [jax.random.normal(k, (num_seeds, a, b)) / a ** 0.5
             for k, a, b in zip(keys, dims, dims[1:])]
  inputs = jax.random.uniform(keys[-1], (num_seeds, BATCH, INPUT_DIM))
  from plastix import matmul  # pylint: disable=g-import-not-at-top
  if mesh is not None:
    from plastix import sharding  # pylint: disable=g-import-not-at-top
    kernels, inputs = sharding.shard_seeds((kernels, inputs), mesh)

  def loss(ws, x):
    for w in ws:
      x = matmul.kernel_layout_matmul(x, w)
    return 0.5 * jnp.sum(jnp.square(x))  # nonlinear in the outputs: the head's product runs

  def one_seed(ws, x):
    def step(ws, _):
      grads = jax.grad(loss)(ws, x)
      return [w - 1e-6 * g for w, g in zip(ws, grads)], None
    return jax.lax.scan(step, ws, None, length=steps)[0]

  return jax.jit(jax.vmap(one_seed)), (kernels, inputs)


def prepare_matmul_floor(width: int, num_seeds: int, steps: int) -> Prepared:
  """`matmul_floor_program`, compiled, on the devices `engine` would use; each run
  trains every seed's kernels once."""
  mesh = split_devices(width, num_seeds)
  import jax  # pylint: disable=g-import-not-at-top
  program, args = matmul_floor_program(width, num_seeds, steps, mesh)
  start = time.perf_counter()
  compiled = program.lower(*args).compile()
  compile_s = time.perf_counter() - start

  def run() -> float:
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    return time.perf_counter() - start

  return Prepared(compile_s, run, {"devices": jax.device_count(), "sharded": mesh is not None})


def _rows(num_seeds: int, devices: int = 1) -> int:
  """engine_rows' ``parallel_runs``: `ROWS` runs side by side per device, or 1 where
  `ROWS` does not divide a device's seeds."""
  return devices * (ROWS if (num_seeds // devices) % ROWS == 0 else 1)


def prepare(mode: str, width: int, num_seeds: int, steps: int) -> Prepared:
  """The named mode's workload, built and ready to time."""
  if mode == "engine":
    return prepare_engine(width, num_seeds, steps)
  if mode == "engine_noprobe":
    return prepare_engine(width, num_seeds, steps, probes=False)
  if mode == "engine_one_device":
    return prepare_engine(width, num_seeds, steps, one_device=True)
  if mode == "engine_rows":
    return prepare_engine(width, num_seeds, steps, rows=True, one_device=True)
  if mode == "engine_bf16":
    return prepare_engine(width, num_seeds, steps, dtype="bfloat16")
  if mode == "jax_loop":
    return prepare_jax_loop(width, num_seeds, steps)
  if mode == "torch":
    return prepare_torch(width, num_seeds, steps)
  if mode == "torch_fused":
    return prepare_torch(width, num_seeds, steps, fused=True)
  if mode == "matmul_floor":
    return prepare_matmul_floor(width, num_seeds, steps)
  if mode == "torch_floor":
    return prepare_torch_floor(width, num_seeds, steps)
  raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")


# Task counts of the task-scaling measurement: 10x and 100x the first.
SCALING_TASKS = (2, 20, 200)


def scaling_config(width: int, num_seeds: int, num_tasks: int):
  """The task-scaling workload: `num_tasks` short tasks (30 steps), one task per chunk."""
  config = _config(width, num_seeds, num_tasks)
  config.steps_per_task, config.tasks_per_chunk = 30, 1
  return config


def _train_tasks(width: int, num_seeds: int, num_tasks: int):
  """The runner's whole run of `scaling_config`; returns its metrics (numpy, on
  the host)."""
  from plastix import from_config, runner  # pylint: disable=g-import-not-at-top
  config = scaling_config(width, num_seeds, num_tasks)
  data, num_classes = from_config.load_train_data(config)
  return runner.run_intervention(config, "baseline", data, num_classes)


def task_scaling(width: int, num_seeds: int, task_counts=SCALING_TASKS) -> dict:
  """Compilations and peak memory after runs of each of `task_counts` chunks, one
  after another in this process (the peak also counts what earlier runs left in
  the allocators; `task_memory` measures each count in a fresh process)."""
  from plastix import engine  # pylint: disable=g-import-not-at-top
  out = {}
  for num_tasks in task_counts:
    _train_tasks(width, num_seeds, num_tasks)
    out[f"compiled_programs_after_{num_tasks}_tasks"] = engine.run_tasks._cache_size()
    out[f"peak_rss_mib_after_{num_tasks}_tasks"] = round(pairing.peak_rss_mib(), 1)
  return out


def task_memory(width: int, num_seeds: int, num_tasks: int) -> dict:
  """Peak memory of this process after one run of `num_tasks` chunks (in a fresh
  process, the whole run's peak, compilation included), and the size of the
  metrics the run returns: all that grows with the task count."""
  import jax  # pylint: disable=g-import-not-at-top
  metrics = _train_tasks(width, num_seeds, num_tasks)
  metrics_mib = sum(m.nbytes for m in jax.tree.leaves(metrics)) / 2**20
  return {f"peak_rss_mib_fresh_process_{num_tasks}_tasks": round(pairing.peak_rss_mib(), 1),
          f"host_metrics_mib_{num_tasks}_tasks": round(metrics_mib, 3)}


# ----------------------------------------------------------------------------
# Worker processes and the paired rounds.


def _command(mode: str, width: int = 0, num_seeds: int = 1, steps: int | None = None,
             torch_device: str = "auto", num_tasks: int = 2) -> list[str]:
  """The command line of a process of this module measuring `mode`."""
  return [sys.executable, "-m", "benchmarks.throughput", f"--mode={mode}", f"--width={width}",
          f"--num_seeds={num_seeds}", f"--steps={steps or STEPS_PER_TASK}",
          f"--torch_device={torch_device}", f"--num_tasks={num_tasks}"]


def start_worker(mode: str, width: int, num_seeds: int, steps: int, torch_device: str = "auto",
                 timeout_s: float = WORKER_TIMEOUT_S) -> pairing.Worker:
  """The worker process of one mode of one cell (`pairing.Worker`)."""
  return pairing.Worker(mode, _command(mode, width, num_seeds, steps, torch_device), timeout_s)


def paired_rounds(modes, width: int, num_seeds: int, steps: int, rounds: int,
                  torch_device: str = "auto", pause_s: float = 0.2,
                  worker=start_worker) -> dict:
  """`pairing.paired_rounds` of one cell's modes: ``{mode: {"times": [...], **info}}``,
  or ``{"error": ...}`` for a mode that failed; ``worker(mode, width, num_seeds,
  steps, torch_device)`` starts a mode's worker."""
  return pairing.paired_rounds(
      modes, lambda mode: worker(mode, width, num_seeds, steps, torch_device), rounds, pause_s)


def _one_shot(mode: str, width: int = 0, num_seeds: int = 1, num_tasks: int = 2) -> dict:
  """A helper measurement (matmul peak, task scaling, task memory) in a process of its own."""
  return pairing.one_shot(_command(mode, width, num_seeds, num_tasks=num_tasks))


def _default_modes(backend: str) -> list[str]:
  return list(DEFAULT_MODES["cpu" if backend == "cpu" else "accelerator"])


HEADER = ("| width | seeds | steps per seed | mode | devices | seed-steps/s | vs torch "
          "| vs torch_fused | vs jax_loop | of floor | MFU | compile s | peak RSS MiB |")


def table_lines(width: int, num_seeds: int, steps: int, cells: dict, peak: float) -> list[str]:
  """The markdown rows of one row group: per mode its devices (where it reports
  them), seed-steps/s (from its median time), its paired speed relative to
  torch, torch_fused, jax_loop and matmul_floor, MFU, compile time and peak
  memory; then the probes' paired cost, where `engine` ran on several CPU
  devices its paired speed-up over `engine_one_device`, and the unsteady
  rounds (`pairing.unsteady_rounds`), if any."""
  lines = []
  for mode, c in cells.items():
    if "error" in c:
      lines.append(f"| {width} | {num_seeds} | {steps} | {mode} | | n/a ({c['error']}) "
                   "| | | | | | | |")
      continue
    rate = num_seeds * steps / statistics.median(c["times"])
    mfu = rate * model_flops_per_step(width) / peak

    def vs(ref: str, percent: bool = False, mode=mode) -> str:
      """`mode`'s paired speed relative to `ref` (plainly 1 for `ref` itself)."""
      if ref == mode:
        return "100%" if percent else "1.00x"
      return pairing.format_ratio(pairing.paired_ratio(cells, ref, mode), percent)

    lines.append(f"| {width} | {num_seeds} | {steps} | {mode} | {c.get('devices', '')} | "
                 f"{rate:.0f} | {vs('torch')} | {vs('torch_fused')} | "
                 f"{vs('jax_loop')} | {vs('matmul_floor', percent=True)} | {100 * mfu:.1f}% | "
                 f"{c['compile_s']:.2f} | {pairing.format_mib(c.get('peak_rss_mib'))} |")
  cost = pairing.paired_ratio(cells, "engine", "engine_noprobe")
  if cost is not None:
    median, low, high = (100 * (r - 1) for r in cost)
    lines.append(f"|  |  |  | probe cost | | {median:.1f}% of training time (median over "
                 f"rounds; {low:.1f} to {high:.1f}%) | | | | | | | |")
  split = pairing.paired_ratio(cells, "engine_one_device", "engine")
  if split is not None and cells["engine"].get("devices", 1) > 1:
    lines.append(f"|  |  |  | CPU split | | {pairing.format_ratio(split)} the speed of one "
                 f"device (median over rounds) | | | | | | | |")
  note = pairing.unsteady_note(cells)
  if note:
    lines.append(f"|  |  |  | unsteady rounds | | {note} | | | | | | | |")
  return lines


def main(argv):
  del argv
  if _MODE.value == "matmul":
    pairing.say(pairing.machine_info())
    return
  if _MODE.value == "scaling":
    pairing.say(task_scaling(_WIDTH.value, _NSEEDS.value))
    return
  if _MODE.value == "task_memory":
    pairing.say(task_memory(_WIDTH.value, _NSEEDS.value, _NTASKS.value))
    return
  if _MODE.value:
    pairing.serve(lambda: prepare(_MODE.value, _WIDTH.value, _NSEEDS.value, _STEPS.value))
    return

  unknown = sorted(set(_MODES.value or ()) - set(MODES))
  if unknown:
    pairing.refuse(f"--modes: unknown {', '.join(unknown)}; choose from {', '.join(MODES)}")
  if _STEPS.value < STEPS_PER_TASK or _STEPS.value % STEPS_PER_TASK:
    pairing.refuse(f"--steps: must be a positive multiple of {STEPS_PER_TASK} (got {_STEPS.value})")
  if _ROUNDS.value < 1:
    pairing.refuse(f"--rounds: must be at least 1 (got {_ROUNDS.value})")
  if not _WORKER_TIMEOUT.value > 0:
    pairing.refuse(f"--worker_timeout_s: must be positive (got {_WORKER_TIMEOUT.value})")
  for name, values in (("--widths", _WIDTHS.value), ("--seeds", _SEEDS.value)):
    if not values or not all(v.isdigit() and int(v) > 0 for v in values):
      pairing.refuse(f"{name}: must be positive integers (got {','.join(values)})")
  # JAX runs only in the workers (the parent would otherwise hold an
  # accelerator's memory). The peak is the best of two measurements, before and
  # after the cells: on a shared machine a single one can come out low, which
  # would inflate MFU.
  machine = _one_shot("matmul")
  modes = _MODES.value or _default_modes(machine["backend"])
  peak = machine["flops"]
  rows = []
  for width in map(int, _WIDTHS.value):
    steps = _STEPS.value * (4 if width <= 64 else 1)
    for num_seeds in map(int, _SEEDS.value):
      cell_modes = [m for m in modes if m != "engine_rows" or num_seeds > ROWS]
      cells = paired_rounds(cell_modes, width, num_seeds, steps, _ROUNDS.value,
                            _TORCH_DEVICE.value,
                            worker=functools.partial(start_worker,
                                                     timeout_s=_WORKER_TIMEOUT.value))
      rows.append((width, num_seeds, steps, cells))
      # Each row group as it is measured (against the first peak), so that a
      # later failure loses nothing.
      print("\n".join([f"measured width {width}, {num_seeds} seeds:",
                       *table_lines(width, num_seeds, steps, cells, peak)]),
            file=sys.stderr, flush=True)
      if _JSON_OUT.value:
        with open(_JSON_OUT.value, "w", encoding="utf-8") as f:
          json.dump({"machine": machine, "rows": rows}, f, indent=1)
  peak = max(peak, _one_shot("matmul")["flops"])

  torch_info = next((c for _, _, _, cells in rows for m, c in cells.items()
                     if m == "torch" and "torch" in c), {})
  print(pairing.machine_line(machine)
        + (f"; {pairing.torch_line(torch_info)}" if torch_info else "")
        + f"; dense f32 matmul peak {peak / 1e9:.1f} GFLOP/s; {_ROUNDS.value} rounds\n")
  print(HEADER)
  print("|" + "---|" * (HEADER.count("|") - 1))
  for row in rows:
    print("\n".join(table_lines(*row, peak)))
  width, num_seeds = int(_WIDTHS.value[0]), int(_SEEDS.value[-1])
  scaling = _one_shot("scaling", width, num_seeds)
  for num_tasks in SCALING_TASKS:
    scaling.update(_one_shot("task_memory", width, num_seeds, num_tasks))
  print(f"\ntask scaling ({', '.join(map(str, SCALING_TASKS))} tasks of the same chunk "
        "program; one process after another, then each in a fresh process): "
        + json.dumps(scaling))


if __name__ == "__main__":
  app.run(main)
