"""The model's products: plain jnp/lax ops, or on XLA:CPU custom VJPs written for its fast kernels.

Which one runs is decided when tracing, by backend.cpu_kernels() (the one switch): for TPU and
GPU the plain ops run; on CPU the custom ones, which give the same values up to float rounding.
What each CPU variant buys is measured in benchmarks/RESULTS.md.

  matmul    [..., D] @ [D, F]; on CPU a weight gradient that avoids XLA:CPU's slow dot paths
  project   several [D, H, K] projections of one input; on CPU as one stacked product
  einsum    two-operand einsum with a float32 result; on CPU bf16 operands stay bf16 backward
  add_bias  a bias broadcast over the batch; on CPU its gradient is a dot with ones
  softmax   on CPU with a backward from its output alone
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from t5lite.runtime import backend

Array = jax.Array


def _low_precision(x: Array) -> bool:
  return x.dtype in (jnp.bfloat16, jnp.float16)


# ----------------------------------------------------------------------------- the public ops


def matmul(x_LD: Array, w_DF: Array, float32_result: bool = False) -> Array:
  """x [..., D] @ w [D, F] -> [..., F]. Low-precision operands accumulate in float32;
  float32_result keeps that float32 result (the LM head's logits)."""
  if not backend.cpu_kernels():
    out = jnp.float32 if float32_result or not _low_precision(x_LD) else None
    return jnp.einsum("...d,df->...f", x_LD, w_DF, preferred_element_type=out)
  lead = x_LD.shape[:-1]
  y_NF = _matmul_ND_DF(x_LD.reshape((-1, x_LD.shape[-1])), w_DF, float32_result)
  return y_NF.reshape(lead + (w_DF.shape[-1],))


def project(x_BLD: Array, weights_DHK: Sequence[Array], dt: jnp.dtype) -> tuple[Array, ...]:
  """x [B, L, D] times each [D, H, K] weight (cast to dt) -> one [B, L, H, K] per weight."""
  if not backend.cpu_kernels():
    return tuple(jnp.einsum("bld,dhk->blhk", x_BLD, w.astype(dt)) for w in weights_DHK)
  # One wide product instead of n narrow ones, weights stacked [D, H, n, K] with heads major so
  # a heads-sharded weight keeps a plain tiled sharding through the reshape.
  D, H, K = weights_DHK[0].shape
  n = len(weights_DHK)
  w = jnp.stack(weights_DHK, axis=2)
  y = matmul(x_BLD, w.astype(dt).reshape((D, H * n * K)))
  return _unstack_axis3(y.reshape(x_BLD.shape[:2] + (H, n, K)))


def einsum(spec: str, a: Array, b: Array) -> Array:
  """jnp.einsum of two operands with a float32 result.

  spec: "a_indices,b_indices->out_indices", each index of an operand also in the other operand
  or in the output (no index summed within one operand), which the CPU backward relies on.
  """
  _check_spec(spec)
  if backend.cpu_kernels() and _low_precision(a) and b.dtype == a.dtype:
    return _lowp_einsum(spec, a, b)
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def add_bias(x_BHQK: Array, bias_1HQK: Array) -> Array:
  """x + bias broadcast over the batch."""
  if not backend.cpu_kernels():
    return x_BHQK + bias_1HQK
  return _add_bias(x_BHQK, bias_1HQK)


def softmax(x: Array) -> Array:
  """jax.nn.softmax over the last axis."""
  if not backend.cpu_kernels():
    return jax.nn.softmax(x, axis=-1)
  return _softmax(x)


# ----------------------------------------------------------------------------- CPU: matmul


def _dot(x: Array, y: Array, dims=(((1,), (0,)), ((), ())), float32_result: bool = False) -> Array:
  """lax.dot_general; low-precision operands accumulate and return float32 from the kernel, then
  cast back (unless float32_result): XLA:CPU's bf16 -> f32 dot runs on AMX / AVX-512 BF16 kernels,
  its bf16 -> bf16 dot on a slow path."""
  if _low_precision(x):
    out = jax.lax.dot_general(x, y, dims, preferred_element_type=jnp.float32)
    return out if float32_result else out.astype(x.dtype)
  return jax.lax.dot_general(x, y, dims)


def _one_device() -> bool:
  """Tracing for a single device: the active mesh has one, or there is none and jax has one."""
  mesh = jax.sharding.get_abstract_mesh()
  return mesh.size == 1 if not mesh.empty else jax.device_count() == 1


def _row_major_transpose(x_ND: Array) -> Array:
  """x.T as a real row-major [D, N] array, for a bf16 weight gradient.

  XLA folds any transpose of x (even behind an optimization_barrier) into the dot's dimension
  numbers, and XLA:CPU's bf16 (AMX) kernel takes only a row-major [M, K] x [K, N] product.
  Flattened behind the barrier the transpose has one possible layout, so XLA writes the copy.
  One device only: flattening a [D, N] array sharded on both axes would reshard it.
  """
  n, d = x_ND.shape
  return jax.lax.optimization_barrier(x_ND.T.reshape(-1)).reshape(d, n)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul_ND_DF(x_ND: Array, w_DF: Array, float32_result: bool) -> Array:
  return _dot(x_ND, w_DF, float32_result=float32_result)


def _matmul_fwd(x_ND, w_DF, float32_result):
  return _dot(x_ND, w_DF, float32_result=float32_result), (x_ND, w_DF)


def _matmul_bwd(float32_result, res, dy_NF):
  del float32_result
  x_ND, w_DF = res
  dy_NF = dy_NF.astype(x_ND.dtype)  # a float32 result's cotangent, back to the operands' dtype
  dx_ND = _dot(dy_NF, w_DF, (((1,), (1,)), ((), ())))
  # The weight gradient x^T dy contracts dim 0 of both operands. bf16 on one device: a row-major
  # copy of x^T so the product runs on AMX. float32 LM head (dy much wider than x): a small
  # [D, N] copy of x^T behind a barrier keeps XLA from transposing dy into its slow fallback.
  # Otherwise the direct contraction is fastest.
  if _low_precision(x_ND) and _one_device():
    dw_DF = _dot(_row_major_transpose(x_ND), dy_NF)
  elif dy_NF.shape[1] >= 8 * x_ND.shape[1]:
    dw_DF = _dot(jax.lax.optimization_barrier(x_ND.T), dy_NF)
  else:
    dw_DF = _dot(x_ND, dy_NF, (((0,), (0,)), ((), ())))
  return dx_ND, dw_DF


_matmul_ND_DF.defvjp(_matmul_fwd, _matmul_bwd)


@jax.custom_vjp
def _unstack_axis3(y_BLHnK: Array) -> tuple:
  """The n [B, L, H, K] slices of axis 3, whose backward stacks the n cotangents (autodiff pads
  each slice's cotangent to the full shape and adds them: a slow loop on XLA:CPU)."""
  return tuple(y_BLHnK[:, :, :, i] for i in range(y_BLHnK.shape[3]))


def _unstack_axis3_fwd(y_BLHnK):
  return _unstack_axis3(y_BLHnK), None


def _unstack_axis3_bwd(_, gs):
  return (jnp.stack(gs, axis=3),)


_unstack_axis3.defvjp(_unstack_axis3_fwd, _unstack_axis3_bwd)


# ----------------------------------------------------------------------------- CPU: einsum


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
  g = g.astype(a.dtype)  # as torch.autocast: the cotangent in the operands' dtype
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


# ----------------------------------------------------------------------------- CPU: bias, softmax


@jax.custom_vjp
def _add_bias(x_BHQK: Array, bias_1HQK: Array) -> Array:
  """x + bias, whose bias gradient sums the batch as a product with ones: autodiff's reduce gets
  fused by XLA:CPU with the softmax backward into one slow reduction. On a batch-sharded mesh the
  dot is still a contraction over the sharded axis (a psum)."""
  return x_BHQK + bias_1HQK


def _add_bias_fwd(x_BHQK, bias_1HQK):
  return x_BHQK + bias_1HQK, None


def _add_bias_bwd(_, d_BHQK):
  ones_B = jnp.ones(d_BHQK.shape[:1], d_BHQK.dtype)
  return d_BHQK, jnp.einsum("b,bhqk->hqk", ones_B, d_BHQK)[None]


_add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


@jax.custom_vjp
def _softmax(x: Array) -> Array:
  """softmax whose backward is y * (g - sum(g * y)) from y alone: autodiff of exp(x - max) / sum
  keeps two [B, H, Q, K] residuals on XLA:CPU instead of one."""
  return jax.nn.softmax(x, axis=-1)


def _softmax_fwd(x):
  y = jax.nn.softmax(x, axis=-1)
  return y, y


def _softmax_bwd(y, g):
  return (y * (g - jnp.sum(g * y, axis=-1, keepdims=True)),)


_softmax.defvjp(_softmax_fwd, _softmax_bwd)
