"""Evaluating parameters: loss and accuracy on validation batches, and a task's seqio metrics on
decoded predictions (exact match, BLEU, ROUGE, ...). Used by train() and `t5lite eval`.
"""
from __future__ import annotations

import functools
import json
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from t5lite import files
from t5lite.serving import inference
from t5lite.model import losses
from t5lite.runtime import partitioning
from t5lite.data.vocab.sentencepiece import detokenize
from t5lite.serving.run import Run
from t5lite.store.run_dir import RunDir
from t5lite.store.tensorboard import EventWriter


def loss_and_accuracy(eval_fn, params, name: str, task_feature_lengths: Mapping[str, int],
                      batch_size: int, eval_steps: int, mesh) -> dict[str, float]:
  """Loss, accuracy and z-loss per target token over the first `eval_steps` packed global
  batches of the validation split (the token cache's or tf.data's, as data/streams.py chooses);
  {} when it has none. eval_fn(params, batch) -> losses.eval_sums."""
  from t5lite.data.feed import streams  # pylint: disable=g-import-not-at-top
  totals = None
  for batch in streams.validation_batches(name, task_feature_lengths, batch_size, eval_steps,
                                          jax.process_index(), jax.process_count()):
    sums = eval_fn(params, partitioning.host_to_global(batch, mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    return {}
  totals = {k: float(v) for k, v in jax.device_get(totals).items()}
  denom = max(totals["weight_sum"], 1.0)
  return {"loss": totals["loss"] / denom, "accuracy": totals["accuracy"] / denom,
          "z_loss": totals["z_loss"] / denom}


def _validation_examples(task, feature_lengths: Mapping[str, int], num_examples: int) -> list:
  ds = task.get_dataset(dict(feature_lengths), split="validation", shuffle=False, num_epochs=1)
  return list(ds.take(num_examples).as_numpy_iterator())


def _text(example: dict, key: str, vocabulary) -> str:
  raw = example.get(f"{key}_pretokenized")
  if raw is not None:
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
  return detokenize(vocabulary, example[key])


def task_metrics(run: Run, task, feature_lengths: Mapping[str, int],
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
    tokens, _ = inference.decode_tokens(run, inputs, feature_lengths["targets"],
                                        batch_size=batch_size)
    predictions = [postprocess(detokenize(vocab, ids), example=ex, is_target=False)
                   for ids, ex in zip(tokens, examples)]
    for fn in task.predict_metric_fns:
      results.update(fn(targets, predictions))
  if task.score_metric_fns:
    scores = inference.score_tokens(run, inputs, [[int(t) for t in ex["targets"]]
                                                  for ex in examples], batch_size)
    for fn in task.score_metric_fns:
      results.update(fn(targets, [float(np.sum(s)) for s in scores]))
  return {k: float(v) for k, v in results.items()}


def decoded_metrics(task, model, params, step: int, vocab, mesh, feature_lengths, model_dir,
                    num_examples: int = 64) -> dict[str, float]:
  """task_metrics of a training run's current parameters; {} for tasks without metric_fns
  (pretraining) and on multi-process runs (use `t5lite eval --watch` there)."""
  if not getattr(task, "metric_fns", None) or jax.process_count() > 1:
    return {}
  run = Run(run_dir=RunDir(model_dir), config=model.config, model=model, params=params,
            step=step, vocabulary=vocab, mesh=mesh)
  return task_metrics(run, task, feature_lengths, num_examples)


def evaluate_run(run: Run, task_name: str, feature_lengths: Mapping[str, int],
                 batch_size: int = 32, eval_steps: int = 10, num_examples: int = 64,
                 z_loss: float = 1e-4) -> dict[str, float]:
  """Loss/accuracy on `eval_steps` packed validation batches, then each (sub)task's metrics."""
  import seqio  # pylint: disable=g-import-not-at-top
  from t5lite.data.tasks.registry import get_task_or_mixture  # pylint: disable=g-import-not-at-top
  provider = get_task_or_mixture(task_name)
  batch_size = inference.batch_size_for(batch_size, run.mesh)
  with partitioning.activate(run.mesh):
    eval_fn = jax.jit(functools.partial(losses.eval_sums, model=run.model, z_loss=z_loss))
    values = loss_and_accuracy(eval_fn, run.params, task_name, feature_lengths, batch_size,
                               eval_steps, run.mesh)
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  for task in tasks:
    metrics = task_metrics(run, task, feature_lengths, num_examples, batch_size)
    prefix = f"{task.name}/" if len(tasks) > 1 else ""
    values.update({prefix + k: v for k, v in metrics.items()})
  return values


def write_results(run_dir: RunDir, task_name: str, step: int,
                  values: Mapping[str, float]) -> Optional[str]:
  """TensorBoard scalars under MODEL_DIR/tb/eval_<task> and a line of MODEL_DIR/eval.jsonl
  (process 0 only)."""
  if jax.process_index() != 0:
    return None
  writer = EventWriter(run_dir.tb(f"eval_{task_name}"))
  writer.scalars(step, values)
  writer.close()
  files.append_text(run_dir.eval_log, json.dumps({"step": step, "task": task_name, **values}) + "\n")
  return run_dir.eval_log
