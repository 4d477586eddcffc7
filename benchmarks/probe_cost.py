r"""What each probe costs, relative to one training step of the default model.

  python -m benchmarks.probe_cost

The default study's model (a 2x256 ReLU MLP on 784-pixel inputs, Adam, batch
128) and probe batch (512 images); each probe is jitted alone and timed as the
fastest of several calls after a warm-up, then divided by the time of one
training step (one task's 300 steps and its switch to the next task, timed
as the engine runs them with probes off, divided by 300). The every-task set
runs once per task (300 steps by default), so its share of a run is its cost
in steps divided by 300; an expensive probe run every N tasks costs
``steps / (300 N)``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import dataclasses
import functools

from absl import app
from absl import flags
import jax

from benchmarks import timing

_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per probe (the fastest counts).")


def main(argv):
  del argv
  from configs import shift  # pylint: disable=g-import-not-at-top
  from plastix import engine, from_config, probe_suite  # pylint: disable=g-import-not-at-top

  config = shift.get_config()
  data, num_classes = from_config.load_train_data(config)
  spec = from_config.engine_spec(config, num_classes, data.images.shape[1], data.image_shape)
  hp = from_config.hparams(config)
  state = engine.init_state(spec, hp, data, jax.random.PRNGKey(0))
  steps = spec.steps_per_task
  # One task as the engine trains it (its step scan and task switch), probes off.
  no_probes = dataclasses.replace(spec, run_probes=False)
  # The whole state and metrics come back, so that XLA drops nothing of the task
  # (the next task's labels, the per-step losses).
  train = jax.jit(lambda s: engine.run_task(no_probes, hp, data, s))
  step_s = timing.best_time(train, state, repeats=_REPEATS.value) / steps

  every_task = jax.jit(lambda s: engine.probe(spec, s.params, s.task, data, s.model_state,
                                              s.reference_means))
  # With probes on, the engine also takes the drift probe's reference (per-unit
  # mean preactivations on the next task's probe batch) at every task switch.
  # Jitted apart, so that XLA cannot merge its forward pass with the probes'
  # (which it may do in the engine, where the batch's images are the same).
  reference_means = engine._reference_means  # pylint: disable=protected-access
  drift_reference = jax.jit(lambda s: reference_means(spec, s.params, s.model_state, s.task,
                                                      data))
  timings = {"every-task set": timing.best_time(every_task, state, repeats=_REPEATS.value),
             "drift reference": timing.best_time(drift_reference, state,
                                                 repeats=_REPEATS.value)}
  for name in probe_suite.EXPENSIVE:
    settings = dataclasses.replace(spec.probe_settings, **{f"{name}_every": 1})
    probe_spec = dataclasses.replace(spec, probe_settings=settings)
    fn = jax.jit(functools.partial(engine.expensive_probes, probe_spec, hp, data, task_number=0))
    timings[name] = timing.best_time(fn, state, repeats=_REPEATS.value)

  s = spec.probe_settings
  notes = {
      "every-task set": "dead/dormant/linearized units, preactivation stats and drift, "
                        "ranks, singular values, entropy, norms, layer gradient norms",
      "drift reference": "per-unit mean preactivations on the next task's probe batch, "
                         "at every task switch (with the every-task set)",
      "sharpness": f"{s.hessian_iters} Hessian-vector products on {config.probes.batch_size} "
                   "examples",
      "ntk": f"empirical NTK on {s.ntk_examples} examples, trace over {num_classes} outputs",
      "alignment": f"per-example gradients of {s.alignment_examples} examples",
      "plasticity": f"{s.plasticity_targets} target(s) x {s.plasticity_steps} steps, "
                    "probed and fresh network",
  }
  print(f"one training step: {1e3 * step_s:.2f} ms (batch {config.batch_size}, "
        f"width {config.model.width}, {jax.devices()[0].platform})\n")
  print("| probe | what | ms | training steps | share of a run if every task |")
  print("|---|---|---|---|---|")
  for name, t in timings.items():
    print(f"| {name} | {notes[name]} | {1e3 * t:.1f} | {t / step_s:.1f} | "
          f"{100 * t / (step_s * steps):.1f}% |")


if __name__ == "__main__":
  app.run(main)
