"""The real `t5lite corpus` command (subprocesses): a build and its report; every bad input is one
clear line (exit 2, no traceback) with nothing written half; and the demo's two commands, a
corpus from a WET file then the tiny model trained on it through the token cache."""
import gzip
import json
import os
import re
import shutil

import pytest

import cli_util
from t5lite.corpus import demo


@pytest.fixture(scope="module")
def work(tmp_path_factory, c4_sample, nltk_data, badwords_en):
  root = tmp_path_factory.mktemp("corpus_cli")
  with gzip.open(c4_sample, "rt") as f:
    docs = [json.loads(line) for _, line in zip(range(30), f)]
  (root / "wet").mkdir()
  demo.write_wet(root / "wet" / "CC-MAIN-0.warc.wet.gz", docs)
  (root / "bad").mkdir()
  (root / "bad" / "notext.jsonl").write_text(
      json.dumps({"url": "http://a.com", "text": "A. B. C."}) + "\n"
      + json.dumps({"url": "http://b.com", "body": "x"}) + "\n")
  (root / "bad" / "pages.csv").write_text("url,text\n")
  (root / "taken").mkdir()
  (root / "taken" / "notes.txt").write_text("someone else's folder")
  os.symlink(nltk_data, root / "nltk_data")
  os.symlink(badwords_en, root / "badwords_en")
  return root


ASSETS = ["--nltk_data=nltk_data", "--badwords=badwords_en", "--workers=1"]
BUILD = ["corpus", "build", "--input=wet/*.warc.wet.gz", *ASSETS]
# name: (arguments, what the one error line must name)
BAD = {
    "input_matches_nothing": (["corpus", "build", "--input=nope/*.wet.gz", "--output=o1", *ASSETS],
                              ["nope/*.wet.gz", "no input file matches"]),
    "input_format": (["corpus", "build", "--input=bad/pages.csv", "--output=o2", *ASSETS],
                     ["bad/pages.csv", "expected a Common Crawl WET file"]),
    "json_line_without_text": (["corpus", "build", "--input=bad/notext.jsonl", "--output=o3",
                                *ASSETS], ["notext.jsonl:2", "'text'"]),
    "punkt_missing": (BUILD + ["--output=o4", "--gin.Recipe.sentence_model='klingon'"],
                      ["punkt_tab", "klingon", "nltk.downloader"]),
    "badwords_missing": (["corpus", "build", "--input=wet/*.warc.wet.gz", "--output=o5",
                          "--nltk_data=nltk_data", "--badwords=bad/none"],
                         ["bad/none", "bad-words list", "c4_en_noblocklist.gin"]),
    "folder_of_something_else": (BUILD + ["--output=taken"], ["taken", "holds no corpus.json"]),
    "recipe_unknown": (BUILD + ["--output=o6", "--gin.Recipe.min_wordz=3"], ["min_wordz"]),
    "recipe_out_of_range": (BUILD + ["--output=o7", "--gin.Recipe.badwords_fraction=1.5"],
                            ["badwords_fraction"]),
    "report_of_nothing": (["corpus", "report", "bad"], ["bad", "corpus.json"]),
    "slurm_without_partition": (BUILD + ["--output=o8", "--executor=slurm"], ["partition"]),
}


@pytest.mark.slow
def test_build_report_and_bad_inputs(work):
  results = cli_util.run_many({
      "build": (BUILD + ["--output=out", "--gin_file=corpus/c4_en.gin"], work),
      **{name: (args, work) for name, (args, _) in BAD.items()}})
  build = results["build"]
  assert build.code == 0, build
  assert re.search(r"pages in\s+40\n", build.out) and "kept: validation" in build.out, build
  assert sorted(p.name for p in (work / "out").glob("c4-*")) == [
      "c4-train.00000-of-00001.json.gz", "c4-validation.00000-of-00001.json.gz"]
  for name, (_, expected) in BAD.items():
    result = results[name]
    assert result.code == 2, result
    assert "Traceback" not in result.err, result
    lines = [line for line in result.err.splitlines() if line.startswith("t5lite: error:")]
    assert len(lines) == 1, result
    for text in expected:
      assert text in lines[0], (text, result)
  assert not list(work.glob("o[0-9]/c4-*"))  # no shard written by a failed build
  assert os.listdir(work / "taken") == ["notes.txt"]

  again = cli_util.run_many({
      "report": (["corpus", "report", "out"], work),
      "other_build": (BUILD + ["--output=out", "--gin.Recipe.min_words_per_line=3"], work),
      "rerun": (BUILD + ["--output=out", "--gin_file=corpus/c4_en.gin"], work)})
  assert again["report"].code == 0 and "kept: train" in again["report"].out, again["report"]
  assert again["other_build"].code == 2, again["other_build"]
  assert "holds another build" in again["other_build"].err
  assert "recipe.min_words_per_line" in again["other_build"].err
  assert again["rerun"].code == 0 and again["rerun"].out.split("\n", 1)[1] == (
      build.out.split("\n", 1)[1]), again["rerun"]


@pytest.mark.slow
def test_demo_two_commands_build_a_corpus_and_train_on_it(tmp_path, nltk_data, badwords_en):
  """`make corpus-demo`: demo-wet, then `t5lite corpus build`, then `t5lite train` on the shards
  through the token cache (gin_configs/runs/corpus_demo.gin), the loss going down."""
  wet = "runs/corpus_demo/CC-MAIN-demo.warc.wet.gz"
  result = cli_util.run(["corpus", "demo-wet", wet], cwd=tmp_path)
  assert result.code == 0 and (tmp_path / "runs/corpus_demo/spiece.model").exists(), result
  result = cli_util.run(["corpus", "build", "--input=runs/corpus_demo/*.warc.wet.gz",
                         "--output=runs/corpus_demo/c4", f"--nltk_data={nltk_data}",
                         f"--badwords={badwords_en}", "--gin.Recipe.validation_modulus=20"],
                        cwd=tmp_path)
  assert result.code == 0, result
  report = json.loads((tmp_path / "runs/corpus_demo/c4/report.json").read_text())
  assert report["kept"]["train"] > 100 and report["kept"]["validation"] > 0
  for reason in ("url_duplicate", "lorem_ipsum", "curly_bracket", "too_long", "language_other",
                 "badwords"):
    assert report["pages_dropped"].get(reason), reason
  for reason in ("no_endmark", "javascript", "policy", "global_duplicate"):
    assert report["lines_dropped"].get(reason), reason
  result = cli_util.run(["train", "--gin_file=runs/corpus_demo.gin", "--gin.TRAIN_STEPS=60",
                         "--gin.train.eval_period=0", "--gin.train.predict_examples=0",
                         "--gin.Checkpointer.save_period=60"], cwd=tmp_path, timeout=900)
  assert result.code == 0, result
  first, last = map(float, re.search(r"train loss ([\d.]+) at step 1 -> ([\d.]+) at step 60",
                                     result.out + result.err).groups())
  assert last < first - 1.5, result
  assert list((tmp_path / "runs/corpus_demo/tokens").iterdir())  # through the token cache
  shutil.rmtree(tmp_path / "runs")
