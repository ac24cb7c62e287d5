"""Packed C4 span-corruption pipeline: t5lite vs the original `t5` package, in one run.

Both read the real C4 sample with the real T5 vocabulary through the same JSON source and seqio
chain (rekey, tokenize, span_corruption, append_eos_after_trim, EncDecFeatureConverter(pack));
they differ in span_corruption (t5lite's own vs the `t5` package's) and tokenize (t5lite's
tokenize_in_batches vs seqio.preprocessors.tokenize; the same ids). Prints a markdown table of examples/s and noise statistics.

  .venv/bin/python benchmarks/bench_pipeline.py [--batches 24] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from t5lite.data import get_dataset, get_vocabulary, peers, sources, tasks  # noqa: E402

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
LENGTHS = {"inputs": 512, "targets": 114}


def register(sample: str, vocab_path: str) -> dict[str, str]:
  tasks.register_all(sources.Sources(vocabulary_path=vocab_path, c4_json_files=sample,
                                     c4_json_validation_files=sample))
  try:
    t5_pre = peers.t5_preprocessors()
  except ModuleNotFoundError as e:
    raise SystemExit(str(e)) from e
  chain = tasks.span_corruption_preprocessors()
  chain[1] = seqio.preprocessors.tokenize  # the original: seqio's per-example tokenize
  chain[2] = t5_pre.span_corruption
  tasks.add_task("bench_t5_span_corruption", sources.json_source(sample, sample),
                 get_vocabulary(vocab_path), chain)
  return {"t5lite": tasks.C4_JSON, "t5 (original)": "bench_t5_span_corruption"}


def throughput(name: str, batch_size: int, num_batches: int, lengths=None) -> tuple[float, float]:
  """(examples/s, rows/s) over num_batches packed batches after 2 warm-up batches."""
  ds = get_dataset(name, lengths or LENGTHS, batch_size, shuffle=True, seed=0, num_epochs=None)
  it = ds.as_numpy_iterator()
  for _ in range(2):
    next(it)
  examples = 0
  start = time.perf_counter()
  for _ in range(num_batches):
    batch = next(it)
    seg = batch["decoder_segment_ids"]  # [batch, targets_len]
    examples += int(sum(len(np.unique(row[row > 0])) for row in seg))
  seconds = time.perf_counter() - start
  return examples / seconds, num_batches * batch_size / seconds


def noise_stats(name: str, vocab_size: int, num_examples: int = 400) -> dict[str, float]:
  """Unpacked statistics over the first num_examples (shuffle off, seed 0)."""
  ds = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split="train", shuffle=False, seed=0,
                                                   num_epochs=1)
  li, lt, noise, raw, spans = [], [], 0, 0, 0
  for ex in ds.take(num_examples).as_numpy_iterator():
    inputs, targets = ex["inputs"], ex["targets"]
    sentinels = int(np.sum(targets >= vocab_size - 100))
    n_noise = len(targets) - sentinels - 1  # minus EOS
    n_clean = len(inputs) - sentinels - 1
    li.append(len(inputs))
    lt.append(len(targets))
    noise += n_noise
    raw += n_noise + n_clean
    spans += sentinels
  return {"inputs_mean": np.mean(li), "inputs_max": max(li), "targets_mean": np.mean(lt),
          "targets_max": max(lt), "density": noise / raw, "spans": spans / len(li),
          "span_len": noise / spans}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--batches", type=int, default=24)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  sample = str(DATA / "c4" / "olmo_c4-sample.00000-of-00001.json.gz")
  vocab_path = str(DATA / "t5_vocab" / "spiece.model")
  names = register(sample, vocab_path)
  vocab_size = get_vocabulary(vocab_path).vocab_size

  rates = {label: [] for label in names}
  for _ in range(args.repeats):  # alternate to even out machine noise
    for label, name in names.items():
      rates[label].append(throughput(name, args.batch_size, args.batches))
  stats = {label: noise_stats(name, vocab_size) for label, name in names.items()}

  print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"tensorflow {tf.__version__}, seqio {seqio.__version__ if hasattr(seqio, '__version__') else '?'}")
  print(f"packed span corruption, inputs 512 / targets 114, batch {args.batch_size}, "
        f"{args.batches} batches x {args.repeats} repeats after 2 warm-up batches; "
        f"statistics over the first 400 unpacked examples\n")
  print("| pipeline | examples/s (best) | rows/s (best) | inputs mean (max) | targets mean (max) "
        "| noise density | spans/example | mean span length |")
  print("|---|---|---|---|---|---|---|---|")
  for label in names:
    ex_s = max(r[0] for r in rates[label])
    rows_s = max(r[1] for r in rates[label])
    s = stats[label]
    print(f"| {label} | {ex_s:,.0f} | {rows_s:,.0f} | {s['inputs_mean']:.1f} ({s['inputs_max']}) "
          f"| {s['targets_mean']:.1f} ({s['targets_max']}) | {s['density']:.4f} "
          f"| {s['spans']:.2f} | {s['span_len']:.2f} |")
  print("\nall runs (examples/s):",
        {label: [round(r[0]) for r in runs] for label, runs in rates.items()})


if __name__ == "__main__":
  main()
