"""DSIR data selection (`t5lite select`) on the real C4 sample, with the embedded Python docs as
the target: throughput, KL reduction against random selection, and an end-to-end check.

  .venv/bin/python benchmarks/bench_selection.py [--repeats 3] [--steps 300] [--skip_e2e]

Target: the Python docs' train shards 0-2; shard 3 and the validation shard stay held out.
1. KL reduction (report.json) of DSIR vs a random selection of the same size: 300 of the 760
   eligible C4 documents, seeds 0-2, chunk_words 128 (the default) and 0 (the package's
   whole-document weights), with the mean words of the picks.
2. Throughput, one process (one core): documents/s of featurize + log weight over the 1000 C4
   documents for t5lite's crc32 hash, its sha256 mode (the package's exact features) and the
   data-selection package's own get_ngram_counts + dot; the stages of `t5lite select` on the
   sample; all stages on 16 copies of it (16 shards) with 1 and 2 worker processes.
3. End to end: a tiny T5 1.1 pretrained for --steps steps on the 300 DSIR-selected documents and on
   the 300 random ones (span corruption, demo vocabulary, same seed and settings), then each one's
   eval loss on the held-out Python docs.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from t5lite.data.sources import demo_corpus  # noqa: E402
from t5lite.datamix import dsir_features as nf  # noqa: E402
from t5lite.datamix import dsir as selection  # noqa: E402
from t5lite.datamix import dsir_io as sio  # noqa: E402

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE = str(DATA / "c4" / "olmo_c4-sample.00000-of-00001.json.gz")
NUM_DOCS = 300
LENGTHS = {"inputs": 128, "targets": 32}
BATCH = 32


def _quiet(_):
  pass


def featurize_rate(texts, score, repeats: int) -> tuple[float, float]:
  """Best (documents per wall second, documents per CPU second) of score(text) over the texts;
  the CPU rate is the one-core throughput even when other jobs share the cores."""
  wall = cpu = 0.0
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    for text in texts:
      score(text)
    wall = max(wall, len(texts) / (time.perf_counter() - t0))
    cpu = max(cpu, len(texts) / (time.process_time() - c0))
  return wall, cpu


def throughput(texts, ratio, repeats: int) -> None:
  from data_selection.hashed_ngram_dsir import get_ngram_counts
  print("\n## Throughput, one process\n")
  print("| featurize + log weight | documents/s (wall) | documents per CPU-second | "
        "MB of text per CPU-second |")
  print("|---|---|---|---|")
  mb = sum(len(t.encode()) for t in texts) / 1e6 / len(texts)
  for name, f in (("t5lite crc32 (default)", nf.Featurizer()),
                  ("t5lite sha256 (package-exact)", nf.Featurizer(hash="sha256"))):
    wall, cpu = featurize_rate(texts, lambda t, f=f: ratio[f.buckets(f.words(t))].sum(), repeats)
    print(f"| {name} | {wall:.0f} | {cpu:.0f} | {cpu * mb:.2f} |")
  wall, cpu = featurize_rate(
      texts, lambda t: np.dot(ratio, get_ngram_counts(t, n=2, num_buckets=10000)), repeats)
  print(f"| data-selection 1.0.3 (get_ngram_counts + dot) | {wall:.0f} | {cpu:.0f} | "
        f"{cpu * mb:.2f} |")


def stage_times(raw, target, out, workers: int, repeats: int) -> dict[str, float]:
  """Best seconds of each stage of a fresh `t5lite select` run (one worker: all inline)."""
  best = {}
  for _ in range(repeats):
    shutil.rmtree(out, ignore_errors=True)
    plan = selection.make_plan([raw], [target], out, NUM_DOCS, workers=workers)
    for stage in ("fit", "score", "write", "report"):
      t0 = time.perf_counter()
      selection.select(plan, stage=stage, log=_quiet)
      best[stage] = min(best.get(stage, 1e9), time.perf_counter() - t0)
  return best


def _children_cpu() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # of finished (joined) children
  return usage.ru_utime + usage.ru_stime


def pool_start(workers: int) -> tuple[float, float]:
  """(wall s, CPU s) to start and stop `workers` spawned processes (each re-imports this script,
  so t5lite.data and TensorFlow)."""
  t0, c0 = time.perf_counter(), _children_cpu()
  pool = selection._Workers(workers)  # pylint: disable=protected-access
  pool.run(os.getpid, [()] * workers)
  pool.close()
  return time.perf_counter() - t0, _children_cpu() - c0


def pipeline(target: str, tmp: str, repeats: int) -> None:
  print("\n## `t5lite select` stages, one process (best of runs; fit includes the target and "
        "the bucket examples)\n")
  print("| raw | fit s | score s | write s | report s | score docs/s |")
  print("|---|---|---|---|---|---|")
  t = stage_times(SAMPLE, target, os.path.join(tmp, "one"), 1, repeats)
  print(f"| C4 sample, 1 shard, 1000 docs | {t['fit']:.2f} | {t['score']:.2f} | "
        f"{t['write']:.2f} | {t['report']:.2f} | {1000 / t['score']:.0f} |")
  copies = os.path.join(tmp, "copies")
  os.makedirs(copies)
  n = 16
  for i in range(n):
    shutil.copy(SAMPLE, os.path.join(copies, f"c4.{i:05d}-of-{n:05d}.json.gz"))
  print(f"\n## All stages (fit, score, write, report) on {n} copies of the sample ({n} shards, "
        f"{n * 1000} documents)\n")
  print("| workers | wall s | of which starting the workers s | documents/s (wall) | "
        "documents per CPU-second (workers' start excluded) |")
  print("|---|---|---|---|---|")
  for workers in (1, 2):
    start_wall, start_cpu = pool_start(workers) if workers > 1 else (0.0, 0.0)
    plan = selection.make_plan([os.path.join(copies, "*.json.gz")], [target],
                               os.path.join(tmp, f"copies_{workers}"), NUM_DOCS, workers=workers)
    t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
    selection.select(plan, log=_quiet)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0 + _children_cpu() - k0 - start_cpu
    print(f"| {workers} | {wall:.1f} | {start_wall:.1f} | {n * 1000 / wall:.0f} | "
          f"{n * 1000 / cpu:.0f} |")


def kl_table(target: str, out: str) -> None:
  print("\n## KL reduction on hashed n-grams (300 of 760 eligible C4 documents)\n")
  print("| chunk_words | seed | KL(t‖raw) | KL(t‖DSIR) | KL(t‖random) | reduction DSIR | "
        "reduction random | DSIR vs random | words DSIR | words random |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for chunk in (128, 0):
    for seed in (0, 1, 2):
      plan = selection.make_plan([SAMPLE], [target], out, NUM_DOCS, seed=seed, chunk_words=chunk,
                                 write_random=True)
      r = selection.select(plan, log=_quiet)
      kl, w = r["kl"], r["words"]
      print(f"| {chunk} | {seed} | {kl['target_to_raw']:.4f} | {kl['target_to_dsir']:.4f} | "
            f"{kl['target_to_random']:.4f} | {kl['reduction_dsir']:.4f} | "
            f"{kl['reduction_random']:.4f} | {kl['dsir_vs_random']:.4f} | "
            f"{w['dsir_mean']:.0f} | {w['random_mean']:.0f} |")
  plan = selection.make_plan([SAMPLE], [target], out, NUM_DOCS, write_random=True)
  report = selection.select(plan, log=_quiet)  # the e2e selection: defaults, seed 0
  score = selection.load_scores(plan)[0]
  eligible = score["n_words"] >= plan.min_words
  corr = np.corrcoef(score["log_weight"][eligible], score["n_words"][eligible])[0, 1]
  print(f"\ntarget: {report['target']['texts']} texts, {report['target']['ngrams']} n-grams; "
        f"correlation of the whole-document log weight with the word count over the eligible "
        f"documents: {corr:.3f}")
  print(f"\nthe end-to-end check's selection (chunk_words 128, seed 0): "
        f"{report['selected']['dsir']} DSIR + as many random documents; top features (by "
        "contribution to the DSIR picks' log weights):")
  for row in report["top_features"]["by_contribution"][:8]:
    print(f"  bucket {row['bucket']}: log ratio {row['log_ratio']:+.2f}, n-grams {row['ngrams']}")


def target_and_held_out() -> tuple[str, list[str]]:
  """The Python docs: train shards 0-2 are the target; shard 3 and the validation shard are held
  out (never seen by the selection) for the end-to-end eval."""
  assets = demo_corpus.demo_assets()
  root = os.path.dirname(assets.train_pattern)
  n = demo_corpus.NUM_TRAIN_SHARDS
  target = os.path.join(root, f"c4-train.0000[0-{n - 2}]-of-{n:05d}.json.gz")
  return target, [os.path.join(root, f"c4-train.{n - 1:05d}-of-{n:05d}.json.gz"),
                  assets.validation_pattern]


def validation_batches(validation: list[str], vocab: str) -> int:
  """Packed batches in one pass over the validation shard (train()'s eval repeats the split)."""
  from t5lite.data.feed import tfdata as pipeline
  from t5lite.data.tasks import registry as tasks
  from t5lite.data.sources.sources import Sources
  tasks.register_all(Sources(vocabulary_path=vocab, c4_json_files=validation,
                       c4_json_validation_files=validation))
  ds = pipeline.get_dataset(tasks.C4_JSON, LENGTHS, BATCH, split="validation", shuffle=False,
                            num_epochs=1)
  return sum(1 for _ in ds.as_numpy_iterator())


def train_and_eval(name: str, files: str, validation: list[str], vocab: str, steps: int,
                   eval_steps: int, model_dir: str) -> float:
  """Pretrains a tiny T5 1.1 on `files`; returns its eval loss on `validation`."""
  import gin
  from t5lite.runtime import partitioning
  from t5lite.training import train
  from t5lite.cli import common
  gin.clear_config()
  args = [
      "--gin_file=models/t5_1_1/tiny.gin", "--gin_file=runs/pretrain.gin",
      f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}",
      "--gin.MIXTURE_OR_TASK_NAME='c4_json_span_corruption'",
      f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", f"--gin.BATCH_SIZE={BATCH}",
      f"--gin.C4_JSON_FILES='{files}'",
      f"--gin.C4_JSON_VALIDATION_FILES={validation!r}",
      f"--gin.VOCABULARY_PATH='{vocab}'", "--gin.Config.vocab_size=3200",
      "--gin.Config.dtype='float32'", "--gin.make_optimizer.name='adamw'",
      "--gin.make_optimizer.grad_clip=1.0", "--gin.learning_rate_schedule.name='cosine'",
      "--gin.learning_rate_schedule.peak=3e-3", "--gin.learning_rate_schedule.warmup_steps=50",
      f"--gin.learning_rate_schedule.total_steps={steps}",
      "--gin.learning_rate_schedule.end=1e-4", f"--gin.EvalConfig.period={steps}",
      f"--gin.EvalConfig.steps={eval_steps}", "--gin.LoopConfig.log_period=50",
      "--gin.EvalConfig.predict_examples=0",
      "--gin.Checkpointer.save_period=100000", "--gin.Checkpointer.async_save=False",
  ]
  common.parse_gin_flags(args)
  t0 = time.perf_counter()
  train.train(mesh=partitioning.make_mesh((1, 1)))
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  evals = [r for r in rows if r["split"] == "eval"]
  last_train = [r for r in rows if r["split"] == "train"][-1]
  print(f"| {name} | {steps} | {last_train['loss']:.4f} | {evals[-1]['loss']:.4f} | "
        f"{evals[-1]['accuracy']:.4f} | {time.perf_counter() - t0:.0f} |", flush=True)
  return evals[-1]["loss"]


