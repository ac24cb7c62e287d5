"""Greedy decoding tokens/s with the KV cache vs the uncached loop (re-running the decoder per step).

  python benchmarks/bench_decode.py [--models tiny,small] [--batch 8] [--inputs 512] [--decode 114]

Random T5 1.1 weights, float32 activations (CPU). Every sequence decodes the full --decode steps:
the model runs with eos_token_id=-1, an id no token has, so nothing stops early (the weights are
those of the standard config). Each function is compiled ahead of time (jit.lower().compile()),
then timed on one run; tokens/s = batch x decode / seconds (the encoder pass included).
"""
from __future__ import annotations

import argparse
import os
import platform
import time

from t5lite.runtime import backend  # noqa: E402  (imports no jax)
backend.prepare_process()  # as `t5lite` does: no TPU probe on CPU, CPU malloc tuning
import jax
import jax.numpy as jnp
import numpy as np

from t5lite import testing
from t5lite.serving import decoding
from t5lite.model.config import Config
from t5lite.model.network import EncoderDecoder

MODELS = {  # T5 1.1 tiny (ours) and small (t5x examples/t5/t5_1_1)
    "tiny": Config(emb_dim=128, num_heads=4, head_dim=32, mlp_dim=256, num_encoder_layers=2,
                   num_decoder_layers=2, dtype="float32"),
    "small": Config(emb_dim=512, num_heads=6, head_dim=64, mlp_dim=1024, num_encoder_layers=8,
                    num_decoder_layers=8, dtype="float32"),
}


def bench(name: str, batch: int, inputs: int, decode: int) -> list[dict]:
  config = MODELS[name]
  model = EncoderDecoder(config.replace(eos_token_id=-1))  # no early stop: see the docstring
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(2, config.vocab_size, (batch, inputs)), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), tokens[:, :8], jnp.zeros((batch, 8), jnp.int32))
  params = jax.block_until_ready(params["params"])
  n_params = sum(x.size for x in jax.tree.leaves(params))
  rows, outputs = [], {}
  for label, fn in (("cached", decoding.greedy_decode),
                    ("uncached", testing.uncached_greedy_decode)):
    t0 = time.perf_counter()
    compiled = fn.lower(model, params, tokens, decode).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(params, tokens))
    run_s = time.perf_counter() - t0
    outputs[label] = np.asarray(out)
    rows.append(dict(model=name, params=n_params, mode=label, compile_s=compile_s, run_s=run_s,
                     tok_s=batch * decode / run_s))
  same = bool((outputs["cached"] == outputs["uncached"]).all())
  for row in rows:
    row["same_tokens"] = same
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="tiny,small")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--inputs", type=int, default=512)
  parser.add_argument("--decode", type=int, default=114)
  args = parser.parse_args()
  print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, jax {jax.__version__}, backend {jax.default_backend()}; "
        f"batch {args.batch}, inputs {args.inputs}, decode {args.decode}, float32")
  print("| model | params | decoding | compile s | run s | tokens/s | speed-up | same tokens |")
  print("|---|---|---|---|---|---|---|---|")
  for name in args.models.split(","):
    rows = bench(name, args.batch, args.inputs, args.decode)
    uncached = rows[1]["run_s"]
    for row in rows:
      print(f"| T5 1.1 {row['model']} | {row['params'] / 1e6:.1f}M | {row['mode']} | "
            f"{row['compile_s']:.1f} | {row['run_s']:.2f} | {row['tok_s']:.1f} | "
            f"{uncached / row['run_s']:.1f}x | {row['same_tokens']} |", flush=True)


if __name__ == "__main__":
  main()
