"""seqio Tasks and Mixtures for the objectives of objectives.py, on t5lite's three text sources.

For each source prefix — `c4` (TFDS c4/en), `c4_json` (allenai/c4 JSON shards), `demo` (the
embedded corpus of demo_corpus.py) — `register_objective_tasks` registers:

  {p}_bart_denoising  {p}_bart_text_infilling  {p}_bart_sentence_permutation
  {p}_bart_token_deletion  {p}_bart_document_rotation           BART vocabulary (below)
  {p}_prefix_lm  {p}_iid_denoising  {p}_bert_denoising  {p}_deshuffling     T5 vocabulary
  {p}_ul2_r_mean3_rate15 … {p}_ul2_s_rate25 (7 tasks) and the Mixture {p}_ul2   T5 vocabulary

BART vocabulary: c4 / c4_json use GPT-2 byte-level BPE (gpt2_vocab.py) read from
`gpt2_bpe_dir` (default GPT2_BPE_DIR = $T5LITE_CACHE or ~/.cache/t5lite, + /gpt2_bpe; put
GPT-2's encoder.json + vocab.bpe, or HF facebook/bart-base's vocab.json + merges.txt, there, or
bind it in gin: `register_objective_tasks.gpt2_bpe_dir = '/path'`); a missing file is a clear
FileNotFoundError on the first read. The demo_bart_* tasks need no download: they use the demo
SentencePiece vocabulary with <mask> = its first sentinel <extra_id_0> (vocab_size - 1).

Nothing is read at registration; vocabularies and files open on the first dataset read.
Mixtures of any registered tasks: `register_mixture(name, tasks_and_rates)`, gin-configurable:

  register_mixture.name = 'my_mix'
  register_mixture.tasks_and_rates = [('c4_prefix_lm', 1.0), ('c4_ul2', 2.0)]
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Optional, Sequence

import gin
import seqio
import tensorflow as tf

from t5lite.data import objectives as obj
from t5lite.data import tasks
from t5lite.data.gpt2_vocab import GPT2BPEVocabulary
from t5lite.data.sources import JsonLinesDataSource
from t5lite.data.vocab import T5_VOCAB_PATH
from t5lite.data.vocab import SentencePieceVocabulary

GPT2_BPE_DIR = os.path.join(
    os.environ.get("T5LITE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "t5lite"),
    "gpt2_bpe")
SOURCES = ("c4", "c4_json", "demo")

# task suffix -> preprocessor; BART ones get the BART vocabulary.
BART_OBJECTIVES = {
    "bart_denoising": obj.bart_denoising,
    "bart_text_infilling": obj.bart_text_infilling,
    "bart_sentence_permutation": obj.bart_sentence_permutation,
    "bart_token_deletion": obj.bart_token_deletion,
    "bart_document_rotation": obj.bart_document_rotation,
}
T5_OBJECTIVES = {
    "prefix_lm": obj.prefix_lm,
    "iid_denoising": obj.iid_denoising,
    "bert_denoising": obj.bert_style_denoising,
    "deshuffling": obj.deshuffling,
}


def objective_preprocessors(objective: Callable, batched_tokenize: bool = False) -> list[Callable]:
  """rekey text->targets, tokenize, the objective, append_eos_after_trim (as span corruption)."""
  return [
      functools.partial(seqio.preprocessors.rekey, key_map={"inputs": None, "targets": "text"}),
      functools.partial(tasks.tokenize_in_batches, copy_pretokenized=False)
      if batched_tokenize else seqio.preprocessors.tokenize,
      objective,
      seqio.preprocessors.append_eos_after_trim,
  ]


@gin.configurable
def register_mixture(name: str, tasks_and_rates: Sequence[tuple[str, float]]) -> seqio.Mixture:
  """(Re-)registers the seqio Mixture `name` sampling each task in proportion to its rate."""
  tasks_and_rates = [(str(task), float(rate)) for task, rate in tasks_and_rates]
  for task, _ in tasks_and_rates:
    if task not in seqio.TaskRegistry.names() and task not in seqio.MixtureRegistry.names():
      raise ValueError(f"register_mixture({name!r}): unknown task or mixture {task!r}")
  seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, tasks_and_rates)


def register_source_tasks(prefix: str, source: seqio.DataSource,
                          t5_vocabulary: seqio.Vocabulary, bart_vocabulary: seqio.Vocabulary,
                          ul2_s_rate: float = 0.2) -> list[str]:
  """Registers every objective's task (and the {prefix}_ul2 mixture) on one source; the names."""
  names = []
  for suffix, fn in BART_OBJECTIVES.items():
    tasks.add_task(f"{prefix}_{suffix}", source, bart_vocabulary,
                   objective_preprocessors(fn, isinstance(bart_vocabulary, GPT2BPEVocabulary)))
    names.append(f"{prefix}_{suffix}")
  for suffix, fn in T5_OBJECTIVES.items():
    tasks.add_task(f"{prefix}_{suffix}", source, t5_vocabulary, objective_preprocessors(fn))
    names.append(f"{prefix}_{suffix}")
  s_total = sum(rate for _, kind, _, rate in obj.UL2_DENOISERS if kind == "s")
  other_total = sum(rate for _, kind, _, rate in obj.UL2_DENOISERS if kind != "s")
  mixture = []
  for suffix, kind, kwargs, rate in obj.UL2_DENOISERS:
    name = f"{prefix}_{suffix}"
    tasks.add_task(name, source, t5_vocabulary,
                   objective_preprocessors(obj.ul2_preprocessor(kind, **kwargs)))
    names.append(name)
    scale = ul2_s_rate / s_total if kind == "s" else (1 - ul2_s_rate) / other_total
    mixture.append((name, rate * scale))
  register_mixture(f"{prefix}_ul2", mixture)
  names.append(f"{prefix}_ul2")
  return names


