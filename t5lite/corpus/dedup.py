"""Deduplication across pages at scale, as datatrove stages: signatures per task -> find per
bucket -> filter per task.

Exact keys (C4's URL dedup and cross-page line dedup): each task writes one record per
(key, page) into buckets by key; a bucket task sorts its records and, in each key group, keeps
the first by the group's order and lists the others per task; the next pass of each task drops
what it lost.
  urls   key md5(normalised URL); order: newest timestamp first (TFDS select_newest_page), ties
         to the page read first (input file, then position in it)
  lines  key md5(line.strip().lower()); order: smallest md5(page URL) first (TFDS
         remove_duplicate_text: Top.PerKey(1, key=md5, reverse=True) over the page URLs), ties
         (the same URL twice, only without URL dedup) to the page read first
Records are numpy structured arrays: 64 bytes a key and page. A bucket holds 1/buckets of all
records and is sorted in memory.

Near-duplicates: datatrove's MinHash steps (MinhashConfig: word 5-grams, 14 buckets x 8 hashes),
its words split on whitespace after datatrove's own text normalisation (WhitespaceWords).
"""
from __future__ import annotations

import hashlib
import io
from typing import Iterable, Optional

import numpy as np
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.utils.word_tokenizers import WordTokenizer

from t5lite import files


KINDS = ("urls", "lines")
RECORD = np.dtype([("k0", "<u8"), ("k1", "<u8"),                           # key (128 bits)
                   ("o0", "<u8"), ("o1", "<u8"), ("o2", "<u8"), ("o3", "<u8"),  # group order
                   ("source", "<u8"),                                       # file << 32 | page
                   ("task", "<u4"), ("idx", "<u4")])                        # where the page is
LOST = np.dtype([("idx", "<u4"), ("k0", "<u8"), ("k1", "<u8")])  # what one task's page lost
TIMESTAMP_BYTES = 32
MINHASH = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)


def md5_words(text: str) -> tuple[int, int]:
  """md5 of text as two 64-bit words, most significant first (so they sort as the hex does)."""
  digest = hashlib.md5(text.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:], "big")


def line_key(line: str) -> tuple[int, int]:
  """TFDS _hash_text(line.strip().lower()), as two words."""
  return md5_words(line.strip().lower())


def newest_first(timestamp: str) -> tuple[int, int, int, int]:
  """Order words that sort newer timestamps first: the UTF-8 bytes (first 32) inverted."""
  data = timestamp.encode("utf-8")[:TIMESTAMP_BYTES].ljust(TIMESTAMP_BYTES, b"\0")
  data = bytes(255 - b for b in data)
  return tuple(int.from_bytes(data[i:i + 8], "big") for i in range(0, TIMESTAMP_BYTES, 8))


def source_order(file_index: int, page_index: int) -> int:
  return (file_index << 32) | page_index


def bucket_dir(work: str, kind: str, bucket: int) -> str:
  return files.join(work, "signatures", kind, f"{bucket:05d}")


def lost_path(work: str, kind: str, task: int, bucket: int) -> str:
  return files.join(work, "lost", kind, f"{task:05d}", f"{bucket:05d}.npy")


def _save(path: str, array: np.ndarray) -> None:
  buffer = io.BytesIO()
  np.save(buffer, array, allow_pickle=False)
  files.write_bytes(path, buffer.getvalue())


def _load(path: str) -> np.ndarray:
  with files.open_file(path, "rb") as f:
    return np.load(io.BytesIO(f.read()), allow_pickle=False)


class SignatureWriter:
  """Collects one task's records and writes them, by bucket, when the task ends."""

  CHUNK = 1 << 16  # rows kept as Python tuples before they become a compact array

  def __init__(self, work: str, kind: str, buckets: int, task: int):
    self.work, self.kind, self.buckets, self.task = work, kind, buckets, task
    self.rows: list[tuple] = []
    self.chunks: list[np.ndarray] = []

  def add(self, key: tuple[int, int], order: tuple[int, ...], source: int, idx: int) -> None:
    order = tuple(order) + (0,) * (4 - len(order))
    self.rows.append(key + order + (source, self.task, idx))
    if len(self.rows) >= self.CHUNK:
      self.chunks.append(np.array(self.rows, dtype=RECORD))
      self.rows = []

  def close(self) -> int:
    records = np.concatenate(self.chunks + [np.array(self.rows, dtype=RECORD).reshape(-1)])
    which = records["k0"] % np.uint64(self.buckets)
    for bucket in range(self.buckets):
      _save(files.join(bucket_dir(self.work, self.kind, bucket), f"{self.task:05d}.npy"),
            records[which == bucket])
    self.rows, self.chunks = [], []
    return len(records)


