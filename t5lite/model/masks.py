"""Attention masks: the dense boolean [B, 1, Q, K] mask (XLA's path) and what it is made of
(SegmentMask: validity, packing segment ids, causality) for the fused kernels of kernels.py."""
from __future__ import annotations

from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array

# Segment ids given to the flash kernel for invalid (padded) query and key positions. They
# differ from each other and from any real (non-negative) segment id, so a padded query row
# attends to nothing, like the dense mask's all-false row: the kernel's masked-row softmax is
# finite (uniform), so its outputs and gradients there are defined and not NaN.
PAD_Q_SEGMENT, PAD_KV_SEGMENT = -1, -2


def attention_mask(q_valid_BQ: Array, k_valid_BK: Array, q_seg_BQ: Optional[Array] = None,
                   k_seg_BK: Optional[Array] = None, causal: bool = False,
                   q_pos_BQ: Optional[Array] = None, k_pos_BK: Optional[Array] = None) -> Array:
  """Boolean [B, 1, Q, K]: both positions valid, same packed segment, and (causal) key <= query."""
  mask = q_valid_BQ[:, :, None] & k_valid_BK[:, None, :]
  if q_seg_BQ is not None and k_seg_BK is not None:
    mask = mask & (q_seg_BQ[:, :, None] == k_seg_BK[:, None, :])
  if causal:
    if q_pos_BQ is None:
      q_pos_BQ = jnp.broadcast_to(jnp.arange(q_valid_BQ.shape[1]), q_valid_BQ.shape)
    if k_pos_BK is None:
      k_pos_BK = jnp.broadcast_to(jnp.arange(k_valid_BK.shape[1]), k_valid_BK.shape)
    mask = mask & (k_pos_BK[:, None, :] <= q_pos_BQ[:, :, None])
  return mask[:, None]


@flax.struct.dataclass
class SegmentMask:
  """What attention_mask is built from, for kernels that mask by segment ids.

  Valid positions with equal segment ids attend to each other (and, when causal, only to keys
  at or before the query's index); segment ids are non-negative (seqio's packing: 1, 2, ...).
  """
  q_valid_BQ: Array
  kv_valid_BK: Array
  q_segment_ids_BQ: Optional[Array] = None
  kv_segment_ids_BK: Optional[Array] = None
  causal: bool = flax.struct.field(pytree_node=False, default=False)

  def dense(self) -> Array:
    """The same mask as a boolean [B, 1, Q, K] array (the XLA path's)."""
    return attention_mask(self.q_valid_BQ, self.kv_valid_BK, self.q_segment_ids_BQ,
                          self.kv_segment_ids_BK, self.causal)

  def kernel_segment_ids(self) -> tuple[Array, Array]:
    """[B, Q] and [B, K] int32 ids that encode validity too (PAD_*_SEGMENT where invalid)."""
    def ids(valid, seg, pad):
      seg = jnp.ones(valid.shape, jnp.int32) if seg is None else seg.astype(jnp.int32)
      return jnp.where(valid, seg, pad)
    return (ids(self.q_valid_BQ, self.q_segment_ids_BQ, PAD_Q_SEGMENT),
            ids(self.kv_valid_BK, self.kv_segment_ids_BK, PAD_KV_SEGMENT))


def make_mask(kernel: str, q_valid_BQ: Array, kv_valid_BK: Array,
              q_segment_ids_BQ: Optional[Array] = None, kv_segment_ids_BK: Optional[Array] = None,
              causal: bool = False):
  """The mask a stack hands its attention layers: the dense [B, 1, Q, K] array for 'xla',
  a SegmentMask for a fused kernel."""
  if kernel == "xla":
    return attention_mask(q_valid_BQ, kv_valid_BK, q_segment_ids_BQ, kv_segment_ids_BK, causal)
  return SegmentMask(q_valid_BQ, kv_valid_BK, q_segment_ids_BQ, kv_segment_ids_BK, causal)
