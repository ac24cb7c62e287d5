"""Hashed n-gram features and the bag-of-n-grams importance estimator of DSIR (Xie et al., 2023).

A document is lower-cased, split into words by nltk's WordPunctTokenizer pattern
(`\\w+|[^\\w\\s]+`, compiled with Python's `re` as nltk < 3.10.3 does; later nltk compiles it
with the `regex` module, whose \\w and \\s differ on rare characters such as "²"), and each
unigram, bigram, ... n-gram is hashed into one of `num_buckets` buckets (10,000 in the paper).
The bag-of-n-grams model of a corpus is the bucket distribution gamma = counts / sum(counts); a
document's log importance weight is

    log p_target(x) - log p_raw(x)
        = sum_j c_j(x) * (log(gamma_target_j + 1e-8) - log(gamma_raw_j + 1e-8))

with c_j(x) the document's count in bucket j (the data-selection package's estimator, its 1e-8
included).

Hashes: `sha256` is the data-selection package's `hash_buckets` (sha256 of the n-gram's words
joined by a space, mod num_buckets): exact parity with it, one Python sha256 per n-gram. `crc32`
(the default) hashes each word once (zlib.crc32 of its UTF-8 bytes, C calls through map) and builds
n-gram keys by mixing the word hashes with numpy (splitmix64's finalizer), which is several times
faster. Both are stable across processes and machines (Python's hash() is salted per process).
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import re
import zlib
from typing import Iterable, Sequence

import numpy as np

WORD_PATTERN = re.compile(r"\w+|[^\w\s]+")  # nltk.tokenize.WordPunctTokenizer's pattern
HASHES = ("crc32", "sha256")
EPS = 1e-8  # the data-selection package's smoothing of log probabilities

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S27, _S30, _S31 = np.uint64(27), np.uint64(30), np.uint64(31)


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finalizer on uint64 (wrapping multiplies): every input bit reaches every
  output bit."""
  x = x ^ (x >> _S30)
  x = x * _M1
  x = x ^ (x >> _S27)
  x = x * _M2
  return x ^ (x >> _S31)


@dataclasses.dataclass(frozen=True)
class Featurizer:
  """Words -> hashed n-gram buckets (unigrams, then bigrams, ..., as the package orders them)."""
  num_buckets: int = 10000
  ngrams: int = 2
  hash: str = "crc32"

  def __post_init__(self):
    if self.hash not in HASHES:
      raise ValueError(f"unknown n-gram hash {self.hash!r}; expected one of {HASHES}")
    if self.num_buckets < 1 or self.ngrams < 1:
      raise ValueError(f"num_buckets and ngrams must be >= 1, got {self.num_buckets}, "
                       f"{self.ngrams}")

  def words(self, text: str) -> list[str]:
    return WORD_PATTERN.findall(text.lower())

  def buckets(self, words: Sequence[str]) -> np.ndarray:
    """int64 [num_ngrams]: the bucket of every n-gram of `words`, n = 1..ngrams."""
    if self.hash == "sha256":
      return np.fromiter((_sha256_bucket(g, self.num_buckets) for g in self.ngram_strings(words)),
                         np.int64)
    h_W = np.fromiter(map(zlib.crc32, map(str.encode, words)), np.uint64, len(words))
    keys, out = h_W, []
    for n in range(1, self.ngrams + 1):
      if n > 1:  # key of words[i:i+n] = mix(key of words[i:i+n-1]) ^ hash(words[i+n-1])
        keys = _mix(keys[:-1]) ^ h_W[n - 1:]
      out.append(_mix(keys + np.uint64(n)) % np.uint64(self.num_buckets))
    return np.concatenate(out).astype(np.int64)

  def ngram_strings(self, words: Sequence[str]) -> list[str]:
    """The n-grams as the package hashes them (words joined by a space), aligned with buckets()."""
    out = list(words)
    for n in range(2, self.ngrams + 1):
      out.extend(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))
    return out

  def counts(self, texts: Iterable[str]) -> np.ndarray:
    """int64 [num_buckets]: the summed bucket counts of `texts`."""
    counts = np.zeros(self.num_buckets, np.int64)
    for text in texts:
      counts += np.bincount(self.buckets(self.words(text)), minlength=self.num_buckets)
    return counts


def _sha256_bucket(ngram: str, num_buckets: int) -> int:
  return int.from_bytes(hashlib.sha256(ngram.encode("utf-8")).digest(), "big") % num_buckets


