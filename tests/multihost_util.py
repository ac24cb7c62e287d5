"""Runs real `t5lite train` processes for the multi-host and preemption tests.

Used two ways:
  * as a library: `Run` starts 1 or N processes of `python tests/multihost_util.py ARGS` (N with
    T5LITE_COORDINATOR_ADDRESS / T5LITE_NUM_PROCESSES / T5LITE_PROCESS_ID on 127.0.0.1, so
    jax.distributed is real), waits with a hard timeout, and kills them all on failure.
  * as a script: `python tests/multihost_util.py [--emulate_shards=N] [--step_delay=S] -- ARGS`
    is `t5lite train ARGS` with two test-only changes to the *data* (nothing else is touched):
      --emulate_shards=N  (the tf.data path, DATA_CACHE_DIR=None) a single process reads what N
                          processes would read: shard i of N with batch_size/N examples for
                          every i, concatenated in process order, so its global batch equals the
                          N-process run's (the token cache needs no such help).
      --step_delay=S      each batch arrives >= S seconds after the previous one, so a signal
                          can land mid-run on a tiny model whose steps take milliseconds.
"""
from __future__ import annotations

import argparse
import atexit
import functools
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

REPO = pathlib.Path(__file__).resolve().parent.parent
PYTHON = sys.executable

TRAIN_STEPS = 6
# A tiny run: 8 examples of 64 + 16 tokens, Adam, a checkpoint every 3 steps, every step logged.
COMMON_ARGS = (
    "--gin_file=runs/demo.gin",
    "--gin.BATCH_SIZE=8",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
    "--gin.make_mesh.mesh_shape=(4, 2)",
    "--gin.LoopConfig.log_period=1",
    "--gin.EvalConfig.period=0",
    "--gin.EvalConfig.predict_examples=0",
    "--gin.Checkpointer.save_period=3",
    "--gin.learning_rate_schedule.warmup_steps=2",
)


@functools.lru_cache(maxsize=None)
def session_dir() -> pathlib.Path:
  """A folder for this test session's shared runs and XLA compilation cache; removed at exit."""
  path = pathlib.Path(tempfile.mkdtemp(prefix="t5lite-multihost-"))
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  return path


NOISE = ("[Gloo]", "I0000", "W0000", "WARNING: All log messages", " is connected to", "train: ")


