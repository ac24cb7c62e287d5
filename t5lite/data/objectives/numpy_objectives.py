"""Every pretraining objective in NumPy, one raw token piece at a time, keyed on a Generator.

For the cached, index-addressed input path: the cache stores raw pieces of an objective's raw
length and each becomes an example here, with randomness drawn only from
`example_rng(seed, index)`, so example `index` is the same whatever the process count, worker
count or restart point:

  objective = registry.objective("span_corruption").numpy({"inputs": 512, "targets": 114}, vocab)
  example = objective(piece_L, numpy_objectives.example_rng(seed, index))   # EOS'd inputs/targets

The definitions are those of the TF preprocessors (tf_spans.py, tf_objectives.py): the same
counts (float32 arithmetic and round-half-to-even, as tf.round), the same mask distributions,
sentinel layouts, UL2 mode prefixes and `append_eos_after_trim`. The random streams differ (numpy
vs TF stateless ops), so examples are equal in distribution, not token for token. The noise
factories here (spans_noise, ...) are what registry.py's specs name; BART's is bart_noise.py's.
"""
from __future__ import annotations

import functools
from typing import Callable, Mapping, Sequence

import numpy as np
from numpy.random.bit_generator import ISeedSequence

NUM_RESERVED_T5 = 3  # pad, eos, unk: BERT-style random ids come from [3, vocab_size)

Noise = Callable[[np.ndarray, np.random.Generator], "tuple[np.ndarray, np.ndarray]"]


# ---------------------------------------------------------------------------------------------
# The per-example Generator
# ---------------------------------------------------------------------------------------------
class _PhiloxKey(ISeedSequence):
  """Hands Philox its 128-bit key as is: skips SeedSequence's entropy draw and hashing."""
  __slots__ = ("_key",)

  def __init__(self, key: np.ndarray):
    self._key = key  # uint64 [2]

  def generate_state(self, n_words, dtype=np.uint32):
    del n_words, dtype  # Philox asks for exactly 2 uint64 words: its key
    return self._key


def example_rng(seed: int, index: int) -> np.random.Generator:
  """The Generator of global example `index`: Philox4x64-10 keyed by (index, seed), counter 0.

  A counter-based generator whose key is a stream id by design (Salmon et al. 2011: distinct keys
  give independent streams, BigCrush-clean), so (seed, index) needs no hashing. Equal to
  Generator(Philox(key=(seed << 64) + index)), built without Philox's own SeedSequence and key
  parsing, which cost more than the noise of a span corruption example.
  """
  if not 0 <= seed < 1 << 64 or not 0 <= index < 1 << 64:
    raise ValueError(f"example_rng needs 0 <= seed, index < 2**64; got seed {seed}, index {index}")
  return np.random.Generator(np.random.Philox(_PhiloxKey(np.array([index, seed], np.uint64))))


# ---------------------------------------------------------------------------------------------
# Noise masks (span_corruption.random_spans_noise_mask, objectives' T5 masks)
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def span_counts(length: int, noise_density: float,
                mean_noise_span_length: float) -> tuple[int, int]:
  """(num_noise, num_spans) of a span mask over max(length, 2) tokens, in TF's float32 math."""
  length = max(length, 2)
  num_noise = int(np.round(np.float32(length) * np.float32(noise_density)))
  num_noise = min(max(num_noise, 1), length - 1)
  num_spans = int(np.round(np.float32(num_noise) / np.float32(mean_noise_span_length)))
  return num_noise, max(num_spans, 1)


def _cuts(keys: np.ndarray, num_parts: int) -> np.ndarray:
  """Where parts 2.. start when len(keys) + 1 items are split into num_parts uniformly random
  positive parts; sorted int64 [num_parts - 1] in [1, items).

  keys: iid uniform uint64, one per gap between items. The parts start after the num_parts - 1
  gaps with the smallest keys: a uniform subset of the gaps, as TF's shuffled indicator.
  """
  if num_parts == 1:
    return np.zeros(0, np.int64)
  threshold = np.partition(keys, num_parts - 2)[num_parts - 2]
  cuts = np.flatnonzero(keys <= threshold)
  if len(cuts) >= num_parts:  # equal keys at the threshold (p ~ 1e-14): the first ones
    cuts = np.sort(np.argsort(keys, kind="stable")[:num_parts - 1])
  cuts += 1
  return cuts


