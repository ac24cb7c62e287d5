"""The run-folder lock: one training run per MODEL_DIR, and no folder a crash leaves locked.

`t5lite train` (process 0 of a multi-host run) holds MODEL_DIR/run.lock, a small JSON file
naming the holder (host, pid, start time) and a heartbeat a thread refreshes every
`heartbeat_seconds`. A second run on the folder stops with one line naming the holder. A lock is
taken over, with a warning, when its holder is gone: the same host and a pid that no longer
exists (a `kill -9`), or a heartbeat older than `stale_seconds` (another host that died).

Creation is atomic on local file systems (O_EXCL). On gs:// and on a takeover the lock is
written, then read back after a short pause: of two racing writers, only the last one keeps it.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Optional

import gin

from t5lite import files


class LockedError(RuntimeError):
  """Another run holds the folder's lock."""


@gin.configurable
class RunLock:
  """Acquire with `acquire()` (or `with RunLock(path):`); `release()` removes it if still ours."""

  def __init__(self, path: str, heartbeat_seconds: float = 30.0, stale_seconds: float = 300.0,
               settle_seconds: float = 0.5):
    self.path = files.absolute(path)
    self.heartbeat_seconds = heartbeat_seconds
    self.stale_seconds = stale_seconds
    self.settle_seconds = settle_seconds
    self.token = uuid.uuid4().hex
    self.info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                 "token": self.token}
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  # ----------------------------------------------------------------------------- reading

  def holder(self) -> Optional[dict]:
    """The lock file's content; None when there is none (or it is unreadable: a torn write)."""
    try:
      return json.loads(files.read_text(self.path))
    except (FileNotFoundError, ValueError):
      return None
    except Exception as e:  # pylint: disable=broad-except  (a remote file system's NotFoundError)
      if type(e).__name__ == "NotFoundError":
        return None
      raise

  def _why_stale(self, holder: dict) -> Optional[str]:
    age = time.time() - float(holder.get("heartbeat", 0))
    if holder.get("host") == self.info["host"] and not files.pid_alive(int(holder.get("pid", -1))):
      return f"its process {holder.get('pid')} on this host is gone"
    if age > self.stale_seconds:
      return f"its heartbeat is {age:.0f} s old (> {self.stale_seconds:.0f} s)"
    return None

  @staticmethod
  def describe(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {started}"

  # ----------------------------------------------------------------------------- writing

  def _content(self) -> str:
    return json.dumps({**self.info, "heartbeat": time.time()})

  def _create_local(self) -> bool:
    files.makedirs(os.path.dirname(self.path))
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(self._content())
    return True

  def _write_and_confirm(self) -> bool:
    files.makedirs(os.path.dirname(self.path))
    files.write_text(self.path, self._content())
    time.sleep(self.settle_seconds)
    holder = self.holder()
    return bool(holder) and holder.get("token") == self.token

  def acquire(self) -> "RunLock":
    """Takes the lock; LockedError naming the holder when a live run holds it."""
    for _ in range(3):
      holder = self.holder()
      if holder is None:
        created = (self._create_local() if not files.is_remote(self.path)
                   else self._write_and_confirm())
        if created:
          break
        continue  # someone created it between our read and write: look again
      why = self._why_stale(holder)
      if why is None:
        raise LockedError(
            f"{os.path.dirname(self.path)} is in use by another training run "
            f"({self.describe(holder)}; lock file {self.path}); stop it first, or train into "
            "another MODEL_DIR")
      logging.warning("t5lite: taking over the lock %s of %s: %s", self.path,
                      self.describe(holder), why)
      print(f"t5lite: warning: taking over the run lock of {self.describe(holder)}: {why}",
            flush=True)
      if self._write_and_confirm():
        break
    else:
      holder = self.holder() or {}
      raise LockedError(f"could not take the lock {self.path}: another run took it "
                        f"({self.describe(holder)})")
    self._thread = threading.Thread(target=self._heartbeat, daemon=True, name="t5lite-lock")
    self._thread.start()
    return self

  def _heartbeat(self) -> None:
    while not self._stop.wait(self.heartbeat_seconds):
      holder = self.holder()
      if holder is not None and holder.get("token") != self.token:
        print(f"t5lite: warning: the run lock {self.path} was taken over by "
              f"{self.describe(holder)}", flush=True)
        return
      try:
        files.write_text(self.path, self._content())
      except Exception as e:  # pylint: disable=broad-except  (a transient storage error)
        logging.warning("t5lite: could not refresh the run lock %s: %s", self.path, e)

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
    holder = self.holder()
    if holder is not None and holder.get("token") == self.token:
      files.remove(self.path)

  def __enter__(self) -> "RunLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
