"""The step loop and what surrounds it, shared by train() and `t5lite doremi`'s proxy: the run lock,
resuming from the latest checkpoint, the metrics writer, steps/s and MFU, checkpoints on period /
SIGTERM / the last step, and how a run ends (finished, stopped on request, diverged)."""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Optional

import gin
import jax
import numpy as np
from jax.experimental import multihost_utils

from t5lite.runtime import devices, partitioning
from t5lite.store import checkpoints, run_lock
from t5lite.store.metrics import MetricsWriter
from t5lite.store.run_dir import RunDir
from t5lite.training import preemption
from t5lite.training.settings import LoopConfig


class DivergedError(RuntimeError):
  """Training stopped after too many non-finite steps in a row."""
  exit_code = 3


def lock_run(run_dir: RunDir) -> Optional[run_lock.RunLock]:
  """Process 0 takes the run folder's lock; every process stops if it could not."""
  held, error = None, None
  if jax.process_index() == 0:
    try:
      held = run_lock.RunLock(run_dir.lock).acquire()
    except run_lock.LockedError as e:
      error = e
  if jax.process_count() > 1:
    ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not ok and error is None:
      error = run_lock.LockedError(f"{run_dir.path}: process 0 could not take the run lock "
                                   "(its output names the holder)")
  if error is not None:
    raise error
  return held


def sync(what: str) -> None:
  """Every process waits here for the others (a no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"t5lite: {what}")


def throughput(steps_per_s: float, batch_size: int, target_tokens: float,
               flops_per_example: float) -> dict[str, float]:
  """steps/s, examples/s, target tokens/s and, where the device's peak is known, MFU."""
  out = {"steps_per_s": steps_per_s, "examples_per_s": steps_per_s * batch_size,
         "target_tokens_per_s": steps_per_s * target_tokens}
  peak = devices.peak_flops_per_device()
  if peak:
    out["mfu"] = steps_per_s * batch_size * flops_per_example / (peak * jax.device_count())
  return out


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
  """A step's device metrics as floats (the guard's counters left out)."""
  metrics = jax.device_get(metrics)
  return {k: float(v) for k, v in metrics.items() if k != "guard"}


class Session:
  """One run folder's lock, checkpoints and metrics around the step loop (`with Session(...)`).

  `what` names the run in messages ("training", "the DoReMi proxy"). Only process 0 writes
  metrics and config.gin; every process takes part in checkpoints.
  """

  def __init__(self, run_dir: RunDir, what: str = "training"):
    self.run_dir, self.what = run_dir, what
    self.chief = jax.process_index() == 0
    self._lock = self.ckpt = self.writer = None

  def __enter__(self) -> "Session":
    """Takes the run folder's lock (process 0), then opens its checkpoints and metrics: orbax
    cleans up temporary folders on opening, which must not touch a live run's."""
    self._lock = lock_run(self.run_dir)
    self.ckpt = checkpoints.Checkpointer(self.run_dir.checkpoints)
    self.writer = MetricsWriter(self.run_dir, enabled=self.chief)
    return self

  def __exit__(self, *exc) -> None:
    if self._lock is not None:
      self._lock.release()

  def resume(self, state, shardings, fill: Optional[dict] = None):
    """(state, data position): the latest checkpoint's, restored onto `shardings`, or `state`
    and None when the folder has none. fill: Checkpointer.restore's, for fields older
    checkpoints lack."""
    step = self.ckpt.latest_step()
    if step is None:
      return state, None
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            state, shardings)
    state, data_state = self.ckpt.restore(step, abstract, fill=fill)
    subject = "" if self.what == "training" else f" {self.what}"
    self.say(f"resumed{subject} from {self.ckpt.directory}/{step}")
    return state, data_state

  def start(self, step: int) -> None:
    """Writes the operative config.gin and drops metrics a crash logged after `step`."""
    if self.chief:
      self.run_dir.write_config(gin.operative_config_str())
      self.writer.drop_after(step)

  def say(self, message: str) -> None:
    if self.chief:
      print(f"t5lite: {message}", flush=True)

  def run(self, step_fn: Callable, state, data, data_state: Callable, start: int, total: int,
          mesh, loop: LoopConfig, log_values: Callable, after_step: Optional[Callable] = None):
    """Steps from `start` to `total`; the final state.

    Step n's metrics are read once step n+1 is dispatched (no host sync in between); every
    loop.log_period steps the writer gets log_values(metrics, steps/s) (rate None for the last
    step). Checkpoints: the Checkpointer's period (a periodic save waits for a finite step),
    SIGTERM / SIGINT, and the last step, with data_state(). After loop.max_consecutive_skips
    non-finite steps in a row: DivergedError naming the first bad step and the last good
    checkpoint. data and the checkpointer are closed on the way out.
    """
    state, step, diverged = self._steps(step_fn, state, data, data_state, start, total, mesh,
                                        loop, log_values, after_step)
    if diverged is not None:
      at, guard = diverged
      last = self.ckpt.latest_step()
      good = f"{self.ckpt.directory}/{last}" if last is not None else "none (nothing was saved)"
      raise DivergedError(
          f"{self.what} diverged: {int(guard['consecutive'])} non-finite steps in a row "
          f"(LoopConfig.max_consecutive_skips={loop.max_consecutive_skips}) up to step {at}; "
          f"the first bad step was {int(guard['first_bad'])}; last good checkpoint: {good}. "
          "Lower the learning rate or fix the data, then rerun to resume from it")
    if step < total:
      self.say(f"{self.what} stopped at step {step} on request; checkpoint saved. Run the same "
               "command again to resume.")
    self.writer.finish()
    return state

  def _steps(self, step_fn, state, data, data_state, start, total, mesh, loop, log_values,
             after_step):
    preempt = preemption.Preemption()
    pending = None  # (step, device metrics) of the step before the current one
    t_last, step_last = time.perf_counter(), start
    progress = self.writer.progress(start, total)
    step, save_due, diverged = start, False, None
    ckpt = self.ckpt
    try:
      while step < total:
        batch = partitioning.host_to_global(next(data), mesh)
        state, metrics = step_fn(state, batch)
        step += 1
        if pending is not None:  # step n-1's results, now that step n is dispatched
          prev_step, prev_metrics = pending
          guard = jax.device_get(prev_metrics["guard"])
          if int(guard["consecutive"]) >= loop.max_consecutive_skips:
            diverged = (prev_step, guard)
            break
          if prev_step % loop.log_period == 0 or prev_step == 1:
            now = time.perf_counter()
            rate = (prev_step - step_last) / max(now - t_last, 1e-9)
            self.writer.write(prev_step, log_values(prev_metrics, rate))
            t_last, step_last = now, prev_step
        pending = (step, metrics)
        progress.update(1)
        if after_step is not None:
          after_step(step, state)
        stop = preempt.reached(step)
        save_due = save_due or ckpt.should_save(step)
        if save_due or stop or step == total:
          # A periodic save waits for a finite step, so that a checkpoint always follows a good one.
          if stop or step == total or int(jax.device_get(state.guard["consecutive"])) == 0:
            ckpt.save(step, state, data_state(), force=True)
            save_due = False
        if stop:
          break
      if pending is not None and diverged is None:
        self.writer.write(pending[0], log_values(pending[1], None))
    finally:
      progress.close()
      ckpt.close()
      preempt.restore()
      data.close()
    return state, step, diverged
