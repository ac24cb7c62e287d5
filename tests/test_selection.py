"""DSIR data selection (t5lite select): parity with the authors' data-selection package, a toy raw
set with a known target, determinism, multi-host / multi-process agreement, restarts, bad input."""
import gzip
import json
import os

import numpy as np
import pytest

from t5lite.cli import select as select_cli
from t5lite.data.sources import demo_corpus
from t5lite.datamix import dsir_features as nf
from t5lite.datamix import dsir as selection
from t5lite import files
from t5lite.datamix import dsir_io as sio

CODE = ("def return self import class lambda yield for in if else None True False print ( ) : = "
        "== [ ] , . args kwargs list dict len range str int raise except try").split()
FOOD = ("the a and of to flour sugar butter oven bake minutes until golden stir add salt pepper "
        "onion garlic heat pan serve fresh cream eggs milk bowl mix slowly taste").split()


def _doc(rng, vocab, words=(110, 180)) -> str:
  return " ".join(rng.choice(vocab, rng.integers(*words)))


def _write_jsonl(path, docs, gz=True) -> str:
  data = "".join(json.dumps({"text": d, "url": f"u{i}"}) + "\n" for i, d in enumerate(docs))
  opener = gzip.open if gz else open
  with opener(path, "wt", encoding="utf-8") as f:
    f.write(data)
  return str(path)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  """3 raw shards of 60 documents, a fifth of them code-like, and a code-like target."""
  d = tmp_path_factory.mktemp("toy")
  rng = np.random.default_rng(0)
  for s in range(3):
    docs = [_doc(rng, CODE if rng.random() < 0.2 else FOOD) for _ in range(60)]
    _write_jsonl(d / f"raw.{s:05d}-of-00003.json.gz", docs)
  target = _write_jsonl(d / "target.jsonl", [_doc(rng, CODE) for _ in range(30)], gz=False)
  return str(d / "raw.*.json.gz"), target


def _plan(toy, out, **kw):
  kw.setdefault("min_words", 100)
  return selection.make_plan([toy[0]], [toy[1]], str(out), kw.pop("num_docs", 30), **kw)


def _selected(out) -> list[bytes]:
  return [line for p in files.glob(os.path.join(out, "selected.*.json.gz"))
          for line in sio.read_lines(p)]


def _quiet(_):
  pass


def test_tokenizer_is_nltks_wordpunct(c4_sample):
  from nltk.tokenize import WordPunctTokenizer
  nltk_tok = WordPunctTokenizer()
  texts = [sio.parse_document(l)[0] for l in sio.read_lines(str(c4_sample))]
  texts += ["Ünïcode naïve café — 3.14 ½ x²; a_b\x1cc e\u00a0f ‘quoted’ can't"]
  f = nf.Featurizer()
  assert all(f.words(t) == nltk_tok.tokenize(t.lower()) for t in texts)


def test_features_weights_and_top_k_equal_the_package(c4_sample, tmp_path):
  """With the package's hash (sha256), t5lite's n-gram counts, fitted log ratios (raw fitted on a
  20k n-gram budget), log importance weights and top-k selection equal data-selection 1.0.3's."""
  from data_selection import HashedNgramDSIR
  from data_selection.hashed_ngram_dsir import get_ngram_counts
  raw_lines = list(sio.read_lines(str(c4_sample)))[:150]
  raw = tmp_path / "raw.jsonl"
  raw.write_bytes(b"".join(l + b"\n" for l in raw_lines))
  target = _write_jsonl(tmp_path / "target.jsonl",
                        [d["text"] for d, _ in zip(demo_corpus.documents(), range(30))], gz=False)

  pkg = HashedNgramDSIR([str(raw)], [target], cache_dir=str(tmp_path / "cache"), num_proc=1)
  pkg.fit_importance_estimator(num_tokens_to_fit=20000)
  pkg.compute_importance_weights()
  pkg.resample(out_dir=str(tmp_path / "pkg_out"), num_to_sample=20, top_k=True)

  f = nf.Featurizer(hash="sha256")
  plan = selection.make_plan([str(raw)], [target], str(tmp_path / "ours"), 20, fit_ngrams=20000,
                             featurizer=f, min_words=100, chunk_words=0, greedy=True)
  selection.select(plan, log=_quiet)

  texts = [sio.parse_document(l)[0] for l in raw_lines]
  for text in texts[:40]:
    np.testing.assert_array_equal(np.bincount(f.buckets(f.words(text)), minlength=10000),
                                  get_ngram_counts(text, n=2, num_buckets=10000))
  model = selection.load_model(plan)
  np.testing.assert_allclose(model["log_ratio"], pkg.log_diff, rtol=1e-12, atol=0)
  pkg_weights = np.load(tmp_path / "cache" / "log_importance_weights" / "0.npy")
  ours = np.array([model["log_ratio"][f.buckets(f.words(t))].sum() for t in texts])
  np.testing.assert_allclose(ours, pkg_weights, rtol=1e-9, atol=1e-9)
  stored = sio.load_npz(plan.path("work", "scores", "00000.npz"))["log_weight"]
  np.testing.assert_allclose(stored, pkg_weights, rtol=1e-6, atol=1e-4)  # stored as float32
  pkg_selected = (tmp_path / "pkg_out" / "0.jsonl").read_bytes().splitlines()
  assert sorted(_selected(plan.output)) == sorted(pkg_selected)
  assert len(pkg_selected) == 20


