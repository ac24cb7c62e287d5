"""What every command shares: gin flags (`--gin_file`, `--gin.NAME=VALUE`), run-folder flags,
starting the devices (emulated CPU devices, jax.distributed), quiet native libraries."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Sequence

import gin

from t5lite import gin_files


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
          raise ValueError(f"{arg} needs a value: --gin.{name}=VALUE")
        value, i = argv[i + 1], i + 1
      bindings.append(f"{name} = {value}")
    else:
      rest.append(arg)
    i += 1
  return rest, bindings


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
  """parser.parse_args with the --gin.NAME=VALUE overrides collected into args.gin_bindings."""
  rest, bindings = split_gin_overrides(argv)
  args = parser.parse_args(rest)
  args.gin_bindings = list(args.gin_bindings) + bindings
  return args


def search_paths(args: argparse.Namespace) -> list[str]:
  return [p for entry in args.gin_search_paths for p in entry.split(",") if p]


def register_configurables() -> None:
  """Imports every module that declares a gin configurable (before any gin parse)."""
  # pylint: disable=g-import-not-at-top,unused-import
  from t5lite.extras import tf_data_available
  from t5lite.data.feed import streams
  from t5lite.data.sources import sources
  from t5lite.corpus import c4_rules
  from t5lite.model import config
  from t5lite.runtime import devices, partitioning
  from t5lite.store import checkpoints, run_lock
  from t5lite.training import optim, settings, train
  if tf_data_available():  # seqio's tasks and DoReMi (the `data` extra)
    from t5lite.data.tasks import finetune, registry
    from t5lite.datamix import doremi_run


def parse_gin(args: argparse.Namespace) -> None:
  """Parses sources.gin, the --gin_file files and the bindings (errors name the source)."""
  register_configurables()
  gin_files.parse(args.gin_file, args.gin_bindings, search_paths(args))
  if args.num_cpu_devices:
    gin.bind_parameter("emulate_cpu_devices.num_devices", args.num_cpu_devices)


def parse_gin_flags(argv: Sequence[str]) -> argparse.Namespace:
  """The gin flags of a command line (--gin_file, --gin.NAME=VALUE, ...) parsed as `t5lite train`
  parses them, on top of the current gin config: for tests, benchmarks and notebooks."""
  parser = argparse.ArgumentParser()
  add_gin_flags(parser)
  args = parse_args(parser, argv)
  parse_gin(args)
  return args


def start_devices() -> None:
  """Emulated CPU devices (when asked for), then jax.distributed (when this is one process of
  several): both before anything touches a device."""
  from t5lite.runtime import devices  # pylint: disable=g-import-not-at-top  (jax, on demand)
  devices.emulate_cpu_devices()
  devices.initialize_distributed()


def add_run_flags(parser: argparse.ArgumentParser) -> None:
  """--model_dir, --step, --vocabulary, --dtype, --batch_size and the gin flags."""
  parser.add_argument("--model_dir", required=True, help="a t5lite run folder (train or import-hf)")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  parser.add_argument("--vocabulary", default=None,
                      help="SentencePiece .model (or BART vocab.json+merges.txt folder); default: "
                           "the run's")
  parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                      help="activation dtype (default: the run's Config.dtype)")
  parser.add_argument("--batch_size", type=int, default=32)
  add_gin_flags(parser)


def load_run(args: argparse.Namespace):
  """The run folder of --model_dir loaded onto the gin-bound mesh (its gin config, then --gin_file
  and bindings on top)."""
  from t5lite.serving import run  # pylint: disable=g-import-not-at-top  (jax, on demand)
  from t5lite.store.run_dir import RunDir  # pylint: disable=g-import-not-at-top
  run_dir = RunDir(args.model_dir)
  parse_run_gin(run_dir, args.gin_file, args.gin_bindings, search_paths(args))
  if args.num_cpu_devices:
    gin.bind_parameter("emulate_cpu_devices.num_devices", args.num_cpu_devices)
  start_devices()
  return run.load(run_dir.path, args.step, vocabulary=args.vocabulary, dtype=args.dtype)


def parse_run_gin(run_dir, extra_files: Sequence[str] = (), bindings: Sequence[str] = (),
                  paths: Sequence[str] = ()) -> None:
  """Clears gin, then parses the run folder's gin file (run_dir.RunDir), then `extra_files` and
  `bindings` on top. Bindings of configurables this version lacks (a run folder written by
  another version) are skipped."""
  register_configurables()
  gin.clear_config()
  gin_files.parse(run_dir.gin_files() + list(extra_files), bindings, paths, skip_unknown=True)


@contextlib.contextmanager
def native_stderr_silenced():
  """Native libraries print start-up lines straight to file descriptor 2 while loading, before
  any log level applies (TensorFlow: oneDNN, CUDA drivers; libtpu without a TPU VM: its missing
  metadata): point it at /dev/null meanwhile. Python exceptions still surface (they print after).
  T5LITE_VERBOSE=1 keeps the lines."""
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
