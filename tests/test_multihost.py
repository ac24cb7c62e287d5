"""Multi-host training for real: 1, 2 and 4 processes on 127.0.0.1 (jax.distributed, Gloo),
8 CPU devices in all, one (4, 2) mesh.

On the token cache (runs/demo.gin's DATA_CACHE_DIR) global batch b is a pure function of
(seed, b): every process count reads the same global batches, so runs agree up to float
summation order (~1e-6), and a checkpoint moves between process counts (elastic). The tf.data
path reads shard i of N per process; a 1-process run sees the 2-process global batch only by
reading both shards and concatenating them (multihost_util's --emulate_shards=2).
"""
import json
import pathlib
import shutil

import numpy as np
import pytest

import multihost_util as mh

pytestmark = pytest.mark.slow  # every test here starts processes or trains

STEPS = mh.TRAIN_STEPS  # 6; checkpoints at 3 and 6


def assert_close_losses(got: dict, want: dict, steps, rtol=1e-5):
  for step in steps:
    assert step in got, f"step {step} missing from metrics: {sorted(got)}"
    assert got[step] == pytest.approx(want[step], rel=rtol), (step, got[step], want[step])


def assert_close_params(dir_a, dir_b, step, atol=1e-5):
  a, b = mh.saved_params(dir_a, step), mh.saved_params(dir_b, step)
  assert a.keys() == b.keys() and a
  for name in a:
    np.testing.assert_allclose(a[name], b[name], atol=atol, rtol=1e-4, err_msg=name)


def copy_at_step(src, dst, step) -> pathlib.Path:
  """A copy of a run folder as if it had stopped at `step`: later checkpoints and metrics go."""
  shutil.copytree(src, dst)
  for s in mh.checkpoint_steps(dst):
    if s > step:
      shutil.rmtree(dst / "checkpoints" / str(s))
  metrics = dst / "metrics.jsonl"
  keep = [line for line in metrics.read_text().splitlines()
          if json.loads(line)["step"] <= step]
  metrics.write_text("".join(line + "\n" for line in keep))
  return dst


def test_two_processes_train_like_one():
  one, two = mh.reference(1), mh.reference(2)
  assert_close_losses(mh.losses(two), mh.losses(one), range(1, STEPS + 1))
  assert mh.losses(one)[STEPS] < mh.losses(one)[1]  # it trains
  assert_close_params(two, one, STEPS)
  # Only process 0 writes metrics (losses() fails on a step logged twice), TensorBoard and
  # config.gin; both processes write the checkpoint (orbax: one ocdbt folder per process).
  assert len(list((two / "tb" / "train").iterdir())) == 1
  assert "DataConfig.batch_size = %BATCH_SIZE" in (two / "config.gin").read_text()
  state = two / "checkpoints" / str(STEPS) / "state"
  assert (state / "ocdbt.process_0").is_dir() and (state / "ocdbt.process_1").is_dir()
  assert mh.checkpoint_steps(two) == [3, STEPS]
  data_state = (two / "checkpoints" / str(STEPS) / "data").read_text() if (
      two / "checkpoints" / str(STEPS) / "data").is_file() else next(
          (two / "checkpoints" / str(STEPS) / "data").iterdir()).read_text()
  assert len(data_state.encode()) <= 1024 and json.loads(data_state)["next_batch"] == STEPS


@pytest.mark.parametrize("saved_by,resumed_by", [(2, 1), (1, 2), (2, 4)])
def test_checkpoint_moves_between_process_counts(tmp_path, saved_by, resumed_by):
  """Elastic: a checkpoint written by 2 processes continues in 1 (8 devices) and in 4 (2 devices
  each), and a 1-process one in 2; the continued run reads the same global batches and matches
  the uninterrupted run."""
  model_dir = copy_at_step(mh.reference(saved_by), tmp_path / "run", 3)
  # Decoding at the end needs the parameters gathered from every process to process 0.
  out = mh.train(model_dir, tmp_path, processes=resumed_by, devices=8 // resumed_by,
                 extra_args=["--gin.EvalConfig.predict_examples=1"])
  assert f"resumed from {model_dir / 'checkpoints'}/3" in out
  assert out.count("held-out example 1") == 1, out  # printed by process 0 only
  got = mh.losses(model_dir)
  assert sorted(got) == list(range(1, STEPS + 1))
  assert_close_losses(got, mh.losses(mh.reference(saved_by)), range(4, STEPS + 1))
  assert_close_params(model_dir, mh.reference(saved_by), STEPS)


def test_tf_data_path_two_processes_train_like_one(tmp_path):
  """Without a cache: process i reads shard i of 2; 1 process reading both shards (emulated)
  sees the same global batches."""
  tfdata = ["--gin.DATA_CACHE_DIR=None"]
  one, two = tmp_path / "one", tmp_path / "two"
  mh.train(one, tmp_path, processes=1, devices=8, emulate_shards=2, extra_args=tfdata,
           name="one")
  mh.train(two, tmp_path, processes=2, devices=4, extra_args=tfdata, name="two")
  assert_close_losses(mh.losses(two), mh.losses(one), range(1, STEPS + 1))
  assert_close_params(two, one, STEPS)
