"""Every objective's seqio preprocessor (the tf.data path), by the name registry.py's specs give.

Each runs the whole chain on tokenized `targets`: select_random_chunk -> reduce_concat_tokens ->
split_tokens(raw length) -> noise, and leaves EOS to `append_eos_after_trim`. Randomness comes
only from seqio's per-example seeds (`seqio.map_over_dataset(num_seeds=1)`), so a pipeline is
deterministic given seqio's seed. Lengths and their errors are registry.Objective.check's.

Sources: T5 objectives follow the `t5` package (`t5/data/preprocessors.py`: span_corruption,
prefix_lm, iid_denoising, noise_token_to_random_token_or_sentinel, deshuffling); UL2 follows Tay
et al. 2022 ("UL2: Unifying Language Learning Paradigms", section 3); BART runs bart_noise.py's
fairseq noise through tf.numpy_function.

UL2 mode tokens are plain text ("[NLU]", "[NLG]", "[S2S]"), encoded with the task's own
vocabulary and prepended to the inputs (T5 SentencePiece: '▁[', 'N', 'LU', ']' = 4 ids), as
the released UL2 checkpoints expect; no ids are reserved, so any vocabulary works.
"""
from __future__ import annotations

import functools
from typing import Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

from t5lite.data.objectives import bart_noise, registry
from t5lite.data.objectives.numpy_objectives import NUM_RESERVED_T5
from t5lite.data.objectives.registry import UL2_R, UL2_S
from t5lite.data.objectives.tf_spans import (denoise, nonnoise_span_to_unique_sentinel,
                                             noise_span_to_unique_sentinel,
                                             random_spans_noise_mask, reduce_concat_tokens,
                                             select_random_chunk, split_tokens)

AUTOTUNE = tf.data.AUTOTUNE


def _check(name: str, sequence_length, prefix_length: int = 0, **params) -> int:
  """Raw tokens per example (registry.Objective.check: the objective's length errors)."""
  return registry.objective(name, **params).check(sequence_length, prefix_length)


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
  raw = _check(objective, sequence_length, len(prefix), noise_density=noise_density,
               **({"mode": mode} if mode else {}))
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
  raw = _check("iid_denoising", sequence_length, noise_density=noise_density)
  ds = _chunks(dataset, raw, merge_examples_to_reduce_padding)
  inputs_fn, targets_fn = _sentinel_fns(output_features)
  return denoise(ds, output_features, noise_density=noise_density, noise_mask_fn=iid_noise_mask,
                 inputs_fn=inputs_fn, targets_fn=targets_fn)


def bert_style_denoising(dataset, sequence_length, output_features, noise_density: float = 0.15,
                         random_prob: float = 0.1, merge_examples_to_reduce_padding: bool = True):
  """T5 paper's BERT-style objective (t5 noise_token_to_random_token_or_sentinel): iid noise
  p=0.15; a noise token becomes a random id in [3, vocab) w.p. 0.1, else the single sentinel
  vocab_size - 1. Targets are the full original."""
  raw = _check("bert_style_denoising", sequence_length, noise_density=noise_density,
               random_prob=random_prob)
  ds = _chunks(dataset, raw, merge_examples_to_reduce_padding)
  return denoise(ds, output_features, noise_density=noise_density, noise_mask_fn=iid_noise_mask,
                 inputs_fn=functools.partial(noise_token_to_random_token_or_sentinel,
                                             random_prob=random_prob))


def deshuffling(dataset, sequence_length, output_features,
                merge_examples_to_reduce_padding: bool = True):
  """T5 paper's deshuffling: inputs = the chunk's tokens in a random order; targets = original."""
  raw = _check("deshuffling", sequence_length)
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
  raw = _check("ul2_denoiser", sequence_length, len(prefix), noise_density=noise_density,
               mean_noise_span_length=mean_noise_span_length, mode=mode)
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


# ---------------------------------------------------------------------------------------------
# Span corruption (T5) and BART
# ---------------------------------------------------------------------------------------------
def span_corruption(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                    output_features: Mapping[str, seqio.Feature],
                    mean_noise_span_length: float = 3.0, noise_density: float = 0.15,
                    merge_examples_to_reduce_padding: bool = True) -> tf.data.Dataset:
  """T5's pretraining objective on tokenized `targets`; EOS is appended later (append_eos_after_trim).

  inputs = `a <X0> b <X1> ...`, targets = `<X0> n1 <X1> n2 ...`, with sentinels X0 = vocab - 1, ...
  """
  tokens_length = _check("span_corruption", sequence_length, noise_density=noise_density,
                         mean_noise_span_length=mean_noise_span_length)
  ds = select_random_chunk(dataset, output_features, max_length=65536)
  if merge_examples_to_reduce_padding:
    ds = reduce_concat_tokens(ds, batch_size=128)
  ds = split_tokens(ds, max_tokens_per_segment=tokens_length)
  return denoise(
      ds, output_features, noise_density=noise_density,
      noise_mask_fn=functools.partial(random_spans_noise_mask,
                                      mean_noise_span_length=mean_noise_span_length),
      inputs_fn=noise_span_to_unique_sentinel, targets_fn=nonnoise_span_to_unique_sentinel)


def _bart(dataset, sequence_length, output_features, name, merge_examples_to_reduce_padding=True,
          **params):
  raw = _check(name, sequence_length, **params)
  info = bart_noise.bart_vocab_info(output_features["targets"].vocabulary)
  kwargs = bart_noise.noise_kwargs(name, params)

  def np_noise(tokens, seed):
    rng = np.random.default_rng([int(s) & 0xFFFFFFFF for s in seed])
    return bart_noise.bart_noise(tokens.astype(np.int64), rng, info, **kwargs).astype(np.int32)

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
  return _bart(dataset, sequence_length, output_features, "bart_token_deletion", ratio=ratio,
               **kwargs)


def bart_document_rotation(dataset, sequence_length, output_features, **kwargs):
  """BART document rotation (fairseq add_rolling_noise, --rotate 1): start at a uniformly random
  token and wrap around. Targets are the clean text."""
  return _bart(dataset, sequence_length, output_features, "bart_document_rotation", **kwargs)
