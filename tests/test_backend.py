"""t5lite.backend.tune_host_memory: glibc keeps freed memory, so XLA:CPU's per-call buffers stop page-faulting."""
import os
import subprocess
import sys

import pytest

_FAULTS = """
import resource, sys
import t5lite, jax, jax.numpy as jnp
f = jax.jit(lambda x: (jnp.sin(x) @ jnp.cos(x)).sum())  # two 64 MB temporaries per call
x = jnp.ones((4096, 4096), jnp.float32)
for _ in range(3):
    f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    f(x).block_until_ready()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, t5lite.backend.malloc_tuned)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_hostmem_reuses_freed_memory():
  """XLA:CPU's per-call temporary buffers come back without page faults once t5lite is imported;
  with T5LITE_MALLOC=default (glibc's own settings) every call faults them in again."""
  def faults(env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "T5LITE_MALLOC")}
    env.update(env_extra, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True,
                         check=True, timeout=300).stdout.split()
    return int(out[0]), out[1] == "True"
  tuned, applied = faults({})
  default, not_applied = faults({"T5LITE_MALLOC": "default"})
  assert applied and not not_applied
  pages = 2 * 4096 * 4096 * 4 // 4096  # the two temporaries, in 4 KiB pages, per call
  assert default > 2 * pages, (tuned, default)  # >= 3 calls' worth of fresh pages without tuning
  assert tuned * 20 < default, (tuned, default)  # measured: ~16k against ~3.2M


def test_hostmem_bad_setting_is_named():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(T5LITE_MALLOC="off", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", "import t5lite"], env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode != 0
  assert "T5LITE_MALLOC='off'" in proc.stderr and "'default'" in proc.stderr
