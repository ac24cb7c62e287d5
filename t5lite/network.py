"""Encoder, Decoder and EncoderDecoder for T5 (pre-RMSNorm, relative bias) and BART (post-LN, learned positions).

One code path; `Config.family` switches the few places the families differ.
Shapes: B batch, I encoder length, T decoder length, D embed, V vocab.
"""
from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp

from t5lite.attention import make_mask
from t5lite.config import Config
from t5lite.layers import (BATCH, EMBED, LENGTH, VOCAB, Attention, Embed, Mlp, Norm,
                           RelativePositionBias, constrain, declare, kernel_init)
from t5lite.ops import matmul

Array = jax.Array
BART_POSITION_OFFSET = 2  # HF/fairseq BartLearnedPositionalEmbedding


def _dropout(cfg: Config, x: Array, deterministic: bool) -> Array:
  if cfg.dropout_rate > 0 and not deterministic:
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=False)
  return x


def _sublayer(cfg: Config, norm: Norm, fn, x: Array, deterministic: bool) -> Array:
  """Residual block: pre-norm (T5) x + f(norm(x)); post-norm (BART) norm(x + f(x))."""
  if cfg.family == "bart":
    return norm(x + _dropout(cfg, fn(x), deterministic))
  return x + _dropout(cfg, fn(norm(x)), deterministic)


class EncoderLayer(nn.Module):
  config: Config

  @nn.compact
  def __call__(self, x_BID, mask_B1II, bias_1HII, deterministic=True):
    cfg = self.config
    attn = Attention(cfg, name="attention")
    x_BID = _sublayer(cfg, Norm(cfg, name="attention_norm"),
                      lambda y: attn(y, y, mask_B1II, bias_1HII, deterministic), x_BID, deterministic)
    mlp = Mlp(cfg, name="mlp")
    x_BID = _sublayer(cfg, Norm(cfg, name="mlp_norm"), lambda y: mlp(y, deterministic), x_BID,
                      deterministic)
    return constrain(x_BID, (BATCH, LENGTH, EMBED))


class DecoderLayer(nn.Module):
  config: Config

  @nn.compact
  def __call__(self, y_BTD, encoded_BID, self_mask_B1TT, cross_mask_B1TI, bias_1HTT,
               deterministic=True, decode=False):
    cfg = self.config
    self_attn = Attention(cfg, name="self_attention")
    y_BTD = _sublayer(cfg, Norm(cfg, name="self_attention_norm"),
                      lambda z: self_attn(z, z, self_mask_B1TT, bias_1HTT, deterministic, decode),
                      y_BTD, deterministic)
    cross = Attention(cfg, cross=True, name="cross_attention")
    y_BTD = _sublayer(cfg, Norm(cfg, name="cross_attention_norm"),
                      lambda z: cross(z, encoded_BID, cross_mask_B1TI, None, deterministic, decode),
                      y_BTD, deterministic)
    mlp = Mlp(cfg, name="mlp")
    y_BTD = _sublayer(cfg, Norm(cfg, name="mlp_norm"), lambda z: mlp(z, deterministic), y_BTD,
                      deterministic)
    return constrain(y_BTD, (BATCH, LENGTH, EMBED))


def _layer_class(cfg: Config, cls):
  if cfg.remat:
    return nn.remat(cls, static_argnums=(5, 6) if cls is DecoderLayer else (4,))
  return cls


class Encoder(nn.Module):
  config: Config
  embedder: Embed

  @nn.compact
  def __call__(self, tokens_BI, valid_BI, segment_ids_BI=None, positions_BI=None,
               deterministic=True):
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
    layer = _layer_class(cfg, EncoderLayer)
    for i in range(cfg.num_encoder_layers):
      x_BID = layer(cfg, name=f"layers_{i}")(x_BID, mask, bias, deterministic)
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
               deterministic=True, decode=False):
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
    layer = _layer_class(cfg, DecoderLayer)
    for i in range(cfg.num_decoder_layers):
      y_BTD = layer(cfg, name=f"layers_{i}")(y_BTD, encoded_BID, self_mask, cross_mask, bias,
                                             deterministic, decode)
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
             encoder_valid=None, deterministic=True):
    """encoder_valid [B, I] bool defaults to tokens > 0 (seqio pads with 0)."""
    if encoder_valid is None:
      encoder_valid = encoder_input_tokens > 0
    return self.encoder(encoder_input_tokens, encoder_valid, encoder_segment_ids,
                        encoder_positions, deterministic)

  def decode(self, encoded, encoder_valid, decoder_input_tokens, decoder_valid=None,
             encoder_segment_ids=None, decoder_segment_ids=None, decoder_positions=None,
             deterministic=True, decode=False):
    if decoder_valid is None:
      decoder_valid = jnp.ones(decoder_input_tokens.shape, bool)
    return self.decoder(encoded, encoder_valid, decoder_input_tokens, decoder_valid,
                        encoder_segment_ids, decoder_segment_ids, decoder_positions,
                        deterministic, decode)

  def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens=None,
               encoder_segment_ids=None, decoder_segment_ids=None, encoder_positions=None,
               decoder_positions=None, encoder_valid=None, decoder_valid=None,
               deterministic=True):
    """Logits [B, T, V] (float32).

    Validity masks default to seqio's conventions: encoder tokens > 0; decoder positions whose
    target is > 0 (or all, when no targets are given). Packed batches pass segment ids.
    """
    if encoder_valid is None:
      encoder_valid = encoder_input_tokens > 0
    if decoder_valid is None and decoder_target_tokens is not None:
      decoder_valid = decoder_target_tokens > 0
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                          encoder_valid, deterministic)
    return self.decode(encoded, encoder_valid, decoder_input_tokens, decoder_valid,
                       encoder_segment_ids, decoder_segment_ids, decoder_positions,
                       deterministic)
