"""The embedded default corpus: Python's own documentation, as allenai/c4-style shards + a vocab.

Text that ships with every Python install (the reference-manual topics in `pydoc_data.topics`
and the docstrings of a fixed list of pure stdlib modules), written once under
$T5LITE_CACHE (default ~/.cache/t5lite)/demo/ with a SentencePiece vocab trained on it.
The content depends only on the Python version. Building is idempotent and safe when several
processes build at once (a lock, then an atomic directory rename).
"""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import importlib
import inspect
import json
import os
import shutil
import sys
import tempfile
import warnings
from typing import Iterator


NUM_TRAIN_SHARDS = 4
VALIDATION_EVERY = 20  # every 20th document goes to validation
VOCAB_SIZE = 3000
TIMESTAMP = "2019-04-25T00:00:00Z"  # C4's crawl month; fixed so shards are deterministic
VOCAB_FILE = "spiece.model"

# Pure-Python (or documentation-rich) stdlib modules, sorted; importing them has no side effects.
MODULES = (
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "cmd", "codecs",
    "collections", "concurrent.futures", "configparser", "contextlib", "copy", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "dis", "email", "enum", "filecmp",
    "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip",
    "hashlib", "heapq", "hmac", "html", "html.parser", "http", "http.client", "http.cookies",
    "imaplib", "inspect", "io", "ipaddress", "itertools", "json", "keyword", "linecache",
    "locale", "logging", "lzma", "mailbox", "math", "mimetypes", "numbers", "operator",
    "optparse", "os", "pathlib", "pickle", "pickletools", "platform", "plistlib", "poplib",
    "pprint", "queue", "quopri", "random", "re", "sched", "secrets", "selectors", "shelve",
    "shlex", "shutil", "smtplib", "socket", "socketserver", "statistics", "string",
    "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit",
    "tokenize", "trace", "traceback", "types", "typing", "unittest", "urllib.parse",
    "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom",
    "xml.etree.ElementTree", "zipfile", "zoneinfo",
)


@dataclasses.dataclass(frozen=True)
class DemoAssets:
  train_pattern: str
  validation_pattern: str
  vocab_path: str


def cache_dir() -> str:
  return os.path.join(
      os.environ.get("T5LITE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "t5lite"),
      "demo")


def _paths(root: str) -> DemoAssets:
  return DemoAssets(
      train_pattern=os.path.join(root, f"c4-train.*-of-{NUM_TRAIN_SHARDS:05d}.json.gz"),
      validation_pattern=os.path.join(root, "c4-validation.*-of-00001.json.gz"),
      vocab_path=os.path.join(root, VOCAB_FILE))


def _module_text(name: str) -> str:
  """The module docstring then the docstrings of its own public classes, functions and methods."""
  module = importlib.import_module(name)
  with warnings.catch_warnings():  # e.g. typing.io's deprecation on attribute access
    warnings.simplefilter("ignore")
    return _docstrings(name, module)


def _docstrings(name, module) -> str:
  parts = [f"{name}\n\n{inspect.cleandoc(module.__doc__ or '')}"]
  for attr in sorted(vars(module)):
    obj = vars(module)[attr]
    if attr.startswith("_") or getattr(obj, "__module__", None) != name:
      continue
    if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
      continue
    if obj.__doc__:
      parts.append(f"{attr}\n{inspect.cleandoc(obj.__doc__)}")
    if inspect.isclass(obj):
      for meth in sorted(vars(obj)):
        fn = vars(obj)[meth]
        if not meth.startswith("_") and inspect.isfunction(fn) and fn.__doc__:
          parts.append(f"{attr}.{meth}\n{inspect.cleandoc(fn.__doc__)}")
  return "\n\n".join(p.strip() for p in parts if p.strip())


def documents() -> Iterator[dict]:
  """The corpus in a fixed order: reference-manual topics, then module docstrings."""
  from pydoc_data import topics  # pylint: disable=import-outside-toplevel

  version = f"{sys.version_info.major}.{sys.version_info.minor}"
  for name in sorted(topics.topics):
    yield {"text": topics.topics[name].strip(), "timestamp": TIMESTAMP,
           "url": f"https://docs.python.org/{version}/reference/#{name}"}
  for name in MODULES:
    try:
      text = _module_text(name)
    except ImportError:  # a module absent from this build of Python
      continue
    yield {"text": text, "timestamp": TIMESTAMP,
           "url": f"https://docs.python.org/{version}/library/{name}.html"}


def _write_shard(path: str, docs: list[dict]) -> None:
  # mtime=0 keeps the gzip bytes identical across builds.
  with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
    for doc in docs:
      f.write((json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8"))


def _build(root: str) -> None:
  """Writes shards and vocab into `root` (a fresh directory)."""
  from t5lite.data.vocab import sentencepiece as vocab  # pylint: disable=import-outside-toplevel

  docs = [d for d in documents() if d["text"]]
  validation = docs[VALIDATION_EVERY - 1::VALIDATION_EVERY]
  train = [d for i, d in enumerate(docs) if (i + 1) % VALIDATION_EVERY]
  for k in range(NUM_TRAIN_SHARDS):
    _write_shard(os.path.join(root, f"c4-train.{k:05d}-of-{NUM_TRAIN_SHARDS:05d}.json.gz"),
                 train[k::NUM_TRAIN_SHARDS])
  _write_shard(os.path.join(root, "c4-validation.00000-of-00001.json.gz"), validation)
  vocab.train_vocabulary([os.path.join(root, "c4-train.*.json.gz")],
                         os.path.join(root, VOCAB_FILE), vocab_size=VOCAB_SIZE,
                         character_coverage=1.0, num_threads=1, seed=0)


@contextlib.contextmanager
def _lock(path: str):
  """An exclusive advisory file lock (no-op where fcntl is missing)."""
  try:
    import fcntl  # pylint: disable=import-outside-toplevel
  except ImportError:
    yield
    return
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def vocab_path() -> str:
  """Where the demo vocabulary is (or will be, once demo_assets() has built it)."""
  return _paths(cache_dir()).vocab_path


def demo_assets() -> DemoAssets:
  """Paths of the demo shards and vocab, building them on first use (~10 s)."""
  root = cache_dir()
  assets = _paths(root)
  if os.path.exists(assets.vocab_path):  # the vocab is written last: its presence means done
    return assets
  parent = os.path.dirname(root)
  os.makedirs(parent, exist_ok=True)
  with _lock(os.path.join(parent, ".demo.lock")):
    if os.path.exists(assets.vocab_path):  # another process built it while we waited
      return assets
    tmp = tempfile.mkdtemp(prefix=".demo-build-", dir=parent)
    try:
      _build(tmp)
      if os.path.exists(root):  # a partial folder from an interrupted build
        shutil.rmtree(root)
      os.replace(tmp, root)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return assets
