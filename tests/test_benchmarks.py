"""The throughput benchmark's method: paired ratios, worker rounds, the matmul floor."""

import chex
import jax.numpy as jnp

from benchmarks import throughput


def test_paired_ratio_is_the_median_of_ratios_within_each_round():
  # The machine slows down in round 2: both modes take 3x longer there.
  cells = {"torch": {"times": [4.0, 12.0, 5.0]}, "engine": {"times": [2.0, 6.0, 2.0]},
           "jax_loop": {"error": "failed"}}
  median, low, high = throughput.paired_ratio(cells, "torch", "engine")
  assert (median, low, high) == (2.0, 2.0, 2.5)
  # Ratios of median times would mix rounds: 5.0 / 2.0.
  assert median != 5.0 / 2.0
  assert throughput.paired_ratio(cells, "torch", "jax_loop") is None
  assert throughput.paired_ratio(cells, "torch", "missing") is None


def test_model_flops_count_every_layer_forward_and_backward():
  # 6 * batch * (784 * 32 + 32 * 32 + 32 * 10), worked out by hand.
  assert throughput.model_flops_per_step(32) == 6 * 128 * (25088 + 1024 + 320)


def test_matmul_floor_is_the_steps_eight_products():
  program, (kernels, inputs) = throughput.matmul_floor_program(width=8, num_seeds=2, steps=3)
  chex.assert_shape(kernels, [(2, 784, 8), (2, 8, 8), (2, 8, 10)])
  chex.assert_shape(inputs, (2, 128, 784))  # every seed its own inputs, as in the engine
  text = program.lower(kernels, inputs).as_text()
  # Three forward products; backward, a kernel gradient per layer and an input
  # gradient for every layer but the first.
  products = [line for line in text.splitlines() if "dot_general" in line]
  assert len(products) == 8
  assert all("batching_dims" in line for line in products)  # each seed its own products
  out = program(kernels, inputs)
  chex.assert_trees_all_equal_shapes(out, kernels)
  assert all(bool(jnp.any(o != k)) for o, k in zip(out, kernels))  # the SGD updates ran


def test_workers_time_every_mode_in_every_round_and_report_failures():
  cells = throughput.paired_rounds(["matmul_floor", "no_such_mode"], width=8, num_seeds=2,
                                   steps=300, rounds=3, pause_s=0.0)
  floor = cells["matmul_floor"]
  assert len(floor["times"]) == 3 and all(t > 0 for t in floor["times"])
  assert floor["compile_s"] > 0 and floor["peak_rss_mib"] > 0
  assert "unknown mode 'no_such_mode'" in cells["no_such_mode"]["error"]
