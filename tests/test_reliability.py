"""Never lose a run: the non-finite guard, the run-folder lock, and kill -9 at any moment."""
import json
import os
import pathlib
import signal
import socket
import subprocess
import time

import jax
import numpy as np
import pytest

from conftest import tiny_config

import cli_util
import multihost_util as mh
from t5lite.store import run_lock as lock
from t5lite.training import optim
from t5lite.training import state as train_state
from t5lite.training import step as train_step_lib
from t5lite.training import loop as train_loop
from t5lite.runtime import partitioning
from test_train import read_losses, run_train

TINY = tiny_config(vocab_size=128, num_heads=2, mlp_dim=32, num_encoder_layers=1,
                   num_decoder_layers=1)


# ----------------------------------------------------------------------------- the guard


def _batch(rng, weights_value=1.0):
  tokens = rng.integers(2, TINY.vocab_size, (8, 8)).astype(np.int32)
  return {"encoder_input_tokens": tokens, "decoder_target_tokens": tokens,
          "decoder_input_tokens": np.pad(tokens[:, :-1], ((0, 0), (1, 0))),
          "decoder_loss_weights": np.full(tokens.shape, weights_value, np.float32)}


@pytest.mark.slow
def test_nonfinite_step_is_skipped_and_counted():
  """A NaN loss leaves parameters and optimizer state as they were, advances the step and counts
  the skip; the next good step applies again and ends the run of skips."""
  mesh = partitioning.make_mesh((4, 2))
  schedule = optim.learning_rate_schedule("constant", peak=1e-2)
  tx = optim.make_optimizer("adamw", schedule=schedule)
  rng = np.random.default_rng(0)
  with partitioning.activate(mesh):
    state, shardings, model = train_state.create_train_state(TINY, tx, mesh, seed=0)
    step = train_step_lib.jit_train_step(model, tx, schedule, shardings, mesh, z_loss=1e-4)
    state, m = step(state, partitioning.host_to_global(_batch(rng), mesh))
    before = jax.device_get((state.params, state.opt_state))
    state, m = step(state, partitioning.host_to_global(_batch(rng, np.nan), mesh))
    after = jax.device_get((state.params, state.opt_state))
    assert int(state.step) == 2
    assert not np.isfinite(float(m["loss"]))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
      np.testing.assert_array_equal(a, b)
    guard = jax.device_get(state.guard)
    assert (guard["skipped"], guard["consecutive"], guard["first_bad"]) == (1, 1, 2)
    assert int(m["skipped_steps"]) == 1
    state, m = step(state, partitioning.host_to_global(_batch(rng), mesh))
    guard = jax.device_get(state.guard)
    assert (guard["skipped"], guard["consecutive"], guard["first_bad"]) == (1, 0, -1)
    changed = [not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(after[0]), jax.tree.leaves(jax.device_get(state.params)))]
    assert all(changed)


def test_all_finite_is_exact():
  """One inf or NaN anywhere (a leaf, the loss) makes the guard's check false; finite extremes
  (float32's largest, a denormal, -0) do not."""
  tree = {"a": np.array([3.4e38, -3.4e38, 1e-45, -0.0], np.float32),
          "b": np.ones((3, 2), np.float32)}
  check = jax.jit(train_step_lib._all_finite)
  assert bool(check(np.float32(1.0), tree))
  for bad in (np.inf, -np.inf, np.nan):
    assert not bool(check(np.float32(bad), tree))
    for name, index in (("a", (0,)), ("a", (3,)), ("b", (2, 1))):
      broken = {k: v.copy() for k, v in tree.items()}
      broken[name][index] = bad
      assert not bool(check(np.float32(1.0), broken)), (bad, name, index)


