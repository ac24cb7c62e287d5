"""Multi-host training for real: 2 processes x 4 CPU devices on 127.0.0.1 (jax.distributed, Gloo).

The 2-process run (a (4, 2) mesh over both processes; process i reads shard i of 2, 4 examples
per step) is compared with a 1-process run on 8 devices, same mesh shape, that reads both shards
and concatenates them (multihost_util's --emulate_shards=2): both see the same global batch of 8
each step, so their losses and parameters agree up to float summation order (~1e-6). Without
the emulation the 1-process run would read other examples and nothing could be compared.
"""
import json
import pathlib
import shutil

import numpy as np
import pytest

import multihost_util as mh

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
  assert "train.batch_size = %BATCH_SIZE" in (two / "config.gin").read_text()
  state = two / "checkpoints" / str(STEPS) / "state"
  assert (state / "ocdbt.process_0").is_dir() and (state / "ocdbt.process_1").is_dir()
  assert mh.checkpoint_steps(two) == [3, STEPS]


@pytest.mark.parametrize("saved_by,resumed_by", [(2, 1), (1, 2)])
def test_checkpoint_moves_between_process_counts(tmp_path, saved_by, resumed_by):
  """A checkpoint written by 2 processes continues in 1 (8 devices), and the reverse; the
  continued run matches the uninterrupted one (same data stream, since 1 emulates 2)."""
  model_dir = copy_at_step(mh.reference(saved_by), tmp_path / "run", 3)
  # Decoding at the end needs the parameters gathered from every process to process 0.
  out = mh.train(model_dir, tmp_path, processes=resumed_by, devices=8 // resumed_by,
                 emulate_shards=2 if resumed_by == 1 else 0,
                 extra_args=["--gin.train.predict_examples=1"])
  assert f"resumed from {model_dir / 'checkpoints'}/3" in out
  assert out.count("held-out example 1") == 1, out  # printed by process 0 only
  got = mh.losses(model_dir)
  assert sorted(got) == list(range(1, STEPS + 1))
  assert_close_losses(got, mh.losses(mh.reference(resumed_by)), range(4, STEPS + 1))
  assert_close_params(model_dir, mh.reference(resumed_by), STEPS)
