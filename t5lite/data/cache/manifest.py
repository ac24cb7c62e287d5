"""What the token cache's feed needs to know of each task of a task or mixture (CachedTask: name,
rate, objective, vocabulary, cache key), and its manifest: the same, written by `t5lite cache`
beside the caches (DATA_CACHE_DIR/manifests/<name>.<split>.json, with a copy of each vocabulary's
files), so a machine without seqio and TensorFlow trains from the cache alone.

keys.py derives CachedTasks from the registered seqio tasks; read() derives them from a manifest.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any, Mapping, Optional, Sequence

from t5lite import files
from t5lite.data.cache.format import CacheKey, cache_command
from t5lite.data.objectives.registry import Objective, objective

MANIFESTS = "manifests"
VERSION = 1
_GPT2_FILES = ("encoder.json", "vocab.bpe", "vocab.json", "merges.txt", "dict.txt")


@dataclasses.dataclass(frozen=True)
class CachedTask:
  """One task of a stream: `rate` is its mixture rate (1 for a task alone); `key` the key of its
  cache of the split being read; `vocabulary` has vocab_size, eos_id, extra_ids and encode."""
  name: str
  rate: float
  objective: Objective
  vocabulary: Any
  key: CacheKey

  def numpy(self, sequence_length: Mapping[str, int]):
    """The objective's NumPy implementation at these lengths; errors name the task."""
    try:
      return self.objective.numpy(sequence_length, self.vocabulary)
    except ValueError as e:
      raise ValueError(f"task {self.name!r}: {e}") from e


def vocabulary_fingerprint(vocabulary: Any) -> dict[str, Any]:
  """What identifies a vocabulary's ids: the SentencePiece model's bytes, or GPT-2 BPE's files."""
  digest = hashlib.sha256()
  if hasattr(vocabulary, "sp_model"):  # seqio's SentencePieceVocabulary or SentencePieceVocab
    kind = "sentencepiece"
    digest.update(vocabulary.sp_model)  # serialized model, extra ids included
  elif hasattr(vocabulary, "bpe_dir"):  # GPT2BPE, or its seqio adapter
    kind = "gpt2_bpe"
    vocabulary.vocab_size  # pylint: disable=pointless-statement  # loads it: missing files raise
    for name in _GPT2_FILES:
      if (vocabulary.bpe_dir / name).exists():
        digest.update(name.encode() + b"\0" + (vocabulary.bpe_dir / name).read_bytes())
  else:
    raise ValueError(f"cannot fingerprint vocabulary {vocabulary!r}: the cache supports "
                     "SentencePiece and GPT-2 BPE vocabularies")
  return {"type": kind, "size": int(vocabulary.vocab_size), "sha256": digest.hexdigest()}


def path(data_cache_dir: str, name: str, split: str) -> str:
  """The manifest of task or mixture `name`'s split."""
  safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
  return os.path.join(data_cache_dir, MANIFESTS, f"{safe}.{split}.json")


def _vocabulary_files(vocabulary: Any) -> tuple[dict, dict[str, bytes]]:
  """(how to rebuild it, its files' bytes) for a SentencePiece or GPT-2 BPE vocabulary."""
  if hasattr(vocabulary, "sp_model"):
    model = vocabulary.sentencepiece_model_file  # seqio's or SentencePieceVocab
    return ({"type": "sentencepiece", "extra_ids": int(vocabulary.extra_ids)},
            {"spiece.model": files.read_bytes(model)})
  bpe_dir = vocabulary.bpe_dir
  found = {n: (bpe_dir / n).read_bytes() for n in _GPT2_FILES if (bpe_dir / n).exists()}
  return {"type": "gpt2_bpe"}, found


def write(data_cache_dir: str, name: str, split: str,
          tasks: Sequence[CachedTask]) -> Optional[str]:
  """Writes the manifest of `name`'s split (and its vocabularies' files); its path, or None when
  the manifest there already says the same."""
  entries, folder = [], os.path.join(data_cache_dir, MANIFESTS)
  for task in tasks:
    how, blobs = _vocabulary_files(task.vocabulary)
    vocab_dir = os.path.join(folder, "vocabularies", task.key.vocabulary["sha256"][:16])
    for filename, blob in blobs.items():
      target = os.path.join(vocab_dir, filename)
      if not files.exists(target):
        files.write_bytes(target, blob)
    entries.append({"name": task.name, "rate": float(task.rate),
                    "objective": {"name": task.objective.name,
                                  "params": dict(task.objective.params)},
                    "vocabulary": {**how, "dir": os.path.relpath(vocab_dir, folder)},
                    "key": task.key.as_json()})
  target = path(data_cache_dir, name, split)
  text = json.dumps({"version": VERSION, "name": name, "split": split, "tasks": entries},
                    indent=1, sort_keys=True) + "\n"
  if files.exists(target) and files.read_text(target) == text:
    return None
  files.write_text(target, text)
  return target


def _vocabulary(spec: Mapping[str, Any], folder: str) -> Any:
  # pylint: disable=g-import-not-at-top  (each loads its tokenizer library)
  directory = os.path.join(folder, spec["dir"])
  if spec["type"] == "sentencepiece":
    from t5lite.data.vocab.sentencepiece import SentencePieceVocab
    return SentencePieceVocab(os.path.join(directory, "spiece.model"), spec["extra_ids"])
  if spec["type"] == "gpt2_bpe":
    from t5lite.data.vocab.gpt2 import GPT2BPE
    return GPT2BPE(directory)
  raise ValueError(f"unknown vocabulary type {spec['type']!r} in a manifest under {folder}")


def read(data_cache_dir: str, name: str, split: str) -> list[CachedTask]:
  """The CachedTasks of `name`'s split from its manifest; a FileNotFoundError naming the command
  that writes it, a ValueError if a copied vocabulary is not the one the cache was built with."""
  source = path(data_cache_dir, name, split)
  if not files.exists(source):
    raise FileNotFoundError(
        f"no manifest of {name!r} split {split!r} in the token cache: expected {source}; "
        f"`{cache_command(name, data_cache_dir)}` writes it (on a machine with the `data` "
        "extra; a cache already built is not rebuilt)")
  manifest = json.loads(files.read_text(source))
  if manifest.get("version") != VERSION:
    raise ValueError(f"{source} has manifest version {manifest.get('version')}, this t5lite "
                     f"reads {VERSION}; rewrite it with `{cache_command(name, data_cache_dir)}`")
  folder, out = os.path.dirname(source), []
  for entry in manifest["tasks"]:
    key = entry["key"]
    vocabulary = _vocabulary(entry["vocabulary"], folder)
    if vocabulary_fingerprint(vocabulary) != key["vocabulary"]:
      raise ValueError(f"{source}: the vocabulary copied for task {entry['name']!r} is not the "
                       f"one its cache was built with ({key['vocabulary']})")
    out.append(CachedTask(entry["name"], float(entry["rate"]),
                          objective(entry["objective"]["name"], **entry["objective"]["params"]),
                          vocabulary,
                          CacheKey(key["source"], key["vocabulary"], tuple(key["steps"]),
                                   key["feature"])))
  return out
