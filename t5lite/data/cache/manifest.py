"""What the token cache's feed needs to know of each task of a task or mixture: its name, rate,
objective, vocabulary and cache (CachedTask). keys.py derives it from the registered seqio tasks."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from t5lite.data.cache.format import CacheKey
from t5lite.data.objectives.registry import Objective


@dataclasses.dataclass(frozen=True)
class CachedTask:
  """One task of a stream: `rate` is its mixture rate (1 for a task alone); `key` the key of its
  cache of the split being read; `vocabulary` has vocab_size, eos_id, extra_ids and encode."""
  name: str
  rate: float
  objective: Objective
  vocabulary: Any
  key: CacheKey

  def numpy(self, sequence_length: Mapping[str, int]):
    """The objective's NumPy implementation at these lengths; errors name the task."""
    try:
      return self.objective.numpy(sequence_length, self.vocabulary)
    except ValueError as e:
      raise ValueError(f"task {self.name!r}: {e}") from e
