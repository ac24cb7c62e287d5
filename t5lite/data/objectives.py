"""Pretraining objectives beyond span corruption, as seqio preprocessors: BART, T5, UL2.

Each public preprocessor runs the whole chain on tokenized `targets` (like `span_corruption`):
select_random_chunk -> reduce_concat_tokens -> split_tokens(raw length) -> noise, and leaves
EOS to `append_eos_after_trim`. Randomness comes only from seqio's per-example seeds
(`seqio.map_over_dataset(num_seeds=1)`), so a pipeline is deterministic given seqio's seed.

Sources: BART noise ports fairseq `fairseq/data/denoising_dataset.py` (numpy, via
`tf.numpy_function`); T5 objectives follow the `t5` package (`t5/data/preprocessors.py`:
prefix_lm, iid_denoising, noise_token_to_random_token_or_sentinel, deshuffling); UL2 follows
Tay et al. 2022 ("UL2: Unifying Language Learning Paradigms") as in REFERENCE.md.

Lengths: `raw_tokens_length(...)` is how many raw tokens one example consumes for a given
inputs length, and `required_targets_length(...)` the targets length it needs; each preprocessor
raises a ValueError naming both when `sequence_length["targets"]` is too short.

UL2 mode tokens are plain text ("[NLU]", "[NLG]", "[S2S]"), encoded with the task's own
vocabulary and prepended to the inputs (T5 SentencePiece: '▁[', 'N', 'LU', ']' = 4 ids), as
the released UL2 checkpoints expect; no ids are reserved, so any vocabulary works.

BART with a SentencePiece vocabulary (the demo tasks): <mask> is the first sentinel
(vocab_size - 1, `<extra_id_0>`), word starts are pieces beginning with '▁', full stop '.'.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

from t5lite.data.span_corruption import denoise
from t5lite.data.span_corruption import random_spans_helper
from t5lite.data.span_corruption import random_spans_noise_mask
from t5lite.data.span_corruption import reduce_concat_tokens
from t5lite.data.span_corruption import select_random_chunk
from t5lite.data.span_corruption import split_tokens

AUTOTUNE = tf.data.AUTOTUNE
NUM_RESERVED_T5 = 3  # pad, eos, unk: random tokens of BERT-style noise come from [3, vocab)
UL2_R, UL2_X, UL2_S = "[NLU]", "[NLG]", "[S2S]"


# ---------------------------------------------------------------------------------------------
# Lengths
# ---------------------------------------------------------------------------------------------
def _iid_targets_bound(tokens_length: int, noise_density: float) -> int:
  """Mean + 4 sigma of (noise tokens + sentinels + EOS) under iid noise; longer ones get trimmed."""
  p = noise_density
  mean = tokens_length * p * (2 - p)  # each noise token, plus a sentinel where a run starts
  var_term = 4 * p * (1 - p) + p * p - (p * (2 - p)) ** 2
  cov_adjacent = -p * p * (2 - p) * (1 - p)
  sigma = math.sqrt(max(tokens_length * (var_term + 2 * cov_adjacent), 0.0))
  return min(int(math.ceil(mean + 4 * sigma)) + 1, tokens_length + 1)


def _prefix_min_inputs(tokens_length: int, noise_density: float) -> int:
  """t5 random_prefix_noise_mask: the prefix has between this and tokens_length - 1 tokens."""
  max_inputs = tokens_length - 1
  return min(max_inputs, max(1, int(round((1 - 2 * noise_density) * max_inputs))))


def raw_tokens_length(objective: str, inputs_length: int, prefix_length: int = 0,
                      noise_density: float = 0.15, mean_noise_span_length: float = 3.0,
                      **unused) -> int:
  """Raw tokens per example so that the inputs (prefix + noised tokens + EOS) fit inputs_length."""
  budget = inputs_length - prefix_length
  if budget < 2:
    raise ValueError(f"inputs length {inputs_length} leaves no room after a {prefix_length}-token "
                     "mode prefix and EOS")
  if objective in ("span_corruption", "ul2_denoiser"):
    return random_spans_helper(budget, noise_density, mean_noise_span_length)[0]
  if objective in OBJECTIVE_NAMES:
    return budget - 1
  raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVE_NAMES}")


def required_targets_length(objective: str, inputs_length: int, prefix_length: int = 0,
                            noise_density: Optional[float] = None,
                            mean_noise_span_length: float = 3.0, **unused) -> int:
  """Targets length (with EOS) the objective needs for `inputs_length`.

  span_corruption / ul2_denoiser: t5's random_spans_helper (512 -> 114 at 0.15, mean 3).
  bart_*, bert_style_denoising, deshuffling: the clean text, = inputs_length - prefix_length.
  prefix_lm / ul2_prefix_lm: the longest suffix t5's random_prefix_noise_mask can leave.
  iid_denoising: mean + 4 sigma of noise tokens + sentinels (rarer longer ones are trimmed).
  """
  if noise_density is None:
    noise_density = {"prefix_lm": 0.5, "ul2_prefix_lm": 0.25}.get(objective, 0.15)
  raw = raw_tokens_length(objective, inputs_length, prefix_length, noise_density,
                          mean_noise_span_length)
  if objective in ("span_corruption", "ul2_denoiser"):
    return random_spans_helper(inputs_length - prefix_length, noise_density,
                               mean_noise_span_length)[1]
  if objective in ("prefix_lm", "ul2_prefix_lm"):
    return raw - _prefix_min_inputs(raw, noise_density) + 1
  if objective == "iid_denoising":
    return _iid_targets_bound(raw, noise_density)
  return raw + 1


def _describe(objective: str, kwargs) -> str:
  rate = kwargs.get("noise_density")
  mean = kwargs.get("mean_noise_span_length")
  if objective == "ul2_denoiser":
    kind = "R" if kwargs.get("mode") == UL2_R else "X"
    return f"UL2 {kind}-denoiser (mean {mean:g}, rate {rate:g})"
  if objective == "ul2_prefix_lm":
    return f"UL2 S-denoiser (prefix LM, rate {rate:g})"
  return objective


def _check_lengths(objective: str, sequence_length: Optional[Mapping[str, int]],
                   prefix_length: int = 0, **kwargs) -> int:
  """Raw tokens per example; a ValueError naming the objective if targets can't hold it."""
  if not sequence_length or "inputs" not in sequence_length or "targets" not in sequence_length:
    raise ValueError(f"{_describe(objective, kwargs)} needs sequence_length with 'inputs' and "
                     f"'targets' (TASK_FEATURE_LENGTHS); got {sequence_length}")
  inputs_length, targets_length = sequence_length["inputs"], sequence_length["targets"]
  need = required_targets_length(objective, inputs_length, prefix_length, **kwargs)
  if targets_length < need:
    raise ValueError(
        f"{_describe(objective, kwargs)} needs targets >= {need} for inputs {inputs_length}; "
        f"TASK_FEATURE_LENGTHS has targets {targets_length}")
  return raw_tokens_length(objective, inputs_length, prefix_length, **kwargs)


