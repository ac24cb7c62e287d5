"""File access for the corpus builder: local paths with the standard library, remote ones (gs://)
through t5lite/files.py, so a local build's worker processes never import TensorFlow."""
# TODO(files.py): these belong in t5lite/files.py (local paths without tf.io.gfile, an atomic
# binary write); the package owner is extending it and will move them.
from __future__ import annotations

import glob as _glob
import os
import shutil

from t5lite import files


def is_remote(path: str) -> bool:
  return files.is_remote(path)


def join(*parts: str) -> str:
  return files.join(*parts)


def absolute(path: str) -> str:
  return files.absolute(path)


def open_binary(path: str, mode: str = "rb"):
  if is_remote(path):
    return files.open_file(path, mode)
  return open(path, mode)  # pylint: disable=unspecified-encoding


def exists(path: str) -> bool:
  return files.exists(path) if is_remote(path) else os.path.exists(path)


def makedirs(path: str) -> None:
  if is_remote(path):
    files.makedirs(path)
  else:
    os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
  if is_remote(path):
    return files.listdir(path)
  return sorted(os.listdir(path)) if os.path.isdir(path) else []


def glob(pattern: str) -> list[str]:
  return files.glob(pattern) if is_remote(pattern) else sorted(_glob.glob(pattern))


def read_text(path: str) -> str:
  with open_binary(path) as f:
    return f.read().decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
  """Writes atomically (a temporary name, then a rename): a reader never sees half a file."""
  parent = os.path.dirname(path)
  if parent:
    makedirs(parent)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open_binary(tmp, "wb") as f:
    f.write(data)
  rename(tmp, path)


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def rename(src: str, dst: str) -> None:
  if is_remote(src):
    files.rename(src, dst, overwrite=True)
  else:
    os.replace(src, dst)


def remove(path: str) -> None:
  if is_remote(path):
    files.remove(path)
  elif os.path.exists(path):
    os.remove(path)


def remove_tree(path: str) -> None:
  if is_remote(path):
    if files.exists(path):
      files._gfile().rmtree(path)  # pylint: disable=protected-access
  else:
    shutil.rmtree(path, ignore_errors=True)
