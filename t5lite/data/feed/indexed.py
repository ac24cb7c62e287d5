"""The index-addressed training stream over token caches: O(1) resume, elastic, globally shuffled.

Global batch b is a pure function of (seed, b): its rows are r = b*B ... b*B + B - 1 (B the
global batch size); process p of P builds only rows b*B + p*B/P ... of them, so any number of
processes yields the same global batches. Row r packs the candidate examples e = r*k ... r*k + k - 1
(k = examples_per_row), each addressed in O(1):

  e -> task t and index i in t   mixture: a deterministic interleaving with exact rates (grain's
                                 MapDataset.mix selection: O(tasks), no state); one task: i = e
  i -> epoch i // N_t, position  N_t = the task's examples (pieces of its raw length, per file)
  position -> permuted position  grain.experimental.index_shuffle, a Feistel bijection seeded by
                                 (seed, task, epoch): a global shuffle, reshuffled every epoch
  permuted -> file, offset       cumulative counts per file; cache.TokenCache reads 1-2 records
  tokens -> example              the task's objective with rng = example_rng(seed, e)

So the noise of an example depends only on (seed, e), never on processes, threads or restarts.
Packing (k > 1) fills a row greedily from its own k candidates and drops those that do not fit
(counted), which keeps each row a pure function of its index. Rows have seqio's
EncDecFeatureConverter(pack=True) layout. A read error (missing file, bad record) leaves that
example out (an all-padding row when it was the only one), counted per file and logged.
With task_ids=True each batch also has `decoder_task_ids` [rows, targets]: the index (in
`tasks`) + 1 of the task each target token's segment came from, 0 at padding (DoReMi's
per-domain losses read it).
"""
from __future__ import annotations

import bisect
import collections
import dataclasses
import hashlib
import logging
import threading
from typing import Any, Callable, Iterator, Mapping, Optional, Protocol, Sequence

import numpy as np

from t5lite.extras import tf_data_available
from t5lite.data.cache import manifest
from t5lite.data.cache.manifest import CachedTask
from t5lite.data.cache.reader import ReadError, TokenCache, open_cache
from t5lite.data.feed.features import FEATURES, TASK_IDS
from t5lite.data.objectives.numpy_objectives import example_rng

log = logging.getLogger(__name__)
STATE_FORMAT = "t5lite.indexed/1"
RATE_SCALE = 1 << 20  # mixture rates become integer weights with this resolution


class Objective(Protocol):
  """A NumpyObjective (data/objectives/numpy_objectives.py): raw pieces -> {"inputs",
  "targets"} (int32, EOS included, within the lengths)."""

  def raw_length(self) -> int:
    ...

  def __call__(self, tokens_L: np.ndarray, rng: np.random.Generator) -> Mapping[str, np.ndarray]:
    ...


ObjectiveFactory = Callable[[CachedTask, Mapping[str, int]], Objective]
RngFn = Callable[[int, int], np.random.Generator]


def seed32(*parts: Any) -> int:
  """A 32-bit seed (index_shuffle's limit) from any parts, stable across runs and platforms."""
  digest = hashlib.sha256(repr(parts).encode()).digest()
  return int.from_bytes(digest[:4], "little")


def integer_weights(rates: Sequence[float]) -> tuple[int, ...]:
  total = float(sum(rates))
  if not rates or any(r <= 0 for r in rates):
    raise ValueError(f"mixture rates must be positive, got {list(rates)}")
  return tuple(max(1, round(r / total * RATE_SCALE)) for r in rates)


def select(e: int, weights: Sequence[int]) -> tuple[int, int]:
  """(task, index within that task) of mixture element e: task i holds ceil-interleaved share
  weights[i] / sum of every prefix of the sequence, so counts are exact to within one.

  The recursion of grain's MapDataset.mix (mix.py `_dataset_and_key_of_next_element`): task 0
  owns the elements where k - k*(W-w0)//W steps up; the rest recurse on the others.
  """
  remaining = sum(weights)
  k, k1 = e, e + 1
  for i, w in enumerate(weights):
    nk, nk1 = k * (remaining - w) // remaining, k1 * (remaining - w) // remaining
    if k - nk != k1 - nk1:
      return i, k1 - nk1 - 1
    remaining -= w
    k, k1 = nk, nk1
  raise AssertionError(f"select({e}, {weights}) found no task")