class BucketExamples:
  """The most frequent n-gram strings seen in each bucket (a reverse map for the report).

  Kept as str-keyed dicts and returned as arrays: millions of small lists or tuples would make
  Python's garbage collector rescan the whole heap (TensorFlow's objects included) again and
  again."""

  MAX_CHARS = 40  # longer n-grams are cut (they are examples, and arrays of str are fixed-width)

  def __init__(self, featurizer: Featurizer, max_ngrams: int):
    self.featurizer, self.budget = featurizer, max_ngrams
    self.counts: collections.Counter = collections.Counter()
    self.bucket: dict[str, int] = {}

  def add(self, words: Sequence[str], buckets: np.ndarray) -> None:
    if self.budget <= 0:
      return
    strings = self.featurizer.ngram_strings(words)[:self.budget]
    self.counts.update(strings)
    self.bucket.update(zip(strings, buckets[:len(strings)].tolist()))
    self.budget -= len(strings)

  def top(self, per_bucket: int = 3) -> dict[str, np.ndarray]:
    """{"example_buckets", "example_ngrams", "example_counts"}: per_bucket n-grams a bucket."""
    kept: collections.Counter = collections.Counter()
    rows = []
    for ngram, count in self.counts.most_common():
      bucket = self.bucket[ngram]
      if kept[bucket] < per_bucket:
        kept[bucket] += 1
        rows.append((bucket, ngram[:self.MAX_CHARS], count))
    buckets, ngrams, counts = zip(*rows) if rows else ((), (), ())
    return {"example_buckets": np.array(buckets, np.int64), "example_ngrams": np.array(ngrams, str),
            "example_counts": np.array(counts, np.int64)}


def examples_of(bucket: int, examples: dict[str, np.ndarray], k: int = 3) -> list[str]:
  """Up to k distinct n-grams of `bucket`, most frequent first, from BucketExamples.top() arrays."""
  idx = np.flatnonzero(examples["example_buckets"] == bucket)
  idx = idx[np.argsort(-examples["example_counts"][idx], kind="stable")]
  return list(dict.fromkeys(str(g) for g in examples["example_ngrams"][idx]))[:k]


def log_ratio(target_counts: np.ndarray, raw_counts: np.ndarray) -> np.ndarray:
  """float64 [num_buckets]: log(gamma_target + eps) - log(gamma_raw + eps), an n-gram's weight."""
  t = target_counts / max(target_counts.sum(), 1)
  r = raw_counts / max(raw_counts.sum(), 1)
  return np.log(t + EPS) - np.log(r + EPS)


def kl_divergence(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
  """KL(p || q) in nats between bucket distributions given as counts: p = p_counts / sum, q
  add-one smoothed, q_j = (q_counts_j + 1) / (sum + num_buckets), summed over buckets with p_j > 0.

  The smoothing keeps a bucket that a small selection happens to miss finite (with the
  estimator's 1e-8 such buckets dominate the KL of a selection of a few hundred documents); on
  millions of documents it changes nothing."""
  p = p_counts / max(p_counts.sum(), 1)
  q = (q_counts + 1.0) / (q_counts.sum() + len(q_counts))
  nz = p > 0
  return float(np.sum(p[nz] * np.log(p[nz] / q[nz])))


def gumbel_keys(log_weights: np.ndarray, seed: int, shard: int) -> np.ndarray:
  """log w + Gumbel(0, 1) noise; the noise of line i is a pure function of (seed, shard, i)
  (numpy's PCG64 stream seeded by [seed, shard, 0], one double per line, in line order)."""
  u = np.random.default_rng([seed, shard, 0]).random(len(log_weights))
  with np.errstate(divide="ignore"):
    return log_weights.astype(np.float64) - np.log(-np.log(u))


def uniform_keys(n: int, seed: int, shard: int) -> np.ndarray:
  """Keys for the random baseline: its top-k is a uniform random k-subset."""
  return np.random.default_rng([seed, shard, 1]).random(n)


def top_k_masks(keys: Sequence[np.ndarray], k: int) -> list[np.ndarray]:
  """Boolean masks (one per shard) of the k largest keys over all shards (-inf keys never win)."""
  flat = np.concatenate(keys) if keys else np.zeros(0)
  mask = np.zeros(len(flat), bool)
  if k > 0:
    mask[np.argpartition(-flat, k - 1)[:k]] = True
  return np.split(mask, np.cumsum([len(x) for x in keys])[:-1])
