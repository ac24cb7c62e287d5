"""The seqio Tasks t5lite pretrains on: C4 span corruption from TFDS, JSON shards, or the demo."""
from __future__ import annotations

import collections.abc
import functools
from typing import Callable, Mapping, Optional, Sequence, Union

import gin
import seqio
import tensorflow as tf

from t5lite.data import demo_corpus
from t5lite.data import span_corruption as sc
from t5lite.data.sources import JsonLinesDataSource
from t5lite.data.vocab import T5_VOCAB_PATH
from t5lite.data.vocab import SentencePieceVocabulary

C4_TFDS = "c4_span_corruption"
C4_JSON = "c4_json_span_corruption"
DEMO = "demo_span_corruption"
TASK_NAMES = (C4_TFDS, C4_JSON, DEMO)

Patterns = Union[str, Sequence[str]]


class _LazyPatterns(collections.abc.Mapping):
  """split -> file pattern, computed on first read (the demo shards are built then)."""

  def __init__(self, fn: Callable[[], Mapping[str, Patterns]], splits: Sequence[str]):
    self._fn = fn
    self._splits = tuple(splits)

  def __getitem__(self, split):
    return self._fn()[split]

  def __iter__(self):
    return iter(self._splits)

  def __len__(self):
    return len(self._splits)

  def __repr__(self):
    return f"_LazyPatterns({self._fn.__name__})"


class DemoVocabulary(SentencePieceVocabulary):
  """The demo corpus's vocab; building the demo assets on first use."""

  def __init__(self, extra_ids: int = 100):
    super().__init__(demo_corpus._paths(demo_corpus.cache_dir()).vocab_path, extra_ids=extra_ids)

  def _model_context(self):
    if not self._model:
      demo_corpus.demo_assets()
    return super()._model_context()


def _demo_patterns() -> Mapping[str, str]:
  assets = demo_corpus.demo_assets()
  return {"train": assets.train_pattern, "validation": assets.validation_pattern}


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  """inputs (optional, as in t5) and targets, both with EOS."""
  return {
      "inputs": seqio.Feature(vocabulary, add_eos=True, required=False),
      "targets": seqio.Feature(vocabulary, add_eos=True),
  }


def tokenize_in_batches(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
                        copy_pretokenized: bool = True, batch_size: int = 64) -> tf.data.Dataset:
  """seqio.preprocessors.tokenize (with_eos=False), encoding batch_size texts per vocabulary call.

  Same ids, keys and order as seqio's per-example map. SentencePiece's TF op over 64 documents
  at once saves its per-call overhead (the C4 sample's 1000 documents: 0.29 -> 0.20 s); for
  vocabularies whose TF op is a Python call (GPT-2 BPE) it runs the `tokenizers` batch encoder.
  """

  def encode(batch):
    out = dict(batch)
    for key, feature in output_features.items():
      if key in batch and batch[key].dtype == tf.string:
        if copy_pretokenized:
          out[f"{key}_pretokenized"] = batch[key]
        out[key] = feature.vocabulary.encode_tf(batch[key])  # [batch, None] ragged
    return out

  return dataset.batch(batch_size).map(encode, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def span_corruption_preprocessors(**span_kwargs) -> list[Callable]:
  """REFERENCE.md's chain: rekey text->targets, tokenize, span_corruption, append_eos_after_trim
  (tokenizing in batches: the same examples as seqio.preprocessors.tokenize, faster)."""
  span = functools.partial(sc.span_corruption, **span_kwargs) if span_kwargs else sc.span_corruption
  return [
      functools.partial(seqio.preprocessors.rekey, key_map={"inputs": None, "targets": "text"}),
      tokenize_in_batches,
      span,
      seqio.preprocessors.append_eos_after_trim,
  ]


def add_task(name: str, source: seqio.DataSource, vocabulary: seqio.Vocabulary,
             preprocessors: Optional[Sequence[Callable]] = None) -> seqio.Task:
  """(Re-)registers one span-corruption task (removing any task of that name first)."""
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name, source=source, output_features=output_features(vocabulary),
      preprocessors=list(preprocessors or span_corruption_preprocessors()), metric_fns=[])


def json_source(train: Patterns, validation: Optional[Patterns] = None) -> JsonLinesDataSource:
  """allenai/c4-style JSON shards for "train" (and "validation" when given)."""
  splits = {"train": train}
  if validation is not None:
    splits["validation"] = validation
  return JsonLinesDataSource(splits)


@gin.configurable
def register_tasks(vocabulary_path: str = T5_VOCAB_PATH,
                   c4_json_files: Patterns = "gs://allenai-c4/en/c4-train.*-of-01024.json.gz",
                   c4_json_validation_files: Patterns = (
                       "gs://allenai-c4/en/c4-validation.*-of-00008.json.gz"),
                   tfds_version: str = "3.1.0", tfds_data_dir: Optional[str] = None) -> None:
  """(Re-)registers c4_span_corruption, c4_json_span_corruption and demo_span_corruption.

  Nothing is read here: vocabularies and files are opened on the first dataset read.
  """
  vocabulary = SentencePieceVocabulary(str(vocabulary_path), extra_ids=100)
  add_task(C4_TFDS, seqio.TfdsDataSource(f"c4/en:{tfds_version}", tfds_data_dir=tfds_data_dir),
           vocabulary)
  add_task(C4_JSON, json_source(c4_json_files, c4_json_validation_files), vocabulary)
  add_task(DEMO, JsonLinesDataSource(_LazyPatterns(_demo_patterns, ("train", "validation"))),
           DemoVocabulary())


def get_task_or_mixture(name: str) -> Union[seqio.Task, seqio.Mixture]:
  """The registered seqio Task or Mixture `name`; a ValueError listing the names otherwise."""
  if name in seqio.MixtureRegistry.names():
    return seqio.MixtureRegistry.get(name)
  if name in seqio.TaskRegistry.names():
    return seqio.TaskRegistry.get(name)
  raise ValueError(
      f"unknown task or mixture {name!r}; registered tasks: "
      f"{sorted(seqio.TaskRegistry.names())}; mixtures: {sorted(seqio.MixtureRegistry.names())}")
