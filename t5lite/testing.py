"""The original `t5` package's preprocessors, loaded for side-by-side comparisons (tests, benchmarks).

`t5/__init__.py` imports sklearn, sacrebleu, rouge and pandas; this loads `t5.data.preprocessors`
alone, so `pip install --no-deps t5 babel` is all it needs.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

MISSING = "the `t5` package is missing: pip install --no-deps t5 babel"


def t5_preprocessors():
  """`t5.data.preprocessors`; ModuleNotFoundError naming the install command if `t5` is absent."""
  if "t5.data.preprocessors" in sys.modules:
    return sys.modules["t5.data.preprocessors"]
  spec = importlib.util.find_spec("t5")
  if spec is None:
    raise ModuleNotFoundError(MISSING)
  root = os.path.dirname(spec.origin)
  for name, path in (("t5", root), ("t5.data", os.path.join(root, "data"))):
    if name not in sys.modules:
      module = types.ModuleType(name)
      module.__path__ = [path]
      sys.modules[name] = module
  return importlib.import_module("t5.data.preprocessors")
