"""Builds token caches (format.py's layout): parallel over input files, restartable, split over hosts.

For each input file of a split, in order: read its records, run the task's own steps before its
objective (rekey, tokenize: the same ids as the tf.data path), concatenate the documents' ids and
write them as ArrayRecord blocks. Worker processes (spawned: TensorFlow does not survive fork)
take one file each. A file is written under a temporary name and renamed when complete, then a
done marker; a rerun skips files that have one. `shard=(i, n)` takes files k with k % n == i, so n
hosts can split one build; whichever sees every file done writes metadata.json (identical
content, so a race between hosts is harmless). Output may be gs://: ArrayRecord writes a local
temporary file that is copied there.

Bad data is skipped and counted, file named: a record without `text`, invalid JSON or invalid
UTF-8 (in the file's counts), a file that cannot be read to its end, e.g. corrupt gzip (the whole
file, with the error, in metadata `bad_files`). A split with no tokens at all is an error.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
import zlib
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from t5lite import files
from t5lite.data.cache import format as cache_lib
from t5lite.data.cache import keys, manifest
from t5lite.data.sources import json_lines
from t5lite.data.sources.json_lines import JsonLinesDataSource
from t5lite.data.tasks import registry as tasks

log = logging.getLogger(__name__)
DEFAULT_SPLITS = ("train", "validation")
# What a file that cannot be read to its end raises (not programming errors: those propagate).
FILE_ERRORS = (OSError, EOFError, zlib.error, tf.errors.OpError)


@dataclasses.dataclass
class FileJob:
  """One input file to cache; picklable, so a spawned worker can run it."""
  source: seqio.DataSource
  steps: list
  output_features: Mapping[str, seqio.Feature]
  split: str
  index: int
  count: int
  path: str
  directory: str
  block_tokens: int
  dtype: str
  key_digest: str


# ---------------------------------------------------------------------------------------------
# Reading one input file
# ---------------------------------------------------------------------------------------------
def _json_texts(path: str, skipped: collections.Counter, failure: dict) -> Iterator[bytes]:
  """json_lines.json_texts, with bad records counted by reason and a file error kept in
  `failure`."""
  by_file: collections.Counter = collections.Counter()
  try:
    yield from json_lines.json_texts(path, by_file)
  except json_lines.CorruptFileError as e:  # corrupt gzip, unreadable file
    failure["error"] = str(e)
  finally:
    for (_, reason), count in by_file.items():
      skipped[reason] += count


def _records(job: FileJob, skipped: collections.Counter, failure: dict) -> tf.data.Dataset:
  """The file's records as the source yields them (before any preprocessing)."""
  source = job.source
  if isinstance(source, JsonLinesDataSource):  # read here, to skip bad records instead of failing
    return tf.data.Dataset.from_generator(
        lambda: _json_texts(job.path, skipped, failure),
        output_signature=tf.TensorSpec([], tf.string)).map(lambda text: {"text": text})
  # TFDS, with as many shards as files: shard i is file i.
  return source.get_dataset(job.split, shuffle=False,
                            shard_info=seqio.ShardInfo(job.index, job.count))


def _token_batches(job: FileJob, skipped: collections.Counter,
                   failure: dict) -> Iterator[tuple[np.ndarray, int]]:
  """(the ids of a run of documents, concatenated; how many documents) for the whole file."""
  ds = _records(job, skipped, failure)
  with seqio.utils.map_seed_manager(0):  # the steps are deterministic; some still ask for seeds
    for step in job.steps:
      step = seqio.utils.add_kwargs_to_transform(
          step, sequence_length=None, output_features=job.output_features)
      ds = step(ds)
  ds = ds.map(lambda x: x[cache_lib.FEATURE]).ragged_batch(256)
  for batch in ds:  # a tf.RaggedTensor [documents, None]
    yield batch.flat_values.numpy(), int(batch.nrows())


