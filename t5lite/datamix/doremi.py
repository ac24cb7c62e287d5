"""DoReMi's domain reweighting (Xie et al. 2023, "DoReMi: Optimizing Data Mixtures Speeds Up
Language Model Pretraining", NeurIPS 2023, arXiv:2305.10429, Algorithm 1): the pure, jitted step.

A proxy model is trained with group DRO against a fixed reference model over the k domains
(tasks) of a mixture. Each step t, on a batch sampled uniformly over the domains:

  λ_t[i] = Σ_{x∈B_i} Σ_j max(ℓ_θ,j(x) − ℓ_ref,j(x), 0) / Σ_{x∈B_i} |x|   per-domain excess loss
  α'_t   = α_{t−1} ⊙ exp(η λ_t)                                          exponentiated gradient
  α_t    = (1 − c) α'_t / Σ_i α'_t[i] + c u                              smoothed toward uniform u
  θ_t    = θ_{t−1} − optimizer(∇_θ Σ_i α_t[i] L_i(θ_{t−1}))              L_i: per-token mean loss

with α_0 = u; the result is ᾱ = (1/T) Σ_{t=1..T} α_t (the running sum is part of the state, so a
resumed run continues it exactly). ℓ is the per-token cross-entropy of the target tokens (one
forward of each model on the packed batch: tokens are assigned to domains by the batch's
`decoder_task_ids`, so a row may hold several domains). The proxy's L_i also carries train's
z-loss, as train() does; λ does not.

Choices the paper leaves open:
  - A domain with no target token in a batch keeps its previous λ (0 before its first), as the
    authors' implementation does (github.com/sangmichaelxie/doremi, trainer.py, doremiv1);
    its term of the proxy's objective is 0. (λ = 0 would push an unsampled domain down.)
  - A step the non-finite guard skips (training/step.apply_update) leaves α and λ as they were; the
    average still counts it (α_t = α_{t−1}).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from t5lite.data.feed.features import TASK_IDS
from t5lite.model import losses
from t5lite.runtime import partitioning
from t5lite.model.network import EncoderDecoder
from t5lite.training.state import TrainState
from t5lite.training.step import apply_update



@flax.struct.dataclass
class DoremiState(TrainState):
  """The proxy's TrainState (so restore_params, score and eval read its folder) and DoReMi's:
  alpha [k] = α_t, alpha_sum [k] = Σ_{s≤t} α_s, excess [k] = the last λ of each domain."""
  alpha: jax.Array
  alpha_sum: jax.Array
  excess: jax.Array


def new_state(state: TrainState, num_domains: int) -> DoremiState:
  """DoReMi's state around a fresh TrainState: α_0 uniform, nothing summed."""
  k = num_domains
  return DoremiState(**_fields(state), alpha=jnp.full((k,), 1.0 / k, jnp.float32),
                     alpha_sum=jnp.zeros((k,), jnp.float32), excess=jnp.zeros((k,), jnp.float32))


def state_shardings(shardings: TrainState, mesh) -> DoremiState:
  """training/state.state_shardings' shardings with DoReMi's [k] vectors replicated."""
  rep = partitioning.replicated(mesh)
  return DoremiState(**_fields(shardings), alpha=rep, alpha_sum=rep, excess=rep)


def _fields(state: TrainState) -> dict[str, Any]:
  return {f: getattr(state, f) for f in TrainState.__dataclass_fields__}


def token_losses(logits_BTV: jax.Array, targets_BT: jax.Array,
                 z_loss: float) -> tuple[jax.Array, jax.Array]:
  """(cross-entropy [B, T], z-loss [B, T]) per target position, float32."""
  logits = logits_BTV.astype(jnp.float32)
  log_z_BT = jax.nn.logsumexp(logits, axis=-1)
  nll_BT = log_z_BT - losses.label_logits(logits, targets_BT)
  return nll_BT, z_loss * jnp.square(log_z_BT)


def domain_mask(task_ids_BT: jax.Array, weights_BT: jax.Array, num_domains: int) -> jax.Array:
  """[B, T, k]: 1 where a target token (weight > 0) belongs to domain i (task id i + 1)."""
  domains_K = jnp.arange(1, num_domains + 1, dtype=task_ids_BT.dtype)
  is_domain_BTK = task_ids_BT[..., None] == domains_K[None, None, :]
  return (is_domain_BTK & (weights_BT[..., None] > 0)).astype(jnp.float32)


def domain_sums(values_BT: jax.Array, mask_BTK: jax.Array) -> jax.Array:
  """[k]: the sum of values_BT over each domain's tokens."""
  return jnp.einsum("bt,btk->k", values_BT.astype(jnp.float32), mask_BTK)


