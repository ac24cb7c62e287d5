"""Every pretraining objective in numpy, one raw token piece at a time, keyed on a Generator.

For the cached, index-addressed input path: the cache stores raw pieces of `raw_length()` tokens
and each becomes an example here, with randomness drawn only from `example_rng(seed, index)`, so
example `index` is the same whatever the process count, worker count or restart point:

  objective = noise.for_task(seqio.get_mixture_or_task("c4_span_corruption"),
                             {"inputs": 512, "targets": 114})      # raw_length() == 568
  example = objective(piece_L, noise.example_rng(seed, index))   # {"inputs", "targets"}, EOS'd

The definitions are those of the TF preprocessors (span_corruption.py, objectives.py): the same
counts (float32 arithmetic and round-half-to-even, as tf.round), the same mask distributions,
sentinel layouts, UL2 mode prefixes and `append_eos_after_trim`. The random streams differ (numpy
vs TF stateless ops), so examples are equal in distribution, not token for token. BART reuses
`bart_noise.bart_noise` itself.
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable, Mapping

import numpy as np
import seqio
from numpy.random.bit_generator import ISeedSequence

from t5lite.data.objectives import bart_noise as bart_noise_lib
from t5lite.data.objectives import tf_objectives as obj
from t5lite.data.objectives import tf_spans as sc
from t5lite.data.objectives.bart_noise import bart_noise
from t5lite.data.objectives.bart_noise import bart_vocab_info

NUM_RESERVED = obj.NUM_RESERVED_T5  # BERT-style random ids come from [3, vocab_size)

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
  noise[use_random] = rng.integers(NUM_RESERVED, vocab_size, int(use_random.sum()))
  out = tokens.copy()
  out[noise_mask] = noise
  return out


# ---------------------------------------------------------------------------------------------
# Objectives: noise functions (tokens, rng) -> (inputs, targets), before the mode prefix and EOS
# ---------------------------------------------------------------------------------------------
# Module-level functions bound by functools.partial: an Objective pickles (grain workers).
def _spans_noise(tokens, rng, *, vocab_size: int, num_sentinels: int, noise_density: float,
                 mean_noise_span_length: float, sentinels: np.ndarray):
  """Span corruption / UL2 R, X: sentinels unique (num_sentinels 0) or repeating."""
  n = len(tokens)
  if noise_density == 0.0 or n < 2:  # TF's sentinel functions on the mask
    mask = random_spans_noise_mask(n, noise_density, mean_noise_span_length, rng)
    return (noise_span_to_sentinel(tokens, mask, vocab_size, num_sentinels),
            nonnoise_span_to_sentinel(tokens, mask, vocab_size, num_sentinels))
  starts = random_span_starts(n, noise_density, mean_noise_span_length, rng)
  if len(sentinels) < len(starts[0]):  # a piece longer than raw_length
    sentinels = sentinel_ids(vocab_size, len(starts[0]), num_sentinels)
  return _span_corrupt(tokens, *starts, sentinels)


def _prefix_noise(tokens, rng, *, noise_density: float):
  k = max(_prefix_inputs(len(tokens), noise_density, rng), 0)
  return tokens[:k], tokens[k:]


def _iid_noise(tokens, rng, *, vocab_size: int, num_sentinels: int, noise_density: float):
  mask = iid_noise_mask(len(tokens), noise_density, rng)
  return (noise_span_to_sentinel(tokens, mask, vocab_size, num_sentinels),
          nonnoise_span_to_sentinel(tokens, mask, vocab_size, num_sentinels))


def _bert_noise(tokens, rng, *, vocab_size: int, noise_density: float, random_prob: float):
  mask = iid_noise_mask(len(tokens), noise_density, rng)
  return noise_token_to_random_token_or_sentinel(tokens, mask, vocab_size, rng,
                                                 random_prob), tokens


def _deshuffle_noise(tokens, rng):
  return rng.permutation(tokens), tokens


def _bart_noise(tokens, rng, **kwargs):
  return bart_noise(tokens, rng, **kwargs), tokens


_BART_NOISE_ARGS = frozenset(inspect.signature(bart_noise).parameters) - {
    "tokens", "rng", "info", "stats"}


def _bart_noise_kwargs(name: str, kwargs: Mapping) -> dict:
  """bart_noise's arguments as each BART preprocessor of objectives.py passes them."""
  noise_kwargs = {k: v for k, v in kwargs.items() if k in _BART_NOISE_ARGS}
  if name == "bart_token_deletion":
    noise_kwargs.update(mask_ratio=kwargs["ratio"], poisson_lambda=None, random_ratio=0.0,
                        replace_length=0, whole_words=False)
  elif name == "bart_document_rotation":
    noise_kwargs.update(rotate_ratio=1.0)
  return noise_kwargs


