"""Prune a corpus by perplexity (Marion et al. 2023, "When Less is More: Investigating Data Pruning
for Pretraining LLMs at Scale", arXiv 2309.04564): score every document with a trained t5lite run
and keep a fraction from the low, middle or high part of the score distribution (or a seeded
random fraction: the baseline).

Two passes over JSON-lines shards (allenai/c4's `{"text": ...}` records, gzipped or plain):
  score   each document's mean per-token loss, the log-likelihoods `t5lite score` computes
          (inference.score_tokens: batches of `batch_size` over the mesh, documents of similar
          length together); one part per input file, OUTPUT/work/scores/NNNNN.npz, written
          whole, so a rerun keeps the finished parts
  select  the global distribution decides which documents stay (by rank, so `keep` is exact);
          their lines, byte for byte, go to OUTPUT/c4-train.NNNNN-of-NNNNN.json.gz (as many
          shards as input files unless told), one score per document to OUTPUT/scores.jsonl.gz,
          and OUTPUT/summary.json, written last: a folder holding it is a finished prune.
OUTPUT/prune.json, written first, holds the settings and the model: a folder holding another
prune, or anything else, is refused.

Scored as a prefix LM, not by span corruption: the inputs are the document's first tokens, the
targets their continuation, so every scored token is predicted from all the text before it (the
paper's causal-LM perplexity, as near as an encoder-decoder gets) and nothing is drawn at random;
a fixed-seed span-corruption mask would score a random 15% of the tokens, each beside holes, and
another seed would rank the documents differently. The scorer should have seen prefix LM in
training (`*_prefix_lm` tasks): a span-corruption-only model never wrote plain continuations.
Plain Python rather than a datatrove step: the work is one model on one process's devices, and
selecting needs every score first; datatrove's workers would each load the model and compete for
the accelerator.
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import json
import math
import time
import zlib
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from t5lite import files
from t5lite.corpus import steps
from t5lite.serving import inference
from t5lite.store.run_dir import RunDir

MANIFEST = "prune.json"
MANIFEST_FORMAT = "t5lite prune 1"
SUMMARY = "summary.json"
SCORES = "scores.jsonl.gz"
WORK = "work"
SELECTIONS = ("low", "middle", "high", "random")
SPLITS = ("train", "validation")
JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
CHUNK_BATCHES = 8  # documents tokenized at once: 8 batches, sorted by length among themselves


@dataclasses.dataclass(frozen=True)
class Prune:
  """What a prune reads, how it scores and selects, and where it writes (see plan())."""
  inputs: tuple[str, ...]
  output: str
  keep: float
  select: str
  seed: int = 0
  inputs_length: int = 256
  targets_length: int = 256
  shards: int = 1
  split: str = "train"
  text_key: str = "text"

  def manifest(self, model: dict) -> dict:
    """What makes two prunes the same prune (resuming one must not mix another's scores in)."""
    return {"format": MANIFEST_FORMAT, "inputs": list(self.inputs), "model": model,
            "scoring": self.scoring(), "keep": self.keep, "select": self.select,
            "seed": self.seed, "shards": self.shards, "split": self.split,
            "text_key": self.text_key}

  def scoring(self) -> dict:
    return {"method": "prefix_lm", "inputs_length": self.inputs_length,
            "targets_length": self.targets_length}

  def shard_names(self) -> list[str]:
    name = steps.train_shard_name if self.split == "train" else steps.validation_shard_name
    return [name(i, self.shards) for i in range(self.shards)]


def plan(inputs: Sequence[str], output: str, keep: float, select: str, seed: int = 0,
         inputs_length: int = 256, targets_length: int = 256, shards: int = 0,
         split: str = "train", text_key: str = "text") -> Prune:
  """A Prune of the JSON-lines files matching `inputs` (patterns, local or gs://); every setting
  checked, and the output folder too, before a model is loaded. shards: 0 = one per input."""
  if not 0 < keep <= 1:
    raise ValueError(f"--keep {keep}: expected a fraction of the documents, 0 < keep <= 1")
  if select not in SELECTIONS:
    raise ValueError(f"--select {select!r}: expected one of {', '.join(SELECTIONS)}")
  if split not in SPLITS:
    raise ValueError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
  for flag, value in (("--inputs_length", inputs_length), ("--targets_length", targets_length)):
    if value < 2:
      raise ValueError(f"{flag} {value}: expected at least 2 (tokens, EOS included)")
  if shards < 0:
    raise ValueError(f"--shards {shards}: expected at least 1 (0: one per input file)")
  paths = sorted(dict.fromkeys(files.absolute(p) for p in files.glob_all(
      inputs, "JSON-lines shards to prune")))
  for path in paths:
    if not path.endswith(JSON_SUFFIXES):
      raise ValueError(f"input {path}: expected JSON lines ({', '.join(JSON_SUFFIXES)})")
  p = Prune(inputs=tuple(paths), output=files.absolute(output), keep=float(keep), select=select,
            seed=seed, inputs_length=inputs_length, targets_length=targets_length,
            shards=shards or len(paths), split=split, text_key=text_key)
  _check_output(p)
  return p


def check_model_dir(model_dir: str) -> None:
  """FileNotFoundError naming --model_dir unless it is a run folder with a finished checkpoint."""
  if not RunDir(model_dir).checkpoint_steps():
    what = "does not exist" if not files.exists(model_dir) else "has no checkpoints/<step>"
    raise FileNotFoundError(f"--model_dir {model_dir} {what} (expected a t5lite run folder that "
                            "`t5lite train` or `t5lite import-hf` wrote)")


def model_identity(run, vocabulary: Optional[str] = None) -> dict:
  """The loaded run as the manifest records it: folder, step, dtype and vocabulary."""
  vocab = run.require_vocabulary()
  if vocabulary:
    described = files.absolute(vocabulary)
  else:  # the run's own file, or its task's vocabulary
    described = vocab.describe() if hasattr(vocab, "describe") else repr(vocab)
  return {"model_dir": run.model_dir, "step": int(run.step), "dtype": run.config.dtype,
          "vocabulary": described}


# ----------------------------------------------------------------------------- the output folder


def _check_output(p: Prune) -> None:
  """ValueError for an output folder that holds something other than a prune."""
  if files.exists(files.join(p.output, MANIFEST)) or not files.listdir(p.output, missing_ok=True):
    return
  raise ValueError(f"output folder {p.output} is not empty and holds no {MANIFEST} (not a t5lite "
                   "prune): choose a new or empty --output")


def claim_output(p: Prune, model: dict) -> bool:
  """Writes the manifest into a new or empty output folder (False), or accepts a folder holding
  this same prune (True: resume); ValueError naming the settings that differ otherwise."""
  _check_output(p)
  path = files.join(p.output, MANIFEST)
  manifest = json.loads(json.dumps(p.manifest(model)))  # tuples as JSON gives them back
  differ = steps.manifest_difference(path, manifest)
  if differ is None:
    files.write_text(path, json.dumps(manifest, indent=1) + "\n")
    return False
  if differ:
    raise ValueError(f"output folder {p.output} holds another prune (its {MANIFEST} differs in: "
                     f"{', '.join(differ)}): choose a new --output, or delete that folder")
  return True


def part_path(output: str, index: int) -> str:
  return files.join(output, WORK, "scores", f"{index:05d}.npz")


# ----------------------------------------------------------------------------- reading documents


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
  """(line number, raw line) of each non-empty line (numbered as files.iter_jsonl numbers them);
  an unreadable or truncated file is a ValueError naming it."""
  try:
    for n, raw in enumerate(files.open_lines(path), 1):
      if raw.strip():
        yield n, raw
  except (OSError, EOFError, zlib.error) as e:
    raise ValueError(f"input {path}: unreadable ({type(e).__name__}: {e})") from None


def read_texts(path: str, text_key: str = "text") -> Iterator[tuple[int, str]]:
  """(line number, text) of each record; a line that is not a JSON object with a string
  `text_key` is a ValueError naming file:line."""
  for n, raw in _lines(path):
    row = files.parse_jsonl_line(raw, f"{path}:{n}", (text_key,))
    if not isinstance(row[text_key], str):
      raise ValueError(f"{path}:{n}: {text_key!r} is {type(row[text_key]).__name__}, expected a "
                       "string")
    yield n, row[text_key]


# ----------------------------------------------------------------------------- scoring


def prefix_split(ids: Sequence[int], inputs_length: int, targets_length: int,
                 eos_id: int) -> tuple[list[int], list[int]]:
  """A document's tokens (no EOS) as prefix-LM (inputs, targets), each ending in EOS (as `t5lite
  score` gives them): the targets are the up to targets_length - 1 tokens after the first
  min(inputs_length - 1, max(n // 2, n - (targets_length - 1))), so a long document fills both
  lengths and a short one is split in half."""
  n = len(ids)
  cut = min(inputs_length - 1, max(n // 2, n - (targets_length - 1)))
  return list(ids[:cut]) + [eos_id], list(ids[cut:cut + targets_length - 1]) + [eos_id]


def score_file(run, path: str, p: Prune, batch_size: int = 32) -> dict[str, np.ndarray]:
  """{line, inputs_tokens, tokens, loss} of every document of `path`: loss is the mean negative
  log-likelihood per target token (EOS included), tokens the number of target tokens."""
  vocab = run.require_vocabulary()
  chunk = max(1, batch_size) * CHUNK_BATCHES
  out: dict[str, list] = {"line": [], "inputs_tokens": [], "tokens": [], "loss": []}
  pending: list[tuple[int, list[int], list[int]]] = []

  def flush():
    order = sorted(range(len(pending)), key=lambda i: (len(pending[i][2]), len(pending[i][1])),
                   reverse=True)  # similar lengths share a batch: less padding, fewer shapes
    scores = inference.score_tokens(run, [pending[i][1] for i in order],
                                    [pending[i][2] for i in order], batch_size)
    loss = [0.0] * len(pending)
    for i, s in zip(order, scores):
      loss[i] = -float(np.sum(s, dtype=np.float64)) / len(pending[i][2])
    for (line, ins, tgs), value in zip(pending, loss):
      out["line"].append(line)
      out["inputs_tokens"].append(len(ins))
      out["tokens"].append(len(tgs))
      out["loss"].append(value)
    pending.clear()

  for line, text in read_texts(path, p.text_key):
    pending.append((line, *prefix_split(vocab.encode(text), p.inputs_length, p.targets_length,
                                        vocab.eos_id)))
    if len(pending) == chunk:
      flush()
  if pending:
    flush()
  return {"line": np.asarray(out["line"], np.int64),
          "inputs_tokens": np.asarray(out["inputs_tokens"], np.int32),
          "tokens": np.asarray(out["tokens"], np.int32),
          "loss": np.asarray(out["loss"], np.float64)}


def _write_part(path: str, part: dict[str, np.ndarray]) -> None:
  buffer = io.BytesIO()
  np.savez(buffer, **part)
  files.write_bytes(path, buffer.getvalue())


def _read_part(path: str) -> dict[str, np.ndarray]:
  with np.load(io.BytesIO(files.read_bytes(path))) as z:
    return {k: z[k] for k in z.files}


# ----------------------------------------------------------------------------- selecting


def keep_count(documents: int, keep: float) -> int:
  """round(keep * documents), halves up, and at least one document of a non-empty corpus."""
  return min(documents, max(1, math.floor(keep * documents + 0.5))) if documents else 0


def select(losses: np.ndarray, keep: float, how: str, seed: int = 0) -> np.ndarray:
  """Which documents stay ([n] bool): keep_count(n, keep) of them by rank of loss (low: the
  lowest; high: the highest; middle: as many dropped below as above, one more above when odd),
  ties to the earlier document; random: a seeded sample of the same size."""
  losses = np.asarray(losses, np.float64)
  if how not in SELECTIONS:
    raise ValueError(f"select {how!r}: expected one of {', '.join(SELECTIONS)}")
  if not 0 < keep <= 1:
    raise ValueError(f"keep {keep}: expected 0 < keep <= 1")
  bad = np.flatnonzero(~np.isfinite(losses))
  if bad.size:
    raise ValueError(f"document {int(bad[0])} scored {losses[bad[0]]} (of {bad.size} not finite): "
                     "the scoring model's outputs are not finite")
  n = len(losses)
  k = keep_count(n, keep)
  if how == "random":
    chosen = np.random.default_rng(seed).permutation(n)[:k]
  elif how == "high":
    chosen = np.argsort(-losses, kind="stable")[:k]
  else:
    start = 0 if how == "low" else (n - k) // 2
    chosen = np.argsort(losses, kind="stable")[start:start + k]
  kept = np.zeros(n, bool)
  kept[chosen] = True
  return kept


def thresholds(losses: np.ndarray, kept: np.ndarray, how: str) -> dict:
  """The loss range the selection kept: a bound where it cut the distribution (None elsewhere)."""
  if how == "random" or not kept.any():
    return {"lower": None, "upper": None}
  return {"lower": float(losses[kept].min()) if how in ("middle", "high") else None,
          "upper": float(losses[kept].max()) if how in ("low", "middle") else None}


# ----------------------------------------------------------------------------- writing


def _write_shards(p: Prune, kept_by_file: Sequence[np.ndarray],
                  lines_by_file: Sequence[np.ndarray]) -> list[int]:
  """The kept documents' lines, in input order, into p.shards shards of near-equal counts (each
  written whole); the count of each."""
  total = int(sum(k.sum() for k in kept_by_file))
  counts = [len(c) for c in np.array_split(np.arange(total), p.shards)]

  def kept_lines() -> Iterator[bytes]:
    for path, kept, lines in zip(p.inputs, kept_by_file, lines_by_file):
      keep = set(lines[kept].tolist())
      for n, raw in _lines(path):
        if n in keep:
          yield raw if raw.endswith(b"\n") else raw + b"\n"

  source = kept_lines()
  for name, count in zip(p.shard_names(), counts):
    path = files.join(p.output, name)
    with files.atomic_write(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb",
                                                               mtime=0) as f:
      for _ in range(count):
        f.write(next(source))
  return counts


def _write_scores(p: Prune, parts: Sequence[dict], kept_by_file: Sequence[np.ndarray]) -> None:
  with files.atomic_write(files.join(p.output, SCORES), "wb") as raw, gzip.GzipFile(
      fileobj=raw, mode="wb", mtime=0) as f:
    for path, part, kept in zip(p.inputs, parts, kept_by_file):
      for line, tokens, loss, k in zip(part["line"].tolist(), part["tokens"].tolist(),
                                       part["loss"].tolist(), kept.tolist()):
        row = {"file": path, "line": line, "tokens": tokens, "loss": loss,
               "perplexity": math.exp(min(loss, 700.0)), "kept": k}
        f.write((json.dumps(row) + "\n").encode("utf-8"))


def _distribution(losses: np.ndarray) -> dict:
  if not losses.size:
    return {}
  q = np.percentile(losses, [0, 10, 25, 50, 75, 90, 100])
  return {"mean": float(losses.mean()), **{k: float(v) for k, v in zip(
      ("min", "p10", "p25", "p50", "p75", "p90", "max"), q)}}


def load_summary(output: str) -> Optional[dict]:
  path = files.join(files.absolute(output), SUMMARY)
  return json.loads(files.read_text(path)) if files.exists(path) else None


def prune(p: Prune, run, vocabulary: Optional[str] = None, batch_size: int = 32,
          log: Callable[[str], Any] = print) -> dict:
  """Scores (or keeps the finished scores of) every input file, selects, writes; the summary.
  A finished prune is returned as it is."""
  import jax  # pylint: disable=g-import-not-at-top  (loaded with the run already)
  if jax.process_count() > 1:
    raise ValueError("t5lite corpus prune runs in one process (its devices split each batch); "
                     f"this is one of {jax.process_count()}")
  model = model_identity(run, vocabulary)
  resumed = claim_output(p, model)
  done = load_summary(p.output)
  if done is not None:
    log(f"{p.output}: finished already ({done['kept']} of {done['documents']} documents kept)")
    return done
  for name in [SCORES, SUMMARY] + p.shard_names():
    files.remove_stale_temporaries(files.join(p.output, name))
  started = time.perf_counter()
  parts = []
  for index, path in enumerate(p.inputs):
    part = part_path(p.output, index)
    if resumed and files.exists(part):
      parts.append(_read_part(part))
      log(f"[{index + 1}/{len(p.inputs)}] {path}: scored before")
      continue
    t0 = time.perf_counter()
    parts.append(score_file(run, path, p, batch_size))
    _write_part(part, parts[-1])
    seconds = time.perf_counter() - t0
    log(f"[{index + 1}/{len(p.inputs)}] {path}: {len(parts[-1]['loss'])} documents, "
        f"{len(parts[-1]['loss']) / max(seconds, 1e-9):.1f} documents/s")
  score_seconds = time.perf_counter() - started

  started = time.perf_counter()
  losses = np.concatenate([part["loss"] for part in parts]) if parts else np.zeros(0)
  kept = select(losses, p.keep, p.select, p.seed)
  bounds = np.cumsum([0] + [len(part["loss"]) for part in parts])
  kept_by_file = [kept[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
  counts = _write_shards(p, kept_by_file, [part["line"] for part in parts])
  _write_scores(p, parts, kept_by_file)
  tokens = np.concatenate([part["tokens"] for part in parts]) if parts else np.zeros(0, np.int32)
  summary = {
      "format": MANIFEST_FORMAT, "documents": int(losses.size), "kept": int(kept.sum()),
      "keep": p.keep, "select": p.select, "seed": p.seed if p.select == "random" else None,
      "thresholds": thresholds(losses, kept, p.select), "loss": _distribution(losses),
      "kept_loss": _distribution(losses[kept]),
      "tokens_scored": int(tokens.sum()), "kept_tokens_scored": int(tokens[kept].sum()),
      "model": model, "scoring": p.scoring(), "inputs": list(p.inputs),
      "shards": dict(zip(p.shard_names(), counts)), "scores": SCORES,
      "seconds": {"score": round(score_seconds, 2),
                  "select_and_write": round(time.perf_counter() - started, 2)}}
  files.write_text(files.join(p.output, SUMMARY), json.dumps(summary, indent=1) + "\n")
  files.remove_tree(files.join(p.output, WORK))
  return summary


def format_summary(summary: dict) -> str:
  """The summary as a few lines for the terminal."""
  loss, kept = summary["loss"], summary["kept_loss"]
  t = summary["thresholds"]
  bounds = " and ".join(f"{k} {v:.4f}" for k, v in t.items() if v is not None) or "none (random)"
  return "\n".join([
      f"documents {summary['documents']}, kept {summary['kept']} ({summary['select']}, keep "
      f"{summary['keep']:g})",
      f"loss per token: all mean {loss.get('mean', float('nan')):.4f} (p10 "
      f"{loss.get('p10', float('nan')):.4f}, p50 {loss.get('p50', float('nan')):.4f}, p90 "
      f"{loss.get('p90', float('nan')):.4f}); kept mean {kept.get('mean', float('nan')):.4f}",
      f"thresholds: {bounds}",
      f"scored in {summary['seconds']['score']:.1f} s, selected and written in "
      f"{summary['seconds']['select_and_write']:.1f} s"])
