"""The accelerator check: one command for a first, short GPU (or TPU) slot.

  python benchmarks/gpu_check.py --out DIR              # on the accelerator node: ~7 min on one H100
  JAX_PLATFORMS=cpu python benchmarks/gpu_check.py --out DIR --smoke   # CPU: every section, tiny
  python benchmarks/gpu_check.py --record               # CPU, `data` extra: re-record the reference

It needs the core only (no TensorFlow, seqio or TFDS; PyTorch + transformers for HF's column).
Each section runs in a process of its own (killed at its time budget; one that does not fit in
what is left of --budget is skipped with the reason), prints each result as it has it, and after
every section DIR/gpu_check.json and DIR/gpu_check.md are rewritten: a run cut short keeps what
it measured. Sections:

  env          device kind and count, memory, jax / jaxlib / flax / CUDA / cuDNN versions, the
               peak bf16 FLOP/s the MFU uses (runtime/devices.py PEAK_FLOPS)
  correctness  T5 1.1 tiny, 10 AdamW steps on the packed demo-corpus batches stored in
               gpu_check_reference.npz: float32 losses equal the stored CPU trajectory to
               FP32_RTOL; bfloat16 activations within BF16_RTOL of it
  throughput   T5 1.1 base and large, bf16 activations, nanoT5's shapes (inputs 512, targets 114,
               batch 128 or the largest that fits): t5lite's train program (scan on / off, the
               first remat policy that fits) beside HF transformers' PyTorch T5 (autocast bf16),
               s/step, tokens/s, MFU, peak memory
  attention    XLA vs the fused kernel (cuDNN on GPU, Pallas on TPU; Pallas interpret mode on
               CPU) with a T5 bias and packed + padded masks, lengths 512 and 2048: max abs
               difference of the output, of the gradients (q, k, v, bias) relative to their
               largest entry, forward + backward time, temporary memory
  decoding     greedy decoding with the KV cache, T5 1.1 base bf16, batch 64: tokens/s
  switch       Switch-Base-8 beside dense T5 1.1 base (equal FLOPs per token): s/step and MFU
               (skipped, saying so, where this build has no Switch model)

--smoke shrinks every shape (speed figures meaningless, and labelled so); tests run it on CPU in
a Python that cannot import TensorFlow or seqio.
"""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import pathlib
import platform
import statistics
import sys
import time
import traceback
from typing import Any, Callable, Optional

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
REFERENCE = HERE / "gpu_check_reference.npz"
FP32_RTOL = 1e-3  # float32 on another backend: reduction order only
BF16_RTOL = 2e-2  # bf16 activations vs the float32 trajectory (8 bits of mantissa)
REMAT_ORDER = ("none", "save_attn_mlp_outputs", "minimal", "full")  # fastest first
MEMORY_MARGIN = 0.92  # a program fits when its compiled footprint is under this share of memory

# Section -> (seconds it may run, seconds it needs at least to be worth starting). Full sizes.
BUDGETS = {"env": (60, 10), "correctness": (90, 30), "throughput": (240, 60),
           "attention": (60, 20), "decoding": (60, 20), "switch": (90, 40)}
SECTIONS = tuple(BUDGETS)


# ------------------------------------------------------------------------------ the report

