"""A trained model ready for use: a run folder's parameters on a mesh, its config and vocabulary.

`load(MODEL_DIR)` reads what `t5lite train` or `t5lite import-hf` wrote (store/run_dir.py) after
the run's gin config is parsed: the latest (or a given) checkpoint's parameters, restored onto
the mesh's shardings (model/params.py), and the vocabulary, in this order: an explicit one, the
folder's own, the vocabulary of the task the run trained on.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax

from t5lite import files, gin_files
from t5lite.data.vocab import gpt2, sentencepiece
from t5lite.model.config import Config
from t5lite.model.network import EncoderDecoder
from t5lite.model.params import abstract_params
from t5lite.runtime import partitioning
from t5lite.store import checkpoints
from t5lite.store.run_dir import SPIECE, RunDir


def vocabulary_from(path: str):
  """A SentencePiece .model file, or a folder of GPT-2/BART BPE files."""
  if files.isdir(path):
    return gpt2.GPT2BPE(path)
  return sentencepiece.load(path)


def task_name() -> Optional[str]:
  """The task or mixture the parsed run trained on (DataConfig.mixture_or_task_name), if bound."""
  return gin_files.query("DataConfig.mixture_or_task_name")


def run_vocabulary(run_dir: RunDir, override: Optional[str] = None):
  """`override` -> the folder's own vocabulary -> the vocabulary of the task the run trained on."""
  path = override or run_dir.vocabulary_file()
  if path:
    return vocabulary_from(path)
  name = task_name()
  if name:
    from t5lite.data.feed import streams  # pylint: disable=g-import-not-at-top
    return streams.prepare(name, None)[1]  # seqio's task, or the token cache's manifest
  raise ValueError(f"{run_dir.path}: no vocabulary found (no {SPIECE}, no vocab.json, no "
                   "DataConfig.mixture_or_task_name in its gin); pass --vocabulary PATH")


@dataclasses.dataclass
class Run:
  """A loaded run: its model, parameters (sharded over `mesh`), vocabulary and step."""
  run_dir: RunDir
  config: Config
  model: EncoderDecoder
  params: Any
  step: int
  vocabulary: Any
  mesh: jax.sharding.Mesh

  @property
  def model_dir(self) -> str:
    return self.run_dir.path

  def require_vocabulary(self):
    if self.vocabulary is None:
      run_vocabulary(self.run_dir)  # raises the ValueError that says what to pass
    return self.vocabulary


def load(model_dir, step: Optional[int] = None, vocabulary: Optional[str] = None,
         dtype: Optional[str] = None, mesh: Optional[jax.sharding.Mesh] = None) -> Run:
  """Loads a run folder's parameters (latest checkpoint, or `step`) onto `mesh` (default: the
  gin-bound make_mesh), the run's gin config (RunDir.gin_files) already parsed."""
  run_dir = RunDir(model_dir)
  config = Config()
  if dtype:
    config = config.replace(dtype=dtype)
  mesh = mesh or partitioning.make_mesh()
  folder, latest = checkpoints.resolve(run_dir.path)
  step = latest if step is None else step
  params = checkpoints.restore_params(folder, abstract_params(config, mesh), step)
  try:
    vocab = run_vocabulary(run_dir, vocabulary)
  except ValueError:
    vocab = None  # export-hf needs none; score/infer/eval say what is missing
  return Run(run_dir, config, EncoderDecoder(config), params, step, vocab, mesh)
