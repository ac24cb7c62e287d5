"""The `t5lite` command: flags, gin parsing, dispatch. Each subcommand's work lives in its module."""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
from typing import Callable, Optional, Sequence

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


def gin_config_dirs() -> list[str]:
  """Installed gin_configs/ (wheel: t5lite/gin_configs; checkout: the repository's gin_configs/)."""
  dirs = [PACKAGE_DIR / "gin_configs", PACKAGE_DIR.parent / "gin_configs"]
  return [str(d) for d in dirs if d.is_dir()]


def add_gin_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin file (repeatable); searched in gin_configs/ and --gin_search_paths")
  parser.add_argument("--gin_search_paths", action="append", default=[],
                      help="extra folders to search for gin files (repeatable, or comma-separated)")
  parser.add_argument("--gin_bindings", action="append", default=[],
                      help="a gin binding 'NAME = VALUE' (repeatable); same as --gin.NAME=VALUE")
  parser.add_argument("--num_cpu_devices", type=int, default=0,
                      help="emulate this many CPU devices (also gin: emulate_cpu_devices.num_devices)")


def split_gin_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Pulls `--gin.NAME=VALUE` (or `--gin.NAME VALUE`) out of argv as gin bindings 'NAME = VALUE'."""
  rest, bindings = [], []
  argv = list(argv)
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--gin.") and arg != "--gin.":
      name, eq, value = arg[len("--gin."):].partition("=")
      if not eq:
        if i + 1 >= len(argv):
          raise SystemExit(f"t5lite: {arg} needs a value: --gin.{name}=VALUE")
        value, i = argv[i + 1], i + 1
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
    i += 1
  return rest, bindings


def parse_gin(args: argparse.Namespace, extra_bindings: Sequence[str]) -> None:
  """Registers t5lite's configurables, then parses gin files and bindings (errors name the source)."""
  import gin  # pylint: disable=g-import-not-at-top
  from t5lite import partitioning, train  # pylint: disable=g-import-not-at-top,unused-import
  import t5lite.data  # pylint: disable=g-import-not-at-top,unused-import
  paths = [p for entry in args.gin_search_paths for p in entry.split(",") if p]
  for path in gin_config_dirs() + paths + [os.getcwd()]:
    gin.add_config_file_search_path(path)
  files = [_resolve_gin_file(f, gin_config_dirs() + paths) for f in args.gin_file]
  _use_plain_file_readers(gin)
  gin.parse_config_files_and_bindings(files, list(args.gin_bindings) + list(extra_bindings),
                                      finalize_config=False)
  if args.num_cpu_devices:
    gin.bind_parameter("emulate_cpu_devices.num_devices", args.num_cpu_devices)


def _use_plain_file_readers(gin) -> None:
  """Drops gin's Python-package resource reader: it treats `include 'runs/x.gin'` as package
  `runs` and crashes when the cwd holds a folder of that name (e.g. the demo's runs/ output)."""
  readers = gin.config._FILE_READERS  # pylint: disable=protected-access
  readers[:] = [r for r in readers if getattr(r[0], "__module__", "") != "gin.resource_reader"]


def _resolve_gin_file(name: str, search: Sequence[str]) -> str:
  if os.path.exists(name) or name.startswith("gs://"):
    return name
  for d in search:
    candidate = os.path.join(d, name)
    if os.path.exists(candidate):
      return candidate
  raise FileNotFoundError(f"gin file {name!r} not found; searched the current folder and "
                          f"{', '.join(search) or '(no search paths)'}")


def cmd_train(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(prog="t5lite train", description=(
      "Pretrain or fine-tune. Running the same command again resumes from MODEL_DIR's latest "
      "checkpoint."))
  add_gin_flags(parser)
  rest, bindings = split_gin_overrides(argv)
  args = parser.parse_args(rest)
  parse_gin(args, bindings)
  from t5lite import partitioning, train  # pylint: disable=g-import-not-at-top
  partitioning.emulate_cpu_devices()
  partitioning.initialize_distributed()
  train.train(mesh=partitioning.make_mesh())
  return 0


def _lazy(module: str, function: str = "cli") -> Callable[[Sequence[str]], int]:
  def run(argv: Sequence[str]) -> int:
    import importlib  # pylint: disable=g-import-not-at-top
    return importlib.import_module(module).__dict__[function](list(argv))
  return run


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "train": (cmd_train, "pretrain / fine-tune / continue a run (gin-configured)"),
    "vocab": (_lazy("t5lite.data.vocab"), "train a SentencePiece vocabulary with T5's conventions"),
    "import-hf": (_lazy("t5lite.export", "import_cli"), "HF T5/mT5/BART folder -> t5lite run folder"),
    "export-hf": (_lazy("t5lite.export", "export_cli"), "t5lite run -> HF from_pretrained folder"),
    "score": (_lazy("t5lite.infer", "score_cli"), "log-likelihood of targets given inputs (JSON lines)"),
    "infer": (_lazy("t5lite.infer", "infer_cli"), "decode predictions for inputs (JSON lines)"),
    "eval": (_lazy("t5lite.evaluate", "cli"), "loss, accuracy and task metrics of checkpoints"),
    "inspect": (_lazy("t5lite.inspect_task"), "print examples and statistics of a task or mixture"),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if not argv or argv[0] in ("-h", "--help", "help"):
    print("usage: t5lite COMMAND [options]\n\ncommands:")
    for name, (_, text) in COMMANDS.items():
      print(f"  {name:<10} {text}")
    print("\n`t5lite COMMAND --help` describes each.")
    return 0 if argv else 2
  command, rest = argv[0], argv[1:]
  if command not in COMMANDS:
    print(f"t5lite: unknown command {command!r}; expected one of: {', '.join(COMMANDS)}",
          file=sys.stderr)
    return 2
  return COMMANDS[command][0](rest)


def run() -> None:
  """Console-script entry point."""
  run_with_args(None)


def run_with_args(argv: Optional[Sequence[str]]) -> None:
  """Runs a command; bad input (a ValueError, a missing file, a gin error) exits 2 with a clear
  message instead of a traceback."""
  try:
    sys.exit(main(argv))
  except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
    if os.environ.get("T5LITE_TRACEBACK"):
      raise
    print(f"t5lite: error: {e}\n(set T5LITE_TRACEBACK=1 for the traceback)", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  run()
