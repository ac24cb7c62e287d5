"""BART's denoising noise (fairseq `fairseq/data/denoising_dataset.py`) in NumPy: text infilling,
sentence permutation, token deletion, document rotation.

`bart_noise` is fairseq's DenoisingDataset.__getitem__ on one example. Both paths run it: the
token cache through `noise_fn` (a Generator keyed on the example), the tf.data path through
`tf.numpy_function` (tf_objectives.py, a Generator seeded from seqio's per-example seed), each
objective's parameters mapped to its arguments once, by `noise_kwargs`. Targets are always the
clean text.

BART with a SentencePiece vocabulary (the demo tasks): <mask> is the first sentinel
(vocab_size - 1, `<extra_id_0>`), word starts are pieces beginning with '▁', full stop '.'.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import functools
from typing import Any, Mapping

import numpy as np

from t5lite.data.objectives.numpy_objectives import NUM_RESERVED_T5


@dataclasses.dataclass(frozen=True)
class BartVocabInfo:
  """What BART noise needs to know of a vocabulary."""
  mask_id: int
  full_stop_id: int
  word_start: np.ndarray  # bool [vocab_size]
  random_low: int  # random replacement tokens come from [random_low, random_high)
  random_high: int


def bart_vocab_info(vocabulary) -> BartVocabInfo:
  """GPT-2 BPE: its <mask>, 'Ġ' word starts and '.'; SentencePiece: <extra_id_0>, '▁', '.'.

  Random replacement tokens: GPT-2 ids [4, <mask>) (fairseq draws from [1, len(dict)), specials
  included); SentencePiece ids [3, pieces), never a sentinel.
  """
  if hasattr(vocabulary, "word_start_table"):  # GPT2BPEVocabulary
    return BartVocabInfo(vocabulary.mask_id, vocabulary.id_for_piece("."),
                         vocabulary.word_start_table(), 4, vocabulary.mask_id)
  sp = vocabulary.tokenizer  # seqio.SentencePieceVocabulary: the sentencepiece processor
  # The real pieces: seqio's processor also counts the extra ids (sentinels, <mask> among them).
  base = vocabulary.vocab_size - max(vocabulary.extra_ids, 0)
  word_start = np.ones(vocabulary.vocab_size, dtype=bool)  # specials and sentinels start words
  for i in range(NUM_RESERVED_T5, base):
    word_start[i] = sp.id_to_piece(i).startswith("▁")
  full_stop = sp.piece_to_id(".")
  if full_stop == sp.unk_id():
    raise ValueError("BART sentence permutation needs a '.' piece in the vocabulary")
  return BartVocabInfo(vocabulary.vocab_size - 1, full_stop, word_start, NUM_RESERVED_T5, base)


def _permute_sentences(tokens, ratio, full_stop_id, rng):
  """fairseq permute_sentences: a sentence ends at a full stop not preceded by one."""
  full_stops = tokens == full_stop_id
  full_stops[-1] = True  # pretend it ends with a full stop so the last span is a sentence
  ends = np.flatnonzero(full_stops & ~np.concatenate([[False], full_stops[:-1]])) + 1
  num_sentences = len(ends)
  num_to_permute = math.ceil(num_sentences * ratio)
  substitutions = rng.permutation(num_sentences)[:num_to_permute]
  ordering = np.arange(num_sentences)
  ordering[substitutions] = substitutions[rng.permutation(num_to_permute)]
  starts = np.concatenate([[0], ends[:-1]])
  result = tokens.copy()  # tokens after the last sentence end (a run of full stops) stay put
  pieces = [tokens[starts[i]:ends[i]] for i in ordering]
  if pieces:
    joined = np.concatenate(pieces)
    result[:len(joined)] = joined
  return result


def _random_tokens(n, info, rng):
  return rng.integers(info.random_low, info.random_high, size=n)


def _insert(tokens, n, random_ratio, info, rng):
  """fairseq add_insertion_noise with n inserted tokens: <mask>, ceil(n * random_ratio) random."""
  if n <= 0:
    return tokens
  total = len(tokens) + n
  positions = rng.permutation(total)[:n]  # fairseq skips <s>/</s> slots; there are none here
  is_noise = np.zeros(total, dtype=bool)
  is_noise[positions] = True
  result = np.empty(total, dtype=tokens.dtype)
  num_random = math.ceil(n * random_ratio)
  result[positions[num_random:]] = info.mask_id
  result[positions[:num_random]] = _random_tokens(num_random, info, rng)
  result[~is_noise] = tokens
  return result


def _whole_word_mask(tokens, ratio, poisson_lambda, random_ratio, replace_length, whole_words,
                     info, rng, stats=None):
  """fairseq add_whole_word_mask (mask_length span-poisson, or 1 when poisson_lambda is None).

  Span lengths count words; a word is a word-start token and the tokens after it up to the next
  word start. The first token of the example counts as a word start (fairseq: position 1 after
  <s> does not, so its first word can never be masked).
  """
  n = len(tokens)
  is_word_start = info.word_start[tokens] if whole_words else np.ones(n, dtype=bool)
  is_word_start = is_word_start.astype(np.int64)
  is_word_start[0] = 1
  num_to_mask = math.ceil(is_word_start.sum() * ratio)
  if stats is not None:
    stats.update(num_words=int(is_word_start.sum()), num_to_mask=num_to_mask,
                 span_lengths=np.zeros([0], np.int64), num_inserts=0)
  if num_to_mask == 0:
    return tokens
  num_inserts = 0
  if poisson_lambda is not None:
    lengths = rng.poisson(poisson_lambda, size=num_to_mask)
    while lengths.sum() < num_to_mask:  # make sure there is enough to mask
      lengths = np.concatenate([lengths, rng.poisson(poisson_lambda, size=num_to_mask)])
    cum = np.cumsum(lengths)
    i = int(np.argmax(cum >= num_to_mask))  # trim to the masking budget
    lengths[i] = num_to_mask - (0 if i == 0 else cum[i - 1])
    lengths = lengths[:i + 1]
    num_inserts = int((lengths == 0).sum())  # 0-length spans become inserted masks
    lengths = lengths[lengths > 0]
    num_to_mask = len(lengths)
    if stats is not None:
      stats.update(span_lengths=lengths.copy(), num_inserts=num_inserts)
    if num_to_mask == 0:
      return _insert(tokens, num_inserts, random_ratio, info, rng)
  else:
    lengths = np.ones(num_to_mask, dtype=np.int64)
  word_starts = np.flatnonzero(is_word_start)
  indices = word_starts[rng.permutation(len(word_starts))[:num_to_mask]]
  mask_random = rng.random(num_to_mask) < random_ratio
  source = tokens.copy()
  to_keep = np.ones(n, dtype=bool)
  is_word_start = np.concatenate([is_word_start, [255]])  # spans never run past the end
  if replace_length == 0:
    to_keep[indices] = False
  else:  # keep the span's first token, as <mask> (or a random token)
    source[indices] = info.mask_id
    source[indices[mask_random]] = _random_tokens(int(mask_random.sum()), info, rng)
  lengths = lengths - 1
  while len(indices):
    lengths = lengths - is_word_start[indices + 1]
    uncompleted = lengths >= 0
    indices = indices[uncompleted] + 1
    mask_random = mask_random[uncompleted]
    lengths = lengths[uncompleted]
    if replace_length != -1:
      to_keep[indices] = False
    else:
      source[indices] = info.mask_id
      source[indices[mask_random]] = _random_tokens(int(mask_random.sum()), info, rng)
  source = source[to_keep]
  return _insert(source, num_inserts, random_ratio, info, rng)


def bart_noise(tokens: np.ndarray, rng: np.random.Generator, info: BartVocabInfo,
               permute_ratio: float = 0.0, mask_ratio: float = 0.0,
               poisson_lambda: Optional[float] = 3.0, random_ratio: float = 0.1,
               replace_length: int = 1, whole_words: bool = True, insert_ratio: float = 0.0,
               rotate_ratio: float = 0.0, stats: Optional[dict] = None) -> np.ndarray:
  """fairseq DenoisingDataset.__getitem__ on one example (no <s>/</s>): permute, mask, insert, rotate.

  stats, when given, receives num_words, num_to_mask, span_lengths (words) and num_inserts.
  """
  tokens = np.asarray(tokens)
  if len(tokens) == 0:
    return tokens
  if permute_ratio > 0:
    tokens = _permute_sentences(tokens, permute_ratio, info.full_stop_id, rng)
  if mask_ratio > 0:
    tokens = _whole_word_mask(tokens, mask_ratio, poisson_lambda, random_ratio, replace_length,
                              whole_words, info, rng, stats)
  if insert_ratio > 0:
    tokens = _insert(tokens, math.ceil(len(tokens) * insert_ratio), random_ratio, info, rng)
  if rotate_ratio > 0 and rng.random() < rotate_ratio:
    offset = int(rng.integers(0, len(tokens)))
    tokens = np.concatenate([tokens[offset:], tokens[:offset]])
  return tokens


NOISE_ARGS = ("permute_ratio", "mask_ratio", "poisson_lambda", "random_ratio", "replace_length",
              "whole_words", "insert_ratio", "rotate_ratio")


def noise_kwargs(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
  """bart_noise's arguments for BART objective `name` with `params` (registry.py's): token
  deletion is fairseq's whole-word mask at subword level, span length 1, nothing put back
  (--mask-length subword --replace-length 0); document rotation always rotates (--rotate 1)."""
  kwargs = {k: v for k, v in params.items() if k in NOISE_ARGS}
  if name == "bart_token_deletion":
    kwargs.update(mask_ratio=params["ratio"], poisson_lambda=None, random_ratio=0.0,
                  replace_length=0, whole_words=False)
  elif name == "bart_document_rotation":
    kwargs.update(rotate_ratio=1.0)
  return kwargs


def _noise(tokens, rng, **kwargs):
  return bart_noise(tokens, rng, **kwargs), tokens


def noise_fn(name: str, vocabulary, params: Mapping[str, Any], raw_length: int):
  """The token cache's noise for BART objective `name` (registry.py's factory)."""
  del raw_length
  return functools.partial(_noise, info=bart_vocab_info(vocabulary), **noise_kwargs(name, params))
