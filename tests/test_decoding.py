"""Decoding: cached greedy vs the uncached loop, beam search, sampling, a (4, 2) mesh, HF generate.

Tiny random models (float32). Their weights are nudged so that EOS comes out at varied steps:
T5's EOS logit column is scaled up; BART (whose 0.02-std init just copies the start token, which
is EOS) gets noise on every weight and a bias on EOS.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from jax.sharding import NamedSharding, PartitionSpec as P

from t5lite import testing
from t5lite.serving import decoding
from t5lite.runtime import partitioning
from t5lite.model.network import EncoderDecoder

B, I, L = 4, 12, 10
TINY = tiny_config(vocab_size=128, emb_dim=64, head_dim=16, mlp_dim=128)
CONFIGS = {
    "t5": TINY,
    "bart": TINY.replace(family="bart", mlp_activations=("gelu_exact",),
                         logits_via_embedding=True, max_position_embeddings=64,
                         layer_norm_epsilon=1e-5, decoder_start_token_id=2, pad_token_id=1,
                         eos_token_id=2),
}


def _inputs(cfg, batch=B, seed=0):
  """Random tokens (never pad/EOS), the last two positions of odd rows padded."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, cfg.vocab_size, (batch, I))
  tokens[1::2, -2:] = cfg.pad_token_id
  return jnp.asarray(tokens, jnp.int32)


def _nudge(params, cfg):
  """Makes EOS likely enough to end some sequences early (see the module docstring)."""
  if cfg.family == "t5":
    w = params["decoder"]["logits_dense"]
    params["decoder"]["logits_dense"] = w.at[:, cfg.eos_token_id].multiply(5.0)
    return params
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda x: x + 0.15 * rng.standard_normal(x.shape, np.float32), params)
  bias = params["decoder"]["final_logits_bias"]
  params["decoder"]["final_logits_bias"] = bias.at[cfg.eos_token_id].add(3.0)
  return params


# BART shares the decoding code; its compiles make it the slow half (make test-all).
@pytest.fixture(scope="module", params=[pytest.param(n, marks=pytest.mark.slow) if n == "bart" else n
                                        for n in sorted(CONFIGS)])
def setup(request):
  """(model, unboxed params, boxed params, encoder tokens) for one family."""
  cfg = CONFIGS[request.param]
  model = EncoderDecoder(cfg)
  tokens = _inputs(cfg)
  boxed = jax.jit(model.init)(jax.random.key(0), tokens, jnp.zeros((B, L), jnp.int32))["params"]
  params = _nudge(nn.unbox(boxed), cfg)
  boxed = jax.tree.map(lambda box, value: box.replace_boxed(value), boxed, params,
                       is_leaf=lambda x: isinstance(x, nn.Partitioned))
  return model, params, boxed, tokens


def _eos_steps(tokens, cfg):
  """Index of the first EOS in each row (-1 when none)."""
  tokens = np.asarray(tokens)
  hit = tokens == cfg.eos_token_id
  return np.where(hit.any(-1), hit.argmax(-1), -1)


def _check_padded_after_eos(tokens, cfg):
  tokens = np.asarray(tokens).reshape(-1, tokens.shape[-1])
  for row, eos in zip(tokens, _eos_steps(tokens, cfg)):
    if eos >= 0:
      assert (row[eos + 1:] == cfg.pad_token_id).all(), row


def test_cached_greedy_equals_uncached_loop(setup):
  model, params, boxed, tokens = setup
  cfg = model.config
  greedy = decoding.greedy_decode(model, boxed, tokens, L)
  reference = testing.uncached_greedy_decode(model, params, tokens, L)
  assert greedy.shape == (B, L) and greedy.dtype == jnp.int32
  np.testing.assert_array_equal(greedy, reference)
  eos = _eos_steps(greedy, cfg)
  assert (eos >= 0).any() and (eos != eos[0]).any(), f"EOS steps {eos}: nudge the weights"
  _check_padded_after_eos(greedy, cfg)


