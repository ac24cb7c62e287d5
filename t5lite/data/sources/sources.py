"""Where text and vocabularies come from: one configuration (`Sources`) for every task family.

gin_configs/sources.gin, parsed first by every command, binds its fields to the macros
VOCABULARY_PATH, C4_JSON_FILES, C4_JSON_VALIDATION_FILES, TFDS_DATA_DIR and GPT2_BPE_DIR, so
`--gin.VOCABULARY_PATH=...` reaches every task (span corruption, BART, UL2, ...) in every command.

Three text sources, each a seqio DataSource with "train" and "validation" splits of {"text"}
(made by seqio_sources.py, with their vocabularies):
  c4       TFDS c4/en (`tfds_version`, `tfds_data_dir`)
  c4_json  allenai/c4-style JSON-lines shards (`*.json.gz`, local or gs://)
  demo     the embedded corpus (demo_corpus.py), built on first read
This module is the configuration alone, without TensorFlow: every command parses sources.gin.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence, Union

import gin

from t5lite.data.vocab.sentencepiece import T5_VOCAB_PATH

Patterns = Union[str, Sequence[str]]

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
