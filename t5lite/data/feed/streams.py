"""The batches train() and eval read: from the token cache when Sources.cache_dir (DATA_CACHE_DIR)
is set, else from seqio's tf.data pipeline.

  cache   indexed.IndexedStream: global batch b is a pure function of (seed, b); resume is O(1)
          from a < 1 KB state; any process count reads the same global batches.
  tf.data pipeline.get_dataset: this process's shard (seqio ShardInfo); a resume recomputes and
          drops every batch before the restored step (said when it starts), and the stream
          depends on the process count.
Both yield this process's rows of each global batch as numpy arrays in seqio's
EncDecFeatureConverter(pack=True) layout.
"""
from __future__ import annotations

import os
from typing import Any, Iterator, Mapping, Optional

import gin
import numpy as np

from t5lite.extras import require_tf_data, tf_data_available
from t5lite.data.sources import sources as sources_lib

CACHE_STATE = "t5lite.indexed/1"


@gin.configurable
def loader(num_threads: int = 2, worker_processes: int = 0) -> dict:
  """How the token cache's stream builds batches ahead of the trainer: threads in this process
  (the numpy objectives hold Python's lock, so more than 2 rarely helps), or grain worker
  processes (each a copy of the stream) for a host feeding many chips."""
  return {"num_threads": num_threads, "worker_processes": worker_processes}


def prepare(name: str, lengths: Optional[Mapping[str, int]],
            sources: Optional[sources_lib.Sources] = None) -> tuple[Any, Any]:
  """(seqio task or mixture, vocabulary) of `name` for a run at these lengths, after checking
  that its objectives' targets fit (lengths None: no check). Without seqio (no `data` extra) the
  task is None and the vocabulary comes from the token cache's manifest (Sources.cache_dir)."""
  sources = sources or sources_lib.Sources()
  if tf_data_available():
    from t5lite.data.tasks import registry as tasks  # pylint: disable=g-import-not-at-top
    tasks.register_all()  # with the Sources gin binds now
    task = tasks.get_task_or_mixture(name)
    if lengths is not None:
      tasks.check_lengths(name, lengths)
    return task, task.output_features["targets"].vocabulary
  if not sources.cache_dir:
    require_tf_data(f"reading task {name!r} without a token cache (Sources.cache_dir)")
  from t5lite.data.feed import indexed  # pylint: disable=g-import-not-at-top
  cached = indexed.stream_tasks(name, "train", cache_dir(sources))
  for task in cached if lengths is not None else ():
    task.numpy(lengths)  # a ValueError naming the task if its targets do not fit
  return None, cached[0].vocabulary


def ensure_cache(name: str, sources: Optional[sources_lib.Sources] = None) -> None:
  """Builds the missing token caches of `name` (its sources' train and validation splits) when
  Sources.build_missing_cache says so; one process of a multi-process run calls it, the others
  wait for it. A finished cache is not touched."""
  sources = sources or sources_lib.Sources()
  if sources.cache_dir and sources.build_missing_cache and tf_data_available():
    from t5lite.data.cache import build as cache_build  # pylint: disable=g-import-not-at-top
    cache_build.build(name, cache_dir(sources), echo=lambda s: None)


def cache_dir(sources: sources_lib.Sources) -> str:
  """Sources.cache_dir with ~ and environment variables expanded."""
  return os.path.expanduser(os.path.expandvars(sources.cache_dir))


def _skipped_records() -> int:
  """Records the tf.data path skipped for bad JSON so far (the cache's were skipped when built)."""
  if not tf_data_available():
    return 0
  from t5lite.data.sources import json_lines  # pylint: disable=g-import-not-at-top  (seqio)
  return sum(json_lines.skipped_records.values())


