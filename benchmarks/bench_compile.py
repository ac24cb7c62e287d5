"""Compile time of the real train step: scanned vs unrolled layer stacks (and remat policies), CPU.

  python benchmarks/bench_compile.py [--models small,base] [--remat none,full] [--mesh 1,1]
                                     [--batch 8] [--lengths 512,114] [--optimizer adafactor]
                                     [--repeats 1]

Each measurement runs in a spawned process of its own (no compile cache shared between them):
the abstract TrainState (jax.eval_shape of the init, shardings from the logical-axis rules, as
train_state.create_train_state builds them), then train_step_lib.train_step jitted with those shardings and a
donated state, lowered with ShapeDtypeStruct inputs only (nothing is allocated) and compiled.
"trace+lower s" is jit(...).lower(...), "compile s" is .compile() (wall; "compile CPU s" the
process CPU time of it, less sensitive to a shared machine's load); "HLO ops" counts the lowered
module's operations (text lines with " = "), the size XLA has to optimise. bf16 activations,
fp32 parameters (Config defaults), T5 1.1 architectures from gin_configs/models/t5_1_1.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import time

MODELS = {  # T5 1.1 (t5x examples/t5/t5_1_1): d_model, heads, d_ff, layers per stack
    "small": dict(emb_dim=512, num_heads=6, head_dim=64, mlp_dim=1024, num_encoder_layers=8,
                  num_decoder_layers=8),
    "base": dict(emb_dim=768, num_heads=12, head_dim=64, mlp_dim=2048, num_encoder_layers=12,
                 num_decoder_layers=12),
    "large": dict(emb_dim=1024, num_heads=16, head_dim=64, mlp_dim=2816, num_encoder_layers=24,
                  num_decoder_layers=24),
}


def measure(model: str, scan: bool, remat: str, mesh_shape: tuple, batch: int, lengths: tuple,
            optimizer: str) -> dict:
  n_devices = mesh_shape[0] * mesh_shape[1]
  if n_devices > 1:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={n_devices}")
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from t5lite.training import optim  # pylint: disable=g-import-not-at-top
  from t5lite.training import state as train_state  # pylint: disable=g-import-not-at-top
  from t5lite.training import step as train_step_lib  # pylint: disable=g-import-not-at-top
  from t5lite.runtime import partitioning  # pylint: disable=g-import-not-at-top
  from t5lite.model.config import Config  # pylint: disable=g-import-not-at-top
  from t5lite.model.network import EncoderDecoder  # pylint: disable=g-import-not-at-top

  config = Config(**MODELS[model], scan_layers=scan, remat_policy=remat)
  mesh = partitioning.make_mesh(mesh_shape, devices=jax.devices()[:n_devices])
  schedule = optim.learning_rate_schedule()
  tx = optim.make_optimizer(optimizer, schedule=schedule)
  li, lt = lengths
  t0 = time.perf_counter()
  with partitioning.activate(mesh):
    net = EncoderDecoder(config)
    state, shardings = train_state.state_shardings(config, tx, mesh)
    batch_shard = partitioning.batch_sharding(mesh)
    feats = {"encoder_input_tokens": (batch, li), "decoder_input_tokens": (batch, lt),
             "decoder_target_tokens": (batch, lt), "decoder_loss_weights": (batch, lt)}
    abstract_batch = {k: jax.ShapeDtypeStruct(s, jnp.float32 if "weights" in k else jnp.int32,
                                              sharding=batch_shard) for k, s in feats.items()}
    step_fn = train_step_lib.jit_train_step(net, tx, schedule, shardings, mesh, z_loss=1e-4)
    t1 = time.perf_counter()
    lowered = step_fn.lower(state, abstract_batch)
    t2, c2 = time.perf_counter(), time.process_time()
    lowered.compile()
    t3, c3 = time.perf_counter(), time.process_time()
  hlo_ops = sum(" = " in line for line in lowered.as_text().splitlines())
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  return {"model": model, "layout": "scanned" if scan else "unrolled", "remat": remat,
          "params": n_params, "abstract init s": t1 - t0, "trace+lower s": t2 - t1,
          "compile s": t3 - t2, "compile CPU s": c3 - c2, "HLO ops": hlo_ops}


def _child(args, queue):
  queue.put(measure(*args))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="small")
  parser.add_argument("--remat", default="none")
  parser.add_argument("--mesh", default="1,1")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--lengths", default="512,114")
  parser.add_argument("--optimizer", default="adafactor")
  parser.add_argument("--repeats", type=int, default=1)
  args = parser.parse_args()
  mesh = tuple(int(x) for x in args.mesh.split(","))
  lengths = tuple(int(x) for x in args.lengths.split(","))
  ctx = multiprocessing.get_context("spawn")
  print(f"# {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"mesh {mesh}, batch {args.batch}, lengths {lengths}, {args.optimizer}; "
        f"load {os.getloadavg()[0]:.1f}")
  cols = ["model", "layout", "remat", "params", "abstract init s", "trace+lower s", "compile s",
          "compile CPU s", "HLO ops"]
  print("| " + " | ".join(cols) + " |")
  print("|" + "---|" * len(cols))
  for _ in range(args.repeats):
    for model in args.models.split(","):
      for remat in args.remat.split(","):
        for scan in (False, True):  # interleaved: both see the same load
          queue = ctx.Queue()
          p = ctx.Process(target=_child, args=((model, scan, remat, mesh, args.batch, lengths,
                                                args.optimizer), queue))
          p.start()
          row = queue.get()
          p.join()
          row["params"] = f"{row['params'] / 1e6:.1f}M"
          print("| " + " | ".join(f"{row[c]:.1f}" if isinstance(row[c], float) else str(row[c])
                                  for c in cols) + " |", flush=True)


if __name__ == "__main__":
  main()