class Report:
  """The sections' results, rewritten to DIR/gpu_check.{json,md} after each section."""

  def __init__(self, out: Optional[pathlib.Path], smoke: bool, command: str):
    self.out, self.smoke = out, smoke
    self.data = {"command": command, "started": _now(), "host": platform.node(),
                 "python": platform.python_version(), "smoke": smoke, "sections": {}}

  def section(self, name: str, status: str, seconds: float, rows: list, reason: str = "",
              summary: Optional[dict] = None) -> None:
    self.data["sections"][name] = {"status": status, "reason": reason,
                                   "seconds": round(seconds, 1), "rows": rows,
                                   "summary": summary or {}}
    self.data["finished"] = _now()
    if self.out:
      self.out.mkdir(parents=True, exist_ok=True)
      (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=1, default=str))
      (self.out / "gpu_check.md").write_text(self.markdown())

  def markdown(self) -> str:
    d = self.data
    lines = [f"# t5lite accelerator check{' (smoke: speed figures meaningless)' if d['smoke'] else ''}",
             "", f"`{d['command']}` on {d['host']}, Python {d['python']}, {d['started']}", ""]
    for name, s in d["sections"].items():
      lines += [f"## {name}: {s['status']} ({s['seconds']} s)", ""]
      if s["reason"]:
        lines += [s["reason"], ""]
      if s["summary"]:
        lines += [", ".join(f"{k}: {_fmt(v)}" for k, v in s["summary"].items()), ""]
      if s["rows"]:
        keys = list(dict.fromkeys(k for row in s["rows"] for k in row))
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_fmt(row.get(k, "")) for k in keys) + " |"
                  for row in s["rows"]]
        lines.append("")
    return "\n".join(lines)


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _fmt(v: Any) -> str:
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)


# ------------------------------------------------------------------------------ child processes

