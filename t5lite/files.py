"""One file API for local paths (relative or absolute) and remote ones (gs://), via tf.io.gfile.

Local paths are made absolute (`absolute`) wherever they are stored or handed to orbax, whose
readers resolve relative paths against their own notion of the working folder.
"""
from __future__ import annotations

import os
from typing import Iterable


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (heavy; only when files are touched)
  return tf.io.gfile


def is_remote(path: str | os.PathLike) -> bool:
  return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
  """A remote path unchanged; a local one absolute, with ~ expanded."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def join(*parts: str | os.PathLike) -> str:
  return os.path.join(*[os.fspath(p) for p in parts])


def exists(path) -> bool:
  return _gfile().exists(os.fspath(path))


def isdir(path) -> bool:
  return _gfile().isdir(os.fspath(path))


def makedirs(path) -> None:
  _gfile().makedirs(os.fspath(path))


def listdir(path) -> list[str]:
  """Entry names (without the trailing '/' some remote file systems add)."""
  return sorted(name.rstrip("/") for name in _gfile().listdir(os.fspath(path)))


def glob(pattern) -> list[str]:
  return sorted(_gfile().glob(os.fspath(pattern)))


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


def remove(path) -> None:
  _gfile().remove(os.fspath(path))


def rename(src, dst, overwrite: bool = False) -> None:
  _gfile().rename(os.fspath(src), os.fspath(dst), overwrite=overwrite)


def copy(src, dst, overwrite: bool = False) -> None:
  _gfile().copy(os.fspath(src), os.fspath(dst), overwrite=overwrite)


def open_file(path, mode: str = "r"):
  """A file object (tf.io.gfile.GFile): local, relative or gs://."""
  return _gfile().GFile(os.fspath(path), mode)


def read_text(path) -> str:
  with open_file(path, "r") as f:
    return f.read()


def write_text(path, text: str) -> None:
  """Writes atomically where the file system allows (a temporary name, then a rename), so a
  reader never sees half a file."""
  path = os.fspath(path)
  parent = os.path.dirname(path)
  if parent and not exists(parent):
    makedirs(parent)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open_file(tmp, "w") as f:
    f.write(text)
  rename(tmp, path, overwrite=True)


def append_text(path, text: str) -> None:
  with open_file(path, "a") as f:
    f.write(text)
