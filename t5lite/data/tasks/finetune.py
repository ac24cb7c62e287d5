"""Fine-tuning tasks from the user's own files: JSON lines or TSV of input/target pairs.

Registered from gin with no Python (gin_configs/runs/finetune.gin):

  train.mixture_or_task_name = @register_user_task()   # registers the task, returns its name
  register_user_task.name = 'my_task'
  register_user_task.train_files = '/data/train.jsonl'          # patterns or lists; gs:// works
  register_user_task.validation_files = '/data/validation.jsonl'
  register_user_task.format = 'jsonl'                            # or 'tsv' (input<TAB>target)
  register_user_task.metrics = ['exact_match', 'bleu', 'rouge']

JSONL lines are {"inputs": ..., "targets": ...} (other keys ignored; rename with inputs_key /
targets_key). Both features are tokenized with the vocabulary and get EOS, as in t5. Metrics
compare the decoded prediction with the target text; BLEU needs `sacrebleu`, ROUGE needs
`rouge-score` (a clear ImportError names the missing package when the task is registered).
"""
from __future__ import annotations

from typing import Callable, Sequence, Union

import gin
import numpy as np
import seqio
import tensorflow as tf

from t5lite import files
from t5lite.data.sources.sources import Sources
from t5lite.data.vocab.seqio_vocab import SentencePieceVocabulary

FORMATS = ("jsonl", "tsv")
Patterns = Union[str, Sequence[str]]


# ----------------------------------------------------------------------------- metrics


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Percentage of predictions equal to their target (after stripping outer whitespace)."""
  hits = [t.strip() == p.strip() for t, p in zip(targets, predictions)]
  return {"exact_match": 100.0 * float(np.mean(hits)) if hits else 0.0}


def bleu(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Corpus BLEU with t5's sacrebleu settings (intl tokenizer, exp smoothing)."""
  sacrebleu = _require("bleu")
  score = sacrebleu.corpus_bleu(list(predictions), [list(targets)], smooth_method="exp",
                                lowercase=False, tokenize="intl", use_effective_order=False)
  return {"bleu": float(score.score)}


def rouge(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Mean ROUGE-1/2/Lsum F-measure x 100 (rouge-score, as t5 without bootstrapping)."""
  rouge_scorer = _require("rouge")
  types = ("rouge1", "rouge2", "rougeLsum")
  scorer = rouge_scorer.RougeScorer(list(types))
  scores = [scorer.score(t, p) for t, p in zip(targets, predictions)]
  return {k: 100.0 * float(np.mean([s[k].fmeasure for s in scores])) for k in types}


METRICS: dict[str, Callable] = {"exact_match": exact_match, "bleu": bleu, "rouge": rouge}
# metric -> (module to import, pip package)
_PACKAGES = {"bleu": ("sacrebleu", "sacrebleu"),
             "rouge": ("rouge_score.rouge_scorer", "rouge-score")}


def _require(metric: str):
  import importlib  # pylint: disable=g-import-not-at-top
  module, pip = _PACKAGES[metric]
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ImportError(f"metric {metric!r} needs the {pip!r} package, which is not installed: "
                      f"pip install {pip}") from e


def metric_fns(names: Sequence[str]) -> list[Callable]:
  """The metric functions for `names`; unknown names or missing packages raise now."""
  names = [names] if isinstance(names, str) else list(names)
  for name in names:
    if name not in METRICS:
      raise ValueError(f"unknown metric {name!r}; expected some of {sorted(METRICS)}")
    if name in _PACKAGES:
      _require(name)
  return [METRICS[name] for name in names]


# ----------------------------------------------------------------------------- sources


def _pairs(path: str, format: str, inputs_key: str, targets_key: str):  # pylint: disable=redefined-builtin
  """(inputs, targets) UTF-8 pairs of one JSONL or TSV file; a bad line is a ValueError naming
  file:line and what was expected (the user's own data: better to stop than to train on less)."""
  if format == "jsonl":
    for _, row in files.iter_jsonl(path, (inputs_key, targets_key)):
      yield str(row[inputs_key]).encode("utf-8"), str(row[targets_key]).encode("utf-8")
    return
  for n, raw in enumerate(files.open_lines(path), 1):
    try:
      line = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
      raise ValueError(f"{path}:{n}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not line.strip():
      continue
    if "\t" not in line:
      raise ValueError(f"{path}:{n}: no tab; expected 'input<TAB>target'")
    inputs, targets = line.split("\t", 1)
    yield inputs.encode("utf-8"), targets.encode("utf-8")


def _reader(format: str, inputs_key: str, targets_key: str):  # pylint: disable=redefined-builtin
  def read(path):
    pairs = tf.data.Dataset.from_generator(
        lambda p: _pairs(p.decode("utf-8"), format, inputs_key, targets_key), args=(path,),
        output_signature=(tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.string)))
    return pairs.map(lambda i, t: {"inputs": i, "targets": t})
  return read


def user_source(train_files: Patterns, validation_files: Patterns | None = None,
                format: str = "jsonl",  # pylint: disable=redefined-builtin
                inputs_key: str = "inputs", targets_key: str = "targets") -> seqio.FileDataSource:
  """A seqio source with "train" (and "validation") splits of {"inputs", "targets"} strings."""
  if format not in FORMATS:
    raise ValueError(f"register_user_task.format={format!r}; expected one of {FORMATS}")
  splits = {"train": train_files}
  if validation_files:
    splits["validation"] = validation_files
  for split, patterns in splits.items():
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
      if not files.glob(str(pattern)):
        raise FileNotFoundError(f"no file matches {pattern!r} (register_user_task {split} files)")
  return seqio.FileDataSource(read_file_fn=_reader(format, inputs_key, targets_key),
                              split_to_filepattern=splits)


@gin.configurable
def register_user_task(name: str = gin.REQUIRED, train_files: Patterns = gin.REQUIRED,
                       validation_files: Patterns | None = None,
                       format: str = "jsonl",  # pylint: disable=redefined-builtin
                       metrics: Sequence[str] = ("exact_match",),
                       vocabulary_path: str | None = None, extra_ids: int = 100,
                       inputs_key: str = "inputs", targets_key: str = "targets") -> str:
  """(Re-)registers the seqio Task `name` over the user's files; returns `name`.

  Preprocessing: tokenize both features (the text stays as *_pretokenized for the metrics),
  then EOS after trimming, as t5's fine-tuning tasks do.
  """
  missing = [k for k, v in (("name", name), ("train_files", train_files)) if v is gin.REQUIRED]
  if missing:
    raise ValueError(f"register_user_task needs {', '.join(missing)}: bind "
                     f"register_user_task.{missing[0]} in gin")
  vocabulary = SentencePieceVocabulary(str(vocabulary_path or Sources().vocabulary_path),
                                       extra_ids=extra_ids)
  features = {"inputs": seqio.Feature(vocabulary, add_eos=True),
              "targets": seqio.Feature(vocabulary, add_eos=True)}
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=user_source(train_files, validation_files, format, inputs_key, targets_key),
      output_features=features,
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      metric_fns=metric_fns(metrics))
  return name
