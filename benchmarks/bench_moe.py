"""Mixture of experts on the embedded demo corpus: T5 1.1 tiny against Switch tiny with 8 and 32
experts at equal FLOPs per token (one expert per token; the router adds 2 x d x E per token).

  .venv/bin/python benchmarks/bench_moe.py --steps 200 --seeds 0 --out /tmp/bench_moe.png

Same task (demo_span_corruption from the token cache, inputs 128 / targets 32), batch, steps,
optimizer (the demo's AdamW, cosine schedule, grad clip 1) and seed for every model; the held-out
loss (validation split, --eval_batches packed batches) every --eval_period steps. Printed: the
parameters, training FLOPs per example, the final held-out loss, the first evaluated step at which
each model reaches the dense model's final held-out loss, and seconds per step (the mean after
the first logged step, so without compilation). The plot (held-out loss against step) goes to
--out and is not committed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from t5lite.runtime import backend  # noqa: E402  (imports no jax)
backend.prepare_process()  # as `t5lite` does: no TPU probe on CPU, CPU malloc tuning
import gin  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from t5lite.cli import common  # noqa: E402
from t5lite.model.config import flops_per_example  # noqa: E402
from t5lite.model.params import boxed_params_shape  # noqa: E402
from t5lite.runtime import partitioning  # noqa: E402
from t5lite.training import train  # noqa: E402

MODELS = (("T5 1.1 tiny (dense)", "models/t5_1_1/tiny.gin", 0),
          ("Switch tiny, 8 experts", "models/switch/tiny.gin", 8),
          ("Switch tiny, 32 experts", "models/switch/tiny.gin", 32))


def run(gin_file: str, experts: int, steps: int, seed: int, args, model_dir: str) -> dict:
  gin.clear_config()
  flags = [f"--gin_file={gin_file}", "--gin_file=runs/demo.gin",
           f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}",
           f"--gin.BATCH_SIZE={args.batch_size}", f"--gin.train.seed={seed}",
           "--gin.learning_rate_schedule.warmup_steps=20",
           f"--gin.EvalConfig.period={args.eval_period}",
           f"--gin.EvalConfig.steps={args.eval_batches}", "--gin.EvalConfig.predict_examples=0",
           "--gin.LoopConfig.log_period=10", f"--gin.Checkpointer.save_period={steps}"]
  if experts:
    flags += [f"--gin.Config.num_experts={experts}"]
    if args.group_size:
      flags += [f"--gin.Config.expert_group_size={args.group_size}"]
  common.parse_gin_flags(flags)
  config = train.bound_settings()["config"]
  t0 = time.perf_counter()
  train.train(mesh=partitioning.make_mesh((1, 1), devices=jax.devices()[:1]))
  wall = time.perf_counter() - t0
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  evals = {r["step"]: r["loss"] for r in rows if r["split"] == "eval"}
  rates = [r["steps_per_s"] for r in rows if r["split"] == "train" and "steps_per_s" in r][1:]
  last = [r for r in rows if r["split"] == "train"][-1]
  params = sum(math.prod(x.shape) for x in jax.tree.leaves(boxed_params_shape(config)))
  return {"evals": evals, "s_per_step": 1.0 / np.mean(rates), "wall": wall, "params": params,
          "flops": flops_per_example(config, 128, 32), "last_train": last,
          "config": config}


def plot(results: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4))
  for (name, seed), r in results.items():
    steps = sorted(r["evals"])
    ax.plot(steps, [r["evals"][s] for s in steps], marker=".", label=f"{name} (seed {seed})")
  ax.set_xlabel("step")
  ax.set_ylabel("held-out loss (per target token)")
  ax.set_title("demo_span_corruption: dense vs Switch at equal FLOPs per token")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--seeds", type=int, nargs="+", default=[0])
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--eval_period", type=int, default=20)
  p.add_argument("--eval_batches", type=int, default=4)
  p.add_argument("--group_size", type=int, default=None,
                 help="Config.expert_group_size (default: models/switch/tiny.gin's)")
  p.add_argument("--out", default=None, help="PNG of the held-out loss curves")
  args = p.parse_args()
  print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, jax {jax.__version__}; load average "
        f"{os.getloadavg()[0]:.1f} at the start; steps {args.steps}, batch {args.batch_size}, "
        f"inputs 128 / targets 32, held-out loss every {args.eval_period} steps on "
        f"{args.eval_batches} packed validation batches", flush=True)
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for seed in args.seeds:
      for name, gin_file, experts in MODELS:
        d = os.path.join(tmp, f"{experts}_{seed}")
        results[name, seed] = run(gin_file, experts, args.steps, seed, args, d)
        print(f"{name}, seed {seed}: {results[name, seed]['wall']:.0f} s", flush=True)
  print("\n| model | seed | parameters | training GFLOPs / example | final held-out loss | "
        "steps to the dense final loss | s / step | router: dropped, max load x E |")
  print("|---|---|---|---|---|---|---|---|")
  for seed in args.seeds:
    dense_final = results[MODELS[0][0], seed]["evals"][args.steps]
    for name, _, experts in MODELS:
      r = results[name, seed]
      reached = [s for s in sorted(r["evals"]) if r["evals"][s] <= dense_final]
      router = (f"{r['last_train']['router_dropped_fraction']:.3f}, "
                f"{r['last_train']['router_max_load']:.2f}" if experts else "")
      print(f"| {name} | {seed} | {r['params'] / 1e6:.2f} M | {r['flops'] / 1e9:.3f} | "
            f"{r['evals'][args.steps]:.4f} | {reached[0] if reached else 'not reached'} | "
            f"{r['s_per_step']:.2f} | {router} |")
  if args.out:
    plot(results, args.out)
    print(f"\nplot: {args.out}")


if __name__ == "__main__":
  main()
