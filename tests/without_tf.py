"""Runs a module or script in a Python where TensorFlow and seqio cannot be imported (as on a
machine without the `data` extra):

  python tests/without_tf.py -m t5lite train --gin_file=...
  python tests/without_tf.py benchmarks/gpu_check.py --smoke --out DIR

Importing them raises ModuleNotFoundError, and importlib.util.find_spec finds nothing.
"""
import runpy
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


def main() -> None:
  sys.meta_path[:] = [_Hiding(finder) for finder in sys.meta_path]
  args = sys.argv[1:]
  if args[:1] == ["-m"]:
    sys.argv = [args[1]] + args[2:]
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)
  else:
    sys.argv = args
    runpy.run_path(args[0], run_name="__main__")


if __name__ == "__main__":
  main()
