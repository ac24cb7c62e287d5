"""The one switch for backend-specific tricks: they apply only when XLA runs on CPU.

Two CPU-only tricks exist, each measured in benchmarks/RESULTS.md:
  * kernels (`cpu_kernels()`, decided when a function is traced): ops.py's custom-VJP products,
    written for XLA:CPU's fast kernels. When tracing for TPU or GPU (a mesh of such devices,
    set by partitioning.activate, or that default backend) the plain jnp/lax ops run instead.
  * host memory (`tune_host_memory()`): glibc keeps freed memory (one malloc arena, no mmap, no
    trimming), so XLA:CPU's multi-GB per-step temporary buffer stops being page-faulted in again
    every step. It must run before a second thread calls malloc (glibc fixes its arena limit
    then), i.e. before jax creates its CPU client, so it decides from the environment
    (`host_runs_on_cpu()`), not from an initialised backend. The `t5lite` command applies it
    (`prepare_process`); a library user gets it by setting T5LITE_MALLOC=reuse before
    `import t5lite`. T5LITE_MALLOC=default leaves glibc's settings alone.

prepare_process() also makes jax's platform CPU on a machine without an accelerator (unless
JAX_PLATFORMS says otherwise): jax would otherwise probe for a TPU, and with libtpu installed (the
`plan` extra) print libtpu's errors about TPU worker hostnames on every command.
"""
from __future__ import annotations

import contextlib
import contextvars
import ctypes
import glob
import os
import sys
from typing import Optional

_target: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("t5lite_target",
                                                                        default=None)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
malloc_tuned = False


@contextlib.contextmanager
def target(platform: str):
  """Code traced inside is compiled for `platform` ('cpu', 'gpu', 'tpu', ...)."""
  token = _target.set(platform)
  try:
    yield
  finally:
    _target.reset(token)


def target_platform() -> str:
  """The platform being traced for: the innermost `target`, else jax's default backend."""
  platform = _target.get()
  if platform is None:
    import jax  # pylint: disable=g-import-not-at-top
    platform = jax.default_backend()
  return platform


def cpu_kernels() -> bool:
  """True when tracing for XLA:CPU: ops.py's CPU-tuned products apply."""
  return target_platform() == "cpu"


def host_runs_on_cpu() -> bool:
  """Whether this process's XLA will run on CPU, decided before jax initialises: JAX_PLATFORMS
  when set, else whether an accelerator device node exists (TPU VMs: /dev/accel* or /dev/vfio;
  NVIDIA GPUs: /dev/nvidia0...)."""
  platforms = os.environ.get("JAX_PLATFORMS") or os.environ.get("JAX_PLATFORM_NAME") or ""
  if platforms.strip():
    return platforms.split(",")[0].strip().lower() == "cpu"
  accelerators = (glob.glob("/dev/accel*") + glob.glob("/dev/vfio/[0-9]*")
                  + glob.glob("/dev/nvidia[0-9]*"))
  return not accelerators


def prepare_process() -> None:
  """What the `t5lite` command does first, before jax starts: CPU as jax's platform where there is
  no accelerator, and the host-memory tuning on CPU."""
  if host_runs_on_cpu() and not (os.environ.get("JAX_PLATFORMS")
                                 or os.environ.get("JAX_PLATFORM_NAME")):
    os.environ["JAX_PLATFORMS"] = "cpu"
  tune_host_memory()


def tune_host_memory() -> bool:
  """One malloc arena, no mmap, no trimming (glibc on Linux, XLA on CPU); True if applied."""
  global malloc_tuned
  if malloc_tuned:
    return True
  choice = os.environ.get("T5LITE_MALLOC", "reuse")
  if choice not in ("reuse", "default"):
    raise ValueError(f"T5LITE_MALLOC={choice!r}: expected 'reuse' (keep freed memory, the "
                     f"default on CPU) or 'default' (glibc's own malloc settings)")
  if choice == "default" or not sys.platform.startswith("linux") or not host_runs_on_cpu():
    return False
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version  # glibc only (musl has no mallopt with these options)
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  # M_TRIM_THRESHOLD takes a size_t inside glibc: -1 is "never trim".
  malloc_tuned = bool(mallopt(_M_ARENA_MAX, 1) and mallopt(_M_MMAP_MAX, 0)
                      and mallopt(_M_TRIM_THRESHOLD, -1))
  return malloc_tuned