@pytest.mark.slow
def test_beam_size_one_is_greedy(setup):
  """Without a length penalty one beam stops exactly where greedy does."""
  model, params, _, tokens = setup
  beams, scores = decoding.beam_search(model, params, tokens, L, beam_size=1, length_penalty=0.0)
  assert beams.shape == (B, 1, L) and scores.shape == (B, 1)
  np.testing.assert_array_equal(beams[:, 0], decoding.greedy_decode(model, params, tokens, L))


def _teacher_forced_scores(model, params, tokens, beams, alpha):
  """Summed log p of each beam's tokens up to and with its EOS, / ((5 + length) / 6) ** alpha."""
  cfg = model.config
  Bb, W, _ = beams.shape
  flat = jnp.reshape(beams, (Bb * W, L))
  start = jnp.full((Bb * W, 1), cfg.decoder_start_token_id, jnp.int32)
  enc = jnp.repeat(tokens, W, axis=0)
  logits = jax.jit(model.apply)({"params": params}, enc, jnp.concatenate([start, flat[:, :-1]], axis=1),
                       encoder_valid=enc != cfg.pad_token_id)
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), flat[:, :, None], axis=-1)[:, :, 0]
  eos = _eos_steps(flat, cfg)
  length = np.where(eos >= 0, eos + 1, L)
  mask = np.arange(L)[None, :] < length[:, None]
  total = np.sum(np.where(mask, np.asarray(logp), 0.0), axis=1)
  return np.reshape(total / ((5.0 + length) / 6.0) ** alpha, (Bb, W))


