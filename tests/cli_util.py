"""Runs the real `t5lite` command in subprocesses (several at once) for the CLI tests."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import subprocess
import sys
from typing import Mapping, Optional, Sequence

# Two at a time: each process loads TensorFlow and JAX (~1 GB); the box has 2 cores.
PARALLEL = 2


@dataclasses.dataclass
class Result:
  args: list
  code: int
  out: str
  err: str

  def __str__(self) -> str:
    return f"t5lite {' '.join(self.args)} -> exit {self.code}\nstdout:\n{self.out}\nstderr:\n{self.err}"


def env(extra: Optional[Mapping[str, str]] = None) -> dict:
  e = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "T5LITE_TRACEBACK")}
  e.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **(extra or {}))
  return e


def run(args: Sequence[str], cwd=None, extra_env: Optional[Mapping[str, str]] = None,
        timeout: float = 300) -> Result:
  proc = subprocess.run([sys.executable, "-m", "t5lite", *map(str, args)], cwd=cwd,
                        env=env(extra_env), capture_output=True, text=True, timeout=timeout)
  return Result(list(map(str, args)), proc.returncode, proc.stdout, proc.stderr)


def run_many(cases: Mapping[str, tuple], timeout: float = 300) -> dict[str, Result]:
  """{name: (args, cwd)} run PARALLEL at a time; {name: Result}."""
  with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
    futures = {name: pool.submit(run, args, cwd, None, timeout)
               for name, (args, cwd) in cases.items()}
    return {name: f.result() for name, f in futures.items()}
