"""A run folder: its layout, gin config, vocabulary and checkpoints, and loading it for use.

  MODEL_DIR/
    checkpoints/<step>/    orbax: the TrainState ('state') and the data position ('data')
    config.gin             the operative gin config `t5lite train` ran with
    model.gin              `t5lite import-hf`: architecture, dtype and VOCABULARY_PATH
    spiece.model | vocab.json + merges.txt      `import-hf`: the model's own vocabulary
    metrics.jsonl  eval.jsonl  tb/  loss.png     metrics (process 0 writes them)
    run.lock               who trains in this folder (lock.py)

Every path here is made absolute once (relative local paths work from any working folder);
gs:// paths work everywhere (files.py). The abstract parameters and their shardings — what
train, score/infer, eval, export and import restore onto — are built by `abstract_params`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

from t5lite.store import checkpoints
from t5lite import files, gin_files
from t5lite.runtime import partitioning
from t5lite.model.config import Config
from t5lite.model.network import EncoderDecoder

CHECKPOINTS = "checkpoints"
CONFIG_GIN = "config.gin"
MODEL_GIN = "model.gin"
SPIECE = "spiece.model"
BART_VOCAB_FILES = ("vocab.json", "merges.txt")
VOCAB_FILES = (SPIECE,) + BART_VOCAB_FILES


class RunDir:
  """The paths of one run folder (absolute when local)."""

  def __init__(self, path):
    self.path = files.absolute(path)

  def __repr__(self) -> str:
    return f"RunDir({self.path!r})"

  def file(self, *names: str) -> str:
    return files.join(self.path, *names)

  @property
  def checkpoints(self) -> str:
    return self.file(CHECKPOINTS)

  @property
  def metrics(self) -> str:
    return self.file("metrics.jsonl")

  @property
  def eval_log(self) -> str:
    return self.file("eval.jsonl")

  @property
  def loss_png(self) -> str:
    return self.file("loss.png")

  @property
  def lock(self) -> str:
    return self.file("run.lock")

  def tb(self, prefix: str) -> str:
    return self.file("tb", prefix)

  def gin_files(self) -> list[str]:
    """The run's gin file: config.gin (written by train) or model.gin (written by import-hf)."""
    for name in (CONFIG_GIN, MODEL_GIN):
      if files.exists(self.file(name)):
        return [self.file(name)]
    return []

  def write_config(self, text: str) -> None:
    files.makedirs(self.path)
    files.write_text(self.file(CONFIG_GIN), text)

  def vocabulary_file(self) -> Optional[str]:
    """The run's own vocabulary (import-hf copies it in): spiece.model, or the folder itself when
    it holds BART's vocab.json + merges.txt; None when it has none."""
    if files.exists(self.file(SPIECE)):
      return self.file(SPIECE)
    if all(files.exists(self.file(n)) for n in BART_VOCAB_FILES):
      return self.path
    return None

  def checkpoint_steps(self) -> list[int]:
    """Finished checkpoint steps, ascending (orbax renames a step's folder only when complete)."""
    if not files.isdir(self.checkpoints):
      return []
    return sorted(int(n) for n in files.listdir(self.checkpoints) if n.isdigit())


def vocabulary_from(path: str):
  """A SentencePiece .model file, or a folder of GPT-2/BART BPE files."""
  from t5lite.data.vocab import gpt2 as gpt2_vocab, sentencepiece as vocab  # pylint: disable=g-import-not-at-top
  if files.isdir(path):
    return gpt2_vocab.GPT2BPEVocabulary(path)
  return vocab.get_vocabulary(path)


def task_name() -> Optional[str]:
  """The task or mixture the parsed run trained on (train.mixture_or_task_name), if bound."""
  return gin_files.query("train.mixture_or_task_name")


def run_vocabulary(run_dir: RunDir, override: Optional[str] = None):
  """`override` -> the folder's own vocabulary -> the vocabulary of the task the run trained on."""
  path = override or run_dir.vocabulary_file()
  if path:
    return vocabulary_from(path)
  name = task_name()
  if name:
    from t5lite.data.tasks.registry import get_task_or_mixture  # pylint: disable=g-import-not-at-top
    return get_task_or_mixture(name).output_features["targets"].vocabulary
  raise ValueError(f"{run_dir.path}: no vocabulary found (no {SPIECE}, no vocab.json, no "
                   "train.mixture_or_task_name in its gin); pass --vocabulary PATH")


def abstract_params(config: Config, mesh: jax.sharding.Mesh, fsdp: bool = False) -> Any:
  """ShapeDtypeStructs of the parameters with their shardings on `mesh` (nothing allocated)."""
  boxed = boxed_params_shape(config)
  shardings = partitioning.logical_shardings(boxed, mesh, fsdp)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      partitioning.raw_values(boxed), shardings)


def boxed_params_shape(config: Config) -> Any:
  """The parameters' shapes with their logical axis names (nn.Partitioned boxes), abstractly."""
  model = EncoderDecoder(config)
  dummy = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  # The key is made inside the trace: no concrete array (a TPU-topology mesh allows none).
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, x)["params"], dummy)


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
