"""DSIR data selection (Xie et al., 2023, "Data Selection for Language Models via Importance
Resampling"): pick the raw documents that look like a target corpus in hashed n-gram space.

    select(plan): raw allenai/c4-style JSON shards (local or gs://, .gz or not) + target text
      -> OUTPUT/selected.SSSSS-of-NNNNN.json.gz  the selected lines of raw shard S, verbatim
         OUTPUT/weights/selected.SSSSS-of-NNNNN.npz  their line numbers in S and log weights
         OUTPUT/report.json  counts, KL reduction (DSIR and random), top features

Method (the paper's, with the features and estimator of its authors' `data-selection` package):
hashed unigram + bigram counts (ngram_features.py), one bag-of-n-grams model per side (raw fitted
on a sample, `fit_ngrams`, target on all of it), log importance weight log p_target(x) -
log p_raw(x), then k documents drawn without replacement with probability proportional to the
weights by the Gumbel top-k trick (the k largest log w + Gumbel noise). Documents shorter than
`min_words` words are not eligible (the package's min_example_length=100).

Length (`chunk_words`, default 128): log w sums over a document's n-grams and a typical raw n-gram
has a negative log ratio, so on whole documents of mixed length the weight mostly measures
shortness (benchmarks/bench_selection.py shows it on the C4 sample). The paper ran DSIR on the
Pile cut into 128-word chunks (its repository's preprocessing/reformat_and_chunk_data.py), where
that cannot happen. To keep C4 documents whole, they are sampled by the weight of a 128-word chunk
like them, log w * 128 / words; chunk_words=0 samples by the whole-document log w, as the package
does. The stored weights are log w.

What is taken from `data-selection==1.0.3` and what differs (and why):
- Same: tokenizer (its WordPunctTokenizer regex), n-gram order, bucket estimator with its 1e-8,
  raw-fit budget semantics (stop a shard after the document that passes its share), min length.
  With hash="sha256" the features, log ratios, log weights and top-k selection equal the
  package's (tests/test_selection.py).
- Default hash crc32 + numpy mixing instead of one Python sha256 per n-gram: several times faster
  (benchmarks/bench_selection.py); any stable hash gives the paper's hashed n-gram features.
- Reads gz and gs:// shards (tf.io.gfile only for URLs; the package reads local plain jsonl) and
  writes C4-style json.gz shards that t5lite's c4_json tasks read directly.
- Seeded: the package draws its Gumbel noise from the unseeded global np.random; here the noise of
  line i of shard s is a pure function of (seed, s, i), so reruns and hosts agree.
- Restartable and multi-host: every per-shard result is a file, written atomically and skipped
  when present; `--shard I/N` gives host I the raw shards s with s % N == I.

Files under OUTPUT/work/ (kept for restarts): plan.json (what the fits depend on; a rerun with
other such settings is refused), fit/raw.SSSSS.npz (bucket counts of a shard's first
fit_ngrams / num_shards n-grams), fit/target.npz, model.npz (both models + log ratios),
scores/SSSSS.npz (log weight and word count of every line), written/SSSSS.npz (the selection
settings it was written for + bucket counts of the shard's DSIR and random picks). A rerun with
other selection settings (num_docs, seed, ...) keeps the fits and scores and rewrites the shards.

Multi-host: run the same command on every host with --shard I/N. Each stage needs the previous
stage's files from all hosts: run `--stage fit`, `--stage score`, `--stage write` as three rounds
on all hosts, or one round with --wait_s (a host waits that long for the others' files, then fails
naming what is missing). Every host computes the same global top-k from all score files and
writes only its own shards' selections. With --stage all, host 0 then writes report.json; after
stage rounds, run `--stage report` once (any host).

KL reduction (the paper's data metric, as we read its definition; here on this featurizer's
bucket distributions):
    KL reduction = KL(p_target || q_raw) - KL(p_target || p_selected)
with p_target the target's bucket distribution, q_raw the raw model (the baseline: what random
selection would give) and p_selected the bucket distribution of the selected documents; the paper
averages over its targets, here there is one. KL(p||q) = sum_j p_j log(p_j / q_j) with q add-one
smoothed (ngram_features.kl_divergence says why). The report gives it for the DSIR selection and
for a uniformly random selection of the same size from the same eligible documents, and
dsir_vs_random = KL(p_target || p_random) - KL(p_target || p_dsir).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import time
from typing import Callable, Optional, Sequence

import numpy as np

from t5lite import files
from t5lite.datamix import dsir_features as nf
from t5lite.datamix import dsir_io as sio

STAGES = ("fit", "score", "write", "report")
AUTO_FIT_NGRAMS_PER_BUCKET = 100_000  # the package's num_tokens_to_fit="auto": 100k x buckets
RAW_EXAMPLE_SHARDS = 4  # the first raw shards also record bucket -> n-gram examples
EXAMPLE_NGRAMS = 200_000  # n-grams per shard (and of the target) kept for those examples


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything one `t5lite select` run depends on."""
  raw_files: tuple[str, ...]
  targets: tuple[str, ...]
  output: str
  num_docs: int
  featurizer: nf.Featurizer = nf.Featurizer()
  fit_ngrams: Optional[int] = None  # raw n-grams to fit on over all shards; None = all
  text_key: str = "text"
  seed: int = 0
  min_words: int = 100
  chunk_words: int = 128  # sample by the log weight of a chunk this long (0: whole document)
  greedy: bool = False  # the k largest weights (the package's top_k=True), no sampling
  write_random: bool = False  # also write the random baseline under OUTPUT/random/
  shard: tuple[int, int] = (0, 1)
  workers: int = 1

  def path(self, *parts: str) -> str:
    return os.path.join(self.output, *parts)

  def model_settings(self) -> dict:
    """What the fit and score files depend on (a rerun must match)."""
    return {"raw_files": list(self.raw_files), "targets": list(self.targets),
            "featurizer": dataclasses.asdict(self.featurizer), "fit_ngrams": self.fit_ngrams,
            "text_key": self.text_key}

  def selection_settings(self) -> dict:
    """What the write stage depends on (may change between reruns; shards are then rewritten)."""
    return {"num_docs": self.num_docs, "seed": self.seed, "min_words": self.min_words,
            "chunk_words": self.chunk_words, "greedy": self.greedy,
            "write_random": self.write_random}

  def sampling_log_weight(self, score: dict) -> np.ndarray:
    """float64 [lines]: the log weight the selection samples by (see chunk_words above)."""
    log_weight = score["log_weight"].astype(np.float64)
    if not self.chunk_words:
      return log_weight
    return log_weight * (self.chunk_words / np.maximum(score["n_words"], 1))

  def mine(self) -> list[int]:
    i, n = self.shard
    return list(range(i, len(self.raw_files), n))

  def shard_name(self, s: int) -> str:
    return f"selected.{s:05d}-of-{len(self.raw_files):05d}"