def _child(conn, fn_name: str, kwargs: dict) -> None:
  def emit(row: dict) -> None:
    print(f"  {json.dumps(row, default=str)}", flush=True)
    conn.send(("row", row))
  try:
    conn.send(("done", globals()[fn_name](emit=emit, **kwargs)))
  except BaseException as e:  # pylint: disable=broad-except  # reported, not raised
    traceback.print_exc()
    conn.send(("error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
  conn.close()


def run_child(fn_name: str, timeout: float, **kwargs) -> tuple[list, Optional[dict], str]:
  """fn_name(emit=..., **kwargs) in a spawned process: (rows it emitted, its result, error or '').
  Killed at `timeout` seconds (the error says so); the rows emitted until then are kept."""
  ctx = multiprocessing.get_context("spawn")
  parent, child = ctx.Pipe(duplex=False)
  proc = ctx.Process(target=_child, args=(child, fn_name, kwargs))
  proc.start()
  child.close()
  rows, result, error = [], None, ""
  deadline = time.monotonic() + timeout
  while True:
    left = deadline - time.monotonic()
    if left <= 0 or not parent.poll(left):
      error = f"stopped at its time budget ({timeout:.0f} s)" if left <= 0 else "no answer"
      break
    try:
      kind, value = parent.recv()
    except EOFError:
      error = f"the process died (exit code {proc.exitcode}; its traceback is above)"
      break
    if kind == "row":
      rows.append(value)
    elif kind == "done":
      result = value
      break
    else:
      error = value
      break
  if proc.is_alive():
    proc.kill()
  proc.join()
  return rows, result, error


# ------------------------------------------------------------------------------ shared pieces

def _setup_jax():
  """jax with t5lite's process settings (backend.prepare_process), and nothing preallocated:
  each child frees the device when it exits."""
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  from t5lite.runtime import backend  # pylint: disable=g-import-not-at-top
  backend.prepare_process()
  import jax  # pylint: disable=g-import-not-at-top
  return jax


def model_config(gin_file: str, **changes):
  """Config from a repo gin file (e.g. models/t5_1_1/base.gin) with `changes`."""
  import gin  # pylint: disable=g-import-not-at-top
  from t5lite import gin_files  # pylint: disable=g-import-not-at-top
  from t5lite.model.config import Config  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  for path in gin_files.config_dirs():  # where a file's `include 'models/...'` is found
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings([gin_files.resolve(gin_file)], [])
  config = Config()
  gin.clear_config()
  return config.replace(**changes)


def packed_batch(rng: np.random.Generator, batch: int, inputs: int, targets: int,
                 vocab_size: int) -> dict[str, np.ndarray]:
  """A valid packed batch (seqio's EncDecFeatureConverter(pack=True) features): per row 1-4
  examples, the rows' ends padded (segment 0), decoder inputs shifted within each example."""
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


def _memory_stats(device) -> dict:
  try:
    return device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  # backends without memory statistics
    return {}


def _footprint(compiled) -> Optional[int]:
  """Bytes a compiled program needs on a device (arguments + outputs + temporaries - aliased)."""
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    return None


def train_steps(config, batches: list[dict], lengths: dict, batch_size: int, optimizer: dict,
                warmup: int = 0, fits: Optional[Callable[[int], bool]] = None) -> dict:
  """t5lite's train program (the step train() runs) on a data-parallel mesh of the devices the
  batch divides over: `warmup` untimed steps, then one timed step per batch. {'fits': False}
  without running when fits(compiled footprint in bytes) says no."""
  import gin  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from t5lite.runtime import partitioning  # pylint: disable=g-import-not-at-top
  from t5lite.training import optim  # pylint: disable=g-import-not-at-top,unused-import
  from t5lite.training.settings import DataConfig, StepConfig  # pylint: disable=g-import-not-at-top
  from t5lite.training.state import init_state  # pylint: disable=g-import-not-at-top
  from t5lite.training.step import train_program  # pylint: disable=g-import-not-at-top
  for key, value in optimizer.items():
    gin.bind_parameter(key, value)
  devices = jax.devices()
  n = max(d for d in range(1, len(devices) + 1) if batch_size % d == 0 and len(devices) % d == 0)
  mesh = partitioning.make_mesh((n, 1), devices[:n])
  data = DataConfig("gpu_check", lengths, batch_size)
  with partitioning.activate(mesh):
    program = train_program(config, mesh, data, StepConfig(), seed=0)
    t0 = time.perf_counter()
    step = program.lower().compile()
    compile_s = time.perf_counter() - t0
    footprint = _footprint(step)
    if fits is not None and footprint is not None and not fits(footprint):
      return {"fits": False, "footprint": footprint, "compile_s": compile_s}
    state = init_state(program.model, program.tx, program.shardings, seed=0)
    device_batches = [partitioning.host_to_global(b, mesh) for b in batches]
    times, losses = [], []
    for i in range(warmup + len(batches)):
      t0 = time.perf_counter()
      state, metrics = step(state, device_batches[i % len(device_batches)])
      jax.block_until_ready((state, metrics))
      if i >= warmup:
        times.append(time.perf_counter() - t0)
        losses.append(float(metrics["loss"]))
  peak_mem = max((_memory_stats(d).get("peak_bytes_in_use", 0) for d in mesh.devices.flat),
                 default=0)
  gin.clear_config()
  return {"fits": True, "devices": mesh.size, "kind": devices[0].device_kind, "times": times,
          "losses": losses, "compile_s": compile_s, "footprint": footprint,
          "peak_mem": peak_mem, "params": sum(x.size for x in jax.tree.leaves(state.params))}


# ------------------------------------------------------------------------------ env

def env_section(emit, smoke: bool) -> dict:
  del smoke
  jax = _setup_jax()
  import flax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from t5lite.runtime import devices as devices_lib  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  kind = devices[0].device_kind
  stats = _memory_stats(devices[0])
  out = {"backend": jax.default_backend(), "device_kind": kind, "devices": len(devices),
         "memory_gib": round(stats.get("bytes_limit", 0) / 2 ** 30, 1) or None,
         "jax": jax.__version__, "jaxlib": _version("jaxlib"), "flax": flax.__version__,
         "optax": optax.__version__, "orbax": _version("orbax-checkpoint"),
         "numpy": np.__version__, "cuda": _cuda_versions(),
         "torch": _version("torch"), "transformers": _version("transformers"),
         "peak_bf16_flops": devices_lib.peak_flops(kind)}
  del emit  # one summary line, no table
  print(f"  {json.dumps(out, default=str)}", flush=True)
  return out


def _version(dist: str) -> Optional[str]:
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  try:
    return metadata.version(dist)
  except metadata.PackageNotFoundError:
    return None


def _cuda_versions() -> Optional[str]:
  try:
    from jax._src.lib import cuda_versions  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  if cuda_versions is None:
    return None
  try:
    return (f"CUDA runtime {cuda_versions.cuda_runtime_get_version()}, "
            f"cuDNN {cuda_versions.cudnn_get_version()}")
  except Exception:  # pylint: disable=broad-except
    return None


# ------------------------------------------------------------------------------ correctness

CORRECTNESS = {"gin_file": "models/t5_1_1/tiny.gin", "vocab_size": 3200,
               "optimizer": {"make_optimizer.name": "adamw",
                             "learning_rate_schedule.name": "constant",
                             "learning_rate_schedule.peak": 3e-3},
               "task": "demo_span_corruption", "lengths": {"inputs": 128, "targets": 32},
               "batch": 16, "steps": 10}


def load_reference() -> tuple[list[dict], dict]:
  data = np.load(REFERENCE)
  names = [k[len("batch_"):] for k in data.files if k.startswith("batch_")]
  batches = [{k: data[f"batch_{k}"][i].astype(np.int32) for k in names}
             for i in range(CORRECTNESS["steps"])]
  return batches, {k: data[k] for k in data.files if not k.startswith("batch_")}


def correctness_section(emit, smoke: bool) -> dict:
  del smoke  # the same 10 tiny steps everywhere: they are the reference
  _setup_jax()
  batches, ref = load_reference()
  c = CORRECTNESS
  out = {}
  for dtype, rtol in (("float32", FP32_RTOL), ("bfloat16", BF16_RTOL)):
    config = model_config(c["gin_file"], vocab_size=c["vocab_size"], dtype=dtype)
    r = train_steps(config, batches, c["lengths"], c["batch"], c["optimizer"])
    losses = np.asarray(r["losses"])
    rel = np.abs(losses - ref["losses_float32"]) / np.abs(ref["losses_float32"])
    out[dtype] = {"max_rel_diff": float(rel.max()), "rtol": rtol, "ok": bool(rel.max() <= rtol)}
    for i, (got, want) in enumerate(zip(losses, ref["losses_float32"])):
      emit({"dtype": dtype, "step": i + 1, "loss": float(got), "reference": float(want),
            "rel_diff": float(abs(got - want) / abs(want))})
  return {f"{k}_{m}": v[m] for k, v in out.items() for m in ("max_rel_diff", "ok")}


def record_reference() -> None:
  """Writes REFERENCE: the packed batches of the demo task through the token cache (needs the
  `data` extra to build it) and the float32 CPU trajectory of CORRECTNESS's run."""
  import tempfile  # pylint: disable=g-import-not-at-top
  jax = _setup_jax()
  assert jax.default_backend() == "cpu", "record the reference on CPU (JAX_PLATFORMS=cpu)"
  from t5lite.data.cache import build as cache_build  # pylint: disable=g-import-not-at-top
  from t5lite.data.feed import indexed  # pylint: disable=g-import-not-at-top
  from t5lite.data.tasks import registry as tasks  # pylint: disable=g-import-not-at-top
  c = CORRECTNESS
  tasks.register_all()
  with tempfile.TemporaryDirectory() as root:
    cache_build.build(c["task"], root, splits=["train"], echo=lambda s: None)
    stream = indexed.IndexedStream(c["task"], c["lengths"], c["batch"], root, seed=0)
    batches = [stream.batch(b) for b in range(c["steps"])]
  config = model_config(c["gin_file"], vocab_size=c["vocab_size"], dtype="float32")
  r = train_steps(config, batches, c["lengths"], c["batch"], c["optimizer"])
  arrays = {f"batch_{k}": np.stack([b[k] for b in batches]).astype(np.int16) for k in batches[0]}
  np.savez_compressed(REFERENCE, losses_float32=np.asarray(r["losses"], np.float64),
                      jax_version=np.asarray(jax.__version__), recorded=np.asarray(_now()),
                      **arrays)
  print(f"wrote {REFERENCE}: losses {[round(x, 4) for x in r['losses']]}")


# ------------------------------------------------------------------------------ throughput

def throughput_run(emit, gin_file: str, label: str, batch: int, inputs: int, targets: int,
                   scan: bool, steps: int, warmup: int, changes: Optional[dict] = None) -> dict:
  """t5lite: the first remat policy (fastest first) whose program fits, at `batch`, else half of
  it; one row for the run that fits."""
  jax = _setup_jax()
  from t5lite.model.config import flops_per_example  # pylint: disable=g-import-not-at-top
  from t5lite.runtime import devices as devices_lib  # pylint: disable=g-import-not-at-top
  limit = _memory_stats(jax.devices()[0]).get("bytes_limit")
  fits = (lambda b: b <= MEMORY_MARGIN * limit) if limit else None
  rng = np.random.default_rng(0)
  lengths = {"inputs": inputs, "targets": targets}
  tried = []
  while batch >= 1:
    for policy in REMAT_ORDER:
      config = model_config(gin_file, dtype="bfloat16", scan_layers=scan, remat_policy=policy,
                            **(changes or {}))
      batches = [packed_batch(rng, batch, inputs, targets, config.vocab_size) for _ in range(2)]
      r = train_steps(config, [batches[i % 2] for i in range(steps)], lengths, batch,
                      {"make_optimizer.name": "adafactor"}, warmup=warmup, fits=fits)
      if not r["fits"]:
        tried.append(f"batch {batch} remat {policy}: {r['footprint'] / 2 ** 30:.1f} GiB")
        continue
      s = statistics.median(r["times"])
      flops = flops_per_example(config, inputs, targets) * batch
      peak = devices_lib.peak_flops(r["kind"])
      row = {"model": label, "framework": "t5lite (JAX)", "scan": scan, "remat": policy,
             "batch": batch, "devices": r["devices"], "s/step": s,
             "tokens/s": batch * (inputs + targets) / s,
             "MFU": (flops / s / r["devices"] / peak) if peak else None,
             "peak GiB": r["peak_mem"] / 2 ** 30 if r["peak_mem"] else None,
             "compile s": r["compile_s"], "loss": r["losses"][-1],
             "params M": r["params"] / 1e6, "did not fit": "; ".join(tried)}
      emit(row)
      return row
    batch //= 2
  raise RuntimeError(f"{label}: nothing fits ({'; '.join(tried)})")


def torch_run(emit, gin_file: str, label: str, batch: int, inputs: int, targets: int,
              steps: int, warmup: int) -> dict:
  """HF transformers' T5ForConditionalGeneration (PyTorch, autocast bf16, Adafactor as T5's) on
  the same shapes, from t5lite's initial weights; halves the batch on out-of-memory."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from t5lite.convert import hf  # pylint: disable=g-import-not-at-top
  from t5lite.model.config import flops_per_example  # pylint: disable=g-import-not-at-top
  from t5lite.runtime import devices as devices_lib  # pylint: disable=g-import-not-at-top
  config = model_config(gin_file, dtype="float32")
  dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  cuda = dev.type == "cuda"
  model = transformers.T5ForConditionalGeneration(hf.hf_config_from(config))
  model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())  # untied (1.1)
  state = hf.params_to_hf(t5lite_init(config), config)  # the same start as t5lite's column
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
  model = model.to(dev).train()
  from transformers.optimization import Adafactor  # pylint: disable=g-import-not-at-top
  opt = Adafactor(model.parameters(), lr=0.01, scale_parameter=True, relative_step=False,
                  warmup_init=False, clip_threshold=1.0, decay_rate=-0.8, beta1=None)
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  rng = np.random.default_rng(0)
  while batch >= 1:
    try:
      times, losses = [], []
      b = packed_batch(rng, batch, inputs, targets, config.vocab_size)
      labels = np.where(b["decoder_loss_weights"] > 0, b["decoder_target_tokens"], -100)
      tensors = {"input_ids": b["encoder_input_tokens"],
                 "attention_mask": (b["encoder_segment_ids"] > 0).astype(np.int64),
                 "decoder_input_ids": b["decoder_input_tokens"], "labels": labels}
      tensors = {k: torch.from_numpy(v.astype(np.int64)).to(dev) for k, v in tensors.items()}
      for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16):
          loss = model(**tensors).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= warmup:
          times.append(time.perf_counter() - t0)
          losses.append(loss.item())
      break
    except torch.cuda.OutOfMemoryError:
      opt.zero_grad(set_to_none=True)
      torch.cuda.empty_cache()
      batch //= 2
  s = statistics.median(times)
  kind = torch.cuda.get_device_name(dev) if cuda else "cpu"
  peak = devices_lib.peak_flops(kind)
  flops = flops_per_example(config, inputs, targets) * batch
  row = {"model": label, "framework": "HF transformers (PyTorch eager, autocast)", "batch": batch,
         "devices": 1, "s/step": s, "tokens/s": batch * (inputs + targets) / s,
         "MFU": flops / s / peak if peak else None,
         "peak GiB": torch.cuda.max_memory_allocated(dev) / 2 ** 30 if cuda else None,
         "loss": losses[-1], "params M": sum(p.numel() for p in model.parameters()) / 1e6}
  emit(row)
  return row


def t5lite_init(config) -> dict:
  """t5lite's initial parameters (seed 0, as init_state) made on the host CPU, as numpy: HF's own
  initialisation (lm_head std 1.0) starts T5 1.1 from logits of std ~sqrt(d)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from t5lite.model.network import EncoderDecoder  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_platforms", "cpu")  # this process's accelerator is torch's
  dummy = jnp.ones((1, 1), jnp.int32)
  params = nn.unbox(EncoderDecoder(config).init(jax.random.key(0), dummy, dummy)["params"])
  return jax.tree.map(np.array, params)  # writable copies (torch.from_numpy)


def throughput_plan(smoke: bool) -> list[tuple[str, dict]]:
  """(function, arguments) of each run, most wanted first (the budget may end the list)."""
  if smoke:
    shape = {"batch": 8, "inputs": 64, "targets": 16, "steps": 2, "warmup": 1}
    models = [("models/t5_1_1/tiny.gin", "T5 1.1 tiny")]
  else:
    shape = {"batch": 128, "inputs": 512, "targets": 114, "steps": 6, "warmup": 2}
    models = [("models/t5_1_1/base.gin", "T5 1.1 base"), ("models/t5_1_1/large.gin",
                                                         "T5 1.1 large")]
  plan = []
  for gin_file, label in models:
    plan.append(("throughput_run", {"gin_file": gin_file, "label": label, "scan": True, **shape}))
    plan.append(("torch_run", {"gin_file": gin_file, "label": label, **shape}))
  for gin_file, label in models:
    plan.append(("throughput_run", {"gin_file": gin_file, "label": label, "scan": False, **shape}))
  return plan


# ------------------------------------------------------------------------------ attention

def attention_section(emit, smoke: bool) -> dict:
  jax = _setup_jax()
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from t5lite.model import kernels  # pylint: disable=g-import-not-at-top
  from t5lite.model.masks import SegmentMask  # pylint: disable=g-import-not-at-top
  fused = {"gpu": "cudnn", "tpu": "pallas_tpu", "cpu": "pallas_tpu"}[jax.default_backend()]
  heads, dim = (4, 32) if smoke else (12, 64)
  cases = [(64, 2), (128, 1)] if smoke else [(512, 32), (2048, 8)]
  rng = np.random.default_rng(0)
  out = {}
  for length, batch in cases:
    q, k, v = (jnp.asarray(rng.normal(size=(batch, length, heads, dim)), jnp.bfloat16)
               for _ in range(3))
    bias = jnp.asarray(rng.normal(size=(1, heads, length, length)), jnp.float32)
    segments = np.zeros((batch, length), np.int32)  # two packed examples, then padding
    for row in range(batch):
      used = int(rng.integers(length * 3 // 4, length + 1))
      cut = int(rng.integers(1, used))
      segments[row, :cut], segments[row, cut:used] = 1, 2
    seg = jnp.asarray(segments)
    mask = SegmentMask(seg > 0, seg > 0, seg, seg, causal=False)
    # The cotangent is 0 on padding: there the kernels' outputs are unspecified (not compared).
    g = jnp.asarray(rng.normal(size=(batch, length, heads, dim)) * (segments > 0)[..., None, None],
                    jnp.bfloat16)
    results = {}
    for kernel in ("xla", fused):
      def loss(q, k, v, bias, kernel=kernel):
        o = kernels.dot_product_attention(q, k, v, bias, mask, kernel)
        return jnp.sum(o.astype(jnp.float32) * g.astype(jnp.float32)), o
      fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))
      compiled = fn.lower(q, k, v, bias).compile()
      temp = getattr(compiled.memory_analysis(), "temp_size_in_bytes", None)
      value = jax.block_until_ready(compiled(q, k, v, bias))
      times = []
      for _ in range(2 if smoke else 10):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(q, k, v, bias))
        times.append(time.perf_counter() - t0)
      results[kernel] = (value, statistics.median(times), temp)
    (_, o_x), grads_x = results["xla"][0]
    (_, o_f), grads_f = results[fused][0]
    valid = np.asarray(segments > 0)[..., None, None]
    diff = float(np.max(np.abs(np.where(valid, np.asarray(o_x, np.float32)
                                        - np.asarray(o_f, np.float32), 0))))
    grad_diff = max(float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)))
                          / float(np.max(np.abs(np.asarray(a, np.float32)))))
                    for a, b in zip(grads_x, grads_f))
    row = {"length": length, "batch": batch, "heads": heads, "fused kernel": fused,
           "xla ms": results["xla"][1] * 1e3, "fused ms": results[fused][1] * 1e3,
           "speed-up": results["xla"][1] / results[fused][1],
           "xla temp MiB": (results["xla"][2] or 0) / 2 ** 20,
           "fused temp MiB": (results[fused][2] or 0) / 2 ** 20,
           "max abs diff (output)": diff, "max diff / max (grads)": grad_diff}
    emit(row)
    out[f"speed_up_{length}"] = row["speed-up"]
  return out


