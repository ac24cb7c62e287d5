"""T5's span machinery in TF (Raffel et al. 2019), written for t5lite: random chunks, concatenation
and splitting, noise masks, sentinels and `denoise`, which tf_objectives.py's preprocessors chain.

Matches the `t5` package's definitions (t5/data/preprocessors.py): the same lengths, the same
noise-mask distribution and the same sentinel layout. Random ops are TF stateless ops fed by
seqio's per-preprocessor seeds, so a pipeline is deterministic given seqio's seed.

Token functions used by `denoise` have the signatures
  noise_mask_fn(length, noise_density, seeds) -> bool [length]
  inputs_fn / targets_fn(tokens, noise_mask, vocab_size, seeds) -> int [new_length]
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Optional

import seqio
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def _stateless_shuffle(x, seed):
  """Random permutation of a 1-D tensor (argsort of stateless uniforms)."""
  return tf.gather(x, tf.argsort(tf.random.stateless_uniform(tf.shape(x), seed=seed)))


def _random_segmentation(num_items, num_segments, seed):
  """Splits num_items into num_segments random positive parts; int32 [num_segments]."""
  # A segment starts after each of (num_segments - 1) randomly chosen gaps.
  is_start = tf.cast(tf.range(num_items - 1) < num_segments - 1, tf.int32)
  is_start = tf.pad(_stateless_shuffle(is_start, seed), [[1, 0]])  # [num_items]
  segment_id = tf.cumsum(is_start)  # [num_items]
  return tf.math.segment_sum(tf.ones_like(segment_id), segment_id)  # [num_segments]


def random_spans_noise_mask(length, noise_density: float, mean_noise_span_length: float = 3.0,
                            seeds=None, random_roll: bool = False):
  """Boolean mask [length] of random noise spans, starting with non-noise, ending with noise.

  num_noise = clip(round(length * density), 1, length - 1); num_spans = max(round(num_noise /
  mean), 1); noise and non-noise tokens are each split into num_spans random positive parts.
  seeds: int32 [2, 2] (one stateless seed per segmentation). random_roll rotates the mask by
  a random offset (used by UL2-style objectives; off for T5).
  """
  if noise_density == 0.0:
    return tf.zeros([length], tf.bool)
  if seeds is None:
    raise ValueError("random_spans_noise_mask needs seeds, an int32 [2, 2] tensor")
  orig_length = length
  length = tf.maximum(length, 2)  # avoid degenerate masks on 0/1-token inputs
  num_noise = tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32)
  num_noise = tf.minimum(tf.maximum(num_noise, 1), length - 1)
  num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_noise_span_length), tf.int32)
  num_spans = tf.maximum(num_spans, 1)
  num_nonnoise = length - num_noise
  noise_lengths = _random_segmentation(num_noise, num_spans, seeds[0])  # [spans]
  nonnoise_lengths = _random_segmentation(num_nonnoise, num_spans, seeds[1])  # [spans]
  # [2 * spans]: nonnoise, noise, nonnoise, noise, ...
  interleaved = tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], axis=1), [num_spans * 2])
  span_starts = tf.cumsum(interleaved)[:-1]  # [2 * spans - 1]
  start_indicator = tf.math.unsorted_segment_sum(tf.ones_like(span_starts), span_starts, length)
  is_noise = tf.equal(tf.cumsum(start_indicator) % 2, 1)  # [length]
  mask = is_noise[:orig_length]
  if random_roll:
    roll_seed = (seeds[0][0] + seeds[1][1], seeds[0][1] - seeds[1][0])
    offset = tf.random.stateless_uniform([1], seed=roll_seed, dtype=tf.int32, minval=0,
                                         maxval=length)[0]
    mask = tf.roll(mask, shift=offset, axis=0)
  return mask


def _as_vocab_size(vocab_size):
  return vocab_size.vocab_size if hasattr(vocab_size, "vocab_size") else vocab_size


def noise_span_to_unique_sentinel(tokens, noise_mask, vocab_size, seeds=None):
  """Replaces each noise span by one sentinel: vocab_size - 1, vocab_size - 2, ...

  tokens: int [length]; noise_mask: bool [length]. Returns int [length - dropped].
  vocab_size may also be a seqio Vocabulary. seeds are unused (the denoise interface).
  """
  del seeds
  vocab_size = _as_vocab_size(vocab_size)
  prev_is_noise = tf.pad(noise_mask[:-1], [[1, 0]])  # [length]
  first_noise = tf.logical_and(noise_mask, tf.logical_not(prev_is_noise))
  later_noise = tf.logical_and(noise_mask, prev_is_noise)
  sentinel = vocab_size - tf.cumsum(tf.cast(first_noise, tokens.dtype))  # [length]
  tokens = tf.where(first_noise, sentinel, tokens)
  return tf.boolean_mask(tokens, tf.logical_not(later_noise))


def nonnoise_span_to_unique_sentinel(tokens, noise_mask, vocab_size, seeds=None):
  """Targets of span corruption: each non-noise span becomes a sentinel."""
  return noise_span_to_unique_sentinel(tokens, tf.logical_not(noise_mask), vocab_size, seeds)


def select_random_chunk(dataset: tf.data.Dataset, output_features=None, max_length: int = 65536,
                        feature_key: str = "targets", **unused_kwargs) -> tf.data.Dataset:
  """Keeps one random max_length-aligned chunk of each (non-empty) document."""
  del output_features

  @seqio.map_over_dataset(num_seeds=1)
  def chunk(x, seed):
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed))  # t5's seed layout
    tokens = x[feature_key]  # [n]
    n = tf.shape(tokens)[0]
    num_chunks = tf.cast(tf.math.ceil(n / max_length), tf.int32)
    start = max_length * tf.random.stateless_uniform([], maxval=num_chunks, dtype=tf.int32,
                                                     seed=seeds[1])
    return {feature_key: tokens[start:tf.minimum(start + max_length, n)]}

  dataset = dataset.filter(lambda x: tf.size(x[feature_key]) > 0)
  return chunk(dataset)


def reduce_concat_tokens(dataset: tf.data.Dataset, feature_key: str = "targets",
                         batch_size: int = 128, **unused_kwargs) -> tf.data.Dataset:
  """Concatenates each run of batch_size documents into one token sequence."""
  dataset = dataset.map(lambda x: {feature_key: x[feature_key]}, num_parallel_calls=AUTOTUNE)
  dataset = dataset.padded_batch(batch_size, padded_shapes={feature_key: [-1]})

  def concat(x):
    tokens = tf.reshape(x[feature_key], [-1])  # [batch * max_len]
    return {feature_key: tf.boolean_mask(tokens, tf.cast(tokens, tf.bool))}  # drop padding (0)

  return dataset.map(concat, num_parallel_calls=AUTOTUNE)


def split_tokens(dataset: tf.data.Dataset, max_tokens_per_segment: int,
                 min_tokens_per_segment: Optional[int] = None, feature_key: str = "targets",
                 **unused_kwargs) -> tf.data.Dataset:
  """Splits each sequence into pieces of max_tokens_per_segment (the last may be shorter).

  With min_tokens_per_segment, each sequence's piece length is log-uniform in [min, max).
  """

  @seqio.map_over_dataset(num_seeds=1)
  def split(x, seed):
    tokens = x[feature_key]  # [n]
    n = tf.shape(tokens)[0]
    if min_tokens_per_segment is None:
      length = tf.constant(max_tokens_per_segment, tf.int32)
    else:
      log_length = tf.random.stateless_uniform(
          [], minval=math.log(min_tokens_per_segment), maxval=math.log(max_tokens_per_segment),
          seed=seed)
      length = tf.cast(tf.exp(log_length), tf.int32)
    num_segments = (n + length - 1) // length
    padded = tf.pad(tokens, [[0, num_segments * length - n]])
    pieces = tf.reshape(padded, [num_segments, length])  # [segments, length]
    lengths = tf.minimum(length, n - tf.range(num_segments) * length)  # [segments]
    return tf.data.Dataset.from_tensor_slices((pieces, lengths))

  dataset = dataset.filter(lambda x: tf.size(x[feature_key]) > 0)
  dataset = split(dataset).flat_map(lambda pieces: pieces)
  return dataset.map(lambda t, n: {feature_key: t[:n]}, num_parallel_calls=AUTOTUNE)


def denoise(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
            noise_density: float, noise_mask_fn: Callable, inputs_fn: Callable,
            targets_fn: Optional[Callable] = None, input_feature_key: str = "inputs",
            **unused_kwargs) -> tf.data.Dataset:
  """Noises `targets` tokens into {inputs: inputs_fn(...), targets: targets_fn(...) or tokens}.

  Each example gets one seqio seed, split into 6: [0:2] mask, [2:4] inputs_fn, [4:6] targets_fn.
  """
  vocabulary = output_features["targets"].vocabulary
  if (input_feature_key in output_features
      and output_features[input_feature_key].vocabulary != vocabulary):
    raise ValueError("denoise needs the same vocabulary for inputs and targets")
  vocab_size = vocabulary.vocab_size

  @seqio.map_over_dataset(num_seeds=1)
  def noise(x, seed):
    seeds = tf.random.experimental.stateless_split(seed, 6)  # [6, 2]
    tokens = x["targets"]  # [length]
    mask = noise_mask_fn(tf.size(tokens), noise_density, seeds=seeds[0:2])  # [length]
    inputs = inputs_fn(tokens, mask, vocab_size, seeds=seeds[2:4])
    targets = targets_fn(tokens, mask, vocab_size, seeds=seeds[4:6]) if targets_fn else tokens
    return {input_feature_key: inputs, "targets": targets}

  return noise(dataset)