def make_plan(raw: Sequence[str], targets: Sequence[str], output: str, num_docs: int,
              fit_ngrams: int | str = "auto", **kwargs) -> Plan:
  """Resolves the raw patterns (sorted, each must match) and checks the settings."""
  raw_files = []
  for pattern in raw:
    matched = files.glob(pattern)
    if not matched:
      raise FileNotFoundError(f"no file matches the --raw pattern {pattern!r}")
    raw_files.extend(matched)
  if len(set(raw_files)) != len(raw_files):
    raise ValueError("the --raw patterns match some files twice")
  if not targets:
    raise ValueError("no --target given: a JSONL / TSV / text file (pattern) or task:NAME")
  if num_docs < 1:
    raise ValueError(f"--num_docs must be >= 1, got {num_docs}")
  featurizer = kwargs.pop("featurizer", nf.Featurizer())
  if fit_ngrams == "auto":
    fit_ngrams = AUTO_FIT_NGRAMS_PER_BUCKET * featurizer.num_buckets
  elif fit_ngrams == "all":
    fit_ngrams = None
  i, n = kwargs.get("shard", (0, 1))
  if not 0 <= i < n:
    raise ValueError(f"--shard I/N needs 0 <= I < N, got {i}/{n}")
  return Plan(tuple(raw_files), tuple(targets), output, num_docs, featurizer,
              None if fit_ngrams is None else int(fit_ngrams), **kwargs)


# ---- per-shard jobs (module-level: they run in worker processes) ----

def fit_raw_shard(plan: Plan, s: int) -> None:
  """Bucket counts of shard s's first fit_ngrams / num_shards n-grams -> work/fit/raw.s.npz."""
  f = plan.featurizer
  budget = None if plan.fit_ngrams is None else plan.fit_ngrams // len(plan.raw_files)
  counts = np.zeros(f.num_buckets, np.int64)
  examples = nf.BucketExamples(f, EXAMPLE_NGRAMS if s < RAW_EXAMPLE_SHARDS else 0)
  docs = ngrams = 0
  error = ""
  try:
    for line in sio.read_lines(plan.raw_files[s]):
      text, _ = sio.parse_document(line, plan.text_key)
      if text is None:
        continue
      words = f.words(text)
      buckets = f.buckets(words)
      counts += np.bincount(buckets, minlength=f.num_buckets)
      examples.add(words, buckets)
      docs, ngrams = docs + 1, ngrams + len(buckets)
      if budget is not None and ngrams > budget:
        break
  except sio.READ_ERRORS as e:  # a corrupt shard: reported by the score stage, not fitted on
    counts[:], docs, ngrams, error = 0, 0, 0, sio.describe(e)
  sio.save_npz(plan.path("work", "fit", f"raw.{s:05d}.npz"), counts=counts, docs=docs,
               ngrams=ngrams, error=error, **examples.top())


