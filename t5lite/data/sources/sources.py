"""Where text and vocabularies come from: one configuration (`Sources`) for every task family.

gin_configs/sources.gin, parsed first by every command, binds its fields to the macros
VOCABULARY_PATH, C4_JSON_FILES, C4_JSON_VALIDATION_FILES, TFDS_DATA_DIR and GPT2_BPE_DIR, so
`--gin.VOCABULARY_PATH=...` reaches every task (span corruption, BART, UL2, ...) in every command.

Three text sources, each a seqio DataSource with "train" and "validation" splits of {"text"}:
  c4       TFDS c4/en (`tfds_version`, `tfds_data_dir`)
  c4_json  allenai/c4-style JSON-lines shards (`*.json.gz`, local or gs://)
  demo     the embedded corpus (demo_corpus.py), built on first read
"""
from __future__ import annotations

import collections
import collections.abc
import dataclasses
import gzip
import json
import logging
import os
import threading
import zlib
from typing import Callable, Iterator, Mapping, Optional, Sequence, Union

import gin
import seqio
import tensorflow as tf

from t5lite import files
from t5lite.data.sources import demo_corpus
from t5lite.data.vocab.gpt2 import GPT2BPEVocabulary
from t5lite.data.vocab.sentencepiece import T5_VOCAB_PATH
from t5lite.data.vocab.sentencepiece import SentencePieceVocabulary

