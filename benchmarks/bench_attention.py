"""Per-chip memory of attention forward+backward compiled for a real TPU topology: XLA vs pallas_tpu.

  JAX_PLATFORMS=cpu TPU_SKIP_MDS_QUERY=1 python benchmarks/bench_attention.py \
      [--topology v5e:2x2] [--mesh 4,1] [--batch 32] [--heads 12] [--head_dim 64] \
      [--cases isolated:512:512,encoder:512:512,decoder:114:114,cross:114:512] [--json]

Needs libtpu (pip install libtpu==0.0.42.1); no TPU: XLA:TPU compiles ahead of time on this host
(ENVIRONMENT.md) and `compiled.memory_analysis()` gives each chip's argument / temporary / output
bytes. Every input is a ShapeDtypeStruct (no array may exist while the topology mesh is active).
Each case compiles loss = sum(attention output) and its gradient, bf16 activations, padded
batches (the valid lengths are inputs, so nothing is specialised to them):
- isolated: the attention alone (t5lite.kernels.dot_product_attention: jax's XLA attention
  vs the Pallas kernel), self-attention with a [1, H, L, L] bias, gradients wrt q, k, v, bias;
  isolated_nobias: the same without a bias.
- encoder / decoder / cross: one attention.Attention (projections included; 'xla' is t5lite's own
  path) as T5 1.1 uses it: bidirectional with the relative bias; causal, packed, with the bias;
  cross without a bias. Gradients wrt the parameters, the inputs and the bias.
- model: the whole T5 1.1 base train step (train_step_lib.train_step, Adafactor, a packed batch;
  Q:K are the inputs:targets lengths, --heads/--head_dim are ignored). Slow to compile.
"""
from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before jax: the TPU backend has no devices here
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

import argparse  # pylint: disable=wrong-import-position
import datetime  # pylint: disable=wrong-import-position
import functools  # pylint: disable=wrong-import-position
import json  # pylint: disable=wrong-import-position
import time  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
from jax.experimental import topologies  # pylint: disable=wrong-import-position
from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=wrong-import-position

from t5lite.model import attention, kernels, masks  # pylint: disable=C0413
from t5lite.training import optim  # pylint: disable=C0413
from t5lite.training import state as train_state
from t5lite.training import step as train_step_lib
from t5lite.runtime import partitioning  # pylint: disable=C0413
from t5lite.model.config import Config  # pylint: disable=wrong-import-position
from t5lite.model.network import EncoderDecoder  # pylint: disable=wrong-import-position

KERNELS = ("xla", "pallas_tpu")
KINDS = ("isolated", "isolated_nobias", "encoder", "decoder", "cross", "model")
# T5 1.1 base (gin_configs/models/t5_1_1/base.gin), for the `model` case.
T5_1_1_BASE = dict(vocab_size=32128, emb_dim=768, num_heads=12, head_dim=64, mlp_dim=2048,
                   num_encoder_layers=12, num_decoder_layers=12)


def _sds(shape, dtype, mesh, spec=P()):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))


def _masks(kind: str, kernel: str, q_valid, kv_valid, q_seg, kv_seg):
  causal = kind == "decoder"
  if kind != "decoder":  # packing only in the decoder case
    q_seg = kv_seg = None
  return masks.make_mask(kernel, q_valid, kv_valid, q_seg, kv_seg, causal)


def isolated(kernel: str, mesh, B: int, H: int, D: int, Q: int, K: int, dtype, with_bias: bool):
  """f(inputs) -> loss and gradients wrt q, k, v (and the bias); and the abstract inputs."""
  def loss(q, k, v, bias, q_valid, kv_valid):
    mask = masks.SegmentMask(q_valid, kv_valid)
    return jnp.sum(kernels.dot_product_attention(q, k, v, bias, mask, kernel).astype(jnp.float32))
  qkv = P("data", None, "model", None)
  args = (_sds((B, Q, H, D), dtype, mesh, qkv), _sds((B, K, H, D), dtype, mesh, qkv),
          _sds((B, K, H, D), dtype, mesh, qkv),
          _sds((1, H, Q, K), dtype, mesh, P(None, "model")) if with_bias else None,
          _sds((B, Q), jnp.bool_, mesh, P("data")), _sds((B, K), jnp.bool_, mesh, P("data")))
  return jax.value_and_grad(loss, argnums=(0, 1, 2, 3) if with_bias else (0, 1, 2)), args


def layer(kind: str, kernel: str, mesh, B: int, H: int, D: int, Q: int, K: int, dtype):
  """One attention.Attention as T5 1.1 base uses it; loss and gradients wrt params, inputs, bias."""
  cfg = Config(num_heads=H, head_dim=D, emb_dim=H * D, dtype=jnp.dtype(dtype).name,
               attention_kernel=kernel)
  module = attention.Attention(cfg, cross=kind == "cross")
  E = cfg.emb_dim
  with_bias = kind != "cross"
  key = jax.eval_shape(jax.random.key, 0)
  x, kv = jax.ShapeDtypeStruct((B, Q, E), dtype), jax.ShapeDtypeStruct((B, K, E), dtype)
  boxed = jax.eval_shape(module.init, key, x, x if kind != "cross" else kv, None)["params"]
  param_shardings = partitioning.logical_shardings(boxed, mesh)
  params = jax.tree.map(lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s),
                        partitioning.raw_values(boxed), param_shardings)

  def loss(params, x, kv, bias, q_valid, kv_valid, q_seg, kv_seg):
    mask = _masks(kind, kernel, q_valid, kv_valid, q_seg, kv_seg)
    y = module.apply({"params": params}, x, x if kind != "cross" else kv, mask,
                     bias if with_bias else None)
    return jnp.sum(y.astype(jnp.float32))
  rows = P("data")
  args = (params, _sds((B, Q, E), dtype, mesh, rows), _sds((B, K, E), dtype, mesh, rows),
          _sds((1, H, Q, K), dtype, mesh), _sds((B, Q), jnp.bool_, mesh, rows),
          _sds((B, K), jnp.bool_, mesh, rows), _sds((B, Q), jnp.int32, mesh, rows),
          _sds((B, K), jnp.int32, mesh, rows))
  return jax.value_and_grad(loss, argnums=(0, 1, 2, 3)), args