def test_guard_check_is_not_copied_into_each_where():
  """The step's compiled program computes the guard's all-finite check once: were XLA to copy
  its per-leaf ops into each parameter's and moment's `where`, the ops to compile (and the
  compile time) would grow as leaves x leaves (T5 1.1 small: 10 s -> 29 s on CPU)."""
  mesh = partitioning.make_mesh((1, 1), devices=jax.devices()[:1])
  schedule = optim.learning_rate_schedule("constant", peak=1e-2)
  tx = optim.make_optimizer("adamw", schedule=schedule)
  with partitioning.activate(mesh):
    state, shardings, model = train_state.create_train_state(TINY, tx, mesh, seed=0)
    step = train_step_lib.jit_train_step(model, tx, schedule, shardings, mesh, z_loss=1e-4)
    batch = partitioning.host_to_global(_batch(np.random.default_rng(0)), mesh)
    hlo = step.lower(state, batch).compile().as_text()
  leaves = len(jax.tree.leaves(state.params))
  assert hlo.count(" and(") < 2 * leaves  # 20 for 29 leaves; 2,811 when copied into each where


def _saved_params_finite(model_dir, step):
  return all(np.all(np.isfinite(v)) for v in mh.saved_params(model_dir, step).values())


@pytest.mark.slow
def test_divergence_stops_and_keeps_the_good_checkpoints(tmp_path):
  """10 good steps (checkpoints 5 and 10, keep 3), then the same run continues at a learning
  rate of 1e9: every later step is non-finite, so no checkpoint is written while they last, the
  run stops after max_consecutive_skips of them naming the first bad step and checkpoint 10."""
  d = str(tmp_path / "run")
  args = ["--gin.Checkpointer.save_period=5", "--gin.Checkpointer.keep=3",
          "--gin.LoopConfig.max_consecutive_skips=5"]
  run_train(d, 10, *args)
  with pytest.raises(train_loop.DivergedError) as e:
    run_train(d, 40, *args, "--gin.learning_rate_schedule.peak=1e9")
  message = str(e.value)
  assert "5 non-finite steps in a row" in message
  assert f"last good checkpoint: {tmp_path / 'run' / 'checkpoints' / '10'}" in message
  first_bad = int(message.split("first bad step was ")[1].split(";")[0])
  assert 11 <= first_bad <= 13, message  # step 11's update is finite (and huge); then NaN
  assert mh.checkpoint_steps(d) == [5, 10]
  assert all(_saved_params_finite(d, s) for s in (5, 10))
  assert np.isfinite(read_losses(d)[10])
  rows = {r["step"]: r for r in map(json.loads, open(os.path.join(d, "metrics.jsonl")))
          if r["split"] == "train"}
  assert rows[10]["skipped_steps"] == 0 and rows[first_bad - 1]["skipped_steps"] == 0
  assert [rows[s]["skipped_steps"] for s in range(first_bad, first_bad + 4)] == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- the lock


def _write_lock(path, host, pid, heartbeat_age):
  now = time.time()
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({"host": host, "pid": pid, "started": now - 100,
                              "heartbeat": now - heartbeat_age, "token": "theirs"}))


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path, capsys):
  path = tmp_path / "run" / "run.lock"
  here = socket.gethostname()
  first = lock.RunLock(str(path), heartbeat_seconds=0.05).acquire()
  held = json.loads(path.read_text())
  assert (held["host"], held["pid"]) == (here, os.getpid())
  time.sleep(0.2)
  assert json.loads(path.read_text())["heartbeat"] > held["heartbeat"]  # the thread refreshes it
  with pytest.raises(lock.LockedError, match=f"pid {os.getpid()} on host {here}"):
    lock.RunLock(str(path)).acquire()
  first.release()
  assert not path.exists()

  dead = subprocess.Popen(["true"])
  dead.wait()
  _write_lock(path, here, dead.pid, 0)  # this host, a process that is gone: a kill -9
  taken = lock.RunLock(str(path), settle_seconds=0).acquire()
  assert f"process {dead.pid} on this host is gone" in capsys.readouterr().out
  taken.release()

  _write_lock(path, "another-host", 1, 10)  # another host, fresh heartbeat: alive
  with pytest.raises(lock.LockedError, match="another-host"):
    lock.RunLock(str(path), stale_seconds=60).acquire()
  _write_lock(path, "another-host", 1, 120)  # its heartbeat stopped
  lock.RunLock(str(path), stale_seconds=60, settle_seconds=0).acquire().release()
  assert "heartbeat is 120 s old" in capsys.readouterr().out


