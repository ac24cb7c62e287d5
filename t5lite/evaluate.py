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
import functools
import json
import os
import time
from typing import Mapping, Sequence

import jax
import numpy as np

from t5lite import checkpoints, partitioning
from t5lite import infer as infer_lib


def _validation_examples(task, feature_lengths: Mapping[str, int], num_examples: int) -> list:
  ds = task.get_dataset(dict(feature_lengths), split="validation", shuffle=False, num_epochs=1)
  return list(ds.take(num_examples).as_numpy_iterator())


def _text(example: dict, key: str, vocabulary) -> str:
  raw = example.get(f"{key}_pretokenized")
  if raw is not None:
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
  return infer_lib.detokenize(vocabulary, example[key])


def task_metrics(run: infer_lib.Run, task, feature_lengths: Mapping[str, int],
                 num_examples: int = 64, batch_size: int = 32) -> dict[str, float]:
  """The task's predict (greedy decoding) and score metric_fns on its first validation examples."""
  if not (task.predict_metric_fns or task.score_metric_fns):
    return {}
  examples = _validation_examples(task, feature_lengths, num_examples)
  if not examples:
    return {}
  vocab = task.output_features["targets"].vocabulary
  postprocess = task.postprocess_fn or (lambda x, **_: x)
  targets = [postprocess(_text(ex, "targets", vocab), example=ex, is_target=True)
             for ex in examples]
  inputs = [[int(t) for t in ex["inputs"]] for ex in examples]
  results = {}
  if task.predict_metric_fns:
    tokens, _ = infer_lib.decode_tokens(run, inputs, feature_lengths["targets"],
                                        batch_size=batch_size)
    predictions = [postprocess(infer_lib.detokenize(vocab, ids), example=ex, is_target=False)
                   for ids, ex in zip(tokens, examples)]
    for fn in task.predict_metric_fns:
      results.update(fn(targets, predictions))
  if task.score_metric_fns:
    scores = infer_lib.score_tokens(run, inputs, [[int(t) for t in ex["targets"]]
                                                  for ex in examples], batch_size)
    for fn in task.score_metric_fns:
      results.update(fn(targets, [float(np.sum(s)) for s in scores]))
  return {k: float(v) for k, v in results.items()}


def evaluate_run(run: infer_lib.Run, task_name: str, feature_lengths: Mapping[str, int],
                 batch_size: int = 32, eval_steps: int = 10, num_examples: int = 64,
                 z_loss: float = 1e-4) -> dict[str, float]:
  """Loss/accuracy on `eval_steps` packed validation batches, then each (sub)task's metrics."""
  from t5lite import train  # pylint: disable=g-import-not-at-top
  from t5lite.data import get_task_or_mixture  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top
  provider = get_task_or_mixture(task_name)
  batch_size = infer_lib._batch_size(batch_size, run.mesh)  # pylint: disable=protected-access
  with partitioning.activate(run.mesh):
    eval_fn = jax.jit(functools.partial(train.eval_step, model=run.model, z_loss=z_loss))
    values = train.evaluate(eval_fn, run.params, task_name, feature_lengths, batch_size,
                            eval_steps, run.mesh, None)
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  for task in tasks:
    metrics = task_metrics(run, task, feature_lengths, num_examples, batch_size)
    prefix = f"{task.name}/" if len(tasks) > 1 else ""
    values.update({prefix + k: v for k, v in metrics.items()})
  return values


def write_results(model_dir: str, task_name: str, step: int, values: Mapping[str, float]) -> None:
  """TensorBoard scalars under MODEL_DIR/tb/eval_<task> and a line of MODEL_DIR/eval.jsonl."""
  if jax.process_index() != 0:
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  writer = tf.summary.create_file_writer(os.path.join(model_dir, "tb", f"eval_{task_name}"))
  with writer.as_default(step=step):
    for k, v in values.items():
      tf.summary.scalar(k, v)
  writer.flush()
  writer.close()
  with tf.io.gfile.GFile(os.path.join(model_dir, "eval.jsonl"), "a") as f:
    f.write(json.dumps({"step": step, "task": task_name, **values}) + "\n")


def cli(argv: Sequence[str]) -> int:
  from t5lite import main  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog="t5lite eval",
      description="Loss, accuracy and the task's metrics (decoded predictions) of a run's "
                  "checkpoint(s) on the validation split; written to MODEL_DIR/tb/eval_<task> "
                  "and MODEL_DIR/eval.jsonl.")
  infer_lib.add_run_flags(parser)
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
  rest, bindings = main.split_gin_overrides(argv)
  args = parser.parse_args(rest)
  run = infer_lib.load_run_from_args(args, bindings)
  task_name = args.task or infer_lib.run_task_name()
  if not task_name:
    raise ValueError("no task: pass --task NAME (the run's gin names none)")
  lengths = dict(infer_lib.gin_value("train.task_feature_lengths") or {})
  for key, value in (("inputs", args.inputs_length), ("targets", args.targets_length)):
    if value:
      lengths[key] = value
  if set(lengths) != {"inputs", "targets"}:
    raise ValueError("feature lengths unknown: pass --inputs_length and --targets_length")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  folder, _ = checkpoints.resolve(args.model_dir)
  done: set[int] = set()
  final = infer_lib.gin_value("train.train_steps")

  def pending() -> list[int]:
    steps = sorted(int(n.strip("/")) for n in tf.io.gfile.listdir(folder) if n.strip("/").isdigit())
    if args.step is not None:
      steps = [args.step]
    elif not (args.all_checkpoints or args.watch):
      steps = steps[-1:]
    return [s for s in steps if s not in done]

  while True:
    for step in pending():
      if step != run.step:
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                               sharding=x.sharding), run.params)
        run.params = checkpoints.restore_params(folder, abstract, step)
        run.step = step
      values = evaluate_run(run, task_name, lengths, args.batch_size, args.eval_steps,
                            args.num_examples)
      write_results(args.model_dir, task_name, step, values)
      print(json.dumps({"step": step, "task": task_name, **values}), flush=True)
      done.add(step)
    if not args.watch or (isinstance(final, int) and final in done):
      return 0
    time.sleep(args.poll_seconds)

