"""Every pretraining objective's input pipeline, tf.data and token cache, in one run.

All read the real C4 sample. tf.data: the seqio chain (rekey, tokenize, objective,
append_eos_after_trim, EncDecFeatureConverter(pack=True)); cache: the token cache read by the
index-addressed stream with the objective in numpy (data/objectives/numpy_objectives.py), one thread. T5/UL2 objectives
use the real T5 vocabulary, BART ones GPT-2 byte-level BPE. Each objective runs at inputs 512 and
the targets length it needs (objectives.required_targets_length). Prints a markdown table.

  .venv/bin/python benchmarks/bench_objectives.py [--batches 12] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from t5lite.data.cache import build as cache_build  # noqa: E402
from t5lite.data.vocab.seqio_vocab import get_vocabulary  # noqa: E402
from t5lite.data.feed import indexed  # noqa: E402
from t5lite.data.tasks import registry as tasks  # noqa: E402
from t5lite.data.sources import json_lines  # noqa: E402
from t5lite.data.objectives import registry as objectives  # noqa: E402
from t5lite.data.vocab.seqio_vocab import GPT2BPEVocabulary  # noqa: E402

from bench_pipeline import _examples_in, tf_data_rate  # noqa: E402  (this folder is on sys.path)

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
INPUTS = 512
P = "bench"

# label -> (task or mixture, objective name for required_targets_length, its kwargs)
PIPELINES = {
    "T5 span corruption (baseline)": (f"{P}_span_corruption", "span_corruption", {}),
    "BART denoising (permute + infill)": (f"{P}_bart_denoising", "bart_denoising", {}),
    "BART text infilling": (f"{P}_bart_text_infilling", "bart_text_infilling", {}),
    "BART sentence permutation": (f"{P}_bart_sentence_permutation", "bart_sentence_permutation", {}),
    "BART token deletion": (f"{P}_bart_token_deletion", "bart_token_deletion", {}),
    "BART document rotation": (f"{P}_bart_document_rotation", "bart_document_rotation", {}),
    "T5 prefix LM": (f"{P}_prefix_lm", "prefix_lm", {}),
    "T5 iid denoising": (f"{P}_iid_denoising", "iid_denoising", {}),
    "T5 BERT-style": (f"{P}_bert_denoising", "bert_style_denoising", {}),
    "T5 deshuffling": (f"{P}_deshuffling", "deshuffling", {}),
    "UL2 mixture (7 denoisers)": (f"{P}_ul2", "ul2_denoiser",
                                  dict(prefix_length=4, noise_density=0.5,
                                       mean_noise_span_length=3)),
}


def register(sample: str, vocab_path: str, gpt2_dir: str) -> None:
  source = json_lines.json_source(sample, sample)
  tasks.register_source_tasks(P, source, get_vocabulary(vocab_path), GPT2BPEVocabulary(gpt2_dir))


def lengths_stats(name: str, lengths, num_examples: int = 200) -> tuple[float, float]:
  ds = seqio.get_mixture_or_task(name).get_dataset(lengths, split="train", shuffle=False, seed=0,
                                                   num_epochs=1)
  exs = list(ds.take(num_examples).as_numpy_iterator())
  return np.mean([len(e["inputs"]) for e in exs]), np.mean([len(e["targets"]) for e in exs])


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--batches", type=int, default=12)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  register(str(DATA / "c4" / "olmo_c4-sample.00000-of-00001.json.gz"),
           str(DATA / "t5_vocab" / "spiece.model"), str(DATA / "gpt2_bpe"))
  lengths = {label: {"inputs": INPUTS, "targets": objectives.required_targets_length(o, INPUTS, **kw)}
             for label, (_, o, kw) in PIPELINES.items()}

  root = tempfile.mkdtemp(prefix="bench-objectives-")
  for name in ("bench_span_corruption", "bench_bart_denoising"):  # the T5 and the GPT-2 caches
    cache_build.build(name, root, splits=["train"], echo=lambda s: None)

  def cache_rate(name, lengths):
    it = indexed.IndexedStream(name, lengths, args.batch_size, root).iterator(0, num_threads=1)
    next(it)
    t0, examples = time.perf_counter(), 0
    for _ in range(args.batches):
      examples += _examples_in(next(it))
    it.close()
    return examples / (time.perf_counter() - t0)

  rates = {label: {"tf.data": [], "cache": []} for label in PIPELINES}
  for _ in range(args.repeats):  # alternate to even out machine noise
    for label, (name, _, _) in PIPELINES.items():
      rates[label]["tf.data"].append(
          tf_data_rate(name, args.batches, args.batch_size, lengths[label]))
      rates[label]["cache"].append(cache_rate(name, lengths[label]))
  stats = {label: lengths_stats(name, lengths[label]) for label, (name, _, _) in PIPELINES.items()}

  print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}, Python {platform.python_version()}, tensorflow {tf.__version__}")
  print(f"packed, batch {args.batch_size}, {args.batches} batches x {args.repeats} repeats after "
        "warm-up; lengths over the first 200 unpacked tf.data examples\n")
  print("| pipeline | task | inputs / targets | tf.data examples/s (best) | cache examples/s "
        "(best, 1 thread) | inputs mean | targets mean |")
  print("|---|---|---|---|---|---|---|")
  for label, (name, _, _) in PIPELINES.items():
    li, lt = stats[label]
    print(f"| {label} | {name} | {INPUTS} / {lengths[label]['targets']} | "
          f"{max(rates[label]['tf.data']):,.0f} | {max(rates[label]['cache']):,.0f} | {li:.1f} | "
          f"{lt:.1f} |")


if __name__ == "__main__":
  main()