def _chunks(dataset, raw_length: int, merge_examples_to_reduce_padding: bool = True):
  ds = select_random_chunk(dataset, max_length=65536)
  if merge_examples_to_reduce_padding:
    ds = reduce_concat_tokens(ds, batch_size=128)
  return split_tokens(ds, max_tokens_per_segment=raw_length)


def noise_span_to_sentinel(tokens, noise_mask, vocab_size, seeds=None, num_sentinels: int = 100):
  """t5 noise_span_to_unique_sentinel, but span k gets vocab_size - 1 - (k mod num_sentinels).

  Identical to t5 up to num_sentinels spans. Past that, t5 runs on into ordinary ids (X-denoiser
  (3, 0.5) at 512 inputs makes 128 spans, with 100 extra ids); here the sentinels repeat.
  """
  del seeds
  prev_is_noise = tf.pad(noise_mask[:-1], [[1, 0]])  # [length]
  first_noise = tf.logical_and(noise_mask, tf.logical_not(prev_is_noise))
  later_noise = tf.logical_and(noise_mask, prev_is_noise)
  span_index = tf.cumsum(tf.cast(first_noise, tokens.dtype)) - 1  # [length]
  if num_sentinels:
    span_index = span_index % num_sentinels
  tokens = tf.where(first_noise, tf.cast(vocab_size - 1, tokens.dtype) - span_index, tokens)
  return tf.boolean_mask(tokens, tf.logical_not(later_noise))


def nonnoise_span_to_sentinel(tokens, noise_mask, vocab_size, seeds=None,
                              num_sentinels: int = 100):
  """Targets side of noise_span_to_sentinel: each non-noise span becomes a sentinel."""
  return noise_span_to_sentinel(tokens, tf.logical_not(noise_mask), vocab_size, seeds,
                                num_sentinels)


def _sentinel_fns(output_features):
  n = output_features["targets"].vocabulary.extra_ids
  return (functools.partial(noise_span_to_sentinel, num_sentinels=n),
          functools.partial(nonnoise_span_to_sentinel, num_sentinels=n))


def _mode_ids(output_features, mode: Optional[str]) -> list[int]:
  if not mode:
    return []
  return list(output_features["inputs"].vocabulary.encode(mode))


def _prepend(dataset, ids: list[int]):
  if not ids:
    return dataset
  prefix = tf.constant(ids, tf.int32)

  def fn(x):
    inputs = x["inputs"]
    return {**x, "inputs": tf.concat([tf.cast(prefix, inputs.dtype), inputs], axis=0)}

  return dataset.map(fn, num_parallel_calls=AUTOTUNE)


