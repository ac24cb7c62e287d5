"""The one file API: local paths (relative or absolute) through the standard library, remote ones
(gs:// and the other schemes tf.io.gfile serves) through TensorFlow, imported only for them.

  is_remote absolute join exists isdir listdir glob glob_all makedirs remove remove_tree rename
  copy
  open_file                     a file object (local or remote)
  read_text read_bytes          a whole file
  write_text write_bytes        a whole file, atomically (atomic_write)
  append_text                   a few lines at the end of a file (metrics.jsonl)
  atomic_write                  written under a temporary name, renamed to the path when complete,
                                so no reader (and no crash) ever sees half a file
  temporary_name, remove_stale_temporaries   the temporary names atomic writes use (and builds
                                that write through other libraries: ArrayRecord), and cleaning up
                                after a killed writer without touching a live one's
  open_lines                    the lines of a file, gunzipped when its name ends in .gz
  iter_jsonl read_jsonl         JSON lines, a bad line named by file and line number
Local paths are made absolute (`absolute`) wherever they are stored or handed to orbax, whose
readers resolve relative paths against their own notion of the working folder.
"""
from __future__ import annotations

import contextlib
import glob as globlib
import gzip
import json
import os
import shutil
import threading
from typing import Callable, Iterable, Iterator, Optional, Sequence

from t5lite.extras import DATA_EXTRA

REMOTE_EXTRA = f"the `data` extra: {DATA_EXTRA}"


def is_remote(path: str | os.PathLike) -> bool:
  return "://" in os.fspath(path)


def _gfile():
  """tf.io.gfile, for remote paths only."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (heavy; remote paths only)
  except ImportError as e:
    raise ImportError(f"remote paths (gs://...) are read through TensorFlow, which is not "
                      f"installed: {REMOTE_EXTRA}") from e
  return tf.io.gfile


def absolute(path: str | os.PathLike) -> str:
  """A remote path unchanged; a local one absolute, with ~ expanded."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def join(*parts: str | os.PathLike) -> str:
  return os.path.join(*[os.fspath(p) for p in parts])


def exists(path) -> bool:
  path = os.fspath(path)
  return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path) -> bool:
  path = os.fspath(path)
  return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def makedirs(path) -> None:
  path = os.fspath(path)
  if is_remote(path):
    _gfile().makedirs(path)
  elif path:
    os.makedirs(path, exist_ok=True)


def listdir(path, missing_ok: bool = False) -> list[str]:
  """Entry names (without the trailing '/' some remote file systems add); [] for a folder that
  does not exist when missing_ok."""
  path = os.fspath(path)
  if missing_ok and not isdir(path):
    return []
  names = _gfile().listdir(path) if is_remote(path) else os.listdir(path)
  return sorted(name.rstrip("/") for name in names)


def glob(pattern) -> list[str]:
  pattern = os.fspath(pattern)
  if is_remote(pattern):
    return sorted(_gfile().glob(pattern))
  return sorted(globlib.glob(os.path.expanduser(pattern)))


def glob_all(patterns: str | Iterable[str], what: str) -> list[str]:
  """Files matching any of `patterns`, sorted per pattern; FileNotFoundError naming a pattern
  that matches nothing (`what` says what the files are for)."""
  patterns = [patterns] if isinstance(patterns, (str, os.PathLike)) else list(patterns)
  found = []
  for pattern in patterns:
    matched = glob(pattern)
    if not matched:
      raise FileNotFoundError(f"no file matches {os.fspath(pattern)!r} ({what})")
    found.extend(matched)
  return found


def remove(path, missing_ok: bool = False) -> None:
  path = os.fspath(path)
  if missing_ok and not exists(path):
    return
  if is_remote(path):
    _gfile().remove(path)
  else:
    os.remove(path)


def remove_tree(path) -> None:
  """Removes a folder and everything in it (nothing when it does not exist)."""
  path = os.fspath(path)
  if is_remote(path):
    if _gfile().exists(path):
      _gfile().rmtree(path)
  else:
    shutil.rmtree(path, ignore_errors=True)


def rename(src, dst, overwrite: bool = False) -> None:
  src, dst = os.fspath(src), os.fspath(dst)
  if is_remote(src) or is_remote(dst):
    _gfile().rename(src, dst, overwrite=overwrite)
  elif overwrite:
    os.replace(src, dst)
  elif os.path.exists(dst):
    raise FileExistsError(f"{dst} exists")
  else:
    os.rename(src, dst)


def copy(src, dst, overwrite: bool = False) -> None:
  src, dst = os.fspath(src), os.fspath(dst)
  if is_remote(src) or is_remote(dst):
    _gfile().copy(src, dst, overwrite=overwrite)
    return
  if not overwrite and os.path.exists(dst):
    raise FileExistsError(f"{dst} exists")
  shutil.copyfile(src, dst)


def open_file(path, mode: str = "r"):
  """A file object: local (relative or absolute) or remote."""
  path = os.fspath(path)
  if is_remote(path):
    return _gfile().GFile(path, mode)
  return open(os.path.expanduser(path), mode, **({} if "b" in mode else {"encoding": "utf-8"}))


