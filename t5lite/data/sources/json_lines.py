"""JSON-lines text shards (allenai/c4's layout: one {"text": ...} object a line, .gz or not) as a
seqio source, with bad records skipped and counted and a corrupt shard named."""
from __future__ import annotations

import collections
import logging
import os
import threading
import zlib
from typing import Iterator, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from t5lite import files
from t5lite.data.sources.sources import Patterns



class CorruptFileError(ValueError):
  """A shard that cannot be read to its end (corrupt or truncated gzip, unreadable file)."""


# Records skipped by the tf.data path in this process: {(file, reason): count}.
skipped_records: collections.Counter = collections.Counter()
_skip_lock = threading.Lock()
_FILE_ERRORS = (OSError, EOFError, zlib.error)
# A bad record's reason, as counted: a JSON object without a string `text` is "no_text".
_REASONS = {"not_an_object": "no_text", "missing_key": "no_text"}


def json_texts(path: str, skipped: collections.Counter, key: str = "text") -> Iterator[bytes]:
  """The UTF-8 `key` field of each line of one JSON-lines file (gzip when the name ends .gz). A
  bad record (invalid_utf8, invalid_json, no_text) is skipped and counted in
  skipped[(path, reason)], the first of a file logged with its line; a file that cannot be read
  to its end raises CorruptFileError naming it."""
  n = 0

  def skip(reason: str, n: int, error: Exception) -> None:
    with _skip_lock:
      if not any(k[0] == path for k in skipped):
        logging.warning("t5lite: skipping bad records of %s (line %d: %s); counted", path, n,
                        error)
      skipped[(path, reason)] += 1

  try:
    for n, record in files.iter_jsonl(path, (key,),
                                      on_bad=lambda e, n: skip(_REASONS.get(e.reason, e.reason),
                                                               n, e)):
      text = record[key]
      if not isinstance(text, str):
        skip("no_text", n, ValueError(f"{key!r} is a {type(text).__name__}"))
        continue
      try:
        data = text.encode("utf-8")
      except UnicodeEncodeError as e:  # lone surrogates (JSON escapes) have no UTF-8
        skip("invalid_utf8", n, e)
        continue
      if data:
        yield data
  except _FILE_ERRORS as e:
    raise CorruptFileError(f"{path}: cannot be read past line {n} ({type(e).__name__}: {e}); "
                           "a corrupt or truncated shard: replace or remove it") from None
  except Exception as e:  # pylint: disable=broad-except
    if type(e).__module__.startswith("tensorflow"):  # tf.errors.* from a remote file
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

  def __init__(self, split_to_filepattern: Mapping[str, Patterns]):
    # Not copied: a lazy Mapping (the demo corpus) resolves its patterns on first read.
    super().__init__(read_file_fn=read_json_lines, split_to_filepattern=split_to_filepattern)
    self.patterns = split_to_filepattern

  def split_patterns(self, split: str) -> list[str]:
    patterns = self.patterns[split]
    patterns = [patterns] if isinstance(patterns, (str, os.PathLike)) else patterns
    return [os.fspath(p) for p in patterns]

  def list_shards(self, split: str) -> Sequence[str]:
    return files.glob_all(self.split_patterns(split), f"JSON shards of split {split!r}")

  def describe(self, split: str) -> dict:
    """What the token cache keys this source on: the names t5lite has always written (so built
    caches keep their keys) and the split's file patterns."""
    if split not in self.patterns:
      raise ValueError(f"source {self!r} has no split {split!r}; it has {list(self.patterns)}")
    return {"type": "t5lite.data.sources.JsonLinesDataSource",
            "reader": "t5lite.data.sources.read_json_lines", "patterns": self.split_patterns(split)}


def json_source(train: Patterns, validation: Optional[Patterns] = None) -> JsonLinesDataSource:
  """allenai/c4-style JSON shards for "train" (and "validation" when given)."""
  splits = {"train": train}
  if validation is not None:
    splits["validation"] = validation
  return JsonLinesDataSource(splits)
