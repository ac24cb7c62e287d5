"""Sources, tasks, the demo corpus, vocabularies and the batched pipeline."""
import gzip
import json
import os
import threading

import gin
import numpy as np
import pytest
import seqio

from t5lite import main
from t5lite.data.sources import demo_corpus
from t5lite.data.feed import tfdata as pipeline
from t5lite.data.tasks import registry as tasks
from t5lite.data.vocab import seqio_vocab as vocab
from t5lite.serving import run
from t5lite.store.run_dir import RunDir
from t5lite.data.sources.json_lines import JsonLinesDataSource
from t5lite.data.sources.sources import Sources

SMALL = {"inputs": 512, "targets": 114}


@pytest.fixture
def c4_json_task(c4_sample, t5_vocab_path):
  tasks.register_all(Sources(vocabulary_path=str(t5_vocab_path), c4_json_files=str(c4_sample),
                             c4_json_validation_files=str(c4_sample)))
  yield tasks.C4_JSON
  tasks.register_all()


def test_allenai_shard_reads_text_only(c4_allenai_shard):
  source = JsonLinesDataSource({"train": str(c4_allenai_shard)})
  docs = list(source.get_dataset("train", shuffle=False).as_numpy_iterator())
  with gzip.open(c4_allenai_shard, "rt", encoding="utf-8") as f:
    lines = [json.loads(line) for line in f]
  assert set(lines[0]) == {"text", "timestamp", "url"}
  assert len(docs) == 3
  assert all(set(d) == {"text"} for d in docs)  # url and timestamp dropped
  assert [d["text"].decode("utf-8") for d in docs] == [line["text"] for line in lines]


def test_tokenize_in_batches_equals_seqio_tokenize(c4_sample, t5_vocab_path):
  """Same keys, ids and order as seqio.preprocessors.tokenize on the real C4 sample (with a
  batch size that leaves a partial last batch)."""
  source = JsonLinesDataSource({"train": str(c4_sample)})
  features = tasks.output_features(vocab.get_vocabulary(str(t5_vocab_path)))
  rekeyed = seqio.preprocessors.rekey(source.get_dataset("train", shuffle=False).take(150),
                                      key_map={"inputs": None, "targets": "text"})
  ours = list(tasks.tokenize_in_batches(rekeyed, features, batch_size=64).as_numpy_iterator())
  theirs = list(seqio.preprocessors.tokenize(rekeyed, features).as_numpy_iterator())
  assert len(ours) == len(theirs) == 150
  for a, b in zip(ours, theirs):
    assert set(a) == set(b) == {"inputs", "targets", "inputs_pretokenized", "targets_pretokenized"}
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert len(theirs[0]["targets"]) > 10


def test_missing_json_pattern_names_it(t5_vocab_path, tmp_path):
  pattern = str(tmp_path / "nothing-here.*.json.gz")
  tasks.register_all(Sources(vocabulary_path=str(t5_vocab_path), c4_json_files=pattern))
  try:
    with pytest.raises(FileNotFoundError, match="nothing-here"):
      pipeline.get_dataset(tasks.C4_JSON, SMALL, 2)
  finally:
    tasks.register_all()


def test_unknown_task_lists_names():
  with pytest.raises(ValueError) as e:
    tasks.get_task_or_mixture("no_such_task")
  for name in tasks.TASK_NAMES:
    assert name in str(e.value)


def test_sources_are_gin_configurable(tmp_path):
  with gin.unlock_config():
    gin.parse_config("Sources.tfds_version = '2.2.0'\n"
                     f"Sources.tfds_data_dir = '{tmp_path}'")
  try:
    tasks.register_all()
    source = seqio.get_mixture_or_task(tasks.C4_TFDS).source
    assert source.tfds_dataset.name == "c4/en:2.2.0"
  finally:
    gin.clear_config()
    tasks.register_all()


def test_get_vocabulary_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.model"):
    vocab.get_vocabulary(str(tmp_path / "nope.model"))


def _take(ds, n):
  return list(ds.take(n).as_numpy_iterator())


def test_pipeline_resume_and_shards(c4_json_task):
  get = lambda **kw: pipeline.get_dataset(c4_json_task, SMALL, 4, seed=7, **kw)  # noqa: E731
  stream = _take(get(), 6)
  resumed = _take(get(start_batch=3), 3)
  for a, b in zip(stream[3:], resumed):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  batch = stream[0]
  assert batch["encoder_input_tokens"].shape == (4, 512)
  assert batch["decoder_target_tokens"].shape == (4, 114)
  assert {"encoder_segment_ids", "decoder_positions", "decoder_loss_weights"} <= set(batch)
  # One file, two hosts: sharded by example (unpacked here, to be quick), different per host.
  shard = lambda i: _take(get(shard_info=seqio.ShardInfo(i, 2), shuffle=False, pack=False), 1)[0]  # noqa: E731
  s0, s1 = shard(0), shard(1)
  assert "encoder_segment_ids" not in s0
  assert not np.array_equal(s0["encoder_input_tokens"], s1["encoder_input_tokens"])


