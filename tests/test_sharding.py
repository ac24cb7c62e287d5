"""Sharded training equals single-device training; parameters are really sharded as RULES say."""
import functools

import jax
import numpy as np
import pytest

from conftest import tiny_config
from jax.sharding import NamedSharding, PartitionSpec as P

from t5lite.training import state as train_state
from t5lite.training import step as train_step_lib
from t5lite.training import optim
from t5lite.runtime import partitioning

TINY = tiny_config()
B, LI, LT = 8, 24, 8


def make_batches(n, seed=0, packed=True):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    enc = rng.integers(2, TINY.vocab_size, (B, LI)).astype(np.int32)
    tgt = rng.integers(2, TINY.vocab_size, (B, LT)).astype(np.int32)
    enc[:, -3:] = 0  # padding
    tgt[:, -2:] = 0
    batch = {"encoder_input_tokens": enc, "decoder_target_tokens": tgt,
             "decoder_input_tokens": np.concatenate([np.zeros((B, 1), np.int32), tgt[:, :-1]], 1),
             "decoder_loss_weights": (tgt > 0).astype(np.float32)}
    if packed:  # two segments per row
      seg_e = np.where(np.arange(LI) < LI // 2, 1, 2)[None].repeat(B, 0) * (enc > 0)
      seg_d = np.where(np.arange(LT) < LT // 2, 1, 2)[None].repeat(B, 0) * (tgt > 0)
      batch.update(encoder_segment_ids=seg_e.astype(np.int32),
                   decoder_segment_ids=seg_d.astype(np.int32),
                   encoder_positions=np.concatenate(
                       [np.arange(LI // 2)] * 2)[None].repeat(B, 0).astype(np.int32),
                   decoder_positions=np.concatenate(
                       [np.arange(LT // 2)] * 2)[None].repeat(B, 0).astype(np.int32))
      batch["decoder_input_tokens"][:, LT // 2] = 0
    out.append(batch)
  return out


_RUNS = {}


def cached_run(shape, fsdp=False, microbatches=1):
  """Each configuration compiles once per test session."""
  key = (shape, fsdp, microbatches)
  if key not in _RUNS:
    mesh = (partitioning.make_mesh((1, 1), devices=jax.devices()[:1]) if shape == (1, 1)
            else partitioning.make_mesh(shape))
    _RUNS[key] = run_steps(mesh, fsdp=fsdp, microbatches=microbatches)
  return _RUNS[key]


def run_steps(mesh, fsdp=False, optimizer="adafactor", steps=3, microbatches=1):
  schedule = optim.learning_rate_schedule("constant", peak=1e-2)
  tx = optim.make_optimizer(optimizer, schedule=schedule)
  with partitioning.activate(mesh, fsdp):
    state, shardings, model = train_state.create_train_state(TINY, tx, mesh, seed=0, fsdp=fsdp)
    step = jax.jit(functools.partial(train_step_lib.train_step, model=model, tx=tx, schedule=schedule,
                                     z_loss=1e-4, microbatches=microbatches),
                   in_shardings=(shardings, partitioning.batch_sharding(mesh)),
                   out_shardings=(shardings, None), donate_argnums=(0,))
    losses = []
    for batch in make_batches(steps):
      state, metrics = step(state, partitioning.host_to_global(batch, mesh))
      losses.append(float(metrics["loss"]))
  return np.array(losses), state, shardings


@pytest.mark.slow
@pytest.mark.parametrize("shape,fsdp", [((4, 2), False), ((2, 4), False), ((4, 2), True)])
def test_sharded_losses_equal_single_device(shape, fsdp):
  assert jax.device_count() == 8
  ref, ref_state, _ = cached_run((1, 1))
  losses, state, _ = cached_run(shape, fsdp)
  np.testing.assert_allclose(losses, ref, rtol=1e-5)
  assert losses[-1] < losses[0]
  leaves = jax.tree.leaves(jax.device_get(state.params))
  ref_leaves = jax.tree.leaves(jax.device_get(ref_state.params))
  for a, b in zip(leaves, ref_leaves):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_microbatches_equal_one_batch():
  ref, _, _ = cached_run((1, 1))
  losses, _, _ = cached_run((4, 2), microbatches=2)
  np.testing.assert_allclose(losses, ref, rtol=1e-5)


def test_parameters_sharded_as_rules_say():
  _, state, _ = cached_run((4, 2))
  p = state.params
  enc0 = p["encoder"]["layers_0"]
  # (embed, heads, kv) -> (None, model, None); (embed, mlp) -> (None, model); (vocab, embed) -> (model, None)
  assert enc0["attention"]["query"].sharding.spec == P(None, "model", None)
  assert enc0["attention"]["out"].sharding.spec == P("model", None, None)
  assert enc0["mlp"]["wi_0"].sharding.spec == P(None, "model")
  assert enc0["mlp"]["wo"].sharding.spec == P("model", None)
  assert p["token_embedder"]["embedding"].sharding.spec == P("model", None)
  assert p["decoder"]["logits_dense"].sharding.spec == P(None, "model")
  # A device really holds only its shard: vocab 256 over model=2 -> 128 rows each.
  shard = p["token_embedder"]["embedding"].addressable_shards[0]
  assert shard.data.shape == (TINY.vocab_size // 2, TINY.emb_dim)
  # Unfactored Adafactor statistics (dims < 128 here) follow their parameters.
  v = [x for x in jax.tree.leaves(state.opt_state) if x.shape == (TINY.emb_dim, TINY.mlp_dim)]
  assert v and all(x.sharding.spec == P(None, "model") for x in v)


def test_fsdp_splits_embed_over_data():
  _, state, _ = cached_run((4, 2), fsdp=True)
  q = state.params["encoder"]["layers_0"]["attention"]["query"]
  assert q.sharding.spec == P("data", "model", None)
  assert q.addressable_shards[0].data.shape == (TINY.emb_dim // 4, 2, TINY.head_dim)


def test_adafactor_factored_state_is_replicated_not_broken():
  """Factored second moments have a different rank than their parameter (ENVIRONMENT.md trap)."""
  mesh = partitioning.make_mesh((4, 2))
  tx = optim.make_optimizer("adafactor", schedule=optim.learning_rate_schedule("constant"))
  big = TINY.replace(emb_dim=128, mlp_dim=256, head_dim=32)
  with jax.set_mesh(mesh):
    state, shardings, _ = train_state.create_train_state(big, tx, mesh, 0)
  v_row = [x for x in jax.tree.leaves(state.opt_state) if x.ndim == 1 and x.shape[0] == 256]
  assert v_row, "expected factored statistics for the [128, 256] MLP kernels"


def test_mesh_errors():
  with pytest.raises(ValueError, match="needs 16 devices; 8 are available"):
    partitioning.make_mesh((4, 4))
  with pytest.raises(ValueError, match="expected 2 entries"):
    partitioning.make_mesh((8,))
  with pytest.raises(ValueError, match="does not divide"):
    partitioning.make_mesh((-1, 3))
  assert dict(partitioning.make_mesh((-1, 2)).shape) == {"data": 4, "model": 2}


@pytest.mark.slow
def test_indivisible_dimension_is_replicated_not_an_error():
  """BART's vocabulary (50265) cannot split over model=2: that axis is replicated instead."""
  cfg = TINY.replace(vocab_size=255)
  mesh = partitioning.make_mesh((4, 2))
  tx = optim.make_optimizer("adamw", schedule=optim.learning_rate_schedule("constant"))
  with jax.set_mesh(mesh):
    state, _, _ = train_state.create_train_state(cfg, tx, mesh, 0)
  assert state.params["token_embedder"]["embedding"].sharding.spec == P(None, None)
  assert state.params["decoder"]["logits_dense"].sharding.spec == P(None, None)
  assert state.params["encoder"]["layers_0"]["mlp"]["wi_0"].sharding.spec == P(None, "model")


def test_activation_constraints_are_real_under_activate():
  """Inside partitioning.activate the model's logical constraints shard activations."""
  from t5lite.model.layers import constrain
  mesh = partitioning.make_mesh((4, 2))
  x = jax.numpy.ones((8, 4, 6))
  f = jax.jit(lambda y: constrain(y * 2, ("batch", "length", "embed")))
  with partitioning.activate(mesh):
    assert f(x).sharding.is_equivalent_to(NamedSharding(mesh, P("data", None, None)), 3)
  g = jax.jit(lambda y: constrain(y * 2, ("batch", "length", "mlp")))
  with partitioning.activate(mesh):
    assert g(x).sharding.is_equivalent_to(NamedSharding(mesh, P("data", None, "model")), 3)
  assert not f(x).sharding.is_equivalent_to(NamedSharding(mesh, P("data", None, None)), 3)
