"""Switch Transformers against HF transformers' SwitchTransformersForConditionalGeneration (fp32).

Random tiny HF models with 4 experts, every weight perturbed off its initialisation: logits equal
HF's (no token dropped: HF's expert_capacity exceeds every sequence, and t5lite's eval capacity
factor is the number of experts, so C = S); a save_pretrained folder imported by `t5lite
import-hf` and scored by `t5lite score` gives HF's log-probabilities; greedy `t5lite infer`
equals HF's generate; `t5lite export-hf` -> from_pretrained gives back the same weights. The
decoder's one sparse layer in 4 (HF's step 4: layer 1; flaxformer's rule would say 3) tests that
HF's placement is kept.
"""
import json
import shutil

import gin
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from t5lite import files, main  # pylint: disable=g-import-not-at-top
from t5lite.convert import hf  # pylint: disable=g-import-not-at-top
from t5lite.data.vocab import seqio_vocab as vocab_lib  # pylint: disable=g-import-not-at-top
from t5lite.model.config import Config  # pylint: disable=g-import-not-at-top
from t5lite.model.network import EncoderDecoder  # pylint: disable=g-import-not-at-top

NO_DROP = {"eval_capacity_factor": 4.0}  # = num_experts: every expert has a slot per token
EXAMPLES = [{"inputs": "translate English to German: The house is wonderful.",
             "targets": "Das Haus ist wunderbar."},
            {"inputs": "summarize: a short one", "targets": "short"},
            {"inputs": "Studies have shown that owning a dog is good for you.",
             "targets": "Dogs are good for you, studies show."}]


def hf_switch(vocab=96, tied=True, act="relu", seed=0):
  torch.manual_seed(seed)
  config = transformers.SwitchTransformersConfig(
      vocab_size=vocab, d_model=32, d_kv=8, d_ff=48, num_layers=4, num_decoder_layers=4,
      num_heads=4, num_experts=4, num_sparse_encoder_layers=2, num_sparse_decoder_layers=1,
      expert_capacity=64, relative_attention_num_buckets=8, relative_attention_max_distance=16,
      dense_act_fn=act, tie_word_embeddings=tied)
  model = transformers.SwitchTransformersForConditionalGeneration(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.2 * torch.randn_like(p))
  if not tied:  # transformers 5 then unties the stacks' embeddings too; t5lite shares one
    model.encoder.embed_tokens.weight = model.shared.weight
    model.decoder.embed_tokens.weight = model.shared.weight
  return model


def state_dict(model) -> dict:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def hf_logits(model, enc, dec, valid):
  with torch.no_grad():
    return model(input_ids=torch.tensor(enc), decoder_input_ids=torch.tensor(dec),
                 attention_mask=torch.tensor(valid.astype(np.int64))).logits.numpy()


def our_logits(config, params, enc, dec, valid):
  return np.asarray(EncoderDecoder(config).apply({"params": params}, jnp.asarray(enc),
                                                 jnp.asarray(dec), encoder_valid=valid))


def batch(vocab=96):
  rng = np.random.RandomState(0)
  enc, dec = rng.randint(3, vocab, (2, 13)), rng.randint(3, vocab, (2, 9))
  valid = np.ones((2, 13), bool)
  valid[1, 8:] = False
  enc[1, 8:] = 0
  return enc, dec, valid


@pytest.mark.parametrize("tied, act", [(True, "relu"), (False, "gelu_new")],
                         ids=["base_style", "xxl_style_untied"])
def test_logits_params_and_folders_match_hf(tied, act, tmp_path):
  model = hf_switch(tied=tied, act=act)
  config = hf.config_from_hf(model.config, dtype="float32", **NO_DROP)
  assert (config.num_experts, config.sparse_placement, config.logits_via_embedding) == (
      4, "hf", tied)
  assert [i for i, s in enumerate(config.sparse_layers("encoder")) if s] == [1, 3]
  assert [i for i, s in enumerate(config.sparse_layers("decoder")) if s] == [1]
  sd = state_dict(model)
  params = hf.params_from_hf(sd, config)
  assert params["encoder"]["layers_1"]["mlp"]["experts"]["wi"].shape == (4, 32, 48)
  assert params["encoder"]["layers_1"]["mlp"]["router"].shape == (32, 4)
  enc, dec, valid = batch()
  ours, theirs = our_logits(config, params, enc, dec, valid), hf_logits(model, enc, dec, valid)
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
  back = hf.params_to_hf(params, config)  # every weight back, exactly
  assert sorted(back) == sorted(sd)
  assert all(np.array_equal(back[k], sd[k]) for k in sd)
  assert hf.config_from_hf(hf.hf_config_from(config), dtype="float32", **NO_DROP) == config
  hf.save_hf_dir(config, params, tmp_path)
  loaded = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
  assert type(loaded) is type(model)
  assert all(np.array_equal(v, sd[k]) for k, v in state_dict(loaded).items())


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, t5_vocab_path):
  d = tmp_path_factory.mktemp("hf_switch")
  model = hf_switch(vocab=32128)
  model.save_pretrained(d)  # safetensors
  shutil.copyfile(t5_vocab_path, d / "spiece.model")
  return d, model


