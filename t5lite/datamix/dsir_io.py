"""DSIR's files (`t5lite select`, through t5lite/files.py): its .npz stages, raw shards' lines and
documents, gzipped output shards, and the readers of its targets (JSONL / TSV / text / task)."""
from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from typing import Iterator, Sequence

import numpy as np

from t5lite import files

# What a truncated or corrupt shard raises while being read (gzip.BadGzipFile is an OSError).
READ_ERRORS = (OSError, EOFError, zlib.error, UnicodeDecodeError)


def save_npz(path: str, **arrays) -> None:
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  files.write_bytes(path, buf.getvalue())


def load_npz(path: str) -> dict:
  """The arrays of an .npz; 0-d arrays come back as Python scalars (str, int, float)."""
  with np.load(io.BytesIO(files.read_bytes(path))) as data:
    return {k: (v.item() if v.ndim == 0 else v) for k, v in data.items()}


def read_lines(path: str) -> Iterator[bytes]:
  """The lines of a file without their newline, gunzipped when the name ends in .gz."""
  for line in files.open_lines(path):
    yield line.rstrip(b"\r\n")


def gzip_lines(lines: Sequence[bytes]) -> bytes:
  buf = io.BytesIO()
  with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:  # mtime 0: the same bytes every run
    for line in lines:
      f.write(line + b"\n")
  return buf.getvalue()


def describe(error: BaseException) -> str:
  return f"{type(error).__name__}: {error}"


def parse_document(line: bytes, text_key: str = "text") -> tuple[str | None, str]:
  """(text, "") for a JSON object with a string `text_key`; (None, "bad_json" | "no_text") else."""
  try:
    doc = json.loads(line)
  except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    return None, "bad_json"
  text = doc.get(text_key) if isinstance(doc, dict) else None
  if not isinstance(text, str):
    return None, "no_text"
  return text, ""


def _json_texts(obj) -> list[str]:
  """A JSON line of a target: its "text", or both "inputs" and "targets"."""
  if not isinstance(obj, dict):
    return []
  if isinstance(obj.get("text"), str):
    return [obj["text"]]
  return [obj[k] for k in ("inputs", "targets") if isinstance(obj.get(k), str)]


def _file_texts(path: str, skipped: dict) -> Iterator[str]:
  name = path[:-3] if path.endswith(".gz") else path
  kind = os.path.splitext(name)[1].lower()
  for line in read_lines(path):
    text = line.decode("utf-8", errors="replace")
    if kind in (".jsonl", ".json"):
      try:
        texts = _json_texts(json.loads(text))
      except ValueError:
        texts = []
      skipped["lines"] += not texts  # not JSON, or no text / inputs / targets
      yield from texts
    elif kind == ".tsv":
      yield from (t for t in text.split("\t", 1) if t)
    elif text:
      yield text


def _task_texts(spec: str) -> Iterator[str]:
  """task:NAME[:SPLIT] -> the raw text of a registered seqio Task's source (default split train)."""
  from t5lite.data.tasks import registry  # pylint: disable=g-import-not-at-top  (TensorFlow)
  _, name, *rest = spec.split(":")
  split = rest[0] if rest else "train"
  task = registry.get_task_or_mixture(name)
  source = getattr(task, "source", None)
  if source is None:
    raise ValueError(f"--target {spec}: {name!r} is a mixture; give one of its tasks")
  if split not in source.splits:
    raise ValueError(f"--target {spec}: task {name!r} has splits {list(source.splits)}")
  for ex in source.get_dataset(split=split, shuffle=False).as_numpy_iterator():
    if "text" in ex:
      yield ex["text"].decode("utf-8")
    else:
      yield from (ex[k].decode("utf-8") for k in ("inputs", "targets") if k in ex)


def target_texts(specs: Sequence[str], skipped: dict) -> Iterator[str]:
  """The texts of every target: JSONL (text, or inputs + targets), TSV (input<TAB>target), plain
  text (a document per line), each a file pattern; or task:NAME[:SPLIT]. JSON lines without text
  are counted in skipped["lines"]."""
  for spec in specs:
    if spec.startswith("task:"):
      yield from _task_texts(spec)
      continue
    paths = files.glob(spec)
    if not paths:
      raise FileNotFoundError(f"no file matches the --target pattern {spec!r}")
    for path in paths:
      yield from _file_texts(path, skipped)
