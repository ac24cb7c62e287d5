"""The index-addressed stream over a real C4 token cache: purity, elasticity, epochs, mixtures,
resume state, packing layout and bad files (with a stand-in objective that uses its rng, so noise
keyed on anything but (seed, index) shows), then the real objectives' statistics on it."""
import collections
import gzip
import json
import os
import shutil
import time

import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5lite.data.cache import format as cache_lib
from t5lite.data.cache import build as cache_build
from t5lite.data.cache import manifest
from t5lite.data.feed import indexed
from t5lite.data.tasks import registry as tasks
from t5lite.data.sources.sources import Sources

LENGTHS = {"inputs": 512, "targets": 114}
TASK = tasks.C4_JSON


class MarkedCopy:
  """inputs = a random id + tokens + EOS, targets = their first targets_length-1 ids + EOS."""

  def __init__(self, lengths, raw=None, targets_length=None):
    self.raw = raw or lengths["inputs"] - 2
    self.targets_length = targets_length or lengths["targets"]

  def raw_length(self):
    return self.raw

  def __call__(self, tokens, rng):
    inputs = np.concatenate([[rng.integers(3, 30000)], tokens, [1]]).astype(np.int32)
    return {"inputs": inputs, "targets": np.append(inputs[:self.targets_length - 1], 1)}


def factory(task, lengths):
  return MarkedCopy(lengths)


def rng_fn(seed, index):
  return np.random.default_rng([seed, index])


@pytest.fixture(scope="module")
def cache_root(c4_sample, t5_vocab_path, tmp_path_factory):
  """The C4 sample as 3 shards, cached; the tasks stay registered on them for the module."""
  with gzip.open(c4_sample, "rb") as f:
    lines = f.readlines()
  folder = tmp_path_factory.mktemp("c4")
  shards = []
  for i, part in enumerate((lines[:300], lines[300:650], lines[650:])):
    shards.append(str(folder / f"c4-train.{i:05d}-of-00003.json.gz"))
    with gzip.open(shards[-1], "wb") as f:
      f.writelines(part)
  kwargs = dict(vocabulary_path=str(t5_vocab_path), c4_json_files=shards,
                c4_json_validation_files=shards)
  tasks.register_all(Sources(**kwargs))
  root = str(tmp_path_factory.mktemp("cache"))
  cache_build.build(TASK, root, splits=["train"], echo=lambda s: None)
  yield root
  tasks.register_all()


def stream(root, name=TASK, batch_size=8, **kwargs):
  kwargs = {"objective_factory": factory, "rng_fn": rng_fn, **kwargs}
  return indexed.IndexedStream(name, kwargs.pop("lengths", LENGTHS), batch_size, root, **kwargs)


def assert_batches_equal(a, b):
  assert set(a) == set(b) == set(indexed.FEATURES)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batch_is_a_pure_function_of_seed_and_index(cache_root):
  first = {b: stream(cache_root, seed=3).batch(b) for b in (7, 0, 123_456)}
  other = stream(cache_root, seed=3)
  for b in (123_456, 7, 0):
    assert_batches_equal(other.batch(b), first[b])
  assert not np.array_equal(first[0]["encoder_input_tokens"], first[7]["encoder_input_tokens"])
  reseeded = stream(cache_root, seed=4).batch(0)
  assert not np.array_equal(reseeded["encoder_input_tokens"], first[0]["encoder_input_tokens"])


def test_rows_are_real_pieces_in_seqio_layout(cache_root):
  s = stream(cache_root, seed=1)
  batch = s.batch(2)
  token_cache = s.tasks[0].cache
  raw = s.tasks[0].raw_length
  for i in range(s.rows):
    t, f, start = s.locate(2 * s.batch_size + i)
    piece = token_cache.read(f, [start], raw)[0]
    n = raw + 2
    np.testing.assert_array_equal(batch["encoder_input_tokens"][i, 1:n - 1], piece)
    assert batch["encoder_input_tokens"][i, n - 1] == 1 and not batch["encoder_input_tokens"][i, n:].any()
    np.testing.assert_array_equal(batch["encoder_positions"][i, :n], np.arange(n))
    np.testing.assert_array_equal(batch["encoder_segment_ids"][i], np.arange(512) < n)
  assert batch["decoder_loss_weights"].sum() == s.rows * 114
  np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:],
                                batch["decoder_target_tokens"][:, :-1])
  assert not batch["decoder_input_tokens"][:, 0].any()