# ---------------------------------------------------------------------------------------------
# BART (fairseq denoising_dataset.py), in numpy
# ---------------------------------------------------------------------------------------------
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
  base = sp.get_piece_size()
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


# ---------------------------------------------------------------------------------------------
# T5 objectives (t5/data/preprocessors.py), in TF
# ---------------------------------------------------------------------------------------------
def random_prefix_noise_mask(length, noise_density, seeds):
  """t5: noise = everything after a random prefix of [round((1 - 2d)(n-1)), n-1] tokens."""
  if noise_density > 0.5:
    raise ValueError(f"prefix LM noise density must be <= 0.5; got {noise_density}")
  max_inputs = length - 1
  min_inputs = tf.minimum(max_inputs, tf.maximum(1, tf.cast(
      tf.round((1 - 2 * noise_density) * tf.cast(max_inputs, tf.float32)), tf.int32)))
  num_inputs = tf.random.stateless_uniform([], minval=min_inputs, maxval=max_inputs + 1,
                                           dtype=tf.int32, seed=seeds[0])
  return tf.range(length) >= num_inputs


def iid_noise_mask(length, noise_density, seeds):
  """t5: each token is noise independently with probability noise_density."""
  return tf.random.stateless_uniform([length], seed=seeds[0]) < noise_density


def drop_noise_tokens(tokens, noise_mask, vocab_size=None, seeds=None):
  del vocab_size, seeds
  return tf.boolean_mask(tokens, tf.logical_not(noise_mask))


def drop_nonnoise_tokens(tokens, noise_mask, vocab_size=None, seeds=None):
  del vocab_size, seeds
  return tf.boolean_mask(tokens, noise_mask)


def noise_token_to_random_token_or_sentinel(tokens, noise_mask, vocab_size, seeds,
                                            random_prob: float = 0.1):
  """t5: each noise token -> a random id in [3, vocab_size) w.p. random_prob, else vocab_size - 1."""
  use_random = tf.random.stateless_uniform(tf.shape(tokens), seed=seeds[0]) < random_prob
  random = tf.random.stateless_uniform(tf.shape(tokens), minval=NUM_RESERVED_T5,
                                       maxval=vocab_size, dtype=tokens.dtype, seed=seeds[1])
  noise = tf.where(use_random, random, tf.cast(vocab_size - 1, tokens.dtype))
  return tf.where(noise_mask, noise, tokens)


def _prefix_lm(dataset, sequence_length, output_features, objective, noise_density, mode,
               merge_examples_to_reduce_padding):
  prefix = _mode_ids(output_features, mode)
  raw = _check_lengths(objective, sequence_length, len(prefix), noise_density=noise_density)
  ds = _chunks(dataset, raw, merge_examples_to_reduce_padding)
  ds = denoise(ds, output_features, noise_density=noise_density,
               noise_mask_fn=random_prefix_noise_mask, inputs_fn=drop_noise_tokens,
               targets_fn=drop_nonnoise_tokens)
  return _prepend(ds, prefix)


def prefix_lm(dataset, sequence_length, output_features, noise_density: float = 0.5,
              merge_examples_to_reduce_padding: bool = True):
  """t5 prefix_lm: split each chunk at a uniformly random point (density 0.5); inputs = prefix,
  targets = the rest."""
  return _prefix_lm(dataset, sequence_length, output_features, "prefix_lm", noise_density, None,
                    merge_examples_to_reduce_padding)


def iid_denoising(dataset, sequence_length, output_features, noise_density: float = 0.15,
                  merge_examples_to_reduce_padding: bool = True):
  """t5 iid_denoising: each token is noise w.p. 0.15; runs of noise -> sentinels (as t5's unique
  sentinels, repeating after the vocabulary's extra ids: see noise_span_to_sentinel)."""
  raw = _check_lengths("iid_denoising", sequence_length, noise_density=noise_density)
  ds = _chunks(dataset, raw, merge_examples_to_reduce_padding)
  inputs_fn, targets_fn = _sentinel_fns(output_features)
  return denoise(ds, output_features, noise_density=noise_density, noise_mask_fn=iid_noise_mask,
                 inputs_fn=inputs_fn, targets_fn=targets_fn)


def bert_style_denoising(dataset, sequence_length, output_features, noise_density: float = 0.15,
                         random_prob: float = 0.1, merge_examples_to_reduce_padding: bool = True):
  """T5 paper's BERT-style objective (t5 noise_token_to_random_token_or_sentinel): iid noise
  p=0.15; a noise token becomes a random id in [3, vocab) w.p. 0.1, else the single sentinel
  vocab_size - 1. Targets are the full original."""
  raw = _check_lengths("bert_style_denoising", sequence_length, noise_density=noise_density)
  ds = _chunks(dataset, raw, merge_examples_to_reduce_padding)
  return denoise(ds, output_features, noise_density=noise_density, noise_mask_fn=iid_noise_mask,
                 inputs_fn=functools.partial(noise_token_to_random_token_or_sentinel,
                                             random_prob=random_prob))