@pytest.mark.slow
def test_beam_scores_sorted_and_consistent_with_tokens(setup):
  model, params, _, tokens = setup
  cfg = model.config
  beams, scores = decoding.beam_search(model, params, tokens, L, beam_size=4, length_penalty=0.6)
  assert beams.shape == (B, 4, L) and scores.shape == (B, 4)
  scores = np.asarray(scores)
  assert (np.diff(scores, axis=1) <= 0).all(), scores
  for row in np.asarray(beams):  # distinct hypotheses
    assert len({tuple(r) for r in row}) == len(row)
  _check_padded_after_eos(beams, cfg)
  np.testing.assert_allclose(scores, _teacher_forced_scores(model, params, tokens, beams, 0.6),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_sampling_reproducible_and_seed_dependent(setup):
  model, params, _, tokens = setup
  cfg = model.config
  a = decoding.sample_decode(model, params, tokens, L, jax.random.key(0))
  np.testing.assert_array_equal(a, decoding.sample_decode(model, params, tokens, L, jax.random.key(0)))
  b = decoding.sample_decode(model, params, tokens, L, jax.random.key(1))
  assert (np.asarray(a) != np.asarray(b)).any()
  _check_padded_after_eos(a, cfg)
  nucleus = decoding.sample_decode(model, params, tokens, L, jax.random.key(0), temperature=0.7,
                                   top_k=20, top_p=0.9)
  assert nucleus.shape == (B, L)


@pytest.mark.slow
def test_sampling_that_can_only_pick_the_argmax_is_greedy(setup):
  model, params, _, tokens = setup
  greedy = decoding.greedy_decode(model, params, tokens, L)
  for kwargs in (dict(top_k=1), dict(top_p=1e-6)):
    sampled = decoding.sample_decode(model, params, tokens, L, jax.random.key(3), **kwargs)
    np.testing.assert_array_equal(sampled, greedy, err_msg=str(kwargs))


def test_params_may_be_boxed_unboxed_or_a_variables_dict(setup):
  _, params, boxed, _ = setup
  for given in (params, boxed, {"params": params}, {"params": boxed}):
    assert jax.tree.structure(decoding._variables(given)) == jax.tree.structure({"params": params})


def test_filter_logits_top_k_and_top_p():
  logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
  kept = lambda k, p: np.asarray(decoding._filter_logits(logits, k, p) > decoding.NEG_INF / 2)[0]
  np.testing.assert_array_equal(kept(2, 1.0), [1, 1, 0, 0, 0])
  np.testing.assert_array_equal(kept(0, 0.6), [1, 1, 0, 0, 0])  # 0.5 < 0.6 <= 0.7
  np.testing.assert_array_equal(kept(0, 0.86), [1, 1, 1, 1, 0])
  np.testing.assert_array_equal(kept(3, 0.86), [1, 1, 1, 0, 0])


@pytest.mark.slow
def test_decoding_on_a_4x2_mesh_equals_unsharded(setup):
  """Params laid out by the logical rules, the batch over 'data': same tokens as one device."""
  model, params, boxed, tokens = setup
  mesh = partitioning.make_mesh((4, 2))  # Auto axes, as training uses
  shardings = partitioning.logical_shardings(boxed, mesh)
  sharded = jax.device_put(params, shardings)
  embedding = sharded["token_embedder"]["embedding"]
  assert embedding.sharding.spec == P("model", None)  # vocab over 'model': really split
  assert len(embedding.addressable_shards) == 8
  assert embedding.addressable_shards[0].data.shape == (model.config.vocab_size // 2, 64)
  tokens_sharded = jax.device_put(tokens, NamedSharding(mesh, P("data")))
  expected = (decoding.greedy_decode(model, params, tokens, L),
              decoding.beam_search(model, params, tokens, L, beam_size=4))
  with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.rules(False, mesh.axis_names)):
    got = (decoding.greedy_decode(model, sharded, tokens_sharded, L),
           decoding.beam_search(model, sharded, tokens_sharded, L, beam_size=4))
  assert got[0].sharding.spec == P("data") and got[1][0].sharding.spec == P("data")
  np.testing.assert_array_equal(got[0], expected[0])
  np.testing.assert_array_equal(got[1][0], expected[1][0])
  np.testing.assert_allclose(got[1][1], expected[1][1], rtol=1e-5, atol=1e-5)


def _hf_model(family):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  if family == "t5":
    hf_config = transformers.T5Config(
        vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
        decoder_start_token_id=0)
    model = transformers.T5ForConditionalGeneration(hf_config).eval()
    with torch.no_grad():
      model.lm_head.weight[hf_config.eos_token_id] *= 5.0
  else:
    hf_config = transformers.BartConfig(
        vocab_size=128, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_position_embeddings=64, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    model = transformers.BartForConditionalGeneration(hf_config).eval()
    with torch.no_grad():
      for p in model.parameters():
        p.add_(0.15 * torch.randn_like(p))
      model.final_logits_bias[0, hf_config.eos_token_id] += 3.0
  return hf_config, model


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_greedy_equals_hf_generate(family):
  import torch  # pylint: disable=g-import-not-at-top
  from t5lite.convert import hf  # pylint: disable=g-import-not-at-top
  hf_config, hf_model = _hf_model(family)
  cfg = hf.config_from_hf(hf_config, dtype="float32")
  params = hf.params_from_hf({k: v.numpy() for k, v in hf_model.state_dict().items()}, cfg)
  model = EncoderDecoder(cfg)
  tokens = _inputs(cfg, batch=8, seed=1)
  valid = tokens != cfg.pad_token_id
  ours = np.asarray(decoding.greedy_decode(model, params, tokens, L))
  with torch.no_grad():
    theirs = hf_model.generate(
        input_ids=torch.from_numpy(np.array(tokens)).long(),
        attention_mask=torch.from_numpy(np.array(valid)).long(), max_new_tokens=L, min_length=0,
        num_beams=1, do_sample=False, forced_bos_token_id=None, forced_eos_token_id=None,
        no_repeat_ngram_size=0, repetition_penalty=1.0).numpy()
  assert (theirs[:, 0] == cfg.decoder_start_token_id).all()
  theirs = theirs[:, 1:]  # HF stops when every row is done; the rest is padding
  theirs = np.pad(theirs, ((0, 0), (0, L - theirs.shape[1])), constant_values=cfg.pad_token_id)
  np.testing.assert_array_equal(ours, theirs)
  eos = _eos_steps(ours, cfg)
  assert (eos >= 0).any() and (eos != eos[0]).any(), f"EOS steps {eos}: nudge the weights"
