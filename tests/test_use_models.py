"""import-hf / export-hf / score / infer against HF transformers on the same weights (fp32).

A tiny random HF T5 1.1 with the real T5 SentencePiece model is saved with save_pretrained
(safetensors), imported through the CLI, then scored and decoded by t5lite and by HF.
"""
import json
import os
import shutil

import gin
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from t5lite.store import checkpoints
from t5lite import files, main
from t5lite.serving import run as runs
from t5lite.store.run_dir import RunDir
from t5lite.cli import common  # pylint: disable=g-import-not-at-top
from t5lite.data.vocab import seqio_vocab as vocab_lib  # pylint: disable=g-import-not-at-top

V = 32128
EXAMPLES = [
    {"inputs": "translate English to German: The house is wonderful.",
     "targets": "Das Haus ist wunderbar."},
    {"inputs": "summarize: a short one", "targets": "short"},
    {"inputs": "Studies have shown that owning a dog is good for you and your health.",
     "targets": "Dogs are good for you, studies show, and for your heart as well."},
]


def cli(*argv):
  gin.clear_config()
  assert main.main(list(argv)) == 0


def hf_t5(seed=0):
  """A random T5 1.1 (gated GELU, untied head) with peaky logits, fp32, eval mode."""
  torch.manual_seed(seed)
  config = transformers.T5Config(
      vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
      feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0)
  model = transformers.T5ForConditionalGeneration(config).eval()
  model.lm_head.weight = torch.nn.Parameter(torch.randn(V, 32))  # transformers 5 ties at init
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.2 * torch.randn_like(p))
  return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, t5_vocab_path):
  d = tmp_path_factory.mktemp("hf_t5")
  model = hf_t5()
  model.save_pretrained(d)  # safetensors
  shutil.copyfile(t5_vocab_path, d / "spiece.model")
  return d, model


@pytest.fixture(scope="module")
def imported(hf_dir, tmp_path_factory):
  d = tmp_path_factory.mktemp("imported") / "run"
  cli("import-hf", str(hf_dir[0]), str(d))
  return d


@pytest.fixture(scope="module")
def vocab(t5_vocab_path):
  return vocab_lib.get_vocabulary(str(t5_vocab_path))


def write_jsonl(path, rows):
  files.write_jsonl(path, rows)
  return str(path)


def test_jsonl_round_trip_keeps_text_and_leaves_no_temporary(tmp_path):
  rows = [{"inputs": "café", "targets": "日本"}, {"score": -1.5}]
  path = tmp_path / "rows.jsonl"
  files.write_jsonl(path, rows)
  assert files.read_jsonl(path) == rows
  assert path.read_text(encoding="utf-8").splitlines()[0] == '{"inputs": "café", "targets": "日本"}'
  assert os.listdir(tmp_path) == ["rows.jsonl"]  # written through a temporary, renamed


def read_jsonl(path):
  return [json.loads(l) for l in open(path)]


def test_import_writes_a_run_folder(imported):
  text = (imported / "model.gin").read_text()
  assert "Config.emb_dim = 32" in text and "Config.dtype = 'float32'" in text
  assert f"VOCABULARY_PATH = '{imported / 'spiece.model'}'" in text
  assert (imported / "spiece.model").exists()
  folder, step = checkpoints.resolve(str(imported))
  assert step == 0 and folder == str(imported / "checkpoints")
  shapes = checkpoints.Checkpointer(folder).saved_shapes(0)
  assert shapes["params/decoder/logits_dense"] == (32, V)
  assert any(k.startswith("opt_state/") for k in shapes)  # Adafactor state, freshly initialised


