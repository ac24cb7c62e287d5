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
# Where a stack's sparse (mixture-of-experts) layers sit, every N-th layer (N = *_sparse_step):
# flaxformer / t5x: layer i when i % N == N - 1 (N 2: 1, 3, 5, ...; N 4: 3, 7, 11, ...);
# hf (transformers' SwitchTransformers): layer i when i % N == 1, or every layer when N == 1
# (N 4: 1, 5, 9, ...). They agree for N 1 and 2; import-hf sets "hf".
SPARSE_PLACEMENTS = ("flaxformer", "hf")


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
  # Mixture of experts (Switch Transformer, model/moe.py): every N-th MLP becomes num_experts
  # experts behind a top-1 router. 0 experts = dense (the fields below are then unused).
  num_experts: int = 0
  encoder_sparse_step: int = 2  # every N-th encoder layer is sparse, placed by sparse_placement
  decoder_sparse_step: int = 2
  sparse_placement: str = "flaxformer"  # one of SPARSE_PLACEMENTS
  train_capacity_factor: float = 1.25  # expert capacity = max(round(cf * T / E), min capacity)
  eval_capacity_factor: float = 2.0  # for T tokens per group
  min_expert_capacity: int = 4
  expert_group_size: int = 4096  # tokens routed together (see moe.tokens_per_group)
  router_aux_loss_factor: float = 0.01  # load-balancing loss E^2 mean(f * P), per sparse layer
  router_z_loss_factor: float = 0.0  # mean(logsumexp(router logits)^2); ST-MoE uses 1e-3
  router_jitter: float = 0.0  # training only: router inputs times U(1 - j, 1 + j)

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
    self._check_experts()

  def _check_experts(self):
    if self.num_experts < 0:
      raise ValueError(f"Config.num_experts={self.num_experts}; expected 0 (dense) or more")
    if not self.num_experts:
      return
    if self.family != "t5":
      raise ValueError(f"Config.num_experts={self.num_experts} with family={self.family!r}: "
                       "mixture-of-experts layers exist for family 't5' only")
    if self.sparse_placement not in SPARSE_PLACEMENTS:
      raise ValueError(f"Config.sparse_placement={self.sparse_placement!r}; expected one of "
                       f"{SPARSE_PLACEMENTS}")
    for stack in ("encoder", "decoder"):
      step, layers = getattr(self, f"{stack}_sparse_step"), getattr(self, f"num_{stack}_layers")
      if not 1 <= step <= layers:
        raise ValueError(f"Config.{stack}_sparse_step={step}; expected 1 to "
                         f"num_{stack}_layers={layers} (every N-th layer is sparse)")
    for name in ("train_capacity_factor", "eval_capacity_factor"):
      if not getattr(self, name) > 0:
        raise ValueError(f"Config.{name}={getattr(self, name)}; expected a capacity factor > 0")
    for name in ("min_expert_capacity", "expert_group_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"Config.{name}={getattr(self, name)}; expected >= 1")
    for name in ("router_aux_loss_factor", "router_z_loss_factor"):
      if getattr(self, name) < 0:
        raise ValueError(f"Config.{name}={getattr(self, name)}; expected >= 0")
    if not 0 <= self.router_jitter < 1:
      raise ValueError(f"Config.router_jitter={self.router_jitter}; expected 0 <= jitter < 1")

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

  def sparse_layers(self, stack: str) -> tuple[bool, ...]:
    """Which layers of "encoder" or "decoder" are sparse (all False for a dense model)."""
    n = getattr(self, f"num_{stack}_layers")
    if not self.num_experts:
      return (False,) * n
    step = getattr(self, f"{stack}_sparse_step")
    if self.sparse_placement == "hf":
      return tuple(step == 1 or i % step == 1 for i in range(n))
    return tuple(i % step == step - 1 for i in range(n))

  def replace(self, **changes) -> "Config":
    return dataclasses.replace(self, **changes)


def flops_per_example(config: Config, inputs_length: int, targets_length: int) -> float:
  """Training FLOPs per example (3 x forward; 2 FLOPs per multiply-add), counted as t5x counts an
  encoder-decoder: dense layers, attention and the LM head, no 6N(Li+Lt) shortcut. A sparse layer
  counts one expert's MLP per token (what a token computes; capacity padding is not counted) plus
  its router's [D, E] product."""
  d, inner, d_ff, V = config.emb_dim, config.inner_dim, config.mlp_dim, config.vocab_size
  li, lt = inputs_length, targets_length
  n_ff = 3 if config.gated else 2
  le, ld = config.num_encoder_layers, config.num_decoder_layers
  enc_dense = 2 * li * le * (4 * d * inner + n_ff * d * d_ff)
  enc_attn = le * 4 * li * li * inner
  dec_dense = ld * (2 * lt * (4 * d * inner + 2 * d * inner + n_ff * d * d_ff) + 2 * li * 2 * d * inner)
  dec_attn = ld * (4 * lt * lt * inner + 4 * lt * li * inner)
  head = 2 * lt * d * V
  router = 2 * d * config.num_experts * (li * sum(config.sparse_layers("encoder"))
                                         + lt * sum(config.sparse_layers("decoder")))
  return 3.0 * (enc_dense + enc_attn + dec_dense + dec_attn + head + router)
