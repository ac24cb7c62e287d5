"""The Switch layer (model/moe.py) against NumPy references: routing with capacity overflow, the
layer's output (dropped tokens pass on the residual alone), the router losses' formulas, groups
and capacity, sparse-layer placement, the Config's checks and the FLOPs count."""
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from t5lite.model import losses, moe
from t5lite.model.config import Config, flops_per_example
from t5lite.model.network import EncoderDecoder

E, D, F = 4, 32, 64


def switch(**changes) -> Config:
  return tiny_config(num_experts=E, **changes)


def numpy_route(logits_GSE: np.ndarray, capacity: int):
  """Token by token, in group order: each takes a slot of its top-1 expert while one is free."""
  G, S, n_experts = logits_GSE.shape
  probs = np.exp(logits_GSE - logits_GSE.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  dispatch = np.zeros((G, S, n_experts, capacity), bool)
  combine = np.zeros((G, S, n_experts, capacity), np.float32)
  for g in range(G):
    used = [0] * n_experts
    for s in range(S):
      e = int(np.argmax(probs[g, s]))
      if used[e] < capacity:
        dispatch[g, s, e, used[e]] = True
        combine[g, s, e, used[e]] = probs[g, s, e]
      used[e] += 1
  return dispatch, combine, probs


def test_route_matches_numpy_with_capacity_overflow():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 16, E)).astype(np.float32)
  logits[:, :, 0] += 1.5  # most tokens want expert 0: it overflows
  dispatch, combine, stats = moe.route(jnp.asarray(logits), capacity=3)
  want_dispatch, want_combine, probs = numpy_route(logits, 3)
  np.testing.assert_array_equal(np.asarray(dispatch), want_dispatch)
  np.testing.assert_allclose(np.asarray(combine), want_combine, rtol=1e-6)
  taken = want_dispatch.sum()
  assert 0 < taken < logits.shape[0] * logits.shape[1]  # some tokens are really dropped
  np.testing.assert_allclose(float(stats["dropped_fraction"]), 1 - taken / 48, rtol=1e-6)
  np.testing.assert_allclose(float(stats["expert_usage"]), taken / (3 * E * 3), rtol=1e-6)
  np.testing.assert_allclose(float(stats["confidence"]), want_combine.sum() / taken, rtol=1e-6)
  chosen = np.eye(E)[probs.argmax(-1)]
  np.testing.assert_allclose(float(stats["max_load"]), chosen.sum((0, 1)).max() / 48 * E,
                             rtol=1e-6)


def _layer(cfg, train=False):
  layer = moe.SparseMlp(cfg, train=train)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, D)), jnp.float32)
  params = nn.unbox(layer.init(jax.random.key(0), x)["params"])
  return layer, params, x


def test_layer_output_matches_numpy_and_dropped_tokens_pass_unchanged():
  """Capacity 2 per expert for groups of 8 tokens: the layer gives gate * expert(x) for routed
  tokens and exactly 0 for dropped ones, so x + layer(x) leaves them as they were."""
  cfg = switch(expert_group_size=8, eval_capacity_factor=1.0, min_expert_capacity=1)
  layer, params, x = _layer(cfg)
  params["router"] = params["router"] * 20.0  # confident routing: overflows at capacity 2
  y, sown = layer.apply({"params": params}, x, mutable=[moe.COLLECTION])
  xn = np.asarray(x).reshape(2, 8, D)
  logits = xn @ np.asarray(params["router"])
  dispatch, _, probs = numpy_route(logits, 2)
  ex = params["experts"]
  want = np.zeros_like(xn)
  for g in range(2):
    for s in range(8):
      e = int(np.argmax(probs[g, s]))
      if dispatch[g, s].any():
        h = np.asarray(jax.nn.gelu(xn[g, s] @ ex["wi_0"][e], approximate=True)) * (
            xn[g, s] @ ex["wi_1"][e])
        want[g, s] = probs[g, s, e] * (h @ ex["wo"][e])
  dropped = ~dispatch.any(axis=(2, 3))
  assert dropped.sum() >= 2
  np.testing.assert_allclose(np.asarray(y), want, rtol=2e-5, atol=2e-6)
  assert np.all(np.asarray(y)[dropped] == 0.0)
  residual = np.asarray(x + y)
  np.testing.assert_array_equal(residual[dropped], xn[dropped])
  stats = moe.collect_stats(sown[moe.COLLECTION])
  np.testing.assert_allclose(float(stats["dropped_fraction"]), dropped.mean(), rtol=1e-6)