@gin.configurable
def register_objective_tasks(
    vocabulary_path: str = T5_VOCAB_PATH, gpt2_bpe_dir: str = GPT2_BPE_DIR,
    c4_json_files: tasks.Patterns = "gs://allenai-c4/en/c4-train.*-of-01024.json.gz",
    c4_json_validation_files: Optional[tasks.Patterns] = (
        "gs://allenai-c4/en/c4-validation.*-of-00008.json.gz"),
    tfds_version: str = "3.1.0", tfds_data_dir: Optional[str] = None,
    ul2_s_rate: float = 0.2) -> list[str]:
  """(Re-)registers the objective tasks and UL2 mixtures for c4, c4_json and demo; the names.

  The source arguments mean what they mean in tasks.register_tasks. ul2_s_rate is the
  S-denoiser's share of each {p}_ul2 mixture (the six span denoisers split the rest equally).
  """
  t5_vocabulary = SentencePieceVocabulary(str(vocabulary_path), extra_ids=100)
  gpt2 = GPT2BPEVocabulary(gpt2_bpe_dir)
  sources = {
      "c4": (seqio.TfdsDataSource(f"c4/en:{tfds_version}", tfds_data_dir=tfds_data_dir), gpt2),
      "c4_json": (tasks.json_source(c4_json_files, c4_json_validation_files), gpt2),
  }
  names = []
  for prefix, (source, bart_vocabulary) in sources.items():
    names += register_source_tasks(prefix, source, t5_vocabulary, bart_vocabulary, ul2_s_rate)
  demo_vocabulary = tasks.DemoVocabulary()
  demo_source = JsonLinesDataSource(
      tasks._LazyPatterns(tasks._demo_patterns, ("train", "validation")))  # pylint: disable=protected-access
  names += register_source_tasks("demo", demo_source, demo_vocabulary, demo_vocabulary, ul2_s_rate)
  return names


OBJECTIVE_TASK_NAMES = tuple(register_objective_tasks())