Patterns = Union[str, Sequence[str]]
GPT2_BPE_DIR = os.path.join(
    os.environ.get("T5LITE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "t5lite"),
    "gpt2_bpe")
SOURCE_NAMES = ("c4", "c4_json", "demo")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Sources:
  """Text sources and vocabularies of the registered tasks (nothing is read until a dataset is).

  vocabulary_path: T5 SentencePiece model (local or gs://) of the c4 / c4_json T5-style tasks.
  gpt2_bpe_dir: GPT-2 BPE files of the c4 / c4_json BART tasks (encoder.json + vocab.bpe, or HF
    BART's vocab.json + merges.txt); None means $T5LITE_CACHE/gpt2_bpe.
  cache_dir: the token cache (`t5lite cache`, data/cache.py) every command reads instead of
    tokenizing on the fly; None: the tf.data path. build_missing_cache builds it on first use
    (the demo's small corpus) instead of stopping with the command that builds it.
  """
  vocabulary_path: str = T5_VOCAB_PATH
  c4_json_files: Patterns = "gs://allenai-c4/en/c4-train.*-of-01024.json.gz"
  c4_json_validation_files: Optional[Patterns] = (
      "gs://allenai-c4/en/c4-validation.*-of-00008.json.gz")
  tfds_version: str = "3.1.0"
  tfds_data_dir: Optional[str] = None
  gpt2_bpe_dir: Optional[str] = None
  cache_dir: Optional[str] = None
  build_missing_cache: bool = False

  def t5_vocabulary(self) -> SentencePieceVocabulary:
    return SentencePieceVocabulary(str(self.vocabulary_path), extra_ids=100)

  def gpt2_vocabulary(self) -> GPT2BPEVocabulary:
    return GPT2BPEVocabulary(self.gpt2_bpe_dir or GPT2_BPE_DIR)

  def source(self, name: str) -> seqio.DataSource:
    """The DataSource of one of SOURCE_NAMES."""
    if name == "c4":
      return seqio.TfdsDataSource(f"c4/en:{self.tfds_version}", tfds_data_dir=self.tfds_data_dir)
    if name == "c4_json":
      return json_source(self.c4_json_files, self.c4_json_validation_files)
    if name == "demo":
      return JsonLinesDataSource(_LazyPatterns(_demo_patterns, ("train", "validation")))
    raise ValueError(f"unknown source {name!r}; expected one of {SOURCE_NAMES}")

  def vocabularies(self, name: str) -> tuple[seqio.Vocabulary, seqio.Vocabulary]:
    """(T5-style vocabulary, BART vocabulary) of a source: the demo uses its own for both."""
    if name == "demo":
      demo = demo_corpus.DemoVocabulary()
      return demo, demo
    return self.t5_vocabulary(), self.gpt2_vocabulary()


# ----------------------------------------------------------------------------- JSON lines


class RecordError(ValueError):
  """A JSON line that is not a JSON object with a string `text` field; `reason` says which."""

  def __init__(self, message: str, reason: str):
    super().__init__(message)
    self.reason = reason


class CorruptFileError(ValueError):
  """A shard that cannot be read to its end (corrupt or truncated gzip, unreadable file)."""


# Records skipped by the tf.data path in this process: {(file, reason): count}.
skipped_records: collections.Counter = collections.Counter()
_skip_lock = threading.Lock()
_FILE_ERRORS = (OSError, EOFError, zlib.error)


def parse_text(raw: bytes, key: str = "text") -> str:
  """The `key` field of one JSON line; RecordError saying what is wrong with it."""
  try:
    record = json.loads(raw)
  except ValueError as e:  # invalid JSON or invalid UTF-8 (UnicodeDecodeError is a ValueError)
    raise RecordError(f"not a JSON line ({e})", "invalid_json") from None
  if not isinstance(record, dict) or not isinstance(record.get(key), str):
    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
    raise RecordError(f"no string {key!r} field (has {keys})", "no_text")
  return record[key]


def json_texts(path: str, skipped: collections.Counter) -> Iterator[bytes]:
  """The UTF-8 `text` of each line of one JSON-lines file (gzip when the name ends .gz). A bad
  record is skipped and counted in skipped[(path, reason)], the first of a file logged with its
  line; a file that cannot be read to its end raises CorruptFileError naming it."""
  n = 0
  try:
    with files.open_file(path, "rb") as f:
      stream = gzip.GzipFile(fileobj=f) if path.endswith(".gz") else f
      for n, line in enumerate(stream, 1):
        if not line.strip():
          continue
        try:
          text = parse_text(line).encode("utf-8")
        except (RecordError, UnicodeEncodeError) as e:  # lone surrogates fail to encode
          reason = e.reason if isinstance(e, RecordError) else "invalid_utf8"
          with _skip_lock:
            if not any(k[0] == path for k in skipped):
              logging.warning("t5lite: skipping bad records of %s (line %d: %s); counted", path,
                              n, e)
            skipped[(path, reason)] += 1
          continue
        if text:
          yield text
  except _FILE_ERRORS as e:
    raise CorruptFileError(f"{path}: cannot be read past line {n} ({type(e).__name__}: {e}); "
                           "a corrupt or truncated shard: replace or remove it") from None
  except Exception as e:  # pylint: disable=broad-except
    if type(e).__module__.startswith("tensorflow"):  # tf.errors.* from tf.io.gfile
      raise CorruptFileError(f"{path}: cannot be read past line {n} ({e.message})") from None
    raise


def read_json_lines(path: tf.Tensor) -> tf.data.Dataset:
  """{"text"} of the non-empty, well-formed records of one file (json_texts)."""
  texts = tf.data.Dataset.from_generator(
      lambda p: json_texts(p.decode("utf-8"), skipped_records), args=(path,),
      output_signature=tf.TensorSpec([], tf.string))
  return texts.map(lambda text: {"text": text})


class JsonLinesDataSource(seqio.FileDataSource):
  """Splits of JSON-lines shards; seqio shards by file, or by example when files < shards."""

  def __init__(self, split_to_filepattern: Mapping[str, Patterns],
               reader: Callable[[tf.Tensor], tf.data.Dataset] = read_json_lines):
    # Not copied: a lazy Mapping (the demo corpus) resolves its patterns on first read.
    super().__init__(read_file_fn=reader, split_to_filepattern=split_to_filepattern)

  def list_shards(self, split: str) -> Sequence[str]:
    return files.glob_all(self._split_to_filepattern[split], f"JSON shards of split {split!r}")


def json_source(train: Patterns, validation: Optional[Patterns] = None) -> JsonLinesDataSource:
  """allenai/c4-style JSON shards for "train" (and "validation" when given)."""
  splits = {"train": train}
  if validation is not None:
    splits["validation"] = validation
  return JsonLinesDataSource(splits)


class _LazyPatterns(collections.abc.Mapping):
  """split -> file pattern, computed on first read (the demo shards are built then)."""

  def __init__(self, fn: Callable[[], Mapping[str, Patterns]], splits: Sequence[str]):
    self._fn = fn
    self._splits = tuple(splits)

  def __getitem__(self, split):
    return self._fn()[split]

  def __iter__(self):
    return iter(self._splits)

  def __len__(self):
    return len(self._splits)

  def __repr__(self):
    return f"_LazyPatterns({self._fn.__name__})"


def _demo_patterns() -> Mapping[str, str]:
  assets = demo_corpus.demo_assets()
  return {"train": assets.train_pattern, "validation": assets.validation_pattern}
