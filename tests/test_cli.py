"""The real `t5lite` command (subprocesses): every bad input is one clear line (exit 2, no
traceback) naming the input, and every command takes relative paths from any working folder."""
import gzip
import json
import os
import shutil
import socket
import time

import pytest

import cli_util

from t5lite import files

pytestmark = pytest.mark.slow  # every test here starts processes or trains

TINY = [
    "--gin_file=runs/demo.gin", "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
    "--gin.BATCH_SIZE=8", "--gin.Config.emb_dim=32", "--gin.Config.mlp_dim=64",
    "--gin.Config.num_heads=2", "--gin.Config.head_dim=16", "--gin.LoopConfig.log_period=1",
    "--gin.EvalConfig.period=0", "--gin.EvalConfig.predict_examples=0",
    "--gin.Checkpointer.async_save=False",
]
EXAMPLES = [{"inputs": "def f(x): return x", "targets": "a function"},
            {"inputs": "import os", "targets": "a module"}]


def write_jsonl(path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  files.write_jsonl(path, rows)
  return path


@pytest.fixture(scope="module")
def work(tmp_path_factory, c4_sample, t5_vocab_path):
  """A folder with a trained run (runs/rel, trained with a relative MODEL_DIR from here), links
  to the real data, and the bad inputs of the table below."""
  root = tmp_path_factory.mktemp("cli")
  (root / "data").mkdir()
  os.symlink(c4_sample, root / "data" / "c4.json.gz")
  os.symlink(t5_vocab_path, root / "data" / "spm.model")
  result = cli_util.run(["train", *TINY, "--gin.MODEL_DIR='runs/rel'", "--gin.TRAIN_STEPS=3"],
                        cwd=root)
  assert result.code == 0, result
  bad = root / "bad"
  bad.mkdir()
  with gzip.open(bad / "notext.json.gz", "wt") as f:
    f.writelines(json.dumps({"content": f"no text {i}"}) + "\n" for i in range(20))
  with gzip.open(bad / "empty.json.gz", "wt"):
    pass
  data = gzip.compress(b"".join(json.dumps({"text": f"Sentence {i}. " * 30}).encode() + b"\n"
                                for i in range(500)))
  (bad / "corrupt.json.gz").write_bytes(data[:len(data) // 2])
  # A bad line mid-file: the line number every Python's tokenizer reports alike (an unclosed
  # bracket at the end is line 3 on 3.11, line 2 on 3.12).
  (bad / "syntax.gin").write_text(
      "Config.emb_dim = 64\nConfig.num_heads = 4 4\nConfig.mlp_dim = 8\n")
  (bad / "notjson.jsonl").write_text(json.dumps(EXAMPLES[0]) + "\n{not json\n")
  write_jsonl(bad / "nokey.jsonl", [{"text": "no inputs"}])
  (bad / "latin1.jsonl").write_bytes(b'{"inputs": "caf\xe9", "targets": "x"}\n')
  (bad / "notab.tsv").write_text("input\ttarget\nno tab on this line\n")
  (bad / "nonhf").mkdir()
  (bad / "nonhf" / "README").write_text("not a model")
  (bad / "pickled").mkdir()
  (bad / "pickled" / "config.json").write_text(json.dumps(
      {"model_type": "t5", "vocab_size": 64, "d_model": 16, "d_kv": 4, "d_ff": 32,
       "num_layers": 1, "num_heads": 4, "feed_forward_proj": "gated-gelu"}))
  (bad / "pickled" / "pytorch_model.bin").write_bytes(b"pickle")
  (bad / "nockpt").mkdir()
  (bad / "locked").mkdir()
  now = time.time()
  (bad / "locked" / "run.lock").write_text(json.dumps(
      {"host": socket.gethostname(), "pid": os.getpid(), "started": now, "heartbeat": now,
       "token": "x"}))
  write_jsonl(root / "in.jsonl", EXAMPLES)
  return root


C4 = "--gin.C4_JSON_FILES='{}'"
VOCAB = "--gin.VOCABULARY_PATH='data/spm.model'"
# name: (arguments, what the message must name, exit code)
BAD = {
    "unknown_command": (["nope"], ["unknown command 'nope'"], 2),
    "vocabulary_missing": (["inspect", "c4_json_span_corruption", C4.format("data/c4.json.gz"),
                            "--gin.VOCABULARY_PATH='/nope/spm.model'"], ["/nope/spm.model"], 2),
    "vocabulary_unreachable": (["inspect", "c4_json_span_corruption",
                                C4.format("data/c4.json.gz")],
                               ["gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"], 2),
    "corrupt_gzip_shard": (["inspect", "c4_json_span_corruption", C4.format("bad/corrupt.json.gz"),
                            VOCAB, "--stats_examples=5"], ["bad/corrupt.json.gz", "corrupt"], 2),
    "records_without_text": (["inspect", "c4_json_span_corruption",
                              C4.format("bad/notext.json.gz"), VOCAB, "--stats_examples=5"],
                             ["yields no examples", "notext.json.gz", "no_text"], 2),
    "source_without_examples": (["train", *TINY, "--gin.MODEL_DIR='runs/empty'",
                                 "--gin.MIXTURE_OR_TASK_NAME='c4_json_span_corruption'",
                                 "--gin.Config.vocab_size=32128", VOCAB,
                                 C4.format("bad/empty.json.gz")],
                                ["c4_json_span_corruption", "yields no examples",
                                 "empty.json.gz"], 2),
    "pattern_matches_nothing": (["inspect", "c4_json_span_corruption", VOCAB,
                                 C4.format("/nope/c4-*.json.gz")], ["/nope/c4-*.json.gz"], 2),
    "gin_syntax_flag": (["train", "--gin_file=runs/demo.gin", "--gin.BATCH_SIZE=("],
                        ["BATCH_SIZE = (", "--gin."], 2),
    "gin_syntax_file": (["train", "--gin_file=runs/demo.gin", "--gin_file=bad/syntax.gin"],
                        ["bad/syntax.gin", "line 2"], 2),
    "gin_unknown_parameter": (["train", "--gin_file=runs/demo.gin", "--gin.Config.emb_dimm=3"],
                              ["emb_dimm", "Config"], 2),
    "gin_file_missing": (["inspect", "--gin_file=runs/nope.gin"], ["runs/nope.gin", "not found"],
                         2),
    "required_macro": (["train", "--gin_file=models/t5_1_1/tiny.gin",
                        "--gin_file=runs/pretrain.gin"], ["MODEL_DIR"], 2),
    "unknown_task": (["inspect", "c4_spam"], ["unknown task or mixture 'c4_spam'"], 2),
    "targets_too_short": (["inspect", "demo_ul2", "--inputs_length=512", "--targets_length=114"],
                          ["targets length 114 is too short"], 2),
    "import_hf_missing": (["import-hf", "bad/no_such_folder", "runs/x"],
                          ["no_such_folder", "does not exist"], 2),
    "import_hf_not_hf": (["import-hf", "bad/nonhf", "runs/x"], ["nonhf", "config.json"], 2),
    "import_hf_pickle_only": (["import-hf", "bad/pickled", "runs/x"],
                              ["pytorch_model.bin", "safetensors only"], 2),
    "run_without_checkpoints": (["score", "--model_dir=bad/nockpt", "--input=in.jsonl"],
                                ["nockpt", "no finished checkpoint"], 2),
    "jsonl_not_json": (["score", "--model_dir=runs/rel", "--input=bad/notjson.jsonl"],
                       ["bad/notjson.jsonl:2", "not a JSON line"], 2),
    "jsonl_missing_key": (["infer", "--model_dir=runs/rel", "--input=bad/nokey.jsonl"],
                          ["bad/nokey.jsonl:1", "'inputs'"], 2),
    "input_not_utf8": (["score", "--model_dir=runs/rel", "--input=bad/latin1.jsonl"],
                       ["bad/latin1.jsonl:1", "not UTF-8"], 2),
    "input_missing": (["infer", "--model_dir=runs/rel", "--input=bad/none.jsonl"],
                      ["bad/none.jsonl"], 2),
    "tsv_without_tab": (["train", "--gin_file=runs/finetune.gin",
                         "--gin_file=models/t5_1_1/tiny.gin", "--gin.Config.emb_dim=32",
                         "--gin.Config.mlp_dim=64", "--gin.Config.num_heads=2",
                         "--gin.MODEL_DIR='runs/ft'", "--gin.INIT_CHECKPOINT=None",
                         "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=8",
                         "--gin.register_user_task.name='tsv_task'",
                         "--gin.register_user_task.train_files='bad/notab.tsv'",
                         "--gin.register_user_task.format='tsv'",
                         "--gin.register_user_task.vocabulary_path='data/spm.model'",
                         "--gin.Config.vocab_size=32128",
                         "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 16}"],
                        ["bad/notab.tsv:2", "no tab"], 2),
    "mesh_does_not_fit": (["train", *TINY, "--gin.MODEL_DIR='runs/m'",
                           "--gin.make_mesh.mesh_shape=(3, 3)"], ["needs 9 devices"], 2),
    "batch_does_not_fit": (["train", *TINY, "--gin.MODEL_DIR='runs/b'", "--gin.BATCH_SIZE=7",
                            "--gin.make_mesh.mesh_shape=(2, 1)", "--num_cpu_devices=2"],
                           ["BATCH_SIZE 7", "'data' size 2"], 2),
    "checkpoint_does_not_fit": (["score", "--model_dir=runs/rel", "--input=in.jsonl",
                                 "--gin.Config.emb_dim=48"],
                                ["does not fit the model", "params/"], 2),
    "folder_locked": (["train", *TINY, "--gin.MODEL_DIR='bad/locked'", "--gin.TRAIN_STEPS=2",
                       "--gin.RunLock.stale_seconds=1e9"],  # however long the module took
                      ["in use by another training run", f"pid {os.getpid()}"], 2),
    "cache_missing": (["train", *TINY, "--gin.MODEL_DIR='runs/c'",
                       "--gin.DATA_CACHE_DIR='bad/no_cache'",
                       "--gin.Sources.build_missing_cache=False"],
                      ["t5lite cache demo_span_corruption --output bad/no_cache"], 2),
    "vocab_input_missing": (["vocab", "--input=bad/none*.txt", "--output=v/spm.model"],
                            ["bad/none*.txt"], 2),
    "diverged": (["train", *TINY, "--gin.MODEL_DIR='runs/diverged'", "--gin.TRAIN_STEPS=20",
                  "--gin.learning_rate_schedule.peak=1e9", "--gin.LoopConfig.max_consecutive_skips=3"],
                 ["training diverged", "first bad step was", "last good checkpoint"], 3),
}


@pytest.fixture(scope="module")
def bad_results(work):
  return cli_util.run_many({name: (args, work) for name, (args, _, _) in BAD.items()})


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_one_clear_line(bad_results, name):
  _, expected, code = BAD[name]
  result = bad_results[name]
  assert result.code == code, result
  assert "Traceback" not in result.err, result
  lines = [line for line in result.err.splitlines() if line.startswith("t5lite: error:")
           or line.startswith("t5lite: unknown command")]
  assert len(lines) == 1, result
  for text in expected:
    assert text in lines[0], (text, result)


def test_at_least_25_distinct_bad_inputs():
  assert len(BAD) >= 25


def test_every_command_takes_relative_paths(work):
  """From another working folder, every path relative: run folders, checkpoints, data patterns,
  vocabularies, outputs."""
  here = work / "elsewhere"
  here.mkdir()
  rel = "../runs/rel"
  vocab = "--gin.VOCABULARY_PATH='../data/spm.model'"
  c4 = "--gin.C4_JSON_FILES='../data/c4.json.gz'"
  results = cli_util.run_many({
      "score": (["score", f"--model_dir={rel}", "--input=../in.jsonl",
                 "--output=../out/scores.jsonl"], here),
      "infer": (["infer", f"--model_dir={rel}", "--input=../in.jsonl", "--output=../out/p.jsonl",
                 "--max_decode_length=4"], here),
      "eval": (["eval", f"--model_dir={rel}", "--eval_steps=1", "--num_examples=0"], here),
      "export": (["export-hf", rel, "../out/hf"], here),
      "inspect": (["inspect", "c4_json_span_corruption", vocab, c4, "--stats_examples=4",
                   "--num_examples=1"], here),
      "vocab": (["vocab", "--input=../data/c4.json.gz", "--output=../out/v/spm.model",
                 "--vocab_size=300"], here),
      "cache": (["cache", "demo_span_corruption", "--output=../out/cache", "--split=train"], here),
      "select": (["select", "--raw=../data/c4.json.gz", "--target=../in.jsonl", "--num_docs=5",
                  "--output=../out/selected", "--min_words=5"], here),
  })
  for name, result in results.items():
    assert result.code == 0, (name, str(result))
  out = work / "out"
  assert len((out / "scores.jsonl").read_text().splitlines()) == 2
  assert "prediction" in (out / "p.jsonl").read_text()
  assert (work / "runs" / "rel" / "eval.jsonl").exists()
  assert (out / "hf" / "model.safetensors").exists()
  assert (out / "v" / "spm.model").exists()
  assert any((out / "cache").iterdir())
  assert list((out / "selected").glob("*.json.gz"))
  results = cli_util.run_many({
      "import": (["import-hf", "../out/hf", "../runs/imported"], here),
      "train_cached": (["train", *TINY, "--gin.MODEL_DIR='../runs/cached'",
                        "--gin.TRAIN_STEPS=2", "--gin.DATA_CACHE_DIR='../out/cache'"], here),
      "resume_relative": (["train", *TINY, "--gin.MODEL_DIR='../runs/rel'",
                           "--gin.TRAIN_STEPS=4"], here),
      "doremi": (["doremi", "--gin_file=runs/doremi_demo.gin", "--gin.MODEL_DIR='../runs/dro'",
                  "--gin.DATA_CACHE_DIR='../out/cache'", "--gin.TRAIN_STEPS=2",
                  *TINY[2:7]], here),
  })
  for name, result in results.items():
    assert result.code == 0, (name, str(result))
  assert (work / "runs" / "imported" / "checkpoints" / "0").is_dir()
  assert (work / "runs" / "cached" / "checkpoints" / "2").is_dir()
  assert "resumed from" in results["resume_relative"].out
  assert (work / "runs" / "rel" / "checkpoints" / "4").is_dir()
  assert "register_all.rates" in (work / "runs" / "dro" / "domain_weights.gin").read_text()
  shutil.rmtree(work / "runs" / "imported")