@dataclasses.dataclass
class _Task:
  """One task's example space: pieces of raw_length tokens of every file of its cache."""
  name: str
  cache: TokenCache
  objective: Objective
  raw_length: int
  cumulative: list[int]  # examples in files [0, f), for f = 0 .. files

  @property
  def size(self) -> int:
    return self.cumulative[-1]


def stream_tasks(name: str, split: str, data_cache_dir: str) -> list[CachedTask]:
  """The CachedTasks of task or mixture `name`: from the registered seqio tasks where seqio is
  installed, else from the manifest `t5lite cache` wrote beside the caches."""
  if not tf_data_available():
    return manifest.read(data_cache_dir, name, split)
  from t5lite.data.cache import keys  # pylint: disable=g-import-not-at-top  (seqio, TensorFlow)
  return keys.cached_tasks(name, split)


class IndexedStream:
  """This process's rows of each global batch of task or mixture `name`, from its token caches.

  batch_size is global; process p of process_count gets rows [p*B/P, (p+1)*B/P) of each batch.
  num_epochs (single tasks only) ends the stream after that many passes (the last batch is
  padded with empty rows); None repeats forever. shuffle=False reads examples in cache order.
  tasks: the CachedTasks of `name` (default: stream_tasks);
  objective_factory(task, lengths) / rng_fn default to the task's NumPy objective / example_rng.
  task_ids adds the feature `decoder_task_ids` (the module docstring); off, batches keep the
  FEATURES of seqio's feature converter.
  """

  def __init__(self, name: str, task_feature_lengths: Mapping[str, int], batch_size: int,
               data_cache_dir: str, *, split: str = "train", seed: int = 0, shuffle: bool = True,
               num_epochs: Optional[int] = None, examples_per_row: int = 1,
               process_index: int = 0, process_count: int = 1,
               objective_factory: Optional[ObjectiveFactory] = None,
               rng_fn: Optional[RngFn] = None, task_ids: bool = False,
               tasks: Optional[Sequence[CachedTask]] = None):
    if batch_size % process_count:
      raise ValueError(f"batch_size {batch_size} does not divide over {process_count} processes")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if examples_per_row < 1:
      raise ValueError(f"examples_per_row must be >= 1, got {examples_per_row}")
    self.name, self.split, self.seed, self.shuffle = name, split, int(seed), shuffle
    self.lengths = {"inputs": int(task_feature_lengths["inputs"]),
                    "targets": int(task_feature_lengths["targets"])}
    self.batch_size, self.examples_per_row = batch_size, examples_per_row
    self.process_index, self.process_count = process_index, process_count
    self.rows = batch_size // process_count
    self.task_ids = task_ids
    self._rng_fn = rng_fn or example_rng
    self._warned: set[str] = set()
    self._warn_lock = threading.Lock()
    if tasks is None:
      tasks = stream_tasks(name, split, data_cache_dir)
    caches: dict[str, TokenCache] = {}  # tasks on one source share one reader
    self.tasks, rates = [], []
    for task in tasks:
      key = task.key.name
      if key not in caches:
        caches[key] = open_cache(name, task.name, task.key, split, data_cache_dir)
      objective = (objective_factory(task, self.lengths) if objective_factory
                   else task.numpy(self.lengths))
      raw = int(objective.raw_length())
      counts = caches[key].examples_per_file(raw)
      self.tasks.append(_Task(task.name, caches[key], objective, raw,
                              [0] + np.cumsum(counts).tolist()))
      rates.append(task.rate)
      if self.tasks[-1].size == 0:
        raise ValueError(f"task {task.name!r}: its cache {caches[key].directory} holds no piece "
                         f"of {raw} tokens")
    self.weights = integer_weights(rates)
    if num_epochs is not None and len(self.tasks) > 1:
      raise ValueError("num_epochs is for a single task; a mixture's stream repeats forever")
    self.num_examples = None if num_epochs is None else self.tasks[0].size * int(num_epochs)
    per_batch = batch_size * examples_per_row
    self.num_batches = (None if self.num_examples is None
                        else -(-self.num_examples // per_batch))

  def __getstate__(self):  # grain's worker processes get a copy
    return {k: v for k, v in self.__dict__.items() if k != "_warn_lock"}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._warn_lock = threading.Lock()

  # -- addressing --------------------------------------------------------------------------
  @property
  def fingerprint(self) -> str:
    """The data a saved position belongs to: the tasks, their rates and their caches' content.
    Lengths and examples_per_row may change on resume (the run continues at its batch index)."""
    parts = [(t.name, t.cache.fingerprint) for t in self.tasks]
    blob = repr((parts, self.weights, self.split))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]

  def locate(self, e: int) -> Optional[tuple[int, int, int]]:
    """(task, file, first token) of candidate example e; None past the end of a finite stream."""
    if self.num_examples is not None and e >= self.num_examples:
      return None
    t, i = select(e, self.weights) if len(self.tasks) > 1 else (0, e)
    task = self.tasks[t]
    epoch, position = divmod(i, task.size)
    if self.shuffle and task.size > 1:
      from grain.experimental import index_shuffle  # pylint: disable=g-import-not-at-top
      position = index_shuffle(position, max_index=task.size - 1,
                               seed=seed32(int(self.seed), str(task.name), int(epoch)), rounds=4)
    f = bisect.bisect_right(task.cumulative, position) - 1
    return t, f, (position - task.cumulative[f]) * task.raw_length

  # -- one batch ---------------------------------------------------------------------------
  def batch(self, b: int) -> dict[str, np.ndarray]:
    """This process's rows of global batch b: int32 arrays [rows, length]."""
    return self.batch_and_stats(b)[0]

  def batch_and_stats(self, b: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(batch b's rows, its counts: examples, dropped, bad {file: count}, tokens, capacity)."""
    k = self.examples_per_row
    first_row = b * self.batch_size + self.process_index * self.rows
    candidates = [(first_row + i) * k + c for i in range(self.rows) for c in range(k)]
    examples, bad = self._examples(candidates)
    li, lt = self.lengths["inputs"], self.lengths["targets"]
    names = FEATURES + (TASK_IDS,) if self.task_ids else FEATURES
    out = {name: np.zeros([self.rows, li if name.startswith("encoder") else lt], np.int32)
           for name in names}
    dropped = packed = enc_tokens = dec_tokens = 0
    for i in range(self.rows):
      segment = used_in = used_tg = 0
      for c in range(k):
        ex = examples[i * k + c]
        if ex is None:
          continue
        inputs, targets, t = ex
        if used_in + len(inputs) > li or used_tg + len(targets) > lt:
          dropped += 1
          continue
        segment += 1
        _put(out, "encoder", i, used_in, inputs, segment)
        _put(out, "decoder", i, used_tg, targets, segment)
        if self.task_ids:
          out[TASK_IDS][i, used_tg:used_tg + len(targets)] = t + 1
        used_in += len(inputs)
        used_tg += len(targets)
        packed += 1
      enc_tokens += used_in
      dec_tokens += used_tg
    out["decoder_loss_weights"] = (out["decoder_target_tokens"] != 0).astype(np.int32)
    stats = {"examples": packed, "dropped": dropped, "bad": bad, "encoder_tokens": enc_tokens,
             "decoder_tokens": dec_tokens, "encoder_capacity": self.rows * li,
             "decoder_capacity": self.rows * lt}
    return out, stats

  def _examples(self, candidates: Sequence[int]):
    """[(inputs, targets, task) or None] per candidate, reading each file's pieces in one call."""
    located = [self.locate(e) for e in candidates]
    groups = collections.defaultdict(list)  # (task, file) -> [(position in candidates, start)]
    for n, where in enumerate(located):
      if where is not None:
        groups[where[:2]].append((n, where[2]))
    tokens: list[Optional[np.ndarray]] = [None] * len(candidates)
    bad: dict[str, int] = {}
    for (t, f), items in sorted(groups.items()):
      task = self.tasks[t]
      try:
        pieces = task.cache.read(f, [s for _, s in items], task.raw_length)
      except ReadError:  # retry one by one: only the pieces that fail are left out
        pieces = [self._read_one(task, f, start, bad) for _, start in items]
      for (n, _), piece in zip(items, pieces):
        tokens[n] = piece
    out = []
    for e, where, piece in zip(candidates, located, tokens):
      if piece is None:
        out.append(None)
        continue
      ex = self.tasks[where[0]].objective(piece, self._rng_fn(self.seed, e))
      inputs = np.asarray(ex["inputs"], np.int32)
      targets = np.asarray(ex["targets"], np.int32)
      if len(inputs) > self.lengths["inputs"] or len(targets) > self.lengths["targets"]:
        raise ValueError(f"task {self.tasks[where[0]].name!r}'s objective made inputs "
                         f"{len(inputs)} / targets {len(targets)} ids, over {self.lengths}")
      out.append((inputs, targets, where[0]))
    return out, bad

  def _read_one(self, task: _Task, f: int, start: int, bad: dict) -> Optional[np.ndarray]:
    try:
      return task.cache.read(f, [start], task.raw_length)[0]
    except ReadError as e:
      source = task.cache.metadata.files[f].source
      bad[source] = bad.get(source, 0) + 1
      with self._warn_lock:
        if source not in self._warned:  # once per file and process; the counters keep counting
          self._warned.add(source)
          log.warning("t5lite data: leaving out examples of %s: %s", source, e)
      return None

  # -- iteration ---------------------------------------------------------------------------
  def state(self, next_batch: int) -> dict[str, Any]:
    """The checkpointable position (< 1 KB of JSON)."""
    return {"format": STATE_FORMAT, "seed": self.seed, "next_batch": int(next_batch),
            "batch_size": self.batch_size, "fingerprint": self.fingerprint}

  def start_of(self, state: Mapping[str, Any]) -> int:
    """The batch a saved state resumes at; an error if it belongs to another stream."""
    mine = self.state(0)
    for field in ("format", "seed", "batch_size", "fingerprint"):
      if state.get(field) != mine[field]:
        raise ValueError(f"data state {dict(state)} does not belong to this stream ({field} "
                         f"{state.get(field)!r} != {mine[field]!r}): another seed, batch size, "
                         "task, mixture rates or cache content")
    return int(state["next_batch"])

  def iterator(self, start_batch: int = 0, *, state: Optional[Mapping[str, Any]] = None,
               num_threads: int = 8, prefetch: int = 16,
               worker_processes: int = 0) -> "StreamIterator":
    """Batches from start_batch (or a saved state) on, prefetched by grain: num_threads threads,
    or worker_processes processes (each a copy of this stream; the objective must pickle)."""
    import grain  # pylint: disable=g-import-not-at-top
    start = self.start_of(state) if state is not None else int(start_batch)
    stop = self.num_batches if self.num_batches is not None else 1 << 62
    ds = grain.MapDataset.range(start, max(start, stop)).map(self.batch_and_stats)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                 prefetch_buffer_size=prefetch))
    if worker_processes:
      from absl import flags  # pylint: disable=g-import-not-at-top
      if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; t5lite parses none
        flags.FLAGS.mark_as_parsed()
      it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_processes))
    return StreamIterator(self, start, iter(it_ds))


