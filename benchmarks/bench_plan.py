"""`t5lite plan` over a list of (model, TPU topology, knobs): per-chip memory, fit and compile time.

  python benchmarks/bench_plan.py --cases small:v5e:2x2:4,1:128:scan [more cases ...]
  python benchmarks/bench_plan.py --table          # the README's "which slice" table

A case is MODEL:TOPOLOGY:MESH:BATCH[:KNOB,...] with MESH "data,model" and knobs among
scan (Config.scan_layers), remat=POLICY, fsdp, micro=N (train.microbatches). Each case runs the
real command (`t5lite plan --json`, runs/pretrain.gin + models/t5_1_1/MODEL.gin: Adafactor, bf16
activations, 512/114) in a process of its own, one at a time, and the script prints one
markdown row per case plus the JSON. The libtpu compiler runs on this machine's CPU; nothing is
allocated on a TPU. "compile s" is wall time (the 1-minute load average is printed beside it).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 1 << 30

# The README's table: the smallest v5e and v4 slice (of those compiled) where each size trains at
# batch 128 (XL and XXL: 256, FSDP), with the knobs that make it fit.
TABLE = [
    "small:v5e:2x2:4,1:128:scan", "small:v4:2x2x1:4,1:128:scan",
    "base:v5e:2x2:4,1:128:scan,remat=save_attn_mlp_outputs", "base:v4:2x2x1:4,1:128:scan",
    "large:v5e:2x2:4,1:128:scan,remat=full", "large:v4:2x2x1:4,1:128:scan,remat=minimal",
    "xl:v5e:2x2:4,1:256:scan,fsdp,remat=full", "xl:v4:2x2x1:4,1:256:scan,fsdp,remat=full",
    "xxl:v5e:4x4:16,1:256:scan,fsdp,remat=full", "xxl:v4:2x2x2:8,1:256:scan,fsdp,remat=full",
]


def bindings(case: str) -> tuple[str, list[str], dict]:
  model, chip, shape, mesh, batch, *rest = case.split(":")
  knobs = [k for k in (rest[0].split(",") if rest else []) if k]
  args = ["--gin_file=runs/pretrain.gin", f"--gin_file=models/t5_1_1/{model}.gin",
          f"--gin.make_mesh.mesh_shape=({mesh})", f"--gin.BATCH_SIZE={batch}"]
  for knob in knobs:
    name, _, value = knob.partition("=")
    args.append({"scan": "--gin.Config.scan_layers=True",
                 "fsdp": "--gin.train.fsdp=True",
                 "remat": f"--gin.Config.remat_policy='{value}'",
                 "micro": f"--gin.train.microbatches={value}"}[name])
  return f"{chip}:{shape}", args, {"model": model, "knobs": ",".join(knobs) or "-"}


def run(case: str, timeout: float) -> dict:
  topology, args, info = bindings(case)
  cmd = [sys.executable, "-m", "t5lite", "plan", "--topology", topology, "--json", *args]
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
  wall = time.perf_counter() - t0
  load = os.getloadavg()[0]
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
  if not lines:
    return {**info, "case": case, "error": proc.stderr.strip().splitlines()[-1:], "wall": wall}
  out = json.loads(lines[-1])
  return {**info, "case": case, "plan": out, "wall": wall, "load": load, "exit": proc.returncode}


def row(r: dict) -> str:
  if "plan" not in r:
    return f"| {r['case']} | error: {r['error']} |"
  p = r["plan"]
  mem = p["per_device_bytes"]
  mesh = f"({p['mesh']['data']}, {p['mesh']['model']})"
  return (f"| {r['model']} | {p['parameters'] / 1e9:.2f}B | {p['topology']} | {mesh} | "
          f"{p['batch_size']} | {r['knobs']} | {mem['total'] / GIB:.2f} | "
          f"{p['capacity_bytes'] / GIB:.2f} | {'yes' if p['fits'] else 'no'} | "
          f"{p['margin_bytes'] / GIB:+.2f} | {p['compile_seconds']:.0f} | {r['load']:.1f} |")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", nargs="*", default=[])
  parser.add_argument("--table", action="store_true", help="the README's cases")
  parser.add_argument("--timeout", type=float, default=3600)
  parser.add_argument("--json_out", default=None, help="also append each result here (JSONL)")
  args = parser.parse_args()
  cases = (TABLE if args.table else []) + args.cases
  print("| model | params | topology | mesh | batch | knobs | peak GiB/chip | capacity GiB | "
        "fits | margin GiB | compile s | load |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
  for case in cases:
    result = run(case, args.timeout)
    print(row(result), flush=True)
    if args.json_out:
      with open(args.json_out, "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
  main()