def read_text(path) -> str:
  with open_file(path, "r") as f:
    return f.read()


def read_bytes(path) -> bytes:
  with open_file(path, "rb") as f:
    return f.read()


def write_text(path, text: str) -> None:
  with atomic_write(path, "w") as f:
    f.write(text)


def write_bytes(path, data: bytes) -> None:
  with atomic_write(path, "wb") as f:
    f.write(data)


def append_text(path, text: str) -> None:
  with open_file(path, "a") as f:
    f.write(text)


# ----------------------------------------------------------------------------- atomic writes

_TMP = ".tmp-"


def temporary_name(path) -> str:
  """A temporary name beside `path`, unique to this process and thread: `<path>.tmp-PID-TID`."""
  return f"{os.fspath(path)}{_TMP}{os.getpid()}-{threading.get_ident()}"


def pid_alive(pid: int) -> bool:
  """Whether process `pid` exists on this host."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, another user's
    return True
  return True


def remove_stale_temporaries(path) -> list[str]:
  """Removes the temporaries of `path` that a killed writer left (local: those whose process is
  gone, never a live writer's; remote: all, as no pid there can be checked); the removed names."""
  path = os.fspath(path)
  removed = []
  for tmp in glob(f"{globlib.escape(path) if not is_remote(path) else path}{_TMP}*"):
    pid = tmp[len(path) + len(_TMP):].split("-", 1)[0]
    if is_remote(path) or not (pid.isdigit() and pid_alive(int(pid))):
      remove(tmp, missing_ok=True)
      removed.append(tmp)
  return removed


@contextlib.contextmanager
def atomic_write(path, mode: str = "w"):
  """A file object for `path` that appears there, whole, only when the block ends without an
  error (written to temporary_name(path), then renamed); the parent folder is created."""
  path = os.fspath(path)
  parent = os.path.dirname(path)
  if parent and not exists(parent):
    makedirs(parent)
  tmp = temporary_name(path)
  try:
    with open_file(tmp, mode) as f:
      yield f
    rename(tmp, path, overwrite=True)
  except BaseException:
    remove(tmp, missing_ok=True)
    raise


# ----------------------------------------------------------------------------- lines, JSON lines


def open_lines(path) -> Iterator[bytes]:
  """The lines of a file (bytes, newline kept), gunzipped when its name ends in .gz."""
  path = os.fspath(path)
  with open_file(path, "rb") as raw:
    stream = gzip.GzipFile(fileobj=raw, mode="rb") if path.endswith(".gz") else raw
    yield from stream


class BadLine(ValueError):
  """A JSON line that is not what the reader expects; `reason` names the kind (invalid_utf8,
  invalid_json, not_an_object, missing_key) and the message names file:line."""

  def __init__(self, message: str, reason: str):
    super().__init__(message)
    self.reason = reason


def parse_jsonl_line(raw: bytes, where: str, required: Sequence[str] = ()) -> dict:
  """One JSON line as a dict; BadLine naming `where` (file:line) and what is wrong."""
  try:
    line = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise BadLine(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})", "invalid_utf8") from None
  try:
    row = json.loads(line)
  except json.JSONDecodeError as e:
    raise BadLine(f"{where}: not a JSON line ({e})", "invalid_json") from None
  if not isinstance(row, dict):
    raise BadLine(f"{where}: not a JSON object (a {type(row).__name__}; expected keys "
                  f"{list(required)})", "not_an_object")
  missing = [k for k in required if k not in row]
  if missing:
    raise BadLine(f"{where}: missing key {missing[0]!r} (expected keys {list(required)}; the line "
                  f"has {sorted(row)})", "missing_key")
  return row


def iter_jsonl(path, required: Sequence[str] = (),
               on_bad: Optional[Callable[[BadLine, int], None]] = None) -> Iterator[tuple[int, dict]]:
  """(line number, object) of each non-empty line of a JSON-lines file (gunzipped when .gz).

  A bad line raises BadLine naming file:line, or, with on_bad, is passed to it (with its line
  number) and skipped. Errors reading the file itself (corrupt gzip) propagate."""
  path = os.fspath(path)
  for n, raw in enumerate(open_lines(path), 1):
    if not raw.strip():
      continue
    try:
      yield n, parse_jsonl_line(raw, f"{path}:{n}", required)
    except BadLine as e:
      if on_bad is None:
        raise
      on_bad(e, n)


def jsonl_text(rows: Iterable[dict]) -> str:
  """JSON lines: one object per line, non-ASCII text kept as it is."""
  return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_jsonl(path, rows: Iterable[dict]) -> None:
  """`rows` as a JSON-lines file, written atomically."""
  write_text(path, jsonl_text(rows))


def read_jsonl(path, required: Sequence[str] = ()) -> list[dict]:
  """Every object of a JSON-lines file; FileNotFoundError or BadLine (file:line) otherwise."""
  if not exists(path):
    raise FileNotFoundError(f"input file not found: {os.fspath(path)}")
  return [row for _, row in iter_jsonl(path, required)]
