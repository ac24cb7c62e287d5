"""Device meshes, THE logical-axis rules table, and host-to-global arrays.

One rules table maps the model's logical axis names to the ('data', 'model') mesh. FSDP maps
`embed` to 'data' as well, so parameters and optimizer state are split over data-parallel devices.
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

# Logical name -> mesh axis (None = replicated). Starts from t5x's standard rules.
RULES: tuple[tuple[str, Optional[str]], ...] = (
    ("batch", "data"),
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


def rules(fsdp: bool = False) -> tuple[tuple[str, Optional[str]], ...]:
  """The rules table; with fsdp, parameters' `embed` axis is split over 'data' too."""
  if not fsdp:
    return RULES
  return tuple((name, "data") if name == "embed" else (name, axis) for name, axis in RULES)


@gin.configurable
def make_mesh(mesh_shape: Sequence[int] = (-1, 1), devices: Optional[Sequence[Any]] = None
              ) -> jax.sharding.Mesh:
  """A ('data', 'model') mesh of the requested shape; one -1 entry takes the remaining devices."""
  devices = list(devices if devices is not None else jax.devices())
  shape = list(mesh_shape)
  if len(shape) != 2:
    raise ValueError(f"mesh_shape={tuple(mesh_shape)}; expected 2 entries (data, model)")
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
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  # jax.make_mesh orders TPU devices by their physical links; plan's compile-only topology
  # devices take the same path as the real pod's jax.devices() would.
  if devices == list(jax.devices()) or devices[0].platform == "tpu":
    return jax.make_mesh(tuple(shape), MESH_AXES, devices=devices, axis_types=auto)
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def logical_shardings(boxed_tree: Any, mesh: jax.sharding.Mesh, fsdp: bool = False) -> Any:
  """NamedShardings for a tree of nn.Partitioned (boxed) leaves; unboxed leaves are replicated.

  A dimension that the rules would split over a mesh axis it does not divide (BART's 50265
  vocabulary over model=2, say) is replicated instead, with a warning naming it.
  """
  specs = nn.get_partition_spec(boxed_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules(fsdp))
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
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules(fsdp)), backend.target(platform):
    yield mesh


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Batches: leading (example) axis over 'data', everything else replicated."""
  return NamedSharding(mesh, P("data"))


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