def end_to_end(out: str, steps: int, tmp: str) -> None:
  assets = demo_corpus.demo_assets()
  _, held_out = target_and_held_out()
  eval_steps = validation_batches(held_out, assets.vocab_path)
  print(f"\n## End to end: tiny T5 1.1, {steps} steps, batch {BATCH}, {LENGTHS}, demo vocabulary; "
        f"eval on held-out Python docs (train shard 3 + validation; one pass: {eval_steps} packed "
        "batches)\n")
  print("| train data | steps | last train loss | eval loss (held-out Python docs) | "
        "eval accuracy | seconds |")
  print("|---|---|---|---|---|---|")
  losses = {}
  for name, files in (("300 DSIR-selected C4 docs", os.path.join(out, "selected.*.json.gz")),
                      ("300 random C4 docs", os.path.join(out, "random", "selected.*.json.gz"))):
    losses[name] = train_and_eval(name, files, held_out, assets.vocab_path,
                                  steps, eval_steps, os.path.join(tmp, name.split()[1]))
  (dsir, rand) = losses.values()
  print(f"\nDSIR minus random eval loss: {dsir - rand:+.4f} "
        f"({'DSIR lower' if dsir < rand else 'DSIR NOT lower'})")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--skip_e2e", action="store_true")
  args = p.parse_args()
  import importlib.metadata as md
  print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, numpy {np.__version__}, "
        f"data-selection {md.version('data-selection')}, nltk {md.version('nltk')}; "
        f"load average {os.getloadavg()[0]:.1f} at the start")
  target, _ = target_and_held_out()
  texts = [sio.parse_document(line)[0] for line in sio.read_lines(SAMPLE)]
  with tempfile.TemporaryDirectory(prefix="bench_selection_") as tmp:
    out = os.path.join(tmp, "kl")
    kl_table(target, out)
    plan = selection.make_plan([SAMPLE], [target], out, NUM_DOCS)
    ratio = selection.load_model(plan)["log_ratio"]
    throughput(texts, ratio, args.repeats)
    pipeline(target, tmp, max(1, args.repeats // 2))
    if not args.skip_e2e:
      end_to_end(out, args.steps, tmp)


if __name__ == "__main__":
  main()