# ---------------------------------------------------------------------------------------------
# Writing one cache file
# ---------------------------------------------------------------------------------------------
def _write_blocks(job: FileJob, local_path: str, skipped: collections.Counter,
                  failure: dict) -> tuple[int, int, int]:
  """Writes the file's stream to local_path; (tokens, blocks, documents)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  dtype, block = np.dtype(job.dtype), job.block_tokens
  writer = array_record_module.ArrayRecordWriter(local_path, cache_lib.WRITER_OPTIONS)
  tokens = blocks = documents = 0
  pending = np.zeros([0], dtype)
  try:
    for ids, docs in _token_batches(job, skipped, failure):
      documents += int(docs)
      tokens += len(ids)
      pending = np.concatenate([pending, ids.astype(dtype)])
      full = len(pending) // block * block
      for start in range(0, full, block):
        writer.write(pending[start:start + block].tobytes())
        blocks += 1
      pending = pending[full:]
    if len(pending):  # the tail block: shorter, its ids still serve shorter pieces
      writer.write(pending.tobytes())
      blocks += 1
  except FILE_ERRORS as e:  # e.g. a TFRecord reader's DataLossError
    failure.setdefault("error", f"{type(e).__name__}: {str(e).splitlines()[0]}")
  finally:
    writer.close()
  return tokens, blocks, documents


def build_file(job: FileJob) -> dict[str, Any]:
  """Caches one input file (or records it as bad) and writes its done marker; the marker."""
  t0 = time.perf_counter()
  name = cache_lib.data_file(job.index, job.count)
  final = os.path.join(job.directory, name)
  remote = files.is_remote(job.directory)  # ArrayRecord writes locally: write here, copy there
  tmp_dir = tempfile.mkdtemp(prefix="t5lite-cache-") if remote else None
  local = os.path.join(tmp_dir, name) if remote else files.temporary_name(final)
  files.remove_stale_temporaries(final)  # a killed build's of this file (never a live one's)
  skipped, failure = collections.Counter(), {}
  try:
    tokens, blocks, documents = _write_blocks(job, local, skipped, failure)
    error = failure.get("error")
    keep = not error and tokens > 0
    if keep and remote:
      files.copy(local, files.temporary_name(final), overwrite=True)
      files.rename(files.temporary_name(final), final, overwrite=True)
    elif keep:
      files.rename(local, final, overwrite=True)
  finally:
    if tmp_dir:
      shutil.rmtree(tmp_dir, ignore_errors=True)
    elif os.path.exists(local):
      os.remove(local)
  if error:
    log.warning("t5lite cache: skipped bad input file %s: %s", job.path, error)
    tokens = blocks = documents = 0
  if skipped:
    log.warning("t5lite cache: %s: skipped %d records (%s)", job.path, sum(skipped.values()),
                dict(skipped))
  entry = cache_lib.FileEntry(
      source=job.path, cache=name if keep else "", tokens=tokens, blocks=blocks,
      documents=documents, skipped_records=sum(skipped.values()), skipped=dict(skipped),
      error=error)
  marker = {"entry": dataclasses.asdict(entry), "key_digest": job.key_digest,
            "block_tokens": job.block_tokens, "dtype": job.dtype,
            "seconds": round(time.perf_counter() - t0, 3)}
  cache_lib.write_json(os.path.join(job.directory, cache_lib.done_file(job.index, job.count)),
                       marker)
  return marker


# ---------------------------------------------------------------------------------------------
# A split of a task; a task or mixture
# ---------------------------------------------------------------------------------------------
def _markers(directory: str, count: int) -> dict[int, dict]:
  done = {}
  for path in files.glob(os.path.join(directory, "*.done.json")):
    index = int(os.path.basename(path).split("-of-")[0])
    if index < count:
      done[index] = cache_lib.read_json(path)
  return done


def _check_marker(marker: dict, job: FileJob, directory: str) -> None:
  for field in ("key_digest", "block_tokens", "dtype"):
    if marker[field] != getattr(job, field):
      raise ValueError(f"{directory} holds files built with {field}={marker[field]!r}, not "
                       f"{getattr(job, field)!r}; use another --output or remove the folder")


def build_split(task: seqio.Task, split: str, output: str, workers: int = 1,
                shard: tuple[int, int] = (0, 1),
                block_tokens: int = cache_lib.DEFAULT_BLOCK_TOKENS,
                echo: Callable[[str], None] = print) -> Optional[cache_lib.CacheMetadata]:
  """Caches this host's share of `task`'s split under output/<key name>; the metadata once every
  file is done (by any host), else None."""
  key = keys.cache_key(task, split)
  directory = os.path.join(output, key.name)
  meta_path = os.path.join(directory, cache_lib.METADATA)
  if files.exists(meta_path):
    echo(f"t5lite cache: {directory} is complete")
    return cache_lib.CacheMetadata.from_json(cache_lib.read_json(meta_path))
  inputs = keys.source_files(task.source, split)
  vocabulary = task.output_features[cache_lib.FEATURE].vocabulary
  steps = list(tasks.spec(task).pre_objective)
  files.makedirs(directory)
  jobs = [FileJob(task.source, steps, task.output_features, split, i, len(inputs), path,
                  directory, block_tokens, cache_lib.token_dtype(vocabulary.vocab_size).name,
                  key.digest) for i, path in enumerate(inputs)]
  done = _markers(directory, len(inputs))
  for marker in done.values():
    _check_marker(marker, jobs[0], directory)
  index, count = shard
  todo = [job for job in jobs if job.index % count == index and job.index not in done]
  echo(f"t5lite cache: {task.name} {split} -> {directory}: {len(inputs)} input files, "
       f"{len(todo)} to build here (shard {index}/{count}, {len(done)} already done)")
  for marker in _run(todo, workers):
    entry = marker["entry"]
    echo(f"  {os.path.basename(entry['source'])}: {entry['documents']} documents, "
         f"{entry['tokens']} tokens, {marker['seconds']:.1f} s"
         + (f" [skipped: {entry['error']}]" if entry["error"] else ""))
  done = _markers(directory, len(inputs))
  if len(done) < len(inputs):
    echo(f"t5lite cache: {len(done)} of {len(inputs)} files done; the invocation that finishes "
         "the last one writes metadata.json")
    return None
  metadata = cache_lib.CacheMetadata(
      format_version=cache_lib.FORMAT_VERSION, key=key.as_json(), block_tokens=block_tokens,
      dtype=jobs[0].dtype,
      files=tuple(cache_lib.FileEntry(**done[i]["entry"]) for i in range(len(inputs))))
  if metadata.tokens == 0:
    raise ValueError(f"{task.name!r}: its {split} split yields no examples: files {inputs} "
                     f"(errors: {metadata.bad_files or 'none; no text records'})")
  cache_lib.write_json(meta_path, metadata.as_json())
  echo(f"t5lite cache: wrote {meta_path}: {metadata.tokens} tokens, "
       f"{len(metadata.bad_files)} bad files")
  return metadata


def _run(jobs: Sequence[FileJob], workers: int) -> Iterator[dict]:
  if workers <= 1 or len(jobs) <= 1:
    for job in jobs:
      yield build_file(job)
    return
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
    for future in concurrent.futures.as_completed([pool.submit(build_file, j) for j in jobs]):
      yield future.result()


def build(name: str, output: str, splits: Optional[Sequence[str]] = None, workers: int = 1,
          shard: tuple[int, int] = (0, 1), block_tokens: int = cache_lib.DEFAULT_BLOCK_TOKENS,
          echo: Callable[[str], None] = print) -> dict[str, Optional[cache_lib.CacheMetadata]]:
  """Caches task or mixture `name` (each distinct source x vocabulary of its tasks once) under
  `output`; {cache folder name: its metadata, or None while other files/hosts are unfinished}.

  splits: default train and validation where the sources have them; named splits must exist.
  """
  index, count = shard
  if not 0 <= index < count:
    raise ValueError(f"shard {index}/{count}: expected 0 <= I < N")
  if block_tokens < 1:
    raise ValueError(f"block_tokens must be positive, got {block_tokens}")
  results = {}
  for split in splits or DEFAULT_SPLITS:
    built = {}
    for task, _ in tasks.leaf_tasks(name):
      if splits is None and not _has_split(task.source, split):
        continue
      key = keys.cache_key(task, split)
      if key.name not in results:
        results[key.name] = build_split(task, split, output, workers, shard, block_tokens, echo)
      built[key.name] = results[key.name]
    if built and all(m is not None for m in built.values()):  # every cache of the split is done
      written = manifest.write(output, name, split, keys.cached_tasks(name, split))
      if written:
        echo(f"t5lite cache: wrote {written}")
  if not results:
    raise ValueError(f"{name!r}: its sources have none of the splits {list(DEFAULT_SPLITS)}")
  return results


def _has_split(source: seqio.DataSource, split: str) -> bool:
  if isinstance(source, seqio.FileDataSource):
    return split in source.splits
  try:
    return bool(source.list_shards(split))
  except Exception:  # pylint: disable=broad-except  # e.g. TFDS: an unknown split
    return False
