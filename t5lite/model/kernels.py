"""The fused attention kernels behind `Config.attention_kernel`.

'xla' (the default) is attention.Attention's own einsum/softmax path with a dense [B, 1, Q, K] mask.
The fused kernels take what the dense mask is made of instead (a SegmentMask: validity, packing
segment ids, causality), so that no [B, H, Q, K] array of logits is kept for the backward:
- 'cudnn': jax.nn.dot_product_attention(implementation="cudnn") on a CUDA GPU.
- 'pallas_tpu': the Pallas TPU flash attention kernel, in a shard_map over the mesh (batch over
  'data', heads over 'model', as partitioning.RULES say); on CPU it runs in Pallas interpret mode
  (the kernel body as XLA ops over its grid), which is how the tests check it.
Neither applies attention dropout (attention.Attention raises if asked to), and cached decoding
(one query per step) always takes the XLA path.

Shapes: B batch, Q query length, K key length, H heads, D head dim (kv).
"""
from __future__ import annotations

import contextlib
import functools
import logging
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from t5lite.model.masks import PAD_KV_SEGMENT, PAD_Q_SEGMENT, SegmentMask
from t5lite.runtime import partitioning
from t5lite.model.config import ATTENTION_KERNELS

Array = jax.Array

# Pallas flash attention tiles lengths in blocks of 128 (its lane width); other lengths
# (T5's 114 targets) are padded up to a multiple inside pallas_tpu_attention and sliced back.
PALLAS_BLOCK = 128
def dot_product_attention(q_BQHD: Array, k_BKHD: Array, v_BKHD: Array,
                          bias_1HQK: Optional[Array], mask: SegmentMask, kernel: str) -> Array:
  """softmax(q k^T + bias, masked) v with a fused kernel; [B, Q, H, D] in q's dtype.

  No 1/sqrt(D) scale: T5 folds it into the query's initialisation, BART scales q itself.
  kernel: 'cudnn' or 'pallas_tpu' (a clear error for others, and for a kernel the run's
  devices cannot run). 'xla' here is jax.nn.dot_product_attention's XLA implementation, the
  reference the kernels are tested against (the model's XLA path stays in attention.Attention).
  """
  if kernel == "pallas_tpu":
    return pallas_tpu_attention(q_BQHD, k_BKHD, v_BKHD, bias_1HQK, mask)
  if kernel == "cudnn":
    return cudnn_attention(q_BQHD, k_BKHD, v_BKHD, bias_1HQK, mask)
  if kernel == "xla":
    bias = None if bias_1HQK is None else bias_1HQK.astype(q_BQHD.dtype)
    return jax.nn.dot_product_attention(q_BQHD, k_BKHD, v_BKHD, bias, mask.dense(), scale=1.0,
                                        implementation="xla")
  raise ValueError(f"attention kernel {kernel!r}; expected one of {ATTENTION_KERNELS}")


