"""Perplexity pruning (`t5lite corpus prune`; Marion et al. 2023) on the embedded demo corpus: tiny
T5 trained on the middle (low, high) 50% of the documents by a reference model's perplexity,
beside a random 50% and all of them, for the same steps and batch.

  .venv/bin/python benchmarks/bench_prune.py [--steps 300] [--reference_steps 200] \\
      [--seeds 0,1] [--extra_selections low,high] [--extra_seeds 0] 2> bench_prune.log

1. Reference: runs/demo.gin's tiny T5 1.1 trained --reference_steps steps on demo_prefix_lm (the
   whole demo train split, 4 shards, 172 documents; inputs / targets 128 / 128, batch 32):
   prefix LM, the objective `t5lite corpus prune` scores with.
2. `t5lite corpus prune` of the 4 train shards with it, --keep 0.5, prefix LM at 128 / 128
   tokens: middle, random (seed 0), and --extra_selections.
3. Tiny T5 1.1 span corruption on each pruned corpus and on all of it: runs/demo.gin's settings
   (128 / 32, batch 32, AdamW, cosine from 3e-3 over --steps) for --steps steps, training seeds
   --seeds (parameters and data order); --extra_selections with --extra_seeds only.
4. Held-out: each model's loss per target token (cross-entropy, no z-loss) on one pass over the
   demo validation split (9 documents held out of every corpus above), the same packed batches
   of demo_span_corruption (seed 0, unshuffled) for every model.
The table goes to stdout; progress bars and the commands' lines to stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

LENGTHS = {"inputs": 128, "targets": 32}
REFERENCE_LENGTHS = {"inputs": 128, "targets": 128}
BATCH = 32
EVAL_TASK = "demo_span_corruption"


def gin_args(model_dir: str, steps: int, task: str, cache: str, vocab: str,
             json_sources: dict, seed: int, lengths: dict) -> list[str]:
  return ["--gin_file=runs/demo.gin", f"--gin.MODEL_DIR='{model_dir}'",
          f"--gin.TRAIN_STEPS={steps}", f"--gin.MIXTURE_OR_TASK_NAME='{task}'",
          f"--gin.TASK_FEATURE_LENGTHS={lengths}", f"--gin.BATCH_SIZE={BATCH}",
          f"--gin.DATA_CACHE_DIR='{cache}'", f"--gin.VOCABULARY_PATH='{vocab}'",
          f"--gin.register_all.json_sources={json_sources!r}", f"--gin.train.seed={seed}",
          "--gin.EvalConfig.period=0", "--gin.EvalConfig.predict_examples=0",
          "--gin.LoopConfig.log_period=50", "--gin.Checkpointer.save_period=100000"]


def parse_gin(args: list[str]) -> None:
  import gin
  from t5lite.cli import common
  gin.clear_config()
  common.parse_gin_flags(args)


def train(args: list[str]):
  """train() under these gin flags; (final params, last train loss, seconds)."""
  from t5lite.training import train as train_lib
  parse_gin(args)
  t0 = time.perf_counter()
  with contextlib.redirect_stdout(sys.stderr):
    state = train_lib.train()
  model_dir = next(a.split("=", 1)[1].strip("'") for a in args if a.startswith("--gin.MODEL_DIR"))
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    last = [json.loads(line) for line in f if '"split": "train"' in line][-1]
  return state.params, last["loss"], time.perf_counter() - t0


def held_out(params) -> tuple[float, float, int]:
  """(loss, accuracy, target tokens) per target token over one pass of EVAL_TASK's validation
  split, under the gin config parsed now (the model and the token cache)."""
  import jax
  import jax.numpy as jnp
  from t5lite.data.feed import indexed, streams
  from t5lite.data.sources.sources import Sources
  from t5lite.model import losses
  from t5lite.model.config import Config
  from t5lite.model.network import EncoderDecoder
  from t5lite.runtime import partitioning
  streams.ensure_cache(EVAL_TASK)
  stream = indexed.IndexedStream(EVAL_TASK, LENGTHS, BATCH, streams.cache_dir(Sources()),
                                 split="validation", shuffle=False, num_epochs=1)
  mesh = partitioning.make_mesh()
  fn = jax.jit(functools.partial(losses.eval_sums, model=EncoderDecoder(Config()), z_loss=0.0))
  totals = None
  with partitioning.activate(mesh):
    for b in range(stream.num_batches):
      sums = fn(params, partitioning.host_to_global(stream.batch(b), mesh))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = {k: float(v) for k, v in jax.device_get(totals).items()}
  return (totals["loss"] / totals["weight_sum"], totals["accuracy"] / totals["weight_sum"],
          int(totals["weight_sum"]))


def prune(reference: str, vocab: str, train_pattern: str, out: str, how: str) -> dict:
  """`t5lite corpus prune` in this process; its summary."""
  import gin
  from t5lite import main
  from t5lite.corpus import prune as prune_lib
  gin.clear_config()
  with contextlib.redirect_stdout(sys.stderr):
    assert main.main(["corpus", "prune", "--input", train_pattern, "--output", out,
                      "--model_dir", reference, "--vocabulary", vocab, "--keep", "0.5",
                      "--select", how, "--seed", "0",
                      f"--inputs_length={REFERENCE_LENGTHS['inputs']}",
                      f"--targets_length={REFERENCE_LENGTHS['targets']}",
                      f"--batch_size={BATCH}"]) == 0
  return prune_lib.load_summary(out)


def describe_scores(out: str, texts: dict) -> None:
  """What the scores pick: the lowest and highest documents, and loss against length."""
  with gzip.open(os.path.join(out, "scores.jsonl.gz"), "rt") as f:
    rows = [json.loads(line) for line in f]
  loss = np.array([r["loss"] for r in rows])
  chars = np.array([len(texts[(r["file"], r["line"])][0]) for r in rows])
  rank = lambda x: np.argsort(np.argsort(x))  # noqa: E731
  rho = np.corrcoef(rank(loss), rank(chars))[0, 1]
  order = np.argsort(loss)
  name = lambda i: texts[(rows[i]["file"], rows[i]["line"])][1].rsplit("/", 1)[-1]  # noqa: E731
  print(f"\nreference prefix-LM loss per token over the {len(rows)} train documents: min "
        f"{loss.min():.3f}, median {np.median(loss):.3f}, max {loss.max():.3f}; Spearman "
        f"correlation with the document's length in characters: {rho:+.2f}")
  print("lowest: " + ", ".join(f"{name(i)} {loss[i]:.2f}" for i in order[:4]))
  print("highest: " + ", ".join(f"{name(i)} {loss[i]:.2f}" for i in order[::-1][:4]))


def summarize(results: dict, seeds: list[int]) -> None:
  """Mean held-out loss per train data, and its differences from all and from random paired by
  seed (over the seeds both have), then the seed-to-seed spread of the same data."""
  print("\n| train data | held-out loss, mean over seeds | minus all (paired) | minus random "
        "(paired) | seeds |")
  print("|---|---|---|---|---|")
  names = list(dict.fromkeys(k for k, _ in results))
  seeds_of = {h: [s for k, s in results if k == h] for h in names}
  def paired(h, base):
    shared = [s for s in seeds_of[h] if s in seeds_of[base]]
    return np.mean([results[(h, s)] - results[(base, s)] for s in shared])
  for h in names:
    mean = np.mean([results[(h, s)] for s in seeds_of[h]])
    print(f"| {h} | {mean:.4f} | {paired(h, 'all'):+.4f} | {paired(h, 'random'):+.4f} | "
          f"{', '.join(map(str, seeds_of[h]))} |")
  if len(seeds) > 1:
    spread = [abs(results[(h, seeds[0])] - results[(h, seeds[1])])
              for h in ("all", "random", "middle")]
    print(f"\nseed-to-seed difference of the same data (seeds {seeds[0]} and {seeds[1]}): "
          f"{', '.join(f'{x:.4f}' for x in spread)} (all, random, middle)")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--reference_steps", type=int, default=200)
  p.add_argument("--seeds", default="0,1")
  p.add_argument("--extra_selections", default="low,high")
  p.add_argument("--extra_seeds", default="0")
  args = p.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  extra = [s for s in args.extra_selections.split(",") if s]
  extra_seeds = [int(s) for s in args.extra_seeds.split(",")]
  from t5lite.data.sources import demo_corpus
  assets = demo_corpus.demo_assets()
  started = time.perf_counter()
  print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; load average {os.getloadavg()[0]:.1f} at the start")
  texts = {}
  import glob
  for path in sorted(glob.glob(assets.train_pattern)):
    with gzip.open(path, "rt") as f:
      for n, line in enumerate(f, 1):
        r = json.loads(line)
        texts[(os.path.abspath(path), n)] = (r["text"], r["url"])

  with tempfile.TemporaryDirectory(prefix="bench_prune_") as tmp:
    cache = os.path.join(tmp, "tokens")
    reference = os.path.join(tmp, "reference")
    _, ref_loss, ref_s = train(gin_args(reference, args.reference_steps, "demo_prefix_lm", cache,
                                        assets.vocab_path, {}, 0, REFERENCE_LENGTHS))
    print(f"\nreference: {args.reference_steps} steps of demo_prefix_lm "
          f"({REFERENCE_LENGTHS['inputs']} / {REFERENCE_LENGTHS['targets']}, batch {BATCH}, "
          f"seed 0): last train loss {ref_loss:.3f}, {ref_s:.0f} s")

    corpora = {"all": assets.train_pattern}
    summaries = {}
    print("\n| kept (keep 0.5) | documents | characters | mean reference loss of the kept | "
          "loss thresholds | prune s |")
    print("|---|---|---|---|---|---|")
    for how in ["middle", "random"] + extra:
      out = os.path.join(tmp, f"pruned_{how}")
      s = summaries[how] = prune(reference, assets.vocab_path, assets.train_pattern, out, how)
      with gzip.open(os.path.join(out, "scores.jsonl.gz"), "rt") as f:
        chars = sum(len(texts[(r["file"], r["line"])][0]) for r in map(json.loads, f)
                    if r["kept"])
      lower, upper = s["thresholds"]["lower"], s["thresholds"]["upper"]
      bounds = ("none" if lower is None and upper is None else f"<= {upper:.3f}" if lower is None
                else f">= {lower:.3f}" if upper is None else f"{lower:.3f} to {upper:.3f}")
      print(f"| {how} | {s['kept']} of {s['documents']} | {chars:,} of "
            f"{sum(len(v[0]) for v in texts.values()):,} | {s['kept_loss']['mean']:.3f} "
            f"(all: {s['loss']['mean']:.3f}) | {bounds} | "
            f"{sum(s['seconds'].values()):.1f} |", flush=True)
      corpora[how] = os.path.join(out, "c4-train.*.json.gz")
    describe_scores(os.path.join(tmp, "pruned_middle"), texts)

    sources = {f"prune_{k}": {"train": v, "validation": assets.validation_pattern}
               for k, v in corpora.items()}
    runs = [(how, seed) for how in ("all", "random", "middle") for seed in seeds]
    runs += [(how, seed) for how in extra for seed in extra_seeds]
    print(f"\n## Tiny T5 1.1 span corruption, {args.steps} steps, batch {BATCH}, "
          f"{LENGTHS['inputs']} / {LENGTHS['targets']}; held-out loss on the demo validation "
          "split\n")
    print("| train data | seed | last train loss | held-out loss | held-out accuracy | "
          "held-out target tokens | seconds |")
    print("|---|---|---|---|---|---|---|")
    results = {}
    for how, seed in runs:
      model_dir = os.path.join(tmp, f"model_{how}_{seed}")
      params, last, seconds = train(gin_args(model_dir, args.steps, f"prune_{how}_span_corruption",
                                             cache, assets.vocab_path, sources, seed, LENGTHS))
      loss, acc, tokens = held_out(params)
      results[(how, seed)] = loss
      print(f"| {how} | {seed} | {last:.4f} | {loss:.4f} | {acc:.4f} | {tokens} | "
            f"{seconds:.0f} |", flush=True)

    summarize(results, seeds)
  print(f"\nwhole benchmark: {(time.perf_counter() - started) / 60:.1f} min; load average "
        f"{os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
  main()
