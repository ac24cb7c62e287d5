"""`t5lite cache TASK_OR_MIXTURE --output DIR`: tokenize a task's source once into a token cache.

  t5lite cache c4_json_span_corruption --output gs://bucket/cache \
      --gin.C4_JSON_FILES="'gs://allenai-c4/en/c4-train.*.json.gz'" --gin_file=runs/pretrain.gin
  t5lite cache c4_json_ul2 --output /data/cache --workers 8 --shard 3/16   # host 3 of 16

Training reads the cache when gin DATA_CACHE_DIR names the --output folder.
"""
from __future__ import annotations

import argparse
import logging
import re

from t5lite.cli import common


def _shard(text: str) -> tuple[int, int]:
  if text == "auto":
    from t5lite.runtime import devices  # pylint: disable=g-import-not-at-top
    return devices.host_and_count()
  m = re.fullmatch(r"(\d+)/(\d+)", text)
  if not m or not int(m.group(1)) < int(m.group(2)):
    raise argparse.ArgumentTypeError(f"--shard {text!r}: expected I/N with 0 <= I < N (e.g. 0/4) "
                                     "or auto")
  return int(m.group(1)), int(m.group(2))


def main(argv: list[str]) -> int:
  from t5lite.data.cache import format as cache_lib  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog="t5lite cache",
      description="Tokenize the source of a task or mixture once (ArrayRecord blocks of token "
                  "ids); every objective and length on that source and vocabulary reads it.")
  parser.add_argument("name", help="registered task or mixture")
  parser.add_argument("--output", required=True, help="cache root (local or gs://): DATA_CACHE_DIR")
  parser.add_argument("--split", action="append", default=None,
                      help="split to cache (repeatable); default: train and validation if present")
  parser.add_argument("--workers", type=int, default=1, help="worker processes (one input file each)")
  parser.add_argument("--shard", type=_shard, default=(0, 1),
                      help="I/N: build input files k with k %% N == I (one host of N); auto: this "
                           "host's number and count (TPU VM, SLURM, T5LITE_PROCESS_ID)")
  parser.add_argument("--block_tokens", type=int, default=cache_lib.DEFAULT_BLOCK_TOKENS,
                      help="token ids per ArrayRecord record")
  common.add_gin_flags(parser)
  args = common.parse_args(parser, argv)
  common.parse_gin(args)
  from t5lite.data.cache import build as cache_build  # pylint: disable=g-import-not-at-top
  from t5lite.data.tasks import registry as tasks  # pylint: disable=g-import-not-at-top
  tasks.register_all()
  logging.basicConfig(level=logging.WARNING, format="%(message)s")
  if args.workers < 1:
    raise ValueError(f"--workers {args.workers}: expected at least 1")
  results = cache_build.build(args.name, args.output, splits=args.split, workers=args.workers,
                              shard=args.shard, block_tokens=args.block_tokens)
  for name, metadata in results.items():
    status = "incomplete (other files or hosts pending)" if metadata is None else (
        f"{metadata.tokens} tokens, {len(metadata.bad_files)} bad files")
    print(f"{name}: {status}")
  return 0
