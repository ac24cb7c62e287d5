"""The two layouts of a layer stack, and conversion between them.

  unrolled  {..., 'layers_0': {...}, 'layers_1': {...}, ...}    (Config.scan_layers=False)
  scanned   {..., 'layers': {... every leaf stacked [N, ...]}}  (Config.scan_layers=True)
  blocks    {..., 'layers': {'block_0': {...}, 'block_1': {...}}}: a stack whose layers differ
            (mixture of experts: dense and sparse) repeats a block of P layers, P the shortest
            period of their structures; block_j holds layers j, P + j, ... stacked [N / P, ...]

`scanned(tree)` / `unrolled(tree)` convert any pytree whose dicts mirror the parameters: params,
gradients, optimizer states built by `optim.layerwise` (AdamW mu/nu, Adafactor v_row/v_col/v and
its placeholders: the layer-wise state is exactly the stack of the unrolled one), abstract trees of
`jax.ShapeDtypeStruct` (shapes and NamedShardings follow: the stacked axis is replicated), and
TrainStates. Leaves are jax arrays, numpy arrays or ShapeDtypeStructs (unboxed: no nn.Partitioned).
A scanned stack whose leaves do not share one leading [N] axis is refused: such a state (plain
optax on stacked parameters, whose Adafactor placeholders stay [1]) has no unrolled equivalent.
"""
from __future__ import annotations

import re
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

UNROLLED, SCANNED = "unrolled", "scanned"
STACK = "layers"  # network.SCAN_AXIS: the key of a scanned stack
BLOCK = "block_"  # block_j: the j-th layer of each repeated block of a scanned stack
_LAYER = re.compile(r"^layers_(\d+)$")
_BLOCK = re.compile(r"^block_(\d+)$")


def period(items) -> int:
  """The shortest P dividing len(items) with items[i] == items[i % P] for every i."""
  n = len(items)
  return next(p for p in range(1, n + 1)
              if n % p == 0 and all(items[i] == items[i % p] for i in range(n)))


