"""What this process runs on: emulated CPU devices, JAX's multi-controller runtime, this host's
place among the hosts, and the peak FLOP/s of a device kind (the MFU's denominator)."""
from __future__ import annotations

import os
from typing import Optional

import gin
import jax

# Dense bf16 peak FLOP/s per device, as published by each vendor (MFU = achieved / peak).
PEAK_FLOPS = {"h100": 989e12, "h200": 989e12, "a100": 312e12, "tpu v4": 275e12,
              "tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v5p": 459e12, "tpu v6": 918e12}


@gin.configurable
def emulate_cpu_devices(num_devices: int = 0) -> None:
  """Emulate `num_devices` CPU devices (0 = leave as is). Must run before jax touches a device."""
  if num_devices <= 0:
    return
  if jax._src.xla_bridge.backends_are_initialized():  # pylint: disable=protected-access
    have = jax.device_count()
    if have != num_devices and jax.default_backend() == "cpu":
      raise RuntimeError(f"emulate_cpu_devices({num_devices}): jax is already initialised with "
                         f"{have} devices; set it before the first jax call")
    return
  jax.config.update("jax_num_cpu_devices", num_devices)


def initialize_distributed() -> bool:
  """Start JAX's multi-controller runtime when this is one process of several.

  Order: explicit environment (T5LITE_COORDINATOR_ADDRESS, T5LITE_NUM_PROCESSES,
  T5LITE_PROCESS_ID) -> TPU VM pod slice or SLURM job (jax detects the cluster itself) -> single
  process. Returns True when jax.distributed was initialised.
  """
  env = os.environ
  if jax._src.distributed.global_state.client is not None:  # pylint: disable=protected-access
    return True
  if env.get("T5LITE_COORDINATOR_ADDRESS"):
    missing = [k for k in ("T5LITE_NUM_PROCESSES", "T5LITE_PROCESS_ID") if k not in env]
    if missing:
      raise ValueError(f"T5LITE_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not")
    jax.distributed.initialize(coordinator_address=env["T5LITE_COORDINATOR_ADDRESS"],
                               num_processes=int(env["T5LITE_NUM_PROCESSES"]),
                               process_id=int(env["T5LITE_PROCESS_ID"]))
    return True
  if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
    jax.distributed.initialize()
    return True
  if env.get("TPU_WORKER_HOSTNAMES", "").count(",") >= 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    jax.distributed.initialize()
    return True
  return False


_GCE_ATTRIBUTES = "http://metadata.google.internal/computeMetadata/v1/instance/attributes/"


def host_and_count() -> tuple[int, int]:
  """(this host's index, number of hosts) without starting jax.distributed, for jobs that split
  work over hosts by themselves (`t5lite cache --shard auto`). In order: T5LITE_PROCESS_ID /
  T5LITE_NUM_PROCESSES; TPU_WORKER_ID / TPU_WORKER_HOSTNAMES; a TPU VM's metadata server
  (agent-worker-number, worker-network-endpoints); SLURM_PROCID / SLURM_NTASKS; else (0, 1)."""
  env = os.environ
  for index, count in (("T5LITE_PROCESS_ID", "T5LITE_NUM_PROCESSES"),
                       ("SLURM_PROCID", "SLURM_NTASKS")):
    if env.get(index) and env.get(count):
      return int(env[index]), int(env[count])
  if env.get("TPU_WORKER_ID") and env.get("TPU_WORKER_HOSTNAMES"):
    return int(env["TPU_WORKER_ID"]), len(env["TPU_WORKER_HOSTNAMES"].split(","))
  import urllib.request  # pylint: disable=g-import-not-at-top  (only off the fast paths)
  try:
    def get(name):
      request = urllib.request.Request(_GCE_ATTRIBUTES + name, headers={"Metadata-Flavor": "Google"})
      with urllib.request.urlopen(request, timeout=2) as response:
        return response.read().decode()
    return int(get("agent-worker-number")), len(get("worker-network-endpoints").split(","))
  except (OSError, ValueError):  # not on a TPU VM
    return 0, 1


def peak_flops(device_kind: str) -> Optional[float]:
  """Published dense bf16 FLOP/s of a device kind (jax's device_kind), None when unknown (CPU)."""
  kind = device_kind.lower()
  return next((peak for name, peak in PEAK_FLOPS.items() if name in kind), None)


def peak_flops_per_device() -> Optional[float]:
  """peak_flops of this process's first device."""
  return peak_flops(jax.devices()[0].device_kind)
