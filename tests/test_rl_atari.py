"""Atari through ale-py: preprocessing, automatic resets, the run axis, backends,
the Nature torso, scores, and the entry point (a real ROM, resume, bad input)."""

from __future__ import annotations

import csv
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import assert_bad_input, run_rl

from configs import rl_atari
from plastix import models
from plastix.rl import atari
from plastix.rl import atari_scores
from plastix.rl import experiment
from plastix.rl import loop
from plastix.rl import results

# A few hundred agent steps of a real ROM (the default network and agent).
TINY = ["--config=configs/rl_atari.py:cpu", "--config.total_env_steps=400",
        "--config.eval_every_steps=200", "--config.eval_steps=200", "--config.num_envs=2",
        "--config.replay.learning_starts=64", "--config.replay.buffer_size=400",
        "--config.replay.batch_size=8", "--config.td.target_update_period=10",
        "--config.exploration.eps_decay_steps=200", "--config.probes.batch_size=16",
        "--config.windows_per_chunk=2"]


_run = run_rl


def _rollout(env, key, steps, policy=None):
  """`steps` vector steps of uniform-random actions from a reset: (obs0, outs, obs)."""
  def one(key):
    obs, state = env.reset(jax.random.fold_in(key, 0))

    def body(carry, k):
      obs, state = carry
      actions = jax.random.randint(k, (env.num_envs,), 0, env.info.num_actions)
      new, state, out = env.step(k, state, actions)
      return (new, state), (out, new, state.lives)

    return obs, jax.lax.scan(body, (obs, state), jax.random.split(key, steps))[1]

  if env.num_runs == 1:
    return jax.jit(one)(key)
  return jax.jit(jax.vmap(one))(jax.random.split(key, env.num_runs))


def test_game_names():
  assert atari.parse_env_name("Pong") == ("pong",)
  assert atari.parse_env_name("ALE/Pong-v5") == ("pong",)
  assert atari.parse_env_name("MsPacman+space_invaders") == ("ms_pacman", "space_invaders")
  assert atari.parse_env_name("SpaceInvaders") == ("space_invaders",)
  with pytest.raises(ValueError, match="^env_name: unknown Atari game 'Pongg'"):
    atari.parse_env_name("Pongg")


def test_preprocessing_shapes_and_dtypes():
  env = atari.AtariEnv("Breakout", 2)
  assert env.info.obs_shape == (84, 84, 4) and env.info.num_actions == 4  # minimal set
  obs0, (out, obs, lives) = _rollout(env, jax.random.key(0), 30)
  chex.assert_shape(obs0, (2, 84, 84, 4))
  chex.assert_shape(obs, (30, 2, 84, 84, 4))
  chex.assert_type([obs0, obs, out.next_obs, out.reward, out.score], jnp.float32)
  chex.assert_type([out.terminated, out.truncated, out.valid, out.episode_end], jnp.bool_)
  obs = np.asarray(obs)
  assert obs.min() >= 0 and obs.max() <= 255 and np.array_equal(obs, np.round(obs))
  assert obs.max() > 0  # real frames
  # The stack: frame k of step t+1 is frame k+1 of step t (no reset in between).
  np.testing.assert_array_equal(obs[1:, :, :, :, :3], obs[:-1, :, :, :, 1:])
  # Replay's uint8 storage is exact.
  stored = loop._stored(jnp.asarray(obs))  # pylint: disable=protected-access
  assert stored.dtype == jnp.uint8
  np.testing.assert_array_equal(np.asarray(loop._observations(stored)), obs)  # pylint: disable=protected-access
  assert int(lives[0, 0]) == 5


def test_automatic_reset_step_is_invalid_and_lives_are_terminal_for_learning():
  env = atari.AtariEnv("Breakout", 2)
  _, (out, _, lives) = _rollout(env, jax.random.key(1), 400)
  valid, end = np.asarray(out.valid), np.asarray(out.episode_end)
  term, score = np.asarray(out.terminated), np.asarray(out.score)
  lives = np.asarray(lives)
  assert end.sum() >= 2, "random Breakout games last about 200 steps"
  # The step after each game's end is the automatic reset: invalid, score 0.
  np.testing.assert_array_equal(~valid[1:], end[:-1])
  assert valid[0].all() and (score[~valid] == 0).all()
  # Every lost life is terminal for learning; the game goes on.
  lost = (lives[1:] < lives[:-1]) & valid[1:]
  np.testing.assert_array_equal(term[1:], lost | end[1:])
  assert (term & ~end).any()
  # Without episodic life only the game's end is terminal.
  plain = atari.AtariEnv("Breakout", 2, episodic_life=False)
  _, (out2, _, _) = _rollout(plain, jax.random.key(1), 400)
  np.testing.assert_array_equal(np.asarray(out2.terminated), np.asarray(out2.episode_end))
  np.testing.assert_array_equal(np.asarray(out2.score), score)  # same seeds, same games


