"""Reading a token cache: random access to its token streams (TokenCache), and finding and checking
the cache of a task's split (open_cache). No TensorFlow: a bare JAX image reads caches."""
from __future__ import annotations

import hashlib
import json
import os
import threading
from typing import Any, Sequence

import numpy as np

from t5lite import files
from t5lite.data.cache.format import (FORMAT_VERSION, METADATA, READER_OPTIONS, CacheKey,
                                      CacheMetadata, cache_command, read_json)


class ReadError(Exception):
  """A cache file that is missing or whose records do not parse; names the file."""


class TokenCache:
  """Random access to the token streams of one cache folder (thread-safe; readers open lazily).

  Picklable: a copy (e.g. in a grain worker process) reopens its files on first read.
  """

  def __init__(self, directory: str, metadata: CacheMetadata):
    if "://" in directory:
      raise ValueError(f"ArrayRecord reads local files; mount the bucket (e.g. gcsfuse) and point "
                       f"DATA_CACHE_DIR at the mount instead of {directory}")
    self.directory = directory
    self.metadata = metadata
    self.dtype = np.dtype(metadata.dtype)
    self.block_tokens = metadata.block_tokens
    self._readers: dict[int, Any] = {}
    self._failed: dict[int, str] = {}  # files that would not open: fail fast, same message
    self._lock = threading.Lock()

  def __getstate__(self):
    return {"directory": self.directory, "metadata": self.metadata}

  def __setstate__(self, state):
    self.__init__(state["directory"], state["metadata"])

  @property
  def fingerprint(self) -> str:
    """Changes when the cache's content changes (its key and per-file token counts)."""
    counts = [(f.source, f.tokens) for f in self.metadata.files]
    blob = json.dumps([self.metadata.key, self.metadata.block_tokens, counts], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]

  def examples_per_file(self, raw_length: int) -> np.ndarray:
    """int64[files]: pieces of raw_length tokens each file holds (the tail is dropped)."""
    return np.array([f.tokens // raw_length for f in self.metadata.files], dtype=np.int64)

  def _reader(self, index: int):
    reader = self._readers.get(index)
    if reader is not None:
      return reader
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    with self._lock:
      if index in self._failed:
        raise ReadError(self._failed[index])
      if index not in self._readers:
        entry = self.metadata.files[index]
        path = os.path.join(self.directory, entry.cache)
        try:
          reader = array_record_module.ArrayRecordReader(path, READER_OPTIONS)
          if reader.num_records() != entry.blocks:
            raise ValueError(f"{reader.num_records()} records, metadata says {entry.blocks}")
        except Exception as e:  # pylint: disable=broad-except  # missing / unreadable file
          self._failed[index] = f"{path}: cannot open ({e})"
          raise ReadError(self._failed[index]) from e
        self._readers[index] = reader
      return self._readers[index]

  def read(self, file_index: int, starts: Sequence[int], length: int) -> list[np.ndarray]:
    """Tokens [s, s + length) of file_index's stream for each s in starts (int32 arrays)."""
    bt = self.block_tokens
    first = [s // bt for s in starts]
    last = [(s + length - 1) // bt for s in starts]
    wanted = sorted({k for a, b in zip(first, last) for k in range(a, b + 1)})
    path = os.path.join(self.directory, self.metadata.files[file_index].cache)
    reader = self._reader(file_index)
    try:
      records = reader.read(wanted)  # one call for every piece of this file
    except Exception as e:  # pylint: disable=broad-except  # corrupt chunk
      raise ReadError(f"{path}: cannot read records ({e})") from e
    blocks = {}
    tokens = self.metadata.files[file_index].tokens
    for k, record in zip(wanted, records):
      size = min(bt, tokens - k * bt) * self.dtype.itemsize  # the last block may be shorter
      if len(record) != size:
        raise ReadError(f"{path}: record {k} has {len(record)} bytes, expected {size}")
      blocks[k] = np.frombuffer(record, dtype=self.dtype)
    out = []
    for s, a, b in zip(starts, first, last):
      joined = np.concatenate([blocks[k] for k in range(a, b + 1)]) if b > a else blocks[a]
      piece = joined[s - a * bt:s - a * bt + length]
      if len(piece) != length:
        raise ReadError(f"{path}: tokens [{s}, {s + length}) lie past the end of its stream")
      out.append(piece.astype(np.int32))
    return out

  def close(self) -> None:
    with self._lock:
      for reader in self._readers.values():
        reader.close()
      self._readers.clear()


def open_cache(name: str, task_name: str, key: CacheKey, split: str,
               data_cache_dir: str) -> TokenCache:
  """The cache of task `task_name`'s split (keyed `key`) under data_cache_dir; an error naming
  the build command if it is missing, unfinished or was built from another source or
  vocabulary. `name` is the task or mixture the user asked for (what the command builds)."""
  directory = os.path.join(data_cache_dir, key.name)
  path = os.path.join(directory, METADATA)
  command = cache_command(name, data_cache_dir, split)
  if not files.exists(path):
    others = [os.path.basename(p.rstrip("/")) for p in
              files.glob(os.path.join(data_cache_dir, key.name.rsplit(".", 1)[0] + ".*"))]
    note = (f" (found {sorted(others)}: built from other files, steps or vocabulary)"
            if others else "")
    unfinished = files.exists(directory)
    what = "is not finished (no metadata.json)" if unfinished else "does not exist"
    raise FileNotFoundError(
        f"the data cache of task {task_name!r} split {split!r} {what}: expected {path}{note}; "
        f"build it with `{command}` (same gin source and vocabulary settings as this run)")
  metadata = CacheMetadata.from_json(read_json(path))
  if metadata.format_version != FORMAT_VERSION:
    raise ValueError(f"{path} has cache format {metadata.format_version}, this t5lite reads "
                     f"{FORMAT_VERSION}; rebuild it with `{command}`")
  if metadata.key != key.as_json():
    raise ValueError(f"{path} was built for {metadata.key}, but task {task_name!r} needs "
                     f"{key.as_json()}; rebuild it with `{command}`")
  if metadata.tokens == 0:
    raise ValueError(f"{path} holds no tokens (bad files: {metadata.bad_files})")
  return TokenCache(directory, metadata)
