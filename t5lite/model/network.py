"""Encoder, Decoder and EncoderDecoder for T5 (pre-RMSNorm, relative bias) and BART (post-LN, learned positions).

One code path; `Config.family` switches the few places the families differ.
Shapes: B batch, I encoder length, T decoder length, D embed, V vocab, N layers.

Layer stacks. Unrolled (default): parameters `layers_0`, `layers_1`, ... With
`Config.scan_layers=True` each stack is one `nn.scan` over a single `layers` entry whose
parameters are stacked [N, ...] with the leading logical axis `layers` (replicated by the rules
table): XLA compiles one layer body instead of N. The relative-position bias is computed once per
stack outside the scan and broadcast into it. `t5lite.layout` converts parameters, optimizer state
and checkpoints between the two layouts.

Mixture of experts (Config.num_experts > 0): the MLP of the layers Config.sparse_layers names is a
moe.SparseMlp (layers get `sparse=True`). A scanned stack then scans over blocks of P layers, P
the period of its dense/sparse pattern (2 for every other layer sparse): `layers` holds
`block_0` ... `block_{P-1}`, each stacked [N / P, ...] (stacks.py converts this too).

Decoding: the scanned decoder decodes too (`decode=True`). Its KV cache is stacked like its
parameters: every cache variable of the `layers` entry has a leading [N] axis (cached keys
[N, B, L, H, K], cache_index [N]); decoding.py's beam search gathers such leaves on axis 1.

Rematerialisation (`Config.remat_policy`) wraps each layer in `nn.remat` (inside the scan when
scanned); the flags `deterministic` / `decode` are module attributes, so they are static.
Decoding never remats (no backward pass).
"""
from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from t5lite.model.attention import Attention
from t5lite.model.masks import make_mask
from t5lite.model.config import Config
from t5lite.model.layers import BATCH, EMBED, LENGTH, VOCAB, Embed, Mlp, Norm, RelativePositionBias, constrain, declare, kernel_init
from t5lite.model.moe import COLLECTION as ROUTER_COLLECTION, SparseMlp
from t5lite.model.ops import matmul
from t5lite.model.stacks import BLOCK, period

Array = jax.Array
BART_POSITION_OFFSET = 2  # HF/fairseq BartLearnedPositionalEmbedding
# Names of the activations the "save_attn_mlp_outputs" remat policy keeps.
ATTENTION_OUT, MLP_OUT = "attention_out", "mlp_out"
SCAN_AXIS = "layers"  # the logical name of stacked parameters' leading axis (partitioning.RULES)


def remat_policy(name: str):
  """jax.checkpoint policy for a Config.remat_policy name other than "none"."""
  if name == "full":
    return None  # jax.checkpoint's default: keep only the layer's inputs
  if name == "minimal":
    return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  if name == "save_attn_mlp_outputs":
    return jax.checkpoint_policies.save_only_these_names(ATTENTION_OUT, MLP_OUT)
  raise ValueError(f"remat policy {name!r} has no jax.checkpoint policy")


def _dropout(cfg: Config, x: Array, deterministic: bool) -> Array:
  if cfg.dropout_rate > 0 and not deterministic:
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=False)
  return x


def _sublayer(cfg: Config, norm: Norm, fn, x: Array, deterministic: bool) -> Array:
  """Residual block: pre-norm (T5) x + f(norm(x)); post-norm (BART) norm(x + f(x))."""
  if cfg.family == "bart":
    return norm(x + _dropout(cfg, fn(x), deterministic))
  return x + _dropout(cfg, fn(norm(x)), deterministic)


def _mlp(cfg: Config, sparse: bool, train: bool) -> nn.Module:
  return SparseMlp(cfg, train=train, name="mlp") if sparse else Mlp(cfg, name="mlp")


