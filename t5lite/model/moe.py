"""Mixture of experts (Switch Transformer): a top-1 router and a layer of experts that replaces the
MLP of every N-th layer when Config.num_experts > 0 (network.py places them; Config.sparse_layers).

The semantics are flaxformer's tokens-choose masked router and MoeLayer (t5x/contrib/moe):
  - tokens are routed in groups (tokens_per_group); the router works in float32: logits = x W
    (no bias, W ~ normal(0.02)), softmax, each token's top-1 expert, gate = its probability;
  - each expert takes at most C = max(round(cf * S / E), min_expert_capacity) tokens of a group of
    S, in the group's token order; the rest are dropped: the layer outputs 0 for them, so they go
    on by the residual alone. cf is Config.train_capacity_factor when training, else eval's;
  - dispatch and combine are one-hot einsums ([G, S, E, C] masks), which run on every backend;
  - experts are the T5 MLP with kernels stacked [E, ...] (logical axes expert, embed, expert_mlp).

Statistics per sparse layer are sown into the "router" collection (STATS); losses.batch_loss
averages them over the sparse layers and adds the two losses to the training loss.
Shapes: B batch, L length, D embed, G groups, S tokens per group, E experts, C capacity,
F expert MLP.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5lite.model.config import Config
from t5lite.model.layers import ACTIVATIONS, BATCH, EMBED, LENGTH, constrain, declare, kernel_init

Array = jax.Array
# Logical axes (partitioning.RULES): experts over the 'expert' mesh axis, their MLP over 'model';
# the group axis of expert-major activations over 'data' (its 'expert' part went to the experts).
EXPERT, EXPERT_MLP, EXPERT_GROUP = "expert", "expert_mlp", "expert_group"
COLLECTION = "router"  # the mutable collection that sparse layers sow STATS into
# aux_loss: load balancing E^2 mean(f P); z_loss: mean(logsumexp(logits)^2); dropped_fraction:
# the tokens no expert took; expert_usage: taken slots / all slots; confidence: mean gate of the
# taken tokens; max_load: the most chosen expert's share of tokens x E (1 = balanced).
STATS = ("aux_loss", "z_loss", "dropped_fraction", "expert_usage", "confidence", "max_load")
ROUTER_INIT = nn.initializers.normal(2e-2)  # flaxformer's router kernel initialisation


def tokens_per_group(config: Config, batch: int, length: int) -> int:
  """Tokens routed together, from the configuration and the input's shape, never the mesh.

  Examples of `length` tokens fill groups of up to expert_group_size tokens: whole examples
  (the most that divide the batch) when they are shorter, else equal slices of one example.
  Splitting a batch into microbatches leaves the groups as they were while group_size / length
  examples still divide the microbatch."""
  size = config.expert_group_size
  if length >= size:
    return _largest_divisor(length, size)
  return length * _largest_divisor(batch, size // length)


def _largest_divisor(n: int, at_most: int) -> int:
  return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def expert_capacity(config: Config, group: int, train: bool) -> int:
  """Slots per expert and group (flaxformer's rounding: Python's round, then the minimum)."""
  factor = config.train_capacity_factor if train else config.eval_capacity_factor
  return max(int(round(factor * group / config.num_experts)), config.min_expert_capacity)


def route(logits_GSE: Array, capacity: int) -> tuple[Array, Array, dict[str, Array]]:
  """Top-1 routing of float32 logits: (dispatch [G, S, E, C] bool, combine [G, S, E, C] float32,
  the layer's STATS). A token's slot in its expert is the number of tokens before it in the group
  that chose the same expert; slots past the capacity do not exist (the token is dropped)."""
  G, S, E = logits_GSE.shape
  probs_GSE = jax.nn.softmax(logits_GSE, axis=-1)
  expert_GS = jnp.argmax(probs_GSE, axis=-1)
  gate_GS = jnp.max(probs_GSE, axis=-1)
  chosen_GSE = jax.nn.one_hot(expert_GS, E, dtype=jnp.int32)
  slot_GSE = jnp.cumsum(chosen_GSE, axis=1) * chosen_GSE - 1  # -1 where not chosen
  dispatch_GSEC = jax.nn.one_hot(slot_GSE, capacity, dtype=jnp.bool_)  # -1 and >= C: no slot
  combine_GSEC = gate_GS[:, :, None, None] * dispatch_GSEC
  # Load balancing uses the choices before capacity (f) and the mean probabilities (P), per group.
  f_GE = jnp.mean(chosen_GSE.astype(jnp.float32), axis=1)
  p_GE = jnp.mean(probs_GSE, axis=1)
  taken = jnp.sum(dispatch_GSEC, dtype=jnp.float32)
  counts_E = jnp.sum(chosen_GSE, axis=(0, 1), dtype=jnp.float32)
  stats = {
      "aux_loss": jnp.mean(f_GE * p_GE) * (E * E),
      "z_loss": jnp.mean(jnp.square(jax.nn.logsumexp(logits_GSE, axis=-1))),
      "dropped_fraction": 1.0 - taken / (G * S),
      "expert_usage": taken / (G * E * capacity),
      "confidence": jnp.sum(combine_GSEC) / jnp.maximum(taken, 1.0),
      "max_load": jnp.max(counts_E) / (G * S) * E,
  }
  return dispatch_GSEC, combine_GSEC, stats


class SparseMlp(nn.Module):
  """num_experts T5 MLPs behind a top-1 router, in place of a layer's Mlp (same input, output).

  train: the training pass (train capacity factor; jitter when Config.router_jitter > 0 and a
  'jitter' rng is given)."""
  config: Config
  train: bool = False

  @nn.compact
  def __call__(self, x_BLD: Array, deterministic: bool = True) -> Array:
    cfg = self.config
    B, L, D = x_BLD.shape
    E, dt = cfg.num_experts, cfg.activation_dtype
    S = tokens_per_group(cfg, B, L)
    G = B * L // S
    C = expert_capacity(cfg, S, self.train)
    x_GSD = constrain(x_BLD.reshape(G, S, D), (BATCH, LENGTH, EMBED))

    # The router in float32 (the paper's selective precision), at full matmul precision.
    w_DE = declare(self, "router", ROUTER_INIT, (EMBED, None), (D, E), cfg).astype(jnp.float32)
    r_GSD = x_GSD.astype(jnp.float32)
    if self.train and cfg.router_jitter > 0 and self.has_rng("jitter"):
      r_GSD = r_GSD * jax.random.uniform(self.make_rng("jitter"), r_GSD.shape, jnp.float32,
                                         1.0 - cfg.router_jitter, 1.0 + cfg.router_jitter)
    logits_GSE = jnp.einsum("gsd,de->gse", r_GSD, w_DE, precision=jax.lax.Precision.HIGHEST)
    dispatch_GSEC, combine_GSEC, stats = route(logits_GSE, C)
    self.sow(COLLECTION, "stats", stats)

    # Tokens to their experts' slots; expert-major, where the all-to-all over 'expert' happens.
    x_GECD = jnp.einsum("gsd,gsec->gecd", x_GSD, dispatch_GSEC.astype(dt))
    x_EGCD = constrain(jnp.swapaxes(x_GECD, 0, 1), (EXPERT, EXPERT_GROUP, None, EMBED))
    y_EGCD = Experts(cfg, name="experts")(x_EGCD, deterministic)
    y_GECD = constrain(jnp.swapaxes(y_EGCD, 0, 1), (BATCH, None, None, EMBED))
    y_GSD = jnp.einsum("gecd,gsec->gsd", y_GECD, combine_GSEC.astype(dt))
    return constrain(y_GSD.reshape(B, L, D), (BATCH, LENGTH, EMBED))


class Experts(nn.Module):
  """The T5 MLP of each expert, on its slots: kernels [E, D, F] and [E, F, D], initialised as the
  dense MLP's (fan-in over one expert's D or F)."""
  config: Config

  @nn.compact
  def __call__(self, x_EGCD: Array, deterministic: bool = True) -> Array:
    cfg = self.config
    E, D, F, dt = cfg.num_experts, cfg.emb_dim, cfg.mlp_dim, cfg.activation_dtype
    init = kernel_init(cfg, fan_in_axes=(1,), distribution="truncated_normal")
    hidden_EGCF = None
    for i, act in enumerate(cfg.mlp_activations):
      name = f"wi_{i}" if cfg.gated else "wi"
      w_EDF = declare(self, name, init, (EXPERT, EMBED, EXPERT_MLP), (E, D, F), cfg)
      h_EGCF = ACTIVATIONS[act](jnp.einsum("egcd,edf->egcf", x_EGCD, w_EDF.astype(dt)))
      hidden_EGCF = h_EGCF if hidden_EGCF is None else hidden_EGCF * h_EGCF
    hidden_EGCF = constrain(hidden_EGCF, (EXPERT, EXPERT_GROUP, None, EXPERT_MLP))
    if cfg.dropout_rate > 0 and not deterministic:
      hidden_EGCF = nn.Dropout(cfg.dropout_rate)(hidden_EGCF, deterministic=False)
    w_EFD = declare(self, "wo", init, (EXPERT, EXPERT_MLP, EMBED), (E, F, D), cfg)
    y_EGCD = jnp.einsum("egcf,efd->egcd", hidden_EGCF, w_EFD.astype(dt))
    return constrain(y_EGCD, (EXPERT, EXPERT_GROUP, None, EMBED))


def collect_stats(collection) -> dict[str, Array]:
  """STATS averaged over a model's sparse layers, from the "router" collection that
  model.apply(..., mutable=["router"]) returns (a scanned stack's entries are stacked [N])."""
  by_name: dict[str, list] = {name: [] for name in STATS}
  for path, leaf in jax.tree_util.tree_flatten_with_path(collection)[0]:
    name = getattr(path[-1], "key", None)
    if name in by_name:
      by_name[name].append(jnp.ravel(leaf))
  if not by_name["aux_loss"]:
    raise ValueError("the model sowed no router statistics: does it have sparse layers?")
  return {name: jnp.mean(jnp.concatenate(v)) for name, v in by_name.items()}
