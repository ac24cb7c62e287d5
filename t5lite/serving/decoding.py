"""Autoregressive decoding with the decoder's KV cache: greedy, beam search and sampling.

Every function is jitted (model, lengths and the sampling knobs are static) and loops with
`jax.lax.while_loop`, one decoder step per iteration, stopping once every sequence has emitted
EOS. Outputs hold the generated tokens only (no decoder start token); after EOS they are
`config.pad_token_id` (0 for T5).

`params` may be boxed (nn.Partitioned) or unboxed, and either the params tree or a variables
dict {'params': ...}. Under `jax.set_mesh(mesh)` + `nn.logical_axis_rules(RULES)` the batch follows
the inputs' sharding (over 'data'); beam search keeps the beams of one example on its shard.

Shapes: B batch, W beams, I encoder length, L decode length, V vocab, D embed.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5lite.model.network import SCAN_AXIS, EncoderDecoder

Array = jax.Array
NEG_INF = -1.0e7  # a finite "minus infinity" for scores: no inf - inf NaNs


def _variables(params: Any) -> dict:
  params = nn.unbox(params)
  if isinstance(params, dict) and "params" in params:
    return {"params": params["params"]}
  return {"params": params}


def _encode(model: EncoderDecoder, variables: dict, tokens_BI: Array,
            encoder_valid_BI: Optional[Array]) -> tuple[Array, Array]:
  """Encoder output [B, I, D] and validity [B, I] (default: tokens != pad_token_id)."""
  if encoder_valid_BI is None:
    encoder_valid_BI = tokens_BI != model.config.pad_token_id
  encoded_BID = model.apply(variables, tokens_BI, encoder_valid=encoder_valid_BI, method="encode")
  return encoded_BID, encoder_valid_BI


def _init_cache(model: EncoderDecoder, variables: dict, encoded_BID: Array, valid_BI: Array,
                max_decode_length: int) -> Any:
  """An empty cache for batch B and max_decode_length steps (XLA drops the unused forward pass)."""
  B = encoded_BID.shape[0]
  _, mutated = model.apply(variables, encoded_BID, valid_BI,
                           jnp.zeros((B, max_decode_length), jnp.int32), decode=True,
                           method="decode", mutable=["cache"])
  return mutated["cache"]


def _cached_step(model: EncoderDecoder, variables: dict, encoded_BID: Array, valid_BI: Array,
                 cache: Any, tokens_B: Array) -> tuple[Array, Any]:
  """One decoder step: logits [B, V] for the next token, and the updated cache."""
  logits_B1V, mutated = model.apply({**variables, "cache": cache}, encoded_BID, valid_BI,
                                    tokens_B[:, None], decode=True, method="decode",
                                    mutable=["cache"])
  return logits_B1V[:, 0], mutated["cache"]


def _token_loop(model: EncoderDecoder, B: int, max_decode_length: int,
                step_fn: Callable[[Any, Array, Array], tuple[Array, Any]], carry0: Any,
                choose_fn: Callable[[Array, Array], Array]) -> Array:
  """The loop shared by greedy, sampling and the uncached reference.

  step_fn(carry, i, previous_tokens_B) -> (logits_BV, carry); choose_fn(logits_BV, i) -> tokens_B.
  Stops at max_decode_length or when every sequence is done (has emitted EOS).
  """
  cfg = model.config
  L = max_decode_length

  def cond(state):
    i, _, _, _, done_B = state
    return (i < L) & ~jnp.all(done_B)

  def body(state):
    i, carry, out_BL, prev_B, done_B = state
    logits_BV, carry = step_fn(carry, i, prev_B)
    tok_B = choose_fn(logits_BV.astype(jnp.float32), i).astype(jnp.int32)
    tok_B = jnp.where(done_B, cfg.pad_token_id, tok_B)
    out_BL = jax.lax.dynamic_update_slice(out_BL, tok_B[:, None], (0, i))
    return i + 1, carry, out_BL, tok_B, done_B | (tok_B == cfg.eos_token_id)

  state = (jnp.array(0, jnp.int32), carry0, jnp.full((B, L), cfg.pad_token_id, jnp.int32),
           jnp.full((B,), cfg.decoder_start_token_id, jnp.int32), jnp.zeros((B,), bool))
  return jax.lax.while_loop(cond, body, state)[2]


def _cached_loop(model, params, encoder_input_tokens, max_decode_length, encoder_valid,
                 choose_fn) -> Array:
  variables = _variables(params)
  encoded_BID, valid_BI = _encode(model, variables, encoder_input_tokens, encoder_valid)
  cache = _init_cache(model, variables, encoded_BID, valid_BI, max_decode_length)
  step_fn = lambda c, i, prev_B: _cached_step(model, variables, encoded_BID, valid_BI, c, prev_B)
  return _token_loop(model, encoder_input_tokens.shape[0], max_decode_length, step_fn, cache,
                     choose_fn)


@functools.partial(jax.jit, static_argnames=("model", "max_decode_length"))
def greedy_decode(model: EncoderDecoder, params: Any, encoder_input_tokens: Array,
                  max_decode_length: int, encoder_valid: Optional[Array] = None) -> Array:
  """Argmax decoding with the KV cache. Returns tokens [B, max_decode_length]."""
  return _cached_loop(model, params, encoder_input_tokens, max_decode_length, encoder_valid,
                      lambda logits_BV, i: jnp.argmax(logits_BV, axis=-1))


def _filter_logits(logits_BV: Array, top_k: int, top_p: float) -> Array:
  """Keeps the top_k largest logits (0 = all), then the smallest set with probability >= top_p."""
  if top_k > 0:
    kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, NEG_INF, logits_BV)
  if top_p < 1.0:
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV  # mass strictly above each token
    kept_BV = (before_BV < top_p) | (jnp.arange(sorted_BV.shape[-1]) == 0)[None]  # keep the best
    cutoff_B1 = jnp.min(jnp.where(kept_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    logits_BV = jnp.where(logits_BV < cutoff_B1, NEG_INF, logits_BV)
  return logits_BV


@functools.partial(jax.jit, static_argnames=("model", "max_decode_length", "temperature",
                                             "top_k", "top_p"))
def sample_decode(model: EncoderDecoder, params: Any, encoder_input_tokens: Array,
                  max_decode_length: int, rng: Array, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, encoder_valid: Optional[Array] = None) -> Array:
  """Ancestral sampling from softmax(logits / temperature), optionally top-k and/or nucleus.

  temperature=0 is argmax. Step i draws with jax.random.fold_in(rng, i): reproducible per rng.
  Returns tokens [B, max_decode_length].
  """
  def choose(logits_BV, i):
    if temperature == 0.0:
      return jnp.argmax(logits_BV, axis=-1)
    logits_BV = _filter_logits(logits_BV / temperature, top_k, top_p)
    return jax.random.categorical(jax.random.fold_in(rng, i), logits_BV, axis=-1)
  return _cached_loop(model, params, encoder_input_tokens, max_decode_length, encoder_valid,
                      choose)


def brevity_penalty(alpha: float | Array, length: Array) -> Array:
  """GNMT / T5 length penalty ((5 + length) / 6) ** alpha; a beam's score is log p / this."""
  return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def _gather_beams(x_BW: Array, beam_idx_BN: Array) -> Array:
  """x [B, W, ...] -> [B, N, ...], taking x[b, beam_idx[b, n]]."""
  idx = jnp.reshape(beam_idx_BN, beam_idx_BN.shape + (1,) * (x_BW.ndim - 2))
  return jnp.take_along_axis(x_BW, idx, axis=1)