def score_shard(plan: Plan, s: int, ratio: np.ndarray) -> None:
  """The log importance weight and word count of every line of shard s -> work/scores/s.npz.
  Lines that are not JSON or have no text get word count -1 (never selected)."""
  f = plan.featurizer
  weights, n_words = [], []
  problems = {"bad_json": 0, "no_text": 0}
  error = ""
  try:
    for line in sio.read_lines(plan.raw_files[s]):
      text, problem = sio.parse_document(line, plan.text_key)
      if text is None:
        problems[problem] += 1
        weights.append(0.0)
        n_words.append(-1)
        continue
      words = f.words(text)
      weights.append(ratio[f.buckets(words)].sum())
      n_words.append(len(words))
  except sio.READ_ERRORS as e:
    weights, n_words, error = [], [], sio.describe(e)
  sio.save_npz(plan.path("work", "scores", f"{s:05d}.npz"),
               log_weight=np.asarray(weights, np.float32), n_words=np.asarray(n_words, np.int32),
               error=error, **problems)


def write_shard(plan: Plan, s: int, dsir: np.ndarray, rand: np.ndarray,
                log_weight: np.ndarray) -> None:
  """Writes shard s's selected lines (verbatim, raw order) + their weights, and the bucket counts
  of its DSIR and random picks (for the KL report) -> work/written/s.npz."""
  f = plan.featurizer
  picked = {"dsir": [], "random": []}
  counts = {k: np.zeros(f.num_buckets, np.int64) for k in picked}
  n_lines = 0
  # Nothing picked (a corrupt shard has no lines): nothing to read.
  reader = sio.read_lines(plan.raw_files[s]) if dsir.any() or rand.any() else None
  for j, line in enumerate(reader or ()):
    n_lines = j + 1
    if j >= len(dsir) or not (dsir[j] or rand[j]):
      continue
    text, _ = sio.parse_document(line, plan.text_key)
    bucket_counts = np.bincount(f.buckets(f.words(text)), minlength=f.num_buckets)
    for name, mask in (("dsir", dsir), ("random", rand)):
      if mask[j]:
        picked[name].append(line)
        counts[name] += bucket_counts
  if reader is not None and n_lines != len(dsir):
    raise RuntimeError(f"raw shard {plan.raw_files[s]} has {n_lines} lines now but {len(dsir)} "
                       "when it was scored; it changed: use a fresh --output")
  name = plan.shard_name(s)
  outputs = {plan.path(f"{name}.json.gz"): picked["dsir"],
             plan.path("random", f"{name}.json.gz"): picked["random"] if plan.write_random else []}
  for path, chosen in outputs.items():  # a shard with no picks has no file (not a stale one)
    if chosen:
      files.write_bytes(path, sio.gzip_lines(chosen))
    else:
      files.remove(path, missing_ok=True)
  weights_path = plan.path("weights", f"{name}.npz")
  if picked["dsir"]:
    line_numbers = np.flatnonzero(dsir)
    sio.save_npz(weights_path, line=line_numbers, log_weight=log_weight[line_numbers])
  else:
    files.remove(weights_path, missing_ok=True)
  sio.save_npz(plan.path("work", "written", f"{s:05d}.npz"),
               settings=json.dumps(plan.selection_settings(), sort_keys=True),
               dsir_counts=counts["dsir"], random_counts=counts["random"],
               dsir=len(picked["dsir"]), random=len(picked["random"]))


# ---- stages ----

class _Workers:
  """Worker processes, started on first use and shared by the stages of one select() (each
  spawned process imports t5lite once); one worker runs the jobs inline."""

  def __init__(self, workers: int):
    self.workers, self.pool = workers, None

  def run(self, fn: Callable, jobs: Sequence[tuple]) -> None:
    if self.workers <= 1 or len(jobs) <= 1:
      for job in jobs:
        fn(*job)
      return
    if self.pool is None:
      ctx = multiprocessing.get_context("spawn")  # fork is unsafe once TF/JAX threads exist
      self.pool = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=ctx)
    for future in concurrent.futures.as_completed([self.pool.submit(fn, *job) for job in jobs]):
      future.result()

  def close(self) -> None:
    if self.pool is not None:
      self.pool.shutdown(cancel_futures=True)


