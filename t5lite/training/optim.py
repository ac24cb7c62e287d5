"""Optimizers (Adafactor as T5 trained, AdamW and nanoT5's RMS-scaled AdamW) and schedules."""
from __future__ import annotations

from typing import Any, Callable

import gin
import jax
import jax.numpy as jnp
import optax

from t5lite.model import stacks as layout

Schedule = Callable[[jnp.ndarray], jnp.ndarray]
OPTIMIZERS = ("adafactor", "adamw", "adamw_scaled")
EXPERTS = "experts"  # model/moe.py's Experts: kernels stacked [E, ...] over the experts
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
  tx = layerwise(expertwise(tx))
  if grad_clip:  # outside layerwise: the norm is global, over all layers
    tx = optax.chain(optax.clip_by_global_norm(grad_clip), tx)
  return tx


def layerwise(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx` applied to each layer of a scanned stack on its own (vmapped over the leading [N] axis
  of every parameter under a `layers` key), so a scanned model trains exactly as its unrolled
  twin: Adafactor's factoring, parameter scale and update clipping, and nanoT5's block RMS, see
  one layer's [D, F] kernel, not the [N, D, F] stack (t5x's Adafactor treats the scanned axis as a
  batch axis for the same reason). The state keeps tx's own structure; its leaves for stacked
  parameters are [N, ...], the stack of the unrolled run's (so layout.scanned / layout.unrolled
  convert it exactly). Parameter trees without a `layers` key go straight to tx.

  tx's per-step leaves outside parameter-mirroring dicts (counts) are shared by all layers.
  """
  return _vmapped_over(tx, layout.STACK)


def expertwise(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx` applied to each expert of a mixture-of-experts layer on its own (vmapped over the
  leading [E] axis of the parameters under an `experts` key): the expert axis is a batch axis,
  as in t5x's Adafactor factor rules, so one expert's [D, F] kernel is factored, scaled and
  clipped as a dense MLP's is. Trees without an `experts` key go straight to tx."""
  return _vmapped_over(tx, EXPERTS)


def _vmapped_over(tx: optax.GradientTransformation, key: str) -> optax.GradientTransformation:
  """tx on the parameters outside `key` entries, and vmapped over the leading axis of each."""
  def init(params):
    if not layout.has_stacks(params, key):
      return tx.init(params)
    rest, stacks = layout.split_stacks(params, key)
    return _merge_states([tx.init(rest)] + [jax.vmap(tx.init)(s) for s in stacks],
                         jax.eval_shape(tx.init, params))

  def update(updates, state, params=None):
    if not layout.has_stacks(updates, key):
      return tx.update(updates, state, params)
    u_rest, u_stacks = layout.split_stacks(updates, key)
    p_rest, p_stacks = (layout.split_stacks(params, key) if params is not None
                        else (None, [None] * len(u_stacks)))
    u_rest, s_rest = tx.update(u_rest, _select(state, jax.eval_shape(tx.init, u_rest)), p_rest)
    parts = [s_rest]
    for i, (u, p) in enumerate(zip(u_stacks, p_stacks)):  # one vmap per stack: lengths differ
      s = _select(state, jax.eval_shape(jax.vmap(tx.init), u))
      u_stacks[i], s = jax.vmap(tx.update)(u, s, p)
      parts.append(s)
    return layout.merge_stacks(u_rest, u_stacks, key), _merge_states(parts, state)

  return optax.GradientTransformation(init, update)


def _merge_states(parts: list, template: Any) -> Any:
  """A state of template's structure, each leaf from the first part that has its path (the
  counts, in every part, come from the first: the non-stacked parameters' state)."""
  by_path = [dict(jax.tree_util.tree_flatten_with_path(t)[0]) for t in parts]
  flat, treedef = jax.tree_util.tree_flatten_with_path(template)
  leaves = []
  for path, _ in flat:
    source = next((d for d in by_path if path in d), None)
    if source is None:
      raise ValueError(f"layerwise: optimizer state entry {jax.tree_util.keystr(path)} is in "
                       "no part's state (the stacks' and the other parameters')")
    leaves.append(source[path])
  return jax.tree_util.tree_unflatten(treedef, leaves)


def _select(state: Any, template: Any) -> Any:
  """The part of a merged state shaped like `template`; shared leaves (counts) are broadcast to
  the [N] that the vmapped state expects."""
  by_path = dict(jax.tree_util.tree_flatten_with_path(state)[0])
  flat, treedef = jax.tree_util.tree_flatten_with_path(template)
  leaves = [by_path[path] if by_path[path].shape == t.shape else
            jnp.broadcast_to(by_path[path], t.shape) for path, t in flat]
  return jax.tree_util.tree_unflatten(treedef, leaves)
