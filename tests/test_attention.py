"""Fused attention kernels (Config.attention_kernel) against XLA attention.

'pallas_tpu' runs the real Pallas TPU flash-attention kernel in Pallas interpret mode on the CPU
mesh; its values and gradients (q, k, v and the bias) must equal jax's XLA attention with the
dense mask at valid positions, sharded over (4, 2) and on one device, and a tiny T5 train step
must equal the model's own XLA path. 'cudnn' cannot run here (no GPU): it must say so. The
ahead-of-time compile for a real TPU topology runs in a subprocess (libtpu stays out of this one).
"""
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_config
from jax.sharding import NamedSharding, PartitionSpec as P

from t5lite.model import kernels, losses, masks
from t5lite.serving import decoding
from t5lite.runtime import partitioning
from t5lite.training import state as train_state
from t5lite.model.config import Config
from t5lite.model.network import EncoderDecoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, H, D = 8, 4, 16

# name -> (query length, key length, bias, causal, packed)
CASES = {
    "encoder_bidirectional_bias_padding": (24, 24, True, False, False),
    "decoder_causal_packed_bias": (20, 20, True, True, True),
    "cross_no_bias": (20, 24, False, False, False),
    "decoder_two_blocks": (130, 130, True, True, True),  # 130 pads to 256: two kernel blocks
}


def _mesh(shape):
  n = shape[0] * shape[1]
  return partitioning.make_mesh(shape, devices=jax.devices()[:n])