class EncoderLayer(nn.Module):
  """sparse: a mixture-of-experts MLP; train: the training pass (the router's capacity, jitter)."""
  config: Config
  deterministic: bool = True
  sparse: bool = False
  train: bool = False

  @nn.compact
  def __call__(self, x_BID, mask_B1II, bias_1HII):
    cfg, det = self.config, self.deterministic
    attn = Attention(cfg, name="attention")
    x_BID = _sublayer(cfg, Norm(cfg, name="attention_norm"),
                      lambda y: checkpoint_name(attn(y, y, mask_B1II, bias_1HII, det),
                                                ATTENTION_OUT),
                      x_BID, det)
    mlp = _mlp(cfg, self.sparse, self.train)
    x_BID = _sublayer(cfg, Norm(cfg, name="mlp_norm"),
                      lambda y: checkpoint_name(mlp(y, det), MLP_OUT), x_BID, det)
    return constrain(x_BID, (BATCH, LENGTH, EMBED))


class DecoderLayer(nn.Module):
  config: Config
  deterministic: bool = True
  decode: bool = False
  sparse: bool = False
  train: bool = False

  @nn.compact
  def __call__(self, y_BTD, encoded_BID, self_mask_B1TT, cross_mask_B1TI, bias_1HTT):
    cfg, det, decode = self.config, self.deterministic, self.decode
    self_attn = Attention(cfg, name="self_attention")
    y_BTD = _sublayer(cfg, Norm(cfg, name="self_attention_norm"),
                      lambda z: checkpoint_name(
                          self_attn(z, z, self_mask_B1TT, bias_1HTT, det, decode), ATTENTION_OUT),
                      y_BTD, det)
    cross = Attention(cfg, cross=True, name="cross_attention")
    y_BTD = _sublayer(cfg, Norm(cfg, name="cross_attention_norm"),
                      lambda z: checkpoint_name(
                          cross(z, encoded_BID, cross_mask_B1TI, None, det, decode), ATTENTION_OUT),
                      y_BTD, det)
    mlp = _mlp(cfg, self.sparse, self.train)
    y_BTD = _sublayer(cfg, Norm(cfg, name="mlp_norm"),
                      lambda z: checkpoint_name(mlp(z, det), MLP_OUT), y_BTD, det)
    return constrain(y_BTD, (BATCH, LENGTH, EMBED))


def _scan_body(layer: nn.Module, carry_BLD: Array, *broadcast):
  return layer(carry_BLD, *broadcast), None


class _Block(nn.Module):
  """P consecutive layers of a scanned stack whose dense/sparse pattern repeats every P layers."""
  layer: type
  config: Config
  pattern: tuple  # sparse or not, per layer of the block
  flags: tuple  # the layers' other module attributes, as (name, value) pairs

  @nn.compact
  def __call__(self, x_BLD: Array, *broadcast) -> Array:
    for j, sparse in enumerate(self.pattern):
      x_BLD = self.layer(self.config, sparse=sparse, name=f"{BLOCK}{j}", **dict(self.flags))(
          x_BLD, *broadcast)
    return x_BLD


def _stack(cls, cfg: Config, stack: str, x_BLD: Array, *broadcast, **flags) -> Array:
  """Runs the layers of `stack` ("encoder" or "decoder") of `cls` (flags: its module
  attributes) over x; the other arguments (masks, bias, encoder output) are the same for every
  layer. Call it inside a compact method: the layers become children of that module."""
  sparse = cfg.sparse_layers(stack)
  num_layers = len(sparse)
  if cfg.remat_policy != "none" and not flags.get("decode", False):
    # prevent_cse only matters outside a scan (inside, the loop already stops XLA's CSE).
    cls = nn.remat(cls, policy=remat_policy(cfg.remat_policy), prevent_cse=not cfg.scan_layers)
  if not cfg.scan_layers:
    for i in range(num_layers):
      x_BLD = cls(cfg, name=f"layers_{i}", sparse=sparse[i], **flags)(x_BLD, *broadcast)
    return x_BLD
  p = period(sparse)
  scan = nn.scan(_scan_body, variable_axes={"params": 0, "cache": 0, ROUTER_COLLECTION: 0},
                 split_rngs={"params": True, "dropout": True, "jitter": True},
                 in_axes=(nn.broadcast,) * len(broadcast), length=num_layers // p,
                 metadata_params={nn.PARTITION_NAME: SCAN_AXIS})
  if p == 1:
    body = cls(cfg, name=SCAN_AXIS, sparse=sparse[0], **flags)
  else:
    body = _Block(cls, cfg, sparse[:p], tuple(sorted(flags.items())), name=SCAN_AXIS)
  x_BLD, _ = scan(body, x_BLD, *broadcast)
  return x_BLD


