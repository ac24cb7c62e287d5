"""Building blocks: norms, MLP, relative-position bias, embeddings (attention: attention.py).

Every parameter is declared with logical axis names (see partitioning.py for the rules table);
activations are constrained with logical names too. Shapes: B batch, L length (Q query, K key),
D embed, H heads, K kv (head_dim), F mlp, V vocab.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5lite.model.config import Config
from t5lite.model.ops import matmul

Array = jax.Array
Initializer = Callable

# The logical names used by the model; partitioning.RULES maps each to a mesh axis or None.
BATCH, LENGTH, EMBED, MLP, HEADS, KV, VOCAB, RELPOS = (
    "batch", "length", "embed", "mlp", "heads", "kv", "vocab", "relpos_buckets")

ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=True),  # t5x nn.gelu / HF "gelu_new"
    "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),  # HF "gelu" (BART)
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "linear": lambda x: x,
}


def constrain(x: Array, names: tuple) -> Array:
  """Constrain an activation's sharding by logical names (a no-op outside a mesh)."""
  return nn.with_logical_constraint(x, names)


def declare(module: nn.Module, name: str, init: Initializer, names: tuple, shape: tuple,
            config: Config) -> Array:
  """A parameter with logical axis names (nn.with_logical_partitioning + self.param)."""
  return module.param(name, nn.with_logical_partitioning(init, names), shape, config.weight_dtype)


def kernel_init(config: Config, scale: float = 1.0, fan_in_axes: tuple = (0,),
                distribution: str = "normal") -> Initializer:
  """T5: variance scaling on fan-in; BART: normal(0.02)."""
  if config.family == "bart":
    return nn.initializers.normal(0.02)
  def init(key, shape, dtype=jnp.float32):
    fan_in = int(np.prod([shape[a] for a in fan_in_axes]))
    std = math.sqrt(scale / fan_in)
    if distribution == "truncated_normal":  # variance-preserving truncated normal, as in jax
      return jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) * (std / 0.87962566103423978)
    return jax.random.normal(key, shape, dtype) * std
  return init


class Norm(nn.Module):
  """T5: RMS norm (no mean, no bias). BART: LayerNorm with bias. Computed in float32."""
  config: Config

  @nn.compact
  def __call__(self, x_BLD: Array) -> Array:
    cfg = self.config
    d = x_BLD.shape[-1]
    x = x_BLD.astype(jnp.float32)
    bcast = (1,) * (x.ndim - 1) + (d,)  # explicit rank (tests run with rank promotion "raise")
    scale = declare(self, "scale", nn.initializers.ones, (EMBED,), (d,), cfg).reshape(bcast)
    if cfg.family == "bart":
      bias = declare(self, "bias", nn.initializers.zeros, (EMBED,), (d,), cfg).reshape(bcast)
      mean = jnp.mean(x, axis=-1, keepdims=True)
      var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
      y = (x - mean) * jax.lax.rsqrt(var + cfg.layer_norm_epsilon) * scale + bias
    else:
      var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
      y = x * jax.lax.rsqrt(var + cfg.layer_norm_epsilon) * scale
    return y.astype(cfg.activation_dtype)