def _make_noise(name: str, vocabulary: seqio.Vocabulary, kwargs: Mapping,
                raw_length: int) -> Noise:
  vocab_size = vocabulary.vocab_size
  extra_ids = max(vocabulary.extra_ids, 0)  # UL2 / iid sentinels repeat after these
  if name in ("span_corruption", "ul2_denoiser"):
    num_sentinels = 0 if name == "span_corruption" else extra_ids
    return functools.partial(
        _spans_noise, vocab_size=vocab_size, num_sentinels=num_sentinels,
        noise_density=kwargs["noise_density"],
        mean_noise_span_length=kwargs["mean_noise_span_length"],
        sentinels=sentinel_ids(vocab_size, raw_length // 2 + 1, num_sentinels))  # spans <= n/2
  if name in ("prefix_lm", "ul2_prefix_lm"):
    if kwargs["noise_density"] > 0.5:
      raise ValueError(f"prefix LM noise density must be <= 0.5; got {kwargs['noise_density']}")
    return functools.partial(_prefix_noise, noise_density=kwargs["noise_density"])
  if name == "iid_denoising":
    return functools.partial(_iid_noise, vocab_size=vocab_size, num_sentinels=extra_ids,
                             noise_density=kwargs["noise_density"])
  if name == "bert_style_denoising":
    return functools.partial(_bert_noise, vocab_size=vocab_size,
                             noise_density=kwargs["noise_density"],
                             random_prob=kwargs["random_prob"])
  if name == "deshuffling":
    return _deshuffle_noise
  if name.startswith("bart_") and name in obj.OBJECTIVE_NAMES:
    return functools.partial(_bart_noise, info=bart_vocab_info(vocabulary),
                             **_bart_noise_kwargs(name, kwargs))
  raise ValueError(f"unknown objective {name!r}; expected one of {obj.OBJECTIVE_NAMES}")


def _with_defaults(name: str, kwargs: Mapping) -> dict:
  """The preprocessor's keyword defaults updated by kwargs; a ValueError for a wrong argument."""
  if name not in obj.OBJECTIVE_NAMES:
    raise ValueError(f"unknown objective {name!r}; expected one of {obj.OBJECTIVE_NAMES}")
  module = sc if name == "span_corruption" else (
      bart_noise_lib if name.startswith("bart_") else obj)
  fn = getattr(module, name)
  params = inspect.signature(fn).parameters
  defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
  takes_more = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
  for k in kwargs:  # BART preprocessors pass **kwargs on to bart_noise
    if k not in params and not (takes_more and k in _BART_NOISE_ARGS):
      raise ValueError(f"{name} has no argument {k!r}")
  missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty
             and p.kind is p.POSITIONAL_OR_KEYWORD and k not in kwargs
             and k not in ("dataset", "sequence_length", "output_features")]
  if missing:
    raise ValueError(f"{name} needs the arguments {missing}")
  kwargs = {**defaults, **kwargs}
  kwargs.pop("merge_examples_to_reduce_padding", None)  # chunking: the cache's business
  return kwargs


def _with_eos(prefix: np.ndarray, x: np.ndarray, length: int, eos_id: int) -> np.ndarray:
  """seqio append_eos_after_trim on prefix + x: int32 [min(len, length - 1) + 1]."""
  p = min(len(prefix), length - 1)
  n = min(len(x), length - 1 - p)
  out = np.empty(p + n + 1, np.int32)
  out[:p] = prefix[:p]
  out[p:p + n] = x[:n]
  out[-1] = eos_id
  return out


class Objective:
  """One task's objective: a raw token piece + its Generator -> {"inputs", "targets"} with EOS.

  The piece is `raw_length()` tokens (the last piece of a stream may be shorter).
  """

  def __init__(self, name: str, sequence_length: Mapping[str, int],
               vocabulary: seqio.Vocabulary, **kwargs):
    """kwargs: the objective preprocessor's keyword arguments (tasks.task_objective)."""
    kwargs = _with_defaults(name, kwargs)
    self.name = name
    self.kwargs = kwargs
    mode = kwargs.get("mode") if name in ("ul2_denoiser", "ul2_prefix_lm") else None
    self.prefix = np.asarray(list(vocabulary.encode(mode)) if mode else [], np.int32)
    # The preprocessor's own length check and message (targets too short, no lengths).
    self._raw_length = obj._check_lengths(  # pylint: disable=protected-access
        name, sequence_length, len(self.prefix), **kwargs)
    self.inputs_length = int(sequence_length["inputs"])
    self.targets_length = int(sequence_length["targets"])
    self.eos_id = vocabulary.eos_id
    self._noise = _make_noise(name, vocabulary, kwargs, self._raw_length)

  def raw_length(self) -> int:
    """Raw tokens per example at these lengths (objectives.raw_tokens_length)."""
    return self._raw_length

  def __call__(self, tokens_L: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    tokens_L = np.asarray(tokens_L, np.int32)
    inputs, targets = self._noise(tokens_L, rng)
    return {"inputs": _with_eos(self.prefix, inputs, self.inputs_length, self.eos_id),
            "targets": _with_eos(self.prefix[:0], targets, self.targets_length, self.eos_id)}

  def __repr__(self):
    return f"Objective({self.name!r}, raw_length={self._raw_length}, {self.kwargs})"


def for_task(task: seqio.Task, sequence_length: Mapping[str, int]) -> Objective:
  """The Objective of a seqio Task (its objective preprocessor, kwargs and vocabulary).

  ValueError naming the task if it has no known objective, if its targets length is too short,
  or if its features are not what the objective preprocessors assume (one vocabulary, EOS).
  """
  from t5lite.data.tasks.registry import task_objective  # pylint: disable=g-import-not-at-top
  if not isinstance(task, seqio.Task):
    raise ValueError(f"for_task needs a seqio.Task; got {task!r} (a mixture: one Objective per "
                     "task)")
  name, kwargs = task_objective(task)
  if name is None:
    raise ValueError(f"task {task.name!r} has no pretraining objective among its preprocessors "
                     f"(expected one of {obj.OBJECTIVE_NAMES})")
  features = task.output_features
  if "targets" not in features or not features["targets"].add_eos or (
      "inputs" in features and not features["inputs"].add_eos):
    raise ValueError(f"task {task.name!r}: expected 'targets' (and 'inputs') features with "
                     "add_eos=True, as append_eos_after_trim after the objective assumes")
  vocabulary = features["targets"].vocabulary
  if "inputs" in features and features["inputs"].vocabulary != vocabulary:
    raise ValueError(f"task {task.name!r}: {name} needs the same vocabulary for inputs and "
                     "targets")
  try:
    return Objective(name, sequence_length, vocabulary, **kwargs)
  except ValueError as e:
    raise ValueError(f"task {task.name!r}: {e}") from e
