"""Multi-head attention with a KV cache: T5's (no biases, 1/sqrt(d_kv) folded into the query
init) and BART's (biases, scaled queries); XLA's einsum/softmax path or a fused kernel.

Shapes: B batch, Q query length, K key length (or kv dim, as the name says), D embed, H heads.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5lite.model.config import Config
from t5lite.model.kernels import dot_product_attention
from t5lite.model.layers import BATCH, EMBED, HEADS, KV, LENGTH, constrain, declare, kernel_init
from t5lite.model.masks import SegmentMask
from t5lite.model.ops import add_bias, einsum, matmul, project, softmax

Array = jax.Array


class Attention(nn.Module):
  """Multi-head attention. With `decode=True`, self-attention appends this step's key/value to a
  cache; cross-attention (`cross=True`) caches the encoder's keys/values on the first call.
  The mask is a boolean [B, 1, Q, K] array (XLA's einsum/softmax path) or, for a fused kernel
  (Config.attention_kernel), an attention.SegmentMask."""
  config: Config
  cross: bool = False

  @nn.compact
  def __call__(self, x_BQD: Array, kv_BKD: Array, mask_B1QK: Optional[Array | SegmentMask],
               bias_1HQK: Optional[Array] = None, deterministic: bool = True,
               decode: bool = False) -> Array:
    cfg = self.config
    D, H, K = cfg.emb_dim, cfg.num_heads, cfg.head_dim
    dt = cfg.activation_dtype
    bart = cfg.family == "bart"
    q_init = kernel_init(cfg, scale=1.0 / K)  # T5 folds 1/sqrt(d_kv) into the query init
    w_q = declare(self, "query", q_init, (EMBED, HEADS, KV), (D, H, K), cfg)
    w_k = declare(self, "key", kernel_init(cfg), (EMBED, HEADS, KV), (D, H, K), cfg)
    w_v = declare(self, "value", kernel_init(cfg), (EMBED, HEADS, KV), (D, H, K), cfg)
    w_o = declare(self, "out", kernel_init(cfg, fan_in_axes=(0, 1)), (HEADS, KV, EMBED), (H, K, D), cfg)
    fuse_qkv = kv_BKD is x_BQD  # self-attention: q, k, v from one product with [D, H, 3, K]
    if fuse_qkv:
      q_BQHK, k_BKHK, v_BKHK = project(x_BQD, (w_q, w_k, w_v), dt)
    else:
      q_BQHK, = project(x_BQD, (w_q,), dt)
    if bart:
      zeros = nn.initializers.zeros
      b_q, b_k, b_v = (declare(self, f"{n}_bias", zeros, (HEADS, KV), (H, K), cfg).astype(dt)[None, None]
                       for n in ("query", "key", "value"))
      q_BQHK = (q_BQHK + b_q) * jnp.asarray(K ** -0.5, dt)
    q_BQHK = constrain(q_BQHK, (BATCH, LENGTH, HEADS, KV))

    if decode and self.cross and self.has_variable("cache", "cross_key"):
      # Cross-attention keys/values depend only on the encoder output: computed once per sequence.
      k_BKHK = self.get_variable("cache", "cross_key")
      v_BKHK = self.get_variable("cache", "cross_value")
    else:
      if not fuse_qkv:
        k_BKHK, v_BKHK = project(kv_BKD, (w_k, w_v), dt)
      if bart:
        k_BKHK, v_BKHK = k_BKHK + b_k, v_BKHK + b_v
      k_BKHK = constrain(k_BKHK, (BATCH, LENGTH, HEADS, KV))
      v_BKHK = constrain(v_BKHK, (BATCH, LENGTH, HEADS, KV))
      if decode and self.cross:
        self.put_variable("cache", "cross_key", k_BKHK)
        self.put_variable("cache", "cross_value", v_BKHK)
      elif decode:
        k_BKHK, v_BKHK = self._update_cache(k_BKHK, v_BKHK)

    if isinstance(mask_B1QK, SegmentMask) and not decode:  # Config.attention_kernel's kernel
      if cfg.dropout_rate > 0 and not deterministic:
        raise NotImplementedError(
            f"Config.attention_kernel={cfg.attention_kernel!r} has no attention dropout; train "
            "with Config.dropout_rate=0 or attention_kernel='xla'")
      out_BQHK = dot_product_attention(q_BQHK, k_BKHK, v_BKHK, bias_1HQK, mask_B1QK,
                                       cfg.attention_kernel).astype(dt)
    else:
      if isinstance(mask_B1QK, SegmentMask):  # cached decoding (one query a step) stays on XLA
        mask_B1QK = mask_B1QK.dense()
      logits_BHQK = einsum("bqhk,bthk->bhqt", q_BQHK, k_BKHK)
      if bias_1HQK is not None:
        logits_BHQK = add_bias(logits_BHQK, bias_1HQK.astype(jnp.float32))
      if mask_B1QK is not None:
        # An additive mask (0 or float32 min): min + logit rounds to min, so the softmax is the
        # same as jnp.where(mask, logits, min)'s, and its backward needs no select over [B,H,Q,K].
        mask_bias_B1QK = jnp.where(mask_B1QK, jnp.zeros((), jnp.float32), jnp.finfo(jnp.float32).min)
        logits_BHQK = logits_BHQK + mask_bias_B1QK
      weights_BHQK = softmax(logits_BHQK).astype(dt)
      if cfg.dropout_rate > 0 and not deterministic:
        weights_BHQK = nn.Dropout(cfg.dropout_rate)(weights_BHQK, deterministic=False)
      out_BQHK = einsum("bhqt,bthk->bqhk", weights_BHQK, v_BKHK).astype(dt)
    out_BQF = out_BQHK.reshape(out_BQHK.shape[:2] + (H * K,))
    y_BQD = matmul(out_BQF, w_o.astype(dt).reshape((H * K, D)))
    if bart:
      y_BQD = y_BQD + declare(self, "out_bias", nn.initializers.zeros, (EMBED,), (D,), cfg).astype(dt)[None, None]
    return constrain(y_BQD, (BATCH, LENGTH, EMBED))

  def _update_cache(self, k_B1HK: Array, v_B1HK: Array) -> tuple[Array, Array]:
    """Writes one step's key/value at cache_index; returns the whole cache [B, maxlen, H, K].

    The first call (model.init with the full-length decoder input) only creates the cache.
    """
    initialized = self.has_variable("cache", "cached_key")
    cached_k = self.variable("cache", "cached_key", jnp.zeros, k_B1HK.shape, k_B1HK.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, v_B1HK.shape, v_B1HK.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.array(0, dtype=jnp.int32))
    if not initialized:
      return k_B1HK, v_B1HK
    if k_B1HK.shape[1] != 1:
      raise ValueError(f"decode=True takes one token per step; got length {k_B1HK.shape[1]}")
    i = index.value
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k_B1HK.astype(cached_k.value.dtype), (0, i, 0, 0))
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v_B1HK.astype(cached_v.value.dtype), (0, i, 0, 0))
    index.value = i + 1
    return cached_k.value, cached_v.value
