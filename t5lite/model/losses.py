"""Cross-entropy with z-loss over integer labels, weighted; accuracy; the summed loss of a batch
(with a mixture-of-experts model's router losses)."""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from t5lite.model import moe

Array = jax.Array
MODEL_INPUTS = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                "encoder_segment_ids", "decoder_segment_ids", "encoder_positions",
                "decoder_positions")
SUMS = ("loss", "z_loss", "accuracy", "weight_sum")
ROUTER_SUMS = tuple(f"router_{name}" for name in moe.STATS)  # means over sparse layers


def model_inputs(batch: Mapping[str, Array]) -> dict:
  return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def batch_loss(params, batch: Mapping[str, Array], *, model, z_loss: float, dropout_rng=None,
               train: bool = False, aux_scale=None, jitter_rng=None):
  """Summed loss over a (micro)batch, and the sums (sum_keys) the metrics need.

  A mixture-of-experts model (train: its training pass) adds its router losses, averaged over
  the sparse layers and weighted by their Config factors, times aux_scale: by default this
  batch's target tokens, so that loss / weight_sum = cross-entropy + router losses (train_step
  passes the whole batch's tokens / microbatches). Its sums also hold ROUTER_SUMS (means)."""
  deterministic = dropout_rng is None
  if not model.config.num_experts:
    logits = model.apply({"params": params}, **model_inputs(batch), deterministic=deterministic,
                         rngs=None if deterministic else {"dropout": dropout_rng})
  else:
    rngs = {k: v for k, v in (("dropout", dropout_rng), ("jitter", jitter_rng)) if v is not None}
    logits, sown = model.apply({"params": params}, **model_inputs(batch),
                               deterministic=deterministic, train=train, rngs=rngs or None,
                               mutable=[moe.COLLECTION])
  weights = batch["decoder_loss_weights"]
  loss, z, weight_sum = cross_entropy_with_z_loss(
      logits, batch["decoder_target_tokens"], weights, z_loss)
  acc = accuracy_sum(logits, batch["decoder_target_tokens"], weights)
  sums = {"loss": loss, "z_loss": z, "accuracy": acc, "weight_sum": weight_sum}
  if not model.config.num_experts:
    return loss, sums
  stats = moe.collect_stats(sown[moe.COLLECTION])
  sums.update({f"router_{k}": v for k, v in stats.items()})
  scale = jnp.maximum(weight_sum, 1.0) if aux_scale is None else aux_scale
  return loss + scale * router_loss(model.config, sums), sums


def sum_keys(config) -> tuple[str, ...]:
  """The keys of batch_loss's sums for a model of `config`."""
  return SUMS + (ROUTER_SUMS if config.num_experts else ())


def router_loss(config, means: Mapping[str, Array]) -> Array:
  """The router losses added to a mixture-of-experts model's loss per target token."""
  return (config.router_aux_loss_factor * means["router_aux_loss"]
          + config.router_z_loss_factor * means["router_z_loss"])


def router_metrics(config, sums: Mapping[str, Array], denom: Array, microbatches: int) -> dict:
  """A mixture-of-experts step's metrics from sums accumulated over `microbatches`: loss (the
  trained one: per-token loss + router losses), cross_entropy apart, and ROUTER_SUMS' means."""
  means = {k: sums[k] / microbatches for k in ROUTER_SUMS}
  return {"loss": sums["loss"] / denom + router_loss(config, means),
          "cross_entropy": (sums["loss"] - sums["z_loss"]) / denom, **means}


def eval_sums(params, batch: Mapping[str, Array], *, model, z_loss: float) -> dict:
  """batch_loss's sums without dropout (evaluation)."""
  return batch_loss(params, batch, model=model, z_loss=z_loss)[1]


def cross_entropy_with_z_loss(logits_BTV: Array, targets_BT: Array, weights_BT: Array,
                              z_loss: float = 1e-4) -> tuple[Array, Array, Array]:
  """Summed (weighted) cross-entropy + z_loss * log(Z)^2, as in t5x; all in float32.

  Returns (total_loss_sum, z_loss_sum, weight_sum); divide by weight_sum for per-token means.
  """
  logits = logits_BTV.astype(jnp.float32)
  weights = weights_BT.astype(jnp.float32)
  log_z_BT = jax.nn.logsumexp(logits, axis=-1)
  label_logit_BT = label_logits(logits, targets_BT)
  nll_BT = log_z_BT - label_logit_BT
  z_BT = z_loss * jnp.square(log_z_BT)
  return jnp.sum((nll_BT + z_BT) * weights), jnp.sum(z_BT * weights), jnp.sum(weights)


def label_logits(logits_BTV: Array, targets_BT: Array) -> Array:
  """logits[b, t, targets[b, t]] as a masked sum over the vocabulary (exact: one nonzero term).

  Unlike take_along_axis, whose gradient is a scatter into [B, T, V] (slow on XLA:CPU), the
  masked sum and its gradient fuse into elementwise loops over the logits.
  """
  vocab_BTV = jax.lax.broadcasted_iota(targets_BT.dtype, logits_BTV.shape, logits_BTV.ndim - 1)
  is_label_BTV = vocab_BTV == targets_BT[..., None]
  return jnp.sum(jnp.where(is_label_BTV, logits_BTV, jnp.zeros((), logits_BTV.dtype)), axis=-1)


def token_log_likelihoods(logits_BTV: Array, targets_BT: Array) -> Array:
  """log p(target token) at each position [B, T] (float32)."""
  logp = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, targets_BT[..., None], axis=-1)[..., 0]


def accuracy_sum(logits_BTV: Array, targets_BT: Array, weights_BT: Array) -> Array:
  """Weighted count of positions whose target has the largest logit.

  label logit >= max logit rather than argmax == target: the same except on exact ties (then
  counted correct), and a max reduce (shared with logsumexp's) is ~8x cheaper than an argmax
  over 32k logits on XLA:CPU.
  """
  logits = jax.lax.stop_gradient(logits_BTV)
  max_BT = jnp.max(logits, axis=-1)
  correct = (label_logits(logits, targets_BT) >= max_BT).astype(jnp.float32)
  return jnp.sum(correct * weights_BT.astype(jnp.float32))
