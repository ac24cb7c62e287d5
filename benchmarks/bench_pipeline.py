"""The C4 span-corruption input pipeline, three ways, in one run, on the real C4 sample with the
real T5 vocabulary (inputs 512 / targets 114, batch 128):

  t5 (original)   seqio chain with seqio's tokenize and the `t5` package's span_corruption
  t5lite tf.data  seqio chain with t5lite's batched tokenize and span_corruption
  t5lite cache    the token cache (`t5lite cache`) read by the index-addressed stream
                  (data/feed/indexed.py) with span corruption in numpy (data/objectives/)

Prints examples/s and the examples' statistics per pipeline; beside them the cache's build rate
(1000 documents, and the same documents x5 in one file), the time to the first batch of a new
stream at step 0 and at step 100,000, and what the tf.data path pays to resume at a step.

  .venv/bin/python benchmarks/bench_pipeline.py [--batches 24] [--repeats 2]
"""
from __future__ import annotations

import argparse
import gzip
import os
import pathlib
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from t5lite.data.cache import build as cache_build  # noqa: E402
from t5lite.data.feed.tfdata import get_dataset  # noqa: E402
from t5lite.data.feed import indexed  # noqa: E402
from t5lite import testing as peers  # noqa: E402
from t5lite.data.sources import json_lines, sources  # noqa: E402
from t5lite.data.tasks import registry as tasks  # noqa: E402
from t5lite.data.vocab.seqio_vocab import get_vocabulary  # noqa: E402

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
LENGTHS = {"inputs": 512, "targets": 114}
BATCH = 128


def register(sample: str, vocab_path: str) -> dict[str, str]:
  tasks.register_all(sources.Sources(vocabulary_path=vocab_path, c4_json_files=sample,
                                     c4_json_validation_files=sample))
  try:
    t5_pre = peers.t5_preprocessors()
  except ModuleNotFoundError as e:
    raise SystemExit(str(e)) from e
  chain = tasks.text_chain()
  chain[1] = seqio.preprocessors.tokenize  # the original: seqio's per-example tokenize
  chain[2] = t5_pre.span_corruption
  tasks.add_task("bench_t5_span_corruption", json_lines.json_source(sample, sample),
                 get_vocabulary(vocab_path), chain=chain)
  return {"t5 (original)": "bench_t5_span_corruption", "t5lite tf.data": tasks.C4_JSON}


def _examples_in(batch) -> int:
  seg = batch["decoder_segment_ids"]  # [batch, targets_len]
  return int(sum(len(np.unique(row[row > 0])) for row in seg))


def tf_data_rate(name: str, num_batches: int, batch_size: int = BATCH, lengths=None) -> float:
  """examples/s over num_batches packed batches after 2 warm-up batches."""
  it = get_dataset(name, lengths or LENGTHS, batch_size, shuffle=True, seed=0,
                   num_epochs=None).as_numpy_iterator()
  for _ in range(2):
    next(it)
  examples, start = 0, time.perf_counter()
  for _ in range(num_batches):
    examples += _examples_in(next(it))
  return examples / (time.perf_counter() - start)


def cache_rate(root: str, num_batches: int, threads: int, processes: int = 0) -> float:
  it = indexed.IndexedStream(tasks.C4_JSON, LENGTHS, BATCH, root).iterator(
      0, num_threads=threads, worker_processes=processes)
  for _ in range(3 + 8 * processes):  # warm-up: threads, worker processes, prefetch buffer
    next(it)
  examples, start = 0, time.perf_counter()
  for _ in range(num_batches):
    examples += _examples_in(next(it))
  rate = examples / (time.perf_counter() - start)
  it.close()
  return rate


def unpacked_stats(batches) -> dict[str, float]:
  """Statistics of the examples in packed batches (each segment one example)."""
  li, lt, noise, raw, spans = [], [], 0, 0, 0
  for batch in batches:
    for row in range(batch["encoder_segment_ids"].shape[0]):
      enc, dec = batch["encoder_segment_ids"][row], batch["decoder_segment_ids"][row]
      for s in range(1, int(enc.max(initial=0)) + 1):
        inputs = batch["encoder_input_tokens"][row][enc == s]
        targets = batch["decoder_target_tokens"][row][dec == s]
        sentinels = int(np.sum(targets >= 32000))
        li.append(len(inputs))
        lt.append(len(targets))
        noise += len(targets) - sentinels - 1  # minus EOS
        raw += len(targets) - sentinels - 1 + len(inputs) - sentinels - 1
        spans += sentinels
  return {"inputs_mean": np.mean(li), "inputs_max": max(li), "targets_mean": np.mean(lt),
          "targets_max": max(lt), "density": noise / raw, "spans": spans / len(li),
          "span_len": noise / spans, "examples": len(li)}


