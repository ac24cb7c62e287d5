"""One optimizer step: train_step (pure, module-level), the non-finite guard, and the jitted program
that train() runs and `t5lite plan` compiles ahead of time (train_program)."""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import optax

from t5lite.data.feed import features
from t5lite.model import losses
from t5lite.model.config import Config
from t5lite.model.network import EncoderDecoder
from t5lite.runtime import partitioning
from t5lite.training import optim
from t5lite.training.settings import DataConfig, StepConfig
from t5lite.training.state import TrainState, state_shardings


def _all_finite(*trees) -> jax.Array:
  """Whether every element of `trees` is finite. x * 0 is 0, or NaN for an inf or NaN x, so the
  sum is finite iff all are (and cannot overflow). It ends in a sqrt because XLA fuses a copy of
  cheap scalar ops (and, add, is-finite) into every consumer but not a sqrt: per-leaf flags
  and-ed together were copied into each `where` of apply_update (leaves x leaves ops to compile)."""
  total = sum(jnp.sum(x * 0, dtype=jnp.float32) for x in jax.tree.leaves(trees))
  return jnp.isfinite(jnp.sqrt(total))


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *, model: EncoderDecoder,
               tx: optax.GradientTransformation, schedule: Callable, z_loss: float,
               microbatches: int = 1, dropout_seed: Optional[int] = None):
  """One optimizer step. Gradients of the summed loss are accumulated over `microbatches`,
  then divided by the number of target tokens (so the step equals one big batch). A
  mixture-of-experts model's router losses are weighted by the whole batch's tokens per
  microbatch, so they too come out of that division as they would from one big batch."""
  cfg = model.config
  dropout_rng = None
  if cfg.dropout_rate > 0 and dropout_seed is not None:
    dropout_rng = jax.random.fold_in(jax.random.key(dropout_seed), state.step)
  loss_fn = functools.partial(losses.batch_loss, model=model, z_loss=z_loss)
  jitter_rng = None
  if cfg.num_experts:
    tokens = jnp.maximum(jnp.sum(batch["decoder_loss_weights"].astype(jnp.float32)), 1.0)
    loss_fn = functools.partial(loss_fn, train=True, aux_scale=tokens / microbatches)
    if cfg.router_jitter > 0 and dropout_seed is not None:
      jitter_rng = jax.random.fold_in(jax.random.key(dropout_seed + 1), state.step)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if microbatches == 1:
    jitter = {} if jitter_rng is None else {"jitter_rng": jitter_rng}
    (_, sums), grads = grad_fn(state.params, batch, dropout_rng=dropout_rng, **jitter)
  else:
    split = jax.tree.map(
        lambda x: x.reshape((microbatches, x.shape[0] // microbatches) + x.shape[1:]), batch)

    def body(carry, xs):
      i, micro = xs
      rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, i)
      jitter = {} if jitter_rng is None else {"jitter_rng": jax.random.fold_in(jitter_rng, i)}
      (_, s), g = grad_fn(state.params, micro, dropout_rng=rng, **jitter)
      return jax.tree.map(jnp.add, carry, (g, s)), None
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    zero_sums = {k: jnp.zeros((), jnp.float32) for k in losses.sum_keys(cfg)}
    (grads, sums), _ = jax.lax.scan(body, (zeros, zero_sums), (jnp.arange(microbatches), split))
  denom = jnp.maximum(sums["weight_sum"], 1.0)
  grads = jax.tree.map(lambda g: g / denom, grads)
  new_state, grad_norm = apply_update(state, grads, sums["loss"], tx)
  metrics = {"loss": sums["loss"] / denom, "z_loss": sums["z_loss"] / denom,
             "accuracy": sums["accuracy"] / denom, "target_tokens": sums["weight_sum"],
             "grad_norm": grad_norm, "learning_rate": schedule(state.step),
             "skipped_steps": new_state.guard["skipped"], "guard": new_state.guard}
  if cfg.num_experts:
    metrics.update(losses.router_metrics(cfg, sums, denom, microbatches))
  return new_state, metrics


def apply_update(state: TrainState, grads, loss: jax.Array, tx: optax.GradientTransformation):
  """(state one step on, with the optimizer's update of `grads`; the gradient norm).

  The non-finite guard: a step whose loss, gradient norm or new parameters are not finite is
  not applied (parameters and optimizer state stay), and is counted; no host sync. Other fields
  of a TrainState subclass are left to the caller."""
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ok = _all_finite(loss, grad_norm, params)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
  g = state.guard
  guard = {"skipped": g["skipped"] + (~ok).astype(jnp.int32),
           "consecutive": jnp.where(ok, 0, g["consecutive"] + 1),
           "first_bad": jnp.where(ok, -1, jnp.where(g["consecutive"] == 0, state.step + 1,
                                                    g["first_bad"]))}
  return state.replace(step=state.step + 1, params=keep(params, state.params),
                       opt_state=keep(opt_state, state.opt_state), guard=guard), grad_norm


def jit_train_step(model: EncoderDecoder, tx, schedule, shardings: TrainState, mesh, *,
                   z_loss: float, microbatches: int = 1, dropout_seed: Optional[int] = None):
  """train_step jitted as train() runs it: explicit in/out shardings, the state donated."""
  return jax.jit(
      functools.partial(train_step, model=model, tx=tx, schedule=schedule, z_loss=z_loss,
                        microbatches=microbatches, dropout_seed=dropout_seed),
      in_shardings=(shardings, partitioning.batch_sharding(mesh)), out_shardings=(shardings, None),
      donate_argnums=(0,))


@dataclasses.dataclass(frozen=True)
class TrainProgram:
  """What train() compiles and runs: model, optimizer, schedule, the state's shardings, the jitted
  step, and the step's arguments as ShapeDtypeStructs with their shardings (nothing allocated)."""
  model: EncoderDecoder
  tx: optax.GradientTransformation
  schedule: Callable
  shardings: TrainState
  abstract_state: TrainState
  abstract_batch: dict[str, jax.ShapeDtypeStruct]
  step_fn: Callable

  def lower(self):
    """The step lowered for the mesh's devices from abstract arguments (`.compile()` next)."""
    return self.step_fn.lower(self.abstract_state, self.abstract_batch)


def train_program(config: Config, mesh, data: DataConfig, step: StepConfig,
                  seed: int = 0) -> TrainProgram:
  """train()'s step for these settings, shared by train() and `t5lite plan` (which compiles it
  for a TPU topology without running it). Call inside partitioning.activate(mesh, step.fsdp); the
  optimizer and schedule come from gin (optim.make_optimizer, optim.learning_rate_schedule)."""
  n_data = partitioning.batch_size_divisor(mesh)
  if data.batch_size % (n_data * step.microbatches):
    raise ValueError(f"BATCH_SIZE {data.batch_size} does not fit the devices: it must divide by "
                     f"the mesh's 'data' size {n_data} x microbatches {step.microbatches}"
                     + (" ('data' x 'expert')" if "expert" in mesh.axis_names else ""))
  schedule = optim.learning_rate_schedule()
  tx = optim.make_optimizer(schedule=schedule)
  model = EncoderDecoder(config)
  abstract, shardings = state_shardings(config, tx, mesh, step.fsdp)
  batch_shard = partitioning.batch_sharding(mesh)
  batch = {name: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_shard) for name, (shape, dtype)
           in features.batch_shapes(data.task_feature_lengths, data.batch_size).items()}
  step_fn = jit_train_step(model, tx, schedule, shardings, mesh, z_loss=step.z_loss,
                           microbatches=step.microbatches, dropout_seed=seed)
  return TrainProgram(model, tx, schedule, shardings, abstract, batch, step_fn)
