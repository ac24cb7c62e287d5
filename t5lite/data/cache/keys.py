"""What a token cache is keyed on, for a task t5lite registered: its source (files or TFDS
dataset), its vocabulary's fingerprint and the steps before its objective (data/tasks/registry.py
TaskSpec). Caches keyed alike hold the same tokens, whatever the objective and lengths."""
from __future__ import annotations

from typing import Any

import seqio

from t5lite.data.cache.format import FEATURE, CacheKey
from t5lite.data.cache.manifest import CachedTask, vocabulary_fingerprint
from t5lite.data.sources.json_lines import JsonLinesDataSource
from t5lite.data.tasks import registry as tasks


def describe_source(source: seqio.DataSource, split: str) -> dict[str, Any]:
  """The source of one split: JSON-lines shards (type, reader, file patterns) or TFDS (name)."""
  if isinstance(source, seqio.TfdsDataSource):
    return {"type": "tfds", "name": source.tfds_dataset.name, "split": split}
  if isinstance(source, JsonLinesDataSource):
    return source.describe(split)
  raise ValueError(f"cannot cache source {source!r}: supported sources are JSON-lines shards "
                   "(data/sources/json_lines.py) and TFDS")


def source_files(source: seqio.DataSource, split: str) -> list[str]:
  """The input files of a split, in the order the cache numbers them."""
  paths = list(source.list_shards(split))
  if not paths:
    raise FileNotFoundError(f"source {source!r} lists no input files for split {split!r}")
  return paths


def cache_key(task: seqio.Task, split: str) -> CacheKey:
  """The key of `task`'s cache of `split`; a ValueError for a task without an objective or
  registered elsewhere (its preprocessing would be unknown)."""
  spec = tasks.spec(task)
  if not spec.pre_objective_key:
    raise ValueError(f"task {task.name!r} has no pretraining objective registered with it "
                     "(data/tasks/registry.py add_task): nothing to cache before it")
  return CacheKey(source=describe_source(spec.source, split),
                  vocabulary=vocabulary_fingerprint(task.output_features[FEATURE].vocabulary),
                  steps=spec.pre_objective_key)


def cached_tasks(name: str, split: str) -> list[CachedTask]:
  """The tasks of task or mixture `name` as the cache's feed reads them: in the mixture's order,
  at its rates (a task alone: rate 1), each with its cache key of `split`."""
  provider = tasks.get_task_or_mixture(name)
  leaves = ([(task, float(provider.get_rate(task))) for task in provider.tasks]
            if isinstance(provider, seqio.Mixture) else [(provider, 1.0)])
  return [CachedTask(task.name, rate, tasks.checked_objective(task),
                     task.output_features[FEATURE].vocabulary, cache_key(task, split))
          for task, rate in leaves]