def test_load_balancing_loss_is_one_for_uniform_routing():
  """Equal probabilities for every expert: P = 1/E, so E^2 mean(f P) = 1 whatever f is."""
  shift = np.linspace(-2, 2, 32, dtype=np.float32).reshape(2, 16, 1)
  for logits in (np.zeros((2, 16, E), np.float32), np.broadcast_to(shift, (2, 16, E))):
    _, _, stats = moe.route(jnp.asarray(logits), capacity=4)
    assert float(stats["aux_loss"]) == 1.0
    np.testing.assert_allclose(float(stats["z_loss"]), np.mean((shift + np.log(E)) ** 2)
                               if logits.any() else np.log(E) ** 2, rtol=1e-6)


def test_router_losses_equal_their_formulas():
  logits = np.random.default_rng(2).normal(size=(3, 8, E)).astype(np.float32) * 2
  _, _, stats = moe.route(jnp.asarray(logits), capacity=2)
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  f = np.eye(E)[probs.argmax(-1)].mean(1)  # choices before capacity, per group
  p = probs.mean(1)
  np.testing.assert_allclose(float(stats["aux_loss"]), E * E * np.mean(f * p), rtol=1e-5)
  log_z = np.log(np.exp(logits).sum(-1))
  np.testing.assert_allclose(float(stats["z_loss"]), np.mean(log_z ** 2), rtol=1e-5)
  # Perfectly balanced choices with one-hot-like probabilities: also exactly 1.
  balanced = np.tile(np.eye(E, dtype=np.float32) * 30, (1, 2, 1))
  assert float(moe.route(jnp.asarray(balanced), 2)[2]["aux_loss"]) == pytest.approx(1.0, 1e-6)