@pytest.mark.slow
def test_second_run_on_the_same_folder_exits_naming_the_holder(tmp_path):
  model_dir = tmp_path / "run"
  first = mh.Run(mh.train_args(model_dir, steps=40), 1, 8, tmp_path, step_delay=0.5,
                 name="first")
  try:
    first.wait_for(lambda: (model_dir / "metrics.jsonl").exists(), "the first run's metrics")
    second = cli_util.run(["train", *mh.train_args(model_dir), "--num_cpu_devices=8"],
                          cwd=mh.REPO)
    assert second.code == 2, second
    assert f"pid {first.procs[0].pid}" in second.err and "in use by another training run" in \
        second.err, second
    assert "Traceback" not in second.err
  finally:
    first.kill()


# ----------------------------------------------------------------------------- kill -9


def _kill_during_save(run, model_dir: pathlib.Path, skip: int, timeout: float = 240) -> str:
  """SIGKILLs the run as soon as orbax's temporary folder of its (skip+1)-th save in flight
  appears; the folder's name."""
  checkpoints = model_dir / "checkpoints"
  deadline = time.monotonic() + timeout
  seen = set()
  while time.monotonic() < deadline:
    if run.procs[0].poll() is not None:
      raise AssertionError(f"the run ended before a save was caught\n{run.output()}")
    names = os.listdir(checkpoints) if checkpoints.is_dir() else []
    seen.update(n for n in names if "tmp" in n)
    if len(seen) > skip:
      os.kill(run.procs[0].pid, signal.SIGKILL)
      run.procs[0].wait()
      return sorted(seen)[-1]
    time.sleep(0.002)
  run.kill()
  raise AssertionError(f"no save in flight seen\n{run.output()}")


@pytest.mark.slow
def test_kill_9_during_async_saves_then_resume_is_bit_exact(tmp_path):
  """Three times: start the run, kill -9 it while an asynchronous save is being written; then
  run the same command to the end. Only finished checkpoints count, the lock of the dead process
  is taken over, and the final parameters equal an uninterrupted run's bit for bit."""
  model_dir = tmp_path / "run"
  extra = ["--gin.Checkpointer.save_period=1"]
  seen = []
  for i in range(3):
    run = mh.Run(mh.train_args(model_dir) + extra, 1, 8, tmp_path,
                 step_delay=0.3, name=f"killed{i}")
    seen.append(_kill_during_save(run, model_dir, skip=i))
    steps = mh.checkpoint_steps(model_dir)
    assert not steps or steps[-1] < mh.TRAIN_STEPS
  out = mh.train(model_dir, tmp_path, processes=1, devices=8,
                 extra_args=extra, name="final")
  assert "taking over the run lock" in out and "is gone" in out
  assert all("orbax-checkpoint-tmp" in name for name in seen), seen
  assert not [n for n in os.listdir(model_dir / "checkpoints") if "tmp" in n]
  want, got = mh.losses(mh.reference(1)), mh.losses(model_dir)
  assert sorted(got) == list(range(1, mh.TRAIN_STEPS + 1))
  assert [got[s] for s in sorted(got)] == [want[s] for s in sorted(got)]
  a, b = mh.saved_params(model_dir, mh.TRAIN_STEPS), mh.saved_params(mh.reference(1),
                                                                     mh.TRAIN_STEPS)
  assert a.keys() == b.keys() and a
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)