class Encoder(nn.Module):
  config: Config
  embedder: Embed

  @nn.compact
  def __call__(self, tokens_BI, valid_BI, segment_ids_BI=None, positions_BI=None,
               deterministic=True, train=False):
    cfg = self.config
    x_BID = self.embedder(tokens_BI)
    mask = make_mask(cfg.attention_kernel, valid_BI, valid_BI, segment_ids_BI, segment_ids_BI)
    bias = None
    if cfg.family == "bart":
      x_BID = _embed_positions(cfg, x_BID, positions_BI, name="pos_embedder", module=self)
      x_BID = Norm(cfg, name="embed_norm")(x_BID)
    else:
      pos_I = jnp.arange(tokens_BI.shape[1])
      bias = RelativePositionBias(cfg, bidirectional=True, name="relpos_bias")(pos_I, pos_I)
    x_BID = _dropout(cfg, x_BID, deterministic)
    x_BID = _stack(EncoderLayer, cfg, "encoder", x_BID, mask, bias,
                   deterministic=deterministic, train=train)
    if cfg.family == "t5":
      x_BID = Norm(cfg, name="final_norm")(x_BID)
    return _dropout(cfg, x_BID, deterministic)


def _embed_positions(cfg: Config, x_BLD, positions_BL, name: str, module: nn.Module, start=0):
  """BART's learned absolute positions (offset 2); positions default to start + arange(L)."""
  if positions_BL is None:
    positions_BL = jnp.broadcast_to(start + jnp.arange(x_BLD.shape[1]), x_BLD.shape[:2])
  table = Embed(cfg, cfg.max_position_embeddings + BART_POSITION_OFFSET, vocab_axis=None,
                name=name, parent=module)
  x_BLD = x_BLD * jnp.asarray(cfg.emb_dim ** 0.5 if cfg.scale_embedding else 1.0, x_BLD.dtype)
  return x_BLD + table(positions_BL + BART_POSITION_OFFSET)


class Decoder(nn.Module):
  config: Config
  embedder: Embed

  @nn.compact
  def __call__(self, encoded_BID, encoder_valid_BI, tokens_BT, valid_BT,
               encoder_segment_ids_BI=None, segment_ids_BT=None, positions_BT=None,
               deterministic=True, decode=False, train=False):
    cfg = self.config
    y_BTD = self.embedder(tokens_BT)
    T = tokens_BT.shape[1]
    bias, pos_start = None, 0
    if decode and self.has_variable("cache", "step_index"):
      # One step of cached decoding: the query sits at `index`; the keys span the whole cache.
      step = self.variable("cache", "step_index", jnp.zeros, (), jnp.int32)
      index = step.value
      step.value = index + 1
      k_pos_K = self.variable("cache", "positions", jnp.arange, 0).value
      self_mask = jnp.broadcast_to((k_pos_K <= index)[None, None, None, :],
                                   (tokens_BT.shape[0], 1, T, k_pos_K.shape[0]))
      if cfg.family == "t5":
        bias = RelativePositionBias(cfg, bidirectional=False, name="relpos_bias")(
            jnp.reshape(index, (1,)), k_pos_K)
      pos_start = index
    else:
      if decode:  # the first decode=True call only creates the cache, sized by this input
        self.variable("cache", "step_index", jnp.zeros, (), jnp.int32)
        self.variable("cache", "positions", jnp.arange, T)
      self_mask = make_mask(cfg.attention_kernel, valid_BT, valid_BT, segment_ids_BT,
                            segment_ids_BT, causal=True)
      if cfg.family == "t5":
        pos_T = jnp.arange(T)
        bias = RelativePositionBias(cfg, bidirectional=False, name="relpos_bias")(pos_T, pos_T)
    cross_mask = make_mask(cfg.attention_kernel, valid_BT, encoder_valid_BI, segment_ids_BT,
                           encoder_segment_ids_BI)
    if cfg.family == "bart":
      y_BTD = _embed_positions(cfg, y_BTD, positions_BT, name="pos_embedder", module=self,
                               start=pos_start)
      y_BTD = Norm(cfg, name="embed_norm")(y_BTD)
    y_BTD = _dropout(cfg, y_BTD, deterministic)
    y_BTD = _stack(DecoderLayer, cfg, "decoder", y_BTD, encoded_BID, self_mask,
                   cross_mask, bias, deterministic=deterministic, decode=decode, train=train)
    if cfg.family == "t5":
      y_BTD = Norm(cfg, name="final_norm")(y_BTD)
    y_BTD = _dropout(cfg, y_BTD, deterministic)
    if cfg.logits_via_embedding:
      if cfg.family == "t5":
        y_BTD = y_BTD * jnp.asarray(cfg.emb_dim ** -0.5, y_BTD.dtype)
      logits_BTV = self.embedder.attend(y_BTD)
    else:
      w = declare(self, "logits_dense", kernel_init(cfg), (EMBED, VOCAB),
                  (cfg.emb_dim, cfg.vocab_size), cfg)
      # Operands in the activation dtype, float32 accumulation and result (torch.autocast's
      # LM head; with float32 activations the same float32 product as before).
      logits_BTV = matmul(y_BTD, w.astype(y_BTD.dtype), float32_result=True)
    if cfg.family == "bart":
      bias_V = declare(self, "final_logits_bias", nn.initializers.zeros, (VOCAB,),
                       (cfg.vocab_size,), cfg)
      logits_BTV = logits_BTV + bias_V.astype(jnp.float32)[None, None]
    return constrain(logits_BTV.astype(jnp.float32), (BATCH, LENGTH, VOCAB))