def train_step(kernel: str, mesh, B: int, I: int, T: int):
  """The whole T5 1.1 base train step (Adafactor, packed batch) as train.py jits it."""
  cfg = Config(**T5_1_1_BASE, attention_kernel=kernel)
  model = EncoderDecoder(cfg)
  tx = optim.make_optimizer("adafactor", schedule=optim.learning_rate_schedule("constant"))
  key = jax.eval_shape(jax.random.key, 0)
  boxed = jax.eval_shape(lambda k: model.init(k, jnp.ones((B, I), jnp.int32),
                                              jnp.ones((B, T), jnp.int32))["params"], key)
  param_shardings = partitioning.logical_shardings(boxed, mesh)
  params = partitioning.raw_values(boxed)
  opt = jax.eval_shape(tx.init, params)
  shardings = train_state.TrainState(
      step=partitioning.replicated(mesh), params=param_shardings,
      opt_state=partitioning.match_shardings(opt, params, param_shardings, mesh))
  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       train_state.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                                        opt_state=opt), shardings)
  rows = P("data")
  batch = {name: _sds((B, L), jnp.int32, mesh, rows) for name, L in (
      ("encoder_input_tokens", I), ("encoder_segment_ids", I), ("decoder_input_tokens", T),
      ("decoder_target_tokens", T), ("decoder_segment_ids", T))}
  batch["decoder_loss_weights"] = _sds((B, T), jnp.float32, mesh, rows)
  step = functools.partial(train_step_lib.train_step, model=model, tx=tx,
                           schedule=optim.learning_rate_schedule("constant"), z_loss=1e-4)
  return step, (state, batch)


def measure(kind: str, kernel: str, mesh, B: int, H: int, D: int, Q: int, K: int, dtype) -> dict:
  with partitioning.activate(mesh):
    if kind.startswith("isolated"):
      fn, args = isolated(kernel, mesh, B, H, D, Q, K, dtype, with_bias=kind == "isolated")
    elif kind == "model":
      fn, args = train_step(kernel, mesh, B, Q, K)
    else:
      fn, args = layer(kind, kernel, mesh, B, H, D, Q, K, dtype)
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  if kind == "model":
    H, D = T5_1_1_BASE["num_heads"], T5_1_1_BASE["head_dim"]
  return dict(kind=kind, kernel=kernel, batch=B, heads=H, head_dim=D, q_len=Q, kv_len=K,
              platform=mesh.devices.flat[0].platform, devices=mesh.devices.size,
              mesh=dict(mesh.shape), temp_bytes=int(mem.temp_size_in_bytes),
              argument_bytes=int(mem.argument_size_in_bytes),
              output_bytes=int(mem.output_size_in_bytes),
              mosaic_kernels=compiled.as_text().count("tpu_custom_call"),
              compile_s=round(compile_s, 1))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--topology", default="v5e:2x2")
  parser.add_argument("--mesh", default="-1,1", help="data,model (one -1 takes the rest)")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--heads", type=int, default=12)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--cases", default="isolated:512:512,isolated_nobias:512:512,encoder:512:512,"
                      "decoder:114:114,cross:114:512",
                      help="kind:q_len:kv_len,... with kind in " + ", ".join(KINDS))
  parser.add_argument("--json", action="store_true", help="one JSON object a line")
  args = parser.parse_args(argv)
  cases = []
  for item in args.cases.split(","):
    kind, q, k = item.split(":")
    if kind not in KINDS:
      raise ValueError(f"--cases: {kind!r}; expected one of {KINDS}")
    cases.append((kind, int(q), int(k)))
  devices = topologies.get_topology_desc(platform="tpu", topology_name=args.topology).devices
  mesh = partitioning.make_mesh(tuple(int(x) for x in args.mesh.split(",")), devices=devices)
  if not args.json:
    print(f"# {args.topology} ({devices[0].device_kind}), mesh {dict(mesh.shape)}, batch "
          f"{args.batch}, heads {args.heads}, head_dim {args.head_dim}, {args.dtype}; "
          f"jax {jax.__version__}; {datetime.date.today()}")
    print("| case | Q x K | kernel | temp MiB/chip | args MiB/chip | out MiB/chip | Mosaic calls "
          "| compile s |")
    print("|---|---|---|---|---|---|---|---|")
  for kind, q, k in cases:
    for kernel in KERNELS:
      row = measure(kind, kernel, mesh, args.batch, args.heads, args.head_dim, q, k,
                    jnp.dtype(args.dtype))
      if args.json:
        print(json.dumps({"case": kind, **row}), flush=True)
      else:
        mib = lambda n: f"{n / 2**20:.2f}"
        print(f"| {kind} | {q} x {k} | {kernel} | {mib(row['temp_bytes'])} | "
              f"{mib(row['argument_bytes'])} | {mib(row['output_bytes'])} | "
              f"{row['mosaic_kernels']} | {row['compile_s']} |", flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
