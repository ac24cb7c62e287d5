"""BART's denoising noise (fairseq `fairseq/data/denoising_dataset.py`) in numpy, and its seqio
preprocessors: text infilling, sentence permutation, token deletion, document rotation.

`bart_noise` is fairseq's DenoisingDataset.__getitem__ on one example; the preprocessors run it
through `tf.numpy_function` with a Generator seeded from seqio's per-example seed. Targets are
always the clean text.

BART with a SentencePiece vocabulary (the demo tasks): <mask> is the first sentinel
(vocab_size - 1, `<extra_id_0>`), word starts are pieces beginning with '▁', full stop '.'.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np
import seqio
import tensorflow as tf

from t5lite.data.objectives.tf_objectives import NUM_RESERVED_T5, _check_lengths, _chunks


@dataclasses.dataclass(frozen=True)
class BartVocabInfo:
  """What BART noise needs to know of a vocabulary."""
  mask_id: int
  full_stop_id: int
  word_start: np.ndarray  # bool [vocab_size]
  random_low: int  # random replacement tokens come from [random_low, random_high)
  random_high: int


def bart_vocab_info(vocabulary: seqio.Vocabulary) -> BartVocabInfo:
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


def _bart(dataset, sequence_length, output_features, name, merge_examples_to_reduce_padding=True,
          **noise_kwargs):
  raw = _check_lengths(name, sequence_length)
  info = bart_vocab_info(output_features["targets"].vocabulary)

  def np_noise(tokens, seed):
    rng = np.random.default_rng([int(s) & 0xFFFFFFFF for s in seed])
    return bart_noise(tokens.astype(np.int64), rng, info, **noise_kwargs).astype(np.int32)

  @seqio.map_over_dataset(num_seeds=1)
  def noise(x, seed):
    targets = x["targets"]
    inputs = tf.numpy_function(np_noise, [targets, seed], tf.int32, stateful=False)
    inputs.set_shape([None])
    return {"inputs": tf.cast(inputs, targets.dtype), "targets": targets}

  return noise(_chunks(dataset, raw, merge_examples_to_reduce_padding))


def bart_denoising(dataset, sequence_length, output_features, permute_ratio: float = 1.0,
                   mask_ratio: float = 0.3, poisson_lambda: float = 3.0,
                   random_ratio: float = 0.1, replace_length: int = 1, rotate_ratio: float = 0.0,
                   insert_ratio: float = 0.0, **kwargs):
  """BART-large's recipe (fairseq: --permute-sentences 1 --mask 0.3 --mask-random 0.1
  --mask-length span-poisson --poisson-lambda 3 --replace-length 1 --rotate 0 --insert 0):
  sentence permutation then text infilling. Targets are the full clean text."""
  return _bart(dataset, sequence_length, output_features, "bart_denoising",
               permute_ratio=permute_ratio, mask_ratio=mask_ratio, poisson_lambda=poisson_lambda,
               random_ratio=random_ratio, replace_length=replace_length,
               rotate_ratio=rotate_ratio, insert_ratio=insert_ratio, **kwargs)


def bart_text_infilling(dataset, sequence_length, output_features, mask_ratio: float = 0.3,
                        poisson_lambda: float = 3.0, random_ratio: float = 0.1,
                        replace_length: int = 1, **kwargs):
  """BART text infilling (fairseq add_whole_word_mask, span-poisson): mask_ratio of the words in
  spans of Poisson(lambda) words, each span -> one <mask> (a 0-length span inserts one),
  random_ratio of the masks -> random tokens. Targets are the clean text."""
  return _bart(dataset, sequence_length, output_features, "bart_text_infilling",
               mask_ratio=mask_ratio, poisson_lambda=poisson_lambda, random_ratio=random_ratio,
               replace_length=replace_length, **kwargs)


def bart_sentence_permutation(dataset, sequence_length, output_features,
                              permute_ratio: float = 1.0, **kwargs):
  """BART sentence permutation (fairseq permute_sentences): split after each full stop '.',
  shuffle ceil(ratio * sentences) of them. Targets are the clean text."""
  return _bart(dataset, sequence_length, output_features, "bart_sentence_permutation",
               permute_ratio=permute_ratio, **kwargs)


def bart_token_deletion(dataset, sequence_length, output_features, ratio: float = 0.3,
                        **kwargs):
  """BART token deletion: fairseq add_whole_word_mask at subword level (--mask-length subword),
  span length 1, --replace-length 0: deletes ceil(ratio * tokens) random tokens."""
  return _bart(dataset, sequence_length, output_features, "bart_token_deletion",
               mask_ratio=ratio, poisson_lambda=None, random_ratio=0.0, replace_length=0,
               whole_words=False, **kwargs)


def bart_document_rotation(dataset, sequence_length, output_features, **kwargs):
  """BART document rotation (fairseq add_rolling_noise, --rotate 1): start at a uniformly random
  token and wrap around. Targets are the clean text."""
  return _bart(dataset, sequence_length, output_features, "bart_document_rotation",
               rotate_ratio=1.0, **kwargs)


