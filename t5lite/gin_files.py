"""Finding and parsing gin files: the installed gin_configs/ and search paths.

Every parse starts from `sources.gin` (where data and vocabularies come from: VOCABULARY_PATH,
C4_JSON_FILES, ... as macros), so `--gin.VOCABULARY_PATH=...` reaches every task family and
every command, with or without a run config. The modules that declare the configurables must be
imported first (the commands do: cli/common.register_configurables). Names that earlier versions
used (`train.fsdp`, ...) are rewritten to their current ones (`upgrade`).
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import re
import sys
import tokenize
from typing import Any, Sequence

import gin

from t5lite.extras import DATA_EXTRA, tf_data_available
from t5lite.files import read_text

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
DEFAULTS = "sources.gin"


def config_dirs() -> list[str]:
  """Installed gin_configs/ (wheel: t5lite/gin_configs; checkout: the repository's gin_configs/)."""
  dirs = [PACKAGE_DIR / "gin_configs", PACKAGE_DIR.parent / "gin_configs"]
  return [str(d) for d in dirs if d.is_dir()]


def resolve(name: str, search_paths: Sequence[str] = ()) -> str:
  """A gin file's path: as given (local or gs://), else under the search paths then gin_configs/."""
  if os.path.exists(name) or "://" in name:
    return name
  search = list(search_paths) + config_dirs()
  for d in search:
    candidate = os.path.join(d, name)
    if os.path.exists(candidate):
      return candidate
  raise FileNotFoundError(f"gin file {name!r} not found; searched the current folder and "
                          f"{', '.join(search) or '(no search paths)'}")


def parse(files: Sequence[str] = (), bindings: Sequence[str] = (),
          search_paths: Sequence[str] = (), skip_unknown: bool = False) -> None:
  """Parses sources.gin, then `files` (resolved with `resolve`), then `bindings`, on top of the
  current gin config. skip_unknown ignores bindings of configurables this version lacks (for a run
  folder written by another version)."""
  for path in list(search_paths) + config_dirs() + [os.getcwd()]:
    gin.add_config_file_search_path(path)
  _use_plain_file_readers()
  paths = [resolve(DEFAULTS)] + [resolve(f, search_paths) for f in files]
  # One file or binding at a time (as gin.parse_config_files_and_bindings does), so that an
  # error names its source even when gin's own message does not (a tokenizer error).
  for path in paths:
    with _naming(f"gin file {path}"):
      text = read_text(path)
      upgraded = upgrade(text, announce=not skip_unknown)
      if upgraded == text and not skip_unknown:
        gin.parse_config_file(path)
      else:  # obsolete names rewritten; a run folder's file may come from another version
        gin.parse_config(upgraded, skip_unknown=skip_unknown)
  for binding in bindings:
    with _naming(f"gin binding {binding!r} (--gin_bindings / --gin.NAME=VALUE)"):
      gin.parse_config(upgrade(binding, announce=True), skip_unknown=skip_unknown)


# Bindings earlier versions used, and what they are now (train()'s arguments became sections).
_MOVED = {
    "train.mixture_or_task_name": "DataConfig.mixture_or_task_name",
    "train.task_feature_lengths": "DataConfig.task_feature_lengths",
    "train.batch_size": "DataConfig.batch_size",
    "train.z_loss": "StepConfig.z_loss", "doremi.z_loss": "StepConfig.z_loss",
    "train.microbatches": "StepConfig.microbatches",
    "train.fsdp": "StepConfig.fsdp", "doremi.fsdp": "StepConfig.fsdp",
    "train.eval_period": "EvalConfig.period", "train.eval_steps": "EvalConfig.steps",
    "train.predict_examples": "EvalConfig.predict_examples",
    "train.log_period": "LoopConfig.log_period",
    "train.max_consecutive_skips": "LoopConfig.max_consecutive_skips",
    "doremi.max_consecutive_skips": "LoopConfig.max_consecutive_skips",
}
_RENAMED = ((re.compile(r"^Config\.remat = True$", re.M), "Config.remat_policy = 'full'"),
            (re.compile(r"^Config\.remat = False$", re.M), "Config.remat_policy = 'none'"))
_MOVED_RE = re.compile(r"^(\s*)(" + "|".join(re.escape(k) for k in _MOVED) + r")(?=\s*=)", re.M)
_announced: set[str] = set()


def upgrade(text: str, announce: bool = False) -> str:
  """A gin text with obsolete t5lite bindings rewritten to their current form; announce: say
  once per name which name replaced it."""
  for pattern, replacement in _RENAMED:
    text = pattern.sub(replacement, text)

  def moved(m: re.Match) -> str:
    old, new = m.group(2), _MOVED[m.group(2)]
    if announce and old not in _announced:
      _announced.add(old)
      print(f"t5lite: note: the gin binding {old} is now {new} (the old name still works)",
            file=sys.stderr, flush=True)
    return m.group(1) + new
  return _MOVED_RE.sub(moved, text)


# Configurables declared by modules that need seqio and TensorFlow (the `data` extra).
_DATA_EXTRA_NAMES = ("'register_all", "'register_mixture", "'register_user_task", "'doremi")


@contextlib.contextmanager
def _naming(source: str):
  """Turns gin's parse errors into a ValueError that starts with their source."""
  try:
    yield
  except (SyntaxError, tokenize.TokenError, ValueError, TypeError, NameError) as e:
    message = (f"{e.args[0]} (line {e.args[1][0]})" if isinstance(e, tokenize.TokenError)
               else str(e))
    if "No configurable matching" in message and "Sources" in message:  # a library caller
      message += (" (import the modules that declare t5lite's configurables first: "
                  "t5lite.cli.common.register_configurables())")
    if "No configurable matching" in message and any(n in message for n in _DATA_EXTRA_NAMES):
      if not tf_data_available():
        message += (f" (it is declared by seqio's task modules: install the `data` extra, "
                    f"{DATA_EXTRA}; a run from a built token cache does not need them)")
    if isinstance(e, SyntaxError) and e.lineno and "line" not in message:
      message += f" (line {e.lineno})"
    raise ValueError(f"{source}: {message}") from e


def _use_plain_file_readers() -> None:
  """Drops gin's Python-package resource reader: it treats `include 'runs/x.gin'` as package
  `runs` and crashes when the cwd holds a folder of that name (e.g. the demo's runs/ output)."""
  readers = gin.config._FILE_READERS  # pylint: disable=protected-access
  readers[:] = [r for r in readers if getattr(r[0], "__module__", "") != "gin.resource_reader"]


def query(selector: str, default: Any = None) -> Any:
  """A bound gin value (`train.batch_size`, or a macro as `%NAME`), `default` when unbound or
  REQUIRED. A `@fn()` reference is evaluated (e.g. the user's task registration, which returns
  the task name)."""
  try:
    value = gin.query_parameter(selector)
  except ValueError:
    return default
  if isinstance(value, gin.config.ConfigurableReference) and value.evaluate:
    value = value.scoped_configurable_fn()
  return default if value is gin.REQUIRED else value
