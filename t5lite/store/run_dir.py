"""A run folder: where `t5lite train` and `t5lite import-hf` put things, and what they are called.

  MODEL_DIR/
    checkpoints/<step>/    orbax: the TrainState ('state') and the data position ('data')
    config.gin             the operative gin config `t5lite train` ran with
    model.gin              `t5lite import-hf`: architecture, dtype and VOCABULARY_PATH
    spiece.model | vocab.json + merges.txt      `import-hf`: the model's own vocabulary
    metrics.jsonl  eval.jsonl  tb/  loss.png     metrics (process 0 writes them)
    run.lock               who trains in this folder (run_lock.py)

Every path here is made absolute once (relative local paths work from any working folder);
gs:// paths work everywhere (files.py).
"""
from __future__ import annotations

from typing import Optional

from t5lite import files

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