def _await(plan: Plan, folder: str, names: Sequence[str], wait_s: float, what: str) -> None:
  """Waits up to wait_s for files other hosts write; then a FileNotFoundError naming them."""
  deadline = time.monotonic() + wait_s
  while True:
    present = {os.path.basename(p) for p in files.glob(plan.path("work", folder, "*"))}
    missing = [n for n in names if n not in present]
    if not missing:
      return
    if time.monotonic() >= deadline:
      first = plan.path("work", folder, missing[0])
      raise FileNotFoundError(
          f"{len(missing)} {what} file(s) missing, e.g. {first}; the hosts running "
          f"--shard I/{plan.shard[1]} write them: run that stage on every host first, "
          "or pass --wait_s")
    time.sleep(min(10.0, max(deadline - time.monotonic(), 0.1)))


def _check_plan(plan: Plan) -> None:
  path = plan.path("work", "plan.json")
  want = plan.model_settings()
  if files.exists(path):
    have = json.loads(files.read_bytes(path))
    diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    if diff:
      raise ValueError(f"{plan.output} holds a selection made with other settings "
                       f"({', '.join(diff)}); use a fresh --output or delete {plan.path('work')}")
  else:
    files.write_bytes(path, json.dumps(want, indent=1).encode())


def fit_stage(plan: Plan, workers: _Workers, log: Callable[[str], None]) -> None:
  t0 = time.perf_counter()
  todo = [(plan, s) for s in plan.mine()
          if not files.exists(plan.path("work", "fit", f"raw.{s:05d}.npz"))]
  workers.run(fit_raw_shard, todo)
  if plan.shard[0] == 0 and not files.exists(plan.path("work", "fit", "target.npz")):
    f = plan.featurizer
    examples = nf.BucketExamples(f, EXAMPLE_NGRAMS)
    counts = np.zeros(f.num_buckets, np.int64)
    docs = ngrams = 0
    skipped = {"lines": 0}
    for text in sio.target_texts(plan.targets, skipped):
      words = f.words(text)
      buckets = f.buckets(words)
      counts += np.bincount(buckets, minlength=f.num_buckets)
      examples.add(words, buckets)
      docs, ngrams = docs + 1, ngrams + len(buckets)
    if not ngrams:
      raise ValueError(f"the target {list(plan.targets)} has no words")
    sio.save_npz(plan.path("work", "fit", "target.npz"), counts=counts, docs=docs, ngrams=ngrams,
                 skipped=skipped["lines"], **examples.top())
  log(f"fit: {len(todo)} raw shard(s) fitted ({len(plan.mine()) - len(todo)} kept) "
      f"in {time.perf_counter() - t0:.1f} s")


def load_model(plan: Plan, wait_s: float = 0.0) -> dict:
  """Target and raw bucket counts and their log ratios (work/model.npz, made once from the fits)."""
  path = plan.path("work", "model.npz")
  if files.exists(path):
    return sio.load_npz(path)
  names = [f"raw.{s:05d}.npz" for s in range(len(plan.raw_files))] + ["target.npz"]
  _await(plan, "fit", names, wait_s, "raw/target fit")
  target = sio.load_npz(plan.path("work", "fit", "target.npz"))
  raw = np.zeros(plan.featurizer.num_buckets, np.int64)
  for name in names[:-1]:
    raw += sio.load_npz(plan.path("work", "fit", name))["counts"]
  fits = [sio.load_npz(plan.path("work", "fit", name)) for name in names[:-1][:RAW_EXAMPLE_SHARDS]]
  model = {"target_counts": target["counts"], "raw_counts": raw, "target_docs": target["docs"],
           "target_skipped": target["skipped"],
           "log_ratio": nf.log_ratio(target["counts"], raw)}
  for key in ("example_buckets", "example_ngrams", "example_counts"):
    model[f"target_{key}"] = target[key]
    model[f"raw_{key}"] = np.concatenate([fit[key] for fit in fits])
  sio.save_npz(path, **model)  # every host computes the same; the first to finish writes it
  return model


