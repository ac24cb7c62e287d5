"""`t5lite inspect`: a task's or mixture's examples as text, and statistics of its objective.

  t5lite inspect demo_span_corruption --num_examples 2 --stats_examples 200
  t5lite inspect c4_json_ul2 --gin_file=runs/ul2_demo.gin --json

Statistics over unpacked examples (lengths count EOS):
  noise density      fraction of the original tokens that only the targets hold:
                     sentinel objectives (span corruption, UL2 R/X, iid): non-sentinel target
                     tokens / (non-sentinel inputs + those); prefix LM: suffix / (prefix + suffix);
                     BART: clean tokens missing from the inputs (each <mask> stands for its span) /
                     clean tokens; BERT-style: changed positions / tokens; deshuffling: undefined.
  spans              sentinels (or <mask>s) in the inputs; mean span length = noise tokens / spans.
  packing efficiency fraction of non-padding positions in the pipeline's packed batches.

`check_lengths(name, task_feature_lengths)` is the targets-length check, for train() too.
"""
from __future__ import annotations

import argparse
import functools
import inspect
import json
import sys
from typing import Any, Mapping, Optional, Sequence

import numpy as np

DEFAULT_TARGETS_LENGTH = 114
SENTINEL_OBJECTIVES = ("span_corruption", "ul2_denoiser", "iid_denoising")
PREFIX_OBJECTIVES = ("prefix_lm", "ul2_prefix_lm")
PACK_BATCH_SIZE = 8


# ---------------------------------------------------------------------------------------------
# Objectives of tasks, and the length check
# ---------------------------------------------------------------------------------------------
def leaf_tasks(name: str) -> list[tuple[Any, float]]:
  """(seqio.Task, normalised rate) of a task (rate 1) or of a mixture's tasks."""
  import seqio  # pylint: disable=g-import-not-at-top
  from t5lite.data import get_task_or_mixture  # pylint: disable=g-import-not-at-top
  provider = get_task_or_mixture(name)
  if isinstance(provider, seqio.Task):
    return [(provider, 1.0)]
  tasks = sorted(provider.tasks, key=lambda t: t.name)
  total = sum(provider.get_rate(t) for t in tasks)
  return [(t, provider.get_rate(t) / total) for t in tasks]


def task_objective(task) -> tuple[Optional[str], dict]:
  """(objective name from objectives.OBJECTIVE_NAMES, its keyword arguments with defaults) of a
  task's preprocessors; (None, {}) when no preprocessor is a known objective."""
  from t5lite.data.objectives import OBJECTIVE_NAMES  # pylint: disable=g-import-not-at-top
  for fn in task.preprocessors:
    keywords = {}
    while isinstance(fn, functools.partial):
      keywords = {**fn.keywords, **keywords}
      fn = fn.func
    if getattr(fn, "__name__", None) in OBJECTIVE_NAMES:
      defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items()
                  if p.default is not inspect.Parameter.empty}
      return fn.__name__, {**defaults, **keywords}
  return None, {}


def _prefix_length(task, kwargs: Mapping[str, Any]) -> int:
  """Ids of a UL2 mode token ("[NLU]" ...) prepended to the inputs; 0 for other objectives."""
  mode = kwargs.get("mode")
  if not mode:
    return 0
  return len(task.output_features["inputs"].vocabulary.encode(mode))


def required_targets_length(task, inputs_length: int) -> Optional[int]:
  """The targets length (with EOS) a task's objective needs; None for an unknown objective."""
  from t5lite.data import objectives  # pylint: disable=g-import-not-at-top
  objective, kwargs = task_objective(task)
  if objective is None:
    return None
  noise = {k: v for k, v in kwargs.items() if k in ("noise_density", "mean_noise_span_length")}
  return objectives.required_targets_length(objective, inputs_length,
                                            _prefix_length(task, kwargs), **noise)


def check_lengths(name: str, task_feature_lengths: Mapping[str, int]) -> Optional[int]:
  """The targets length task or mixture `name` needs at task_feature_lengths['inputs'] (the
  largest over a mixture's tasks; None if no task has a known objective). A ValueError naming
  each task that doesn't fit if task_feature_lengths['targets'] is shorter."""
  inputs_length = int(task_feature_lengths["inputs"])
  targets_length = task_feature_lengths.get("targets")
  needs = {task.name: required_targets_length(task, inputs_length)
           for task, _ in leaf_tasks(name)}
  known = [n for n in needs.values() if n is not None]
  if not known:
    return None
  need = max(known)
  if targets_length is not None and targets_length < need:
    short = ", ".join(f"{task} needs {n}" for task, n in needs.items()
                      if n is not None and n > targets_length)
    raise ValueError(
        f"{name!r}: targets length {targets_length} is too short for inputs {inputs_length} "
        f"({short}); use TASK_FEATURE_LENGTHS = {{'inputs': {inputs_length}, 'targets': {need}}} "
        f"(or shorter inputs)")
  return need


