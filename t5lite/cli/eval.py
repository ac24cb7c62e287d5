"""`t5lite eval`: loss, accuracy and the task's seqio metrics of a run's checkpoints.

  t5lite eval --model_dir DIR [--task NAME] [--all_checkpoints | --step N] [--watch]

Loss and accuracy are train()'s eval (packed validation batches). Tasks with metric_fns (the user's
fine-tuning tasks: exact match, BLEU, ROUGE) are also evaluated on decoded predictions: the first
--num_examples validation examples are greedy-decoded, postprocessed by the task and compared with
the target text. Results go to MODEL_DIR/tb/eval_<task>/ (TensorBoard) and MODEL_DIR/eval.jsonl.
--watch keeps evaluating new checkpoints as a training run writes them (t5x's separate evaluator).
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Sequence

import jax

from t5lite.store import checkpoints
from t5lite.serving import evaluation
from t5lite.serving import run as run_lib
from t5lite import gin_files
from t5lite.cli import common


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(
      prog="t5lite eval",
      description="Loss, accuracy and the task's metrics (decoded predictions) of a run's "
                  "checkpoint(s) on the validation split; written to MODEL_DIR/tb/eval_<task> "
                  "and MODEL_DIR/eval.jsonl.")
  common.add_run_flags(parser)
  parser.add_argument("--task", default=None, help="task or mixture (default: the run's)")
  parser.add_argument("--all_checkpoints", action="store_true", help="every saved step")
  parser.add_argument("--watch", action="store_true",
                      help="keep evaluating new checkpoints until train.train_steps is reached")
  parser.add_argument("--poll_seconds", type=float, default=60.0)
  parser.add_argument("--inputs_length", type=int, default=None,
                      help="default: the run's task_feature_lengths")
  parser.add_argument("--targets_length", type=int, default=None)
  parser.add_argument("--eval_steps", type=int, default=10, help="validation batches for loss")
  parser.add_argument("--num_examples", type=int, default=64,
                      help="validation examples decoded for the task's metrics")
  args = common.parse_args(parser, argv)
  run = common.load_run(args)
  task_name = args.task or run_lib.task_name()
  if not task_name:
    raise ValueError("no task: pass --task NAME (the run's gin names none)")
  lengths = dict(gin_files.query("DataConfig.task_feature_lengths") or {})
  for key, value in (("inputs", args.inputs_length), ("targets", args.targets_length)):
    if value:
      lengths[key] = value
  if set(lengths) != {"inputs", "targets"}:
    raise ValueError("feature lengths unknown: pass --inputs_length and --targets_length")
  done: set[int] = set()
  final = gin_files.query("train.train_steps")

  def pending() -> list[int]:
    steps = run.run_dir.checkpoint_steps()
    if args.step is not None:
      steps = [args.step]
    elif not (args.all_checkpoints or args.watch):
      steps = steps[-1:]
    return [s for s in steps if s not in done]

  while True:
    for step in pending():
      if step != run.step:
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), run.params)
        run.params = checkpoints.restore_params(run.run_dir.checkpoints, abstract, step)
        run.step = step
      values = evaluation.evaluate_run(run, task_name, lengths, args.batch_size, args.eval_steps,
                                       args.num_examples)
      evaluation.write_results(run.run_dir, task_name, step, values)
      print(json.dumps({"step": step, "task": task_name, **values}), flush=True)
      done.add(step)
    if not args.watch or (isinstance(final, int) and final in done):
      return 0
    time.sleep(args.poll_seconds)
