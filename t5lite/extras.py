"""Optional extras: whether one is installed (without importing it), and the error that names it.

The core (model, training, serving, reading a built token cache) needs neither TensorFlow nor
seqio; the `data` extra adds them for seqio's tasks, their tf.data pipeline and building caches.
"""
from __future__ import annotations

import importlib.util

TF_MODULES = ("tensorflow", "tensorflow_text", "tensorflow_datasets", "seqio")
DATA_EXTRA = "pip install 't5lite[data]'"


def installed(module: str) -> bool:
  """Whether top-level `module` can be imported (without importing it)."""
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


def tf_data_available() -> bool:
  """Whether seqio and TensorFlow are installed (without importing them)."""
  return all(installed(name) for name in TF_MODULES)


def require_tf_data(what: str) -> None:
  """An ImportError naming the `data` extra when seqio or TensorFlow is missing."""
  if not tf_data_available():
    raise ImportError(
        f"{what} needs seqio and TensorFlow, which are not installed (the `data` extra: "
        f"{DATA_EXTRA}); training, evaluation and inference from a built token cache "
        "(DATA_CACHE_DIR) do not")
