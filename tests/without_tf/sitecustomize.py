"""A Python where TensorFlow and seqio cannot be imported, as on a machine without the `data`
extra: with this folder first on PYTHONPATH, every interpreter (spawned children included) runs
this at start-up.

  PYTHONPATH=tests/without_tf:. python -m t5lite train ...
  PYTHONPATH=tests/without_tf:. python benchmarks/gpu_check.py --smoke --out DIR

Importing them raises ModuleNotFoundError, and importlib.util.find_spec finds nothing.
"""
import sys

BLOCKED = ("tensorflow", "tensorflow_text", "tensorflow_datasets", "seqio")


class _Hiding:
  """A meta-path finder that finds nothing of the BLOCKED packages, else what `finder` finds: so
  importlib.util.find_spec returns None for them and importing them raises, as when absent."""

  def __init__(self, finder):
    self.finder = finder

  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      return None
    find = getattr(self.finder, "find_spec", None)
    return find(name, path, target) if find else None

  def __getattr__(self, attribute):
    return getattr(self.finder, attribute)


sys.meta_path[:] = [_Hiding(finder) for finder in sys.meta_path]
