"""train()'s settings in sections: small gin-configurable dataclasses (as t5x's DatasetConfig and
CheckpointConfig), so that a run's config.gin reads as sections and `t5lite doremi` shares them.

  DataConfig   what the model reads     mixture_or_task_name, task_feature_lengths, batch_size
  StepConfig   what one step computes   z_loss, microbatches, fsdp
  EvalConfig   validation               period, steps, predict_examples
  LoopConfig   the step loop            log_period, max_consecutive_skips

Checkpointing is store.checkpoints.Checkpointer's (save_period, keep); the mesh is
runtime.partitioning.make_mesh's (mesh_shape).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Mapping, Optional

import gin


def check_required(owner: str, macros: Mapping[str, str], hint: str, **values) -> None:
  """Name the macros left unset: gin passes `X = %gin.REQUIRED` through as a sentinel, and an
  unbound section field is None (macros: {argument: MACRO}; owner: the configurable's name)."""
  missing = [k for k, v in values.items() if v is gin.REQUIRED or v is None]
  if missing:
    names = ", ".join(f"{macros[k]} ({owner}.{k})" for k in missing)
    raise ValueError(f"required gin macro not set: {names}; {hint}, e.g. "
                     f"--gin.{macros[missing[0]]}=...")


HINT = "set it in a gin file or on the command line"


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What the model reads: a registered task or mixture, its lengths, the global batch."""
  mixture_or_task_name: Optional[str] = None
  task_feature_lengths: Optional[Mapping[str, int]] = None
  batch_size: Optional[int] = None

  MACROS: ClassVar[dict[str, str]] = {"mixture_or_task_name": "MIXTURE_OR_TASK_NAME",
            "task_feature_lengths": "TASK_FEATURE_LENGTHS", "batch_size": "BATCH_SIZE"}

  def check(self) -> "DataConfig":
    """self; a ValueError naming the macros left unset."""
    check_required("DataConfig", self.MACROS, HINT, **dataclasses.asdict(self))
    return self

  @property
  def lengths(self) -> dict[str, int]:
    return {k: int(v) for k, v in dict(self.task_feature_lengths).items()}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What one optimizer step computes and how it is split over devices.

  z_loss: weight of log(Z)^2 (T5: 1e-4). microbatches: gradient accumulation (the step equals
  one big batch). fsdp: parameters and optimizer state split over 'data' too."""
  z_loss: float = 1e-4
  microbatches: int = 1
  fsdp: bool = False

  def __post_init__(self):
    if self.microbatches < 1:
      raise ValueError(f"StepConfig.microbatches={self.microbatches}; expected >= 1")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Validation while training: loss and accuracy on `steps` batches every `period` steps (0 =
  never; tasks with metrics also decode), and `predict_examples` held-out examples shown at the
  end."""
  period: int = 0
  steps: int = 10
  predict_examples: int = 0


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """The step loop: metrics every `log_period` steps; the run stops after
  `max_consecutive_skips` non-finite steps in a row."""
  log_period: int = 100
  max_consecutive_skips: int = 20