def _gather_cache(cache: Any, beam_idx_BW: Array, B: int, W: int) -> Any:
  """Reorders the per-example cache leaves ([B*W, ...]: cached keys/values) by beam.

  Scalars (cache_index, step_index) and the key positions [L] are shared by all examples. A
  scanned decoder's cache (under its `layers` entry) is stacked [N, B*W, ...]: batch is axis 1.
  """
  def gather(path, x):
    stacked = any(getattr(k, "key", None) == SCAN_AXIS for k in path)
    if stacked:  # [N, B*W, ...] -> [B*W, ..., N] and back
      return jnp.moveaxis(gather((), jnp.moveaxis(x, 0, -1)), -1, 0) if x.ndim >= 3 else x
    if x.ndim < 2 or x.shape[0] != B * W:
      return x
    x_BW = jnp.reshape(x, (B, W) + x.shape[1:])
    return jnp.reshape(_gather_beams(x_BW, beam_idx_BW), x.shape)
  return jax.tree_util.tree_map_with_path(gather, cache)


@functools.partial(jax.jit, static_argnames=("model", "max_decode_length", "beam_size"))
def beam_search(model: EncoderDecoder, params: Any, encoder_input_tokens: Array,
                max_decode_length: int, beam_size: int = 4, length_penalty: float = 0.6,
                encoder_valid: Optional[Array] = None) -> tuple[Array, Array]:
  """Beam search with the T5/GNMT length penalty (alpha = length_penalty).

  Returns (tokens [B, W, L], scores [B, W]), best first; a beam's score is its summed log
  probability (EOS included) / brevity_penalty(alpha, its length with EOS). Each step takes the
  2W best extensions of the live beams: those ending in EOS within the top W compete for the W
  finished slots (as in fairseq and HF), the W best not ending in EOS are the next live beams.
  The loop stops at max_decode_length or once no live beam can still beat the worst finished one;
  live beams (no EOS) then compete for the finished slots too, scored at their length.
  With beam_size=1 and length_penalty=0 this is greedy decoding.
  """
  cfg = model.config
  B, W, L = encoder_input_tokens.shape[0], beam_size, max_decode_length
  variables = _variables(params)
  encoded_BID, valid_BI = _encode(model, variables, encoder_input_tokens, encoder_valid)
  encoded_ND = jnp.repeat(encoded_BID, W, axis=0)  # N = B * W, beams of one example adjacent
  valid_NI = jnp.repeat(valid_BI, W, axis=0)
  cache = _init_cache(model, variables, encoded_ND, valid_NI, L)
  alpha = jnp.asarray(length_penalty, jnp.float32)
  max_penalty = brevity_penalty(alpha, jnp.array(L))

  def cond(state):
    i, _, _, alive_logp_BW, _, fin_scores_BW, fin_flags_BW = state
    # logp only falls as beams grow and the penalty is largest at L: the best a live beam can do.
    best_alive_B = alive_logp_BW[:, 0] / max_penalty
    worst_fin_B = jnp.min(jnp.where(fin_flags_BW, fin_scores_BW, NEG_INF), axis=1)
    done_B = jnp.all(fin_flags_BW, axis=1) & (worst_fin_B >= best_alive_B)
    return (i < L) & ~jnp.all(done_B)

  def body(state):
    i, cache, alive_BWL, alive_logp_BW, fin_BWL, fin_scores_BW, fin_flags_BW = state
    prev_BW = jnp.where(i == 0, cfg.decoder_start_token_id,
                        jax.lax.dynamic_index_in_dim(alive_BWL, jnp.maximum(i - 1, 0), axis=2,
                                                     keepdims=False))
    logits_NV, cache = _cached_step(model, variables, encoded_ND, valid_NI, cache,
                                    jnp.reshape(prev_BW, (B * W,)))
    V = logits_NV.shape[-1]
    logp_BWV = jnp.reshape(jax.nn.log_softmax(logits_NV.astype(jnp.float32), axis=-1), (B, W, V))
    cand_BWV = alive_logp_BW[:, :, None] + logp_BWV
    # The 2W best extensions; at most W of them end in EOS, so at least W stay alive.
    top_logp_BC, top_idx_BC = jax.lax.top_k(jnp.reshape(cand_BWV, (B, W * V)), 2 * W)
    top_beam_BC, top_tok_BC = top_idx_BC // V, (top_idx_BC % V).astype(jnp.int32)
    top_BCL = _gather_beams(alive_BWL, top_beam_BC)
    top_BCL = jax.lax.dynamic_update_slice(top_BCL, top_tok_BC[:, :, None], (0, 0, i))
    eos_BC = top_tok_BC == cfg.eos_token_id
    # As fairseq and HF: an EOS extension finishes a hypothesis only when it ranks in the top W
    # (so one beam without a length penalty is greedy); ranks W..2W only feed the live beams.
    finishes_BC = eos_BC & (jnp.arange(2 * W) < W)[None]

    # Live beams: the W best extensions that do not end in EOS.
    alive_logp_BW, keep_BW = jax.lax.top_k(jnp.where(eos_BC, NEG_INF, top_logp_BC), W)
    alive_BWL = _gather_beams(top_BCL, keep_BW)
    cache = _gather_cache(cache, _gather_beams(top_beam_BC, keep_BW), B, W)

    # Finished: merge the new EOS-ended candidates into the W best so far.
    new_scores_BC = jnp.where(finishes_BC, top_logp_BC / brevity_penalty(alpha, i + 1), NEG_INF)
    fin_BWL, fin_scores_BW, fin_flags_BW = _merge_finished(
        fin_BWL, fin_scores_BW, fin_flags_BW, top_BCL, new_scores_BC, finishes_BC, W)
    return i + 1, cache, alive_BWL, alive_logp_BW, fin_BWL, fin_scores_BW, fin_flags_BW

  pad_BWL = jnp.full((B, W, L), cfg.pad_token_id, jnp.int32)
  first_logp_W = jnp.where(jnp.arange(W) == 0, 0.0, NEG_INF)  # W copies of one start: expand one
  state = (jnp.array(0, jnp.int32), cache, pad_BWL,
           jnp.broadcast_to(first_logp_W[None], (B, W)).astype(jnp.float32), pad_BWL,
           jnp.full((B, W), NEG_INF, jnp.float32), jnp.zeros((B, W), bool))
  i, _, alive_BWL, alive_logp_BW, fin_BWL, fin_scores_BW, fin_flags_BW = jax.lax.while_loop(
      cond, body, state)
  # Live beams compete too (only ones that can still win do: see cond), scored at their length i.
  alive_scores_BW = alive_logp_BW / brevity_penalty(alpha, i)
  fin_BWL, fin_scores_BW, _ = _merge_finished(
      fin_BWL, fin_scores_BW, fin_flags_BW, alive_BWL, alive_scores_BW,
      alive_logp_BW > NEG_INF / 2, W)
  return fin_BWL, fin_scores_BW


def _merge_finished(seq_BWL, scores_BW, flags_BW, new_BCL, new_scores_BC, new_flags_BC, W):
  """The W best flagged sequences of the two sets, best first (unflagged rank last)."""
  seq_BXL = jnp.concatenate([seq_BWL, new_BCL], axis=1)
  scores_BX = jnp.concatenate([scores_BW, new_scores_BC], axis=1)
  flags_BX = jnp.concatenate([flags_BW, new_flags_BC], axis=1)
  scores_BX = jnp.where(flags_BX, scores_BX, NEG_INF)
  top_scores_BW, top_BW = jax.lax.top_k(scores_BX, W)
  return _gather_beams(seq_BXL, top_BW), top_scores_BW, _gather_beams(flags_BX, top_BW)