def train_args(model_dir, steps: int = TRAIN_STEPS) -> list[str]:
  return list(COMMON_ARGS) + [f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}"]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Run:
  """`num_processes` processes of one training command; each process's output goes to a file."""

  def __init__(self, args: Sequence[str], num_processes: int, devices_per_process: int,
               log_dir, emulate_shards: int = 0, step_delay: float = 0.0, name: str = "run"):
    self.logs = [pathlib.Path(log_dir) / f"{name}.{i}.log" for i in range(num_processes)]
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # conftest's 8 fake devices; --num_cpu_devices decides here
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1",
               T5LITE_TRACEBACK="1",
               # Runs of one shape compile the same programs: compile them once per session.
               JAX_COMPILATION_CACHE_DIR=str(session_dir() / "xla_cache"))
    port = free_port()
    cmd = [PYTHON, str(pathlib.Path(__file__).resolve()),
           f"--emulate_shards={emulate_shards}", f"--step_delay={step_delay}", "--",
           *args, f"--num_cpu_devices={devices_per_process}"]
    self.procs = []
    for i, log in enumerate(self.logs):
      penv = dict(env)
      if num_processes > 1:
        penv.update(T5LITE_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                    T5LITE_NUM_PROCESSES=str(num_processes), T5LITE_PROCESS_ID=str(i))
      with open(log, "wb") as f:
        self.procs.append(subprocess.Popen(cmd, cwd=REPO, env=penv, stdout=f,
                                           stderr=subprocess.STDOUT, start_new_session=True))

  def output(self) -> str:
    """The tail of each process's output, without progress-bar redraws and runtime chatter."""
    parts = []
    for i, log in enumerate(self.logs):
      lines = log.read_text(errors="replace").replace("\r", "\n").splitlines()
      lines = [l for l in lines if l.strip() and not l.startswith(NOISE)]
      parts.append(f"===== process {i} ({log}) =====\n" + "\n".join(lines)[-6000:])
    return "\n".join(parts)

  def kill(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)  # its own session: it and only its children
    for p in self.procs:
      p.wait()

  def signal(self, sig, process: int = 0) -> None:
    self.procs[process].send_signal(sig)

  def wait(self, timeout: float = 300) -> str:
    """Waits for every process; fails (killing all) on a timeout or a non-zero exit."""
    deadline = time.monotonic() + timeout
    try:
      while any(p.poll() is None for p in self.procs):
        if time.monotonic() > deadline:
          raise AssertionError(f"training hung: not done after {timeout:.0f} s\n{self.output()}")
        failed = [p.returncode for p in self.procs if p.returncode not in (None, 0)]
        if failed:
          raise AssertionError(f"a process exited with status {failed[0]}\n{self.output()}")
        time.sleep(0.2)
      codes = [p.returncode for p in self.procs]
      if any(codes):
        raise AssertionError(f"exit statuses {codes}\n{self.output()}")
    finally:
      self.kill()
    return self.output()

  def wait_for(self, predicate, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
      if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
        self.kill()
        raise AssertionError(f"gave up waiting for {what}\n{self.output()}")
      time.sleep(0.1)


def train(model_dir, log_dir, steps: int = TRAIN_STEPS, processes: int = 1, devices: int = 8,
          emulate_shards: int = 0, name: str = "run", timeout: float = 300,
          step_delay: float = 0.0, extra_args: Sequence[str] = ()) -> str:
  """Trains to `steps` (resuming from model_dir's latest checkpoint); returns the output."""
  run = Run(train_args(model_dir, steps) + list(extra_args), processes, devices, log_dir, emulate_shards,
            step_delay, name=name)
  return run.wait(timeout)


@functools.lru_cache(maxsize=None)
def reference(processes: int) -> pathlib.Path:
  """An uninterrupted run to TRAIN_STEPS on the token cache, shared by the tests of a session:
  `processes` processes x 8 / processes devices."""
  model_dir = session_dir() / f"reference_{processes}p"
  train(model_dir, session_dir(), processes=processes, devices=8 // processes,
        name=model_dir.name)
  return model_dir


def losses(model_dir) -> dict[int, float]:
  """{step: train loss} from metrics.jsonl; a step logged twice fails (only process 0 writes)."""
  out = {}
  for line in (pathlib.Path(model_dir) / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    if record.get("split") == "train":
      assert record["step"] not in out, f"step {record['step']} logged twice in {model_dir}"
      out[record["step"]] = record["loss"]
  return out


def checkpoint_steps(model_dir) -> list[int]:
  ckpt = pathlib.Path(model_dir) / "checkpoints"
  return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())


def saved_params(model_dir, step: int) -> dict:
  """{path: numpy array} of the parameters in a checkpoint, read with orbax."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(model_dir) / "checkpoints" / str(step) / "state"
  with ocp.PyTreeCheckpointer() as ckptr:
    meta = ckptr.metadata(path)
    tree = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    restored = ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  flat = jax.tree_util.tree_flatten_with_path(restored["params"])[0]
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}


def _patched_get_dataset(original, emulate_shards: int):
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def get_dataset(name, task_feature_lengths, batch_size, split="train", shuffle=True, seed=0,
                  shard_info=None, start_batch=0, **kwargs):
    if emulate_shards > 1 and split == "train" and shard_info is None:
      assert batch_size % emulate_shards == 0, (batch_size, emulate_shards)
      parts = tuple(
          original(name, task_feature_lengths, batch_size // emulate_shards, split=split,
                   shuffle=shuffle, seed=seed, shard_info=seqio.ShardInfo(i, emulate_shards),
                   start_batch=start_batch, **kwargs)
          for i in range(emulate_shards))
      ds = tf.data.Dataset.zip(parts).map(
          lambda *bs: {k: tf.concat([b[k] for b in bs], axis=0) for k in bs[0]})
    else:
      ds = original(name, task_feature_lengths, batch_size, split=split, shuffle=shuffle,
                    seed=seed, shard_info=shard_info, start_batch=start_batch, **kwargs)
    return ds
  return get_dataset


def _slowed(next_batch, step_delay: float):
  """TrainStream.__next__ that waits step_delay seconds before each training batch."""
  def slow(self):
    time.sleep(step_delay)
    return next_batch(self)
  return slow


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--emulate_shards", type=int, default=0)
  parser.add_argument("--step_delay", type=float, default=0.0)
  parser.add_argument("train_args", nargs=argparse.REMAINDER)
  args = parser.parse_args(argv)
  rest = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
  sys.path.insert(0, str(REPO))
  from t5lite import main as t5main  # pylint: disable=g-import-not-at-top
  from t5lite.data.feed import tfdata as pipeline, streams  # pylint: disable=g-import-not-at-top
  pipeline.get_dataset = _patched_get_dataset(pipeline.get_dataset, args.emulate_shards)
  if args.step_delay > 0:
    streams.TrainStream.__next__ = _slowed(streams.TrainStream.__next__, args.step_delay)
  sys.exit(t5main.main(["train", *rest]))


if __name__ == "__main__":
  main()
