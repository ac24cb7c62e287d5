"""The `t5lite` command: dispatch to t5lite/cli/<command>.py, and bad input as one line (exit 2)."""
from __future__ import annotations

import importlib
import os
import sys
from typing import Optional, Sequence

from t5lite import errors, extras
from t5lite.runtime import backend
from t5lite.cli import common

# command -> (module in t5lite.cli, function, help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("train", "main", "pretrain / fine-tune / continue a run (gin-configured)"),
    "plan": ("plan", "main", "compile train's step for a TPU topology: memory, fit, FLOPs"),
    "inspect": ("inspect", "main", "print examples and statistics of a task or mixture"),
    "eval": ("eval", "main", "loss, accuracy and task metrics of checkpoints"),
    "score": ("use", "score_main", "log-likelihood of targets given inputs (JSON lines)"),
    "infer": ("use", "infer_main", "decode predictions for inputs (JSON lines)"),
    "import-hf": ("hf", "import_main", "HF T5/mT5/BART folder -> t5lite run folder"),
    "export-hf": ("hf", "export_main", "t5lite run -> HF from_pretrained folder"),
    "vocab": ("vocab", "main", "train a SentencePiece vocabulary with T5's conventions"),
    "cache": ("cache", "main", "tokenize a task's source once into a token cache (ArrayRecord)"),
    "select": ("select", "main", "DSIR: select raw documents that look like a target domain"),
    "doremi": ("doremi", "main", "DoReMi: domain weights of a mixture (reference + DRO proxy)"),
    "corpus": ("corpus", "main", "build a C4-style corpus from WET / JSON pages (C4's rules); "
               "prune one by perplexity"),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if not argv or argv[0] in ("-h", "--help", "help"):
    print("usage: t5lite COMMAND [options]\n\ncommands:")
    for name, (_, _, text) in COMMANDS.items():
      print(f"  {name:<10} {text}")
    print("\n`t5lite COMMAND --help` describes each.")
    return 0 if argv else 2
  command, rest = argv[0], argv[1:]
  if command not in COMMANDS:
    print(f"t5lite: unknown command {command!r}; expected one of: {', '.join(COMMANDS)}",
          file=sys.stderr)
    return 2
  module, function, _ = COMMANDS[command]
  _quiet_tensorflow()
  return getattr(importlib.import_module(f"t5lite.cli.{module}"), function)(rest)


def _quiet_tensorflow() -> None:
  """Imports TensorFlow (where installed) with its native start-up logs silenced, and hides the
  accelerators from it: tf.data runs on the host, and TF must not take memory JAX will use."""
  if not extras.installed("tensorflow"):
    return
  with common.native_stderr_silenced():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF's devices were initialised already (an embedding caller's)
    pass


def run() -> None:
  """Console-script entry point."""
  try:
    run_with_args(None, prepare=True)
  except SystemExit as e:
    if e.code in (None, 0):
      raise
    # A failed run leaves the exception's frames (and a live tf.data iterator) for interpreter
    # shutdown, which can deadlock in TensorFlow's finalizers: the message is out, so leave now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(e.code if isinstance(e.code, int) else 1)


def run_with_args(argv: Optional[Sequence[str]], prepare: bool = False) -> None:
  """Runs a command; bad input (a ValueError, a missing file, a gin error) exits 2 with a clear
  message instead of a traceback (T5LITE_TRACEBACK=1 shows it). prepare: set up the process
  first (backend.prepare_process), as the console command does."""
  try:
    if prepare:
      backend.prepare_process()  # before jax (and its threads) start: see backend.py
    sys.exit(main(argv))
  except Exception as e:  # pylint: disable=broad-except
    if os.environ.get("T5LITE_TRACEBACK"):
      raise
    message = errors.one_line(e)
    if message is None:  # not bad input: a bug, whose traceback is the useful part
      raise
    print(f"t5lite: error: {message}\n(set T5LITE_TRACEBACK=1 for the traceback)",
          file=sys.stderr)
    sys.exit(getattr(e, "exit_code", 2))


if __name__ == "__main__":
  run()