def test_score_matches_hf_log_probs(hf_dir, imported, vocab, tmp_path):
  """Sharded over a (4, 2) mesh: batch over 'data', heads/vocab over 'model'."""
  out = tmp_path / "scores.jsonl"
  cli("score", f"--model_dir={imported}", f"--input={write_jsonl(tmp_path / 'in.jsonl', EXAMPLES)}",
      f"--output={out}", "--batch_size=2", "--gin.make_mesh.mesh_shape=(4, 2)")
  rows = read_jsonl(out)
  assert [r["targets"] for r in rows] == [e["targets"] for e in EXAMPLES]
  model = hf_dir[1]
  for ex, row in zip(EXAMPLES, rows):
    enc = vocab.encode(ex["inputs"]) + [1]
    tgt = vocab.encode(ex["targets"]) + [1]  # EOS appended as in training
    with torch.no_grad():
      logits = model(input_ids=torch.tensor([enc]), labels=torch.tensor([tgt])).logits[0]
    want = torch.log_softmax(logits, -1)[torch.arange(len(tgt)), torch.tensor(tgt)].numpy()
    np.testing.assert_allclose(row["token_log_likelihoods"], want, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(row["log_likelihood"], want.sum(), atol=1e-3, rtol=1e-4)


def test_infer_greedy_equals_hf_generate(hf_dir, imported, vocab, tmp_path):
  out = tmp_path / "pred.jsonl"
  cli("infer", f"--model_dir={imported}", f"--input={write_jsonl(tmp_path / 'in.jsonl', EXAMPLES)}",
      f"--output={out}", "--max_decode_length=12", "--batch_size=4")
  rows = read_jsonl(out)
  model = hf_dir[1]
  for ex, row in zip(EXAMPLES, rows):
    enc = vocab.encode(ex["inputs"]) + [1]
    with torch.no_grad():
      ids = model.generate(input_ids=torch.tensor([enc]), max_new_tokens=12, do_sample=False,
                           num_beams=1)[0, 1:].tolist()  # drop the decoder start token
    ids = ids[:ids.index(1)] if 1 in ids else ids
    ids = [t for t in ids if t != 0]
    assert row["prediction"] == vocab.decode(ids), (row, ids)


@pytest.mark.slow
def test_infer_beam_and_sampling(imported, tmp_path):
  inp = write_jsonl(tmp_path / "in.jsonl", EXAMPLES[:2])
  cli("infer", f"--model_dir={imported}", f"--input={inp}", f"--output={tmp_path / 'g.jsonl'}",
      "--max_decode_length=8")
  cli("infer", f"--model_dir={imported}", f"--input={inp}", f"--output={tmp_path / 'b.jsonl'}",
      "--max_decode_length=8", "--decoder=beam", "--beam_size=2")
  cli("infer", f"--model_dir={imported}", f"--input={inp}", f"--output={tmp_path / 's.jsonl'}",
      "--max_decode_length=8", "--decoder=sample", "--temperature=0")
  greedy, beam, sample = (read_jsonl(tmp_path / f) for f in ("g.jsonl", "b.jsonl", "s.jsonl"))
  assert [r["prediction"] for r in sample] == [r["prediction"] for r in greedy]
  assert all(isinstance(r["score"], float) and r["score"] < 0 for r in beam)
  assert [r["inputs"] for r in beam] == [e["inputs"] for e in EXAMPLES[:2]]


@pytest.mark.slow
def test_export_hf_loads_with_equal_logits(imported, tmp_path):
  out = tmp_path / "exported"
  cli("export-hf", str(imported), str(out))
  assert (out / "spiece.model").exists()
  config = json.loads((out / "config.json").read_text())
  assert (config["d_model"], config["d_ff"], config["num_heads"]) == (32, 64, 4)
  model = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
  common.parse_run_gin(RunDir(imported))
  run = runs.load(str(imported))
  rng = np.random.RandomState(0)
  enc, dec = rng.randint(3, 32000, (2, 11)), rng.randint(3, 32000, (2, 7))
  ours = run.model.apply({"params": jax.device_get(run.params)}, enc, dec)
  with torch.no_grad():
    theirs = model(input_ids=torch.tensor(enc), decoder_input_ids=torch.tensor(dec)).logits.numpy()
  # float32 on both sides; 2e-4 at logits of magnitude ~10 (transcendentals differ in the last bits)
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=2e-4, rtol=1e-4)


def test_import_errors_name_the_problem(hf_dir, tmp_path):
  # Unsupported architecture.
  bad = tmp_path / "longt5"
  transformers.LongT5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                            num_heads=4).save_pretrained(bad)
  gin.clear_config()
  with pytest.raises(ValueError, match="longt5"):
    main.main(["import-hf", str(bad), str(tmp_path / "a")])
  # A weight whose shape disagrees with config.json.
  wrong = tmp_path / "wrong"
  shutil.copytree(hf_dir[0], wrong)
  config = json.loads((wrong / "config.json").read_text())
  config["d_ff"] = 48
  (wrong / "config.json").write_text(json.dumps(config))
  gin.clear_config()
  with pytest.raises(ValueError, match=r"encoder\.block\.0\.layer\.1\.DenseReluDense\.wi_0\.weight"):
    main.main(["import-hf", str(wrong), str(tmp_path / "b")])
  # Pickled weights only.
  pickled = tmp_path / "pickled"
  shutil.copytree(hf_dir[0], pickled)
  os.rename(pickled / "model.safetensors", pickled / "pytorch_model.bin")
  gin.clear_config()
  with pytest.raises(FileNotFoundError, match="safetensors only"):
    main.main(["import-hf", str(pickled), str(tmp_path / "c")])


def test_score_rejects_lines_without_targets(imported, tmp_path):
  inp = write_jsonl(tmp_path / "in.jsonl", [{"inputs": "no target"}])
  gin.clear_config()
  with pytest.raises(ValueError, match="'targets'"):
    main.main(["score", f"--model_dir={imported}", f"--input={inp}"])


def test_bart_round_trip_without_vocabulary(tmp_path):
  """BART imports and exports with equal logits; with no vocabulary file, score says so."""
  torch.manual_seed(0)
  config = transformers.BartConfig(
      vocab_size=96, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
      decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=40)
  model = transformers.BartForConditionalGeneration(config).eval()
  model.save_pretrained(tmp_path / "hf")
  cli("import-hf", str(tmp_path / "hf"), str(tmp_path / "run"))
  assert "Config.family = 'bart'" in (tmp_path / "run" / "model.gin").read_text()
  cli("export-hf", str(tmp_path / "run"), str(tmp_path / "out"))
  exported = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out").eval()
  enc, dec = torch.tensor([[0, 5, 9, 17, 2]]), torch.tensor([[2, 0, 7, 11]])
  with torch.no_grad():
    np.testing.assert_allclose(exported(input_ids=enc, decoder_input_ids=dec).logits.numpy(),
                               model(input_ids=enc, decoder_input_ids=dec).logits.numpy(),
                               atol=1e-4, rtol=1e-4)
  inp = write_jsonl(tmp_path / "in.jsonl", EXAMPLES[:1])
  gin.clear_config()
  with pytest.raises(ValueError, match="--vocabulary"):
    main.main(["score", f"--model_dir={tmp_path / 'run'}", f"--input={inp}"])