def relative_position_bucket(relative_position: Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> Array:
  """T5's bucketing of (key - query) offsets: exact for small offsets, log-spaced up to max_distance."""
  ret = jnp.zeros_like(relative_position)
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret = ret + (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  val_if_large = max_exact + (
      jnp.log(n.astype(jnp.float32) / max_exact + np.finfo(np.float32).eps)
      / math.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(jnp.int32)
  val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
  return ret + jnp.where(is_small, n, val_if_large)


class RelativePositionBias(nn.Module):
  """One table per stack, shared by its layers: [relpos_buckets, heads]."""
  config: Config
  bidirectional: bool

  @nn.compact
  def __call__(self, q_pos_Q: Array, k_pos_K: Array) -> Array:
    """Returns the bias [1, H, Q, K] for query positions q_pos and key positions k_pos."""
    cfg = self.config
    table = declare(self, "rel_embedding",
                    nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                    (RELPOS, HEADS), (cfg.relative_attention_num_buckets, cfg.num_heads), cfg)
    rel_QK = k_pos_K[None, :] - q_pos_Q[:, None]
    buckets_QK = relative_position_bucket(rel_QK, self.bidirectional,
                                          cfg.relative_attention_num_buckets,
                                          cfg.relative_attention_max_distance)
    # table^T times a one-hot of the buckets, rather than a gather: the [H, Q, K] result comes
    # out in place (no [Q, K, H] -> [H, Q, K] transpose) and the table's gradient is a small
    # GEMM instead of a transpose and a scatter-add over Q*K.
    onehot_NQK = (buckets_QK[None] == jnp.arange(table.shape[0])[:, None, None]).astype(table.dtype)
    bias_HQK = jnp.einsum("nh,nqk->hqk", table, onehot_NQK)
    return bias_HQK[None].astype(cfg.activation_dtype)


class Mlp(nn.Module):
  """T5 1.1: gelu(x W0) * (x W1) -> Wo. T5 1.0: relu(x Wi) -> Wo. BART: gelu(x Wi + b) -> Wo + b."""
  config: Config

  @nn.compact
  def __call__(self, x_BLD: Array, deterministic: bool = True) -> Array:
    cfg = self.config
    D, F, dt = cfg.emb_dim, cfg.mlp_dim, cfg.activation_dtype
    bart = cfg.family == "bart"
    hidden_BLF = None
    for i, act in enumerate(cfg.mlp_activations):
      name = f"wi_{i}" if cfg.gated else "wi"
      w = declare(self, name, kernel_init(cfg, distribution="truncated_normal"), (EMBED, MLP), (D, F), cfg)
      h_BLF = matmul(x_BLD, w.astype(dt))
      if bart:
        h_BLF = h_BLF + declare(self, name + "_bias", nn.initializers.zeros, (MLP,), (F,), cfg).astype(dt)[None, None]
      h_BLF = ACTIVATIONS[act](h_BLF)
      hidden_BLF = h_BLF if hidden_BLF is None else hidden_BLF * h_BLF
    hidden_BLF = constrain(hidden_BLF, (BATCH, LENGTH, MLP))
    if cfg.dropout_rate > 0 and not deterministic:
      hidden_BLF = nn.Dropout(cfg.dropout_rate)(hidden_BLF, deterministic=False)
    w_o = declare(self, "wo", kernel_init(cfg, distribution="truncated_normal"), (MLP, EMBED), (F, D), cfg)
    y_BLD = matmul(hidden_BLF, w_o.astype(dt))
    if bart:
      y_BLD = y_BLD + declare(self, "wo_bias", nn.initializers.zeros, (EMBED,), (D,), cfg).astype(dt)[None, None]
    return constrain(y_BLD, (BATCH, LENGTH, EMBED))


class Embed(nn.Module):
  """Token (or position) embedding table [num, embed]; `attend` gives tied logits."""
  config: Config
  num_embeddings: int
  vocab_axis: Optional[str] = VOCAB

  def setup(self):
    cfg = self.config
    init = nn.initializers.normal(0.02 if cfg.family == "bart" else 1.0)
    self.embedding = declare(self, "embedding", init, (self.vocab_axis, EMBED),
                             (self.num_embeddings, cfg.emb_dim), cfg)

  def __call__(self, ids: Array) -> Array:
    return jnp.take(self.embedding, ids, axis=0).astype(self.config.activation_dtype)

  def attend(self, x_BLD: Array) -> Array:
    """Tied logits [..., V], float32 (operands in x's dtype, float32 accumulation)."""
    return matmul(x_BLD, self.embedding.astype(x_BLD.dtype).T, float32_result=True)

