"""runtime/backend.py: the host-memory tuning (glibc keeps freed memory, so XLA:CPU's per-call
buffers stop page-faulting) and the process set-up the `t5lite` command does first."""
import os
import subprocess
import sys

import pytest

from t5lite import main
from t5lite.runtime import backend

_FAULTS = """
import resource, sys
import t5lite, jax, jax.numpy as jnp
from t5lite.runtime import backend
f = jax.jit(lambda x: (jnp.sin(x) @ jnp.cos(x)).sum())  # two 64 MB temporaries per call
x = jnp.ones((4096, 4096), jnp.float32)
for _ in range(3):
    f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    f(x).block_until_ready()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, backend.malloc_tuned)
"""


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "T5LITE_MALLOC")}
  env.update(extra, JAX_PLATFORMS="cpu")
  return env


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_hostmem_reuses_freed_memory_when_asked():
  """With T5LITE_MALLOC=reuse at import, XLA:CPU's per-call temporaries come back without page
  faults; a plain `import t5lite` changes nothing, and every call faults them in again."""
  def faults(**env_extra):
    out = subprocess.run([sys.executable, "-c", _FAULTS], env=_env(**env_extra),
                         capture_output=True, text=True, check=True, timeout=300).stdout.split()
    return int(out[0]), out[1] == "True"
  tuned, applied = faults(T5LITE_MALLOC="reuse")
  default, not_applied = faults()
  assert applied and not not_applied
  pages = 2 * 4096 * 4096 * 4 // 4096  # the two temporaries, in 4 KiB pages, per call
  assert default > 2 * pages, (tuned, default)  # >= 3 calls' worth of fresh pages untuned
  # Measured: Python 3.11 / jax 0.10 ~98k against ~3.2M; Python 3.12 / jax 0.12 ~33k against ~101k.
  assert tuned * 2 < default, (tuned, default)


def test_hostmem_bad_setting_is_named():
  proc = subprocess.run([sys.executable, "-c", "import t5lite"], env=_env(T5LITE_MALLOC="off"),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "T5LITE_MALLOC='off'" in proc.stderr and "'default'" in proc.stderr


def test_the_command_prepares_the_process_first(monkeypatch):
  """`t5lite` sets the process up before any command (and before jax starts): CPU as jax's
  platform on a machine without an accelerator, and the memory tuning; a bad setting is one
  line, exit 2."""
  calls = []
  monkeypatch.setattr(backend, "tune_host_memory", lambda: calls.append("tuned"))
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  monkeypatch.setattr(backend, "host_runs_on_cpu", lambda: True)
  with pytest.raises(SystemExit) as e:
    main.run_with_args(["--help"], prepare=True)
  assert e.value.code == 0 and calls == ["tuned"] and os.environ["JAX_PLATFORMS"] == "cpu"
  monkeypatch.delenv("JAX_PLATFORMS")
  monkeypatch.setattr(backend, "host_runs_on_cpu", lambda: False)  # a GPU or TPU machine
  with pytest.raises(SystemExit):
    main.run_with_args(["--help"], prepare=True)
  assert "JAX_PLATFORMS" not in os.environ
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")


@pytest.mark.slow
def test_no_libtpu_or_tensorflow_lines_on_a_cpu_machine(tmp_path):
  """A training run prints nothing of libtpu's or TensorFlow's on a CPU machine, whatever extras
  are installed (the test extras include libtpu), and JAX_PLATFORMS unset."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS",
                                                          "TF_CPP_MIN_LOG_LEVEL")}
  proc = subprocess.run([sys.executable, "-m", "t5lite", "train", "--gin_file=runs/demo.gin",
                         f"--gin.MODEL_DIR='{tmp_path / 'run'}'", "--gin.TRAIN_STEPS=1",
                         "--gin.BATCH_SIZE=8", "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, "
                         "'targets': 8}", "--gin.Config.emb_dim=32", "--gin.Config.mlp_dim=32",
                         "--gin.EvalConfig.period=0", "--gin.EvalConfig.predict_examples=0"],
                        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr
  for noise in ("E0000", "TPU worker", "libtpu", "oneDNN", "cuda drivers", "absl::InitializeLog"):
    assert noise not in proc.stderr, proc.stderr
