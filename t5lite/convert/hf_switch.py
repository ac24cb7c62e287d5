"""Hugging Face SwitchTransformers <-> t5lite's mixture-of-experts T5: the configuration and its
checks (hf.py maps the weights, with one t5lite [E, ...] kernel per E HF `expert_i` tensors).

What transfers and what does not:
  - placement: HF makes layer i sparse when i % step == 1 (or step == 1), step = layers //
    num_sparse_layers; t5lite's native rule (flaxformer's) is i % step == step - 1. Imports set
    Config.sparse_placement = "hf"; exports need HF's rule to give the same layers.
  - HF's MLP is plain (wi, wo; relu or gelu_new), its router has no bias and runs in float32.
  - capacity: HF's router counts a fixed `expert_capacity` per sequence; t5lite counts
    max(round(cf * S / E), min) per group of S tokens. Imports keep t5lite's capacity factors;
    exports write the capacity of one expert_group_size group at the eval factor.
  - the router's aux / z-loss coefficients and jitter map one to one (HF sums its losses over
    layers, t5lite averages them: the same coefficient weighs them differently).
"""
from __future__ import annotations

import re

from t5lite.model.config import Config
from t5lite.model.moe import expert_capacity

MODEL_TYPE = "switch_transformers"
_EXPERT_KEY = re.compile(r"^(.*)\.mlp\.experts\.expert_(\d+)\.")


def config_fields(c, act_from_hf: dict) -> dict:
  """Config fields of a transformers SwitchTransformersConfig."""
  for field, ok in (("router_bias", False), ("router_ignore_padding_tokens", False)):
    if getattr(c, field, ok) != ok:
      raise ValueError(f"{MODEL_TYPE}: {field}={getattr(c, field)} is not supported (t5lite's "
                       "router has no bias and routes padding like any token)")
  act = c.dense_act_fn
  if act not in act_from_hf:
    raise ValueError(f"{MODEL_TYPE}: dense_act_fn={act!r} is not supported; expected one of "
                     f"{sorted(act_from_hf)}")
  decoder_layers = c.num_decoder_layers if c.num_decoder_layers is not None else c.num_layers
  return dict(
      vocab_size=c.vocab_size, emb_dim=c.d_model, num_heads=c.num_heads, head_dim=c.d_kv,
      mlp_dim=c.d_ff, num_encoder_layers=c.num_layers, num_decoder_layers=decoder_layers,
      mlp_activations=(act_from_hf[act],), logits_via_embedding=bool(c.tie_word_embeddings),
      dropout_rate=float(c.dropout_rate),
      relative_attention_num_buckets=c.relative_attention_num_buckets,
      relative_attention_max_distance=c.relative_attention_max_distance,
      layer_norm_epsilon=float(c.layer_norm_epsilon), family="t5",
      decoder_start_token_id=_id(c, "decoder_start_token_id", _id(c, "pad_token_id", 0)),
      pad_token_id=_id(c, "pad_token_id", 0), eos_token_id=_id(c, "eos_token_id", 1),
      num_experts=c.num_experts, encoder_sparse_step=c.encoder_sparse_step,
      decoder_sparse_step=c.decoder_sparse_step, sparse_placement="hf",
      router_jitter=float(c.router_jitter_noise), router_z_loss_factor=float(c.router_z_loss_coef),
      router_aux_loss_factor=float(c.router_aux_loss_coef))


def _id(c, name: str, default: int) -> int:
  value = getattr(c, name, None)
  if isinstance(value, (list, tuple)):
    value = value[0] if value else None
  return default if value is None else int(value)


def hf_config(config: Config, act_to_hf: dict, transformers):
  """The transformers SwitchTransformersConfig for a mixture-of-experts Config (ValueError when
  HF cannot express it)."""
  if config.gated or config.mlp_activations[0] not in act_to_hf:
    raise ValueError(f"mlp_activations={config.mlp_activations!r}: HF SwitchTransformers has a "
                     "plain MLP (wi, wo) with relu or gelu_new")
  counts = {}
  for stack in ("encoder", "decoder"):
    ours = config.sparse_layers(stack)
    n = sum(ours)
    step = len(ours) // n
    theirs = tuple(step == 1 or i % step == 1 for i in range(len(ours)))
    if theirs != ours:
      where = lambda layers: [i for i, s in enumerate(layers) if s]  # noqa: E731
      raise ValueError(
          f"Config.{stack}_sparse_step={getattr(config, f'{stack}_sparse_step')} "
          f"({config.sparse_placement}): {stack} layers {where(ours)} are sparse; HF "
          f"SwitchTransformers would place {n} sparse layers at {where(theirs)}")
    counts[stack] = n
  return transformers.SwitchTransformersConfig(
      vocab_size=config.vocab_size, d_model=config.emb_dim, d_kv=config.head_dim,
      d_ff=config.mlp_dim, num_layers=config.num_encoder_layers,
      num_decoder_layers=config.num_decoder_layers, num_heads=config.num_heads,
      num_experts=config.num_experts, num_sparse_encoder_layers=counts["encoder"],
      num_sparse_decoder_layers=counts["decoder"],
      expert_capacity=expert_capacity(config, config.expert_group_size, train=False),
      router_jitter_noise=config.router_jitter, router_z_loss_coef=config.router_z_loss_factor,
      router_aux_loss_coef=config.router_aux_loss_factor,
      relative_attention_num_buckets=config.relative_attention_num_buckets,
      relative_attention_max_distance=config.relative_attention_max_distance,
      dropout_rate=config.dropout_rate, layer_norm_epsilon=config.layer_norm_epsilon,
      dense_act_fn=act_to_hf[config.mlp_activations[0]],
      tie_word_embeddings=config.logits_via_embedding, pad_token_id=config.pad_token_id,
      eos_token_id=config.eos_token_id, decoder_start_token_id=config.decoder_start_token_id,
      architectures=["SwitchTransformersForConditionalGeneration"])


def check_experts(state_dict: dict, config: Config) -> None:
  """A clear line when the checkpoint's experts per layer differ from the config's."""
  found: dict[str, set] = {}
  for name in state_dict:
    match = _EXPERT_KEY.match(name)
    if match:
      found.setdefault(match.group(1), set()).add(int(match.group(2)))
  for layer, experts in sorted(found.items()):
    if experts != set(range(config.num_experts)):
      raise ValueError(f"HF checkpoint has experts {_span(experts)} in {layer}.mlp but its "
                       f"config says num_experts={config.num_experts}")


def _span(indices: set) -> str:
  low, high = min(indices), max(indices)
  return f"expert_{low}..expert_{high} ({len(indices)})"
