"""`t5lite corpus prune`: perplexity pruning with a tiny randomly initialised run on a handful of
documents (the embedded corpus's and a few short ones), its scores against inference.score_tokens,
its selections against a plain sort of those scores, its shards, resuming, and bad input."""
import gzip
import json
import os
import shutil

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5lite import main
from t5lite.cli import common
from t5lite.corpus import prune
from t5lite.data.sources import demo_corpus
from t5lite.data.vocab import sentencepiece
from t5lite.model.config import Config
from t5lite.model.network import EncoderDecoder
from t5lite.serving import inference
from t5lite.serving import run as runs
from t5lite.store.checkpoints import Checkpointer
from t5lite.store.run_dir import RunDir

LENGTH = 32  # --inputs_length and --targets_length: most demo documents are longer than both
TINY = dict(vocab_size=3200, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
            num_encoder_layers=2, num_decoder_layers=2, dtype="float32")
SHORT = ["A short document.", "Two words", "", "One more short one, with a comma."]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A run folder as import-hf writes one: model.gin, spiece.model (the demo vocabulary) and a
  step-0 checkpoint of randomly initialised parameters."""
  d = tmp_path_factory.mktemp("scorer")
  config = Config(**TINY)
  dummy = jnp.ones((1, 1), jnp.int32)
  params = nn.unbox(EncoderDecoder(config).init(jax.random.key(3), dummy, dummy)["params"])
  ckpt = Checkpointer(str(d / "checkpoints"), async_save=False)
  ckpt.save(0, {"params": jax.device_get(params)}, {"batches": 0}, force=True)
  ckpt.close()
  (d / "model.gin").write_text("".join(f"Config.{k} = {v!r}\n" for k, v in TINY.items()))
  shutil.copyfile(demo_corpus.demo_assets().vocab_path, d / "spiece.model")
  return d


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """Two shards, 14 documents: 8 in an allenai/c4-style .json.gz, 6 (one empty, a blank line
  between) in a plain .jsonl with one more key."""
  d = tmp_path_factory.mktemp("corpus")
  docs = [doc["text"] for doc, _ in zip(demo_corpus.documents(), range(10))] + SHORT
  records = [{"text": t, "timestamp": "2019-04-25T00:00:00Z", "url": f"https://x.org/{i}"}
             for i, t in enumerate(docs)]
  with gzip.open(d / "c4-train.00000-of-00002.json.gz", "wt", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in records[:8])
  lines = [json.dumps({**r, "source": "plain"}) + "\n" for r in records[8:]]
  (d / "c4-train.00001-of-00002.jsonl").write_text("".join(lines[:2] + ["\n"] + lines[2:]))
  return d, records


def prune_cli(corpus_dir, run_dir, output, *flags):
  gin.clear_config()
  argv = ["corpus", "prune", "--input", str(corpus_dir / "c4-train.*"), "--output", str(output),
          "--model_dir", str(run_dir), f"--inputs_length={LENGTH}", f"--targets_length={LENGTH}",
          "--batch_size=4", *flags]
  assert main.main(argv) == 0
  return prune.load_summary(str(output))


def read_gz_lines(path):
  with gzip.open(path, "rb") as f:
    return f.read().splitlines(keepends=True)


def scores_of(output):
  with gzip.open(os.path.join(output, prune.SCORES), "rt") as f:
    return [json.loads(line) for line in f]


def expected_kept(losses, keep, how):
  """The selection written out plainly: rank by (loss, document order), or by (-loss, order)."""
  n = len(losses)
  k = min(n, max(1, int(np.floor(keep * n + 0.5))))
  ascending = sorted(range(n), key=lambda i: (losses[i], i))
  if how == "low":
    return set(ascending[:k])
  if how == "high":
    return set(sorted(range(n), key=lambda i: (-losses[i], i))[:k])
  start = (n - k) // 2
  return set(ascending[start:start + k])


# ----------------------------------------------------------------------------- pure parts


def test_select_on_synthetic_scores_with_ties():
  losses = np.array([5.0, 1.0, 3.0, 3.0, 2.0, 4.0, 0.0, 3.0, 6.0, 7.0])
  def kept(keep, how, seed=0):
    return set(np.flatnonzero(prune.select(losses, keep, how, seed)).tolist())
  assert kept(0.3, "low") == {6, 1, 4}
  assert kept(0.3, "high") == {9, 8, 0}
  # ascending: 6 1 4 2 3 7 5 0 8 9; middle 4 of 10 drops 3 below and 3 above
  assert kept(0.4, "middle") == {2, 3, 7, 5}
  # three 3.0s tie: low 5 takes the earlier ones first; high 6 takes 2 and 3 of the three, and
  # middle 5 of 10 (drops 2 below, 3 above) keeps 4 2 3 7 5
  assert kept(0.5, "low") == {6, 1, 4, 2, 3}
  assert kept(0.6, "high") == {9, 8, 0, 5, 2, 3}
  assert kept(0.5, "middle") == {4, 2, 3, 7, 5}
  for how in prune.SELECTIONS:
    assert kept(1.0, how) == set(range(10))
    assert len(kept(0.01, how)) == 1  # a non-empty corpus keeps at least one document
  assert kept(0.5, "random", 1) == kept(0.5, "random", 1) and len(kept(0.5, "random", 1)) == 5
  assert any(kept(0.5, "random", s) != kept(0.5, "random", 1) for s in range(2, 6))
  for n in range(1, 30):  # round half up, as many as asked
    assert prune.select(np.arange(n, dtype=float), 0.5, "middle").sum() == max(1, (n + 1) // 2)
  rng = np.random.default_rng(0)
  for _ in range(20):
    x = rng.integers(0, 5, 17).astype(float)
    for how in ("low", "middle", "high"):
      assert set(np.flatnonzero(prune.select(x, 0.4, how))) == expected_kept(x, 0.4, how)
  with pytest.raises(ValueError, match="not finite"):
    prune.select(np.array([1.0, np.nan]), 0.5, "low")
  assert prune.thresholds(losses, prune.select(losses, 0.4, "middle"), "middle") == {
      "lower": 3.0, "upper": 4.0}


def test_prefix_split_fills_long_documents_and_halves_short_ones():
  ids = list(range(10, 110))
  assert prune.prefix_split(ids, 8, 6, 1) == (ids[:7] + [1], ids[7:12] + [1])
  assert prune.prefix_split(ids[:9], 8, 8, 1) == (ids[:4] + [1], ids[4:9] + [1])
  assert prune.prefix_split(ids[:40], 32, 6, 1) == (ids[:31] + [1], ids[31:36] + [1])
  assert prune.prefix_split(ids[:20], 32, 6, 1) == (ids[:15] + [1], ids[15:20] + [1])
  assert prune.prefix_split([], 8, 8, 1) == ([1], [1])
  assert prune.prefix_split([7], 8, 8, 1) == ([1], [7, 1])


# ----------------------------------------------------------------------------- the command


def test_scores_equal_score_tokens_and_middle_keeps_the_right_documents(run_dir, corpus, tmp_path):
  """Over a (4, 2) mesh: batch over 'data', heads and vocabulary over 'model'."""
  corpus_dir, records = corpus
  out = tmp_path / "middle"
  summary = prune_cli(corpus_dir, run_dir, out, "--keep=0.5", "--select=middle",
                      "--gin.make_mesh.mesh_shape=(4, 2)")
  rows = scores_of(out)
  assert [(os.path.basename(r["file"]), r["line"]) for r in rows] == (
      [("c4-train.00000-of-00002.json.gz", n) for n in range(1, 9)]
      + [("c4-train.00001-of-00002.jsonl", n) for n in (1, 2, 4, 5, 6, 7)])

  # The same documents tokenized and split here, scored one at a time by score_tokens.
  vocab = sentencepiece.load(str(run_dir / "spiece.model"))
  inputs, targets = [], []
  for r in records:
    ids = vocab.encode(r["text"])
    cut = LENGTH - 1 if len(ids) >= 2 * (LENGTH - 1) else len(ids) // 2
    inputs.append(ids[:cut] + [1])
    targets.append(ids[cut:cut + LENGTH - 1] + [1])
  long = sum(len(t) == LENGTH for t in targets)
  assert 8 <= long < 14  # most demo documents fill both lengths; the others are split in half
  common.parse_run_gin(RunDir(str(run_dir)))  # its model.gin; the default mesh: 8-way 'data'
  run = runs.load(str(run_dir))
  want = [-np.sum(s, dtype=np.float64) / len(t)
          for s, t in zip(inference.score_tokens(run, inputs, targets, batch_size=1), targets)]
  np.testing.assert_allclose([r["loss"] for r in rows], want, rtol=1e-5, atol=1e-6)
  assert [r["tokens"] for r in rows] == [len(t) for t in targets]
  np.testing.assert_allclose([r["perplexity"] for r in rows], np.exp([r["loss"] for r in rows]))
  assert len(set(r["loss"] for r in rows)) == len(rows)  # a random model still tells them apart

  kept = {i for i, r in enumerate(rows) if r["kept"]}
  assert kept == expected_kept([r["loss"] for r in rows], 0.5, "middle") and len(kept) == 7
  losses = np.array([r["loss"] for r in rows])
  assert summary["documents"] == 14 and summary["kept"] == 7
  assert summary["thresholds"] == {"lower": losses[sorted(kept)].min(),
                                   "upper": losses[sorted(kept)].max()}
  assert summary["model"]["step"] == 0 and summary["scoring"]["method"] == "prefix_lm"

  # allenai/c4 names, as many shards as inputs, the kept lines byte for byte in input order.
  names = sorted(n for n in os.listdir(out) if n.startswith("c4-"))
  assert names == ["c4-train.00000-of-00002.json.gz", "c4-train.00001-of-00002.json.gz"]
  written = [line for n in names for line in read_gz_lines(out / n)]
  originals = (read_gz_lines(corpus_dir / "c4-train.00000-of-00002.json.gz")
               + [l for l in (corpus_dir / "c4-train.00001-of-00002.jsonl").read_bytes()
                  .splitlines(keepends=True) if l.strip()])
  assert written == [originals[i] for i in sorted(kept)]
  assert summary["shards"] == {names[0]: 4, names[1]: 3}
  assert not (out / prune.WORK).exists()

  # t5lite's JSON source (what json_sources / c4_json tasks read) reads them.
  from t5lite.data.sources import json_lines  # pylint: disable=g-import-not-at-top  (TF)
  source = json_lines.json_source(str(out / "c4-train.*.json.gz"))
  texts = [x["text"].decode() for x in source.get_dataset("train", shuffle=False)
           .as_numpy_iterator()]
  assert sorted(texts) == sorted(records[i]["text"] for i in kept)


def test_low_high_random_and_shards(run_dir, corpus, tmp_path):
  corpus_dir, _ = corpus
  losses = None
  for how in ("low", "high"):
    summary = prune_cli(corpus_dir, run_dir, tmp_path / how, "--keep=0.3", f"--select={how}")
    rows = scores_of(tmp_path / how)
    losses = [r["loss"] for r in rows]
    assert {i for i, r in enumerate(rows) if r["kept"]} == expected_kept(losses, 0.3, how)
    assert summary["kept"] == 4
  summary = prune_cli(corpus_dir, run_dir, tmp_path / "random", "--keep=0.5", "--select=random",
                      "--seed=7", "--shards=3")
  rows = scores_of(tmp_path / "random")
  assert [r["loss"] for r in rows] == pytest.approx(losses, rel=1e-6)
  kept = np.array([r["kept"] for r in rows])
  assert kept.tolist() == prune.select(np.array(losses), 0.5, "random", 7).tolist()
  assert summary["shards"] == {f"c4-train.{i:05d}-of-00003.json.gz": n
                               for i, n in enumerate((3, 2, 2))}
  assert summary["thresholds"] == {"lower": None, "upper": None}


def test_an_interrupted_prune_leaves_no_half_shard_and_resumes(run_dir, corpus, tmp_path,
                                                              monkeypatch):
  corpus_dir, _ = corpus
  out = tmp_path / "resume"
  real_write = prune._write_scores  # pylint: disable=protected-access

  def killed(*args):
    raise KeyboardInterrupt("killed while writing the scores")
  monkeypatch.setattr(prune, "_write_scores", killed)
  with pytest.raises(KeyboardInterrupt):
    prune_cli(corpus_dir, run_dir, out, "--keep=0.5")
  left = sorted(os.listdir(out))
  assert left == ["c4-train.00000-of-00002.json.gz", "c4-train.00001-of-00002.json.gz",
                  prune.MANIFEST, prune.WORK], left  # whole shards, no temporaries, no summary
  assert len(os.listdir(out / prune.WORK / "scores")) == 2

  monkeypatch.setattr(prune, "_write_scores", real_write)
  def no_scoring(*args, **kwargs):
    raise AssertionError("scored again")
  monkeypatch.setattr(prune, "score_file", no_scoring)  # the finished parts are kept
  summary = prune_cli(corpus_dir, run_dir, out, "--keep=0.5")
  assert summary["kept"] == 7 and (out / prune.SCORES).exists()
  before = (out / prune.SUMMARY).read_text()
  assert prune_cli(corpus_dir, run_dir, out, "--keep=0.5") == summary  # finished: nothing to do
  assert (out / prune.SUMMARY).read_text() == before


# ----------------------------------------------------------------------------- bad input


def one_line_error(capsys, argv):
  gin.clear_config()
  with pytest.raises(SystemExit) as e:
    main.run_with_args(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("t5lite: error: ") and len(err.splitlines()) == 2, err
  return err.splitlines()[0]


def test_bad_input_is_one_clear_line(run_dir, corpus, tmp_path, capsys):
  corpus_dir, _ = corpus
  def argv(**changes):
    flags = {"input": str(corpus_dir / "c4-train.*"), "output": str(tmp_path / "out"),
             "model_dir": str(run_dir), "keep": "0.5", "inputs_length": "16",
             "targets_length": "16", **changes}
    return ["corpus", "prune", *[f"--{k}={v}" for k, v in flags.items()]]

  line = one_line_error(capsys, argv(model_dir=tmp_path / "nowhere"))
  assert "--model_dir" in line and "nowhere does not exist" in line
  (tmp_path / "empty_run").mkdir()
  assert "has no checkpoints" in one_line_error(capsys, argv(model_dir=tmp_path / "empty_run"))
  for keep in ("0", "1.5", "-0.1"):
    line = one_line_error(capsys, argv(keep=keep))
    assert f"--keep {float(keep)}" in line and "0 < keep <= 1" in line
  assert "no file matches" in one_line_error(capsys, argv(input=tmp_path / "none*.json.gz"))

  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine")
  line = one_line_error(capsys, argv(output=foreign))
  assert "not empty and holds no prune.json" in line
  other = tmp_path / "other"
  prune_cli(corpus_dir, run_dir, other, "--keep=0.5", "--select=low")
  line = one_line_error(capsys, argv(output=other, inputs_length=str(LENGTH),
                                     targets_length=str(LENGTH), batch_size="4"))
  assert "holds another prune" in line and "select" in line

  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "a.jsonl").write_text('{"text": "fine"}\n{"url": "no text here"}\n')
  line = one_line_error(capsys, argv(input=bad / "a.jsonl", output=tmp_path / "o1"))
  assert "a.jsonl:2: missing key 'text'" in line
  (bad / "b.jsonl").write_text('{"text": 3}\n')
  line = one_line_error(capsys, argv(input=bad / "b.jsonl", output=tmp_path / "o2"))
  assert "b.jsonl:1: 'text' is int, expected a string" in line
  data = gzip.compress(b'{"text": "a document"}\n' * 200)
  (bad / "c.json.gz").write_bytes(data[:len(data) // 2])
  line = one_line_error(capsys, argv(input=bad / "c.json.gz", output=tmp_path / "o3"))
  assert "c.json.gz: unreadable" in line
  for name in ("o1", "o2", "o3"):  # nothing half-written: the manifest, no shard
    assert not [n for n in os.listdir(tmp_path / name) if n.startswith("c4-")]
