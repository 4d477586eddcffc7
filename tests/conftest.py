"""Shared fixtures: a tiny config that compiles and runs in seconds."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from configs import shift  # pylint: disable=g-import-not-at-top


def tiny_config():
  """configs/shift.py shrunk to a few hundred examples and steps."""
  config = shift.get_config()
  config.num_examples = 200
  config.num_tasks = 4
  config.steps_per_task = 12
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