def cli(*argv):
  gin.clear_config()
  assert main.main(list(argv)) == 0


@pytest.fixture(scope="module")
def imported(hf_dir, tmp_path_factory):
  d = tmp_path_factory.mktemp("imported") / "run"
  cli("import-hf", str(hf_dir[0]), str(d))
  text = (d / "model.gin").read_text()
  assert "Config.num_experts = 4" in text and "Config.sparse_placement = 'hf'" in text
  assert "Config.decoder_sparse_step = 4" in text
  return d


def write_jsonl(path, rows):
  files.write_jsonl(path, rows)
  return str(path)


@pytest.mark.slow
def test_import_hf_then_score_equals_hf(hf_dir, imported, t5_vocab_path, tmp_path):
  """On a (2, 2, 2) mesh: batch over data x expert, experts over 'expert'."""
  out = tmp_path / "scores.jsonl"
  cli("score", f"--model_dir={imported}", f"--input={write_jsonl(tmp_path / 'in.jsonl', EXAMPLES)}",
      f"--output={out}", "--batch_size=4", "--gin.make_mesh.mesh_shape=(2, 2, 2)",
      "--gin.Config.eval_capacity_factor=4.0")
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  vocab = vocab_lib.get_vocabulary(str(t5_vocab_path))
  for ex, row in zip(EXAMPLES, rows):
    enc, tgt = vocab.encode(ex["inputs"]) + [1], vocab.encode(ex["targets"]) + [1]
    with torch.no_grad():  # transformers 5.25's Switch config lacks decoder_start_token_id
      logits = hf_dir[1](input_ids=torch.tensor([enc]),
                         decoder_input_ids=torch.tensor([[0] + tgt[:-1]])).logits[0]
    want = torch.log_softmax(logits, -1)[torch.arange(len(tgt)), torch.tensor(tgt)].numpy()
    np.testing.assert_allclose(row["token_log_likelihoods"], want, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_infer_greedy_equals_hf_generate_and_export_round_trips(hf_dir, imported, t5_vocab_path,
                                                                tmp_path):
  out = tmp_path / "pred.jsonl"
  cli("infer", f"--model_dir={imported}", f"--input={write_jsonl(tmp_path / 'in.jsonl', EXAMPLES)}",
      f"--output={out}", "--max_decode_length=8", "--batch_size=4",
      "--gin.Config.eval_capacity_factor=4.0")
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  vocab = vocab_lib.get_vocabulary(str(t5_vocab_path))
  model = hf_dir[1]
  for ex, row in zip(EXAMPLES, rows):
    with torch.no_grad():
      ids = model.generate(input_ids=torch.tensor([vocab.encode(ex["inputs"]) + [1]]),
                           max_new_tokens=8, do_sample=False, num_beams=1,
                           decoder_start_token_id=0)[0, 1:].tolist()
    ids = ids[:ids.index(1)] if 1 in ids else ids
    assert row["prediction"] == vocab.decode([t for t in ids if t != 0]), (row, ids)
  cli("infer", f"--model_dir={imported}", f"--input={tmp_path / 'in.jsonl'}",
      f"--output={tmp_path / 'beam.jsonl'}", "--max_decode_length=8", "--decoder=beam",
      "--beam_size=2")
  cli("infer", f"--model_dir={imported}", f"--input={tmp_path / 'in.jsonl'}",
      f"--output={tmp_path / 'sample.jsonl'}", "--max_decode_length=8", "--decoder=sample",
      "--temperature=0", "--gin.Config.eval_capacity_factor=4.0")
  sampled = [json.loads(line) for line in (tmp_path / "sample.jsonl").read_text().splitlines()]
  assert [r["prediction"] for r in sampled] == [r["prediction"] for r in rows]
  cli("export-hf", str(imported), str(tmp_path / "exported"))
  exported = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "exported").eval()
  want = state_dict(model)
  got = state_dict(exported)
  assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)


def test_mismatched_experts_and_unexportable_placement_named(hf_dir, tmp_path):
  wrong = tmp_path / "wrong"
  shutil.copytree(hf_dir[0], wrong)
  config = json.loads((wrong / "config.json").read_text())
  config["num_experts"] = 2
  (wrong / "config.json").write_text(json.dumps(config))
  gin.clear_config()
  with pytest.raises(ValueError, match=r"HF checkpoint has experts expert_0\.\.expert_3 \(4\) in "
                                       r"decoder\.block\.1\.layer\.2\.mlp but its config says "
                                       r"num_experts=2"):
    main.main(["import-hf", str(wrong), str(tmp_path / "run")])
  native = Config(num_encoder_layers=4, num_decoder_layers=4, num_experts=4, encoder_sparse_step=4,
                  mlp_activations=("relu",))
  with pytest.raises(ValueError, match=r"encoder layers \[3\] are sparse; HF SwitchTransformers "
                                       r"would place 1 sparse layers at \[1\]"):
    hf.hf_config_from(native)
  with pytest.raises(ValueError, match="plain MLP"):
    hf.hf_config_from(native.replace(mlp_activations=("gelu", "linear"), encoder_sparse_step=2))
