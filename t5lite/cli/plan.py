"""`t5lite plan`: will `t5lite train` with these gin files fit on a TPU topology? Compiles its
exact step for that topology on this machine (no TPU needed) and prints memory, FLOPs,
collectives and the verdict. Exit 0: fits; 1: does not fit (one line says by how much and
which knobs would help)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from t5lite.cli import common

DUMPS = {"train_step.jaxpr.txt": "jaxpr", "train_step.stablehlo.mlir": "lowered",
         "train_step.hlo.txt": "hlo"}


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(prog="t5lite plan", description=(
      "Compile `t5lite train`'s step for a TPU topology (or N emulated CPU devices) from the same "
      "gin files and flags, without a TPU, and report per-device memory, whether it fits, FLOPs "
      "and collectives. Needs the TPU compiler: pip install -e '.[plan]'."))
  parser.add_argument("--topology", required=True,
                      help="a TPU topology, e.g. v4:2x2x1, v5e:2x2, v5e:4x4, v5p:2x2x1, v6e:2x2; "
                           "or cpu:N for N emulated CPU devices")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  parser.add_argument("--dump", default=None, metavar="DIR",
                      help="also write the step's jaxpr, StableHLO and compiled HLO to DIR "
                           f"({', '.join(DUMPS)})")
  common.add_gin_flags(parser)
  args = common.parse_args(parser, argv)
  from t5lite.training import planner  # pylint: disable=g-import-not-at-top
  planner.prepare_host()
  common.parse_gin(args)
  arguments = planner.train_arguments()
  with common.native_stderr_silenced():  # libtpu's lines about the TPU VM this is not
    where = planner.target(args.topology)
  result = planner.plan(where, keep_text=args.dump is not None, **arguments)
  if args.dump:
    os.makedirs(args.dump, exist_ok=True)
    for name, field in DUMPS.items():
      if getattr(result, field):
        with open(os.path.join(args.dump, name), "w") as f:
          f.write(getattr(result, field))
  if args.json:
    print(json.dumps(result.to_json()), flush=True)
  else:
    print(report(result), flush=True)
  if not result.fits:
    print(f"t5lite plan: {result.shortfall_line()}", file=sys.stderr)
    return 1
  return 0


def report(p) -> str:
  """The plan as aligned lines (bytes and FLOPs per device unless said otherwise)."""
  c = p.config
  li, lt = p.task_feature_lengths["inputs"], p.task_feature_lengths["targets"]
  cores = f"{p.cores_per_device} TensorCore{'s' if p.cores_per_device > 1 else ''} each"
  lines = [
      f"t5lite plan: {p.topology}, {p.devices} x {p.device_kind}"
      + (f" ({cores})" if p.device_kind.startswith("TPU") else "")
      + f", mesh {' x '.join(f'{k} {v}' for k, v in p.mesh.items())}, fsdp "
      f"{'on' if p.fsdp else 'off'}, microbatches {p.microbatches}",
      f"model         {p.parameters / 1e6:.2f}M parameters ({c.param_dtype}), activations "
      f"{c.dtype}, {c.num_encoder_layers}+{c.num_decoder_layers} layers, d_model {c.emb_dim}"
      + (f", {c.num_experts} experts" if c.num_experts else ""),
      f"batch         {p.batch_size} x {li}/{lt} (inputs/targets), "
      f"{p.batch_size // (p.mesh['data'] * p.mesh.get('expert', 1))} per data shard",
      f"time          trace + lower {p.trace_seconds:.1f} s, compile {p.compile_seconds:.1f} s",
      f"per device    parameters {_bytes(p.parameter_bytes)}, optimizer state "
      f"{_bytes(p.optimizer_bytes)}, batch {_bytes(p.batch_bytes)}",
  ]
  if p.temp_bytes is not None:
    lines.append(
        f"              arguments {_bytes(p.argument_bytes)} + outputs {_bytes(p.output_bytes)} "
        f"- aliased {_bytes(p.alias_bytes)} + temporaries {_bytes(p.temp_bytes)} = "
        f"{_bytes(p.sum_bytes)}; code {_bytes(p.code_bytes)}")
    if p.peak_bytes:
      judged = "the verdict's figure" if p.total_bytes == p.peak_bytes else "not counted here"
      lines.append(f"              XLA's peak {_bytes(p.peak_bytes)} ({judged})")
  else:
    lines.append(f"              the compiler refused: {p.compiler_error}")
  lines.append(f"capacity      {_bytes(p.capacity_bytes)} per device: {p.capacity_source}")
  if p.fits:
    lines.append(f"fits          yes, margin {_bytes(p.margin_bytes)} "
                 f"({100 * p.margin_bytes / p.capacity_bytes:.1f}% of capacity)")
  else:
    lines.append("fits          NO")
  f = p.to_json()["flops"]
  if f["xla_per_device"] is not None:
    lines.append(
        f"FLOPs/step    XLA {_flops(f['xla_per_device'])} per device, "
        f"{_flops(f['xla_total'])} total; formula {_flops(f['formula_per_device'])} per device, "
        f"{_flops(f['formula_total'])} total (XLA / formula {f['xla_over_formula']:.3f})")
    if f["note"]:
      lines.append(f"              {f['note']}")
    lines.append("collectives   " + ", ".join(f"{k} {v}" for k, v in p.collectives.items()))
  return "\n".join(lines)


def _bytes(n: int) -> str:
  for unit, size in (("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
    if abs(n) >= size:
      return f"{n / size:.2f} {unit}"
  return f"{n} B"


def _flops(n: float) -> str:
  for unit, size in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
    if n >= size:
      return f"{n / size:.2f} {unit}"
  return f"{n:.0f} FLOP"
