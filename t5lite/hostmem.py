"""Host memory: make glibc keep freed memory for reuse, so XLA:CPU's per-step buffers stop
page-faulting.

XLA:CPU allocates each execution's temporary buffer (3.4 GB for a T5 1.1 small train step at
batch 8, 512/114) with posix_memalign and frees it at the end of the step. glibc serves a block
that large with a fresh mmap (from a worker thread's arena, whose heaps cap at 64 MB, it falls
back to mmap whatever M_MMAP_MAX says) and munmaps it on free, so every step touched ~840k new
pages: ~1M minor page faults and 1.3 s of kernel time per 4.5 s step, several times more when
another library (PyTorch) shared the process. With one arena, no mmap and no trimming, the block
comes from the brk heap and is reused by the next step (0 faults once warm); see
benchmarks/RESULTS_train.md.

`reuse_freed_memory()` runs when `t5lite` is first imported. It must run before any second thread
calls malloc (glibc fixes its arena limit then), which holds for `import t5lite` before jax
creates its CPU client. Set T5LITE_MALLOC=default to leave glibc's defaults alone
(T5LITE_MALLOC=reuse, or unset, applies them).
"""
from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
applied = False


def reuse_freed_memory() -> bool:
  """One malloc arena, no mmap, no trimming (glibc on Linux only); True if applied."""
  global applied
  if applied:
    return True
  choice = os.environ.get("T5LITE_MALLOC", "reuse")
  if choice not in ("reuse", "default"):
    raise ValueError(f"T5LITE_MALLOC={choice!r}: expected 'reuse' (keep freed memory, the "
                     f"default) or 'default' (glibc's own malloc settings)")
  if not sys.platform.startswith("linux") or choice == "default":
    return False
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version  # glibc only (musl has no mallopt with these options)
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  # M_TRIM_THRESHOLD takes a size_t inside glibc: -1 is "never trim".
  applied = bool(mallopt(_M_ARENA_MAX, 1) and mallopt(_M_MMAP_MAX, 0)
                 and mallopt(_M_TRIM_THRESHOLD, -1))
  return applied
