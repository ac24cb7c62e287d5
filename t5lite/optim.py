"""Optimizers (Adafactor as T5 trained, AdamW and nanoT5's RMS-scaled AdamW) and schedules."""
from __future__ import annotations

from typing import Callable

import gin
import jax.numpy as jnp
import optax

Schedule = Callable[[jnp.ndarray], jnp.ndarray]
OPTIMIZERS = ("adafactor", "adamw", "adamw_scaled")
SCHEDULES = ("rsqrt", "cosine", "constant")


@gin.configurable
def learning_rate_schedule(name: str = "rsqrt", peak: float = 0.01, warmup_steps: int = 10_000,
                           total_steps: int = 100_000, end: float = 1e-5) -> Schedule:
  """rsqrt (T5): peak * sqrt(warmup) / sqrt(max(step, warmup)) -- with peak 0.01 and warmup 10k,
  exactly 1/sqrt(max(step, 10000)). cosine (nanoT5): linear warmup to peak, cosine to `end`.
  """
  if name == "rsqrt":
    def rsqrt(step):
      step = jnp.asarray(step, jnp.float32)
      return peak * jnp.sqrt(float(warmup_steps)) / jnp.sqrt(jnp.maximum(step, warmup_steps))
    return rsqrt
  if name == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1), end_value=end)
  if name == "constant":
    return optax.constant_schedule(peak)
  raise ValueError(f"learning_rate_schedule name={name!r}; expected one of {SCHEDULES}")


@gin.configurable
def make_optimizer(name: str = "adafactor", schedule: Schedule = None, weight_decay: float = 0.0,
                   grad_clip: float = 0.0, b1: float = 0.9, b2: float = 0.999
                   ) -> optax.GradientTransformation:
  """adafactor: T5's settings (factored >= 128, decay 0.8, no momentum, update clipping 1.0,
  parameter scale with floor 1e-3, eps 1e-30). adamw: decoupled weight decay.
  adamw_scaled: nanoT5 -- Adam's update scaled by max(1e-3, RMS(param)).
  """
  schedule = schedule or learning_rate_schedule()
  if name == "adafactor":
    tx = optax.adafactor(learning_rate=schedule, min_dim_size_to_factor=128, decay_rate=0.8,
                         multiply_by_parameter_scale=True, clipping_threshold=1.0, momentum=None,
                         eps=1e-30, weight_decay_rate=weight_decay or None)
  elif name == "adamw":
    tx = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay)
  elif name == "adamw_scaled":
    parts = [optax.scale_by_adam(b1=b1, b2=b2), optax.scale_by_param_block_rms(min_scale=1e-3)]
    if weight_decay:
      parts.append(optax.add_decayed_weights(weight_decay))
    tx = optax.chain(*parts, optax.scale_by_learning_rate(schedule))
  else:
    raise ValueError(f"make_optimizer name={name!r}; expected one of {OPTIMIZERS}")
  if grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip), tx)
  return tx
