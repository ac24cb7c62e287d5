"""The token cache and the index-addressed stream on the real C4 sample + real T5 vocabulary.

Prints: the cache build rate (documents/s, tokens/s; one file of 1000 documents, and the same
documents repeated to 5000 in one file, which shows the rate past start-up costs); the time to the
first batch of a stream resumed at step 0 and at step 100,000 (batch 128, inputs 512 / targets
114; a new stream object each time, min and median of repeats), beside the tf.data path's cost of
skipping batches; the stream's examples/s with an identity objective (threads 1 and 8) and with
real span corruption when t5lite.data.noise is importable; and, in the same run, the original
`t5` package pipeline's examples/s (bench_pipeline.py's measurement) for the ratio.

  .venv/bin/python benchmarks/bench_cache.py [--batches 40] [--repeats 5]
"""
from __future__ import annotations

import argparse
import gzip
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_pipeline  # noqa: E402  # the original pipeline's measurement, reused as is
from t5lite.data import cache_build, indexed, tasks  # noqa: E402
from t5lite.data.sources import Sources  # noqa: E402

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
LENGTHS = {"inputs": 512, "targets": 114}
BATCH = 128


class Identity:
  """inputs = the raw piece + EOS, targets = its first 113 ids + EOS: reading and packing only."""

  def raw_length(self):
    return LENGTHS["inputs"] - 1

  def __call__(self, tokens, rng):
    inputs = np.append(tokens, 1).astype(np.int32)
    return {"inputs": inputs, "targets": np.append(inputs[:LENGTHS["targets"] - 1], 1)}


def identity_factory(task, lengths):
  return Identity()


def rng_fn(seed, index):
  return np.random.default_rng([seed, index])


def build_rate(files, root) -> tuple[float, int, int]:
  """(seconds, documents, tokens) of one single-worker build of c4_json over `files`."""
  tasks.register_all(Sources(vocabulary_path=str(DATA / "t5_vocab/spiece.model"), c4_json_files=files,
                       c4_json_validation_files=None))
  t0 = time.perf_counter()
  (_, metadata), = cache_build.build(tasks.C4_JSON, root, splits=["train"],
                                     echo=lambda s: None).items()
  seconds = time.perf_counter() - t0
  return seconds, sum(f.documents for f in metadata.files), metadata.tokens


def first_batch_seconds(root, start, repeats, **kwargs) -> list[float]:
  """Time from a new stream object to its first batch at `start`."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    stream = indexed.IndexedStream(tasks.C4_JSON, LENGTHS, BATCH, root, **kwargs)
    it = stream.iterator(start)
    next(it)
    times.append(time.perf_counter() - t0)
    it.close()
  return times


def stream_rate(root, batches, num_threads, **kwargs) -> tuple[float, dict]:
  stream = indexed.IndexedStream(tasks.C4_JSON, LENGTHS, BATCH, root, **kwargs)
  it = stream.iterator(0, num_threads=num_threads)
  for _ in range(3):  # warm-up: thread pool and prefetch buffer
    next(it)
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  rate = batches * BATCH / (time.perf_counter() - t0)
  counters = it.counters()
  it.close()
  return rate, counters


def tf_data_skip_seconds(start: int) -> float:
  from t5lite.data import pipeline  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  ds = pipeline.get_dataset(tasks.C4_JSON, LENGTHS, BATCH, seed=0, start_batch=start)
  next(ds.as_numpy_iterator())
  return time.perf_counter() - t0


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", type=int, default=40)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--original_batches", type=int, default=12)
  parser.add_argument("--skip_batches", type=int, default=40,
                      help="the tf.data path's resume is measured at this step")
  args = parser.parse_args()
  sample = DATA / "c4/olmo_c4-sample.00000-of-00001.json.gz"
  vocab = str(DATA / "t5_vocab/spiece.model")
  import seqio  # noqa: E402  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # noqa: E402  # pylint: disable=g-import-not-at-top
  print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"tensorflow {tf.__version__}, seqio {seqio.__version__}, load average "
        f"{os.getloadavg()[0]:.1f}")
  work = tempfile.mkdtemp(prefix="bench-cache-")
  with gzip.open(sample, "rb") as f:
    lines = f.readlines()
  big = os.path.join(work, "c4-x5.00000-of-00001.json.gz")
  with gzip.open(big, "wb") as f:
    f.writelines(lines * 5)

  print("\n| cache build (1 worker) | seconds | documents/s | tokens/s |\n|---|---|---|---|")
  for label, files, root in (("C4 sample, 1000 docs", str(sample), os.path.join(work, "c1")),
                             ("C4 sample x5, 5000 docs", big, os.path.join(work, "c5"))):
    seconds, docs, tokens = build_rate(files, root)
    print(f"| {label} | {seconds:.2f} | {docs / seconds:,.0f} | {tokens / seconds:,.0f} |")
  root = os.path.join(work, "c1")
  tasks.register_all(Sources(vocabulary_path=vocab, c4_json_files=str(sample),
                       c4_json_validation_files=str(sample)))

  plain = dict(objective_factory=identity_factory, rng_fn=rng_fn)
  first_batch_seconds(root, 0, 1, **plain)  # imports
  print(f"\n| time to first batch (batch {BATCH}, 512/114, identity objective) | min ms | "
        f"median ms |\n|---|---|---|")
  for start in (0, 100_000):
    times = first_batch_seconds(root, start, args.repeats, **plain)
    print(f"| step {start:,} | {min(times) * 1e3:.1f} | {statistics.median(times) * 1e3:.1f} |")
  skip = args.skip_batches
  skip0, skip_n = tf_data_skip_seconds(0), tf_data_skip_seconds(skip)
  print(f"| tf.data path (get_dataset), step 0 / step {skip} | {skip0 * 1e3:.0f} / "
        f"{skip_n * 1e3:.0f} | {(skip_n - skip0) / skip:.3f} s per skipped batch |")

  print(f"\n| stream (batch {BATCH}, 512/114, {args.batches} batches) | threads | examples/s | "
        "packing efficiency inputs / targets |\n|---|---|---|---|")
  results = {}
  for threads in (1, 8):
    rate, counters = stream_rate(root, args.batches, threads, **plain)
    results[f"identity, {threads} threads"] = rate
    print(f"| identity objective | {threads} | {rate:,.0f} | "
          f"{counters['packing_efficiency_inputs']:.3f} / "
          f"{counters['packing_efficiency_targets']:.3f} |")
  try:
    from t5lite.data import noise  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    print("| span corruption (t5lite.data.noise) | - | not measured: t5lite.data.noise is not in "
          "this checkout | - |")
  else:
    for threads in (1, 8):
      rate, counters = stream_rate(root, args.batches, threads)
      results[f"span corruption, {threads} threads"] = rate
      print(f"| span corruption (t5lite.data.noise) | {threads} | {rate:,.0f} | "
            f"{counters['packing_efficiency_inputs']:.3f} / "
            f"{counters['packing_efficiency_targets']:.3f} |")

  names = bench_pipeline.register(str(sample), vocab)
  original, _ = bench_pipeline.throughput(names["t5 (original)"], BATCH, args.original_batches)
  print(f"\noriginal `t5` package pipeline (tf.data, packed, {args.original_batches} batches): "
        f"{original:,.0f} examples/s")
  for label, rate in results.items():
    print(f"  stream, {label}: {rate / original:.1f}x")


if __name__ == "__main__":
  main()
