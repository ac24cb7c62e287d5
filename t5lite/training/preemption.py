"""Stopping on SIGTERM / SIGINT: every process finishes the same step, saves, and exits."""
from __future__ import annotations

import os
import signal

import jax


class Preemption:
  """SIGTERM/SIGINT ask the loop to stop after the current step (then it saves and exits).

  One process: a Python handler sets a flag. Several processes must stop after the *same* step
  (the checkpoint save is collective), so they use JAX's preemption sync service: the C++ SIGTERM
  handler that jax.distributed.initialize installs tells every process, and
  `reached_preemption_sync_point(step)` turns True on all of them at one step (the highest step
  any process had reached, plus one); no per-step host sync. A Python SIGTERM handler would
  replace that C++ one, so none is installed; SIGINT re-sends SIGTERM to this process.
  """

  def __init__(self):
    self.requested = False
    self._previous = {}
    self._multi = jax.process_count() > 1
    if not self._multi:
      handlers = {signal.SIGTERM: self._handle, signal.SIGINT: self._handle}
    elif _preemption_service() is not None:
      handlers = {signal.SIGINT: self._forward}
    else:
      handlers = {}
      print("t5lite: warning: jax_enable_preemption_service is off; SIGTERM ends this process "
            "without a checkpoint", flush=True)
    for sig, handler in handlers.items():
      try:
        self._previous[sig] = signal.signal(sig, handler)
      except ValueError:  # not the main thread
        pass

  def _handle(self, signum, frame):
    del frame
    self.requested = True
    print(f"\nt5lite: received signal {signum}; stopping after this step and saving a checkpoint",
          flush=True)

  def _forward(self, signum, frame):
    del frame
    print(f"\nt5lite: received signal {signum}; telling all processes to stop", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # to the preemption service's handler

  def reached(self, step: int) -> bool:
    if not self._multi:
      return self.requested
    if _preemption_service() is None:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    stop = bool(multihost_utils.reached_preemption_sync_point(step))
    if stop:
      print(f"t5lite: preemption notice; all processes stop after step {step} and save a "
            "checkpoint", flush=True)
    return stop

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _preemption_service():
  return jax._src.distributed.global_state.preemption_sync_manager  # pylint: disable=protected-access