def test_clipped_reward_is_the_sign_of_the_score():
  env = atari.AtariEnv("Breakout", 2)
  _, (out, _, _) = _rollout(env, jax.random.key(2), 300)
  np.testing.assert_array_equal(np.asarray(out.reward), np.sign(np.asarray(out.score)))
  assert np.asarray(out.score).max() >= 1


def test_runs_fold_into_one_vector_env_and_the_backends_agree():
  key = jax.random.key(3)
  both = atari.AtariEnv("Breakout", 2, num_runs=2)
  _, (out, obs, _) = _rollout(both, key, 60)
  host = atari.AtariEnv("Breakout", 2, num_runs=2, backend="host")
  _, (out_h, obs_h, _) = _rollout(host, key, 60)
  np.testing.assert_array_equal(np.asarray(obs), np.asarray(obs_h))
  np.testing.assert_array_equal(np.asarray(out.score), np.asarray(out_h.score))
  # Run 1 of the vmapped pair is that run alone: its own environments and seeds.
  alone = atari.AtariEnv("Breakout", 2, num_runs=1)
  _, (out1, obs1, _) = _rollout(alone, jax.random.split(key, 2)[1], 60)
  np.testing.assert_array_equal(np.asarray(obs)[1], np.asarray(obs1))
  np.testing.assert_array_equal(np.asarray(out.score)[1], np.asarray(out1.score))
  assert not np.array_equal(np.asarray(obs)[0], np.asarray(obs)[1])


def test_a_sequence_switches_game_every_n_steps():
  env = atari.AtariEnv("Pong+Breakout", 2, switch_every=8, episodic_life=False)
  assert env.info.num_actions == atari.FULL_ACTIONS
  obs0, (out, obs, _) = _rollout(env, jax.random.key(4), 10)
  games = np.asarray(out.game)
  np.testing.assert_array_equal(games, [0, 0, 0, 0, 1, 1, 1, 1, 0, 0])
  trunc = np.asarray(out.truncated)
  assert trunc[[3, 7]].all() and not trunc[[0, 1, 2, 4, 5, 6, 8, 9]].any()
  assert np.asarray(out.valid).all()
  # After a switch the agent sees the new game's first frames; s' is the old game's.
  assert not np.array_equal(np.asarray(obs[3]), np.asarray(out.next_obs[3]))
  np.testing.assert_array_equal(np.asarray(obs[2]), np.asarray(out.next_obs[2]))
  assert float(np.asarray(obs0).max()) > 0


def test_nature_cnn_shapes_and_parameter_count():
  model = models.create({"name": "nature_cnn"}, 6, (84, 84, 4))
  x = jax.random.uniform(jax.random.key(0), (3, 84, 84, 4), maxval=255.0)
  params, state = models.init_variables(model, jax.random.key(1), x[:1])
  count = sum(p.size for p in jax.tree.leaves(params))
  # 8*8*4*32+32, 4*4*32*64+64, 3*3*64*64+64, 7*7*64*512+512, 512*6+6.
  assert count == 8224 + 32832 + 36928 + 1606144 + 3078
  forward = models.forward_with_features(model, params, x, state)
  assert [h.shape for h in forward.preactivations] == [
      (3, 20, 20, 32), (3, 9, 9, 64), (3, 7, 7, 64), (3, 512)]
  # Inputs are scaled by 1/255 first; the patches convolution is the same function.
  scaled = models.create({"name": "nature_cnn", "input_scale": 1.0}, 6, (84, 84, 4))
  np.testing.assert_allclose(scaled.apply({"params": params}, x / 255.0), forward.logits,
                             rtol=1e-5, atol=1e-5)
  fast = models.patches_model(model)
  np.testing.assert_allclose(fast.apply({"params": params}, x), forward.logits,
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="at least 36x36"):
    models.create({"name": "nature_cnn"}, 6, (10, 10, 4))


def test_invalid_transitions_are_left_out_of_the_loss():
  x = jnp.array([1.0, 3.0, 100.0, 5.0])
  assert float(loop._mean(x, jnp.array([1.0, 1.0, 0.0, 1.0]))) == 3.0  # pylint: disable=protected-access
  assert float(loop._mean(x, None)) == 27.25  # pylint: disable=protected-access
  assert float(loop._mean(x, jnp.zeros(4))) == 0.0  # pylint: disable=protected-access