# ------------------------------------------------------------------------------ decoding

def decoding_section(emit, smoke: bool) -> dict:
  jax = _setup_jax()
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from t5lite.model.network import EncoderDecoder  # pylint: disable=g-import-not-at-top
  from t5lite.serving import decoding  # pylint: disable=g-import-not-at-top
  gin_file, batch, inputs, decode = (("models/t5_1_1/tiny.gin", 4, 32, 8) if smoke else
                                     ("models/t5_1_1/base.gin", 64, 512, 114))
  config = model_config(gin_file, dtype="bfloat16", eos_token_id=-1)  # nothing stops early
  model = EncoderDecoder(config)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(2, config.vocab_size, (batch, inputs)), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(0), tokens[:, :8], jnp.zeros((batch, 8), jnp.int32))
  params = jax.block_until_ready(params["params"])
  t0 = time.perf_counter()
  compiled = decoding.greedy_decode.lower(model, params, tokens, decode).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(params, tokens))
  times = []
  for _ in range(3):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(params, tokens))
    times.append(time.perf_counter() - t0)
  s = statistics.median(times)
  row = {"model": gin_file, "dtype": "bfloat16", "batch": batch, "inputs": inputs,
         "decode": decode, "compile s": compile_s, "s": s, "tokens/s": batch * decode / s}
  emit(row)
  return {"tokens_per_s": row["tokens/s"]}


