"""Sources' text sources and vocabularies as seqio objects, for seqio Tasks (TensorFlow): the
DataSource of each source name, and its T5-style and BART vocabularies (the demo corpus's own)."""
from __future__ import annotations

import collections.abc
from typing import Callable, Mapping, Sequence

import seqio

from t5lite.data.sources import demo_corpus
from t5lite.data.sources.json_lines import JsonLinesDataSource, json_source
from t5lite.data.sources.sources import GPT2_BPE_DIR, SOURCE_NAMES, Patterns, Sources
from t5lite.data.vocab.seqio_vocab import GPT2BPEVocabulary, SentencePieceVocabulary


def t5_vocabulary(sources: Sources) -> SentencePieceVocabulary:
  return SentencePieceVocabulary(str(sources.vocabulary_path), extra_ids=100)


def gpt2_vocabulary(sources: Sources) -> GPT2BPEVocabulary:
  return GPT2BPEVocabulary(sources.gpt2_bpe_dir or GPT2_BPE_DIR)


def source(sources: Sources, name: str) -> seqio.DataSource:
  """The DataSource of one of SOURCE_NAMES."""
  if name == "c4":
    return seqio.TfdsDataSource(f"c4/en:{sources.tfds_version}",
                                tfds_data_dir=sources.tfds_data_dir)
  if name == "c4_json":
    return json_source(sources.c4_json_files, sources.c4_json_validation_files)
  if name == "demo":
    return JsonLinesDataSource(_LazyPatterns(_demo_patterns, ("train", "validation")))
  raise ValueError(f"unknown source {name!r}; expected one of {SOURCE_NAMES}")


def vocabularies(sources: Sources, name: str) -> tuple[seqio.Vocabulary, seqio.Vocabulary]:
  """(T5-style vocabulary, BART vocabulary) of a source: the demo uses its own for both."""
  if name == "demo":
    demo = DemoVocabulary()
    return demo, demo
  return t5_vocabulary(sources), gpt2_vocabulary(sources)


class DemoVocabulary(SentencePieceVocabulary):
  """The demo corpus's vocabulary; the demo assets are built on its first use."""

  def __init__(self, extra_ids: int = 100):
    super().__init__(demo_corpus.vocab_path(), extra_ids=extra_ids)

  def _model_context(self):
    if not self._model:
      demo_corpus.demo_assets()
    return super()._model_context()


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


def _demo_patterns() -> Mapping[str, str]:
  assets = demo_corpus.demo_assets()
  return {"train": assets.train_pattern, "validation": assets.validation_pattern}
