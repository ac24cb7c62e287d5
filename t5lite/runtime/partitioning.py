"""Device meshes, THE logical-axis rules table, and host-to-global arrays.

One rules table maps the model's logical axis names to the mesh: ('data', 'model'), or
('data', 'expert', 'model') for expert parallelism (a 2-entry mesh_shape is the first, i.e.
expert = 1; rules naming an axis the mesh lacks leave it out). Batches are split over 'data' and
'expert' (the expert axis is data-parallel outside the experts); mixture-of-experts layers put
their experts on 'expert', so tokens travel by all-to-all. FSDP maps `embed` to 'data' as well,
so parameters and optimizer state are split over data-parallel devices.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Optional, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from t5lite.runtime import backend

MESH_AXES = ("data", "model")
EXPERT_MESH_AXES = ("data", "expert", "model")
BATCH_AXES = ("data", "expert")  # what a batch's leading axis is split over

# Logical name -> mesh axis or axes (None = replicated). Starts from t5x's standard rules. Order
# matters: a dimension takes its rule's axes only if no earlier dimension took them.
RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("expert", "expert"),  # mixture of experts (model/moe.py): the experts' axis
    ("expert_group", "data"),  # token groups once the experts hold the 'expert' axis
    ("expert_mlp", "model"),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("joined_kv", "model"),
    ("embed", None),
    ("kv", None),
    ("length", None),
    ("relpos_buckets", None),
    ("layers", None),  # the leading axis of scanned stacks' parameters (Config.scan_layers)
)


def rules(fsdp: bool = False, mesh_axes: Sequence[str] = EXPERT_MESH_AXES
          ) -> tuple[tuple[str, Any], ...]:
  """The rules table for a mesh with `mesh_axes` (axes it lacks are left out); with fsdp,
  parameters' `embed` axis is split over 'data' too."""
  table = RULES if not fsdp else tuple(
      (name, "data") if name == "embed" else (name, axis) for name, axis in RULES)
  return tuple((name, _present(axis, mesh_axes)) for name, axis in table)


def _present(axis, mesh_axes: Sequence[str]):
  if axis is None or isinstance(axis, str):
    return axis if axis in mesh_axes else None
  kept = tuple(a for a in axis if a in mesh_axes)
  return kept[0] if len(kept) == 1 else (kept or None)


@gin.configurable
def make_mesh(mesh_shape: Sequence[int] = (-1, 1), devices: Optional[Sequence[Any]] = None
              ) -> jax.sharding.Mesh:
  """A mesh of the requested shape: (data, model), or (data, expert, model) for expert
  parallelism; one -1 entry takes the remaining devices."""
  devices = list(devices if devices is not None else jax.devices())
  shape = list(mesh_shape)
  if len(shape) not in (2, 3):
    raise ValueError(f"mesh_shape={tuple(mesh_shape)}; expected 2 entries (data, model) or 3 "
                     "(data, expert, model)")
  axes = MESH_AXES if len(shape) == 2 else EXPERT_MESH_AXES
  if shape.count(-1) > 1:
    raise ValueError(f"mesh_shape={tuple(mesh_shape)}; at most one entry may be -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"mesh_shape={tuple(mesh_shape)} does not divide {len(devices)} devices")
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise ValueError(f"mesh_shape={tuple(shape)} needs {int(np.prod(shape))} devices; "
                     f"{len(devices)} are available ({devices[0].platform})")
  # Auto axes: shardings are pjit-style hints that XLA propagates (as in t5x), not types.
  auto = (jax.sharding.AxisType.Auto,) * len(axes)
  # jax.make_mesh orders TPU devices by their physical links; plan's compile-only topology
  # devices take the same path as the real pod's jax.devices() would.
  if devices == list(jax.devices()) or devices[0].platform == "tpu":
    return jax.make_mesh(tuple(shape), axes, devices=devices, axis_types=auto)
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), axes, axis_types=auto)


