"""The model's parameters abstractly: shapes, logical axis names and shardings (nothing allocated)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from t5lite.model.config import Config
from t5lite.model.network import EncoderDecoder
from t5lite.runtime import partitioning


def abstract_params(config: Config, mesh: jax.sharding.Mesh, fsdp: bool = False) -> Any:
  """ShapeDtypeStructs of the parameters with their shardings on `mesh` (nothing allocated)."""
  check_mesh(config, mesh)
  boxed = boxed_params_shape(config)
  shardings = partitioning.logical_shardings(boxed, mesh, fsdp)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      partitioning.raw_values(boxed), shardings)


def boxed_params_shape(config: Config) -> Any:
  """The parameters' shapes with their logical axis names (nn.Partitioned boxes), abstractly."""
  model = EncoderDecoder(config)
  dummy = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  # The key is made inside the trace: no concrete array (a TPU-topology mesh allows none).
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, x)["params"], dummy)


def check_mesh(config: Config, mesh: jax.sharding.Mesh) -> None:
  """Experts must split evenly over the mesh's 'expert' axis (a dense model may use that axis
  for data parallelism alone)."""
  n = partitioning.axis_size(mesh, "expert")
  if config.num_experts and config.num_experts % n:
    raise ValueError(f"Config.num_experts={config.num_experts} does not divide over the mesh's "
                     f"'expert' axis of {n} devices; choose a mesh_shape (data, expert, model) "
                     "whose expert entry divides the number of experts")
