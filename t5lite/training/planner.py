"""Will a training run fit, before renting the machine: train()'s exact step compiled ahead of
time for a TPU topology (libtpu's compiler runs on any CPU machine) or for N emulated CPU devices.

  plan = planner.plan(planner.target("v5e:2x2"), **planner.train_arguments())

The step is training/step.train_program's (the jitted train_step with its shardings and donated state,
from ShapeDtypeStructs: nothing is allocated), on a mesh of the topology's devices shaped by gin's
make_mesh.mesh_shape. XLA then reports per-device memory (memory_analysis), FLOPs
(cost_analysis) and the compiled HLO, whose collectives are counted.

Fits or not: on TPU, XLA's own verdict. compile() refuses a program whose peak exceeds the HBM
(RESOURCE_EXHAUSTED, caught: a Plan that does not fit), and the peak it compares is
memory_analysis' peak_memory_in_bytes, liveness-aware: below the plain sum of arguments, outputs
and temporaries when donated buffers are reused (a program whose sum exceeds the HBM may compile
and fit), above it when buffers filed under no heading are live. On CPU the sum is used (XLA:CPU's
peak leaves its temporaries out).

HBM per device is the compiler's own limit, the number its RESOURCE_EXHAUSTED errors name: a
probe program far too large for any chip is compiled and the limit read from the refusal
(libtpu formats it with two decimals of GiB). The Cloud TPU datasheet figure per chip is shown
beside it. jax shows v4 and v5p chips as one device holding both TensorCores (megacore), as on
their TPU VMs, so a device is a chip on every TPU here.

The process must not have a TPU backend of its own: `prepare_host` (before jax starts) makes
CPU the host platform and lets libtpu load beside a process that holds this machine's TPU.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import time
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from t5lite.model.config import Config, flops_per_example
from t5lite.runtime import devices, partitioning
from t5lite.training import train
from t5lite.training.settings import HINT, DataConfig, StepConfig, check_required
from t5lite.training.step import train_program

TOPOLOGY_EXAMPLES = ("v4:2x2x1", "v5e:2x2", "v5e:4x4", "v5p:2x2x1", "v6e:2x2", "cpu:8")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
GiB = 1024 ** 3
# Per chip, as Google's Cloud TPU documentation states it (units as written there).
DATASHEET_HBM = {
    "TPU v4": ("32 GiB, 2 TensorCores", "https://cloud.google.com/tpu/docs/v4"),
    "TPU v5 lite": ("16 GB", "https://cloud.google.com/tpu/docs/v5e"),
    "TPU v5": ("95 GB", "https://cloud.google.com/tpu/docs/v5p"),
    "TPU v6 lite": ("32 GB", "https://cloud.google.com/tpu/docs/v6e"),
}
# jax on a v4 / v5p TPU VM shows each chip as one device with both TensorCores.
_MEGACORE = ("v4", "v5p", "v5")
_SIZE = re.compile(r"([\d.]+)\s*([KMGT]?)i?B?\b")
_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": GiB, "T": 1024 ** 4}


def prepare_host() -> None:
  """Before jax starts: plan never runs a program, so the host platform is CPU (never a TPU it
  might find), libtpu may load beside a training process that holds this machine's TPU (its
  lockfile), and needs no GCE metadata server."""
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  if not jax._src.xla_bridge.backends_are_initialized():  # pylint: disable=protected-access
    jax.config.update("jax_platforms", "cpu")


@dataclasses.dataclass(frozen=True)
class Target:
  """A topology's devices and what each can hold."""
  name: str
  devices: list
  device_kind: str
  cores_per_device: int
  capacity_bytes: int  # per device: the compiler's HBM limit, or host RAM / N for cpu:N
  capacity_source: str


def target(name: str) -> Target:
  """The devices of a topology name: any TPU topology libtpu knows ('v5e:2x2', 'v4:2x2x1', ...)
  or 'cpu:N' (N emulated CPU devices; all of this host's RAM shared between them)."""
  kind, _, shape = name.partition(":")
  if kind == "cpu":
    return _cpu_target(name, shape)
  if not shape:
    raise ValueError(_bad_topology(name, "no shape after the chip name"))
  if importlib.util.find_spec("libtpu") is None:
    raise RuntimeError(f"--topology {name} needs the TPU compiler (libtpu), which is not "
                       "installed; pip install -e '.[plan]' installs the version matching jax")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  options = {"chip_config_name": "megacore"} if kind in _MEGACORE else {}
  try:
    devices = topologies.get_topology_desc(platform="tpu", topology_name=name, **options).devices
  except jax.errors.JaxRuntimeError as e:
    raise ValueError(_bad_topology(name, str(e).splitlines()[0])) from None
  capacity = probe_hbm(devices[0])
  sheet = DATASHEET_HBM.get(devices[0].device_kind)
  source = "XLA:TPU's limit (probed)" + (f"; datasheet {sheet[0]} per chip, {sheet[1]}"
                                         if sheet else "")
  return Target(name, list(devices), devices[0].device_kind,
                getattr(devices[0], "num_cores", 1), capacity, source)