def find_losers(records: np.ndarray) -> np.ndarray:
  """The records that are not first of their key group (by order, then source, then place)."""
  if not len(records):
    return records
  order = np.lexsort(tuple(records[name] for name in reversed(RECORD.names)))
  records = records[order]
  same_key = np.zeros(len(records), bool)
  same_key[1:] = (records["k0"][1:] == records["k0"][:-1]) & (records["k1"][1:] == records["k1"][:-1])
  return records[same_key]


class FindDuplicates(PipelineStep):
  """Per bucket: the losers of each key group, written per task (lost/<kind>/<task>/<bucket>)."""
  type = "🫂 - DEDUP"
  name = "c4 find duplicates"

  def __init__(self, work: str, kind: str, tasks: int):
    super().__init__()
    self.work, self.kind, self.tasks = work, kind, tasks

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    del data
    with self.track_time("bucket"):
      folder = bucket_dir(self.work, self.kind, rank)
      parts = [_load(files.join(folder, name)) for name in files.listdir(folder, missing_ok=True)
               if name.endswith(".npy")]
      records = np.concatenate(parts) if parts else np.zeros(0, RECORD)
      losers = find_losers(records)
      self.stat_update(f"{self.kind}/records", value=len(records))
      self.stat_update(f"{self.kind}/duplicates", value=len(losers))
      for task in range(self.tasks):
        mine = losers[losers["task"] == task]
        lost = np.zeros(len(mine), LOST)
        for name in LOST.names:
          lost[name] = mine[name]
        _save(lost_path(self.work, self.kind, task, rank), np.sort(lost, order=LOST.names))
    return
    yield  # pylint: disable=unreachable  (a generator that yields nothing)


def load_lost(work: str, kind: str, task: int, buckets: int) -> dict[int, set[tuple[int, int]]]:
  """page index -> the keys it lost (lines) or {} (a lost URL: the whole page goes)."""
  lost: dict[int, set[tuple[int, int]]] = {}
  for bucket in range(buckets):
    for idx, k0, k1 in _load(lost_path(work, kind, task, bucket)).tolist():
      lost.setdefault(idx, set()).add((k0, k1))
  return lost


def remove_duplicate_lines(text: str, lost: Optional[set], count_sentences,
                           min_sentences: int, count, line_delimiter: str = "\n"
                           ) -> Optional[str]:
  """TFDS _remove_lines_from_text: drops the lines this page lost to another (global duplicates)
  and repeats within it (local), then the page if empty or under min_sentences sentences (the
  whole new text's sentences). Counters of TFDS's `dedupe-lines` namespace."""
  lost = lost or set()
  new_lines, seen = [], set()
  for line in text.split(line_delimiter):
    key = line_key(line)
    if key in lost:
      count("line-filtered:global_duplicate")
    elif key in seen:
      count("line-filtered:local_duplicate")
    else:
      count("line-passed")
      new_lines.append(line)
      seen.add(key)
  new_text = line_delimiter.join(new_lines)
  if not new_text:
    count("filtered:empty")
    return None
  if min_sentences and count_sentences(new_text) < min_sentences:
    count("filtered:too_few_sentences")
    return None
  count("passed")
  return new_text


def distinct_line_keys(text: str, line_delimiter: str = "\n") -> Iterable[tuple[int, int]]:
  """The keys of a page's lines, each once (TFDS _emit_url_to_lines, repeats folded)."""
  return dict.fromkeys(line_key(line) for line in text.split(line_delimiter))


class WhitespaceWords(WordTokenizer):
  """MinHash's words: datatrove normalises the text first (lower case, no punctuation, one space
  between words), so splitting on whitespace is enough; datatrove's English default is spaCy, a
  heavy dependency that splits normalised text the same way but for a few contractions."""

  def __init__(self):
    super().__init__("en")

  def word_tokenize(self, text: str) -> list[str]:
    return text.split()

  def sent_tokenize(self, text: str) -> list[str]:
    return [line for line in text.split("\n") if line.strip()]

  def span_tokenize(self, text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for sentence in self.sent_tokenize(text):
      start = text.index(sentence, start)
      spans.append((start, start + len(sentence)))
      start += len(sentence)
    return spans
