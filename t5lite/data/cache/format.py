"""The token cache: a task's tokenized text as ArrayRecord blocks, and the reader of its pieces.

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
Building is cache_build.py; the index-addressed stream over these pieces is indexed.py.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import threading
from typing import Any, Callable, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

FORMAT_VERSION = 1
DEFAULT_BLOCK_TOKENS = 2048
FEATURE = "targets"  # every t5lite objective reads its raw tokens from `targets`
WRITER_OPTIONS = "group_size:1"  # one record per chunk: random access reads one record (zstd)
READER_OPTIONS = "readahead_buffer_size:0,max_parallelism:0"  # tuned for random access
METADATA = "metadata.json"

log = logging.getLogger(__name__)


def cache_command(name: str, data_cache_dir: str, split: Optional[str] = None) -> str:
  """The command that builds the cache of task or mixture `name` (for error messages)."""
  split_arg = f" --split {split}" if split else ""
  return f"t5lite cache {name} --output {data_cache_dir}{split_arg}"


# ---------------------------------------------------------------------------------------------
# What a cache is keyed on
# ---------------------------------------------------------------------------------------------
def _unwrap(fn: Callable) -> tuple[Callable, dict]:
  kwargs = {}
  while isinstance(fn, functools.partial):
    kwargs = {**fn.keywords, **kwargs}
    fn = fn.func
  return fn, kwargs


def _is_tokenize(fn: Callable) -> bool:
  from t5lite.data.tasks import registry as tasks  # pylint: disable=g-import-not-at-top
  return _unwrap(fn)[0] in (seqio.preprocessors.tokenize, tasks.tokenize_in_batches)


def _describe_step(fn: Callable) -> str:
  """A stable name for one preprocessing step; the tokenize variants give the same ids."""
  if _is_tokenize(fn):
    return "tokenize"
  base, kwargs = _unwrap(fn)
  name = f"{getattr(base, '__module__', '?')}.{getattr(base, '__qualname__', repr(base))}"
  kwargs = {k: v for k, v in kwargs.items() if k not in ("output_features", "sequence_length")}
  return f"{name}({json.dumps(kwargs, sort_keys=True, default=repr)})" if kwargs else name


def pre_objective_steps(task: seqio.Task) -> list[Callable]:
  """The task's deterministic steps before its objective: those before a CacheDatasetPlaceholder,
  else everything up to and including the last tokenize step."""
  steps = list(task.preprocessors)
  for i, step in enumerate(steps):
    if isinstance(step, seqio.CacheDatasetPlaceholder):
      return steps[:i]
  last = max((i for i, step in enumerate(steps) if _is_tokenize(step)), default=None)
  if last is None:
    raise ValueError(f"task {task.name!r} has no tokenize step (seqio.preprocessors.tokenize or "
                     "tasks.tokenize_in_batches) and no CacheDatasetPlaceholder: nothing to cache")
  return steps[:last + 1]


def vocabulary_fingerprint(vocabulary: seqio.Vocabulary) -> dict[str, Any]:
  """What identifies a vocabulary's ids: the SentencePiece model's bytes, or GPT-2 BPE's files."""
  from t5lite.data.vocab.gpt2 import GPT2BPEVocabulary  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256()
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    kind = "sentencepiece"
    digest.update(vocabulary.sp_model)  # serialized model, extra ids included
  elif isinstance(vocabulary, GPT2BPEVocabulary):
    kind = "gpt2_bpe"
    vocabulary.vocab_size  # pylint: disable=pointless-statement  # loads it: missing files raise
    folder = vocabulary._bpe_dir  # pylint: disable=protected-access
    names = ["encoder.json", "vocab.bpe", "vocab.json", "merges.txt", "dict.txt"]
    for name in names:
      if (folder / name).exists():
        digest.update(name.encode() + b"\0" + (folder / name).read_bytes())
  else:
    raise ValueError(f"cannot fingerprint vocabulary {vocabulary!r}: the cache supports "
                     "SentencePiece and GPT-2 BPE vocabularies")
  return {"type": kind, "size": int(vocabulary.vocab_size), "sha256": digest.hexdigest()}


