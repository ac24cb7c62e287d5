"""t5lite vs HF transformers: logits parity (fp32) for T5 1.1, T5 1.0 and BART, conversion round
trips, save/load folders, error messages, and T5 1.1 small/base parameter counts."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from t5lite.convert import hf  # pylint: disable=g-import-not-at-top
from t5lite.model.config import Config  # pylint: disable=g-import-not-at-top
from t5lite.model.network import EncoderDecoder  # pylint: disable=g-import-not-at-top

V, I, T = 96, 13, 9  # vocab, encoder length, decoder length
TOL = 1e-4


def _hf_config(kind: str):
  if kind == "t5_1_1":  # gated-gelu, untied head, unequal stacks, small bucket range
    return transformers.T5Config(
        vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False)
  if kind == "t5_1_0":  # relu, tied head scaled by d_model**-0.5
    return transformers.T5Config(
        vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16,
        feed_forward_proj="relu", tie_word_embeddings=True)
  return transformers.BartConfig(
      vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
      decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=40,
      scale_embedding=True)


def _hf_model(kind: str):
  """A random HF model in fp32 eval mode; every weight (norms, biases too) perturbed off its init."""
  torch.manual_seed(0)
  config = _hf_config(kind)
  cls = (transformers.BartForConditionalGeneration if kind == "bart"
         else transformers.T5ForConditionalGeneration)
  model = cls(config).eval()
  if kind == "t5_1_1":  # transformers 5 ties lm_head at construction; T5 1.1 checkpoints do not
    model.lm_head.weight = torch.nn.Parameter(torch.randn(V, 32))
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
    if kind == "bart":
      model.final_logits_bias.normal_()
  return model


def _state_dict(model) -> dict:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _batch(kind: str, padded: bool):
  rng = np.random.RandomState(0)
  enc = rng.randint(3, V, (2, I))
  dec = rng.randint(3, V, (2, T))
  valid = np.ones((2, I), bool)
  if padded:
    valid[1, 8:] = False
    enc[1, 8:] = 1 if kind == "bart" else 0  # pad id
  return enc, dec, valid


def _hf_logits(model, enc, dec, valid) -> np.ndarray:
  with torch.no_grad():
    out = model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(valid.astype(np.int64)),
                decoder_input_ids=torch.tensor(dec))
  return out.logits.numpy()


def _our_logits(config, params, enc, dec, valid) -> np.ndarray:
  model = EncoderDecoder(config)
  return np.asarray(model.apply({"params": params}, jnp.asarray(enc), jnp.asarray(dec),
                                encoder_valid=jnp.asarray(valid)))


KINDS = ["t5_1_1", "t5_1_0", "bart"]


@pytest.fixture(scope="module", params=KINDS)
def converted(request):
  kind = request.param
  model = _hf_model(kind)
  config = hf.config_from_hf(model.config, dtype="float32")
  sd = _state_dict(model)
  return kind, model, config, sd, hf.params_from_hf(sd, config)


def test_config_from_hf_fields(converted):
  kind, _, config, _, _ = converted
  expected = {
      "t5_1_1": dict(family="t5", mlp_activations=("gelu", "linear"), logits_via_embedding=False,
                     num_encoder_layers=2, num_decoder_layers=3, relative_attention_num_buckets=8,
                     relative_attention_max_distance=16, layer_norm_epsilon=1e-6),
      "t5_1_0": dict(family="t5", mlp_activations=("relu",), logits_via_embedding=True,
                     num_decoder_layers=2),
      "bart": dict(family="bart", mlp_activations=("gelu_exact",), logits_via_embedding=True,
                   scale_embedding=True, max_position_embeddings=40, layer_norm_epsilon=1e-5,
                   pad_token_id=1, eos_token_id=2, decoder_start_token_id=2),
  }[kind]
  assert {k: getattr(config, k) for k in expected} == expected
  assert (config.emb_dim, config.num_heads, config.head_dim, config.mlp_dim) == (32, 4, 8, 48)


def test_params_tree_matches_model_init(converted):
  _, _, config, _, params = converted
  model = EncoderDecoder(config)
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, I), jnp.int32),
                            jnp.zeros((1, T), jnp.int32))
  want = jax.tree.map(lambda x: (x.shape, x.dtype), nn.meta.unbox(abstract["params"]))
  got = jax.tree.map(lambda x: (x.shape, x.dtype), params)
  assert got == want


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_logits_parity(converted, padded):
  kind, model, config, _, params = converted
  enc, dec, valid = _batch(kind, padded)
  ours, theirs = _our_logits(config, params, enc, dec, valid), _hf_logits(model, enc, dec, valid)
  assert ours.shape == theirs.shape == (2, T, V)
  diff = np.abs(ours - theirs).max()
  assert diff <= TOL, f"{kind} padded={padded}: max |t5lite - HF| = {diff:.3g}"


def test_params_round_trip_exact(converted):
  _, _, config, sd, params = converted
  back = hf.params_to_hf(params, config)
  assert sorted(back) == sorted(sd)
  for k in sd:
    assert back[k].dtype == np.float32 and np.array_equal(back[k], sd[k]), k


def test_params_to_hf_accepts_boxed_jax_params(converted):
  _, _, config, sd, params = converted
  boxed = jax.tree.map(lambda x: nn.Partitioned(jnp.asarray(x), names=(None,) * x.ndim), params)
  back = hf.params_to_hf({"params": boxed}, config, include_tied=False)
  assert all(np.array_equal(back[k], sd[k]) for k in back)
  assert "encoder.embed_tokens.weight" not in back and "model.encoder.embed_tokens.weight" not in back


def test_config_round_trip(converted):
  _, model, config, _, _ = converted
  back = hf.hf_config_from(config)
  assert type(back) is type(model.config)
  fields = ["vocab_size", "d_model", "pad_token_id", "eos_token_id", "decoder_start_token_id",
            "tie_word_embeddings"]
  if config.family == "t5":
    fields += ["d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads", "feed_forward_proj",
               "dense_act_fn", "is_gated_act", "scale_decoder_outputs", "layer_norm_epsilon",
               "relative_attention_num_buckets", "relative_attention_max_distance", "dropout_rate"]
  else:
    fields += ["encoder_layers", "decoder_layers", "encoder_attention_heads",
               "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim",
               "activation_function", "max_position_embeddings", "scale_embedding", "dropout"]
  for f in fields:
    if f == "decoder_start_token_id" and not hasattr(model.config, f):
      continue  # transformers 5's T5Config has no such field (it starts from pad)
    assert getattr(back, f) == getattr(model.config, f), f
  assert hf.config_from_hf(back, dtype="float32") == config


def test_save_hf_dir_from_pretrained(converted, tmp_path):
  kind, model, config, sd, params = converted
  hf.save_hf_dir(config, params, tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
  loaded = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
  assert type(loaded) is type(model)
  if kind == "t5_1_1":  # the untied head survives the trip
    assert not torch.equal(loaded.lm_head.weight, loaded.shared.weight)
  enc, dec, valid = _batch(kind, padded=True)
  ours = _our_logits(config, params, enc, dec, valid)
  assert np.abs(_hf_logits(loaded, enc, dec, valid) - ours).max() <= TOL
  config2, params2 = hf.load_hf_dir(tmp_path, dtype="float32")
  assert config2 == config
  assert jax.tree.all(jax.tree.map(np.array_equal, params2, params))


def test_load_sharded_and_bf16(tmp_path):
  model = _hf_model("t5_1_0")
  model.to(torch.bfloat16).save_pretrained(tmp_path, max_shard_size="20KB")
  assert (tmp_path / "model.safetensors.index.json").exists()
  config, params = hf.load_hf_dir(tmp_path)
  assert config.dtype == "bfloat16" and config.logits_via_embedding
  want = hf.params_from_hf({k: v.float().numpy() for k, v in model.state_dict().items()}, config)
  assert jax.tree.all(jax.tree.map(np.array_equal, params, want))


def test_bin_only_folder_refused(tmp_path):
  _hf_config("t5_1_0").save_pretrained(tmp_path)
  (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle to be opened")
  with pytest.raises(FileNotFoundError, match=r"pytorch_model\.bin.*safetensors"):
    hf.load_hf_dir(tmp_path)


def test_shape_missing_unexpected_keys_named(converted):
  kind, _, config, sd, params = converted
  name = ("model.encoder.layers.1.fc1.weight" if kind == "bart"
          else "decoder.block.1.layer.2.DenseReluDense.wo.weight")
  bad = dict(sd, **{name: np.zeros((5, 7), np.float32)})
  with pytest.raises(ValueError, match=rf"{name}: expected shape \(\d+, \d+\), got \(5, 7\)"):
    hf.params_from_hf(bad, config)
  with pytest.raises(ValueError, match=rf"missing keys \['{name}'\]"):
    hf.params_from_hf({k: v for k, v in sd.items() if k != name}, config)
  with pytest.raises(ValueError, match=r"unexpected keys \['extra.weight'\]"):
    hf.params_from_hf(dict(sd, **{"extra.weight": np.zeros(3, np.float32)}), config)
  wrong = jax.tree.map(lambda x: x, params)
  wrong["decoder"]["layers_0"]["mlp"]["wo"] = np.zeros((3, 3), np.float32)
  with pytest.raises(ValueError, match=r"decoder/layers_0/mlp/wo.*expected shape"):
    hf.params_to_hf(wrong, config)


def test_tied_alias_must_match():
  model = _hf_model("t5_1_0")
  sd = _state_dict(model)
  config = hf.config_from_hf(model.config)
  sd["lm_head.weight"] = sd["lm_head.weight"] + 1.0
  with pytest.raises(ValueError, match=r"lm_head\.weight differs from shared\.weight"):
    hf.params_from_hf(sd, config)


def test_unsupported_architectures_named():
  with pytest.raises(ValueError, match="model_type='mbart'.*pre-LayerNorm"):
    hf.config_from_hf(transformers.MBartConfig())
  with pytest.raises(ValueError, match="model_type='umt5'.*relative_attention_bias"):
    hf.config_from_hf(transformers.UMT5Config())
  with pytest.raises(ValueError, match="feed_forward_proj='gated-gelu_fast'"):
    hf.config_from_hf(transformers.T5Config(feed_forward_proj="gated-gelu_fast"))
  with pytest.raises(ValueError, match="decoder_ffn_dim"):
    hf.config_from_hf(transformers.BartConfig(encoder_ffn_dim=64, decoder_ffn_dim=32))
  bart = Config(family="bart", mlp_activations=("gelu_exact",), num_heads=8)
  with pytest.raises(ValueError, match="layer_norm_epsilon"):  # HF BART's LayerNorm eps is 1e-5
    hf.hf_config_from(bart)
  with pytest.raises(ValueError, match="head_dim"):
    hf.hf_config_from(bart.replace(layer_norm_epsilon=1e-5, head_dim=32))
  with pytest.raises(ValueError, match="mlp_activations"):
    hf.hf_config_from(Config(mlp_activations=("linear", "gelu")))


def test_mt5_config_untied():
  config = hf.config_from_hf(transformers.MT5Config(vocab_size=V, d_model=32, num_heads=4, d_kv=8))
  assert config.mlp_activations == ("gelu", "linear") and not config.logits_via_embedding


@pytest.mark.parametrize("size,d,heads,ff,layers,expected", [
    ("small", 512, 6, 1024, 8, 76_961_152),
    ("base", 768, 12, 2048, 12, 247_577_856),
])
def test_t5_1_1_parameter_counts_match_hf(size, d, heads, ff, layers, expected):
  config = Config(vocab_size=32128, emb_dim=d, num_heads=heads, head_dim=64, mlp_dim=ff,
                  num_encoder_layers=layers, num_decoder_layers=layers)
  abstract = jax.eval_shape(EncoderDecoder(config).init, jax.random.key(0),
                            jnp.zeros((1, 8), jnp.int32), jnp.zeros((1, 8), jnp.int32))
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(abstract["params"])))
  hf_config = transformers.T5Config(  # google/t5-v1_1-{size}
      vocab_size=32128, d_model=d, d_kv=64, d_ff=ff, num_layers=layers, num_heads=heads,
      feed_forward_proj="gated-gelu", tie_word_embeddings=False)
  with torch.device("meta"):
    model = transformers.T5ForConditionalGeneration(hf_config)
    # transformers 5 ties lm_head at construction; the real checkpoint's head is separate (untied on load)
    model.lm_head.weight = torch.nn.Parameter(torch.empty(32128, d))
  theirs = sum(p.numel() for p in model.parameters())
  assert ours == theirs == expected, (size, ours, theirs)
  assert hf.config_from_hf(hf_config, dropout_rate=0.0) == config