# ------------------------------------------------------------------------------ switch

def switch_plan(smoke: bool) -> tuple[list[tuple[str, dict]], str]:
  """The Switch runs (Switch beside dense at equal FLOPs per token), or why there are none."""
  from t5lite.model.config import Config  # pylint: disable=g-import-not-at-top
  if "num_experts" not in {f.name for f in Config.__dataclass_fields__.values()}:
    return [], "this build has no Switch model (issue 18)"
  pairs = ([("models/switch/tiny.gin", "Switch tiny"), ("models/t5_1_1/tiny.gin", "T5 1.1 tiny")]
           if smoke else [("models/switch/base_8.gin", "Switch-Base-8"),
                          ("models/t5_1_1/base.gin", "T5 1.1 base")])
  shape = ({"batch": 8, "inputs": 64, "targets": 16, "steps": 2, "warmup": 1} if smoke else
           {"batch": 128, "inputs": 512, "targets": 114, "steps": 6, "warmup": 2})
  missing = [g for g, _ in pairs if not (HERE.parent / "gin_configs" / g).exists()]
  if missing:
    return [], f"missing gin files {missing}"
  return [("throughput_run", {"gin_file": g, "label": label, "scan": False, **shape})
          for g, label in pairs], ""


# ------------------------------------------------------------------------------ main