def random_span_starts(length: int, noise_density: float, mean_noise_span_length: float,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Random spans over max(length, 2) tokens: (noise span starts int64 [spans], non-noise span
  starts after the first, which is 0, int64 [spans - 1]); non-noise span i precedes noise span i.

  num_noise = clip(round(length * density), 1, length - 1); num_spans = max(round(num_noise /
  mean), 1); noise and non-noise tokens are each split into num_spans random positive parts.
  """
  num_noise, num_spans = span_counts(length, noise_density, mean_noise_span_length)
  num_nonnoise = max(length, 2) - num_noise
  keys = rng.bit_generator.random_raw(num_noise + num_nonnoise - 2)  # one per gap of each part
  noise_cuts = _cuts(keys[:num_noise - 1], num_spans)  # [spans - 1], in noise-token positions
  nonnoise_cuts = _cuts(keys[num_noise - 1:], num_spans)  # [spans - 1]
  # Noise span i starts after non-noise spans 0..i and noise spans 0..i-1; non-noise span i
  # after non-noise spans 0..i-1 and noise spans 0..i-1.
  noise_starts = np.empty(num_spans, np.int64)
  noise_starts[:-1] = nonnoise_cuts
  noise_starts[-1] = num_nonnoise
  noise_starts[1:] += noise_cuts
  return noise_starts, noise_cuts + nonnoise_cuts


def _spans_mask(length: int, noise_starts: np.ndarray, nonnoise_starts: np.ndarray) -> np.ndarray:
  """bool [length]: True from each noise start up to the next non-noise start."""
  step = np.zeros(max(length, 2), np.int8)  # [max(length, 2)]: +1 noise starts, -1 it ends
  step[noise_starts] = 1
  step[nonnoise_starts] = -1
  return np.cumsum(step[:length], dtype=np.int8).view(bool)


def random_spans_noise_mask(length: int, noise_density: float, mean_noise_span_length: float,
                            rng: np.random.Generator) -> np.ndarray:
  """bool [length]: random noise spans (random_span_starts), starting with non-noise and ending
  with noise; the mask of max(length, 2) tokens cut to length, as span_corruption's."""
  if noise_density == 0.0:
    return np.zeros(length, bool)
  return _spans_mask(length, *random_span_starts(length, noise_density, mean_noise_span_length,
                                                 rng))


def random_prefix_noise_mask(length: int, noise_density: float,
                             rng: np.random.Generator) -> np.ndarray:
  """bool [length]: noise after a uniform prefix of [round((1 - 2d)(n - 1)), n - 1] tokens."""
  if noise_density > 0.5:
    raise ValueError(f"prefix LM noise density must be <= 0.5; got {noise_density}")
  return np.arange(length) >= _prefix_inputs(length, noise_density, rng)


def _prefix_inputs(length: int, noise_density: float, rng: np.random.Generator) -> int:
  max_inputs = length - 1
  scaled = np.float32(1 - 2 * noise_density) * np.float32(max_inputs)  # TF's float32 product
  min_inputs = min(max_inputs, max(1, int(np.round(scaled))))
  return int(rng.integers(min_inputs, max_inputs + 1))


def iid_noise_mask(length: int, noise_density: float, rng: np.random.Generator) -> np.ndarray:
  """bool [length]: each token is noise independently with probability noise_density."""
  return rng.random(length, dtype=np.float32) < np.float32(noise_density)


# ---------------------------------------------------------------------------------------------
# Token functions
# ---------------------------------------------------------------------------------------------
def noise_span_to_sentinel(tokens: np.ndarray, noise_mask: np.ndarray, vocab_size: int,
                           num_sentinels: int = 0) -> np.ndarray:
  """Each noise span -> one sentinel: vocab_size - 1, vocab_size - 2, ...

  num_sentinels 0: t5's noise_span_to_unique_sentinel (ids run on past the extra ids);
  n > 0: span k gets vocab_size - 1 - (k mod n), objectives.noise_span_to_sentinel.
  tokens: int [length]; noise_mask: bool [length]. Returns [length - later noise tokens].
  """
  prev_is_noise = np.empty_like(noise_mask)  # [length]
  prev_is_noise[:1] = False
  prev_is_noise[1:] = noise_mask[:-1]
  first_noise = noise_mask & ~prev_is_noise
  span_index = np.cumsum(first_noise) - 1  # [length]
  if num_sentinels:
    span_index %= num_sentinels
  out = np.where(first_noise, vocab_size - 1 - span_index, tokens).astype(tokens.dtype)
  return out[~(noise_mask & prev_is_noise)]


def nonnoise_span_to_sentinel(tokens: np.ndarray, noise_mask: np.ndarray, vocab_size: int,
                              num_sentinels: int = 0) -> np.ndarray:
  """Targets side: each non-noise span becomes a sentinel."""
  return noise_span_to_sentinel(tokens, ~noise_mask, vocab_size, num_sentinels)


def sentinel_ids(vocab_size: int, num_spans: int, num_sentinels: int = 0) -> np.ndarray:
  """int64 [num_spans]: the sentinel of each span, as noise_span_to_sentinel numbers them."""
  span_index = np.arange(num_spans)
  return vocab_size - 1 - (span_index % num_sentinels if num_sentinels else span_index)


def _span_corrupt(tokens: np.ndarray, noise_starts: np.ndarray, nonnoise_starts: np.ndarray,
                  sentinels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(inputs, targets) of span corruption from random_span_starts over len(tokens) >= 2 tokens:
  what noise_span_to_sentinel / nonnoise_span_to_sentinel make of their mask, found without
  scanning the mask for span starts. sentinels: int [>= spans], sentinel_ids."""
  noise = _spans_mask(len(tokens), noise_starts, nonnoise_starts)  # bool [n]
  keep = ~noise  # inputs: non-noise tokens and each noise span's first (its sentinel)
  keep[noise_starts] = True
  marked = tokens.copy()
  marked[noise_starts] = sentinels[:len(noise_starts)]
  inputs = marked[keep]
  keep = noise  # targets: noise tokens and each non-noise span's first (its sentinel)
  keep[0] = True
  keep[nonnoise_starts] = True
  marked = tokens.copy()
  marked[0] = sentinels[0]
  marked[nonnoise_starts] = sentinels[1:len(noise_starts)]
  return inputs, marked[keep]


def noise_token_to_random_token_or_sentinel(tokens: np.ndarray, noise_mask: np.ndarray,
                                            vocab_size: int, rng: np.random.Generator,
                                            random_prob: float = 0.1) -> np.ndarray:
  """Each noise token -> a random id in [3, vocab_size) w.p. random_prob, else vocab_size - 1."""
  num_noise = int(noise_mask.sum())
  use_random = rng.random(num_noise, dtype=np.float32) < np.float32(random_prob)
  noise = np.full(num_noise, vocab_size - 1, tokens.dtype)
  noise[use_random] = rng.integers(NUM_RESERVED_T5, vocab_size, int(use_random.sum()))
  out = tokens.copy()
  out[noise_mask] = noise
  return out


# ---------------------------------------------------------------------------------------------
# Noise factories (registry.py's specs): (vocabulary, params, raw_length) -> noise(tokens, rng)
# ---------------------------------------------------------------------------------------------
# Module-level functions bound by functools.partial: a NumpyObjective pickles (grain workers).
def _spans(tokens, rng, *, vocab_size: int, num_sentinels: int, noise_density: float,
           mean_noise_span_length: float, sentinels: np.ndarray):
  n = len(tokens)
  if noise_density == 0.0 or n < 2:  # TF's sentinel functions on the mask
    mask = random_spans_noise_mask(n, noise_density, mean_noise_span_length, rng)
    return (noise_span_to_sentinel(tokens, mask, vocab_size, num_sentinels),
            nonnoise_span_to_sentinel(tokens, mask, vocab_size, num_sentinels))
  starts = random_span_starts(n, noise_density, mean_noise_span_length, rng)
  if len(sentinels) < len(starts[0]):  # a piece longer than raw_length
    sentinels = sentinel_ids(vocab_size, len(starts[0]), num_sentinels)
  return _span_corrupt(tokens, *starts, sentinels)


def spans_noise(vocabulary, params: Mapping, raw_length: int, unique_sentinels: bool) -> Noise:
  """Span corruption (unique sentinels, as t5's: they run on past the extra ids) or UL2 R/X
  (sentinels repeat after the vocabulary's extra ids)."""
  vocab_size = vocabulary.vocab_size
  num_sentinels = 0 if unique_sentinels else max(vocabulary.extra_ids, 0)
  return functools.partial(
      _spans, vocab_size=vocab_size, num_sentinels=num_sentinels,
      noise_density=params["noise_density"],
      mean_noise_span_length=params["mean_noise_span_length"],
      sentinels=sentinel_ids(vocab_size, raw_length // 2 + 1, num_sentinels))  # spans <= n/2


def _prefix(tokens, rng, *, noise_density: float):
  k = max(_prefix_inputs(len(tokens), noise_density, rng), 0)
  return tokens[:k], tokens[k:]


def prefix_noise(vocabulary, params: Mapping, raw_length: int) -> Noise:
  del vocabulary, raw_length
  return functools.partial(_prefix, noise_density=params["noise_density"])


def _iid(tokens, rng, *, vocab_size: int, num_sentinels: int, noise_density: float):
  mask = iid_noise_mask(len(tokens), noise_density, rng)
  return (noise_span_to_sentinel(tokens, mask, vocab_size, num_sentinels),
          nonnoise_span_to_sentinel(tokens, mask, vocab_size, num_sentinels))


def iid_noise(vocabulary, params: Mapping, raw_length: int) -> Noise:
  del raw_length
  return functools.partial(_iid, vocab_size=vocabulary.vocab_size,
                           num_sentinels=max(vocabulary.extra_ids, 0),
                           noise_density=params["noise_density"])


def _bert(tokens, rng, *, vocab_size: int, noise_density: float, random_prob: float):
  mask = iid_noise_mask(len(tokens), noise_density, rng)
  return noise_token_to_random_token_or_sentinel(tokens, mask, vocab_size, rng,
                                                 random_prob), tokens


def bert_noise(vocabulary, params: Mapping, raw_length: int) -> Noise:
  del raw_length
  return functools.partial(_bert, vocab_size=vocabulary.vocab_size,
                           noise_density=params["noise_density"],
                           random_prob=params["random_prob"])


def _deshuffle(tokens, rng):
  return rng.permutation(tokens), tokens


def deshuffle_noise(vocabulary, params: Mapping, raw_length: int) -> Noise:
  del vocabulary, params, raw_length
  return _deshuffle


# ---------------------------------------------------------------------------------------------
# The objective of a task at its lengths
# ---------------------------------------------------------------------------------------------
def _with_eos(prefix: np.ndarray, x: np.ndarray, length: int, eos_id: int) -> np.ndarray:
  """seqio append_eos_after_trim on prefix + x: int32 [min(len, length - 1) + 1]."""
  p = min(len(prefix), length - 1)
  n = min(len(x), length - 1 - p)
  out = np.empty(p + n + 1, np.int32)
  out[:p] = prefix[:p]
  out[p:p + n] = x[:n]
  out[-1] = eos_id
  return out


class NumpyObjective:
  """One objective at its lengths: a raw token piece + its Generator -> {"inputs", "targets"}
  with EOS (registry.Objective.numpy builds it). The piece is `raw_length()` tokens (the last
  piece of a stream may be shorter)."""

  def __init__(self, name: str, params: Mapping, raw_length: int, prefix: Sequence[int],
               sequence_length: Mapping[str, int], eos_id: int, noise: Noise):
    self.name, self.kwargs = name, dict(params)
    self.prefix = np.asarray(prefix, np.int32)
    self._raw_length = int(raw_length)
    self.inputs_length = int(sequence_length["inputs"])
    self.targets_length = int(sequence_length["targets"])
    self.eos_id = eos_id
    self._noise = noise

  def raw_length(self) -> int:
    """Raw tokens per example at these lengths (registry.Objective.raw_length)."""
    return self._raw_length

  def __call__(self, tokens_L: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    tokens_L = np.asarray(tokens_L, np.int32)
    inputs, targets = self._noise(tokens_L, rng)
    return {"inputs": _with_eos(self.prefix, inputs, self.inputs_length, self.eos_id),
            "targets": _with_eos(self.prefix[:0], targets, self.targets_length, self.eos_id)}

  def __repr__(self):
    return f"NumpyObjective({self.name!r}, raw_length={self._raw_length}, {self.kwargs})"