def first_batch_seconds(root: str, start: int, repeats: int) -> list[float]:
  """From a new stream object to its first batch at `start`."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    it = indexed.IndexedStream(tasks.C4_JSON, LENGTHS, BATCH, root).iterator(start)
    next(it)
    times.append(time.perf_counter() - t0)
    it.close()
  return times


def tf_data_first_batch_seconds(start: int) -> float:
  t0 = time.perf_counter()
  next(get_dataset(tasks.C4_JSON, LENGTHS, BATCH, seed=0, start_batch=start).as_numpy_iterator())
  return time.perf_counter() - t0


def build_rate(files: str, root: str, vocab_path: str) -> tuple[float, int, int]:
  """(seconds, documents, tokens) of one single-worker cache build of c4_json over `files`."""
  tasks.register_all(sources.Sources(vocabulary_path=vocab_path, c4_json_files=files,
                                     c4_json_validation_files=None))
  t0 = time.perf_counter()
  (_, metadata), = cache_build.build(tasks.C4_JSON, root, splits=["train"],
                                     echo=lambda s: None).items()
  return time.perf_counter() - t0, sum(f.documents for f in metadata.files), metadata.tokens


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--batches", type=int, default=24)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--skip_batches", type=int, default=40,
                      help="the tf.data path's resume is measured at this step")
  args = parser.parse_args()
  sample = str(DATA / "c4" / "olmo_c4-sample.00000-of-00001.json.gz")
  vocab_path = str(DATA / "t5_vocab" / "spiece.model")
  print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, tensorflow {tf.__version__}, load average "
        f"{os.getloadavg()[0]:.1f}")

  work = tempfile.mkdtemp(prefix="bench-pipeline-")
  with gzip.open(sample, "rb") as f:
    lines = f.readlines()
  big = os.path.join(work, "c4-x5.00000-of-00001.json.gz")
  with gzip.open(big, "wb") as f:
    f.writelines(lines * 5)
  builds = {label: build_rate(files, os.path.join(work, folder), vocab_path)
            for label, files, folder in (("C4 sample, 1000 docs", sample, "c1"),
                                         ("C4 sample x5, 5000 docs", big, "c5"))}
  root = os.path.join(work, "c1")
  names = register(sample, vocab_path)

  cache_ways = {"t5lite cache (1 thread)": (1, 0), "t5lite cache (2 threads)": (2, 0),
                "t5lite cache (2 worker processes)": (1, 2)}
  rates = {label: [] for label in list(names) + list(cache_ways)}
  for _ in range(args.repeats):  # alternate to even out machine noise
    for label, name in names.items():
      rates[label].append(tf_data_rate(name, args.batches))
    for label, (threads, processes) in cache_ways.items():
      rates[label].append(cache_rate(root, args.batches, threads, processes))
  stats = {label: unpacked_stats(get_dataset(name, LENGTHS, 8, shuffle=False, seed=0)
                                 .take(50).as_numpy_iterator())
           for label, name in names.items()}
  cached = indexed.IndexedStream(tasks.C4_JSON, LENGTHS, 8, root)
  cached_stats = unpacked_stats(cached.batch(b) for b in range(50))
  stats.update({label: cached_stats for label in cache_ways})

  print(f"\npacked span corruption, inputs 512 / targets 114, batch {BATCH}, {args.batches} "
        f"batches x {args.repeats} repeats after warm-up; statistics over 400 examples\n")
  print("| pipeline | examples/s (best) | vs original | inputs mean (max) | targets mean (max) | "
        "noise density | spans/example | mean span length |")
  print("|---|---|---|---|---|---|---|---|")
  original = max(rates["t5 (original)"])
  for label, runs in rates.items():
    s = stats[label]
    print(f"| {label} | {max(runs):,.0f} | {max(runs) / original:.1f}x | {s['inputs_mean']:.1f} "
          f"({s['inputs_max']}) | {s['targets_mean']:.1f} ({s['targets_max']}) | "
          f"{s['density']:.4f} | {s['spans']:.2f} | {s['span_len']:.2f} |")
  print("\nall runs (examples/s):", {k: [round(r) for r in v] for k, v in rates.items()})

  print("\n| cache build (1 worker) | seconds | documents/s | tokens/s |\n|---|---|---|---|")
  for label, (seconds, docs, tokens) in builds.items():
    print(f"| {label} | {seconds:.2f} | {docs / seconds:,.0f} | {tokens / seconds:,.0f} |")

  first_batch_seconds(root, 0, 1)  # imports
  print(f"\n| time to the first batch (new stream, batch {BATCH}) | min ms | median ms |\n"
        "|---|---|---|")
  for start in (0, 100_000):
    times = first_batch_seconds(root, start, 5)
    print(f"| cache, step {start:,} | {min(times) * 1e3:.0f} | "
          f"{statistics.median(times) * 1e3:.0f} |")
  skip0, skip_n = tf_data_first_batch_seconds(0), tf_data_first_batch_seconds(args.skip_batches)
  print(f"| tf.data, step 0 / step {args.skip_batches} | {skip0 * 1e3:.0f} / {skip_n * 1e3:.0f} | "
        f"{(skip_n - skip0) / args.skip_batches:.3f} s per replayed batch |")


if __name__ == "__main__":
  main()
