"""The one frozen architecture Config passed whole to every module (T5 1.0 / 1.1, mT5, BART)."""
from __future__ import annotations

import dataclasses
from typing import Literal

import gin
import jax.numpy as jnp

FAMILIES = ("t5", "bart")
# Which activations each layer keeps for the backward pass (network.py maps them to jax policies):
# none = all (no remat); full = only the layer's inputs; minimal = also the outputs of matmuls
# without batch dims (jax's dots_with_no_batch_dims_saveable); save_attn_mlp_outputs = also the
# attention and MLP blocks' outputs (named with jax.ad_checkpoint.checkpoint_name).
REMAT_POLICIES = ("none", "full", "minimal", "save_attn_mlp_outputs")
ATTENTION_KERNELS = ("xla", "cudnn", "pallas_tpu")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class Config:
  """Encoder-decoder architecture.

  T5 1.1 is the default; T5 1.0 sets mlp_activations=("relu",) and logits_via_embedding=True;
  BART sets family="bart" (post-LN, learned positions, biases, LayerNorm with bias, tied logits).
  """
  vocab_size: int = 32128
  emb_dim: int = 512
  num_heads: int = 6
  head_dim: int = 64
  mlp_dim: int = 1024
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  mlp_activations: tuple[str, ...] = ("gelu", "linear")  # 2 = gated (T5 1.1), 1 = plain
  logits_via_embedding: bool = False
  dropout_rate: float = 0.0
  dtype: str = "bfloat16"  # activations
  param_dtype: str = "float32"
  # Relative position bias (T5).
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  # Model family switches. "t5": pre-RMSNorm, relative bias, no biases.
  # "bart": post-LayerNorm with bias, learned absolute positions (offset 2), biases everywhere,
  # LayerNorm on embeddings, tied logits + final_logits_bias.
  family: Literal["t5", "bart"] = "t5"
  max_position_embeddings: int = 1024  # BART only
  scale_embedding: bool = False  # BART: multiply embeddings by sqrt(d_model)
  decoder_start_token_id: int = 0  # T5: pad; BART: </s> (2)
  pad_token_id: int = 0
  eos_token_id: int = 1
  remat_policy: str = "none"  # one of REMAT_POLICIES: activation memory vs recomputation
  scan_layers: bool = False  # each stack as one nn.scan over stacked parameters (see network.py)
  # Attention: "xla" (einsum + softmax), or a fused kernel: "cudnn" (CUDA GPUs),
  # "pallas_tpu" (TPUs; Pallas interpret mode on CPU). See t5lite/attention.py.
  attention_kernel: str = "xla"

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"Config.family={self.family!r}; expected one of {FAMILIES}")
    if not self.mlp_activations or len(self.mlp_activations) > 2:
      raise ValueError(
          f"Config.mlp_activations={self.mlp_activations!r}; expected 1 (plain) or 2 (gated) names")
    for name in ("dtype", "param_dtype"):
      value = getattr(self, name)
      if value not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"Config.{name}={value!r}; expected 'float32', 'bfloat16' or 'float16'")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(
          f"Config.remat_policy={self.remat_policy!r}; expected one of {REMAT_POLICIES}")
    if self.attention_kernel not in ATTENTION_KERNELS:
      raise ValueError(f"Config.attention_kernel={self.attention_kernel!r}; expected one of "
                       f"{ATTENTION_KERNELS}")
    object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))

  @property
  def activation_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self):
    return jnp.dtype(self.param_dtype)

  @property
  def inner_dim(self) -> int:
    return self.num_heads * self.head_dim

  @property
  def gated(self) -> bool:
    return len(self.mlp_activations) == 2

  def replace(self, **changes) -> "Config":
    return dataclasses.replace(self, **changes)


def flops_per_example(config: Config, inputs_length: int, targets_length: int) -> float:
  """Training FLOPs per example (3 x forward; 2 FLOPs per multiply-add), counted as t5x counts an
  encoder-decoder: dense layers, attention and the LM head, no 6N(Li+Lt) shortcut."""
  d, inner, d_ff, V = config.emb_dim, config.inner_dim, config.mlp_dim, config.vocab_size
  li, lt = inputs_length, targets_length
  n_ff = 3 if config.gated else 2
  le, ld = config.num_encoder_layers, config.num_decoder_layers
  enc_dense = 2 * li * le * (4 * d * inner + n_ff * d * d_ff)
  enc_attn = le * 4 * li * li * inner
  dec_dense = ld * (2 * lt * (4 * d * inner + 2 * d * inner + n_ff * d * d_ff) + 2 * li * 2 * d * inner)
  dec_attn = ld * (4 * lt * lt * inner + 4 * lt * li * inner)
  head = 2 * lt * d * V
  return 3.0 * (enc_dense + enc_attn + dec_dense + dec_attn + head)
