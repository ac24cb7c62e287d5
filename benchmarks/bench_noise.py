"""µs per example of every numpy objective (data/objectives/numpy_objectives.py) on real C4 raw pieces, one core.

The C4 sample is tokenized once and concatenated into one stream (T5 SentencePiece for T5/UL2
objectives, GPT-2 byte-level BPE for BART, as the c4_* tasks), cut into raw pieces of each
objective's raw_length() at inputs 512 and the targets length it needs; each example is
objective(piece, example_rng(seed, i)), example_rng included. Prints a markdown table: best of
--repeats passes, wall clock and process CPU time (the box is shared: CPU time is the steadier).

  .venv/bin/python benchmarks/bench_noise.py [--examples 800] [--repeats 5]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import pathlib
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from t5lite.data.objectives import numpy_objectives as noise  # noqa: E402
from t5lite.data.objectives import registry as objectives  # noqa: E402
from t5lite.data.vocab.seqio_vocab import GPT2BPEVocabulary  # noqa: E402
from t5lite.data.vocab.seqio_vocab import get_vocabulary  # noqa: E402

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
INPUTS = 512

# label -> (objective, kwargs, vocabulary "t5" / "gpt2")
ROWS = {
    "T5 span corruption": ("span_corruption", {}, "t5"),
    "BART denoising (permute + infill)": ("bart_denoising", {}, "gpt2"),
    "BART text infilling": ("bart_text_infilling", {}, "gpt2"),
    "BART sentence permutation": ("bart_sentence_permutation", {}, "gpt2"),
    "BART token deletion": ("bart_token_deletion", {}, "gpt2"),
    "BART document rotation": ("bart_document_rotation", {}, "gpt2"),
    "T5 prefix LM": ("prefix_lm", {}, "t5"),
    "T5 iid denoising": ("iid_denoising", {}, "t5"),
    "T5 BERT-style": ("bert_style_denoising", {}, "t5"),
    "T5 deshuffling": ("deshuffling", {}, "t5"),
}
for _suffix, _name, _kwargs, _ in objectives.UL2_DENOISERS:
  ROWS[f"UL2 {_suffix[4:]}"] = (_name, _kwargs, "t5")


def streams() -> dict[str, tuple[object, np.ndarray]]:
  with gzip.open(DATA / "c4" / "olmo_c4-sample.00000-of-00001.json.gz", "rt") as f:
    docs = [json.loads(line)["text"] for line in f]
  t5 = get_vocabulary(str(DATA / "t5_vocab" / "spiece.model"))
  gpt2 = GPT2BPEVocabulary(str(DATA / "gpt2_bpe"))
  return {"t5": (t5, np.concatenate([np.asarray(x, np.int32) for x in t5.tokenizer.encode(docs)])),
          "gpt2": (gpt2, np.concatenate(gpt2.encode_batch(docs)).astype(np.int32))}


def best_us(fn, pieces, repeats: int, seed: int = 0) -> tuple[float, float]:
  """(wall, CPU) µs per example, each the best pass of `repeats`."""
  wall, cpu = [], []
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    for i, piece in enumerate(pieces):
      fn(piece, noise.example_rng(seed, i))
    wall.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  return 1e6 * min(wall) / len(pieces), 1e6 * min(cpu) / len(pieces)


# Per-example Generator candidates: (seed, index) -> Generator.
RNG_CANDIDATES = {
    "default_rng([seed, index]) (SeedSequence + PCG64)": lambda s, i: np.random.default_rng([s, i]),
    "Generator(SFC64([seed, index]))": lambda s, i: np.random.Generator(np.random.SFC64([s, i])),
    "Generator(Philox(key=(seed << 64) + index))":
        lambda s, i: np.random.Generator(np.random.Philox(key=(s << 64) | i)),
    "Generator(Philox(key=seed, counter=[0, index, 0, 0]))":
        lambda s, i: np.random.Generator(np.random.Philox(key=s, counter=[0, i, 0, 0])),
    "noise.example_rng (Philox, key handed over as is)": noise.example_rng,
}


def rng_table(examples: int, repeats: int) -> None:
  """Build cost of each candidate, alone and with span corruption's draws (566 uint64 keys)."""
  print("| per-example Generator | µs build (CPU) | µs build + 566 draws (CPU) |")
  print("|---|---|---|")
  for label, make in RNG_CANDIDATES.items():
    build, draw = [], []
    for _ in range(repeats):
      c0 = time.process_time()
      for i in range(examples):
        make(1234, i)
      c1 = time.process_time()
      for i in range(examples):
        make(1234, i).bit_generator.random_raw(566)
      build.append(c1 - c0)
      draw.append(time.process_time() - c1)
    print(f"| {label} | {1e6 * min(build) / examples:.1f} | {1e6 * min(draw) / examples:.1f} |")


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--examples", type=int, default=800)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  data = streams()
  print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}, Python {platform.python_version()}, numpy {np.__version__}")
  print(f"up to {args.examples} raw pieces per objective, best of {args.repeats} passes, "
        "example_rng included")
  print("| objective | inputs / targets | raw length | pieces | µs/example wall | µs/example CPU "
        "| inputs mean | targets mean |")
  print("|---|---|---|---|---|---|---|---|")
  for label, (name, kwargs, vocab_name) in ROWS.items():
    vocab, stream = data[vocab_name]
    prefix = len(vocab.encode(kwargs["mode"])) if "mode" in kwargs else 0
    noise_kwargs = {k: v for k, v in kwargs.items() if k in ("noise_density",
                                                            "mean_noise_span_length")}
    lengths = {"inputs": INPUTS,
               "targets": objectives.required_targets_length(name, INPUTS, prefix, **noise_kwargs)}
    objective = objectives.objective(name, **kwargs).numpy(lengths, vocab)
    raw = objective.raw_length()
    pieces = [stream[i:i + raw] for i in range(0, len(stream) - raw + 1, raw)][:args.examples]
    wall, cpu = best_us(objective, pieces, args.repeats)
    exs = [objective(p, noise.example_rng(0, i)) for i, p in enumerate(pieces)]
    print(f"| {label} | {lengths['inputs']} / {lengths['targets']} | {raw} | {len(pieces)} "
          f"| {wall:.1f} | {cpu:.1f} | {np.mean([len(e['inputs']) for e in exs]):.1f} "
          f"| {np.mean([len(e['targets']) for e in exs]):.1f} |")
  pieces = [np.zeros(0, np.int32)] * args.examples
  wall, cpu = best_us(lambda piece, rng: None, pieces, args.repeats)
  print(f"| example_rng alone | | | {len(pieces)} | {wall:.1f} | {cpu:.1f} | | |")
  print()
  rng_table(4 * args.examples, args.repeats)
  print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()
