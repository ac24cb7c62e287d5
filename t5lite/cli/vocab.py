"""`t5lite vocab`: train a SentencePiece vocabulary with T5's conventions (data/vocab.py).

  t5lite vocab --input PATTERN [--input ...] --output PATH --vocab_size N
"""
from __future__ import annotations

import argparse
from typing import Sequence

from t5lite.data.vocab import sentencepiece as vocab


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(
      prog="t5lite vocab",
      description="Train a T5-style SentencePiece vocabulary (pad 0, eos 1, unk 2, no BOS) from "
                  "JSON-lines shards (key `text`, .gz allowed) or plain text files.")
  parser.add_argument("--input", action="append", required=True,
                      help="file pattern (local or gs://); repeat for several")
  parser.add_argument("--output", required=True, help="where to write the .model file")
  parser.add_argument("--vocab_size", type=int, default=32000)
  parser.add_argument("--model_type", default="unigram", choices=["unigram", "bpe"])
  parser.add_argument("--character_coverage", type=float, default=0.9995)
  parser.add_argument("--input_sentence_size", type=int, default=10_000_000,
                      help="train on a random sample of this many lines (0: all)")
  parser.add_argument("--num_threads", type=int, default=1)
  args = parser.parse_args(argv)
  path = vocab.train_vocabulary(args.input, args.output, vocab_size=args.vocab_size,
                                model_type=args.model_type,
                                character_coverage=args.character_coverage,
                                input_sentence_size=args.input_sentence_size,
                                num_threads=args.num_threads)
  print(f"wrote {path} ({args.vocab_size} pieces)")
  return 0
