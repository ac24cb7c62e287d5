"""Examples of a task or mixture as text, and statistics of its objective (`t5lite inspect`).

Statistics over unpacked examples (lengths count EOS):
  noise density      fraction of the original tokens that only the targets hold:
                     sentinel objectives (span corruption, UL2 R/X, iid): non-sentinel target
                     tokens / (non-sentinel inputs + those); prefix LM: suffix / (prefix + suffix);
                     BART: clean tokens missing from the inputs (each <mask> stands for its span) /
                     clean tokens; BERT-style: changed positions / tokens; deshuffling: undefined.
  spans              sentinels (or <mask>s) in the inputs; mean span length = noise tokens / spans.
  packing efficiency fraction of non-padding positions in the pipeline's packed batches.
"""
from __future__ import annotations

import itertools
from typing import Mapping, Optional, Sequence

import numpy as np

from t5lite.data.feed import tfdata as pipeline
from t5lite.data.sources import json_lines
from t5lite.data.tasks import registry as tasks_lib
from t5lite.data.vocab.sentencepiece import detokenize

PACK_BATCH_SIZE = 8


class _TaskInfo:
  """What the statistics need to know of one task: its objective and its special ids."""

  def __init__(self, task):
    self.name = task.name
    objective = tasks_lib.task_objective(task)
    self.objective = objective.name if objective else None
    self.family = objective.spec.family if objective else None  # registry.FAMILIES
    self.vocab = task.output_features["targets"].vocabulary
    self.prefix = len(objective.prefix_ids(self.vocab)) if objective else 0
    self.eos = self.vocab.eos_id
    self.is_bart = self.family == "bart"
    self.mask_id = getattr(self.vocab, "mask_id", self.vocab.vocab_size - 1)
    self.sentinel_min = self.vocab.vocab_size - max(self.vocab.extra_ids, 0)

  def strip(self, ids: np.ndarray) -> np.ndarray:
    ids = ids[ids != 0]
    return ids[:-1] if len(ids) and ids[-1] == self.eos else ids

  def decode(self, ids: np.ndarray) -> str:
    text = detokenize(self.vocab, ids)
    if self.is_bart and self.vocab.extra_ids:  # SentencePiece BART: <mask> is <extra_id_0>
      text = text.replace("<extra_id_0>", "<mask>")
    return text

  def noise(self, inputs: np.ndarray, targets: np.ndarray) -> tuple[Optional[int], int, Optional[int]]:
    """(noise tokens, original tokens, spans) of one example; None where undefined."""
    inputs, targets = self.strip(inputs)[self.prefix:], self.strip(targets)
    if self.family == "sentinel":
      noise = int(np.sum(targets < self.sentinel_min))
      return noise, noise + int(np.sum(inputs < self.sentinel_min)), int(
          np.sum(inputs >= self.sentinel_min))
    if self.family == "prefix":
      return len(targets), len(inputs) + len(targets), 1
    if self.is_bart:
      masks = int(np.sum(inputs == self.mask_id))
      noise = max(len(targets) - (len(inputs) - masks), 0)
      return noise, len(targets), masks if masks else None
    if self.family == "bert":
      n = min(len(inputs), len(targets))
      changed = int(np.sum(inputs[:n] != targets[:n]))
      return changed, len(targets), changed
    return None, len(targets), None


def _cached_stream(name: str, lengths: Mapping[str, int], split: str, seed: int):
  """The token cache's stream (data/streams.py) when DATA_CACHE_DIR is set; else None."""
  from t5lite.data.feed import indexed, streams  # pylint: disable=g-import-not-at-top
  from t5lite.data.sources import sources  # pylint: disable=g-import-not-at-top
  source = sources.Sources()
  if not source.cache_dir:
    return None
  streams.ensure_cache(name, source)
  return indexed.IndexedStream(name, lengths, PACK_BATCH_SIZE, streams.cache_dir(source),
                               split=split, seed=seed, shuffle=split == "train")


def _segments(batch: Mapping[str, np.ndarray], row: int):
  """The (inputs, targets) of each packed segment of one row, EOS included."""
  enc, dec = batch["encoder_segment_ids"][row], batch["decoder_segment_ids"][row]
  for segment in range(1, int(enc.max(initial=0)) + 1):
    yield (batch["encoder_input_tokens"][row][enc == segment],
           batch["decoder_target_tokens"][row][dec == segment])


def _examples(name: str, lengths: Mapping[str, int], split: str, seed: int, count: int):
  """Yields (_TaskInfo, example) of `count` unpacked examples, sampled as the mixture samples
  (from the token cache's stream when DATA_CACHE_DIR is set)."""
  stream = _cached_stream(name, lengths, split, seed)
  if stream is not None:
    infos = {task.name: _TaskInfo(task) for task, _ in tasks_lib.leaf_tasks(name)}
    b = 0
    while count > 0:
      batch = stream.batch(b)
      for row in range(stream.rows):
        where = stream.locate(b * stream.batch_size + row)
        for inputs, targets in _segments(batch, row):
          if count > 0:
            count -= 1
            yield infos[stream.tasks[where[0]].name], {"inputs": inputs, "targets": targets}
      b += 1
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tasks = tasks_lib.leaf_tasks(name)
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
  stream = _cached_stream(name, lengths, split, seed)
  if stream is not None:
    batches = (stream.batch(b) for b in itertools.count())
  else:
    batches = pipeline.get_dataset(name, lengths, PACK_BATCH_SIZE, split=split, shuffle=True,
                                   seed=seed, pack=True).as_numpy_iterator()
  filled = {"inputs": [], "targets": []}
  examples = rows = 0
  for batch in batches:
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
  need = tasks_lib.check_lengths(name, lengths)
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
  if not rows and not shown:
    skipped = dict(json_lines.skipped_records)
    raise ValueError(f"{name!r}: its {split} split yields no examples"
                     + (f" (records skipped: {skipped})" if skipped else ""))
  tasks = tasks_lib.leaf_tasks(name)
  result = {"name": name, "kind": "task" if len(tasks) == 1 and tasks[0][0].name == name
                                  else "mixture",
            "objectives": sorted({str(getattr(tasks_lib.task_objective(t), "name", None))
                                  for t, _ in tasks}),
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