def test_batch_loss_adds_router_losses_with_their_factors():
  cfg = switch(router_aux_loss_factor=0.01, router_z_loss_factor=1e-3)
  model = EncoderDecoder(cfg)
  rng = np.random.default_rng(0)
  batch = {"encoder_input_tokens": rng.integers(2, 256, (2, 8), dtype=np.int32),
           "decoder_input_tokens": rng.integers(2, 256, (2, 4), dtype=np.int32),
           "decoder_target_tokens": rng.integers(2, 256, (2, 4), dtype=np.int32),
           "decoder_loss_weights": np.ones((2, 4), np.float32)}
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), batch["encoder_input_tokens"],
                                       batch["decoder_input_tokens"])["params"])
  total, sums = jax.jit(functools.partial(losses.batch_loss, model=model, z_loss=1e-4,
                                          train=True))(params, batch)
  want = sums["loss"] + 8 * (0.01 * sums["router_aux_loss"] + 1e-3 * sums["router_z_loss"])
  np.testing.assert_allclose(float(total), float(want), rtol=1e-6)
  assert set(losses.sum_keys(cfg)) == set(sums)
  # Averaged over the 2 sparse layers (one per stack), each from its own router.
  _, sown = jax.jit(functools.partial(model.apply, mutable=[moe.COLLECTION], train=True))(
      {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"])
  per_layer = [v["aux_loss"] for v in jax.tree.leaves(
      sown, is_leaf=lambda x: isinstance(x, dict) and "aux_loss" in x)]
  assert len(per_layer) == 2
  np.testing.assert_allclose(float(sums["router_aux_loss"]), np.mean(per_layer), rtol=1e-6)


def test_groups_and_capacity_come_from_the_config():
  cfg = switch(expert_group_size=4096)
  assert moe.tokens_per_group(cfg, batch=32, length=512) == 8 * 512  # whole examples
  assert moe.tokens_per_group(cfg, batch=12, length=512) == 6 * 512  # what divides the batch
  assert moe.tokens_per_group(cfg, batch=4, length=8192) == 4096  # slices of one example
  assert moe.tokens_per_group(cfg, batch=3, length=6000) == 3000
  base = Config(num_experts=128)
  assert moe.expert_capacity(base, 4096, train=True) == 40  # 1.25 * 4096 / 128
  assert moe.expert_capacity(base, 4096, train=False) == 64
  assert moe.expert_capacity(base, 256, train=True) == 4  # min_expert_capacity
  assert moe.expert_capacity(Config(num_experts=8), 20, train=False) == 5


def test_train_uses_train_capacity_and_jitter_only_there():
  cfg = switch(expert_group_size=8, train_capacity_factor=1.0, eval_capacity_factor=4.0,
               min_expert_capacity=1, router_jitter=0.5)
  layer, params, x = _layer(cfg)
  params["router"] = params["router"] * 20.0
  run = lambda train, rngs=None: moe.SparseMlp(cfg, train=train).apply(  # noqa: E731
      {"params": params}, x, mutable=[moe.COLLECTION], rngs=rngs)
  evaluated = moe.collect_stats(run(False)[1][moe.COLLECTION])
  trained = moe.collect_stats(run(True)[1][moe.COLLECTION])
  assert float(evaluated["dropped_fraction"]) == 0.0  # capacity 8 = the group
  assert float(trained["dropped_fraction"]) > 0.0  # capacity 2
  np.testing.assert_array_equal(run(False, {"jitter": jax.random.key(3)})[0], run(False)[0])
  jittered = run(True, {"jitter": jax.random.key(3)})[1][moe.COLLECTION]
  assert float(moe.collect_stats(jittered)["z_loss"]) != float(trained["z_loss"])


def test_sparse_placement_rules():
  cfg = Config(num_encoder_layers=12, num_decoder_layers=12, num_experts=8,
               encoder_sparse_step=4, decoder_sparse_step=2)
  where = lambda c, s: [i for i, x in enumerate(c.sparse_layers(s)) if x]  # noqa: E731
  assert where(cfg, "encoder") == [3, 7, 11] and where(cfg, "decoder") == [1, 3, 5, 7, 9, 11]
  hf = cfg.replace(sparse_placement="hf")
  assert where(hf, "encoder") == [1, 5, 9] and where(hf, "decoder") == where(cfg, "decoder")
  assert all(cfg.replace(encoder_sparse_step=1).sparse_layers("encoder"))
  assert not any(Config().sparse_layers("encoder"))


@pytest.mark.parametrize("changes, message", [
    (dict(train_capacity_factor=0.0), "train_capacity_factor=0.0; expected a capacity factor > 0"),
    (dict(eval_capacity_factor=-1.0), "eval_capacity_factor=-1.0"),
    (dict(encoder_sparse_step=3), r"encoder_sparse_step=3; expected 1 to num_encoder_layers=2"),
    (dict(decoder_sparse_step=0), "decoder_sparse_step=0"),
    (dict(num_experts=-1), "num_experts=-1"),
    (dict(family="bart"), "family 't5' only"),
    (dict(sparse_placement="t5x"), "sparse_placement='t5x'"),
])
def test_bad_config_named_in_one_line(changes, message):
  with pytest.raises(ValueError, match=message) as info:
    tiny_config(**{"num_experts": E, **changes})
  assert re.search(message, str(info.value).splitlines()[0])  # gin appends its own lines


def test_dense_config_ignores_the_moe_fields():
  cfg = tiny_config(encoder_sparse_step=9, train_capacity_factor=0.0)  # unused: no experts
  model = EncoderDecoder(cfg)
  tokens = jnp.ones((1, 4), jnp.int32)
  params = model.init(jax.random.key(0), tokens, tokens)["params"]
  reference = EncoderDecoder(tiny_config())
  np.testing.assert_array_equal(model.apply({"params": params}, tokens, tokens),
                                reference.apply({"params": params}, tokens, tokens))


def test_flops_count_one_expert_and_the_router():
  dense = tiny_config()
  sparse = tiny_config(num_experts=32)
  router = 3 * 2 * 32 * 32 * (64 * 1 + 16 * 1)  # one sparse layer per stack, d 32
  assert flops_per_example(sparse, 64, 16) == flops_per_example(dense, 64, 16) + router


@pytest.mark.slow
def test_scanned_switch_decoder_beam_searches_and_samples_like_unrolled():
  """A scanned stack of dense+sparse blocks keeps a stacked KV cache per block layer; beams,
  scores and samples equal the unrolled model's (eval capacity: no token dropped while decoding)."""
  from t5lite.model import stacks  # pylint: disable=g-import-not-at-top
  from t5lite.serving import decoding  # pylint: disable=g-import-not-at-top
  cfg = switch(num_decoder_layers=4)
  tokens = jnp.asarray(np.random.default_rng(0).integers(2, 256, (3, 8)), jnp.int32)
  model_u = EncoderDecoder(cfg)
  params = nn.unbox(jax.jit(model_u.init)(jax.random.key(3), tokens, tokens[:, :4])["params"])
  params = jax.tree.map(lambda x: x * 3.0, params)  # peaky logits: beams differ
  beams_u, scores_u = decoding.beam_search(model_u, params, tokens, 5, beam_size=3)
  model_s = EncoderDecoder(cfg.replace(scan_layers=True))
  beams_s, scores_s = decoding.beam_search(model_s, stacks.scanned(params), tokens, 5,
                                           beam_size=3)
  np.testing.assert_array_equal(beams_s, beams_u)
  np.testing.assert_allclose(scores_s, scores_u, rtol=1e-5)
  rng = jax.random.key(7)
  sampled_u = decoding.sample_decode(model_u, params, tokens, 5, rng, temperature=1.0, top_k=20)
  sampled_s = decoding.sample_decode(model_s, stacks.scanned(params), tokens, 5, rng,
                                     temperature=1.0, top_k=20)
  np.testing.assert_array_equal(sampled_s, sampled_u)
  assert not np.array_equal(sampled_u, beams_u[:, 0])  # sampling, not the best beam
