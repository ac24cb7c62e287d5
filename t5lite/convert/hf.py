"""Conversion between t5lite and Hugging Face transformers (T5 1.0 / 1.1, mT5, BART,
SwitchTransformers: hf_switch.py), both ways.

  config_from_hf(hf_config, **overrides) -> Config     hf_config_from(config) -> T5Config | BartConfig
  params_from_hf(state_dict, config) -> params         params_to_hf(params, config) -> state_dict
  load_hf_dir(path, **overrides) -> (config, params)   save_hf_dir(config, params, path)

Params are t5lite's nested dict (what `model.init(...)["params"]` holds, unboxed) of float32 numpy;
state dicts are {HF name: numpy array} with the key set of `model.state_dict()` (tied aliases such as
`encoder.embed_tokens.weight` included; they are optional on the way in). Checkpoints are read from
safetensors only, never unpickled. transformers/torch/safetensors are the optional `hf` extra.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import numpy as np

from t5lite.convert import hf_switch
from t5lite.model import stacks as layout
from t5lite.model.config import Config

_INSTALL = "pip install 't5lite[hf]'"

# HF activation name -> t5lite activation name, and back.
_ACT_FROM_HF = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact",
                "relu": "relu", "silu": "silu", "swish": "silu"}
_ACT_TO_HF = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu", "silu": "silu"}
_BART_LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default; BartConfig has no field for it
_T5_MODEL_TYPES = ("t5", "mt5")


def _require(module: str):
  try:
    return __import__(module)
  except ImportError as e:
    raise ImportError(f"t5lite.hf needs {module}: {_INSTALL}") from e


# ----------------------------------------------------------------------------- configs


def config_from_hf(hf_config, **overrides) -> Config:
  """A t5lite Config from a transformers T5Config / MT5Config / BartConfig; `overrides` replace fields
  (e.g. dtype="float32"). Anything t5lite does not model raises ValueError naming the field."""
  model_type = getattr(hf_config, "model_type", None)
  if getattr(hf_config, "is_encoder_decoder", True) is False or getattr(hf_config, "is_decoder", False):
    raise ValueError(f"{model_type}: is_encoder_decoder/is_decoder: t5lite converts encoder-decoder "
                     "models only")
  if model_type in _T5_MODEL_TYPES:
    fields = _t5_fields(hf_config)
  elif model_type == hf_switch.MODEL_TYPE:
    fields = hf_switch.config_fields(hf_config, _ACT_FROM_HF)
  elif model_type == "bart":
    fields = _bart_fields(hf_config)
  else:
    why = {"mbart": "pre-LayerNorm layers and final encoder/decoder LayerNorms",
           "umt5": "a relative_attention_bias in every layer (t5lite has one per stack)",
           "longt5": "local/transient-global attention"}.get(model_type, "")
    raise ValueError(f"model_type={model_type!r} is not supported{' (' + why + ')' if why else ''}; "
                     f"t5lite converts {', '.join(_T5_MODEL_TYPES)}, {hf_switch.MODEL_TYPE} and "
                     "bart")
  return Config(**{**fields, **overrides})


def _t5_fields(c) -> dict:
  proj = c.feed_forward_proj
  parts = proj.split("-")
  gated = parts[0] == "gated"
  act = getattr(c, "dense_act_fn", parts[-1])
  if act not in _ACT_FROM_HF or len(parts) > 2 or (len(parts) == 2 and not gated):
    raise ValueError(f"feed_forward_proj={proj!r} (activation {act!r}) is not supported; "
                     f"expected [gated-]{{{', '.join(sorted(_ACT_FROM_HF))}}}")
  act = _ACT_FROM_HF[act]
  if c.model_type == "mt5":
    tied = False  # mT5 never scales the decoder output; its head is untied
  else:  # transformers 5 forces tie_word_embeddings=True and keeps T5 1.0 vs 1.1 here
    tied = bool(getattr(c, "scale_decoder_outputs", c.tie_word_embeddings))
  return dict(
      vocab_size=c.vocab_size, emb_dim=c.d_model, num_heads=c.num_heads, head_dim=c.d_kv,
      mlp_dim=c.d_ff, num_encoder_layers=c.num_layers,
      num_decoder_layers=c.num_decoder_layers if c.num_decoder_layers is not None else c.num_layers,
      mlp_activations=(act, "linear") if gated else (act,), logits_via_embedding=tied,
      dropout_rate=float(c.dropout_rate),
      relative_attention_num_buckets=c.relative_attention_num_buckets,
      relative_attention_max_distance=c.relative_attention_max_distance,
      layer_norm_epsilon=float(c.layer_norm_epsilon), family="t5",
      decoder_start_token_id=_id(c, "decoder_start_token_id", c.pad_token_id),
      pad_token_id=_id(c, "pad_token_id", 0), eos_token_id=_id(c, "eos_token_id", 1))


def _bart_fields(c) -> dict:
  for enc, dec in (("encoder_attention_heads", "decoder_attention_heads"),
                   ("encoder_ffn_dim", "decoder_ffn_dim")):
    if getattr(c, enc) != getattr(c, dec):
      raise ValueError(f"{enc}={getattr(c, enc)} != {dec}={getattr(c, dec)}: t5lite uses one value")
  for field in ("normalize_before", "add_final_layer_norm", "add_bias_logits"):
    if getattr(c, field, False):  # fields of older/other BART-like configs that change the graph
      raise ValueError(f"{field}=True is not supported (t5lite's BART is post-LN, no extra norms)")
  if getattr(c, "static_position_embeddings", False) or not getattr(c, "normalize_embedding", True):
    raise ValueError("static_position_embeddings/normalize_embedding: t5lite's BART has learned "
                     "positions and a LayerNorm on embeddings")
  if c.activation_function not in _ACT_FROM_HF:
    raise ValueError(f"activation_function={c.activation_function!r} is not supported; "
                     f"expected one of {sorted(_ACT_FROM_HF)}")
  heads = c.encoder_attention_heads
  if c.d_model % heads:
    raise ValueError(f"d_model={c.d_model} is not a multiple of encoder_attention_heads={heads}")
  return dict(
      vocab_size=c.vocab_size, emb_dim=c.d_model, num_heads=heads, head_dim=c.d_model // heads,
      mlp_dim=c.encoder_ffn_dim, num_encoder_layers=c.encoder_layers,
      num_decoder_layers=c.decoder_layers, mlp_activations=(_ACT_FROM_HF[c.activation_function],),
      logits_via_embedding=bool(c.tie_word_embeddings), dropout_rate=float(c.dropout),
      layer_norm_epsilon=_BART_LAYER_NORM_EPS, family="bart",
      max_position_embeddings=c.max_position_embeddings, scale_embedding=bool(c.scale_embedding),
      decoder_start_token_id=_id(c, "decoder_start_token_id", 2),
      pad_token_id=_id(c, "pad_token_id", 1), eos_token_id=_id(c, "eos_token_id", 2))


def _id(c, name: str, default: int) -> int:
  value = getattr(c, name, None)
  if isinstance(value, (list, tuple)):
    value = value[0] if value else None
  return default if value is None else int(value)


def hf_config_from(config: Config):
  """The transformers T5Config / BartConfig for a t5lite Config (ValueError if HF cannot express it)."""
  transformers = _require("transformers")
  acts = config.mlp_activations
  if config.num_experts:
    return hf_switch.hf_config(config, _ACT_TO_HF, transformers)
  if config.family == "t5":
    if config.gated and acts[1] != "linear":
      raise ValueError(f"mlp_activations={acts!r}: HF gates wi_0 and keeps wi_1 linear")
    if acts[0] not in _ACT_TO_HF or (config.gated and acts[0] == "gelu_exact"):
      raise ValueError(f"mlp_activations={acts!r} has no HF T5 feed_forward_proj")
    act = _ACT_TO_HF[acts[0]]
    proj = {"gelu_new": "gated-gelu"}.get(act, f"gated-{act}") if config.gated else act
    return transformers.T5Config(
        vocab_size=config.vocab_size, d_model=config.emb_dim, d_kv=config.head_dim,
        d_ff=config.mlp_dim, num_layers=config.num_encoder_layers,
        num_decoder_layers=config.num_decoder_layers, num_heads=config.num_heads,
        relative_attention_num_buckets=config.relative_attention_num_buckets,
        relative_attention_max_distance=config.relative_attention_max_distance,
        dropout_rate=config.dropout_rate, layer_norm_epsilon=config.layer_norm_epsilon,
        feed_forward_proj=proj, tie_word_embeddings=config.logits_via_embedding,
        pad_token_id=config.pad_token_id, eos_token_id=config.eos_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
        architectures=["T5ForConditionalGeneration"])
  if config.gated or acts[0] not in _ACT_TO_HF:
    raise ValueError(f"mlp_activations={acts!r}: HF BART has a plain (ungated) MLP with one of "
                     f"{sorted(_ACT_TO_HF)}")
  if config.num_heads * config.head_dim != config.emb_dim:
    raise ValueError(f"num_heads*head_dim={config.inner_dim} != emb_dim={config.emb_dim}: HF BART "
                     "requires head_dim = d_model / heads")
  if config.layer_norm_epsilon != _BART_LAYER_NORM_EPS:
    raise ValueError(f"layer_norm_epsilon={config.layer_norm_epsilon}: HF BART's LayerNorm uses "
                     f"{_BART_LAYER_NORM_EPS}")
  return transformers.BartConfig(
      vocab_size=config.vocab_size, d_model=config.emb_dim, encoder_layers=config.num_encoder_layers,
      decoder_layers=config.num_decoder_layers, encoder_attention_heads=config.num_heads,
      decoder_attention_heads=config.num_heads, encoder_ffn_dim=config.mlp_dim,
      decoder_ffn_dim=config.mlp_dim, activation_function=_ACT_TO_HF[acts[0]],
      max_position_embeddings=config.max_position_embeddings,
      scale_embedding=config.scale_embedding, dropout=config.dropout_rate,
      pad_token_id=config.pad_token_id, eos_token_id=config.eos_token_id,
      forced_eos_token_id=config.eos_token_id,
      decoder_start_token_id=config.decoder_start_token_id,
      tie_word_embeddings=config.logits_via_embedding,
      architectures=["BartForConditionalGeneration"])


# ----------------------------------------------------------------------------- the name map


class _Entry(NamedTuple):
  path: tuple  # t5lite params path
  hf: str  # HF state-dict name
  hf_shape: tuple
  shape: tuple  # t5lite's
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]
  index: Optional[int] = None  # one expert of a stacked [E, ...] t5lite kernel (shape: its slice)


def _ident(x):
  return x


def _entries(config: Config) -> tuple[list[_Entry], dict[str, str]]:
  """Every parameter's (t5lite path, HF name, HF shape, transforms), and the tied aliases
  {alias HF name: source HF name} that `model.state_dict()` also lists."""
  D, H, K, F, V = (config.emb_dim, config.num_heads, config.head_dim, config.mlp_dim,
                   config.vocab_size)
  out: list[_Entry] = []

  def add(path, hf, hf_shape, shape=None, to_ours=_ident, to_hf=_ident, index=None):
    shape = hf_shape if shape is None else shape
    out.append(_Entry(tuple(path.split("/")), hf, tuple(hf_shape), tuple(shape), to_ours, to_hf,
                      index))

  def transpose(path, hf, rows, cols, index=None):  # HF Linear [out, in] <-> our kernel [in, out]
    add(path, hf, (rows, cols), (cols, rows), lambda w: w.T, lambda w: w.T, index)

  def switch_mlp(ours, hf, sparse):  # SwitchTransformers: layer.N.mlp, plain wi / wo
    if not sparse:
      transpose(f"{ours}/wi", f"{hf}.wi.weight", F, D)
      transpose(f"{ours}/wo", f"{hf}.wo.weight", D, F)
      return
    transpose(f"{ours}/router", f"{hf}.router.classifier.weight", config.num_experts, D)
    for e in range(config.num_experts):
      transpose(f"{ours}/experts/wi", f"{hf}.experts.expert_{e}.wi.weight", F, D, index=e)
      transpose(f"{ours}/experts/wo", f"{hf}.experts.expert_{e}.wo.weight", D, F, index=e)

  def attention(ours, hf, names, bart):
    q, k, v, o = names
    for name, n in (("query", q), ("key", k), ("value", v)):  # [H*K, D] <-> [D, H, K]
      add(f"{ours}/{name}", f"{hf}.{n}.weight", (H * K, D), (D, H, K),
          lambda w: w.T.reshape(D, H, K), lambda w: w.reshape(D, H * K).T)
      if bart:
        add(f"{ours}/{name}_bias", f"{hf}.{n}.bias", (H * K,), (H, K),
            lambda b: b.reshape(H, K), lambda b: b.reshape(H * K))
    add(f"{ours}/out", f"{hf}.{o}.weight", (D, H * K), (H, K, D),  # [D, H*K] <-> [H, K, D]
        lambda w: w.T.reshape(H, K, D), lambda w: w.reshape(H * K, D).T)
    if bart:
      add(f"{ours}/out_bias", f"{hf}.{o}.bias", (D,))

  def norm(ours, hf, bart):
    add(f"{ours}/scale", f"{hf}.weight", (D,))
    if bart:
      add(f"{ours}/bias", f"{hf}.bias", (D,))

  if config.family == "t5":
    add("token_embedder/embedding", "shared.weight", (V, D))
    aliases = {"encoder.embed_tokens.weight": "shared.weight",
               "decoder.embed_tokens.weight": "shared.weight"}
    for stack, n_layers in (("encoder", config.num_encoder_layers),
                            ("decoder", config.num_decoder_layers)):
      add(f"{stack}/relpos_bias/rel_embedding",
          f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
          (config.relative_attention_num_buckets, H))
      sublayers = ([("attention", "SelfAttention")] if stack == "encoder" else
                   [("self_attention", "SelfAttention"), ("cross_attention", "EncDecAttention")])
      for i, sparse in enumerate(config.sparse_layers(stack)):
        ours, hf = f"{stack}/layers_{i}", f"{stack}.block.{i}.layer"
        for j, (name, hf_name) in enumerate(sublayers):
          attention(f"{ours}/{name}", f"{hf}.{j}.{hf_name}", "qkvo", False)
          norm(f"{ours}/{name}_norm", f"{hf}.{j}.layer_norm", False)
        j = len(sublayers)
        if config.num_experts:
          switch_mlp(f"{ours}/mlp", f"{hf}.{j}.mlp", sparse)
        else:
          for wi in (("wi_0", "wi_1") if config.gated else ("wi",)):
            transpose(f"{ours}/mlp/{wi}", f"{hf}.{j}.DenseReluDense.{wi}.weight", F, D)
          transpose(f"{ours}/mlp/wo", f"{hf}.{j}.DenseReluDense.wo.weight", D, F)
        norm(f"{ours}/mlp_norm", f"{hf}.{j}.layer_norm", False)
      norm(f"{stack}/final_norm", f"{stack}.final_layer_norm", False)
    if config.logits_via_embedding:
      aliases["lm_head.weight"] = "shared.weight"
    else:
      transpose("decoder/logits_dense", "lm_head.weight", V, D)
    return out, aliases

  add("token_embedder/embedding", "model.shared.weight", (V, D))
  aliases = {"model.encoder.embed_tokens.weight": "model.shared.weight",
             "model.decoder.embed_tokens.weight": "model.shared.weight"}
  for stack, n_layers in (("encoder", config.num_encoder_layers),
                          ("decoder", config.num_decoder_layers)):
    hf_stack = f"model.{stack}"
    add(f"{stack}/pos_embedder/embedding", f"{hf_stack}.embed_positions.weight",
        (config.max_position_embeddings + 2, D))
    norm(f"{stack}/embed_norm", f"{hf_stack}.layernorm_embedding", True)
    sublayers = ([("attention", "self_attn")] if stack == "encoder" else
                 [("self_attention", "self_attn"), ("cross_attention", "encoder_attn")])
    for i in range(n_layers):
      ours, hf = f"{stack}/layers_{i}", f"{hf_stack}.layers.{i}"
      for name, hf_name in sublayers:
        attention(f"{ours}/{name}", f"{hf}.{hf_name}", ("q_proj", "k_proj", "v_proj", "out_proj"),
                  True)
        norm(f"{ours}/{name}_norm", f"{hf}.{hf_name}_layer_norm", True)
      transpose(f"{ours}/mlp/wi", f"{hf}.fc1.weight", F, D)
      add(f"{ours}/mlp/wi_bias", f"{hf}.fc1.bias", (F,))
      transpose(f"{ours}/mlp/wo", f"{hf}.fc2.weight", D, F)
      add(f"{ours}/mlp/wo_bias", f"{hf}.fc2.bias", (D,))
      norm(f"{ours}/mlp_norm", f"{hf}.final_layer_norm", True)
  add("decoder/final_logits_bias", "final_logits_bias", (1, V), (V,),
      lambda b: b.reshape(V), lambda b: b.reshape(1, V))
  if config.logits_via_embedding:
    aliases["lm_head.weight"] = "model.shared.weight"
  else:
    transpose("decoder/logits_dense", "lm_head.weight", V, D)
  return out, aliases


# Keys HF itself ignores when loading (relics of old checkpoints).
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


# ----------------------------------------------------------------------------- params


def params_from_hf(state_dict: dict[str, Any], config: Config) -> dict:
  """t5lite params (nested dict of float32 numpy, unboxed) from an HF state dict.

  Tied aliases (encoder/decoder embed_tokens, a tied lm_head) may be absent; when present they must
  equal the shared embedding. An untied config whose lm_head.weight is absent takes the shared
  embedding (HF ties it then). Shape mismatches, missing and unexpected keys raise ValueError."""
  entries, aliases = _entries(config)
  sd = {k: v for k, v in state_dict.items() if k not in _IGNORED}
  if config.num_experts:
    hf_switch.check_experts(sd, config)
  if not config.logits_via_embedding and "lm_head.weight" not in sd:
    shared = entries[0].hf
    if shared in sd:
      sd["lm_head.weight"] = sd[shared]
  missing = [e.hf for e in entries if e.hf not in sd]
  unexpected = sorted(set(sd) - {e.hf for e in entries} - set(aliases))
  if missing or unexpected:
    raise ValueError(f"state dict does not match the {config.family} config: "
                     f"missing keys {missing}, unexpected keys {unexpected}")
  params: dict = {}
  experts: dict = {}  # path -> {expert: its slice}, stacked below
  for e in entries:
    value = _as_float32(sd[e.hf])
    if value.shape != e.hf_shape:
      raise ValueError(f"{e.hf}: expected shape {e.hf_shape}, got {value.shape}")
    node = params
    for part in e.path[:-1]:
      node = node.setdefault(part, {})
    if e.index is None:
      node[e.path[-1]] = np.ascontiguousarray(e.to_ours(value))
    else:
      experts.setdefault(e.path, {})[e.index] = e.to_ours(value)
  for path, slices in experts.items():
    node = params
    for part in path[:-1]:
      node = node[part]
    node[path[-1]] = np.ascontiguousarray(np.stack([slices[i] for i in range(len(slices))]))
  for alias, source in aliases.items():
    if alias in sd and not np.array_equal(_as_float32(sd[alias]), _as_float32(sd[source])):
      raise ValueError(f"{alias} differs from {source}, but the config ties them "
                       "(t5lite shares one embedding; set the HF config's tie_word_embeddings=False "
                       "for a separate lm_head)")
  return params


def params_to_hf(params, config: Config, include_tied: bool = True) -> dict[str, np.ndarray]:
  """An HF state dict (float32 numpy) from t5lite params (boxed or not, numpy or jax).

  With include_tied the key set is `model.state_dict()`'s (aliases as copies); without, it is what
  `save_pretrained` writes."""
  params = nn.meta.unbox(params)
  if set(params) == {"params"}:
    params = params["params"]
  params = layout.unrolled(params)  # a scanned model's stacks -> layers_0, layers_1, ...
  entries, aliases = _entries(config)
  sd: dict[str, np.ndarray] = {}
  used = set()
  for e in entries:
    node = params
    for depth, part in enumerate(e.path):
      if not isinstance(node, dict) or part not in node:
        raise ValueError(f"params are missing {'/'.join(e.path[:depth + 1])} (for {e.hf})")
      node = node[part]
    used.add(e.path)
    shape = e.shape if e.index is None else (config.num_experts,) + e.shape
    if tuple(np.shape(node)) != shape:
      raise ValueError(f"{'/'.join(e.path)} (for {e.hf}): expected shape {shape}, "
                       f"got {tuple(np.shape(node))}")
    value = _as_float32(node) if e.index is None else _as_float32(node[e.index])
    sd[e.hf] = np.ascontiguousarray(e.to_hf(value))
  extra = sorted("/".join(p) for p in _paths(params) if p not in used)
  if extra:
    raise ValueError(f"params have entries with no HF counterpart: {extra}")
  for alias, source in aliases.items():
    # transformers 5's SwitchTransformers ties its stacks' embeddings to `shared` only when
    # tie_word_embeddings: an untied one loads them as separate weights.
    untied_switch = config.num_experts and not config.logits_via_embedding
    if include_tied or (untied_switch and alias.endswith("embed_tokens.weight")):
      sd[alias] = sd[source].copy()
  return sd


def _paths(tree, prefix=()):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _paths(value, prefix + (key,))
    else:
      yield prefix + (key,)


def _as_float32(x) -> np.ndarray:
  if hasattr(x, "detach"):  # a torch tensor
    x = x.detach().float().cpu().numpy()
  return np.asarray(x, dtype=np.float32)


# ----------------------------------------------------------------------------- directories


def load_hf_dir(path, **overrides) -> tuple[Config, dict]:
  """(Config, params) from a `save_pretrained` folder: config.json + model.safetensors, or sharded
  model.safetensors.index.json. Pickled PyTorch weights (pytorch_model.bin) are refused."""
  transformers = _require("transformers")
  path = os.fspath(path)
  hf_config = transformers.AutoConfig.from_pretrained(path)
  config = config_from_hf(hf_config, **overrides)
  single = os.path.join(path, "model.safetensors")
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(single):
    files = [single]
  elif os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    files = [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
  else:
    pickles = [n for n in sorted(os.listdir(path)) if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    found = f" (found only {pickles}, pickled PyTorch weights)" if pickles else ""
    raise FileNotFoundError(
        f"{path}: no model.safetensors or model.safetensors.index.json{found}. t5lite reads "
        "safetensors only and never unpickles checkpoints; convert once with a trusted transformers: "
        "AutoModelForSeq2SeqLM.from_pretrained(path).save_pretrained(path, safe_serialization=True)")
  state_dict: dict[str, np.ndarray] = {}
  for file in files:
    state_dict.update(_read_safetensors(file))
  return config, params_from_hf(state_dict, config)


def _read_safetensors(file: str) -> dict[str, np.ndarray]:
  """All tensors of one safetensors file as float32 numpy (bfloat16 included, which numpy lacks)."""
  _require("safetensors")
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
  with open(file, "rb") as f:
    (header_len,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(header_len))
  header.pop("__metadata__", None)
  if not any(info["dtype"] == "BF16" for info in header.values()):
    return {k: _as_float32(v) for k, v in st_numpy.load_file(file).items()}
  import ml_dtypes  # pylint: disable=g-import-not-at-top  (a jax dependency)
  data = np.memmap(file, dtype=np.uint8, mode="r", offset=8 + header_len)
  out = {}
  for name, info in header.items():
    dtype = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32,
             "F64": np.float64}.get(info["dtype"])
    if dtype is None:
      raise ValueError(f"{file}: {name} has dtype {info['dtype']}; expected a float type")
    start, end = info["data_offsets"]
    out[name] = np.frombuffer(data[start:end], dtype=dtype).reshape(info["shape"]).astype(np.float32)
  return out


def save_hf_dir(config: Config, params, path) -> None:
  """Writes config.json + model.safetensors that `AutoModelForSeq2SeqLM.from_pretrained` loads."""
  _require("safetensors")
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  os.makedirs(path, exist_ok=True)
  hf_config = hf_config_from(config)
  state_dict = params_to_hf(params, config, include_tied=False)
  hf_config.save_pretrained(path)
  st_numpy.save_file(state_dict, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