class EncoderDecoder(nn.Module):
  """The whole model. `__call__` is the training forward pass (teacher forcing)."""
  config: Config

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(cfg, cfg.vocab_size)
    self.encoder = Encoder(cfg, self.token_embedder)
    self.decoder = Decoder(cfg, self.token_embedder)

  def encode(self, encoder_input_tokens, encoder_segment_ids=None, encoder_positions=None,
             encoder_valid=None, deterministic=True, train=False):
    """encoder_valid [B, I] bool defaults to tokens > 0 (seqio pads with 0)."""
    if encoder_valid is None:
      encoder_valid = encoder_input_tokens > 0
    return self.encoder(encoder_input_tokens, encoder_valid, encoder_segment_ids,
                        encoder_positions, deterministic, train)

  def decode(self, encoded, encoder_valid, decoder_input_tokens, decoder_valid=None,
             encoder_segment_ids=None, decoder_segment_ids=None, decoder_positions=None,
             deterministic=True, decode=False, train=False):
    if decoder_valid is None:
      decoder_valid = jnp.ones(decoder_input_tokens.shape, bool)
    return self.decoder(encoded, encoder_valid, decoder_input_tokens, decoder_valid,
                        encoder_segment_ids, decoder_segment_ids, decoder_positions,
                        deterministic, decode, train)

  def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens=None,
               encoder_segment_ids=None, decoder_segment_ids=None, encoder_positions=None,
               decoder_positions=None, encoder_valid=None, decoder_valid=None,
               deterministic=True, train=False):
    """Logits [B, T, V] (float32).

    Validity masks default to seqio's conventions: encoder tokens > 0; decoder positions whose
    target is > 0 (or all, when no targets are given). Packed batches pass segment ids.
    train: the training pass of sparse layers (train capacity factor, router jitter); dropout
    follows `deterministic`.
    """
    if encoder_valid is None:
      encoder_valid = encoder_input_tokens > 0
    if decoder_valid is None and decoder_target_tokens is not None:
      decoder_valid = decoder_target_tokens > 0
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                          encoder_valid, deterministic, train)
    return self.decode(encoded, encoder_valid, decoder_input_tokens, decoder_valid,
                       encoder_segment_ids, decoder_segment_ids, decoder_positions,
                       deterministic, train=train)
