"""The token cache's format: a task's tokenized text as ArrayRecord blocks, its key and metadata.

One cache folder holds one split's files of one source tokenized with one vocabulary, cut
before the task's objective: every objective and every length on that source shares it.

  DATA_CACHE_DIR/<slug>.<8 hex>/       key = sha256(source, files, pre-objective steps, vocabulary)
    metadata.json                      written once every input file is done (CacheMetadata)
    00000-of-01024.arrayrecord         input file 0: its documents' token ids, concatenated (no
                                       separator, as T5's reduce_concat_tokens), cut into records
                                       of block_tokens ids (uint16 below 65536 ids, else int32)
    00000-of-01024.done.json           that file's counts; a rerun skips files that have one

Example j of input file f at raw length R is tokens[j*R:(j+1)*R] of that file's stream (the
incomplete tail is dropped), so reading it touches 1-2 records: O(1) for any j.
A cache's key is keys.py's (from a registered task), building is build.py, reading reader.py;
the index-addressed stream over the pieces is data/feed/indexed.py.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any, Optional

import numpy as np

from t5lite import files

FORMAT_VERSION = 1
DEFAULT_BLOCK_TOKENS = 2048
FEATURE = "targets"  # every t5lite objective reads its raw tokens from `targets`
WRITER_OPTIONS = "group_size:1"  # one record per chunk: random access reads one record (zstd)
READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"  # tuned for random access
METADATA = "metadata.json"


def cache_command(name: str, data_cache_dir: str, split: Optional[str] = None) -> str:
  """The command that builds the cache of task or mixture `name` (for error messages)."""
  split_arg = f" --split {split}" if split else ""
  return f"t5lite cache {name} --output {data_cache_dir}{split_arg}"


@dataclasses.dataclass(frozen=True)
class CacheKey:
  """What a cache's content depends on; its folder name is derived from it."""
  source: dict
  vocabulary: dict
  steps: tuple[str, ...]
  feature: str = FEATURE

  def as_json(self) -> dict[str, Any]:
    return {"source": self.source, "vocabulary": self.vocabulary, "steps": list(self.steps),
            "feature": self.feature}

  @property
  def digest(self) -> str:
    return hashlib.sha256(json.dumps(self.as_json(), sort_keys=True).encode()).hexdigest()

  @property
  def name(self) -> str:
    """e.g. `c4-train.1a2b3c4d`: a readable slug, then the key's hash."""
    if self.source["type"] == "tfds":
      slug = f"{self.source['name']}-{self.source['split']}"
    else:
      slug = re.split(r"[.*?\[]", os.path.basename(self.source["patterns"][0]))[0] or "files"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", slug).strip("-.") or "files"
    return f"{slug}.{self.digest[:8]}"


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


# ---------------------------------------------------------------------------------------------
# Files of a cache folder
# ---------------------------------------------------------------------------------------------
def data_file(index: int, count: int) -> str:
  return f"{index:05d}-of-{count:05d}.arrayrecord"


def done_file(index: int, count: int) -> str:
  return f"{index:05d}-of-{count:05d}.done.json"


def write_json(path: str, obj: Any) -> None:
  """Writes JSON atomically (files.write_text); local or gs://."""
  files.write_text(path, json.dumps(obj, indent=1, sort_keys=True))


def read_json(path: str) -> Any:
  return json.loads(files.read_text(path))


@dataclasses.dataclass(frozen=True)
class FileEntry:
  """One input file of a cache: where it came from, and what it holds."""
  source: str          # the input file
  cache: str           # its ArrayRecord file name in the folder ("" when it had no tokens)
  tokens: int          # ids in its stream
  blocks: int          # records
  documents: int       # documents written
  skipped_records: int  # records without text, invalid JSON or UTF-8 (see skipped)
  skipped: dict        # reason -> count
  error: Optional[str]  # why the whole file was skipped (corrupt gzip, unreadable), else None


@dataclasses.dataclass(frozen=True)
class CacheMetadata:
  """metadata.json of a cache folder."""
  format_version: int
  key: dict
  block_tokens: int
  dtype: str
  files: tuple[FileEntry, ...]

  @property
  def tokens(self) -> int:
    return sum(f.tokens for f in self.files)

  @property
  def bad_files(self) -> dict[str, str]:
    return {f.source: f.error for f in self.files if f.error}

  def as_json(self) -> dict[str, Any]:
    return {"format_version": self.format_version, "key": self.key,
            "block_tokens": self.block_tokens, "dtype": self.dtype,
            "files": [dataclasses.asdict(f) for f in self.files],
            "totals": {"tokens": self.tokens, "documents": sum(f.documents for f in self.files),
                       "skipped_records": sum(f.skipped_records for f in self.files),
                       "bad_files": self.bad_files}}

  @classmethod
  def from_json(cls, obj: dict) -> "CacheMetadata":
    return cls(format_version=obj["format_version"], key=obj["key"],
               block_tokens=obj["block_tokens"], dtype=obj["dtype"],
               files=tuple(FileEntry(**f) for f in obj["files"]))