class TrainStream(Iterator[dict]):
  """This process's rows of global batches start, start + 1, ...; state() is what a checkpoint
  keeps, counters() what the trainer logs."""

  def __init__(self, name: str, lengths: Mapping[str, int], batch_size: int, seed: int,
               start_batch: int, data_state: Optional[Mapping[str, Any]], process_index: int,
               process_count: int, sources: Optional[sources_lib.Sources] = None):
    self.sources = sources or sources_lib.Sources()
    self.cached = bool(self.sources.cache_dir)
    self._skipped_at_start = _skipped_records()
    if self.cached:
      from t5lite.data.feed import indexed  # pylint: disable=g-import-not-at-top
      stream = indexed.IndexedStream(
          name, lengths, batch_size, cache_dir(self.sources), split="train",
          seed=seed, process_index=process_index, process_count=process_count)
      if data_state and data_state.get("format") == CACHE_STATE:
        self._it = stream.iterator(state=data_state, **loader())
      else:  # a checkpoint of the tf.data path: continue at its batch index
        self._it = stream.iterator(start_batch, **loader())
      self._first = self._it.next_batch
    else:
      require_tf_data(f"reading task {name!r} without a token cache (Sources.cache_dir)")
      import seqio  # pylint: disable=g-import-not-at-top
      from t5lite.data.feed import tfdata as pipeline  # pylint: disable=g-import-not-at-top
      if start_batch and process_index == 0:
        print(f"t5lite: resuming the tf.data input pipeline: recomputing and dropping "
              f"{start_batch} batches (DATA_CACHE_DIR resumes in O(1); see `t5lite cache`)",
              flush=True)
      shard = (seqio.ShardInfo(index=process_index, num_shards=process_count)
               if process_count > 1 else None)
      self._ds = pipeline.get_dataset(name, lengths, batch_size // process_count, split="train",
                                      shuffle=True, seed=seed, shard_info=shard,
                                      start_batch=start_batch)
      self._it = iter(self._ds.as_numpy_iterator())
      self._first = start_batch
    self.name, self.seed, self.next_batch = name, seed, self._first

  def __next__(self) -> dict[str, np.ndarray]:
    try:
      batch = next(self._it)
    except StopIteration:
      raise ValueError(self._empty_message()) from None
    self.next_batch += 1
    return batch

  def _empty_message(self) -> str:
    # pylint: disable=g-import-not-at-top  (the tf.data path: seqio is installed)
    from t5lite.data.sources import json_lines
    from t5lite.data.sources.json_lines import JsonLinesDataSource
    from t5lite.data.tasks import registry as tasks
    where = sorted({repr(t.source.split_patterns("train")
                         if isinstance(t.source, JsonLinesDataSource) else t.source)
                    for t, _ in tasks.leaf_tasks(self.name)})
    skipped = dict(json_lines.skipped_records)
    return (f"{self.name!r}: the source yields no examples (train split of {', '.join(where)}"
            + (f"; records skipped: {skipped}" if skipped else "") + ")")

  def state(self) -> dict[str, Any]:
    """The position of the next batch (< 1 KB of JSON)."""
    if self.cached:
      return self._it.get_state()
    return {"batches": self.next_batch, "seed": self.seed}

  def counters(self) -> dict[str, float]:
    """Data metrics to log: records skipped for bad data, and the cache's counters."""
    out = {"data_skipped_records": float(_skipped_records() - self._skipped_at_start)}
    if self.cached:
      out.update({f"data_{k}": float(v) for k, v in self._it.counters().items()})
    return out

  def close(self) -> None:
    close = getattr(self._it, "close", None)
    if close:
      close()


def validation_batches(name: str, lengths: Mapping[str, int], batch_size: int, num_batches: int,
                       process_index: int = 0, process_count: int = 1,
                       sources: Optional[sources_lib.Sources] = None) -> Iterator[dict]:
  """This process's rows of the first num_batches global validation batches (unshuffled)."""
  sources = sources or sources_lib.Sources()
  if sources.cache_dir:
    from t5lite.data.feed import indexed  # pylint: disable=g-import-not-at-top
    stream = indexed.IndexedStream(name, lengths, batch_size,
                                   cache_dir(sources), split="validation",
                                   shuffle=False, process_index=process_index,
                                   process_count=process_count)
    for b in range(num_batches):
      yield stream.batch(b)
    return
  require_tf_data(f"reading task {name!r} without a token cache (Sources.cache_dir)")
  import seqio  # pylint: disable=g-import-not-at-top
  from t5lite.data.feed import tfdata as pipeline  # pylint: disable=g-import-not-at-top
  shard = (seqio.ShardInfo(index=process_index, num_shards=process_count)
           if process_count > 1 else None)
  ds = pipeline.get_dataset(name, lengths, batch_size // process_count, split="validation",
                            shuffle=False, seed=0, shard_info=shard)
  yield from ds.take(num_batches).as_numpy_iterator()