def _inputs(q_len, k_len, with_bias, causal, packed, seed=0):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.normal(size=(B, n, H, D)), jnp.float32) for n in (q_len, k_len, k_len))
  bias = jnp.asarray(rng.normal(size=(1, H, q_len, k_len)), jnp.float32) if with_bias else None
  # Each row keeps a different number of valid (leading) positions; row 0 keeps them all.
  # Self-attention (q_len == k_len) has one validity for queries and keys, as in the model.
  q_valid = np.arange(q_len)[None] < np.linspace(q_len, q_len // 2, B).astype(int)[:, None]
  k_valid = (q_valid if q_len == k_len else
             np.arange(k_len)[None] < np.linspace(k_len, k_len // 3, B).astype(int)[:, None])
  q_seg = k_seg = None
  if packed:  # two packed segments a row (self-attention: queries and keys are one sequence)
    q_seg = k_seg = jnp.asarray(np.where(np.arange(q_len) < q_len // 3, 1, 2)[None] * q_valid,
                                jnp.int32)
  mask = masks.SegmentMask(jnp.asarray(q_valid), jnp.asarray(k_valid), q_seg, k_seg, causal)
  # The loss weighs only valid query rows, as the model's loss does (padding never reaches it).
  w = jnp.asarray(rng.normal(size=(B, q_len, H, D)) * q_valid[:, :, None, None], jnp.float32)
  return (q, k, v, bias), mask, w


def _run(kernel, args, mask, w, mesh):
  """(loss, gradients wrt q, k, v and the bias, outputs) of one jitted call on the mesh."""
  def loss(q, k, v, bias):
    out = kernels.dot_product_attention(q, k, v, bias, mask, kernel)
    return jnp.sum(out * w), out
  argnums = (0, 1, 2, 3) if args[3] is not None else (0, 1, 2)
  qkv = NamedSharding(mesh, P("data", None, "model", None))
  with jax.set_mesh(mesh):
    placed = [jax.device_put(x, qkv) for x in args[:3]] + [args[3]]
    (value, out), grads = jax.jit(jax.value_and_grad(loss, argnums, has_aux=True))(*placed)
  return value, grads, out


# Every case on the (4, 2) mesh; on one device the case that has it all (padding, packing,
# causality, bias, two kernel blocks): the quick tier runs that one.
@pytest.mark.parametrize("case,mesh_shape", [pytest.param(case, (4, 2), marks=pytest.mark.slow)
                                             for case in CASES] + [("decoder_two_blocks", (1, 1))])
def test_pallas_tpu_equals_xla(case, mesh_shape):
  args, mask, w = _inputs(*CASES[case])
  mesh = _mesh(mesh_shape)
  ref_loss, ref_grads, ref_out = _run("xla", args, mask, w, mesh)
  loss, grads, out = _run("pallas_tpu", args, mask, w, mesh)
  valid = np.asarray(mask.q_valid_BQ)
  np.testing.assert_allclose(np.asarray(out)[valid], np.asarray(ref_out)[valid], atol=2e-5,
                             rtol=1e-4)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-4, atol=1e-3)
  for name, g, ref in zip(("q", "k", "v", "bias"), grads, ref_grads):
    assert np.isfinite(np.asarray(g)).all(), f"{name} gradient has NaN/inf"
    np.testing.assert_allclose(g, ref, atol=2e-5, rtol=1e-4, err_msg=f"{name} gradient")
  if mesh_shape == (4, 2):  # the kernel's output keeps the batch/heads sharding
    assert out.sharding.spec == P("data", None, "model", None)


@pytest.mark.slow
def test_pallas_tpu_bfloat16_close_to_xla():
  """bf16 operands (the model's activations), bias included: close to XLA at bf16 precision."""
  args, mask, w = _inputs(*CASES["decoder_causal_packed_bias"])
  args = tuple(x.astype(jnp.bfloat16) for x in args)
  mesh = _mesh((4, 2))
  ref_loss, ref_grads, _ = _run("xla", args, mask, w, mesh)
  loss, grads, _ = _run("pallas_tpu", args, mask, w, mesh)
  np.testing.assert_allclose(loss, ref_loss, rtol=2e-2, atol=0.5)
  for g, ref in zip(grads, ref_grads):
    assert g.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(ref, np.float32),
                               atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("case", ["encoder_bidirectional_bias_padding",
                                  "decoder_causal_packed_bias", "cross_no_bias"])
def test_cudnn_arguments(case, monkeypatch):
  """No GPU here, so cuDNN itself cannot run (nor even trace: jax checks for cuDNN first). What
  t5lite decides is checked instead: the arguments it hands jax.nn.dot_product_attention
  (bf16 [1, H, Q, K] bias, sequence lengths for padding, a dense mask only for packing,
  is_causal), evaluated by the same API's XLA implementation, equal XLA attention."""
  real = jax.nn.dot_product_attention
  seen = []

  def redirect(q, k, v, bias=None, mask=None, *, implementation=None, **kw):
    if implementation == "cudnn":
      seen.append(dict(bias=None if bias is None else (bias.shape, bias.dtype),
                       mask=None if mask is None else mask.shape, **{
                           n: kw.get(n) is not None for n in ("query_seq_lengths",
                                                             "key_value_seq_lengths")},
                       causal=kw["is_causal"], scale=kw["scale"]))
      implementation = "xla"
    return real(q, k, v, bias, mask, implementation=implementation, **kw)
  monkeypatch.setattr(jax.nn, "dot_product_attention", redirect)
  monkeypatch.setattr(kernels, "platform", lambda: "gpu")
  q_len, k_len, with_bias, causal, packed = CASES[case]
  args, mask, w = _inputs(q_len, k_len, with_bias, causal, packed)
  args = tuple(None if x is None else x.astype(jnp.bfloat16) for x in args)
  mesh = _mesh((4, 2))
  ref_loss, ref_grads, ref_out = _run("xla", args, mask, w, mesh)
  loss, grads, out = _run("cudnn", args, mask, w, mesh)
  valid = np.asarray(mask.q_valid_BQ)
  np.testing.assert_allclose(np.asarray(out, np.float32)[valid],
                             np.asarray(ref_out, np.float32)[valid], atol=2e-2, rtol=2e-2)
  np.testing.assert_allclose(loss, ref_loss, rtol=2e-2, atol=0.5)
  for g, ref in zip(grads, ref_grads):
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(ref, np.float32),
                               atol=5e-2, rtol=5e-2)
  call = seen[0]
  assert call["bias"] == (((1, H, q_len, k_len), jnp.bfloat16) if with_bias else None)
  assert call["mask"] == ((B, 1, q_len, k_len) if packed else None)
  assert call["query_seq_lengths"] == call["key_value_seq_lengths"] == (not packed)
  assert call["causal"] == causal and call["scale"] == 1.0


TINY = tiny_config()
TB, LI, LT = 8, 24, 14


def _packed_batch(seed=0):
  """Padded and packed (two segments a row), like seqio's packed T5 batches."""
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, TINY.vocab_size, (TB, LI)).astype(np.int32)
  tgt = rng.integers(2, TINY.vocab_size, (TB, LT)).astype(np.int32)
  enc[:, -3:] = 0
  tgt[:, -2:] = 0
  seg_e = (np.where(np.arange(LI) < LI // 2, 1, 2)[None] * (enc > 0)).astype(np.int32)
  seg_d = (np.where(np.arange(LT) < LT // 2, 1, 2)[None] * (tgt > 0)).astype(np.int32)
  dec_in = np.concatenate([np.zeros((TB, 1), np.int32), tgt[:, :-1]], 1)
  dec_in[:, LT // 2] = 0
  return {"encoder_input_tokens": enc, "decoder_target_tokens": tgt, "decoder_input_tokens": dec_in,
          "decoder_loss_weights": (tgt > 0).astype(np.float32),
          "encoder_segment_ids": seg_e, "decoder_segment_ids": seg_d}


@pytest.mark.slow
def test_t5_train_step_pallas_tpu_equals_xla():
  """Loss and gradients of a tiny T5 on a padded, packed batch, mesh (4, 2): the same params
  through the model's XLA attention and through pallas_tpu."""
  mesh = _mesh((4, 2))
  with partitioning.activate(mesh):
    state, _, _ = train_state.create_train_state(TINY, optax.sgd(0.1), mesh, seed=0)
    batch = partitioning.host_to_global(_packed_batch(), mesh)
    out = {}
    for kernel in ("xla", "pallas_tpu"):
      model = EncoderDecoder(TINY.replace(attention_kernel=kernel))
      grad_fn = jax.jit(jax.value_and_grad(
          functools.partial(losses.batch_loss, model=model, z_loss=1e-4), has_aux=True))
      (loss, _), grads = grad_fn(state.params, batch)
      out[kernel] = float(loss), jax.device_get(grads)
  (loss, grads), (ref_loss, ref_grads) = out["pallas_tpu"], out["xla"]
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  for (path, g), ref in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(g, ref, rtol=1e-3, atol=1e-5, err_msg=jax.tree_util.keystr(path))
  for stack in ("encoder", "decoder"):  # the bias gradient really flows through the kernel
    assert np.abs(grads[stack]["relpos_bias"]["rel_embedding"]).max() > 1e-3


@pytest.mark.slow
def test_cached_decoding_with_pallas_tpu_keeps_xla():
  """Greedy decoding with pallas_tpu: the encoder runs the kernel, the cached one-query steps
  stay on XLA (the kernel's causal mask counts from query 0); the tokens equal the XLA model's."""
  tokens = np.random.default_rng(1).integers(3, TINY.vocab_size, (2, LI))
  tokens[1, -5:] = 0
  tokens = jnp.asarray(tokens, jnp.int32)
  params = jax.jit(EncoderDecoder(TINY).init)(jax.random.key(0), tokens, tokens[:, :LT])["params"]
  out = {k: decoding.greedy_decode(EncoderDecoder(TINY.replace(attention_kernel=k)), params,
                                   tokens, max_decode_length=6) for k in ("xla", "pallas_tpu")}
  assert len(np.unique(np.asarray(out["xla"]))) > 2  # not a degenerate constant output
  np.testing.assert_array_equal(out["pallas_tpu"], out["xla"])


def test_errors():
  allowed = r"expected one of \('xla', 'cudnn', 'pallas_tpu'\)"
  with pytest.raises(ValueError, match=r"Config.attention_kernel='flash'; " + allowed):
    Config(attention_kernel="flash")
  args, mask, _ = _inputs(*CASES["encoder_bidirectional_bias_padding"])
  with pytest.raises(ValueError, match="attention kernel 'splash'; expected one of"):
    kernels.dot_product_attention(*args, mask, "splash")
  bf16 = tuple(x.astype(jnp.bfloat16) for x in args)
  with pytest.raises(ValueError, match="'cudnn' needs a CUDA GPU; this run's devices are cpu"):
    kernels.dot_product_attention(*bf16, mask, "cudnn")
  # Through the model (traced only: the errors come at trace time): cudnn on CPU, and attention
  # dropout while training with a fused kernel; evaluation (deterministic) is fine.
  tokens = jnp.ones((2, 8), jnp.int32)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="'cudnn' needs a CUDA GPU; this run's devices are cpu"):
    jax.eval_shape(EncoderDecoder(TINY.replace(attention_kernel="cudnn", dtype="bfloat16")).init,
                   key, tokens, tokens)
  model = EncoderDecoder(TINY.replace(attention_kernel="pallas_tpu", dropout_rate=0.1))
  params = jax.eval_shape(model.init, key, tokens, tokens)
  with pytest.raises(NotImplementedError, match="'pallas_tpu' has no attention dropout"):
    jax.eval_shape(functools.partial(model.apply, deterministic=False), params, tokens, tokens,
                   rngs={"dropout": key})
  logits = jax.eval_shape(model.apply, params, tokens, tokens)
  assert logits.shape == (2, 8, TINY.vocab_size)


@pytest.mark.slow
def test_aot_compile_for_tpu_topology():
  """The pallas path compiles for a real TPU (v5e:2x2, 4 chips) through libtpu, in a subprocess
  (benchmarks/bench_attention.py): one T5 encoder layer (bidirectional, bias, padding) and one
  decoder layer (causal, packed, length 114 padded to the kernel's 128), forward and backward.
  Its per-chip temporaries are printed beside XLA attention's."""
  try:
    import libtpu  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    msg = "libtpu is not installed (pip install libtpu==0.0.42.1)"
    if os.environ.get("CI") == "true":
      pytest.fail(msg)
    pytest.skip(msg)
  # ALLOW_MULTIPLE_LIBTPU_LOAD: another test process may hold libtpu at the same time.
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TPU_SKIP_MDS_QUERY": "1",
         "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
  cmd = [sys.executable, os.path.join(REPO, "benchmarks", "bench_attention.py"), "--json",
         "--batch", "8", "--heads", "4", "--cases", "encoder:256:256,decoder:114:114"]
  done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
  got = {(r["case"], r["kernel"]): r for r in rows}
  assert set(got) == {(c, k) for c in ("encoder", "decoder") for k in ("xla", "pallas_tpu")}
  for (case, kernel), r in got.items():
    assert r["platform"] == "tpu" and r["devices"] == 4
    # Mosaic kernels: the forward, and the backward's dk/dv and dq; none for XLA.
    assert r["mosaic_kernels"] == (3 if kernel == "pallas_tpu" else 0)
    print(f"{case} {kernel}: temp {r['temp_bytes'] / 2**20:.2f} MiB per chip")
