"""Scanned layer stacks, remat policies, layout conversion and layout-switching checkpoints."""
import contextlib
import functools
import io
import json
import os
import re

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_config
from jax.sharding import PartitionSpec as P

from t5lite.store import checkpoints
from t5lite.serving import decoding
from t5lite.convert import hf
from t5lite.model import stacks as layout, losses
from t5lite.training import optim, train
from t5lite.training import state as train_state
from t5lite.runtime import partitioning
from t5lite.cli import common
from t5lite.store.checkpoints import Checkpointer
from t5lite.model.config import REMAT_POLICIES, Config
from t5lite.model.network import EncoderDecoder

# 3 + 2 layers: the two stacks differ in length.
TINY = tiny_config(num_encoder_layers=3)
B, LI, LT = 8, 16, 8
SHAPES = {"encoder_input_tokens": (B, LI), "decoder_input_tokens": (B, LT)}


def make_batch(seed=0, vocab=TINY.vocab_size):
  """Packed (two segments a row) and padded, so masks and segment ids are exercised."""
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, vocab, (B, LI)).astype(np.int32)
  tgt = rng.integers(2, vocab, (B, LT)).astype(np.int32)
  enc[:, -3:], tgt[:, -2:] = 0, 0
  seg_e = (np.where(np.arange(LI) < LI // 2, 1, 2)[None].repeat(B, 0) * (enc > 0)).astype(np.int32)
  seg_d = (np.where(np.arange(LT) < LT // 2, 1, 2)[None].repeat(B, 0) * (tgt > 0)).astype(np.int32)
  dec_in = np.concatenate([np.zeros((B, 1), np.int32), tgt[:, :-1]], 1)
  dec_in[:, LT // 2] = 0
  return {"encoder_input_tokens": enc, "decoder_target_tokens": tgt, "decoder_input_tokens": dec_in,
          "decoder_loss_weights": (tgt > 0).astype(np.float32),
          "encoder_segment_ids": seg_e, "decoder_segment_ids": seg_d,
          "encoder_positions": np.tile(np.arange(LI // 2), 2)[None].repeat(B, 0).astype(np.int32),
          "decoder_positions": np.tile(np.arange(LT // 2), 2)[None].repeat(B, 0).astype(np.int32)}


def mesh_of(shape):
  return partitioning.make_mesh(shape, devices=jax.devices()[:int(np.prod(shape))])


def abstract_state(cfg, tx, mesh, fsdp=False):
  """train_state.create_train_state's TrainState, abstract (ShapeDtypeStructs with its shardings):
  no init is compiled."""
  return train_state.state_shardings(cfg, tx, mesh, fsdp)[0]


def random_params(cfg, seed=0):
  """Unrolled parameters (numpy) of cfg's shapes, drawn at random: no init is compiled."""
  rng = np.random.default_rng(seed)
  model = EncoderDecoder(cfg)
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(
      jax.random.key(0), jnp.ones((2, 8), jnp.int32), jnp.ones((2, 4), jnp.int32))["params"]))
  draw = lambda x: rng.standard_normal(x.shape) * 0.3 + (x.ndim == 1)  # norm scales near 1
  return jax.tree.map(lambda x: draw(x).astype(np.float32), shapes)


def assert_trees_close(a, b, rtol):
  """Leaf by leaf, |a - b| <= rtol * max|b| (gradients span orders of magnitude)."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    np.testing.assert_allclose(x, y, rtol=0, atol=rtol * float(np.max(np.abs(y))),
                               err_msg=jax.tree_util.keystr(path))


def max_diff(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ----------------------------------------------------------------------------- the model


@pytest.mark.parametrize("family", ["t5", "bart"])
@pytest.mark.parametrize("mesh_shape", [(4, 2), (1, 1)])
def test_scanned_logits_equal_unrolled(family, mesh_shape):
  """Same parameters (converted) -> the same logits, sharded on the mesh."""
  cfg = TINY.replace(family=family)
  mesh = mesh_of(mesh_shape)
  tx = optim.make_optimizer("adamw", schedule=optim.learning_rate_schedule("constant"))
  params_u = random_params(cfg)
  params_s = layout.scanned(params_u)
  logits = {}
  with partitioning.activate(mesh):
    inputs = losses.model_inputs(partitioning.host_to_global(make_batch(), mesh))
    for scan, params in ((False, params_u), (True, params_s)):
      c = cfg.replace(scan_layers=scan)
      shardings = jax.tree.map(lambda a: a.sharding, abstract_state(c, tx, mesh).params)
      on_mesh = jax.device_put(params, shardings)
      model = EncoderDecoder(c)
      logits[scan] = jax.jit(lambda p, m=model: m.apply({"params": p}, **inputs))(on_mesh)
  diff = float(jnp.max(jnp.abs(logits[False] - logits[True])))
  assert diff <= 1e-5, diff
  assert float(jnp.std(logits[False])) > 0.1  # not a degenerate comparison


def test_scanned_parameters_have_a_layers_axis_and_real_shardings():
  mesh = mesh_of((4, 2))
  cfg = TINY.replace(scan_layers=True)
  tx = optim.make_optimizer("adamw", schedule=optim.learning_rate_schedule("constant"))
  model = EncoderDecoder(cfg)
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((B, LI), jnp.int32),
                                            jnp.ones((B, LT), jnp.int32))["params"])
  specs = nn.get_partition_spec(boxed)
  assert specs["encoder"]["layers"]["attention"]["query"] == P("layers", "embed", "heads", "kv")
  assert specs["decoder"]["relpos_bias"]["rel_embedding"] == P("relpos_buckets", "heads")
  with partitioning.activate(mesh):
    state, _, _ = train_state.create_train_state(cfg, tx, mesh, seed=0)
  enc = state.params["encoder"]["layers"]
  query_spec = P(None, None, "model", None)
  assert enc["attention"]["query"].shape == (3, TINY.emb_dim, TINY.num_heads, TINY.head_dim)
  assert enc["attention"]["query"].sharding.spec == query_spec
  assert enc["mlp"]["wi_0"].sharding.spec == P(None, None, "model")
  assert state.params["decoder"]["layers"]["mlp"]["wo"].shape == (2, TINY.mlp_dim, TINY.emb_dim)
  # A device holds one shard of every layer: heads 4 over model=2.
  shard = enc["attention"]["query"].addressable_shards[0].data
  assert shard.shape == (3, TINY.emb_dim, 2, TINY.head_dim)
  # AdamW's moments of a stacked kernel are stacked too, and follow its sharding.
  mu = state.opt_state[0].mu["encoder"]["layers"]["attention"]["query"]
  assert mu.shape == enc["attention"]["query"].shape and mu.sharding.spec == query_spec
  # FSDP splits the stacked kernels' embed axis over 'data'.
  fsdp = abstract_state(cfg, tx, mesh, fsdp=True).params["encoder"]["layers"]["attention"]["query"]
  assert fsdp.sharding.spec == P(None, "data", "model", None)


def _residual_bytes(fn, *args) -> int:
  """Bytes of the activations jax keeps for fn's backward pass (parsed from its public printer)."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    jax.ad_checkpoint.print_saved_residuals(fn, *args)
  size = {"f32": 4, "bf16": 2, "i32": 4, "bool": 1, "f16": 2}
  total = 0
  for line in out.getvalue().splitlines():
    if "from the argument" in line:
      continue  # parameters and inputs are kept anyway
    m = re.match(r"(\w+)\[([\d,]*)\]", line)
    total += size[m.group(1)] * int(np.prod([int(d) for d in m.group(2).split(",") if d]))
  return total


@pytest.mark.slow
@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
def test_remat_policies_same_loss_and_gradients_less_memory(scan):
  params = random_params(TINY)
  if scan:
    params = layout.scanned(params)
  batch = {k: jnp.asarray(v) for k, v in make_batch().items()}
  results, kept = {}, {}
  for policy in REMAT_POLICIES:
    model = EncoderDecoder(TINY.replace(scan_layers=scan, remat_policy=policy))
    loss = functools.partial(lambda p, m: losses.batch_loss(p, batch, model=m, z_loss=1e-4)[0],
                             m=model)
    results[policy] = jax.jit(jax.value_and_grad(loss))(params)
    kept[policy] = _residual_bytes(loss, params)
  ref_loss, ref_grads = results["none"]
  for policy in REMAT_POLICIES[1:]:
    loss, grads = results[policy]
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    assert_trees_close(grads, ref_grads, rtol=1e-5)
  # Each policy really rematerialises: none keeps most, full only the layers' inputs.
  assert kept["none"] > kept["minimal"] > kept["save_attn_mlp_outputs"] > kept["full"], kept


def test_remat_policy_name_is_validated():
  with pytest.raises(ValueError, match=r"remat_policy='fast'.*'none', 'full', 'minimal', "
                                       r"'save_attn_mlp_outputs'"):
    TINY.replace(remat_policy="fast")


@pytest.mark.slow
def test_scanned_decoder_decodes_like_unrolled():
  """The scanned decoder's stacked KV cache (gathered by beam) gives the unrolled model's beams."""
  tokens = jnp.asarray(make_batch()["encoder_input_tokens"][:3])
  params_u = random_params(TINY, seed=3)
  model_u, model_s = EncoderDecoder(TINY), EncoderDecoder(TINY.replace(scan_layers=True))
  beams_u, scores_u = decoding.beam_search(model_u, params_u, tokens, 6, beam_size=3)
  beams_s, scores_s = decoding.beam_search(model_s, layout.scanned(params_u), tokens, 6,
                                           beam_size=3)
  np.testing.assert_array_equal(beams_s, beams_u)
  np.testing.assert_allclose(scores_s, scores_u, rtol=1e-5)
  assert len({tuple(r) for r in np.asarray(beams_u).reshape(-1, 6).tolist()}) > 3  # beams differ


# ----------------------------------------------------------------------------- layout conversion

# Big enough that Adafactor factors the MLP kernels and the embedding (two dims >= 128).
WIDE = Config(vocab_size=256, emb_dim=128, num_heads=2, head_dim=64, mlp_dim=256,
              num_encoder_layers=3, num_decoder_layers=2, dtype="float32")


def test_layout_round_trips_params_and_abstract_trees():
  params = random_params(WIDE)
  stacked = layout.scanned(params)
  assert layout.layout_of(params) == "unrolled" and layout.layout_of(stacked) == "scanned"
  assert stacked["encoder"]["layers"]["mlp"]["wi_0"].shape == (3, 128, 256)
  np.testing.assert_array_equal(stacked["decoder"]["layers"]["mlp"]["wo"][1],
                                params["decoder"]["layers_1"]["mlp"]["wo"])
  assert max_diff(layout.unrolled(stacked), params) == 0.0
  # export-hf of a scanned run: the same HF state dict.
  hf_u, hf_s = hf.params_to_hf(params, WIDE), hf.params_to_hf(stacked, WIDE)
  assert sorted(hf_u) == sorted(hf_s) and all(np.array_equal(hf_u[k], hf_s[k]) for k in hf_u)
  # Abstract trees: shapes and shardings follow (the stacked axis replicated).
  mesh = mesh_of((4, 2))
  spec = jax.sharding.NamedSharding(mesh, P(None, "model"))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=spec)
                          if x.ndim == 2 else jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  a_stacked = layout.scanned(abstract)["encoder"]["layers"]["mlp"]["wi_0"]
  assert a_stacked.shape == (3, 128, 256) and a_stacked.sharding.spec == P(None, None, "model")
  back = layout.unrolled(layout.scanned(abstract))
  assert back["encoder"]["layers_2"]["mlp"]["wi_0"].sharding == spec


@pytest.mark.parametrize("name", ["adafactor", "adamw"])
def test_optimizer_state_converts_and_layerwise_equals_unrolled(name):
  """The layer-wise optimizer on stacked parameters is the unrolled optimizer, state and
  updates alike; its state converts both ways exactly."""
  params_u = jax.tree.map(jnp.asarray, random_params(WIDE))
  params_s = layout.scanned(params_u)
  tx = optim.make_optimizer(name, schedule=optim.learning_rate_schedule("constant", peak=1e-2),
                            grad_clip=1.0)
  state_u, state_s = tx.init(params_u), tx.init(params_s)
  if name == "adafactor":  # factored statistics of a stacked kernel: per layer, stacked
    factored = state_s[1][0]
    assert factored.v_row["encoder"]["layers"]["mlp"]["wi_0"].shape == (3, 128)
    assert factored.v_col["encoder"]["layers"]["mlp"]["wi_0"].shape == (3, 256)
    assert factored.v["encoder"]["layers"]["mlp"]["wi_0"].shape == (3, 1)  # placeholder, per layer
  update = jax.jit(tx.update)
  for seed in range(3):
    grads_u = jax.tree.map(lambda p, k=jax.random.key(seed): jax.random.normal(
        jax.random.fold_in(k, p.size), p.shape), params_u)
    updates_u, state_u = update(grads_u, state_u, params_u)
    updates_s, state_s = update(layout.scanned(grads_u), state_s, params_s)
    assert max_diff(layout.scanned(updates_u), updates_s) < 1e-6
    params_u = optax.apply_updates(params_u, updates_u)
    params_s = optax.apply_updates(params_s, updates_s)
  assert max_diff(layout.scanned(state_u), state_s) < 1e-6
  assert max_diff(layout.unrolled(state_s), state_u) < 1e-6
  assert max_diff(layout.unrolled(layout.scanned(state_u)), state_u) == 0.0


def test_plain_optax_state_of_stacked_params_is_refused():
  """Plain Adafactor on a stacked [N, ...] kernel keeps one [1] placeholder per stack, not N:
  there is no unrolled state to convert it to."""
  params_s = layout.scanned(random_params(WIDE))
  plain = optax.adafactor(learning_rate=1e-2, min_dim_size_to_factor=128)
  with pytest.raises(ValueError, match="not convertible.*optim.layerwise"):
    layout.unrolled(plain.init(params_s))


# ---------------------------------------------------------------------------- train(), checkpoints

FAST = [
    "--gin_file=models/t5_1_1/tiny.gin", "--gin_file=runs/demo.gin",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}", "--gin.BATCH_SIZE=8",
    "--gin.Config.emb_dim=32", "--gin.Config.mlp_dim=64", "--gin.Config.num_heads=4",
    "--gin.Config.head_dim=8", "--gin.Config.num_encoder_layers=3",
    "--gin.LoopConfig.log_period=1", "--gin.EvalConfig.period=0", "--gin.EvalConfig.predict_examples=0",
    "--gin.make_optimizer.name='adafactor'", "--gin.learning_rate_schedule.name='constant'",
    "--gin.learning_rate_schedule.peak=1e-2", "--gin.Checkpointer.async_save=False",
]
SCANNED = "--gin.Config.scan_layers=True"
FULL_REMAT = "--gin.Config.remat_policy='full'"


def run_train(model_dir, steps, *extra):
  gin.clear_config()
  args = FAST + [f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}", *extra]
  common.parse_gin_flags(args)
  return train.train(mesh=partitioning.make_mesh((4, 2)))


def read_losses(model_dir) -> dict[int, float]:
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """One run that never switches (9 steps, unrolled) and one that switches layout twice:
  steps 1-3 unrolled, 4-6 scanned with full remat, 7-9 unrolled with full remat (full remat
  used to stop with TracerBoolConversionError in flax's remat). Adafactor, whose per-layer
  statistics and scales must carry over."""
  straight, switched = (str(tmp_path_factory.mktemp(n)) for n in ("straight", "switched"))
  run_train(straight, 9)
  run_train(switched, 3)
  run_train(switched, 6, SCANNED, FULL_REMAT)
  run_train(switched, 9, FULL_REMAT)
  return straight, switched


@pytest.mark.slow
def test_switching_layouts_resumes_exactly(runs):
  """Step, parameters and optimizer state carry over both ways: the switched run's losses are
  those of the run that never switched."""
  straight, switched = runs
  ckpt = Checkpointer(os.path.join(switched, "checkpoints"))
  assert [ckpt.saved_layout(s) for s in (3, 6, 9)] == ["unrolled", "scanned", "unrolled"]
  ckpt.close()
  want, got = read_losses(straight), read_losses(switched)
  assert sorted(got) == list(range(1, 10))
  np.testing.assert_allclose([got[s] for s in range(1, 10)], [want[s] for s in range(1, 10)],
                             rtol=1e-5)
  assert want[9] < want[1] - 0.5  # it trains


@pytest.mark.slow
@pytest.mark.parametrize("step,saved", [(3, "unrolled"), (6, "scanned")])
def test_restore_into_the_other_layout(runs, step, saved):
  """Checkpointer.restore (TrainState) and restore_params (init_checkpoint's path) put one
  layout's checkpoint onto the other's model and mesh."""
  _, switched = runs
  assert checkpoints.saved_layout(switched, step) == saved
  other = "scanned" if saved == "unrolled" else "unrolled"
  cfg = Config(vocab_size=3200, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
               num_encoder_layers=3, num_decoder_layers=2, dtype="float32",
               scan_layers=other == "scanned")
  tx = optim.make_optimizer("adafactor", schedule=optim.learning_rate_schedule("constant"),
                            grad_clip=1.0)
  target = abstract_state(cfg, tx, mesh_of((2, 4)))
  ckpt = Checkpointer(os.path.join(switched, "checkpoints"))
  state, data = ckpt.restore(step, target)
  as_saved, _ = ckpt.restore(step, layout.to_layout(target, saved))
  ckpt.close()
  params = checkpoints.restore_params(switched, target.params, step)
  assert int(state.step) == step and data["next_batch"] == step  # the data position
  assert layout.layout_of(state) == other == layout.layout_of(params)
  assert max_diff(state, layout.to_layout(as_saved, other)) == 0.0
  assert max_diff(params, state.params) == 0.0
  assert jax.tree.structure(state) == jax.tree.structure(target)
  for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(target)):
    assert got.sharding == want.sharding and got.shape == want.shape
