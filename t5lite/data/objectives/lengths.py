"""How long an objective's examples are: raw tokens one example consumes for an inputs length, and
the targets length it needs (every length counts one EOS). Pure Python: both implementations
and the token cache use it.

By an objective's kind (registry.py):
  spans     span corruption, UL2 R/X: t5's random_spans_helper (512 -> 568 raw, 114 targets)
  prefix    prefix LM: the longest suffix t5's random_prefix_noise_mask can leave
  iid       i.i.d. noise: mean + 4 sigma of noise tokens + sentinels (rarer longer ones trimmed)
  clean     the clean text is the target (BART, BERT-style, deshuffling): inputs - prefix
A UL2 mode prefix (`prefix_length` ids) comes out of the inputs' budget.
"""
from __future__ import annotations

import math

import numpy as np

KINDS = ("spans", "prefix", "iid", "clean")


def random_spans_helper(inputs_length: int, noise_density: float, mean_noise_span_length: float,
                        extra_tokens_per_span_inputs: int = 1,
                        extra_tokens_per_span_targets: int = 1) -> tuple[int, int]:
  """Raw tokens per example and encoded targets length that fill `inputs_length` exactly.

  Both lengths count one EOS. 512 -> (568, 114); 1024 -> (1137, 229) at density 0.15, mean 3.
  """

  def lengths(tokens_length):
    # The same counts random_spans_noise_mask uses (at least one noise span, one non-noise token),
    # in float32 as it computes them: t5's helper uses float64 and omits the bounds, so at some
    # lengths (e.g. inputs 172) its targets length is one span short and the targets get trimmed.
    f32 = np.float32
    num_noise = min(max(int(np.round(f32(tokens_length) * f32(noise_density))), 1),
                    tokens_length - 1)
    num_nonnoise = tokens_length - num_noise
    num_spans = max(int(np.round(f32(num_noise) / f32(mean_noise_span_length))), 1)
    return (num_nonnoise + num_spans * extra_tokens_per_span_inputs + 1,
            num_noise + num_spans * extra_tokens_per_span_targets + 1)

  tokens_length = inputs_length - 1
  while lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  _, targets_length = lengths(tokens_length)
  # As in t5: at density 0.5 keep targets no longer than inputs (a round number).
  if noise_density == 0.5 and targets_length > inputs_length:
    tokens_length -= 1
    targets_length -= 1
  return tokens_length, targets_length


def _iid_targets_bound(tokens_length: int, noise_density: float) -> int:
  """Mean + 4 sigma of (noise tokens + sentinels + EOS) under iid noise; longer ones get trimmed."""
  p = noise_density
  mean = tokens_length * p * (2 - p)  # each noise token, plus a sentinel where a run starts
  var_term = 4 * p * (1 - p) + p * p - (p * (2 - p)) ** 2
  cov_adjacent = -p * p * (2 - p) * (1 - p)
  sigma = math.sqrt(max(tokens_length * (var_term + 2 * cov_adjacent), 0.0))
  return min(int(math.ceil(mean + 4 * sigma)) + 1, tokens_length + 1)


def prefix_min_inputs(tokens_length: int, noise_density: float) -> int:
  """t5 random_prefix_noise_mask: the prefix has between this and tokens_length - 1 tokens."""
  max_inputs = tokens_length - 1
  return min(max_inputs, max(1, int(round((1 - 2 * noise_density) * max_inputs))))


def raw_tokens_length(kind: str, inputs_length: int, prefix_length: int = 0,
                      noise_density: float = 0.15, mean_noise_span_length: float = 3.0) -> int:
  """Raw tokens per example so that the inputs (prefix + noised tokens + EOS) fit inputs_length."""
  budget = inputs_length - prefix_length
  if budget < 2:
    raise ValueError(f"inputs length {inputs_length} leaves no room after a {prefix_length}-token "
                     "mode prefix and EOS")
  if kind == "spans":
    return random_spans_helper(budget, noise_density, mean_noise_span_length)[0]
  if kind in KINDS:
    return budget - 1
  raise ValueError(f"unknown length kind {kind!r}; expected one of {KINDS}")


def required_targets_length(kind: str, inputs_length: int, prefix_length: int = 0,
                            noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> int:
  """Targets length (with EOS) an objective of this kind needs for `inputs_length`."""
  raw = raw_tokens_length(kind, inputs_length, prefix_length, noise_density,
                          mean_noise_span_length)
  if kind == "spans":
    return random_spans_helper(inputs_length - prefix_length, noise_density,
                               mean_noise_span_length)[1]
  if kind == "prefix":
    return raw - prefix_min_inputs(raw, noise_density) + 1
  if kind == "iid":
    return _iid_targets_bound(raw, noise_density)
  return raw + 1