def test_demo_assets_and_task(tmp_path, monkeypatch):
  monkeypatch.setenv("T5LITE_CACHE", str(tmp_path))
  tasks.register_all()
  try:
    assert not (tmp_path / "demo").exists()  # registering builds nothing
    results = []
    threads = [threading.Thread(target=lambda: results.append(demo_corpus.demo_assets()))
               for _ in range(2)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    assert len(results) == 2 and results[0] == results[1]
    assets = results[0]
    names = sorted(os.listdir(tmp_path / "demo"))
    assert names == ["c4-train.00000-of-00004.json.gz", "c4-train.00001-of-00004.json.gz",
                     "c4-train.00002-of-00004.json.gz", "c4-train.00003-of-00004.json.gz",
                     "c4-validation.00000-of-00001.json.gz", "spiece.model"]
    with gzip.open(tmp_path / "demo" / names[0], "rt", encoding="utf-8") as f:
      assert set(json.loads(f.readline())) == {"text", "timestamp", "url"}
    v = vocab.get_vocabulary(assets.vocab_path)
    sp = v.tokenizer
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    assert v.vocab_size == demo_corpus.VOCAB_SIZE + 100
    assert v.encode("def f():\n  return 1") and v.decode(v.encode("the module")) == "the module"
    batch = _take(pipeline.get_dataset(tasks.DEMO, SMALL, 2, split="validation"), 1)[0]
    assert batch["encoder_input_tokens"].max() < v.vocab_size
    assert batch["decoder_target_tokens"].max() == v.vocab_size - 1  # <extra_id_0>
  finally:
    tasks.register_all()


def test_vocab_cli(c4_allenai_shard, tmp_path):
  text = tmp_path / "extra.txt"
  text.write_text("Plain text lines are read too.\nAnother line of plain text.\n")
  out = tmp_path / "v" / "spiece.model"
  assert main.main(["vocab", "--input", str(c4_allenai_shard), "--input", str(text),
                    "--output", str(out), "--vocab_size", "200"]) == 0
  v = vocab.get_vocabulary(str(out), extra_ids=10)
  assert v.vocab_size == 210 and v.tokenizer.bos_id() == -1 and v.tokenizer.pad_id() == 0
  with pytest.raises(SystemExit) as e:
    main.run_with_args(["vocab", "--input", str(tmp_path / "none*.json"), "--output", str(out)])
  assert e.value.code == 2


@pytest.mark.parametrize("run_config", [[], ["runs/pretrain.gin"], ["runs/demo.gin"]])
def test_source_macros_reach_every_task_family(run_config, c4_sample, t5_vocab_path, tmp_path):
  """--gin.VOCABULARY_PATH / --gin.C4_JSON_FILES / GPT2_BPE_DIR, as `train` and `inspect` parse
  them (sources.gin first, then the files, then the flags), reach span corruption, BART and UL2
  tasks, with or without a run config."""
  from t5lite.cli import common  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  argv = [f"--gin_file={f}" for f in run_config] + [
      f"--gin.VOCABULARY_PATH='{t5_vocab_path}'", f"--gin.C4_JSON_FILES='{c4_sample}'",
      f"--gin.GPT2_BPE_DIR='{tmp_path}'"]
  try:
    common.parse_gin_flags(argv)
    tasks.register_all()
    for name in ("c4_json_span_corruption", "c4_json_prefix_lm", "c4_json_ul2_s_rate25",
                 "c4_span_corruption"):
      vocab_ = tasks.get_task_or_mixture(name).output_features["targets"].vocabulary
      assert vocab_.sentencepiece_model_file == str(t5_vocab_path), name
    for name in ("c4_json_span_corruption", "c4_json_bart_denoising", "c4_json_ul2_r_mean3_rate15"):
      assert tasks.get_task_or_mixture(name).source.list_shards("train") == [str(c4_sample)]
    bart = tasks.get_task_or_mixture("c4_json_bart_denoising").output_features["targets"]
    assert str(bart.vocabulary.bpe_dir) == str(tmp_path)
  finally:
    gin.clear_config()
    tasks.register_all()


def test_source_macros_reach_eval_on_a_run_folder(c4_sample, t5_vocab_path, tmp_path):
  """`eval` / `score` parse the run folder's gin, then the flags: the flags win."""
  from t5lite.cli import common  # pylint: disable=g-import-not-at-top
  (tmp_path / "config.gin").write_text("VOCABULARY_PATH = '/old/spm.model'\n"
                                       "DataConfig.mixture_or_task_name = 'c4_json_span_corruption'\n")
  try:
    common.parse_run_gin(RunDir(tmp_path), bindings=[
        f"VOCABULARY_PATH = '{t5_vocab_path}'", f"C4_JSON_FILES = '{c4_sample}'"])
    tasks.register_all()
    task = tasks.get_task_or_mixture(run.task_name())
    assert task.output_features["targets"].vocabulary.sentencepiece_model_file == str(
        t5_vocab_path)
    assert task.source.list_shards("train") == [str(c4_sample)]
  finally:
    gin.clear_config()
    tasks.register_all()