def excess_loss(proxy_nll_BT: jax.Array, reference_nll_BT: jax.Array, mask_BTK: jax.Array,
                previous_K: jax.Array) -> jax.Array:
  """λ [k]: each domain's clipped per-token excess loss, averaged over its tokens; a domain
  without tokens keeps previous_K."""
  tokens_K = jnp.sum(mask_BTK, axis=(0, 1))
  clipped_BT = jnp.maximum(proxy_nll_BT - reference_nll_BT, 0.0)
  lam_K = domain_sums(clipped_BT, mask_BTK) / jnp.maximum(tokens_K, 1.0)
  return jnp.where(tokens_K > 0, lam_K, previous_K)


def update_weights(alpha_K: jax.Array, lam_K: jax.Array, eta: float,
                   smoothing: float) -> jax.Array:
  """α_t = (1 − c) normalise(α_{t−1} ⊙ exp(η λ_t)) + c/k, computed in log space (a softmax)."""
  k = alpha_K.shape[0]
  tilted_K = jax.nn.softmax(jnp.log(alpha_K) + eta * lam_K)
  return (1.0 - smoothing) * tilted_K + smoothing / k


def doremi_step(state: DoremiState, reference_params, batch: Mapping[str, jax.Array], *,
                model: EncoderDecoder, reference_model: EncoderDecoder,
                tx: optax.GradientTransformation, schedule: Callable, z_loss: float, eta: float,
                smoothing: float, dropout_seed: Optional[int] = None):
  """One DoReMi step (the module docstring): (the next DoremiState, metrics)."""
  k = state.alpha.shape[0]
  inputs = losses.model_inputs(batch)
  targets_BT = batch["decoder_target_tokens"]
  mask_BTK = domain_mask(batch[TASK_IDS], batch["decoder_loss_weights"], k)
  tokens_K = jnp.sum(mask_BTK, axis=(0, 1))
  ref_logits = reference_model.apply({"params": reference_params}, **inputs, deterministic=True)
  ref_nll_BT = jax.lax.stop_gradient(token_losses(ref_logits, targets_BT, 0.0)[0])
  dropout_rng = None
  if model.config.dropout_rate > 0 and dropout_seed is not None:
    dropout_rng = jax.random.fold_in(jax.random.key(dropout_seed), state.step)

  def objective(params):
    logits = model.apply({"params": params}, **inputs, deterministic=dropout_rng is None,
                         rngs=None if dropout_rng is None else {"dropout": dropout_rng})
    nll_BT, z_BT = token_losses(logits, targets_BT, z_loss)
    lam_K = excess_loss(jax.lax.stop_gradient(nll_BT), ref_nll_BT, mask_BTK, state.excess)
    alpha_K = update_weights(state.alpha, lam_K, eta, smoothing)
    mean_K = domain_sums(nll_BT + z_BT, mask_BTK) / jnp.maximum(tokens_K, 1.0)  # L_i, 0 if absent
    loss = jnp.sum(jax.lax.stop_gradient(alpha_K) * mean_K)
    aux = {"lam": lam_K, "alpha": alpha_K, "nll_sum": domain_sums(nll_BT, mask_BTK)}
    return loss, aux

  (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  stepped, grad_norm = apply_update(state, grads, loss, tx)
  ok = stepped.guard["consecutive"] == 0  # the guard applied this step
  alpha_K = jnp.where(ok, aux["alpha"], state.alpha)
  lam_K = jnp.where(ok, aux["lam"], state.excess)
  new = stepped.replace(alpha=alpha_K, alpha_sum=state.alpha_sum + alpha_K, excess=lam_K)
  present = tokens_K > 0
  metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": schedule(state.step),
             "skipped_steps": stepped.guard["skipped"], "guard": stepped.guard,
             "target_tokens": jnp.sum(tokens_K),
             "domain_weight": alpha_K, "average_weight": new.alpha_sum / new.step.astype(
                 jnp.float32), "excess_loss": lam_K, "domain_tokens": tokens_K,
             "proxy_loss": jnp.where(present, aux["nll_sum"] / jnp.maximum(tokens_K, 1.0), 0.0),
             "reference_loss": jnp.where(
                 present, domain_sums(ref_nll_BT, mask_BTK) / jnp.maximum(tokens_K, 1.0), 0.0)}
  return new, metrics


def jit_doremi_step(model: EncoderDecoder, reference_model: EncoderDecoder, tx, schedule,
                    shardings: DoremiState, reference_shardings, mesh, *, z_loss: float,
                    eta: float, smoothing: float, dropout_seed: Optional[int] = None):
  """doremi_step jitted as training/step.jit_train_step: explicit shardings on the run's mesh (the
  reference's parameters on theirs), the state donated."""
  return jax.jit(
      functools.partial(doremi_step, model=model, reference_model=reference_model, tx=tx,
                        schedule=schedule, z_loss=z_loss, eta=eta, smoothing=smoothing,
                        dropout_seed=dropout_seed),
      in_shardings=(shardings, reference_shardings, partitioning.batch_sharding(mesh)),
      out_shardings=(shardings, None), donate_argnums=(0,))