def _patterns(source: seqio.FileDataSource, split: str) -> list[str]:
  patterns = source._split_to_filepattern[split]  # pylint: disable=protected-access
  if isinstance(patterns, (str, os.PathLike)):
    patterns = [patterns]
  return [os.fspath(p) for p in patterns]


def describe_source(source: seqio.DataSource, split: str) -> dict[str, Any]:
  """The source of one split: its type and reader, and its file patterns (or TFDS name)."""
  if isinstance(source, seqio.TfdsDataSource):
    return {"type": "tfds", "name": source.tfds_dataset.name, "split": split}
  if isinstance(source, seqio.FileDataSource):
    if split not in source.splits:
      raise ValueError(f"source {source!r} has no split {split!r}; it has {list(source.splits)}")
    reader = _unwrap(source._reader)[0]  # pylint: disable=protected-access
    return {"type": f"{type(source).__module__}.{type(source).__qualname__}",
            "reader": f"{reader.__module__}.{reader.__qualname__}",
            "patterns": _patterns(source, split)}
  raise ValueError(f"cannot cache source {source!r}: supported sources are JSON shards, "
                   "seqio FileDataSources and TFDS")


def source_files(source: seqio.DataSource, split: str) -> list[str]:
  """The input files of a split, in the order the cache numbers them."""
  files = list(source.list_shards(split))
  if not files:
    raise FileNotFoundError(f"source {source!r} lists no input files for split {split!r}")
  return files


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


def cache_key(task: seqio.Task, split: str) -> CacheKey:
  vocabulary = task.output_features[FEATURE].vocabulary
  return CacheKey(source=describe_source(task.source, split),
                  vocabulary=vocabulary_fingerprint(vocabulary),
                  steps=tuple(_describe_step(s) for s in pre_objective_steps(task)))


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
  """Writes JSON atomically (temp name, then rename); local or gs://."""
  tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
  with tf.io.gfile.GFile(tmp, "w") as f:
    f.write(json.dumps(obj, indent=1, sort_keys=True))
  tf.io.gfile.rename(tmp, path, overwrite=True)


def read_json(path: str) -> Any:
  with tf.io.gfile.GFile(path, "r") as f:
    return json.loads(f.read())


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


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
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


def open_cache(name: str, task: seqio.Task, split: str, data_cache_dir: str) -> TokenCache:
  """The cache of `task`'s split under data_cache_dir; an error naming the build command if it is
  missing, unfinished or was built from another source or vocabulary. `name` is the task or
  mixture the user asked for (what the command builds)."""
  key = cache_key(task, split)
  directory = os.path.join(data_cache_dir, key.name)
  path = os.path.join(directory, METADATA)
  command = cache_command(name, data_cache_dir, split)
  if not tf.io.gfile.exists(path):
    others = [os.path.basename(p.rstrip("/")) for p in
              tf.io.gfile.glob(os.path.join(data_cache_dir, key.name.rsplit(".", 1)[0] + ".*"))]
    note = (f" (found {sorted(others)}: built from other files, steps or vocabulary)"
            if others else "")
    unfinished = tf.io.gfile.exists(directory)
    what = "is not finished (no metadata.json)" if unfinished else "does not exist"
    raise FileNotFoundError(
        f"the data cache of task {task.name!r} split {split!r} {what}: expected {path}{note}; "
        f"build it with `{command}` (same gin source and vocabulary settings as this run)")
  metadata = CacheMetadata.from_json(read_json(path))
  if metadata.format_version != FORMAT_VERSION:
    raise ValueError(f"{path} has cache format {metadata.format_version}, this t5lite reads "
                     f"{FORMAT_VERSION}; rebuild it with `{command}`")
  if metadata.key != key.as_json():
    raise ValueError(f"{path} was built for {metadata.key}, but task {task.name!r} needs "
                     f"{key.as_json()}; rebuild it with `{command}`")
  if metadata.tokens == 0:
    raise ValueError(f"{path} holds no tokens (bad files: {metadata.bad_files})")
  return TokenCache(directory, metadata)