def platform() -> str:
  """The platform this trace compiles for: the active mesh's devices (a TPU topology's when
  compiling ahead of time on a CPU host), else the default backend's."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and mesh.abstract_device is not None:
    return mesh.abstract_device.platform
  return jax.default_backend()


def _mesh_axis(mesh, logical: str, size: int):
  """The mesh axis (or axes: batch over 'data' and 'expert') partitioning.RULES map a logical
  axis to on this mesh, when it splits `size` evenly."""
  if mesh.empty:
    return None
  axis = dict(partitioning.rules(False, mesh.axis_names)).get(logical)
  axes = (axis,) if isinstance(axis, str) else axis or ()
  if not axes or size % int(np.prod([mesh.shape[a] for a in axes])):
    return None
  return axis


# ----------------------------------------------------------------------------- cuDNN

def cudnn_attention(q_BQHD: Array, k_BKHD: Array, v_BKHD: Array, bias_1HQK: Optional[Array],
                    mask: SegmentMask) -> Array:
  """jax.nn.dot_product_attention(implementation="cudnn"), layout BTNH.

  The bias stays [1, H, Q, K] in q's dtype (cuDNN computes its gradient for a batch-1 bias).
  Padding without packing is cuDNN's padding mask from sequence lengths, which assumes the
  valid positions come first (seqio pads at the end); packed segments need a dense mask, which
  jax adds into the bias, making it [B, H, Q, K]. Causality is cuDNN's causal mask.
  """
  where = platform()
  if where != "gpu":
    raise ValueError(
        f"Config.attention_kernel='cudnn' needs a CUDA GPU; this run's devices are {where}")
  if q_BQHD.dtype not in (jnp.bfloat16, jnp.float16):
    raise ValueError(f"Config.attention_kernel='cudnn' needs bfloat16 or float16 activations "
                     f"(Config.dtype); got {q_BQHD.dtype}")
  bias = None if bias_1HQK is None else bias_1HQK.astype(q_BQHD.dtype)
  mesh = jax.sharding.get_abstract_mesh()
  if bias is not None and not mesh.empty:  # heads split like q's (cuDNN's partitioner wants that)
    bias = jax.lax.with_sharding_constraint(
        bias, P(None, _mesh_axis(mesh, "heads", bias.shape[1]), None, None))
  attend = functools.partial(jax.nn.dot_product_attention, scale=1.0, is_causal=mask.causal,
                             implementation="cudnn")
  if mask.q_segment_ids_BQ is None and mask.kv_segment_ids_BK is None:
    q_len_B = jnp.sum(mask.q_valid_BQ, axis=1, dtype=jnp.int32)
    kv_len_B = jnp.sum(mask.kv_valid_BK, axis=1, dtype=jnp.int32)
    return attend(q_BQHD, k_BKHD, v_BKHD, bias, query_seq_lengths=q_len_B,
                  key_value_seq_lengths=kv_len_B)
  segments_B1QK = mask.replace(causal=False).dense()  # causality stays cuDNN's own mask
  return attend(q_BQHD, k_BKHD, v_BKHD, bias, segments_B1QK)


# ----------------------------------------------------------------------------- Pallas TPU

def pallas_tpu_attention(q_BQHD: Array, k_BKHD: Array, v_BKHD: Array,
                         bias_1HQK: Optional[Array], mask: SegmentMask) -> Array:
  """Pallas TPU flash attention in a shard_map over the active mesh.

  Mosaic kernels cannot be partitioned automatically, so each device runs the kernel on its
  own batch rows and heads.
  """
  where = platform()
  if where not in ("tpu", "cpu"):
    raise ValueError("Config.attention_kernel='pallas_tpu' needs a TPU (or CPU, in Pallas "
                     f"interpret mode); this run's devices are {where}")
  interpret = where == "cpu"
  if interpret:
    _warn_interpret_once()
  q_seg_BQ, kv_seg_BK = mask.kernel_segment_ids()
  local = functools.partial(_flash_local, causal=mask.causal, interpret=interpret)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return local(q_BQHD, k_BKHD, v_BKHD, bias_1HQK, q_seg_BQ, kv_seg_BK)
  B, _, H, _ = q_BQHD.shape
  batch, heads = _mesh_axis(mesh, "batch", B), _mesh_axis(mesh, "heads", H)
  qkv_spec = P(batch, None, heads, None)
  bias_spec = None if bias_1HQK is None else P(None, heads, None, None)
  seg_spec = P(batch, None)
  # check_vma=False: pallas_call's outputs carry no varying-mesh-axes annotation. The bias's
  # cotangent is still summed over the axes the bias is replicated on ('data').
  sharded = jax.shard_map(local, mesh=mesh, out_specs=qkv_spec, check_vma=False,
                          in_specs=(qkv_spec, qkv_spec, qkv_spec, bias_spec, seg_spec, seg_spec))
  return sharded(q_BQHD, k_BKHD, v_BKHD, bias_1HQK, q_seg_BQ, kv_seg_BK)


def _round_up(n: int) -> int:
  return -(-n // PALLAS_BLOCK) * PALLAS_BLOCK


def _pad_axis(x: Array, axis: int, length: int, value=0) -> Array:
  if x.shape[axis] == length:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)


def _flash_local(q_BQHD, k_BKHD, v_BKHD, bias_1HQK, q_seg_BQ, kv_seg_BK, *, causal: bool,
                 interpret: bool) -> Array:
  """One device's flash attention, one example per kernel call.

  To the kernel's [B, H, L, D] layout, lengths padded to whole blocks (padded rows and columns
  get the pad segment ids), and back. One example a call (lax.map over the batch): the kernel
  wants a bias of the batch's size, which for one example is the shared [1, H, Q, K] bias
  itself, so neither the bias nor its gradient is ever materialised per example; the kernel's
  softmax statistics (kept lane-broadcast, [B, H, Q, 128] float32 each) shrink the same way.
  """
  Q, K = q_BQHD.shape[1], k_BKHD.shape[1]
  Qp, Kp = _round_up(Q), _round_up(K)
  q_BHQD = _pad_axis(q_BQHD.transpose(0, 2, 1, 3), 2, Qp)
  k_BHKD = _pad_axis(k_BKHD.transpose(0, 2, 1, 3), 2, Kp)
  v_BHKD = _pad_axis(v_BKHD.transpose(0, 2, 1, 3), 2, Kp)
  if bias_1HQK is not None:
    bias_1HQK = _pad_axis(_pad_axis(bias_1HQK, 2, Qp), 3, Kp)
  q_seg_BQ = _pad_axis(q_seg_BQ, 1, Qp, PAD_Q_SEGMENT)
  kv_seg_BK = _pad_axis(kv_seg_BK, 1, Kp, PAD_KV_SEGMENT)
  flash = _flash_interpreted if interpret else _flash

  def one_example(xs):
    q_HQD, k_HKD, v_HKD, q_seg_Q, kv_seg_K = xs
    return flash(q_HQD[None], k_HKD[None], v_HKD[None], bias_1HQK, q_seg_Q[None],
                 kv_seg_K[None], causal)[0]
  out_BHQD = jax.lax.map(one_example, (q_BHQD, k_BHKD, v_BHKD, q_seg_BQ, kv_seg_BK))
  return out_BHQD[:, :, :Q].transpose(0, 2, 1, 3)


def _flash(q_BHQD, k_BHKD, v_BHKD, ab_BHQK, q_seg_BQ, kv_seg_BK, causal):
  # Pallas is imported when used: it adds ~0.1 s to importing t5lite.
  from jax.experimental.pallas.ops.tpu import flash_attention as fa  # pylint: disable=C0415
  return fa.flash_attention(q_BHQD, k_BHKD, v_BHKD, ab_BHQK, fa.SegmentIds(q_seg_BQ, kv_seg_BK),
                            causal=causal, sm_scale=1.0)


@contextlib.contextmanager
def _interpret_mode():
  """Pallas TPU kernels traced here run as pallas_call(interpret=True) would: the kernel body
  as XLA ops, looped over its grid. (force_tpu_interpret_mode takes pallas_call's `interpret`
  value. Its TPU simulator, InterpretParams(), syncs all devices with a threading.Barrier,
  which hangs on 8 emulated CPU devices, and is far slower on one.)"""
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=C0415
  with pltpu.force_tpu_interpret_mode(True):
    yield


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _flash_interpreted(q_BHQD, k_BHKD, v_BHKD, ab_BHQK, q_seg_BQ, kv_seg_BK, causal):
  """_flash in interpret mode, forward and backward: the kernel's own backward is traced
  only when the gradient is taken, outside any context around the forward call."""
  with _interpret_mode():
    return _flash(q_BHQD, k_BHKD, v_BHKD, ab_BHQK, q_seg_BQ, kv_seg_BK, causal)


def _flash_interpreted_fwd(q_BHQD, k_BHKD, v_BHKD, ab_BHQK, q_seg_BQ, kv_seg_BK, causal):
  attend = lambda q, k, v, ab: _flash(q, k, v, ab, q_seg_BQ, kv_seg_BK, causal)
  with _interpret_mode():
    out, vjp = jax.vjp(attend, q_BHQD, k_BHKD, v_BHKD, ab_BHQK)
  return out, (vjp, q_seg_BQ, kv_seg_BK)


def _flash_interpreted_bwd(causal, res, g_BHQD):
  del causal
  vjp, q_seg_BQ, kv_seg_BK = res
  with _interpret_mode():
    grads = vjp(g_BHQD)
  return (*grads, None, None)  # integer segment ids have no cotangent


_flash_interpreted.defvjp(_flash_interpreted_fwd, _flash_interpreted_bwd)


@functools.cache
def _warn_interpret_once() -> None:
  logging.warning("t5lite: Config.attention_kernel='pallas_tpu' on CPU runs the TPU kernel in "
                  "Pallas interpret mode (a simulation for tests; slow)")
