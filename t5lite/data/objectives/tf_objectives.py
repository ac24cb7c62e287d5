"""T5 and UL2 pretraining objectives beyond span corruption, as seqio preprocessors; lengths.

Each public preprocessor runs the whole chain on tokenized `targets` (like `span_corruption`):
select_random_chunk -> reduce_concat_tokens -> split_tokens(raw length) -> noise, and leaves
EOS to `append_eos_after_trim`. Randomness comes only from seqio's per-example seeds
(`seqio.map_over_dataset(num_seeds=1)`), so a pipeline is deterministic given seqio's seed.

Sources: T5 objectives follow the `t5` package (`t5/data/preprocessors.py`: prefix_lm,
iid_denoising, noise_token_to_random_token_or_sentinel, deshuffling); UL2 follows Tay et al. 2022
("UL2: Unifying Language Learning Paradigms", the mixture of denoisers of its section 3). BART's noise is bart_noise.py.

Lengths (every objective, BART's included): `raw_tokens_length(...)` is how many raw tokens one
example consumes for a given inputs length, and `required_targets_length(...)` the targets length
it needs; each preprocessor raises a ValueError naming both when `sequence_length["targets"]` is
too short.

UL2 mode tokens are plain text ("[NLU]", "[NLG]", "[S2S]"), encoded with the task's own
vocabulary and prepended to the inputs (T5 SentencePiece: '▁[', 'N', 'LU', ']' = 4 ids), as
the released UL2 checkpoints expect; no ids are reserved, so any vocabulary works.
"""
from __future__ import annotations

import functools
import math
from typing import Mapping, Optional

import seqio
import tensorflow as tf

from t5lite.data.objectives.tf_spans import denoise
from t5lite.data.objectives.tf_spans import random_spans_helper
from t5lite.data.objectives.tf_spans import random_spans_noise_mask
from t5lite.data.objectives.tf_spans import reduce_concat_tokens
from t5lite.data.objectives.tf_spans import select_random_chunk
from t5lite.data.objectives.tf_spans import split_tokens

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
# UL2 mixture of denoisers (Tay et al. 2022)
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
