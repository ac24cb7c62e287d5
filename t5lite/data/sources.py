"""allenai/c4-style JSON-lines shards (`*.json.gz`, local or gs://) as a seqio DataSource."""
from __future__ import annotations

import json
import os
from typing import Callable, Mapping, Sequence, Union

import seqio
import tensorflow as tf

Patterns = Union[str, Sequence[str]]


def _parse_text(raw) -> bytes:
  return json.loads(raw.numpy())["text"].encode("utf-8")


def decode_json_text(line: tf.Tensor) -> dict[str, tf.Tensor]:
  """One JSON line -> {"text": string scalar}; other keys (url, timestamp) are ignored."""
  # TF has no JSON op; Python's json is exact for every escape and is not the bottleneck.
  text = tf.py_function(_parse_text, [line], tf.string)
  text.set_shape([])
  return {"text": text}


def read_json_lines(path: tf.Tensor) -> tf.data.Dataset:
  """Lines of one file (gzip when the name ends .gz), decoded to {"text": ...}."""
  compression = tf.where(tf.strings.regex_full_match(path, r".*\.gz"), "GZIP", "")
  lines = tf.data.TextLineDataset(path, compression_type=compression)
  return lines.map(decode_json_text, num_parallel_calls=tf.data.AUTOTUNE)


class JsonLinesDataSource(seqio.FileDataSource):
  """Splits of JSON-lines shards; seqio shards by file, or by example when files < shards."""

  def __init__(self, split_to_filepattern: Mapping[str, Patterns],
               reader: Callable[[tf.Tensor], tf.data.Dataset] = read_json_lines):
    # Not copied: a lazy Mapping (the demo corpus) resolves its patterns on first read.
    super().__init__(read_file_fn=reader, split_to_filepattern=split_to_filepattern)

  def list_shards(self, split: str) -> Sequence[str]:
    patterns = self._split_to_filepattern[split]
    patterns = [patterns] if isinstance(patterns, (str, os.PathLike)) else list(patterns)
    files = []
    for pattern in patterns:
      matched = sorted(tf.io.gfile.glob(os.fspath(pattern)))
      if not matched:
        raise FileNotFoundError(f"no file matches the JSON shard pattern {pattern!r} "
                                f"(split {split!r})")
      files.extend(matched)
    return files