def test_fast_hash_counts_every_ngram_once():
  f = nf.Featurizer(num_buckets=1000, ngrams=3)
  words = f.words("The cat sat on the mat; the cat sat.")
  buckets = f.buckets(words)
  assert len(buckets) == len(words) + (len(words) - 1) + (len(words) - 2)
  assert buckets.min() >= 0 and buckets.max() < 1000
  assert buckets[0] == buckets[4]  # unigram "the" twice
  strings = f.ngram_strings(words)
  assert len(strings) == len(buckets)
  by_string = {}
  for b, g in zip(buckets.tolist(), strings):
    assert by_string.setdefault(g, b) == b  # an n-gram always lands in the same bucket
  assert len(set(by_string.values())) > 0.8 * len(by_string)  # distinct n-grams mostly apart


def test_toy_selects_target_like_documents_deterministically(toy, tmp_path):
  report = selection.select(_plan(toy, tmp_path / "a", write_random=True), log=_quiet)
  picked = _selected(str(tmp_path / "a"))
  texts = [json.loads(l)["text"] for l in picked]
  code_frac = np.mean([t.split()[0] in CODE for t in texts])
  random_texts = [json.loads(l)["text"] for p in files.glob(str(tmp_path / "a" / "random" / "*.gz"))
                  for l in sio.read_lines(p)]
  assert len(picked) == len(random_texts) == 30 == report["selected"]["dsir"]
  assert code_frac >= 0.9, code_frac
  assert np.mean([t.split()[0] in CODE for t in random_texts]) < 0.5
  assert len(set(picked)) == len(picked)  # no document twice
  raw_lines = {l for p in files.glob(toy[0]) for l in sio.read_lines(p)}
  assert set(picked) <= raw_lines  # verbatim raw lines
  assert report["kl"]["reduction_dsir"] > report["kl"]["reduction_random"]
  assert report["kl"]["dsir_vs_random"] > 0
  assert any(g in CODE for row in report["top_features"]["by_contribution"][:5]
             for g in row["ngrams"])
  weights = sio.load_npz(str(tmp_path / "a" / "weights" / "selected.00000-of-00003.npz"))
  assert len(weights["line"]) == len(list(sio.read_lines(
      str(tmp_path / "a" / "selected.00000-of-00003.json.gz"))))

  selection.select(_plan(toy, tmp_path / "b"), log=_quiet)
  assert _selected(str(tmp_path / "b")) == picked  # same seed, fresh run: the same selection
  selection.select(_plan(toy, tmp_path / "c", seed=1), log=_quiet)
  assert _selected(str(tmp_path / "c")) != picked


def test_hosts_and_worker_processes_agree_with_one_process(toy, tmp_path):
  """--shard 0/2 and 1/2, run stage by stage, then 2 worker processes: the same selection (the
  spawned workers have their own str-hash salt, so this also checks the n-gram hash is stable)."""
  selection.select(_plan(toy, tmp_path / "one"), log=_quiet)
  for stage in ("fit", "score", "write"):
    for host in (1, 0):
      selection.select(_plan(toy, tmp_path / "two", shard=(host, 2)), stage=stage, log=_quiet)
  selection.select(_plan(toy, tmp_path / "two"), stage="report", log=_quiet)
  selection.select(_plan(toy, tmp_path / "procs", workers=2), log=_quiet)
  want = _selected(str(tmp_path / "one"))
  assert _selected(str(tmp_path / "two")) == want
  assert _selected(str(tmp_path / "procs")) == want
  for name in ("report.json",):
    a = json.load(open(tmp_path / "one" / name))
    assert json.load(open(tmp_path / "procs" / name))["kl"] == a["kl"]


def test_urls_go_through_tf_gfile(toy, tmp_path):
  """Raw shards and output on a URL filesystem (TF's in-memory ram://, standing in for gs://):
  the same selection as on local files."""
  import tensorflow as tf
  for path in files.glob(toy[0]):
    tf.io.gfile.makedirs("ram://dsir/raw")
    tf.io.gfile.copy(path, f"ram://dsir/raw/{os.path.basename(path)}", overwrite=True)
  plan = selection.make_plan(["ram://dsir/raw/raw.*.json.gz"], [toy[1]], "ram://dsir/out", 30)
  report = selection.select(plan, log=_quiet)
  selection.select(_plan(toy, tmp_path), log=_quiet)
  assert report["selected"]["dsir"] == 30
  assert _selected("ram://dsir/out") == _selected(str(tmp_path))
  assert tf.io.gfile.exists("ram://dsir/out/report.json")


