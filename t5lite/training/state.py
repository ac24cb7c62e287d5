"""The train state: step, parameters, optimizer state and the non-finite guard's counters, and its
shardings. Abstract init, then sharded init: no array is ever built whole on one device."""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from t5lite.model.config import Config
from t5lite.model.network import EncoderDecoder
from t5lite.model.params import boxed_params_shape, check_mesh
from t5lite.runtime import partitioning


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  guard: Any  # the non-finite guard's counters (new_guard)


def new_guard() -> dict[str, jax.Array]:
  """skipped: steps skipped so far; consecutive: the current run of skipped steps; first_bad:
  the step that began that run (-1 when none)."""
  return {"skipped": jnp.zeros((), jnp.int32), "consecutive": jnp.zeros((), jnp.int32),
          "first_bad": jnp.full((), -1, jnp.int32)}


def state_shardings(config: Config, tx: optax.GradientTransformation, mesh,
                    fsdp: bool = False) -> tuple[TrainState, TrainState]:
  """(abstract TrainState of ShapeDtypeStructs carrying their shardings, the shardings alone),
  from the parameters' logical axis names; nothing is allocated."""
  check_mesh(config, mesh)
  boxed = boxed_params_shape(config)
  param_shardings = partitioning.logical_shardings(boxed, mesh, fsdp)
  params_shape = partitioning.raw_values(boxed)
  opt_shape = jax.eval_shape(tx.init, params_shape)
  opt_shardings = partitioning.match_shardings(opt_shape, params_shape, param_shardings, mesh)
  guard_shape = jax.eval_shape(new_guard)
  shardings = TrainState(step=partitioning.replicated(mesh), params=param_shardings,
                         opt_state=opt_shardings,
                         guard=jax.tree.map(lambda _: partitioning.replicated(mesh), guard_shape))
  shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params_shape,
                      opt_state=opt_shape, guard=guard_shape)
  return abstract_state(shapes, shardings), shardings


def init_state(model: EncoderDecoder, tx: optax.GradientTransformation, shardings: TrainState,
               seed: int) -> TrainState:
  """A fresh TrainState, each leaf created directly with its sharding."""
  dummy = jnp.ones((1, 1), jnp.int32)  # parameter shapes do not depend on the input's

  def init(rng):
    params = nn.unbox(model.init(rng, dummy, dummy)["params"])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      guard=new_guard())

  return jax.jit(init, out_shardings=shardings)(jax.random.key(seed))


def create_train_state(config: Config, tx: optax.GradientTransformation, mesh, seed: int,
                       fsdp: bool = False) -> tuple[TrainState, TrainState, EncoderDecoder]:
  """(a fresh state, its shardings, the model): state_shardings then init_state."""
  model = EncoderDecoder(config)
  _, shardings = state_shardings(config, tx, mesh, fsdp)
  return init_state(model, tx, shardings, seed), shardings, model


def abstract_state(state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of a state's leaves, each with its sharding (what a restore targets)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)
