"""Where text and vocabularies come from: one configuration (`Sources`) for every task family.

gin_configs/sources.gin, parsed first by every command, binds its fields to the macros
VOCABULARY_PATH, C4_JSON_FILES, C4_JSON_VALIDATION_FILES, TFDS_DATA_DIR and GPT2_BPE_DIR, so
`--gin.VOCABULARY_PATH=...` reaches every task (span corruption, BART, UL2, ...) in every command.

Three text sources, each a seqio DataSource with "train" and "validation" splits of {"text"}:
  c4       TFDS c4/en (`tfds_version`, `tfds_data_dir`)
  c4_json  allenai/c4-style JSON-lines shards (`*.json.gz`, local or gs://)
  demo     the embedded corpus (demo_corpus.py), built on first read
"""
from __future__ import annotations

import collections.abc
import dataclasses
import os
from typing import Callable, Mapping, Optional, Sequence

import gin
import seqio

from t5lite.data.sources import demo_corpus
from t5lite.data.sources.json_lines import JsonLinesDataSource, Patterns, json_source
from t5lite.data.vocab.gpt2 import GPT2BPEVocabulary
from t5lite.data.vocab.sentencepiece import T5_VOCAB_PATH
from t5lite.data.vocab.sentencepiece import SentencePieceVocabulary

GPT2_BPE_DIR = os.path.join(
    os.environ.get("T5LITE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "t5lite"),
    "gpt2_bpe")
SOURCE_NAMES = ("c4", "c4_json", "demo")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Sources:
  """Text sources and vocabularies of the registered tasks (nothing is read until a dataset is).

  vocabulary_path: T5 SentencePiece model (local or gs://) of the c4 / c4_json T5-style tasks.
  gpt2_bpe_dir: GPT-2 BPE files of the c4 / c4_json BART tasks (encoder.json + vocab.bpe, or HF
    BART's vocab.json + merges.txt); None means $T5LITE_CACHE/gpt2_bpe.
  cache_dir: the token cache (`t5lite cache`, data/cache.py) every command reads instead of
    tokenizing on the fly; None: the tf.data path. build_missing_cache builds it on first use
    (the demo's small corpus) instead of stopping with the command that builds it.
  """
  vocabulary_path: str = T5_VOCAB_PATH
  c4_json_files: Patterns = "gs://allenai-c4/en/c4-train.*-of-01024.json.gz"
  c4_json_validation_files: Optional[Patterns] = (
      "gs://allenai-c4/en/c4-validation.*-of-00008.json.gz")
  tfds_version: str = "3.1.0"
  tfds_data_dir: Optional[str] = None
  gpt2_bpe_dir: Optional[str] = None
  cache_dir: Optional[str] = None
  build_missing_cache: bool = False

  def t5_vocabulary(self) -> SentencePieceVocabulary:
    return SentencePieceVocabulary(str(self.vocabulary_path), extra_ids=100)

  def gpt2_vocabulary(self) -> GPT2BPEVocabulary:
    return GPT2BPEVocabulary(self.gpt2_bpe_dir or GPT2_BPE_DIR)

  def source(self, name: str) -> seqio.DataSource:
    """The DataSource of one of SOURCE_NAMES."""
    if name == "c4":
      return seqio.TfdsDataSource(f"c4/en:{self.tfds_version}", tfds_data_dir=self.tfds_data_dir)
    if name == "c4_json":
      return json_source(self.c4_json_files, self.c4_json_validation_files)
    if name == "demo":
      return JsonLinesDataSource(_LazyPatterns(_demo_patterns, ("train", "validation")))
    raise ValueError(f"unknown source {name!r}; expected one of {SOURCE_NAMES}")

  def vocabularies(self, name: str) -> tuple[seqio.Vocabulary, seqio.Vocabulary]:
    """(T5-style vocabulary, BART vocabulary) of a source: the demo uses its own for both."""
    if name == "demo":
      demo = demo_corpus.DemoVocabulary()
      return demo, demo
    return self.t5_vocabulary(), self.gpt2_vocabulary()


# ----------------------------------------------------------------------------- JSON lines


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
