"""Train step time on a GPU or TPU: t5lite's real jitted step beside HF transformers' T5 (PyTorch).

  python benchmarks/bench_accelerator.py [--models base,large] [--steps 10] [--warmup 3]
      [--batch 128] [--inputs 512] [--targets 114] [--mesh=-1,1] [--microbatches 1]
      [--optimizer adafactor|adamw] [--frameworks t5lite,torch] [--torch-device cuda]

On a GPU node (H100/H200, A100) or a TPU VM, after `pip install -e '.[gpu]'` (or `.[tpu]`) and,
for the PyTorch column, `pip install torch transformers` (a CUDA build):

  python benchmarks/bench_accelerator.py                      # T5 1.1 base and large
  CUDA_VISIBLE_DEVICES=0 python benchmarks/bench_accelerator.py   # one GPU each, side by side

On a CPU machine it runs end to end too (so both code paths can be checked without a GPU); the
numbers mean nothing there:

  python benchmarks/bench_accelerator.py --models tiny --steps 2             # ~1 min on 2 cores
  python benchmarks/bench_accelerator.py --models tiny --steps 2 --batch 8 --torch-device cpu

Models: gin_configs/models/t5_1_1/{tiny,small,base,large,xl}.gin with bf16 activations and float32
parameters (runs/pretrain.gin's dtype).

t5lite: train_step_lib.train_program (the step train() runs: explicit shardings, donated state) on a
('data', 'model') mesh of all devices (--mesh, -1 fills), init_state, then --warmup steps and
--steps timed steps, each synchronous. The optimizer is T5's Adafactor with the rsqrt schedule
(optim.py's defaults), or AdamW. Batches are random but valid packed batches
(EncDecFeatureConverter(pack=True) features: 1-4 examples per row, segment ids and positions,
decoder inputs shifted within each example, some padding at the end of rows), one per step.

PyTorch (with torch on CUDA, one GPU; --torch-device cpu only checks the code path):
T5ForConditionalGeneration from t5lite.hf.hf_config_from(config) (lm_head untied as T5 1.1's) starting from t5lite's initial
weights (seed 0, copied with t5lite.hf.params_to_hf), float32 parameters, the forward
under torch.autocast(bfloat16), transformers' Adafactor (lr 0.01, parameter scaling,
update clipping 1.0, decay -0.8: T5's) or torch AdamW, on the same batches: input_ids, an
attention mask from the segment ids, decoder_input_ids and labels (-100 on padding). HF has no
packing, so each row attends across its packed examples: the same matmuls, different masks.

Each framework runs in a spawned process of its own, one after the other (jax would otherwise
hold most of the GPU's memory while torch runs). Columns: s/step is the median of the timed steps;
tokens/s counts inputs + targets positions (padding included) per second; MFU =
flops_per_example x batch / (s/step) / (peak x devices), peaks from train.PEAK_FLOPS by device
name; peak memory is the device's high-water mark (jax memory_stats, torch
max_memory_allocated) where the backend reports one.
"""
from __future__ import annotations

import argparse
import multiprocessing
import platform
import statistics
import time

import numpy as np

MODELS = ("tiny", "small", "base", "large", "xl")
FRAMEWORKS = ("t5lite", "torch")


def model_config(name: str):
  """The repo's gin file for T5 1.1 `name`, bf16 activations."""
  import gin  # pylint: disable=g-import-not-at-top
  from t5lite import gin_files  # pylint: disable=g-import-not-at-top
  from t5lite.model.config import Config  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  gin.parse_config_files_and_bindings([gin_files.resolve(f"models/t5_1_1/{name}.gin")],
                                      ["Config.dtype = 'bfloat16'"])
  config = Config()
  gin.clear_config()
  return config


