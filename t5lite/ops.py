"""Products with custom VJPs, written for XLA:CPU's fast kernels; same values as the plain jnp ops
up to float rounding, on every backend.

matmul (2-D products whose weight gradient avoids XLA:CPU's slow fallback), project (several
[D, H, K] projections of one input as one product), einsum (float32 results; bf16 operands stay
bf16 in the backward), add_bias (a batch-broadcast bias whose gradient is a dot with ones),
softmax (backward from its output alone). Each docstring gives
the measurement that motivated it; benchmarks/RESULTS_train.md has the runs.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def _low_precision(x: Array) -> bool:
  return x.dtype in (jnp.bfloat16, jnp.float16)


def _dot(x: Array, y: Array, dims=(((1,), (0,)), ((), ())), float32_result: bool = False) -> Array:
  """lax.dot_general; for bfloat16/float16 operands it accumulates and returns float32 from the
  kernel, then casts back (unless float32_result). XLA:CPU runs bf16 x bf16 -> bf16 on a slow
  path (229 GFLOP/s here) but bf16 x bf16 -> f32 on AMX/AVX-512 BF16 kernels (1,630 GFLOP/s);
  TPUs and GPUs accumulate in float32 anyway."""
  if _low_precision(x):
    out = jax.lax.dot_general(x, y, dims, preferred_element_type=jnp.float32)
    return out if float32_result else out.astype(x.dtype)
  return jax.lax.dot_general(x, y, dims)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul_ND_DF(x_ND: Array, w_DF: Array, float32_result: bool) -> Array:
  return _dot(x_ND, w_DF, float32_result=float32_result)


def _matmul_fwd(x_ND, w_DF, float32_result):
  return _dot(x_ND, w_DF, float32_result=float32_result), (x_ND, w_DF)


def _one_cpu_device() -> bool:
  """Tracing for one CPU device: the mesh set by partitioning.activate has one device, or
  there is no mesh and this process has one device."""
  if jax.default_backend() != "cpu":
    return False
  mesh = jax.sharding.get_abstract_mesh()
  return mesh.size == 1 if not mesh.empty else jax.device_count() == 1


def _row_major_transpose(x_ND: Array) -> Array:
  """x.T as a real row-major [D, N] array, for a bf16 weight gradient on XLA:CPU.

  x^T dy contracts dim 0 of both operands. XLA folds any transpose of x (also one behind an
  optimization_barrier, whose layout stays the transpose's) into the dot's dimension numbers,
  and YNNPACK's bf16 (AMX) kernel takes only a row-major [M, K] x [K, N] product, so the dot runs
  in float32 at ~200 GFLOP/s. Flattened behind the barrier, the transposed array has one
  possible layout: XLA writes the copy, and the product runs on AMX (770 against 196 GFLOP/s
  for T5 1.1 small's [4096, 512]^T [4096, 1024]; benchmarks/RESULTS_train.md). One device only:
  flattening a [D, N] array sharded on both axes would reshard it.
  """
  n, d = x_ND.shape
  return jax.lax.optimization_barrier(x_ND.T.reshape(-1)).reshape(d, n)


def _matmul_bwd(float32_result, res, dy_NF):
  del float32_result
  x_ND, w_DF = res
  dy_NF = dy_NF.astype(x_ND.dtype)  # a float32 result's cotangent, back to the operands' dtype
  dx_ND = _dot(dy_NF, w_DF, (((1,), (1,)), ((), ())))
  # The weight gradient x^T dy contracts dim 0 of both operands. bf16 on one CPU device: a
  # row-major copy of x^T, so the product runs on AMX (_row_major_transpose). float32: for the
  # LM head (dy is [B*T, vocab], much bigger than x) XLA:CPU would transpose dy and run its slow
  # fallback (Eigen) kernel; the barrier keeps x.T a small [D, N] copy so that the dot is a plain
  # row-major product, ~2x faster. For the other matmuls (dy no bigger than a few x) the direct
  # contraction is faster than the copy: T5 1.1 small's step 4.29 -> 4.08 s
  # (benchmarks/RESULTS_train.md).
  if _low_precision(x_ND) and _one_cpu_device():
    dw_DF = _dot(_row_major_transpose(x_ND), dy_NF)
  elif dy_NF.shape[1] >= 8 * x_ND.shape[1]:
    dw_DF = _dot(jax.lax.optimization_barrier(x_ND.T), dy_NF)
  else:
    dw_DF = _dot(x_ND, dy_NF, (((0,), (0,)), ((), ())))
  return dx_ND, dw_DF


_matmul_ND_DF.defvjp(_matmul_fwd, _matmul_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _lowp_einsum(spec: str, a: Array, b: Array) -> Array:
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _lowp_einsum_fwd(spec, a, b):
  return _lowp_einsum(spec, a, b), (a, b)


def _lowp_product(x: tuple[str, Array], y: tuple[str, Array], out: str) -> Array:
  """einsum of two (spec, operand) pairs, low-precision operands with a float32 result. The
  operand whose first two indices are batch indices (in the other operand and the output) goes
  first: XLA:CPU lowers the other order of e.g. "bqhk,bhqt->bthk" to a DotThunk that has no
  bf16 x bf16 -> f32 kernel."""
  def batch_leading(a, b):
    return all(i in b[0] and i in out for i in a[0][:2])
  if batch_leading(y, x) and not batch_leading(x, y):
    x, y = y, x
  return jnp.einsum(f"{x[0]},{y[0]}->{out}", x[1], y[1], preferred_element_type=jnp.float32)


def _lowp_einsum_bwd(spec, res, g):
  a, b = res
  ins, out = spec.split("->")
  sa, sb = ins.split(",")
  g = g.astype(a.dtype)
  da = _lowp_product((out, g), (sb, b), sa)
  db = _lowp_product((out, g), (sa, a), sb)
  return da.astype(a.dtype), db.astype(b.dtype)


_lowp_einsum.defvjp(_lowp_einsum_fwd, _lowp_einsum_bwd)


def _check_spec(spec: str) -> None:
  ins, arrow, out = spec.replace(" ", "").partition("->")
  operands = ins.split(",")
  if not arrow or len(operands) != 2:
    raise ValueError(f"ops.einsum: spec {spec!r} must be explicit with two operands, "
                     f"'a,b->out' (e.g. 'bqhk,bthk->bhqt')")
  for this, other in ((operands[0], operands[1]), (operands[1], operands[0])):
    alone = sorted(set(this) - set(other) - set(out))
    if alone:
      raise ValueError(f"ops.einsum: spec {spec!r}: index {', '.join(alone)} of {this!r} is in "
                       f"neither the other operand nor the output; expected every index of an "
                       f"operand to appear in the other operand or the output")


def einsum(spec: str, a: Array, b: Array) -> Array:
  """jnp.einsum of two operands with a float32 result. For bfloat16/float16 operands every
  product, backward included, runs as low-precision operands with float32 accumulation (the
  cotangent is cast to the operands' dtype, as torch.autocast does): XLA:CPU's fast AMX/AVX-512
  BF16 path, where autodiff would otherwise run the backward in float32 (see _dot).

  spec: "a_indices,b_indices->out_indices", each index of an operand also in the other operand
  or in the output (no index summed within one operand), which the backward relies on.
  """
  _check_spec(spec)
  if _low_precision(a) and b.dtype == a.dtype:
    return _lowp_einsum(spec, a, b)
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def matmul(x_LD: Array, w_DF: Array, float32_result: bool = False) -> Array:
  """x [..., D] @ w [D, F] -> [..., F] as one 2-D product (leading dims flattened), with a
  backward whose weight gradient runs on XLA:CPU's fast matmul (see _matmul_bwd). Same values
  as jnp.einsum("...d,df->...f") up to float summation order. Low-precision operands accumulate
  in float32 (_dot); float32_result keeps that float32 result (the LM head's logits)."""
  lead = x_LD.shape[:-1]
  y_NF = _matmul_ND_DF(x_LD.reshape((-1, x_LD.shape[-1])), w_DF, float32_result)
  return y_NF.reshape(lead + (w_DF.shape[-1],))


def project(x_BLD: Array, weights_DHK: Sequence[Array], dt: jnp.dtype) -> tuple[Array, ...]:
  """x [B, L, D] times each [D, H, K] weight -> one [B, L, H, K] per weight, as ONE product with
  the weights stacked to [D, H, n, K] (dtype dt). Heads stay the major axis, so a heads-sharded
  weight keeps a plain tiled sharding through the reshape to [D, H*n*K].

  One wide GEMM instead of n narrow ones, forward and backward: T5 1.1 small's q/k/v (three
  N = 384 products) 48 -> 43 ms forward + backward alone; train step -1% in fp32 (A/B, 10 steps)
  and in bf16 (6 steps; benchmarks/RESULTS_train.md); on a (1, 8) mesh the step has 56
  collective-permutes, not 96.
  """
  D, H, K = weights_DHK[0].shape
  n = len(weights_DHK)
  w = jnp.stack(weights_DHK, axis=2)
  y = matmul(x_BLD, w.astype(dt).reshape((D, H * n * K)))
  return _unstack_axis3(y.reshape(x_BLD.shape[:2] + (H, n, K)))


@jax.custom_vjp
def _unstack_axis3(y_BLHnK: Array) -> tuple:
  """The n [B, L, H, K] slices of axis 3, whose backward stacks the n cotangents (autodiff pads
  each slice's cotangent to the full shape and adds them: in bf16 a 29 ms loop per layer on T5
  1.1 small's encoder, against a copy)."""
  return tuple(y_BLHnK[:, :, :, i] for i in range(y_BLHnK.shape[3]))


def _unstack_axis3_fwd(y_BLHnK):
  return _unstack_axis3(y_BLHnK), None


def _unstack_axis3_bwd(_, gs):
  return (jnp.stack(gs, axis=3),)


_unstack_axis3.defvjp(_unstack_axis3_fwd, _unstack_axis3_bwd)


@jax.custom_vjp
def add_bias(x_BHQK: Array, bias_1HQK: Array) -> Array:
  """x + bias broadcast over the batch, whose bias gradient sums the batch as a product with ones.

  Autodiff's [B, H, Q, K] -> [1, H, Q, K] reduce gets fused by XLA:CPU with the softmax backward
  into one slow reduction (13% of the test model's step); the dot runs as a plain GEMV and, on a
  batch-sharded mesh, is still a contraction over the sharded axis (a psum).
  """
  return x_BHQK + bias_1HQK


def _add_bias_fwd(x_BHQK, bias_1HQK):
  return x_BHQK + bias_1HQK, None


def _add_bias_bwd(_, d_BHQK):
  ones_B = jnp.ones(d_BHQK.shape[:1], d_BHQK.dtype)
  return d_BHQK, jnp.einsum("b,bhqk->hqk", ones_B, d_BHQK)[None]


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


@jax.custom_vjp
def softmax(x: Array) -> Array:
  """jax.nn.softmax over the last axis, whose backward is y * (g - sum(g * y)) from y alone.

  Autodiff of jax.nn.softmax differentiates exp(x - max) / sum: XLA:CPU then materialises a
  broadcast [B, H, Q, K] of 1/sum in the forward and keeps exp and that broadcast as residuals
  (two [B, H, Q, K] tensors instead of one); same values up to float rounding.
  """
  return jax.nn.softmax(x, axis=-1)


def _softmax_fwd(x):
  y = jax.nn.softmax(x, axis=-1)
  return y, y


def _softmax_bwd(y, g):
  return (y * (g - jnp.sum(g * y, axis=-1, keepdims=True)),)


softmax.defvjp(_softmax_fwd, _softmax_bwd)
