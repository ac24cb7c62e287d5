"""`t5lite inspect`: a task's or mixture's examples as text, and statistics of its objective.

  t5lite inspect demo_span_corruption --num_examples 2 --stats_examples 200
  t5lite inspect c4_json_ul2 --gin_file=runs/ul2_demo.gin --json

What the statistics mean: t5lite/data/statistics.py.
"""
from __future__ import annotations

import argparse
import json
from typing import Sequence

from t5lite import gin_files
from t5lite.cli import common

DEFAULT_TARGETS_LENGTH = 114


def _fmt(value, spec: str = ".3f") -> str:
  return "n/a" if value is None else format(value, spec)


def format_text(result: dict) -> str:
  lengths = result["task_feature_lengths"]
  lines = [f"{result['name']} ({result['kind']}; {', '.join(result['objectives'])}), split "
           f"{result['split']}, seed {result['seed']}, lengths inputs {lengths['inputs']} / "
           f"targets {lengths['targets']} (objective needs targets "
           f"{_fmt(result['required_targets_length'], 'd')})"]
  for i, ex in enumerate(result["examples"]):
    lines += [f"\n--- example {i + 1} ({ex['task']}) ---",
              f" inputs ({ex['inputs_length']} tokens): {ex['inputs']}",
              f"targets ({ex['targets_length']} tokens): {ex['targets']}"]
  stats = result.get("stats")
  if stats:
    pack = stats["packing_efficiency"]
    lines += [f"\nstatistics over {stats['num_examples']} examples (lengths with EOS):"]
    lines += _format_summary(stats, "  ")
    lines += [f"  packing efficiency  inputs {pack['inputs']:.3f}  targets {pack['targets']:.3f}"
              f"  ({pack['examples_per_row']:.2f} examples per row, {pack['rows']} rows)"]
    for task, sub in stats.get("by_task", {}).items():
      lines += [f"  {task} (rate {sub['rate']:.3f}):"] + _format_summary(sub, "    ")
  return "\n".join(lines)


def _format_summary(s: dict, indent: str) -> list[str]:
  if not s["num_examples"]:
    return [f"{indent}no examples"]
  return [
      f"{indent}examples {s['num_examples']}; inputs length mean {s['inputs_length']['mean']:.1f} "
      f"max {s['inputs_length']['max']}; targets length mean {s['targets_length']['mean']:.1f} "
      f"max {s['targets_length']['max']}",
      f"{indent}noise density {_fmt(s['noise_density'])}; spans per example "
      f"{_fmt(s['spans_per_example'], '.2f')}; mean span length "
      f"{_fmt(s['mean_span_length'], '.2f')}"]


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(
      prog="t5lite inspect",
      description="Print examples of a task or mixture as text (sentinels and masks visible) "
                  "and statistics: lengths, noise density, spans, packing efficiency.")
  parser.add_argument("name", nargs="?", default=None,
                      help="task or mixture (default: the gin files' MIXTURE_OR_TASK_NAME)")
  parser.add_argument("--num_examples", type=int, default=3, help="examples to print")
  parser.add_argument("--stats_examples", type=int, default=200,
                      help="examples the statistics use (0: none)")
  parser.add_argument("--inputs_length", type=int, default=None,
                      help="default: the gin files' TASK_FEATURE_LENGTHS, else 512")
  parser.add_argument("--targets_length", type=int, default=None,
                      help="default: the gin files' TASK_FEATURE_LENGTHS, else the length the "
                           f"objective needs (else {DEFAULT_TARGETS_LENGTH})")
  parser.add_argument("--split", default="train")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  common.add_gin_flags(parser)
  args = common.parse_args(parser, argv)
  common.parse_gin(args)
  from t5lite.data import statistics  # pylint: disable=g-import-not-at-top
  from t5lite.data.tasks import registry as tasks  # pylint: disable=g-import-not-at-top
  tasks.register_all()
  name = args.name or gin_files.query("%MIXTURE_OR_TASK_NAME")
  if not name:
    parser.error("give a task or mixture name (or a gin file that sets MIXTURE_OR_TASK_NAME)")
  tasks.get_task_or_mixture(name)  # an unknown name lists the registered ones
  bound = gin_files.query("%TASK_FEATURE_LENGTHS") or {}
  inputs_length = args.inputs_length or bound.get("inputs") or 512
  targets_length = args.targets_length or (bound.get("targets") if not args.inputs_length else None)
  if targets_length is None:
    targets_length = tasks.check_lengths(name, {"inputs": inputs_length}) or DEFAULT_TARGETS_LENGTH
  result = statistics.describe(name, {"inputs": inputs_length, "targets": targets_length},
                               args.num_examples, args.stats_examples, args.split, args.seed)
  print(json.dumps(result, indent=1) if args.json else format_text(result))
  return 0