def score_stage(plan: Plan, workers: _Workers, wait_s: float, log: Callable[[str], None]) -> None:
  t0 = time.perf_counter()
  ratio = load_model(plan, wait_s)["log_ratio"]
  todo = [(plan, s, ratio) for s in plan.mine()
          if not files.exists(plan.path("work", "scores", f"{s:05d}.npz"))]
  workers.run(score_shard, todo)
  log(f"score: {len(todo)} raw shard(s) scored ({len(plan.mine()) - len(todo)} kept) "
      f"in {time.perf_counter() - t0:.1f} s")


def load_scores(plan: Plan, wait_s: float = 0.0) -> list[dict]:
  names = [f"{s:05d}.npz" for s in range(len(plan.raw_files))]
  _await(plan, "scores", names, wait_s, "score")
  return [sio.load_npz(plan.path("work", "scores", n)) for n in names]


def choose(plan: Plan, scores: Sequence[dict]) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """(DSIR masks, random masks), one per shard: the same on every host for the same files."""
  eligible = [sc["n_words"] >= max(plan.min_words, 0) for sc in scores]
  total = int(sum(e.sum() for e in eligible))
  if plan.num_docs > total:
    lines = sum(len(e) for e in eligible)
    raise ValueError(f"--num_docs {plan.num_docs} is more than the {total} eligible raw documents "
                     f"({lines} lines; documents need >= --min_words {plan.min_words} words)")
  weights = [plan.sampling_log_weight(sc) for sc in scores]
  keys = [np.where(e, w if plan.greedy else nf.gumbel_keys(w, plan.seed, s), -np.inf)
          for s, (e, w) in enumerate(zip(eligible, weights))]
  rand = [np.where(e, nf.uniform_keys(len(e), plan.seed, s), -np.inf)
          for s, e in enumerate(eligible)]
  return nf.top_k_masks(keys, plan.num_docs), nf.top_k_masks(rand, plan.num_docs)


def _written(plan: Plan, s: int) -> bool:
  path = plan.path("work", "written", f"{s:05d}.npz")
  want = json.dumps(plan.selection_settings(), sort_keys=True)
  return files.exists(path) and sio.load_npz(path)["settings"] == want


def write_stage(plan: Plan, workers: _Workers, wait_s: float, log: Callable[[str], None]) -> None:
  t0 = time.perf_counter()
  scores = load_scores(plan, wait_s)
  dsir, rand = choose(plan, scores)
  todo = [(plan, s, dsir[s], rand[s], scores[s]["log_weight"]) for s in plan.mine()
          if not _written(plan, s)]
  workers.run(write_shard, todo)
  log(f"write: {len(todo)} shard(s) written ({len(plan.mine()) - len(todo)} kept) "
      f"in {time.perf_counter() - t0:.1f} s")


def report_stage(plan: Plan, wait_s: float, log: Callable[[str], None]) -> dict:
  """Aggregates every shard's files into OUTPUT/report.json (and returns it)."""
  from t5lite.datamix import dsir_report as selection_report  # pylint: disable=g-import-not-at-top
  scores = load_scores(plan, wait_s)
  names = [f"{s:05d}.npz" for s in range(len(plan.raw_files))]
  _await(plan, "written", names, wait_s, "written")
  written = [sio.load_npz(plan.path("work", "written", n)) for n in names]
  stale = [n for n, w in zip(names, written)
           if w["settings"] != json.dumps(plan.selection_settings(), sort_keys=True)]
  if stale:
    raise FileNotFoundError(f"{len(stale)} shard(s) were written for other selection settings, "
                            f"e.g. work/written/{stale[0]}; run --stage write on every host first")
  dsir, rand = choose(plan, scores)
  report = selection_report.build(plan, load_model(plan), scores, written, dsir, rand)
  files.write_bytes(plan.path("report.json"), json.dumps(report, indent=1).encode())
  log(f"report: {plan.path('report.json')}")
  return report


def select(plan: Plan, stage: str = "all", wait_s: float = 0.0,
           log: Callable[[str], None] = print) -> Optional[dict]:
  """Runs `stage` (or all, in order) of the selection; returns the report when it was written."""
  if stage not in STAGES + ("all",):
    raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES + ('all',)}")
  _check_plan(plan)
  workers = _Workers(min(plan.workers, len(plan.mine())))
  try:
    if stage in ("all", "fit"):
      fit_stage(plan, workers, log)
    if stage in ("all", "score"):
      score_stage(plan, workers, wait_s, log)
    if stage in ("all", "write"):
      write_stage(plan, workers, wait_s, log)
  finally:
    workers.close()
  if stage == "report" or (stage == "all" and plan.shard[0] == 0):
    return report_stage(plan, wait_s, log)
  return None