def _bad_topology(name: str, why: str) -> str:
  return (f"--topology {name!r}: {why}; expected a TPU topology libtpu knows, e.g. "
          f"{', '.join(TOPOLOGY_EXAMPLES[:-1])}, or cpu:N for N emulated CPU devices")


def _cpu_target(name: str, count: str) -> Target:
  if not count.isdigit() or int(count) < 1:
    raise ValueError(_bad_topology(name, "cpu:N needs a positive device count"))
  n = int(count)
  if not jax._src.xla_bridge.backends_are_initialized():  # pylint: disable=protected-access
    devices.emulate_cpu_devices(n)  # else the first n of the devices jax has
  cpus = jax.devices("cpu")
  if len(cpus) < n:
    raise ValueError(f"--topology {name}: jax already started with {len(cpus)} CPU devices; "
                     f"emulated devices must be set before the first jax call")
  ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return Target(name, cpus[:n], cpus[0].device_kind, 1, ram // n,
                f"this host's RAM / {n} emulated devices")


def probe_hbm(device) -> int:
  """The compiler's usable HBM on `device`: compile a program far too large and read the
  'available HBM (15.75G)' of the refusal."""
  mesh = jax.sharding.Mesh(np.array([device]), ("x",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  too_big = jax.ShapeDtypeStruct((2 ** 42,), jnp.int8, sharding=sharding)  # 4 TiB
  try:
    jax.jit(lambda x: x + 1, in_shardings=sharding, out_shardings=sharding).lower(
        too_big).compile()
  except jax.errors.JaxRuntimeError as e:
    found = re.search(r"available HBM \(([^)]*)\)", str(e))
    if found:
      return parse_size(found.group(1))
    raise RuntimeError(f"could not read the HBM limit of {device.device_kind} from the "
                       f"compiler's message: {str(e).splitlines()[0]}") from None
  raise RuntimeError(f"a 4 TiB program compiled for {device.device_kind}; cannot probe its HBM")


def parse_size(text: str) -> int:
  """'15.75G' (XLA's binary units) -> bytes."""
  found = _SIZE.fullmatch(text.strip())
  if not found:
    raise ValueError(f"not a size: {text!r}")
  return int(float(found.group(1)) * _UNITS[found.group(2)])


def train_arguments() -> dict[str, Any]:
  """The step-shaping settings of train() as gin binds them now (config, lengths, batch,
  microbatches, fsdp, z_loss, seed); the macros a plan needs must be set."""
  bound = train.bound_settings()
  data, step = bound["data"], bound["step"]
  check_required("DataConfig", {k: DataConfig.MACROS[k] for k in PLAN_NEEDS}, HINT,
                 **{k: getattr(data, k) for k in PLAN_NEEDS})
  return {"config": bound["config"], "task_feature_lengths": data.task_feature_lengths,
          "batch_size": data.batch_size, "z_loss": step.z_loss,
          "microbatches": step.microbatches, "fsdp": step.fsdp, "seed": bound["seed"]}


PLAN_NEEDS = ("batch_size", "task_feature_lengths")


@dataclasses.dataclass
class Plan:
  """What the compiler says about train()'s step on a target. Bytes are per device."""
  topology: str
  device_kind: str
  devices: int
  cores_per_device: int
  mesh: dict[str, int]
  config: Config
  batch_size: int
  task_feature_lengths: dict[str, int]
  microbatches: int
  fsdp: bool
  parameters: int
  capacity_bytes: int
  capacity_source: str
  parameter_bytes: int
  optimizer_bytes: int
  batch_bytes: int
  trace_seconds: float
  compile_seconds: float
  formula_flops: float  # per step, all devices
  platform: str = "tpu"
  fits: bool = False
  argument_bytes: Optional[int] = None
  output_bytes: Optional[int] = None
  alias_bytes: Optional[int] = None
  temp_bytes: Optional[int] = None
  code_bytes: Optional[int] = None
  peak_bytes: Optional[int] = None  # XLA's peak (memory_analysis().peak_memory_in_bytes)
  xla_flops: Optional[float] = None  # per device
  collectives: dict[str, int] = dataclasses.field(default_factory=dict)
  compiler_error: Optional[str] = None  # the compiler's RESOURCE_EXHAUSTED line
  required_bytes: Optional[int] = None  # what the compiler said it needed, when it refused
  hlo: str = ""  # the compiled program (per device)
  lowered: str = ""  # StableHLO before XLA's passes
  jaxpr: str = ""

  @property
  def sum_bytes(self) -> Optional[int]:
    """Arguments + outputs not aliased to a donated argument + temporaries: an upper bound of
    the peak (as if all were live at once)."""
    if self.temp_bytes is None:
      return None
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

  @property
  def total_bytes(self) -> Optional[int]:
    """What the verdict is judged on. TPU: XLA's peak, the figure its own out-of-memory check
    compares with the HBM (liveness-aware: a program whose plain sum exceeds the HBM may compile
    and fit; it also holds buffers the memory analysis files under no other heading). Elsewhere
    the sum (XLA:CPU's peak leaves its temporaries out). When the compiler refused: what it said
    it needed."""
    if self.temp_bytes is None:
      return self.required_bytes
    if self.platform == "tpu" and self.peak_bytes:
      return self.peak_bytes
    return self.sum_bytes

  @property
  def margin_bytes(self) -> Optional[int]:
    total = self.total_bytes
    return None if total is None else self.capacity_bytes - total

  def advice(self) -> list[str]:
    """The knobs that lower per-device memory and are not already at their limit."""
    knobs = []
    if self.config.remat_policy != "full":  # minimal / save_attn_mlp_outputs keep more
      knobs.append("rematerialisation (--gin.Config.remat_policy=\"'full'\", or 'minimal')")
    if not self.fsdp and self.mesh["data"] > 1:
      knobs.append("FSDP (--gin.StepConfig.fsdp=True)")
    per_data = self.batch_size // (self.mesh["data"] * self.mesh.get("expert", 1))
    if per_data % (2 * self.microbatches) == 0:
      knobs.append(f"gradient accumulation (--gin.StepConfig.microbatches={2 * self.microbatches})")
    model = [m for m in (2, 4, 8, 16) if m > self.mesh["model"] and self.devices % m == 0
             and self.config.num_heads % m == 0]
    if model:
      expert = f"{self.mesh['expert']}, " if "expert" in self.mesh else ""
      knobs.append(f"model parallelism (--gin.make_mesh.mesh_shape=\"(-1, {expert}{model[0]})\")")
    knobs.append("a smaller BATCH_SIZE or a larger topology")
    return knobs

  def shortfall_line(self) -> str:
    """One line: what does not fit, by how much, and what would help."""
    need = self.total_bytes
    head = f"does not fit on {self.topology} ({self.device_kind})"
    if need is not None:
      head += (f": needs {need / GiB:.2f} GiB per device, has {self.capacity_bytes / GiB:.2f} "
               f"GiB (short by {(need - self.capacity_bytes) / GiB:.2f} GiB)")
    elif self.compiler_error:
      head += f": {self.compiler_error}"
    return f"{head}; try {', '.join(self.advice())}"

  @property
  def flops_note(self) -> Optional[str]:
    """XLA's cost analysis counts a loop's body once, whatever its trip count."""
    loops = [what for what, on in (("the microbatch loop", self.microbatches > 1),
                                   ("the scanned layers", getattr(self.config, "scan_layers",
                                                                  False))) if on]
    if not loops:
      return None
    return f"XLA counts the body of {' and '.join(loops)} once: its FLOPs are an undercount"

  def to_json(self) -> dict[str, Any]:
    xla_total = None if self.xla_flops is None else self.xla_flops * self.devices
    return {
        "topology": self.topology, "platform": self.platform, "device_kind": self.device_kind,
        "devices": self.devices,
        "cores_per_device": self.cores_per_device, "mesh": self.mesh,
        "batch_size": self.batch_size, "task_feature_lengths": self.task_feature_lengths,
        "microbatches": self.microbatches, "fsdp": self.fsdp,
        "config": dataclasses.asdict(self.config), "parameters": self.parameters,
        "per_device_bytes": {
            "parameters": self.parameter_bytes, "optimizer_state": self.optimizer_bytes,
            "batch": self.batch_bytes, "arguments": self.argument_bytes,
            "outputs": self.output_bytes, "aliased": self.alias_bytes,
            "temporaries": self.temp_bytes, "code": self.code_bytes, "sum": self.sum_bytes,
            "xla_peak": self.peak_bytes, "total": self.total_bytes},
        "capacity_bytes": self.capacity_bytes, "capacity_source": self.capacity_source,
        "fits": self.fits, "margin_bytes": self.margin_bytes,
        "trace_seconds": round(self.trace_seconds, 3),
        "compile_seconds": round(self.compile_seconds, 3),
        "flops": {"xla_per_device": self.xla_flops, "xla_total": xla_total,
                  "formula_per_device": self.formula_flops / self.devices,
                  "formula_total": self.formula_flops,
                  "xla_over_formula": None if xla_total is None
                  else xla_total / self.formula_flops, "note": self.flops_note},
        "collectives": self.collectives, "compiler_error": self.compiler_error,
        "message": None if self.fits else self.shortfall_line(),
    }


def plan(where: Target, *, config: Config, task_feature_lengths: Mapping[str, int],
         batch_size: int, z_loss: float = 1e-4, microbatches: int = 1, fsdp: bool = False,
         seed: int = 0, keep_text: bool = False) -> Plan:
  """Compiles train()'s step for a target's devices on a mesh shaped by gin's
  make_mesh.mesh_shape. A program the compiler refuses for lack of memory is a Plan with
  fits=False, not an error. keep_text: also keep the jaxpr and the StableHLO (the compiled HLO is
  always kept)."""
  hosts = len({d.process_index for d in where.devices})
  if batch_size % hosts:  # train() on that pod would refuse it (each host reads batch / hosts)
    raise ValueError(f"batch_size={batch_size} must divide by the {hosts} hosts of {where.name}")
  mesh = partitioning.make_mesh(devices=where.devices)
  t0 = time.perf_counter()
  with partitioning.activate(mesh, fsdp):
    program = train_program(
        config, mesh, DataConfig(None, dict(task_feature_lengths), batch_size),
        StepConfig(z_loss=z_loss, microbatches=microbatches, fsdp=fsdp), seed=seed)
    traced = program.step_fn.trace(program.abstract_state, program.abstract_batch)
    lowered = traced.lower()
  trace_s = time.perf_counter() - t0
  state = program.abstract_state
  result = Plan(
      topology=where.name, platform=where.devices[0].platform, device_kind=where.device_kind,
      devices=len(where.devices),
      cores_per_device=where.cores_per_device, mesh=dict(mesh.shape), config=config,
      batch_size=batch_size, task_feature_lengths=dict(task_feature_lengths),
      microbatches=microbatches, fsdp=fsdp,
      parameters=sum(math.prod(x.shape) for x in jax.tree.leaves(state.params)),
      capacity_bytes=where.capacity_bytes, capacity_source=where.capacity_source,
      parameter_bytes=per_device_bytes(state.params),
      optimizer_bytes=per_device_bytes(state.opt_state),
      batch_bytes=per_device_bytes(program.abstract_batch), trace_seconds=trace_s,
      compile_seconds=0.0,
      formula_flops=flops_per_example(config, task_feature_lengths["inputs"],
                                      task_feature_lengths["targets"]) * batch_size)
  if keep_text:
    result.jaxpr = str(traced.jaxpr)
    result.lowered = lowered.as_text()
  t0 = time.perf_counter()
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    result.compile_seconds = time.perf_counter() - t0
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    result.compiler_error = str(e).strip().splitlines()[0]
    result.required_bytes = _required_bytes(result.compiler_error)
    return result
  result.compile_seconds = time.perf_counter() - t0
  memory = compiled.memory_analysis()
  result.argument_bytes = memory.argument_size_in_bytes
  result.output_bytes = memory.output_size_in_bytes
  result.alias_bytes = memory.alias_size_in_bytes
  result.temp_bytes = memory.temp_size_in_bytes
  result.code_bytes = memory.generated_code_size_in_bytes
  result.peak_bytes = getattr(memory, "peak_memory_in_bytes", 0) or None
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  result.xla_flops = float(cost["flops"]) if cost and "flops" in cost else None
  result.hlo = compiled.as_text()
  result.collectives = count_collectives(result.hlo)
  result.fits = result.total_bytes <= result.capacity_bytes
  return result


def per_device_bytes(tree: Any) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs with shardings (the largest shard)."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    total += math.prod(shape) * x.dtype.itemsize
  return total


def count_collectives(hlo: str) -> dict[str, int]:
  """Collective instructions in HLO text (an async pair counts once, by its -start)."""
  counts = {}
  for op in COLLECTIVES:
    counts[op] = len(re.findall(rf"\s{op}(?:-start)?\(", hlo))
  return counts


def _required_bytes(message: str) -> Optional[int]:
  """What a RESOURCE_EXHAUSTED message says the program needs, per device."""
  found = re.search(r"required for [^(]*\(([^)]*)\)", message) or re.search(
      r"Used ([\d.]+[KMGT]?) of", message)
  return parse_size(found.group(1)) if found else None