def test_human_normalised_scores_by_hand():
  assert atari_scores.normalized("pong", -20.7) == 0.0
  assert atari_scores.normalized("pong", 14.6) == pytest.approx(1.0)
  # Breakout: random 1.7, human 30.5: (16.1 - 1.7) / 28.8 = 0.5.
  assert atari_scores.normalized("breakout", 16.1) == pytest.approx(0.5)
  assert atari_scores.normalized("not_a_game", 1.0) is None
  # The 57 games of the benchmark, each a ROM of ale-py.
  assert len(atari_scores.ATARI_57) == 57
  assert set(atari_scores.ATARI_57) <= set(atari._rom_ids())  # pylint: disable=protected-access
  assert atari_scores.normalized("pong", float("nan")) is None
  rows = [{"intervention": "baseline", "seed": s, "env_steps": 10, "episode_return": r,
           "eval_return": e, "eval_episodes": 1.0, "diverged_step": -1}
          for s, r, e in ((0, -20.0, -19.0), (1, -18.0, -17.0))]
  s = results.summarize(rows, ["baseline"],
                        lambda v: atari_scores.normalized("pong", v))["baseline"]
  assert s["final_return"] == -19.0 and s["final_eval_return"] == -18.0
  assert s["final_return_hns"] == pytest.approx((-19.0 + 20.7) / 35.3)
  assert s["final_eval_return_hns"] == pytest.approx((-18.0 + 20.7) / 35.3)
  table = results.format_table({"baseline": s}).splitlines()
  assert "final_return_hns" in table[0] and "-19.00 ± 1.00" in table[1]
  one = {**s, "num_seeds": 2, "num_diverged": 1}  # one healthy seed: no spread
  assert "±" not in results.format_table({"baseline": one}).splitlines()[1]


def test_tiny_atari_run_from_the_command_line(tmp_path):
  workdir = tmp_path / "run"
  out = _run([f"--workdir={workdir}", "--config.env_name=ALE/Breakout-v5", *TINY,
              "--config.interventions=layer_norm"])
  assert out.returncode == 0, out.stderr[-3000:]
  for name in ("config.json", "metrics.csv", "summary.json", "returns.png", "probes.png"):
    assert (workdir / name).exists(), name
  rows = list(csv.DictReader(open(workdir / "metrics.csv")))
  assert len(rows) == 2  # 2 windows
  assert {int(r["env_steps"]) for r in rows} == {200, 400}
  for r in rows:
    for column in ("loss", "td_error", "dead_fraction", "srank", "param_norm"):
      assert np.isfinite(float(r[column])), (column, r)
    assert float(r["num_episodes"]) >= 0 and "eval_return" in r
  summary = json.loads((workdir / "summary.json").read_text())
  assert set(summary) == {"layer_norm"}
  for key in ("final_return", "auc_return", "final_eval_return", "final_return_hns"):
    assert key in summary["layer_norm"], key
  assert "final_return_hns" in out.stdout


def _small_config(**overrides):
  config = rl_atari.get_config("cpu")
  config.env_name = "Breakout"
  config.interventions = "baseline"
  config.num_envs, config.total_env_steps, config.eval_every_steps = 2, 120, 40
  config.eval_steps, config.windows_per_chunk = 40, 1
  config.replay.learning_starts, config.replay.buffer_size = 20, 200
  config.replay.batch_size, config.td.target_update_period = 4, 5
  config.probes.batch_size = 8
  config.model.cnn_channels, config.model.width = (4, 4, 4), 16
  for k, v in overrides.items():
    config[k] = v
  return config


def _stop_after_first_chunk(line):
  if "env steps 40/120" in line:
    raise KeyboardInterrupt


def test_resume_after_a_kill_gives_the_same_results(tmp_path):
  prepared = experiment.prepare(_small_config())
  whole = experiment.run(prepared, str(tmp_path / "whole"), progress=lambda line: None)
  with pytest.raises(KeyboardInterrupt):
    experiment.run(prepared, str(tmp_path / "cut"), progress=_stop_after_first_chunk)
  lines = []
  resumed = experiment.run(prepared, str(tmp_path / "cut"), progress=lines.append)
  assert any("resumed from checkpoint after 40 env steps" in line for line in lines)
  assert whole == resumed
  read = lambda p: list(csv.DictReader(open(p)))
  assert read(tmp_path / "whole" / "metrics.csv") == read(tmp_path / "cut" / "metrics.csv")


@pytest.mark.parametrize("override, field", [
    ("--config.env_name=Pongg", "env_name:"),
    ("--config.atari.backend=gpu", "atari.backend:"),
    ("--config.env_name=Pong+Breakout", "eval_steps:"),
    ("--config.atari.noop_max=-1", "atari.noop_max:"),
    ("--config.cpu_devices=2", "cpu_devices: the atari suite"),
])
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, override, field):
  out = _run([f"--workdir={tmp_path / 'bad'}", *TINY, override], timeout=120)
  assert_bad_input(out, field, tmp_path / "bad")