def axis_size(mesh: jax.sharding.Mesh, name: str) -> int:
  """A mesh axis' size; 1 for an axis the mesh lacks (a 2-axis mesh has expert = 1)."""
  return mesh.shape[name] if name in mesh.axis_names else 1


def batch_size_divisor(mesh: jax.sharding.Mesh) -> int:
  """The devices a batch's leading axis is split over ('data' x 'expert')."""
  return int(np.prod([axis_size(mesh, a) for a in BATCH_AXES]))


def logical_shardings(boxed_tree: Any, mesh: jax.sharding.Mesh, fsdp: bool = False) -> Any:
  """NamedShardings for a tree of nn.Partitioned (boxed) leaves; unboxed leaves are replicated.

  A dimension that the rules would split over a mesh axis it does not divide (BART's 50265
  vocabulary over model=2, say) is replicated instead, with a warning naming it.
  """
  specs = nn.get_partition_spec(boxed_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules(fsdp, mesh.axis_names))
  shapes = raw_values(boxed_tree)
  flat, treedef = jax.tree_util.tree_flatten_with_path(
      shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  fixed = [_divisible(s, leaf.shape, mesh, path)
           for (path, s), leaf in zip(flat, jax.tree.leaves(shapes))]
  return jax.tree_util.tree_unflatten(treedef, fixed)


def raw_values(tree: Any) -> Any:
  """Strips nn.Partitioned boxes without applying their sharding constraints (for abstract
  trees outside jit; nn.unbox would constrain them under active axis rules)."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree.map(lambda x: x.value if is_box(x) else x, tree, is_leaf=is_box)


def _divisible(sharding: NamedSharding, shape: tuple, mesh, path) -> NamedSharding:
  spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
  for i, axes in enumerate(spec):
    if axes is None:
      continue
    size = int(np.prod([mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,))]))
    if shape[i] % size:
      logging.warning("t5lite: %s dim %d (size %d) does not divide over mesh axis %s (%d); "
                      "replicating it", jax.tree_util.keystr(path), i, shape[i], axes, size)
      spec[i] = None
  return NamedSharding(mesh, P(*spec))


@contextlib.contextmanager
def activate(mesh: jax.sharding.Mesh, fsdp: bool = False):
  """Sets the mesh and the logical-axis rules, so activations' logical constraints are real
  (without the rules, nn.with_logical_constraint is a no-op), and the platform code is traced for
  (backend.py: CPU-only kernels apply only on a mesh of CPU devices)."""
  platform = mesh.devices.flat[0].platform
  with (jax.set_mesh(mesh), nn.logical_axis_rules(rules(fsdp, mesh.axis_names)),
        backend.target(platform)):
    yield mesh


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Batches: leading (example) axis over 'data' (and 'expert'), everything else replicated."""
  return NamedSharding(mesh, P(_present(BATCH_AXES, mesh.axis_names)))


def match_shardings(tree: Any, params: Any, param_shardings: Any, mesh) -> Any:
  """Shardings for a tree (e.g. optimizer state) whose leaves mirror parameters.

  A leaf takes the sharding of the parameter at the end of its path when their shapes match;
  otherwise (Adafactor's factored rows/columns, counters) it is replicated.
  """
  flat_params = jax.tree_util.tree_flatten_with_path(params)[0]
  flat_shardings = jax.tree.leaves(param_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  by_path = {_keys(path): (leaf.shape, sharding)
             for (path, leaf), sharding in zip(flat_params, flat_shardings)}

  def choose(path, leaf):
    keys = _keys(path)
    for i in range(len(keys)):
      hit = by_path.get(keys[i:])
      if hit is not None and hit[0] == getattr(leaf, "shape", None):
        return hit[1]
    return replicated(mesh)
  return jax.tree_util.tree_map_with_path(choose, tree)


def _keys(path) -> tuple:
  out = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        out.append(getattr(k, attr))
        break
  return tuple(out)


def host_to_global(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Each process's slice of the batch (leading axis) becomes part of one global array."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}