class StreamIterator(Iterator[dict]):
  """Batches of an IndexedStream; get_state() is the position to checkpoint, counters() what
  to log (examples, dropped by packing, left out for bad files, packing efficiency)."""

  def __init__(self, stream: IndexedStream, start: int, batches: Iterator):
    self.stream, self.next_batch, self._batches = stream, start, batches
    self._totals = collections.Counter()
    self.bad: dict[str, int] = {}
    self._lock = threading.Lock()

  def __next__(self) -> dict[str, np.ndarray]:
    batch, stats = next(self._batches)
    with self._lock:
      self.next_batch += 1
      for key, value in stats.items():
        if key != "bad":
          self._totals[key] += value
      for source, n in stats["bad"].items():
        self.bad[source] = self.bad.get(source, 0) + n
    return batch

  def get_state(self) -> dict[str, Any]:
    return self.stream.state(self.next_batch)

  def counters(self) -> dict[str, float]:
    t = self._totals
    return {"examples": t["examples"], "dropped_examples": t["dropped"],
            "bad_examples": sum(self.bad.values()),
            "packing_efficiency_inputs": t["encoder_tokens"] / max(t["encoder_capacity"], 1),
            "packing_efficiency_targets": t["decoder_tokens"] / max(t["decoder_capacity"], 1)}

  def close(self) -> None:
    close = getattr(self._batches, "close", None)
    if close:
      close()


def _put(out: dict, side: str, row: int, at: int, tokens: np.ndarray, segment: int) -> None:
  """Writes one segment into row `row` of the encoder or decoder features at offset `at`."""
  n = len(tokens)
  span = slice(at, at + n)
  if side == "encoder":
    out["encoder_input_tokens"][row, span] = tokens
  else:
    out["decoder_target_tokens"][row, span] = tokens
    out["decoder_input_tokens"][row, at + 1:at + n] = tokens[:-1]  # shifted right, 0 at start
  out[f"{side}_segment_ids"][row, span] = segment
  out[f"{side}_positions"][row, span] = np.arange(n, dtype=np.int32)