# ---------------------------------------------------------------------------------------------
# Examples and statistics
# ---------------------------------------------------------------------------------------------
class _TaskInfo:
  """What the statistics need to know of one task: its objective and its special ids."""

  def __init__(self, task):
    self.name = task.name
    self.objective, kwargs = task_objective(task)
    self.vocab = task.output_features["targets"].vocabulary
    self.prefix = _prefix_length(task, kwargs)
    self.eos = self.vocab.eos_id
    self.is_bart = bool(self.objective and self.objective.startswith("bart_"))
    self.mask_id = getattr(self.vocab, "mask_id", self.vocab.vocab_size - 1)
    self.sentinel_min = self.vocab.vocab_size - max(self.vocab.extra_ids, 0)

  def strip(self, ids: np.ndarray) -> np.ndarray:
    ids = ids[ids != 0]
    return ids[:-1] if len(ids) and ids[-1] == self.eos else ids

  def decode(self, ids: np.ndarray) -> str:
    text = self.vocab.decode([int(i) for i in self.strip(ids)])
    if self.is_bart and self.vocab.extra_ids:  # SentencePiece BART: <mask> is <extra_id_0>
      text = text.replace("<extra_id_0>", "<mask>")
    return text

  def noise(self, inputs: np.ndarray, targets: np.ndarray) -> tuple[Optional[int], int, Optional[int]]:
    """(noise tokens, original tokens, spans) of one example; None where undefined."""
    inputs, targets = self.strip(inputs)[self.prefix:], self.strip(targets)
    obj = self.objective
    if obj in SENTINEL_OBJECTIVES:
      noise = int(np.sum(targets < self.sentinel_min))
      return noise, noise + int(np.sum(inputs < self.sentinel_min)), int(
          np.sum(inputs >= self.sentinel_min))
    if obj in PREFIX_OBJECTIVES:
      return len(targets), len(inputs) + len(targets), 1
    if self.is_bart:
      masks = int(np.sum(inputs == self.mask_id))
      noise = max(len(targets) - (len(inputs) - masks), 0)
      return noise, len(targets), masks if masks else None
    if obj == "bert_style_denoising":
      n = min(len(inputs), len(targets))
      changed = int(np.sum(inputs[:n] != targets[:n]))
      return changed, len(targets), changed
    return None, len(targets), None


def _examples(name: str, lengths: Mapping[str, int], split: str, seed: int, count: int):
  """Yields (_TaskInfo, example) of `count` unpacked examples, sampled as the mixture samples."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tasks = leaf_tasks(name)
  infos = [_TaskInfo(task) for task, _ in tasks]
  datasets = []
  for i, (task, _) in enumerate(tasks):
    ds = task.get_dataset(dict(lengths), split=split, shuffle=True, seed=seed, num_epochs=None)
    datasets.append(ds.map(lambda x, i=i: {"inputs": x["inputs"], "targets": x["targets"],
                                           "task": tf.constant(i)}))
  if len(datasets) == 1:
    ds = datasets[0]
  else:
    ds = tf.data.Dataset.sample_from_datasets(datasets, [rate for _, rate in tasks], seed=seed)
  for ex in ds.take(count).as_numpy_iterator():
    yield infos[int(ex["task"])], ex


def _summary(rows: Sequence[dict]) -> dict:
  def length(key):
    values = [r[key] for r in rows]
    return {"mean": float(np.mean(values)), "max": int(np.max(values))} if values else None
  defined = [r for r in rows if r["noise"] is not None]
  noise = sum(r["noise"] for r in defined)
  original = sum(r["original"] for r in defined)
  with_spans = [r for r in defined if r["spans"] is not None]
  spans = sum(r["spans"] for r in with_spans)
  return {
      "num_examples": len(rows),
      "inputs_length": length("inputs_length"),
      "targets_length": length("targets_length"),
      "noise_density": noise / original if original else None,
      "spans_per_example": spans / len(with_spans) if with_spans else None,
      "mean_span_length": (sum(r["noise"] for r in with_spans) / spans) if spans else None,
  }


def packing_efficiency(name: str, lengths: Mapping[str, int], split: str, seed: int,
                       num_examples: int) -> dict:
  """Non-padding fraction of the pipeline's packed batches holding about num_examples examples."""
  from t5lite.data import pipeline  # pylint: disable=g-import-not-at-top
  ds = pipeline.get_dataset(name, lengths, PACK_BATCH_SIZE, split=split, shuffle=True, seed=seed,
                            pack=True)
  filled = {"inputs": [], "targets": []}
  examples = rows = 0
  for batch in ds.as_numpy_iterator():
    enc, dec = batch["encoder_segment_ids"], batch["decoder_segment_ids"]
    filled["inputs"].append(np.mean(enc > 0))
    filled["targets"].append(np.mean(dec > 0))
    examples += int(np.sum(np.max(enc, axis=1)))  # segment ids run 1..k in each row
    rows += enc.shape[0]
    if examples >= num_examples:
      break
  return {"inputs": float(np.mean(filled["inputs"])), "targets": float(np.mean(filled["targets"])),
          "examples_per_row": examples / rows, "rows": rows}


