"""Packed pipelines of every pretraining objective vs T5 span corruption, in one run.

All read the real C4 sample through the same JSON source and seqio chain (rekey, tokenize,
objective, append_eos_after_trim, EncDecFeatureConverter(pack=True)); T5/UL2 objectives use
the real T5 vocabulary, BART ones GPT-2 byte-level BPE. Each objective runs at inputs 512 and
the targets length it needs (objectives.required_targets_length). Prints a markdown table.

  .venv/bin/python benchmarks/bench_objectives.py [--batches 12] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import seqio  # noqa: E402
import tensorflow as tf  # noqa: E402

from t5lite.data import get_vocabulary, tasks  # noqa: E402
from t5lite.data import sources  # noqa: E402
from t5lite.data import objectives as obj  # noqa: E402
from t5lite.data.gpt2_vocab import GPT2BPEVocabulary  # noqa: E402

from bench_pipeline import throughput  # noqa: E402  (this folder is on sys.path)

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
  source = sources.json_source(sample, sample)
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
  lengths = {label: {"inputs": INPUTS, "targets": obj.required_targets_length(o, INPUTS, **kw)}
             for label, (_, o, kw) in PIPELINES.items()}

  rates = {label: [] for label in PIPELINES}
  for _ in range(args.repeats):  # alternate to even out machine noise
    for label, (name, _, _) in PIPELINES.items():
      rates[label].append(throughput(name, args.batch_size, args.batches, lengths[label]))
  stats = {label: lengths_stats(name, lengths[label]) for label, (name, _, _) in PIPELINES.items()}

  print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}, Python {platform.python_version()}, tensorflow {tf.__version__}")
  print(f"packed (EncDecFeatureConverter), batch {args.batch_size}, {args.batches} batches x "
        f"{args.repeats} repeats after 2 warm-up batches; lengths over the first 200 unpacked "
        "examples\n")
  print("| pipeline | task | inputs / targets | examples/s (best) | rows/s (best) "
        "| inputs mean | targets mean |")
  print("|---|---|---|---|---|---|---|")
  for label, (name, _, _) in PIPELINES.items():
    ex_s = max(r[0] for r in rates[label])
    rows_s = max(r[1] for r in rates[label])
    li, lt = stats[label]
    print(f"| {label} | {name} | {INPUTS} / {lengths[label]['targets']} | {ex_s:,.0f} "
          f"| {rows_s:,.0f} | {li:.1f} | {lt:.1f} |")
  print("\nall runs (examples/s):",
        {label: [round(r[0]) for r in runs] for label, runs in rates.items()})


if __name__ == "__main__":
  main()
