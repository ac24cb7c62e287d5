"""`t5lite score` and `t5lite infer`: a run folder on JSON lines, JSON lines out.

  t5lite score --model_dir DIR --input FILE.jsonl [--output FILE]     {"inputs", "targets"} lines
  t5lite infer --model_dir DIR --input FILE.jsonl [--output FILE] [--decoder greedy|beam|sample]

The run's vocabulary is, in order: --vocabulary, the folder's own spiece.model (or BART's
vocab.json + merges.txt), the vocabulary of the task it trained on.
"""
from __future__ import annotations

import argparse
import sys
from typing import Iterable, Optional, Sequence

from t5lite import files, gin_files
from t5lite.serving import inference
from t5lite.cli import common


def write_jsonl(rows: Iterable[dict], path: Optional[str]) -> None:
  """To `path`, or stdout when None; only process 0 writes."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    return
  text = files.jsonl_text(rows)
  if path is None:
    sys.stdout.write(text)
    sys.stdout.flush()
    return
  files.write_text(path, text)


def _parse(prog: str, description: str, argv: Sequence[str], add_flags):
  parser = argparse.ArgumentParser(prog=prog, description=description)
  common.add_run_flags(parser)
  parser.add_argument("--input", required=True, help="JSON lines file")
  parser.add_argument("--output", default=None, help="JSON lines file (default: stdout)")
  parser.add_argument("--inputs_length", type=int, default=None,
                      help="trim inputs to this many tokens, EOS included (default: no trim)")
  add_flags(parser)
  return common.parse_args(parser, argv)


def score_main(argv: Sequence[str]) -> int:
  def flags(parser):
    parser.add_argument("--targets_length", type=int, default=None,
                        help="trim targets to this many tokens, EOS included (default: no trim)")
  args = _parse(
      "t5lite score", "Log-likelihood of each line's targets given its inputs (JSON lines "
      '{"inputs": ..., "targets": ...}); writes log_likelihood and token_log_likelihoods.',
      argv, flags)
  examples = files.read_jsonl(args.input, ("inputs", "targets"))
  run = common.load_run(args)
  write_jsonl(inference.score(run, examples, args.batch_size, args.inputs_length,
                              args.targets_length), args.output)
  return 0


def infer_main(argv: Sequence[str]) -> int:
  def flags(parser):
    parser.add_argument("--decoder", default="greedy", choices=inference.DECODERS)
    parser.add_argument("--max_decode_length", type=int, default=None,
                        help="default: the run's targets length, else 128")
    parser.add_argument("--beam_size", type=int, default=4)
    parser.add_argument("--length_penalty", type=float, default=0.6, help="beam search alpha")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling; 0 = argmax")
    parser.add_argument("--top_k", type=int, default=0, help="sampling; 0 = all")
    parser.add_argument("--top_p", type=float, default=1.0, help="sampling (nucleus)")
    parser.add_argument("--seed", type=int, default=0, help="sampling")
  args = _parse(
      "t5lite infer", 'Decode a prediction for each JSON line {"inputs": ...}; writes the line '
      'with "prediction" added.', argv, flags)
  examples = files.read_jsonl(args.input, ("inputs",))
  run = common.load_run(args)
  max_len = args.max_decode_length or (gin_files.query("DataConfig.task_feature_lengths") or {}).get(
      "targets", 128)
  rows = inference.infer(run, examples, max_len, args.inputs_length, decoder=args.decoder,
                         batch_size=args.batch_size, beam_size=args.beam_size,
                         length_penalty=args.length_penalty, temperature=args.temperature,
                         top_k=args.top_k, top_p=args.top_p, seed=args.seed)
  write_jsonl(rows, args.output)
  return 0