def layout_of(tree: Any) -> Optional[str]:
  """"scanned", "unrolled", or None (no layer stack) for any tree with dict keys, orbax
  metadata trees included. A tree with both kinds of stack raises ValueError."""
  keys = set()
  for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys.update(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
  has_scanned = STACK in keys
  has_unrolled = any(isinstance(k, str) and _LAYER.match(k) for k in keys)
  if has_scanned and has_unrolled:
    raise ValueError("tree mixes a scanned stack ('layers') with unrolled ones ('layers_0', ...)")
  return SCANNED if has_scanned else UNROLLED if has_unrolled else None


def to_layout(tree: Any, layout: Optional[str]) -> Any:
  """`tree` in `layout` ("scanned" or "unrolled"; None leaves it as is)."""
  if layout is None:
    return tree
  if layout not in (SCANNED, UNROLLED):
    raise ValueError(f"layout={layout!r}; expected {SCANNED!r} or {UNROLLED!r}")
  return scanned(tree) if layout == SCANNED else unrolled(tree)


def scanned(tree: Any) -> Any:
  """unrolled -> scanned: each dict's `layers_0..layers_{N-1}` become one `layers` entry whose
  leaves are the N layers' leaves stacked on a new axis 0."""
  return _map_dicts(tree, _stack_dict)


def unrolled(tree: Any) -> Any:
  """scanned -> unrolled: each dict's `layers` entry (leaves [N, ...]) becomes layers_0..N-1.

  Every tree in `tree` that mirrors the same stack (params, mu, v_row, ...) must agree on N."""
  _check_stack_lengths(tree)
  return _map_dicts(tree, _unstack_dict)


def _map_dicts(tree: Any, fn) -> Any:
  """Applies fn to every outermost dict of the tree (fn recurses into the dict's values)."""
  return jax.tree.map(lambda x: fn(x) if isinstance(x, dict) else x, tree,
                      is_leaf=lambda x: isinstance(x, dict))


def _stack_dict(d: dict) -> dict:
  out = {k: _map_dicts(v, _stack_dict) for k, v in d.items() if not _is_layer_key(k)}
  indices = sorted(int(_LAYER.match(k).group(1)) for k in d if _is_layer_key(k))
  if not indices:
    return out
  if STACK in d:
    raise ValueError(f"dict has both '{STACK}' and 'layers_N' entries: {sorted(d)}")
  if indices != list(range(len(indices))):
    raise ValueError(f"layer entries are not layers_0..layers_{len(indices) - 1}: "
                     f"{['layers_%d' % i for i in indices]}")
  layers = [_map_dicts(d[f"layers_{i}"], _stack_dict) for i in indices]
  p = period([jax.tree.structure(layer) for layer in layers])
  stacked = [jax.tree_util.tree_map_with_path(lambda path, *xs: _stack_leaves(xs, path),
                                              *layers[j::p]) for j in range(p)]
  out[STACK] = stacked[0] if p == 1 else {f"{BLOCK}{j}": t for j, t in enumerate(stacked)}
  return out


def _unstack_dict(d: dict) -> dict:
  out = {k: _map_dicts(v, _unstack_dict) for k, v in d.items() if k != STACK}
  if STACK not in d:
    return out
  if any(_is_layer_key(k) for k in d):
    raise ValueError(f"dict has both '{STACK}' and 'layers_N' entries: {sorted(d)}")
  stack = d[STACK]
  blocks = _blocks(stack)
  per_block = [_unstack_layers(stack[f"{BLOCK}{j}"]) for j in range(blocks)] if blocks else [
      _unstack_layers(stack)]
  p = len(per_block)
  for i in range(p * len(per_block[0])):
    out[f"layers_{i}"] = per_block[i % p][i // p]
  return out


def _blocks(stack: Any) -> int:
  """P when a scanned stack holds blocks (block_0 ... block_{P-1}), else 0."""
  if not isinstance(stack, dict) or not stack or not all(
      isinstance(k, str) and _BLOCK.match(k) for k in stack):
    return 0
  if sorted(stack) != sorted(f"{BLOCK}{j}" for j in range(len(stack))):
    raise ValueError(f"block entries are not {BLOCK}0..{BLOCK}{len(stack) - 1}: {sorted(stack)}")
  return len(stack)


def _unstack_layers(stack: Any) -> list:
  flat, treedef = jax.tree_util.tree_flatten_with_path(stack)
  n = _stack_length([(jax.tree_util.keystr(p), x) for p, x in flat])
  columns = [_unstack_leaf(x, n) for _, x in flat]
  return [_map_dicts(jax.tree_util.tree_unflatten(treedef, [c[i] for c in columns]),
                     _unstack_dict) for i in range(n)]


def _check_stack_lengths(tree: Any) -> None:
  """Refuses a tree whose parameter-mirroring dicts disagree on a stack's length, e.g. plain
  optax state of stacked parameters whose placeholders are all [1] in one dict."""
  seen: dict[tuple, dict[Any, str]] = {}
  def visit(d: dict, where: tuple, rel: tuple):
    for k, v in d.items():
      if k == STACK:
        flat = jax.tree_util.tree_flatten_with_path(v)[0]
        prefix = "/".join(map(str, where + rel + (k,)))
        n = _stack_length([(prefix + jax.tree_util.keystr(p), x) for p, x in flat])
        seen.setdefault(rel + (k,), {}).setdefault(n, "/".join(map(str, where + rel + (k,))))
      elif isinstance(v, dict):
        visit(v, where, rel + (k,))
  for path, d in jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: isinstance(x, dict))[0]:
    if isinstance(d, dict):
      visit(d, (jax.tree_util.keystr(path),), ())
  for rel, lengths in seen.items():
    if len(lengths) > 1:
      shown = ", ".join(f"{w}: {n}" for n, w in lengths.items())
      raise ValueError(f"not convertible: the '{'/'.join(rel)}' stacks disagree on their number "
                       f"of layers ({shown}); optimizer state of stacked parameters is convertible "
                       "only when built layer-wise (optim.layerwise)")


def _is_layer_key(k) -> bool:
  return isinstance(k, str) and _LAYER.match(k) is not None


def _stack_length(items: list[tuple[str, Any]]) -> int:
  """The common leading dimension N of a scanned stack's (path, leaf) items; refuses any leaf
  without it."""
  if not items:
    raise ValueError(f"scanned stack '{STACK}' has no leaves")
  lengths = {}
  for path, x in items:
    shape = np.shape(x)
    lengths.setdefault(shape[0] if shape else None, path)
  if len(lengths) != 1 or None in lengths:
    shown = ", ".join(f"{p} (leading dim {n})" for n, p in lengths.items())
    raise ValueError(
        f"not convertible: the leaves of a scanned '{STACK}' stack must share one leading [N] "
        f"axis; found {shown}. Optimizer state of stacked parameters is convertible only when "
        "built layer-wise (optim.layerwise); plain optax keeps e.g. Adafactor's [1] placeholders.")
  return next(iter(lengths))


def _stack_leaves(xs: tuple, path) -> Any:
  shapes = {(tuple(np.shape(x)), np.dtype(x.dtype)) for x in xs}
  if len(shapes) != 1:
    raise ValueError(f"cannot stack {jax.tree_util.keystr(path)}: the layers' leaves differ "
                     f"({sorted(str(s) for s in shapes)})")
  x0 = xs[0]
  if isinstance(x0, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct((len(xs),) + tuple(x0.shape), x0.dtype,
                                sharding=_stacked_sharding(x0.sharding))
  if all(isinstance(x, np.ndarray) for x in xs):
    return np.stack(xs)
  return jnp.stack(xs)


def _unstack_leaf(x: Any, n: int) -> list:
  if isinstance(x, jax.ShapeDtypeStruct):
    one = jax.ShapeDtypeStruct(tuple(x.shape[1:]), x.dtype,
                               sharding=_unstacked_sharding(x.sharding))
    return [one] * n
  return [x[i] for i in range(n)]


def _stacked_sharding(s):
  """The sharding of a stack of leaves sharded as `s`: the new leading axis is replicated."""
  if isinstance(s, NamedSharding):
    return NamedSharding(s.mesh, P(None, *s.spec))
  return s


def _unstacked_sharding(s):
  if isinstance(s, NamedSharding):
    return NamedSharding(s.mesh, P(*tuple(s.spec)[1:]))
  return s


# ----------------------------------------------------------------------------- split / merge
# Used by optim.layerwise: the parts of a parameter-mirroring tree outside and inside stacks.


def split_stacks(tree: dict, key: str = STACK) -> tuple[dict, list[dict]]:
  """(rest, stacks) of a nested dict: rest without any `key` entry (default `layers`); one tree
  per `key` entry (with the dicts on its path), since stacks differ in length (encoder vs
  decoder). merge_stacks inverts it. optim.expertwise splits the `experts` entries so."""
  rest, stacks = {}, []
  for k, v in tree.items():
    if k == key:
      stacks.append({k: v})
    elif isinstance(v, dict):
      rest[k], inner = split_stacks(v, key)
      stacks += [{k: s} for s in inner]
    else:
      rest[k] = v
  return rest, stacks


def merge_stacks(rest: dict, stacks: list[dict], key: str = STACK) -> dict:
  out = dict(rest)
  for stack in stacks:
    for k, v in stack.items():
      out[k] = merge_stacks(out.get(k, {}), [v], key) if k != key else v
  return out


def has_stacks(tree: Any, key: str = STACK) -> bool:
  """Whether the tree has a `key` entry (default: a scanned stack)."""
  if key == STACK:
    return layout_of(tree) == SCANNED
  return any(isinstance(k, jax.tree_util.DictKey) and k.key == key
             for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0] for k in path)
