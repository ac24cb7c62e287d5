"""The `t5lite` command: dispatch to t5lite/cli/<command>.py, and bad input as one line (exit 2)."""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
from typing import Optional, Sequence

from t5lite import errors

# command -> (module in t5lite.cli, function, help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("train", "main", "pretrain / fine-tune / continue a run (gin-configured)"),
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
  with _native_stderr_silenced():
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  return getattr(importlib.import_module(f"t5lite.cli.{module}"), function)(rest)


@contextlib.contextmanager
def _native_stderr_silenced():
  """TensorFlow's native libraries print start-up lines (oneDNN, CUDA drivers) straight to file
  descriptor 2 while loading, before any log level applies: point it at /dev/null meanwhile.
  Python exceptions still surface (they print after). T5LITE_VERBOSE=1 keeps the lines."""
  if os.environ.get("T5LITE_VERBOSE"):
    yield
    return
  sys.stderr.flush()
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def run() -> None:
  """Console-script entry point."""
  run_with_args(None)


def run_with_args(argv: Optional[Sequence[str]]) -> None:
  """Runs a command; bad input (a ValueError, a missing file, a gin error) exits 2 with a clear
  message instead of a traceback (T5LITE_TRACEBACK=1 shows it)."""
  try:
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