def packed_batch(rng: np.random.Generator, batch: int, inputs: int, targets: int,
                 vocab_size: int) -> dict[str, np.ndarray]:
  """A valid packed batch: per row 1-4 examples, each with a piece of the inputs and targets,
  the rows' ends padded (segment 0)."""
  out = {}
  for prefix, length in (("encoder", inputs), ("decoder", targets)):
    out[f"{prefix}_segment_ids"] = np.zeros((batch, length), np.int32)
    out[f"{prefix}_positions"] = np.zeros((batch, length), np.int32)
  for row in range(batch):
    n = int(rng.integers(1, 5))
    for prefix, length in (("encoder", inputs), ("decoder", targets)):
      used = int(rng.integers(max(n, length * 3 // 4), length + 1))
      cuts = np.sort(rng.choice(np.arange(1, used), n - 1, replace=False))
      for seg, (a, b) in enumerate(zip([0, *cuts], [*cuts, used])):
        out[f"{prefix}_segment_ids"][row, a:b] = seg + 1
        out[f"{prefix}_positions"][row, a:b] = np.arange(b - a)
  for prefix, name in (("encoder", "encoder_input_tokens"), ("decoder", "decoder_target_tokens")):
    seg = out[f"{prefix}_segment_ids"]
    out[name] = np.where(seg > 0, rng.integers(2, vocab_size, seg.shape), 0).astype(np.int32)
  tgt, pos = out["decoder_target_tokens"], out["decoder_positions"]
  dec_in = np.zeros_like(tgt)
  dec_in[:, 1:] = tgt[:, :-1]
  out["decoder_input_tokens"] = np.where(pos == 0, 0, dec_in).astype(np.int32)
  out["decoder_loss_weights"] = (out["decoder_segment_ids"] > 0).astype(np.int32)
  return out


def peak_flops(device_name: str):
  from t5lite.training import train  # pylint: disable=g-import-not-at-top
  from t5lite.training import state as train_state
  from t5lite.training import step as train_step_lib
  name = device_name.lower()
  return next((peak for key, peak in train.PEAK_FLOPS.items() if key in name), None)


def run_t5lite(args, name: str) -> dict:
  import gin  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from t5lite.training import optim, train  # pylint: disable=g-import-not-at-top,unused-import
  from t5lite.runtime import partitioning  # pylint: disable=g-import-not-at-top,unused-import
  from t5lite.data.feed import tfdata as pipeline  # pylint: disable=g-import-not-at-top
  config = model_config(name)
  mesh = partitioning.make_mesh(tuple(int(x) for x in args.mesh.split(",")))
  lengths = {"inputs": args.inputs, "targets": args.targets}
  rng = np.random.default_rng(0)
  batches = [packed_batch(rng, args.batch, args.inputs, args.targets, config.vocab_size)
             for _ in range(min(args.warmup + args.steps, 4))]
  expected = pipeline.batch_shapes(lengths, args.batch)
  assert {k: (v.shape, v.dtype) for k, v in batches[0].items()} == expected
  gin.bind_parameter("make_optimizer.name", args.optimizer)  # otherwise optim.py's defaults
  with partitioning.activate(mesh):
    program = train_step_lib.train_program(config, mesh, lengths, args.batch,
                                  microbatches=args.microbatches)
    state = train_state.init_state(program.model, program.tx, program.shardings, seed=0)
    device_batches = [partitioning.host_to_global(b, mesh) for b in batches]
    t0 = time.perf_counter()
    step = program.step_fn.lower(state, device_batches[0]).compile()
    compile_s = time.perf_counter() - t0
    times, losses = [], []
    for i in range(args.warmup + args.steps):
      t0 = time.perf_counter()
      state, metrics = step(state, device_batches[i % len(device_batches)])
      jax.block_until_ready((state, metrics))
      if i >= args.warmup:
        times.append(time.perf_counter() - t0)
      losses.append(float(metrics["loss"]))
  devices = list(mesh.devices.flat)
  peak_mem = max((_memory_stats(d).get("peak_bytes_in_use", 0) for d in devices), default=0)
  kind = devices[0].device_kind
  return {"device": f"{mesh.size} x {kind}", "devices": mesh.size, "peak": peak_flops(kind),
          "compile_s": compile_s, "times": times, "losses": losses, "peak_mem": peak_mem,
          "params": sum(x.size for x in jax.tree.leaves(state.params))}


def t5lite_init(config) -> dict:
  """t5lite's initial parameters (seed 0, as init_state), made on the host CPU: HF's own init
  (lm_head std 1.0) starts from logits of std ~sqrt(d) (see bench_train.py)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from t5lite.model.network import EncoderDecoder  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_platforms", "cpu")  # this process's accelerator is torch's
  dummy = jnp.ones((1, 1), jnp.int32)
  params = nn.unbox(EncoderDecoder(config).init(jax.random.key(0), dummy, dummy)["params"])
  return jax.tree.map(np.array, params)  # writable copies (torch.from_numpy)


def _memory_stats(device) -> dict:
  try:
    return device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  (backends without memory statistics)
    return {}


def run_torch(args, name: str) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from t5lite.convert import hf  # pylint: disable=g-import-not-at-top
  config = model_config(name)
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(hf.hf_config_from(config.replace(
      dtype="float32")))
  model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())  # untied (1.1)
  sd = hf.params_to_hf(t5lite_init(config), config)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  dev = torch.device(args.torch_device)
  sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
  model = model.to(dev).train()
  if args.optimizer == "adafactor":
    from transformers.optimization import Adafactor  # pylint: disable=g-import-not-at-top
    opt = Adafactor(model.parameters(), lr=0.01, scale_parameter=True, relative_step=False,
                    warmup_init=False, clip_threshold=1.0, decay_rate=-0.8, beta1=None)
  else:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(min(args.warmup + args.steps, 4)):
    b = packed_batch(rng, args.batch, args.inputs, args.targets, config.vocab_size)
    labels = np.where(b["decoder_loss_weights"] > 0, b["decoder_target_tokens"], -100)
    batches.append({
        "input_ids": torch.from_numpy(b["encoder_input_tokens"].astype(np.int64)).to(dev),
        "attention_mask": torch.from_numpy((b["encoder_segment_ids"] > 0).astype(np.int64)).to(dev),
        "decoder_input_ids": torch.from_numpy(b["decoder_input_tokens"].astype(np.int64)).to(dev),
        "labels": torch.from_numpy(labels.astype(np.int64)).to(dev)})
  times, losses = [], []
  for i in range(args.warmup + args.steps):
    sync()
    t0 = time.perf_counter()
    with torch.autocast(dev.type, dtype=torch.bfloat16):
      loss = model(**batches[i % len(batches)]).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync()
    if i >= args.warmup:
      times.append(time.perf_counter() - t0)
    losses.append(loss.item())
  cuda = dev.type == "cuda"
  kind = torch.cuda.get_device_name(dev) if cuda else "cpu"
  return {"device": f"1 x {kind}", "devices": 1, "peak": peak_flops(kind), "compile_s": 0.0,
          "times": times, "losses": losses,
          "peak_mem": torch.cuda.max_memory_allocated(dev) if cuda else 0,
          "params": sum(p.numel() for p in model.parameters())}


def _child(conn, fn_name: str, args, name: str) -> None:
  conn.send(globals()[fn_name](args, name))
  conn.close()


def in_process_of_its_own(fn_name: str, args, name: str) -> dict:
  ctx = multiprocessing.get_context("spawn")
  parent, child = ctx.Pipe(duplex=False)
  proc = ctx.Process(target=_child, args=(child, fn_name, args, name))
  proc.start()
  child.close()
  try:
    result = parent.recv()
  except EOFError:
    proc.join()
    raise SystemExit(f"bench_accelerator: {fn_name}({name}) died (exit code {proc.exitcode}); "
                     "its traceback is above") from None
  proc.join()
  return result


def torch_cuda_available() -> bool:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  return torch.cuda.is_available()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="base,large", help=f"comma list of {MODELS}")
  parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help=f"of {FRAMEWORKS}")
  parser.add_argument("--steps", type=int, default=10, help="timed steps")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--inputs", type=int, default=512)
  parser.add_argument("--targets", type=int, default=114)
  parser.add_argument("--mesh", default="-1,1", help="t5lite's (data, model) mesh; -1 fills")
  parser.add_argument("--microbatches", type=int, default=1, help="t5lite gradient accumulation")
  parser.add_argument("--optimizer", choices=("adafactor", "adamw"), default="adafactor")
  parser.add_argument("--torch-device", default="cuda",
                      help="the PyTorch column's device (cpu: only to check the code path)")
  args = parser.parse_args()
  models = args.models.split(",")
  frameworks = args.frameworks.split(",")
  for m in models:
    if m not in MODELS:
      parser.error(f"--models: unknown {m!r}; expected some of {MODELS}")
  for fw in frameworks:
    if fw not in FRAMEWORKS:
      parser.error(f"--frameworks: unknown {fw!r}; expected some of {FRAMEWORKS}")
  if args.steps < 1:
    parser.error("--steps must be >= 1")
  if "torch" in frameworks and args.torch_device.startswith("cuda") and not torch_cuda_available():
    print("# torch: no CUDA device (or no torch); the PyTorch column needs one", flush=True)
    frameworks.remove("torch")
  from t5lite.model.config import flops_per_example  # pylint: disable=g-import-not-at-top
  print(f"# {platform.node()}, Python {platform.python_version()}; T5 1.1 bf16 activations, fp32 "
        f"parameters, {args.optimizer}; batch {args.batch}, {args.inputs}/{args.targets}, packed; "
        f"{args.warmup} warm-up + {args.steps} timed steps", flush=True)
  header = ("| model | params | framework | devices | s/step | examples/s | tokens/s | TFLOP/s "
            "per device | MFU | peak memory per device | compile s | last loss |")
  rows = []
  for name in models:
    flops = flops_per_example(model_config(name), args.inputs, args.targets) * args.batch
    for fw in frameworks:
      r = in_process_of_its_own("run_t5lite" if fw == "t5lite" else "run_torch", args, name)
      s = statistics.median(r["times"])
      per_device = flops / s / r["devices"]
      mfu = f"{per_device / r['peak']:.1%}" if r["peak"] else "-"
      mem = f"{r['peak_mem'] / 2 ** 30:.1f} GiB" if r["peak_mem"] else "-"
      label = "t5lite (JAX)" if fw == "t5lite" else "HF transformers (PyTorch, autocast)"
      print(f"# {name} {fw}: step times {', '.join(f'{t:.3f}' for t in r['times'])} s; "
            f"losses {', '.join(f'{x:.3f}' for x in r['losses'])}", flush=True)
      tokens_per_s = args.batch * (args.inputs + args.targets) / s
      rows.append(f"| T5 1.1 {name} | {r['params'] / 1e6:.1f}M | {label} | {r['device']} | "
                  f"{s:.3f} | {args.batch / s:.1f} | {tokens_per_s:.0f} | "
                  f"{per_device / 1e12:.1f} | {mfu} | {mem} | {r['compile_s']:.1f} | "
                  f"{r['losses'][-1]:.3f} |")
  print(header)
  print("|" + "---|" * (header.count("|") - 1))
  for row in rows:
    print(row)


if __name__ == "__main__":
  main()