@pytest.mark.parametrize("processes", [2, 4])
def test_any_process_count_gives_the_same_global_batches(cache_root, processes):
  whole = stream(cache_root, batch_size=16, seed=5)
  parts = [stream(cache_root, batch_size=16, seed=5, process_index=p, process_count=processes)
           for p in range(processes)]
  for b in (0, 1, 6, 40_000):
    pieces = [part.batch(b) for part in parts]
    assert_batches_equal({k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]},
                         whole.batch(b))


def test_epochs_cover_every_example_once_in_a_new_order(cache_root):
  s = stream(cache_root, lengths={"inputs": 1024, "targets": 114}, seed=2)
  n = s.tasks[0].size
  assert n == sum(e.tokens // 1022 for e in s.tasks[0].cache.metadata.files) > 400
  epochs = [[s.locate(e) for e in range(k * n, (k + 1) * n)] for k in range(2)]
  expected = {(0, f, j * 1022) for f, count in
              enumerate(s.tasks[0].cache.examples_per_file(1022)) for j in range(count)}
  for order in epochs:
    assert len(order) == len(set(order)) == n and set(order) == expected
  assert epochs[0] != epochs[1]
  files = [f for _, f, _ in epochs[0][:60]]
  assert len(set(files)) == 3  # a global shuffle mixes the files from the start


def test_one_ordered_epoch_ends_with_padding(cache_root):
  s = stream(cache_root, batch_size=64, shuffle=False, num_epochs=1)
  n = s.tasks[0].size
  assert s.num_batches == -(-n // 64)
  assert [s.locate(e)[1:] for e in range(3)] == [(0, 0), (0, 510), (0, 1020)]
  it = s.iterator(num_threads=2)
  batches = list(it)
  assert len(batches) == s.num_batches and it.counters()["examples"] == n
  rows = np.concatenate([b["decoder_loss_weights"].any(axis=1) for b in batches])
  assert rows.sum() == n and not rows[n:].any()


def test_mixture_rates_hold_over_10000_examples(cache_root):
  mixture = seqio.get_mixture_or_task("c4_json_ul2")
  s = stream(cache_root, name="c4_json_ul2", batch_size=16)
  counts = collections.Counter(s.tasks[s.locate(e)[0]].name for e in range(10_000))
  total = sum(mixture.get_rate(t) for t in mixture.tasks)
  assert len(counts) == 7
  for task in mixture.tasks:
    assert abs(counts[task.name] / 10_000 - mixture.get_rate(task) / total) < 0.01, task.name
  assert len({t.cache.directory for t in s.tasks}) == 1  # 7 tasks, one cache
  batch = s.batch(3)
  assert batch["encoder_input_tokens"].shape == (16, 512)


def test_iterator_state_is_small_and_resumes_the_stream(cache_root):
  it = stream(cache_root, seed=9).iterator(start_batch=4, num_threads=3)
  for _ in range(3):
    next(it)
  state = it.get_state()
  assert len(json.dumps(state)) <= 1024 and state["next_batch"] == 7
  expected = [next(it) for _ in range(4)]
  it.close()
  resumed = stream(cache_root, seed=9).iterator(state=json.loads(json.dumps(state)))
  for batch in expected:
    assert_batches_equal(next(resumed), batch)
  assert resumed.get_state()["next_batch"] == 11
  with pytest.raises(ValueError, match="seed"):
    stream(cache_root, seed=10).iterator(state=state)
  with pytest.raises(ValueError, match="batch_size"):
    stream(cache_root, seed=9, batch_size=16).iterator(state=state)
  with pytest.raises(ValueError, match="fingerprint"):
    stream(cache_root, name="c4_json_ul2", seed=9).iterator(state=state)
  longer = stream(cache_root, seed=9, lengths={"inputs": 1024, "targets": 114})
  assert longer.iterator(state=state).next_batch == 7  # other lengths: same data, same position


def test_time_to_first_batch_does_not_grow_with_the_step(cache_root):
  s = stream(cache_root, batch_size=128)
  next(s.iterator(0))  # warm imports

  def first_batch(start):
    times = []
    for _ in range(3):
      t0 = time.perf_counter()
      it = s.iterator(start)
      next(it)
      times.append(time.perf_counter() - t0)
      it.close()
    return min(times)

  t0, t100k = first_batch(0), first_batch(100_000)
  print(f"time to first batch: step 0 {t0 * 1e3:.1f} ms, step 100,000 {t100k * 1e3:.1f} ms")
  assert t100k < 3 * t0 + 0.05


def test_packing_matches_seqio_and_counts_what_does_not_fit(cache_root):
  lengths = {"inputs": 128, "targets": 64}
  short = lambda task, l: MarkedCopy(l, raw=40, targets_length=20)  # 3 of 42 / 20 fit a row
  s = stream(cache_root, lengths=lengths, objective_factory=short, examples_per_row=4,
             batch_size=2)
  batch, stats = s.batch_and_stats(5)
  assert stats["examples"] == 6 and stats["dropped"] == 2
  for row in range(2):
    examples = []
    for c in range(3):  # the 4th candidate of each row does not fit
      e = (5 * 2 + row) * 4 + c
      t, f, start = s.locate(e)
      examples.append(s.tasks[0].objective(s.tasks[0].cache.read(f, [start], 40)[0],
                                           rng_fn(0, e)))
    ds = tf.data.Dataset.from_generator(
        lambda: iter(examples), output_signature={k: tf.TensorSpec([None], tf.int32)
                                                  for k in ("inputs", "targets")})
    theirs = next(seqio.EncDecFeatureConverter(pack=True)(ds, lengths).as_numpy_iterator())
    assert set(theirs) == set(indexed.FEATURES)
    for key, value in theirs.items():
      np.testing.assert_array_equal(batch[key][row], value, err_msg=key)
  it = s.iterator(5)
  next(it)
  counters = it.counters()
  assert counters["dropped_examples"] == 2
  assert counters["packing_efficiency_inputs"] == pytest.approx(6 * 42 / 256)
  assert counters["packing_efficiency_targets"] == pytest.approx(6 * 20 / 128)


def cache_folder(root: str) -> str:
  """The one cache under DATA_CACHE_DIR `root` (beside it: the manifests folder)."""
  (name,) = [n for n in os.listdir(root) if n != manifest.MANIFESTS]
  return name


def test_bad_cache_files_become_padding_rows_counted_by_file(cache_root, tmp_path):
  name = cache_folder(cache_root)
  root = str(tmp_path)
  shutil.copytree(os.path.join(cache_root, name), os.path.join(root, name))
  intact = stream(cache_root, batch_size=32, seed=1).batch(0)
  meta = cache_lib.CacheMetadata.from_json(json.load(open(os.path.join(root, name,
                                                                        "metadata.json"))))
  os.remove(os.path.join(root, name, meta.files[1].cache))
  with open(os.path.join(root, name, meta.files[2].cache), "r+b") as f:
    f.truncate(1000)  # its records no longer parse
  s = stream(root, batch_size=32, seed=1)
  it = s.iterator(0, num_threads=2)
  batch = next(it)
  files = [s.locate(e)[1] for e in range(32)]
  for row, f in enumerate(files):
    if f == 0:
      for key in batch:
        np.testing.assert_array_equal(batch[key][row], intact[key][row])
    else:
      assert not any(batch[key][row].any() for key in batch)  # all padding, no loss
  assert it.bad == {meta.files[f].source: files.count(f) for f in (1, 2)}
  assert it.counters()["bad_examples"] == files.count(1) + files.count(2) > 0


def test_missing_cache_names_the_build_command(cache_root, tmp_path):
  with pytest.raises(FileNotFoundError, match=f"t5lite cache c4_json_ul2 --output {tmp_path}"):
    stream(str(tmp_path), name="c4_json_ul2")


def test_a_bad_record_leaves_out_only_its_rows_on_any_process_count(cache_root, tmp_path):
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  name = cache_folder(cache_root)
  shutil.copytree(os.path.join(cache_root, name), os.path.join(tmp_path, name))
  meta = cache_lib.CacheMetadata.from_json(json.load(open(tmp_path / name / "metadata.json")))
  path = str(tmp_path / name / meta.files[0].cache)
  reader = array_record_module.ArrayRecordReader(path)
  records = reader.read_all()
  reader.close()
  records[3] = records[3][:101]  # record 3 of file 0 no longer holds a whole block (nor ids)
  writer = array_record_module.ArrayRecordWriter(path, cache_lib.WRITER_OPTIONS)
  for record in records:
    writer.write(record)
  writer.close()
  intact = stream(cache_root, batch_size=128, seed=2)
  whole = stream(str(tmp_path), batch_size=128, seed=2)
  halves = [stream(str(tmp_path), batch_size=128, seed=2, process_index=p, process_count=2)
            for p in range(2)]
  block = cache_lib.DEFAULT_BLOCK_TOKENS
  hits = 0
  assert whole.tasks[0].size <= 8 * 128  # 8 batches hold the whole first epoch
  for b in range(8):
    batch, stats = whole.batch_and_stats(b)
    parts = [h.batch(b) for h in halves]
    assert_batches_equal({k: np.concatenate([p[k] for p in parts]) for k in batch}, batch)
    expected = intact.batch(b)
    touched = []
    for row in range(128):
      _, f, start = whole.locate(b * 128 + row)
      touched.append(f == 0 and start // block <= 3 <= (start + 509) // block)
      for key in batch:
        np.testing.assert_array_equal(batch[key][row], 0 if touched[-1] else expected[key][row])
    assert stats["bad"] == ({meta.files[0].source: sum(touched)} if any(touched) else {})
    hits += sum(touched)
  assert hits == 5  # pieces 12..16 of 510 tokens overlap tokens 6144..8191 (record 3)


# ----------------------------------------------------------------------------- real objectives


def _strip(ids):
  ids = ids[ids != 0]
  return ids[:-1]  # EOS


def test_span_corruption_on_the_cache_keeps_t5s_statistics(cache_root):
  """The real objective (data/objectives/numpy_objectives.py) through the stream, 512/114 on the real C4 sample and
  vocabulary: lengths within bounds, density 0.15 +- 0.01, mean span 3.0 +- 0.15, and inputs +
  targets give back exactly the cached piece."""
  s = indexed.IndexedStream(TASK, LENGTHS, 16, cache_root, seed=3)
  task = s.tasks[0]
  first = 32099
  noise = kept = spans = n = 0
  for b in range(25):
    batch = s.batch(b)
    for row in range(16):
      inputs = _strip(batch["encoder_input_tokens"][row])
      targets = _strip(batch["decoder_target_tokens"][row])
      assert len(inputs) < 512 and len(targets) < 114
      is_sentinel = lambda t: t > first - 100  # noqa: E731
      k = int(is_sentinel(targets).sum())
      merged, t = [], 0
      spans_of_targets = np.split(targets, np.flatnonzero(is_sentinel(targets))[1:])
      for token in inputs:
        if is_sentinel(token):
          merged.extend(spans_of_targets[t][1:])
          t += 1
        else:
          merged.append(token)
      _, f, start = s.locate(b * 16 + row)
      piece = task.cache.read(f, [start], task.raw_length)[0]
      np.testing.assert_array_equal(merged, piece)
      noise += len(targets) - k
      kept += len(inputs) - k
      spans += k
      n += 1
  assert n == 400
  assert abs(noise / (noise + kept) - 0.15) < 0.01
  assert abs(noise / spans - 3.0) < 0.15


def test_ul2_and_bart_statistics_on_the_cache(cache_root, gpt2_bpe_dir, t5_vocab_path):
  """`t5lite inspect`'s statistics read from the cache (DATA_CACHE_DIR) for the UL2 mixture and
  BART denoising (GPT-2 BPE: a second cache of the same source)."""
  import gin  # pylint: disable=g-import-not-at-top
  from t5lite.data import statistics  # pylint: disable=g-import-not-at-top
  shards = seqio.get_mixture_or_task(TASK).source.split_patterns("train")
  tasks.register_all(Sources(vocabulary_path=str(t5_vocab_path), c4_json_files=shards,
                             c4_json_validation_files=shards, gpt2_bpe_dir=str(gpt2_bpe_dir)))
  cache_build.build("c4_json_bart_denoising", cache_root, splits=["train"], echo=lambda s: None)
  try:
    with gin.unlock_config():
      gin.bind_parameter("Sources.cache_dir", cache_root)
    ul2 = statistics.describe("c4_json_ul2", {"inputs": 512, "targets": 512}, 0, 280)
    bart = statistics.describe("c4_json_bart_denoising", {"inputs": 512, "targets": 512}, 0, 40)
  finally:
    gin.clear_config()
  by_task = ul2["stats"]["by_task"]
  for name, stats in by_task.items():
    rate = 0.5 if "rate50" in name else 0.25 if "_s_" in name else 0.15
    assert abs(stats["noise_density"] - rate) < 0.04, (name, stats)
    assert stats["inputs_length"]["max"] <= 512 and stats["targets_length"]["max"] <= 512
    if "mean3" in name or "mean8" in name:
      mean = 3 if "mean3" in name else 8
      assert abs(stats["mean_span_length"] - mean) < 0.35 * mean, (name, stats)
  assert abs(sum(s["num_examples"] for s in by_task.values()) - 280) == 0
  stats = bart["stats"]
  assert 0.15 < stats["noise_density"] < 0.45 and stats["spans_per_example"] > 1
  assert stats["targets_length"]["max"] <= 512