def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=pathlib.Path, help="where gpu_check.{json,md} go")
  parser.add_argument("--smoke", action="store_true", help="tiny shapes (e.g. on CPU)")
  parser.add_argument("--budget", type=float, default=None,
                      help="seconds for everything (default 420; --smoke 600)")
  parser.add_argument("--sections", default=",".join(SECTIONS), help=f"some of {SECTIONS}")
  parser.add_argument("--record", action="store_true",
                      help=f"re-record {REFERENCE.name} (CPU, with the `data` extra)")
  args = parser.parse_args(argv)
  if args.record:
    record_reference()
    return 0
  if not args.out:
    parser.error("--out DIR is required")
  sections = args.sections.split(",")
  unknown = [s for s in sections if s not in SECTIONS]
  if unknown:
    parser.error(f"--sections: unknown {unknown}; expected some of {SECTIONS}")
  budget = args.budget or (600.0 if args.smoke else 420.0)
  start = time.monotonic()
  report = Report(args.out, args.smoke, " ".join(["python benchmarks/gpu_check.py",
                                                   *(argv if argv is not None else sys.argv[1:])]))
  scale = 0.5 if args.smoke else 1.0  # smoke sections are small; CPU compiles are not fast

  def left() -> float:
    return budget - (time.monotonic() - start)

  for name in sections:
    limit, need = (x * (1.0 if not args.smoke else 1.0 + scale) for x in BUDGETS[name])
    t0 = time.monotonic()
    print(f"== {name}", flush=True)
    if left() < need:
      report.section(name, "skipped", 0.0, [], f"would not fit: {left():.0f} s left of the "
                     f"{budget:.0f} s budget, it needs about {need:.0f} s")
      print(f"   skipped: {report.data['sections'][name]['reason']}", flush=True)
      continue
    limit = min(limit, left())
    if name in ("throughput", "switch"):
      plan, why = (throughput_plan(args.smoke), "") if name == "throughput" else switch_plan(
          args.smoke)
      if not plan:
        report.section(name, "skipped", 0.0, [], why)
        print(f"   skipped: {why}", flush=True)
        continue
      rows, errors = [], []
      for fn_name, kwargs in plan:
        remaining = limit - (time.monotonic() - t0)
        if remaining < need / 2:
          errors.append(f"{kwargs['label']} ({fn_name}): not run, {remaining:.0f} s left")
          continue
        if fn_name == "torch_run" and not _has("torch", "transformers"):
          errors.append(f"{kwargs['label']} (PyTorch): not run, torch/transformers not installed")
          continue
        got, _, error = run_child(fn_name, remaining, **kwargs)
        rows += got
        if error:
          errors.append(f"{kwargs['label']} ({fn_name}): {error}")
      status = "ok" if rows and not errors else ("partial" if rows else "failed")
      report.section(name, status, time.monotonic() - t0, rows, "; ".join(errors))
    else:
      rows, summary, error = run_child(f"{name}_section", limit, smoke=args.smoke)
      status = "failed" if error else "ok"
      if name == "correctness" and summary and not (summary["float32_ok"]
                                                    and summary["bfloat16_ok"]):
        status = "mismatch"
      report.section(name, status, time.monotonic() - t0, rows, error, summary)
    s = report.data["sections"][name]
    print(f"   {name}: {s['status']} in {s['seconds']} s"
          + (f" ({s['reason']})" if s["reason"] else ""), flush=True)
  print(f"wrote {args.out / 'gpu_check.json'} and gpu_check.md "
        f"({time.monotonic() - start:.0f} s)", flush=True)
  return 0


def _has(*modules: str) -> bool:
  import importlib.util  # pylint: disable=g-import-not-at-top
  return all(importlib.util.find_spec(m) is not None for m in modules)


if __name__ == "__main__":
  sys.path.insert(0, str(HERE.parent))  # the checkout's t5lite, also in the spawned sections
  os.environ["PYTHONPATH"] = os.pathsep.join(
      [str(HERE.parent)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
  sys.exit(main())
