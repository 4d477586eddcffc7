"""Checkpoints: a state saved by a version with other fields is refused in one line."""

from __future__ import annotations

import flax.struct
import jax.numpy as jnp
import numpy as np
import pytest

from plastix import checkpointing


@flax.struct.dataclass
class Old:
  params: jnp.ndarray
  target_params: jnp.ndarray


@flax.struct.dataclass
class New:
  params: jnp.ndarray
  learner_state: jnp.ndarray


def test_a_state_with_other_fields_is_refused_in_one_line(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path / "c"))
  ckpt.save(2, Old(jnp.ones(3), jnp.zeros(3)), {"loss": jnp.ones((1, 2))})
  with pytest.raises(ValueError, match=r"another version of plastix \(its state has "
                     r"target_params where this one has learner_state\)"):
    ckpt.restore(2, New(jnp.zeros(3), jnp.zeros(3)), {"loss": np.zeros((1, 2))})
  states, metrics = ckpt.restore(2, Old(jnp.zeros(3), jnp.ones(3)), {"loss": np.zeros((1, 2))})
  np.testing.assert_array_equal(states.params, 1.0)
  np.testing.assert_array_equal(states.target_params, 0.0)
  np.testing.assert_array_equal(metrics["loss"], 1.0)
  ckpt.close()
