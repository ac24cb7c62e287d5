"""Switch models on meshes with an 'expert' axis (8 emulated CPU devices): loss and gradients equal
one device's, the compiled step holds all-to-alls, microbatching, FSDP and scanned dense+sparse
blocks change nothing, Adafactor treats the expert axis as a batch axis, checkpoints restore onto
another expert-axis size, and experts that do not divide the expert axis are refused."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from conftest import tiny_config
from t5lite.model import losses, stacks
from t5lite.model.network import EncoderDecoder
from t5lite.model.params import abstract_params
from t5lite.runtime import partitioning
from t5lite.store.checkpoints import Checkpointer
from t5lite.training import optim, state as train_state, step as step_lib

# Encoder groups: one example (12 tokens); decoder groups: 2 examples of 6, in a batch of 8 (or
# of 4 per microbatch, or 2 per device): the groups never depend on the split.
SWITCH = tiny_config(num_experts=4, expert_group_size=12)
B, LI, LT = 8, 12, 6
RTOL, ATOL = 2e-5, 2e-6


def batch(seed=0):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, SWITCH.vocab_size, (B, LI)).astype(np.int32)
  tgt = rng.integers(2, SWITCH.vocab_size, (B, LT)).astype(np.int32)
  enc[:, -2:] = 0
  tgt[::2, -1] = 0
  return {"encoder_input_tokens": enc, "decoder_target_tokens": tgt,
          "decoder_input_tokens": np.concatenate([np.zeros((B, 1), np.int32), tgt[:, :-1]], 1),
          "decoder_loss_weights": (tgt > 0).astype(np.float32)}


def mesh_of(shape):
  return partitioning.make_mesh(shape, devices=jax.devices()[:int(np.prod(shape))])


_GRADS = {}


def loss_and_grads(shape, fsdp=False):
  """(loss, grads, compiled HLO) of the training loss on a mesh; each compiles once."""
  if (shape, fsdp) not in _GRADS:
    mesh = mesh_of(shape)
    model = EncoderDecoder(SWITCH)
    with partitioning.activate(mesh, fsdp):
      abstract = abstract_params(SWITCH, mesh, fsdp)
      shardings = jax.tree.map(lambda x: x.sharding, abstract)
      params = jax.jit(lambda k: nn.unbox(model.init(k, jnp.ones((1, 1), jnp.int32),
                                                     jnp.ones((1, 1), jnp.int32))["params"]),
                       out_shardings=shardings)(jax.random.key(0))
      fn = jax.jit(jax.value_and_grad(functools.partial(
          losses.batch_loss, model=model, z_loss=1e-4, train=True), has_aux=True),
          in_shardings=(shardings, partitioning.batch_sharding(mesh)))
      data = partitioning.host_to_global(batch(), mesh)
      (loss, _), grads = fn(params, data)
      hlo = fn.lower(params, data).compile().as_text()
    _GRADS[shape, fsdp] = (float(loss), jax.device_get(grads), hlo, params)
  return _GRADS[shape, fsdp]


def assert_close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=RTOL, atol=ATOL)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(4, 1, 1), (1, 4, 1), (2, 2, 1)])
def test_loss_and_grads_equal_one_device(shape):
  want_loss, want_grads, _, _ = loss_and_grads((1, 1, 1))
  loss, grads, hlo, params = loss_and_grads(shape)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  assert_close(grads, want_grads)  # no rescaling by the number of expert partitions
  wi = params["encoder"]["layers_1"]["mlp"]["experts"]["wi_0"]
  n_expert = shape[1]
  assert wi.sharding.spec == P("expert", None, "model")
  assert wi.addressable_shards[0].data.shape == (4 // n_expert, 32, 64)
  assert ("all-to-all" in hlo) == (n_expert > 1)  # tokens travel to their experts' devices


@pytest.mark.slow
def test_fsdp_with_experts_equals_one_device():
  want_loss, want_grads, _, _ = loss_and_grads((1, 1, 1))
  loss, grads, _, params = loss_and_grads((2, 2, 1), fsdp=True)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  assert_close(grads, want_grads)
  wi = params["decoder"]["layers_1"]["mlp"]["experts"]["wi_0"]
  assert wi.sharding.spec == P("expert", "data", "model")  # experts and FSDP on their own axes


_STEPS = {}


def one_step(config=SWITCH, microbatches=1, layout=None):
  """(parameters after one Adafactor step, metrics) from the unrolled model's seed-0 state,
  converted to `layout` ("scanned") first."""
  key = (config, microbatches, layout)
  if key not in _STEPS:
    mesh = mesh_of((1, 1, 1))
    schedule = optim.learning_rate_schedule("constant", peak=1e-2)
    tx = optim.make_optimizer("adafactor", schedule=schedule)
    with partitioning.activate(mesh):
      state, _, _ = train_state.create_train_state(config.replace(scan_layers=False), tx, mesh,
                                                   seed=0)
      if layout:
        state = stacks.to_layout(jax.device_get(state), layout)
      model = EncoderDecoder(config)
      step = jax.jit(functools.partial(step_lib.train_step, model=model, tx=tx,
                                       schedule=schedule, z_loss=1e-4, microbatches=microbatches))
      new, metrics = step(state, batch())
    _STEPS[key] = (jax.device_get(new.params), {k: float(v) for k, v in metrics.items()
                                                if k != "guard"})
  return _STEPS[key]


@pytest.mark.slow
def test_microbatches_leave_loss_and_update_unchanged():
  params, metrics = one_step()
  params2, metrics2 = one_step(microbatches=2)
  for k in ("loss", "cross_entropy", "router_aux_loss", "router_z_loss",
            "router_dropped_fraction", "router_max_load"):
    np.testing.assert_allclose(metrics2[k], metrics[k], rtol=1e-5, err_msg=k)
  assert_close(params2, params)
  assert metrics["loss"] == pytest.approx(metrics["cross_entropy"] + metrics["z_loss"]
                                          + 0.01 * metrics["router_aux_loss"], rel=1e-6)
  assert 0 <= metrics["router_dropped_fraction"] < 1 and metrics["router_expert_usage"] > 0


@pytest.mark.slow
def test_scanned_dense_sparse_blocks_train_like_unrolled():
  config = SWITCH.replace(num_encoder_layers=4, num_decoder_layers=2)
  params, metrics = one_step(config)
  scanned, metrics_scanned = one_step(config.replace(scan_layers=True), layout="scanned")
  layers = scanned["encoder"]["layers"]
  assert sorted(layers) == ["block_0", "block_1"]  # a dense layer, then a sparse one
  assert layers["block_1"]["mlp"]["experts"]["wi_0"].shape == (2, 4, 32, 64)
  np.testing.assert_allclose(metrics_scanned["loss"], metrics["loss"], rtol=1e-6)
  assert_close(stacks.unrolled(scanned), params)


def test_adafactor_treats_the_expert_axis_as_a_batch_axis():
  rng = np.random.default_rng(0)
  params = {"mlp": {"experts": {"wi": jnp.asarray(rng.normal(size=(3, 128, 256)), jnp.float32)},
                    "router": jnp.asarray(rng.normal(size=(128, 3)), jnp.float32)}}
  grads = jax.tree.map(lambda x: x * 0.1 + 0.01, params)
  tx = optim.make_optimizer("adafactor", schedule=optax.constant_schedule(1e-2))
  updates, state = tx.update(grads, tx.init(params), params)
  plain = optax.adafactor(learning_rate=1e-2, min_dim_size_to_factor=128, decay_rate=0.8,
                          multiply_by_parameter_scale=True, clipping_threshold=1.0, momentum=None,
                          eps=1e-30)
  for e in range(3):  # each expert updated as a dense [D, F] kernel alone would be
    one = {"wi": params["mlp"]["experts"]["wi"][e]}
    want, _ = plain.update({"wi": grads["mlp"]["experts"]["wi"][e]}, plain.init(one), one)
    np.testing.assert_allclose(updates["mlp"]["experts"]["wi"][e], want["wi"], rtol=1e-5)
  # 256 experts of [128, 256]: factored over D and F per expert, never over the expert axis.
  big = jax.ShapeDtypeStruct((256, 128, 256), jnp.float32)
  shapes = {tuple(x.shape) for x in jax.tree.leaves(
      jax.eval_shape(tx.init, {"experts": {"wi": big}}))}
  assert {(256, 128), (256, 256)} <= shapes and (128, 256) not in shapes


@pytest.mark.slow
def test_checkpoint_restores_onto_another_expert_axis(tmp_path):
  schedule = optim.learning_rate_schedule("constant", peak=1e-2)
  tx = optim.make_optimizer("adafactor", schedule=schedule)

  def make(shape, seed):
    mesh = mesh_of(shape)
    with partitioning.activate(mesh):
      state, shardings, _ = train_state.create_train_state(SWITCH, tx, mesh, seed=seed)
    return state, shardings

  state, _ = make((1, 4, 1), seed=1)
  ckpt = Checkpointer(str(tmp_path / "ckpt"), async_save=False)
  ckpt.save(3, state, {"batches": 3})
  ckpt.close()
  target, shardings = make((2, 2, 2), seed=2)
  restored, data = Checkpointer(str(tmp_path / "ckpt")).restore(
      3, train_state.abstract_state(target, shardings))
  assert data == {"batches": 3}
  for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  wo = restored.params["decoder"]["layers_1"]["mlp"]["experts"]["wo"]
  assert wo.sharding.spec == P("expert", "model", None)
  assert wo.addressable_shards[0].data.shape == (2, 32, 32)


def test_meshes_and_bad_expert_axis():
  two = partitioning.make_mesh((-1, 1))
  assert two.axis_names == ("data", "model")  # today's shapes: expert = 1
  assert partitioning.batch_sharding(two).spec == P("data")
  three = partitioning.make_mesh((2, 2, 2))
  assert dict(three.shape) == {"data": 2, "expert": 2, "model": 2}
  assert partitioning.batch_sharding(three).spec == P(("data", "expert"))
  assert partitioning.batch_size_divisor(three) == 4
  with pytest.raises(ValueError, match=r"num_experts=4 does not divide over the mesh's 'expert' "
                                       r"axis of 8 devices"):
    abstract_params(SWITCH, partitioning.make_mesh((1, 8, 1)))
  with pytest.raises(ValueError, match="expected 2 entries .* or 3"):
    partitioning.make_mesh((1, 2, 2, 2))
  abstract_params(tiny_config(), partitioning.make_mesh((1, 8, 1)))  # dense: data parallel