def describe(name: str, task_feature_lengths: Mapping[str, int], num_examples: int = 3,
            stats_examples: int = 200, split: str = "train", seed: int = 0) -> dict:
  """Examples as text and statistics (see the module docstring) of a registered task or mixture."""
  lengths = dict(task_feature_lengths)
  need = check_lengths(name, lengths)
  shown, rows = [], []
  for info, ex in _examples(name, lengths, split, seed, max(num_examples, stats_examples)):
    inputs, targets = ex["inputs"], ex["targets"]
    noise, original, spans = info.noise(inputs, targets)
    row = {"task": info.name, "inputs_length": len(inputs), "targets_length": len(targets),
           "noise": noise, "original": original, "spans": spans}
    if len(shown) < num_examples:
      shown.append({"task": info.name, "objective": info.objective,
                    "inputs_length": len(inputs), "targets_length": len(targets),
                    "inputs": info.decode(inputs), "targets": info.decode(targets)})
    if len(rows) < stats_examples:
      rows.append(row)
  tasks = leaf_tasks(name)
  result = {"name": name, "kind": "task" if len(tasks) == 1 and tasks[0][0].name == name
                                  else "mixture",
            "objectives": sorted({str(task_objective(t)[0]) for t, _ in tasks}),
            "split": split, "seed": seed, "task_feature_lengths": lengths,
            "required_targets_length": need, "examples": shown}
  if stats_examples:
    stats = _summary(rows)
    stats["packing_efficiency"] = packing_efficiency(name, lengths, split, seed, stats_examples)
    if len(tasks) > 1:
      stats["by_task"] = {t.name: {"rate": rate, **_summary([r for r in rows
                                                              if r["task"] == t.name])}
                          for t, rate in tasks}
    result["stats"] = stats
  return result


# ---------------------------------------------------------------------------------------------
# Printing and the command line
# ---------------------------------------------------------------------------------------------
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


def cli(argv: Sequence[str]) -> int:
  """`t5lite inspect TASK_OR_MIXTURE [options]` (argv after `inspect`)."""
  from t5lite import main  # pylint: disable=g-import-not-at-top
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
  main.add_gin_flags(parser)
  rest, bindings = main.split_gin_overrides(argv)
  args = parser.parse_args(rest)
  main.parse_gin(args, bindings)
  import t5lite.data  # pylint: disable=g-import-not-at-top
  t5lite.data.register_all()
  name = args.name or _gin_macro("MIXTURE_OR_TASK_NAME")
  if not name:
    parser.error("give a task or mixture name (or a gin file that sets MIXTURE_OR_TASK_NAME)")
  try:
    t5lite.data.get_task_or_mixture(name)  # an unknown name lists the registered ones
  except ValueError as e:
    print(f"t5lite inspect: {e}", file=sys.stderr)
    return 2
  bound = _gin_macro("TASK_FEATURE_LENGTHS") or {}
  inputs_length = args.inputs_length or bound.get("inputs") or 512
  targets_length = args.targets_length or (bound.get("targets") if not args.inputs_length else None)
  try:
    if targets_length is None:
      targets_length = check_lengths(name, {"inputs": inputs_length}) or DEFAULT_TARGETS_LENGTH
    result = describe(name, {"inputs": inputs_length, "targets": targets_length},
                     args.num_examples, args.stats_examples, args.split, args.seed)
  except ValueError as e:
    print(f"t5lite inspect: {e}", file=sys.stderr)
    return 2
  print(json.dumps(result, indent=1) if args.json else format_text(result))
  return 0


def _gin_macro(name: str):
  import gin  # pylint: disable=g-import-not-at-top
  try:
    value = gin.query_parameter(f"%{name}")
  except ValueError:
    return None
  return None if value is gin.REQUIRED else value