def test_a_host_missing_other_hosts_files_fails_clearly(toy, tmp_path):
  plan = _plan(toy, tmp_path, shard=(0, 2))
  with pytest.raises(FileNotFoundError, match=r"raw/target fit file\(s\) missing.*raw.00001.npz"):
    selection.select(plan, wait_s=0.2, log=_quiet)


def test_restart_keeps_finished_shards_and_redoes_the_rest(toy, tmp_path):
  plan = _plan(toy, tmp_path)
  selection.select(plan, stage="fit", log=_quiet)
  fit_file = plan.path("work", "fit", "raw.00000.npz")
  mtime = os.path.getmtime(fit_file)
  selection.select(plan, stage="score", log=_quiet)
  os.remove(plan.path("work", "scores", "00001.npz"))  # as if killed before shard 1 was scored
  selection.select(plan, log=_quiet)
  assert os.path.getmtime(fit_file) == mtime
  straight = tmp_path / "straight"
  selection.select(_plan(toy, straight), log=_quiet)
  assert _selected(plan.output) == _selected(str(straight))
  # Another num_docs rewrites the selection from the kept scores; other features are refused.
  report = selection.select(_plan(toy, tmp_path, num_docs=10), log=_quiet)
  assert len(_selected(plan.output)) == 10 == report["selected"]["dsir"]
  with pytest.raises(ValueError, match="other settings.*featurizer"):
    selection.select(_plan(toy, tmp_path, featurizer=nf.Featurizer(num_buckets=500)), log=_quiet)


def test_bad_lines_corrupt_shards_and_bad_arguments(toy, tmp_path):
  rng = np.random.default_rng(1)
  good = [json.dumps({"text": _doc(rng, CODE)}).encode() for _ in range(5)]
  lines = good + [b"not json", b'{"url": "no text"}', b'["a list"]']
  with gzip.open(tmp_path / "raw.00000.json.gz", "wb") as f:
    f.write(b"\n".join(lines) + b"\n")
  full = gzip.compress(b"\n".join(good * 40) + b"\n")
  (tmp_path / "raw.00001.json.gz").write_bytes(full[:len(full) // 2])  # truncated download
  raw = str(tmp_path / "raw.*.json.gz")
  out = tmp_path / "out"
  report = selection.select(selection.make_plan([raw], [toy[1]], str(out), 4), log=_quiet)
  assert report["raw"]["bad_json"] == 1 and report["raw"]["no_text"] == 2
  assert report["raw"]["eligible"] == 5
  assert [c["file"] for c in report["raw"]["corrupt_files"]] == [str(tmp_path / "raw.00001.json.gz")]
  assert "EOFError" in report["raw"]["corrupt_files"][0]["error"]
  assert len(_selected(str(out))) == 4
  with pytest.raises(ValueError, match=r"--num_docs 6 is more than the 5 eligible"):
    selection.select(selection.make_plan([raw], [toy[1]], str(out), 6), log=_quiet)
  with pytest.raises(FileNotFoundError, match="--raw pattern"):
    selection.make_plan([str(tmp_path / "nothing*.gz")], [toy[1]], str(out), 1)
  with pytest.raises(FileNotFoundError, match="--target pattern"):
    selection.select(selection.make_plan([raw], [str(tmp_path / "none.jsonl")],
                                         str(tmp_path / "o2"), 1), log=_quiet)
  with pytest.raises(SystemExit):
    select_cli.main(["--raw", raw, "--target", toy[1], "--num_docs", "1", "--output",
                     str(out), "--shard", "2/2"])


def test_targets_jsonl_pairs_tsv_text_and_a_task(tmp_path):
  (tmp_path / "t.jsonl").write_text(json.dumps({"inputs": "in one", "targets": "out one"}) + "\n"
                                    + json.dumps({"text": "plain"}) + "\n" + "{}\n")
  (tmp_path / "t.tsv").write_text("a b\tc d\n")
  (tmp_path / "t.txt").write_text("line one\n\nline two\n")
  skipped = {"lines": 0}
  got = list(sio.target_texts([str(tmp_path / "t.jsonl"), str(tmp_path / "t.tsv"),
                               str(tmp_path / "t.txt")], skipped))
  assert got == ["in one", "out one", "plain", "a b", "c d", "line one", "line two"]
  assert skipped["lines"] == 1
  texts = list(sio.target_texts(["task:demo_span_corruption:validation"], skipped))
  shard = demo_corpus.demo_assets().validation_pattern
  want = [json.loads(l)["text"] for p in files.glob(shard) for l in sio.read_lines(p)]
  assert texts == want and len(want) > 3


def test_cli_prints_the_summary(toy, tmp_path, capsys):
  rc = select_cli.main(["--raw", toy[0], "--target", toy[1], "--num_docs", "5", "--output",
                        str(tmp_path), "--workers", "1"])
  out = capsys.readouterr().out
  assert rc == 0
  assert "selected 5 of 180 eligible documents" in out and "KL reduction DSIR" in out
  assert json.load(open(tmp_path / "report.json"))["selected"]["dsir"] == 5