def deshuffling(dataset, sequence_length, output_features,
                merge_examples_to_reduce_padding: bool = True):
  """T5 paper's deshuffling: inputs = the chunk's tokens in a random order; targets = original."""
  raw = _check_lengths("deshuffling", sequence_length)
  ds = _chunks(dataset, raw, merge_examples_to_reduce_padding)

  @seqio.map_over_dataset(num_seeds=1)
  def shuffle(x, seed):
    tokens = x["targets"]
    order = tf.argsort(tf.random.stateless_uniform(tf.shape(tokens), seed=seed))
    return {"inputs": tf.gather(tokens, order), "targets": tokens}

  return shuffle(ds)


# ---------------------------------------------------------------------------------------------
# UL2 mixture of denoisers (REFERENCE.md)
# ---------------------------------------------------------------------------------------------
def ul2_denoiser(dataset, sequence_length, output_features, mean_noise_span_length: float,
                 noise_density: float, mode: str = UL2_R,
                 merge_examples_to_reduce_padding: bool = True):
  """UL2 R- or X-denoiser: span corruption (mean, rate) with the mode token before the inputs.

  R: (3, 0.15), (8, 0.15) with [NLU]; X: (3, 0.5), (8, 0.5), (64, 0.15), (64, 0.5) with [NLG].
  Sentinels repeat after the vocabulary's extra ids (noise_span_to_sentinel).
  """
  prefix = _mode_ids(output_features, mode)
  kwargs = dict(noise_density=noise_density, mean_noise_span_length=mean_noise_span_length,
                mode=mode)
  raw = _check_lengths("ul2_denoiser", sequence_length, len(prefix), **kwargs)
  inputs_fn, targets_fn = _sentinel_fns(output_features)
  ds = _chunks(dataset, raw, merge_examples_to_reduce_padding)
  ds = denoise(ds, output_features, noise_density=noise_density,
               noise_mask_fn=functools.partial(random_spans_noise_mask,
                                               mean_noise_span_length=mean_noise_span_length),
               inputs_fn=inputs_fn, targets_fn=targets_fn)
  return _prepend(ds, prefix)


def ul2_prefix_lm(dataset, sequence_length, output_features, noise_density: float = 0.25,
                  mode: str = UL2_S, merge_examples_to_reduce_padding: bool = True):
  """UL2 S-denoiser: prefix LM whose suffix is on average noise_density (0.25) of the chunk,
  with [S2S] before the inputs."""
  return _prefix_lm(dataset, sequence_length, output_features, "ul2_prefix_lm", noise_density,
                    mode, merge_examples_to_reduce_padding)


# (name, kind, preprocessor kwargs, mixture rate): S ~20%, the six span denoisers share the rest.
UL2_DENOISERS = (
    ("ul2_r_mean3_rate15", "r", dict(mean_noise_span_length=3, noise_density=0.15), 0.8 / 6),
    ("ul2_r_mean8_rate15", "r", dict(mean_noise_span_length=8, noise_density=0.15), 0.8 / 6),
    ("ul2_x_mean3_rate50", "x", dict(mean_noise_span_length=3, noise_density=0.5), 0.8 / 6),
    ("ul2_x_mean8_rate50", "x", dict(mean_noise_span_length=8, noise_density=0.5), 0.8 / 6),
    ("ul2_x_mean64_rate15", "x", dict(mean_noise_span_length=64, noise_density=0.15), 0.8 / 6),
    ("ul2_x_mean64_rate50", "x", dict(mean_noise_span_length=64, noise_density=0.5), 0.8 / 6),
    ("ul2_s_rate25", "s", dict(noise_density=0.25), 0.2),
)


def ul2_preprocessor(kind: str, **kwargs):
  """The preprocessor of one UL2 denoiser: kind 'r' / 'x' (ul2_denoiser) or 's' (ul2_prefix_lm)."""
  if kind == "s":
    return functools.partial(ul2_prefix_lm, **kwargs)
  return functools.partial(ul2_denoiser, mode=UL2_R if kind == "r" else UL2_X, **kwargs)


OBJECTIVE_NAMES = (
    "span_corruption", "bart_denoising", "bart_text_infilling", "bart_sentence_permutation",
    "bart_token_deletion", "bart_document_rotation", "prefix_lm", "iid_denoising",
    "bert_style_denoising", "deshuffling", "ul2_denoiser", "ul2_prefix_lm")
