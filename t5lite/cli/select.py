"""`t5lite select`: DSIR data selection (t5lite/data/selection.py) from the command line.

  t5lite select --raw 'gs://allenai-c4/en/c4-train.*.json.gz' --target my_domain.jsonl \\
      --num_docs 5000000 --output gs://bucket/c4_selected/
  t5lite train ... --gin.C4_JSON_FILES="'gs://bucket/c4_selected/*.json.gz'"
"""
from __future__ import annotations

import argparse
import json
import os

from t5lite.datamix import dsir_features as nf
from t5lite.datamix import dsir as selection


def _shard(value: str) -> tuple[int, int]:
  i, sep, n = value.partition("/")
  if not sep or not i.isdigit() or not n.isdigit() or not 0 <= int(i) < int(n):
    raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {value!r}")
  return int(i), int(n)


def _fit_ngrams(value: str) -> int | str:
  if value in ("auto", "all"):
    return value
  if not value.isdigit() or int(value) < 1:
    raise argparse.ArgumentTypeError(f"expected auto, all or a positive count, got {value!r}")
  return int(value)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="t5lite select", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--raw", action="append", required=True,
                 help="raw allenai/c4-style JSON-lines shards, a pattern (local or gs://, .gz or "
                      "not; repeatable)")
  p.add_argument("--target", action="append", required=True,
                 help="target text: a .jsonl (text, or inputs + targets) / .tsv (input<TAB>target) "
                      "/ plain-text pattern, or task:NAME[:SPLIT] (repeatable)")
  p.add_argument("--num_docs", type=int, required=True, help="documents to select")
  p.add_argument("--output", required=True, help="output folder (local or gs://)")
  p.add_argument("--seed", type=int, default=0,
                 help="seed of the Gumbel noise (and of the random baseline)")
  p.add_argument("--min_words", type=int, default=100,
                 help="shorter documents are never selected (the data-selection package's default)")
  p.add_argument("--chunk_words", type=int, default=128,
                 help="sample by the log weight of a chunk this many words long (log w x N / "
                      "words), as the paper's 128-word chunks; 0 = whole-document log w (as the "
                      "package)")
  p.add_argument("--num_buckets", type=int, default=10000, help="hashed n-gram buckets")
  p.add_argument("--ngrams", type=int, default=2, help="n-gram order (2: unigrams + bigrams)")
  p.add_argument("--hash", choices=nf.HASHES, default="crc32",
                 help="n-gram hash; sha256 reproduces the data-selection package exactly (slower)")
  p.add_argument("--fit_ngrams", type=_fit_ngrams, default="auto",
                 help="raw n-grams to fit the raw model on, spread over the shards; auto = 100k "
                      "per bucket (the package's), all = every raw n-gram")
  p.add_argument("--text_key", default="text", help="JSON key of a raw document's text")
  p.add_argument("--greedy", action="store_true",
                 help="take the num_docs largest weights instead of sampling (no diversity)")
  p.add_argument("--write_random", action="store_true",
                 help="also write the same-size random selection under OUTPUT/random/ (an A/B "
                      "baseline)")
  p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                 help="worker processes (one raw shard at a time each)")
  p.add_argument("--shard", type=_shard, default=(0, 1),
                 help="I/N: this host processes the raw shards s with s %% N == I")
  p.add_argument("--stage", choices=selection.STAGES + ("all",), default="all",
                 help="run one stage only (multi-host: fit, score, write in rounds on every host)")
  p.add_argument("--wait_s", type=float, default=0.0,
                 help="how long to wait for other hosts' files before failing")
  return p


def main(argv: list[str]) -> int:
  args = parser().parse_args(argv)
  featurizer = nf.Featurizer(num_buckets=args.num_buckets, ngrams=args.ngrams, hash=args.hash)
  plan = selection.make_plan(
      args.raw, args.target, args.output, args.num_docs, fit_ngrams=args.fit_ngrams,
      featurizer=featurizer, text_key=args.text_key, seed=args.seed, min_words=args.min_words,
      chunk_words=args.chunk_words,
      greedy=args.greedy, write_random=args.write_random, shard=args.shard, workers=args.workers)
  report = selection.select(plan, stage=args.stage, wait_s=args.wait_s,
                            log=lambda msg: print(f"t5lite select: {msg}", flush=True))
  if report is not None:
    raw, kl = report["raw"], report["kl"]
    print(f"selected {report['selected']['dsir']} of {raw['eligible']} eligible documents "
          f"({raw['lines']} lines in {raw['files']} files; {raw['bad_json'] + raw['no_text']} "
          f"without text, {len(raw['corrupt_files'])} corrupt files) -> "
          f"{report['selected']['shards']}")
    print("KL(target || ·): raw {target_to_raw:.4f}, DSIR {target_to_dsir:.4f}, random "
          "{target_to_random:.4f}; KL reduction DSIR {reduction_dsir:.4f} vs random "
          "{reduction_random:.4f}".format(**kl))
    top = report["top_features"]["by_contribution"][:5]
    print("top features: " + json.dumps([r["ngrams"][:2] for r in top]))
  return 0
