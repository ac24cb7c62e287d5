"""The token cache: build (workers, host shards, restart, bad data) and its errors, on real C4."""
import gzip
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5lite.data.cache import format as cache_lib
from t5lite.data.cache import build as cache_build
from t5lite.data.cache import keys, reader
from t5lite.data.sources import json_lines
from t5lite.data.tasks import registry as tasks
from t5lite.data.vocab import seqio_vocab as vocab
from t5lite.data.vocab import sentencepiece
from t5lite.data.sources.sources import Sources
from t5lite.data.objectives.tf_spans import reduce_concat_tokens, select_random_chunk, split_tokens

TASK = tasks.C4_JSON


def _write_shards(lines, folder, n, stem="c4-train"):
  """Real C4 lines as n gzip JSON shards (documents dealt in order: shard i gets a block)."""
  os.makedirs(folder, exist_ok=True)
  per = -(-len(lines) // n)
  paths = []
  for i in range(n):
    path = os.path.join(folder, f"{stem}.{i:05d}-of-{n:05d}.json.gz")
    with gzip.open(path, "wb") as f:
      f.writelines(lines[i * per:(i + 1) * per])
    paths.append(path)
  return paths


@pytest.fixture(scope="module")
def c4_lines(c4_sample):
  with gzip.open(c4_sample, "rb") as f:
    return f.readlines()


@pytest.fixture(scope="module")
def shards(c4_lines, tmp_path_factory):
  """The 1000-document C4 sample as 4 shards of 250 documents."""
  return _write_shards(c4_lines, str(tmp_path_factory.mktemp("c4")), 4)


@pytest.fixture
def register(t5_vocab_path):
  def register_files(train, validation=None, vocabulary_path=t5_vocab_path):
    tasks.register_all(Sources(vocabulary_path=str(vocabulary_path), c4_json_files=train,
                               c4_json_validation_files=validation))
    return seqio.get_mixture_or_task(TASK)
  yield register_files
  tasks.register_all()


@pytest.fixture(scope="module")
def built(shards, t5_vocab_path, tmp_path_factory):
  """One single-worker build of the 4 shards (train only): (root, metadata)."""
  tasks.register_all(Sources(vocabulary_path=str(t5_vocab_path), c4_json_files=shards,
                             c4_json_validation_files=None))
  root = str(tmp_path_factory.mktemp("cache"))
  try:
    results = cache_build.build(TASK, root, splits=["train"], echo=lambda s: None)
  finally:
    tasks.register_all()
  (name, metadata), = results.items()
  return os.path.join(root, name), metadata


def _streams(directory, metadata):
  token_cache = reader.TokenCache(directory, metadata)
  return [token_cache.read(f, [0], entry.tokens)[0] if entry.tokens else np.zeros([0], np.int32)
          for f, entry in enumerate(metadata.files)]


def _tf_tokens(task, path):
  """seqio's own path: the source's tf.data reader + seqio.preprocessors.tokenize, per document."""
  ds = json_lines.read_json_lines(tf.constant(path))
  ds = seqio.preprocessors.rekey(ds, key_map={"inputs": None, "targets": "text"})
  ds = seqio.preprocessors.tokenize(ds, task.output_features)
  return [ex["targets"] for ex in ds.as_numpy_iterator()]


def test_stream_equals_seqio_tokenization_and_counts(built, shards, register):
  directory, metadata = built
  task = register(shards)
  streams = _streams(directory, metadata)
  assert len(metadata.files) == 4
  for path, entry, stream in zip(shards, metadata.files, streams):
    docs = _tf_tokens(task, path)
    np.testing.assert_array_equal(stream, np.concatenate(docs))
    assert (entry.source, entry.documents, entry.tokens) == (path, len(docs), len(stream))
    assert entry.blocks == -(-entry.tokens // cache_lib.DEFAULT_BLOCK_TOKENS)
    assert entry.error is None and entry.skipped_records == 0
  assert metadata.tokens == 506135  # the sample's T5 tokens (shared/data/README.md)
  assert metadata.dtype == "uint16" and metadata.key == keys.cache_key(task, "train").as_json()
  on_disk = json.load(open(os.path.join(directory, "metadata.json")))
  assert on_disk["totals"] == {"tokens": 506135, "documents": 1000, "skipped_records": 0,
                               "bad_files": {}}


def test_pieces_equal_span_corruption_chunks(built, shards, register):
  """The raw 568-token pieces the cache serves are the pieces T5's chain cuts from the same
  documents (select_random_chunk -> reduce_concat_tokens -> split_tokens), within its first
  128-document group."""
  directory, metadata = built
  task = register(shards)
  ds = json_lines.read_json_lines(tf.constant(shards[0]))
  ds = seqio.preprocessors.rekey(ds, key_map={"inputs": None, "targets": "text"})
  ds = seqio.preprocessors.tokenize(ds, task.output_features)
  with seqio.utils.map_seed_manager(0):
    ds = split_tokens(reduce_concat_tokens(select_random_chunk(ds), batch_size=128),
                      max_tokens_per_segment=568)
  theirs = [ex["targets"] for ex in ds.as_numpy_iterator()]
  group_tokens = sum(len(d) for d in _tf_tokens(task, shards[0])[:128])
  full = group_tokens // 568
  ours = reader.TokenCache(directory, metadata).read(0, [j * 568 for j in range(full)], 568)
  assert full > 50
  for a, b in zip(ours, theirs[:full]):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_workers_and_host_shards_equal_one_build(built, shards, register, tmp_path):
  directory, metadata = built
  register(shards)
  two = cache_build.build(TASK, str(tmp_path / "w2"), splits=["train"], workers=2,
                          echo=lambda s: None)
  first = cache_build.build(TASK, str(tmp_path / "s"), splits=["train"], shard=(0, 2),
                            echo=lambda s: None)
  assert list(first.values()) == [None]  # files 1 and 3 are the other host's
  second = cache_build.build(TASK, str(tmp_path / "s"), splits=["train"], shard=(1, 2),
                             echo=lambda s: None)
  expected = _streams(directory, metadata)
  for root, results in ((tmp_path / "w2", two), (tmp_path / "s", second)):
    (name, other), = results.items()
    assert name == os.path.basename(directory)
    assert other == metadata
    for a, b in zip(_streams(str(root / name), other), expected):
      np.testing.assert_array_equal(a, b)


def test_rerun_rebuilds_only_unfinished_files(shards, register, tmp_path):
  register(shards)
  (name, metadata), = cache_build.build(TASK, str(tmp_path), splits=["train"],
                                        echo=lambda s: None).items()
  folder = tmp_path / name
  os.remove(folder / "metadata.json")
  os.remove(folder / cache_lib.done_file(2, 4))
  (folder / cache_lib.data_file(2, 4)).write_bytes(b"partial")  # as if killed mid-file
  live = subprocess.Popen(["sleep", "300"])  # another build of the same file, still running
  dead_tmp = f"{cache_lib.data_file(2, 4)}.tmp-{2 ** 22 + 1}"  # above any Linux pid_max (2**22)
  live_tmp = f"{cache_lib.data_file(2, 4)}.tmp-{live.pid}"
  (folder / dead_tmp).write_bytes(b"left by a killed build")
  (folder / live_tmp).write_bytes(b"being written")
  kept = {i: os.stat(folder / cache_lib.data_file(i, 4)).st_mtime_ns for i in (0, 1, 3)}
  lines = []
  try:
    (_, again), = cache_build.build(TASK, str(tmp_path), splits=["train"],
                                    echo=lines.append).items()
  finally:
    live.kill()
    live.wait()
  # The dead build's temporary file is removed; the live one's is left alone.
  assert [p for p in os.listdir(folder) if ".tmp-" in p] == [live_tmp]
  os.remove(folder / live_tmp)
  assert "4 input files, 1 to build here" in lines[0]
  assert again == metadata
  assert {i: os.stat(folder / cache_lib.data_file(i, 4)).st_mtime_ns for i in (0, 1, 3)} == kept
  assert _streams(str(folder), again)[2].size == metadata.files[2].tokens
  assert not [p for p in os.listdir(folder) if ".tmp-" in p]
  lines.clear()
  cache_build.build(TASK, str(tmp_path), splits=["train"], echo=lines.append)
  assert lines == [f"t5lite cache: {folder} is complete"]


def test_bad_files_and_records_are_skipped_and_counted(c4_lines, register, tmp_path):
  good, corrupt, messy = _write_shards(c4_lines[:30], str(tmp_path / "in"), 3)
  data = open(corrupt, "rb").read()
  open(corrupt, "wb").write(data[:len(data) // 2] + b"\x00garbage" * 50)  # corrupt gzip stream
  kept = [c4_lines[20], c4_lines[25]]
  records = [kept[0], b'{"url": "no text here"}\n', b"{not json\n", b'{"text": "\xff\xfe bad"}\n',
             b'{"text": "\\ud800 lone surrogate"}\n', b'{"text": 7}\n', kept[1]]
  with gzip.open(messy, "wb") as f:
    f.writelines(records)
  task = register([good, corrupt, messy])
  (name, metadata), = cache_build.build(TASK, str(tmp_path / "out"), splits=["train"],
                                        echo=lambda s: None).items()
  entries = metadata.files
  assert entries[0].error is None and entries[0].documents == 10
  assert entries[1].error and entries[1].tokens == 0 and entries[1].cache == ""
  assert metadata.bad_files == {corrupt: entries[1].error}
  assert entries[2].skipped == {"no_text": 2, "invalid_json": 1, "invalid_utf8": 2}
  assert entries[2].skipped_records == 5 and entries[2].documents == 2
  vocabulary = task.output_features["targets"].vocabulary
  expected = np.concatenate([vocabulary.encode(json.loads(line)["text"]) for line in kept])
  stream = _streams(str(tmp_path / "out" / name), metadata)[2]
  np.testing.assert_array_equal(stream, expected)
  on_disk = json.load(open(tmp_path / "out" / name / "metadata.json"))
  assert on_disk["totals"]["bad_files"] == {corrupt: entries[1].error}
  assert on_disk["totals"]["skipped_records"] == 5


def test_source_without_examples_names_its_files(register, tmp_path):
  paths = _write_shards([b'{"url": "x"}\n', b"[]\n"], str(tmp_path), 2)
  register(paths)
  with pytest.raises(ValueError, match="yields no examples") as e:
    cache_build.build(TASK, str(tmp_path / "out"), splits=["train"], echo=lambda s: None)
  assert all(p in str(e.value) for p in paths)


def test_missing_cache_names_the_command(shards, register, tmp_path):
  task = register(shards)
  with pytest.raises(FileNotFoundError) as e:
    reader.open_cache(TASK, task.name, keys.cache_key(task, "train"), "train", str(tmp_path))
  assert f"`t5lite cache {TASK} --output {tmp_path} --split train`" in str(e.value)


def test_other_vocabulary_is_never_used(built, shards, register, tmp_path):
  directory, _ = built
  root = os.path.dirname(directory)
  other_vocab = sentencepiece.train_vocabulary([shards[0]], str(tmp_path / "other.model"), vocab_size=500)
  other = register(shards, vocabulary_path=other_vocab)
  assert keys.cache_key(other, "train").name != os.path.basename(directory)
  with pytest.raises(FileNotFoundError, match="built from other files, steps or vocabulary"):
    reader.open_cache(TASK, other.name, keys.cache_key(other, "train"), "train", root)
  # A folder renamed to the other vocabulary's name is caught by its recorded key.
  shutil.copytree(directory, os.path.join(root, keys.cache_key(other, "train").name))
  with pytest.raises(ValueError, match="was built for"):
    reader.open_cache(TASK, other.name, keys.cache_key(other, "train"), "train", root)
  t5 = register(shards)
  assert reader.open_cache(TASK, t5.name, keys.cache_key(t5, "train"), "train", root).metadata.tokens == 506135


def test_cli_builds_with_gin_sources(shards, t5_vocab_path, tmp_path):
  import gin  # pylint: disable=g-import-not-at-top
  from t5lite.cli import cache as cache_cli  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / "out")
  try:
    rc = cache_cli.main([TASK, "--output", out, "--shard", "1/4", "--split", "train",
                         f"--gin.C4_JSON_FILES={shards!r}",
                         f"--gin.VOCABULARY_PATH='{t5_vocab_path}'"])
    assert rc == 0
    (folder,) = os.listdir(out)
    done = sorted(p for p in os.listdir(os.path.join(out, folder)) if p.endswith(".done.json"))
    assert done == [cache_lib.done_file(1, 4)]
    with pytest.raises(SystemExit):
      cache_cli.main([TASK, "--output", out, "--shard", "4/4"])
  finally:
    gin.clear_config()
    tasks.register_all()


def test_tfds_source_is_cached_per_shard_file(c4_lines, t5_vocab_path, tmp_path):
  """A real TFDS dataset (built here, 3 TFRecord shards): file i's stream is its documents."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  texts = [json.loads(line)["text"] for line in c4_lines[:45]]

  class TinyC4(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"text": tfds.features.Text(), "url": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i, text in enumerate(texts):
        yield i, {"text": text, "url": f"https://example.com/{i}"}

  data_dir = str(tmp_path / "tfds")
  TinyC4(data_dir=data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(num_shards=3))
  vocabulary = vocab.get_vocabulary(str(t5_vocab_path))
  source = seqio.TfdsDataSource("tiny_c4:1.0.0", tfds_data_dir=data_dir)
  try:
    task = tasks.add_task("tiny_tfds_span_corruption", source, vocabulary)
    (name, metadata), = cache_build.build(task.name, str(tmp_path / "out"), splits=["train"],
                                          echo=lambda s: None).items()
    assert name.startswith("tiny_c4-1.0.0-train.")
    files = source.list_shards("train")
    assert [e.source for e in metadata.files] == files and len(files) == 3
    features = TinyC4(data_dir=data_dir).info.features
    for path, stream in zip(files, _streams(str(tmp_path / "out" / name), metadata)):
      docs = [ex["text"].decode() for ex in tf.data.TFRecordDataset(path).map(
          features.deserialize_example).as_numpy_iterator()]
      np.testing.assert_array_equal(stream, np.concatenate([vocabulary.encode(d) for d in docs]))
    assert sum(e.documents for e in metadata.files) == 45
  finally:
    seqio.TaskRegistry.remove("tiny_tfds_span_corruption")


def test_remote_output_is_written_through_gfile(built, shards, register):
  """A non-local output (TF's in-memory ram:// filesystem standing in for gs://): ArrayRecord
  files are written locally and copied; markers and metadata go through tf.io.gfile."""
  directory, metadata = built
  register(shards)
  root = "ram://t5lite-cache-test"
  (name, remote), = cache_build.build(TASK, root, splits=["train"], shard=(0, 2),
                                      echo=lambda s: None).items()
  assert remote is None
  (_, remote), = cache_build.build(TASK, root, splits=["train"], shard=(1, 2),
                                   echo=lambda s: None).items()
  assert remote == metadata
  for entry in metadata.files:
    with tf.io.gfile.GFile(f"{root}/{name}/{entry.cache}", "rb") as f:
      assert f.read() == open(os.path.join(directory, entry.cache), "rb").read()
  assert not [p for p in tf.io.gfile.listdir(f"{root}/{name}") if ".tmp-" in p]
  with pytest.raises(ValueError, match="mount the bucket"):
    reader.TokenCache(f"{root}/{name}", metadata)
