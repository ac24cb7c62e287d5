"""Train steps/s: t5lite's jitted train_step vs HF transformers' PyTorch T5, side by side (CPU).

  python benchmarks/bench_train.py [--models tiny,small] [--steps 5] [--warmup 2]
                                   [--frameworks t5lite,t5lite-bf16,torch,torch-bf16]
                                   [--torch-init t5lite|hf] [--same-process]

Models: "tiny" = the HF comparison's tiny (d 256, 4 x 64 heads, gated d_ff 1024, 4+4
layers); "test" = gin_configs/models/t5_1_1/tiny.gin (d 128, 4 x 32, d_ff 256, 2+2); "small" =
T5 1.1 small (d 512, 6 x 64, d_ff 1024, 8+8). Vocab 32128 for all.

Both frameworks train the same architecture on the same random token batches (batch 8, inputs
512, targets 114, every token valid, decoder_loss_weights all ones) with AdamW (lr 1e-3 constant,
no weight decay) and plain mean cross-entropy (z_loss 0: HF has none) from the same initial
weights: t5lite's init, copied into the HF model with t5lite.hf.params_to_hf (--torch-init hf
keeps HF's own init, whose lm_head std 1.0 gives logits of std ~sqrt(d) and denormal floats in
the backward; history: git log -p benchmarks/). With fp32 the two frameworks' losses agree step
by step.

t5lite runs its real training path: create_train_state, then train_step jitted with explicit
shardings and a donated state on a 1-device mesh inside partitioning.activate. The HF model is
T5ForConditionalGeneration built from t5lite.hf.hf_config_from(config), its lm_head untied from
the shared embedding (transformers 5 always ties T5's; T5 1.1's is separate) so that both have
the same parameters (the counts are checked), in train() mode, with torch.optim.AdamW and
torch.set_num_threads(cores).

Timing: one dtype at a time (t5lite fp32 with torch fp32, then t5lite bf16 with torch bf16).
Each framework runs in a spawned process of its own (--same-process: both in this one), as it
would run alone: in one process the two frameworks share glibc's heap and each one's allocations
between the other's steps cost page faults (t5lite's first 3-5 steps after torch's were 10-50%
slower). Both processes prepare themselves as the `t5lite` command does (backend.prepare_process:
t5lite's CPU malloc settings, which torch gains from too). Each framework first runs --warmup steps (t5lite's step is compiled ahead of
time), then --steps rounds of one step per framework in turn (interleaved, so both see the same
load on a shared machine; --pause idle seconds before each), each step synchronous
(block_until_ready / after optimizer.step()) and timed in its own process. s/step is the
median; CPU s/step the median process CPU time of a step; "speed-up" is HF PyTorch's s/step over
the row's, for the same dtype (t5lite fp32 vs torch fp32, t5lite bf16 activations vs torch under
torch.autocast("cpu", bfloat16); both keep fp32 parameters and optimizer state); GFLOP/s =
t5lite.config.flops_per_example x batch / (s/step).
"""
from __future__ import annotations

import argparse
import functools
import gc
import multiprocessing
import os
import platform
import resource
import statistics
import time

from t5lite.runtime import backend  # noqa: E402  (imports no jax)
backend.prepare_process()  # as `t5lite` does: no TPU probe on CPU, CPU malloc tuning
import jax
import numpy as np

from t5lite.convert import hf
from t5lite.training import optim
from t5lite.training import state as train_state
from t5lite.training import step as train_step_lib
from t5lite.runtime import partitioning
from t5lite.model.config import Config, flops_per_example

MODELS = {
    "tiny": Config(emb_dim=256, num_heads=4, head_dim=64, mlp_dim=1024, num_encoder_layers=4,
                   num_decoder_layers=4),
    "test": Config(emb_dim=128, num_heads=4, head_dim=32, mlp_dim=256, num_encoder_layers=2,
                   num_decoder_layers=2),
    "small": Config(emb_dim=512, num_heads=6, head_dim=64, mlp_dim=1024, num_encoder_layers=8,
                    num_decoder_layers=8),
}
FRAMEWORKS = ("t5lite", "t5lite-bf16", "torch", "torch-bf16")
LR = 1e-3


def random_batch(config: Config, batch: int, inputs: int, targets: int, seed: int = 0) -> dict:
  """Tokens in [2, vocab): no padding (0) and no EOS, so every position is valid."""
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, config.vocab_size, (batch, inputs), dtype=np.int32)
  tgt = rng.integers(2, config.vocab_size, (batch, targets), dtype=np.int32)
  dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
          "decoder_target_tokens": tgt, "decoder_loss_weights": np.ones_like(tgt, np.float32)}


def _cpu_seconds() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


class Runner:
  """One framework's training loop: `step()` runs one synchronous step and records its loss;
  `timed_step()` also returns its (wall, process CPU) seconds."""

  def __init__(self, step, params: int, compile_s: float, losses: list):
    self.step, self.params, self.compile_s, self._losses = step, params, compile_s, losses
    self.times, self.cpu = [], []

  def timed_step(self) -> tuple[float, float]:
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    self.step()
    return time.perf_counter() - t0, _cpu_seconds() - cpu0

  @property
  def losses(self) -> list[float]:
    return [float(x) for x in self._losses]

  def close(self) -> None:
    pass


def make_runner(fw: str, config: Config, batch_np: dict, init_params=None) -> Runner:
  if fw.startswith("torch"):
    return torch_runner(config.replace(dtype="float32"), batch_np, init_params,
                        bf16=fw == "torch-bf16")
  dtype = "bfloat16" if fw == "t5lite-bf16" else "float32"
  return t5lite_runner(config.replace(dtype=dtype), batch_np)[0]


def _worker(conn, fw: str, config: Config, batch_np: dict, init_params) -> None:
  """A framework in a process of its own (the default; --same-process skips it): builds its
  runner, then runs the parent's commands ("step", "timed", "losses", "quit") one at a time."""
  runner = make_runner(fw, config, batch_np, init_params)
  del init_params
  conn.send((runner.params, runner.compile_s))
  while True:
    cmd = conn.recv()
    if cmd == "step":
      runner.step()
      conn.send(None)
    elif cmd == "timed":
      conn.send(runner.timed_step())
    elif cmd == "losses":
      conn.send(runner.losses)
    else:
      conn.close()
      return


class ProcessRunner(Runner):
  """A Runner whose framework lives in a child process (spawned, so it starts clean: its own
  heap and threads, as when the framework runs alone). Steps are timed in the child."""

  def __init__(self, fw: str, config: Config, batch_np: dict, init_params=None):
    ctx = multiprocessing.get_context("spawn")
    self._conn, child = ctx.Pipe()
    self._proc = ctx.Process(target=_worker, args=(child, fw, config, batch_np, init_params),
                             daemon=True)
    self._proc.start()
    child.close()
    self._fw = fw
    params, compile_s = self._ask(None)
    super().__init__(self._step, params, compile_s, [])

  def _ask(self, cmd):
    """Sends cmd (None: only wait) and returns the child's answer; a dead child is named."""
    try:
      if cmd is not None:
        self._conn.send(cmd)
      return self._conn.recv()
    except (EOFError, BrokenPipeError, ConnectionResetError):
      self._proc.join(timeout=5)
      raise SystemExit(f"bench_train: the {self._fw!r} worker process died (exit code "
                       f"{self._proc.exitcode}); its traceback is above") from None

  def _step(self):
    self._ask("step")

  def timed_step(self) -> tuple[float, float]:
    return self._ask("timed")

  @property
  def losses(self) -> list[float]:
    return self._ask("losses")

  def close(self) -> None:
    self._conn.send("quit")
    self._proc.join(timeout=60)


def t5lite_runner(config: Config, batch_np: dict) -> tuple[Runner, dict]:
  """t5lite's real training path; also returns the initial parameters (numpy copies, taken
  before the state is donated)."""
  mesh = partitioning.make_mesh((1, 1), devices=jax.devices()[:1])
  with partitioning.activate(mesh):
    schedule = optim.learning_rate_schedule("constant", peak=LR)
    tx = optim.make_optimizer("adamw", schedule=schedule)
    state, shardings, model = train_state.create_train_state(config, tx, mesh, seed=0)
    init_params = jax.tree.map(lambda x: np.array(x, copy=True), state.params)
    step_fn = jax.jit(
        functools.partial(train_step_lib.train_step, model=model, tx=tx, schedule=schedule, z_loss=0.0),
        in_shardings=(shardings, partitioning.batch_sharding(mesh)),
        out_shardings=(shardings, None), donate_argnums=(0,))
    batch = partitioning.host_to_global(batch_np, mesh)
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
  holder, losses = {"state": state}, []

  def step():
    holder["state"], metrics = compiled(holder["state"], batch)
    jax.block_until_ready((holder["state"], metrics))
    losses.append(metrics["loss"])

  n_params = sum(x.size for x in jax.tree.leaves(init_params))
  return Runner(step, n_params, compile_s, losses), init_params


def torch_runner(config: Config, batch_np: dict, init_params=None, bf16: bool = False) -> Runner:
  """HF T5ForConditionalGeneration; init_params: t5lite params to start from (None: HF's init);
  bf16: forward under torch.autocast("cpu", bfloat16) (fp32 parameters and optimizer, as t5lite's
  bf16 activations)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(hf.hf_config_from(config))
  if not config.logits_via_embedding:  # untie: HF initialises lm_head with std 1.0, as shared
    model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
  if init_params is not None:
    sd = hf.params_to_hf(init_params, config)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
  ids = {k: torch.from_numpy(v.astype(np.int64)) for k, v in batch_np.items()
         if k != "decoder_loss_weights"}
  losses = []

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
      out = model(input_ids=ids["encoder_input_tokens"],
                  decoder_input_ids=ids["decoder_input_tokens"], labels=ids["decoder_target_tokens"])
    out.loss.backward()
    opt.step()
    losses.append(out.loss.detach())

  return Runner(step, sum(p.numel() for p in model.parameters()), 0.0, losses)


def run_interleaved(runners: dict[str, Runner], steps: int, warmup: int, pause: float) -> None:
  """Warm-up steps, then `steps` rounds of one timed step per runner in turn, so that every
  framework sees the same (shared machine's) load; `pause` s between steps lets the previous
  framework's worker threads go idle."""
  for runner in runners.values():
    for _ in range(warmup):
      runner.step()
  for _ in range(steps):
    for runner in runners.values():
      time.sleep(pause)
      wall, cpu = runner.timed_step()
      runner.times.append(wall)
      runner.cpu.append(cpu)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="tiny,small", help=f"comma list of {sorted(MODELS)}")
  parser.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                      help=f"comma list of {FRAMEWORKS}")
  parser.add_argument("--steps", type=int, default=5, help="timed steps per framework")
  parser.add_argument("--warmup", type=int, default=2,
                      help="untimed steps first (compile; glibc's heap grows to its steady size)")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--inputs", type=int, default=512)
  parser.add_argument("--targets", type=int, default=114)
  parser.add_argument("--pause", type=float, default=0.5, help="idle seconds before each step")
  parser.add_argument("--same-process", action="store_true",
                      help="run the frameworks in this process (sharing one heap) instead of one "
                           "spawned process each")
  parser.add_argument("--torch-init", choices=("t5lite", "hf"), default="t5lite",
                      help="HF model's initial weights: t5lite's (equal to t5lite's run) or HF's")
  args = parser.parse_args()
  frameworks = args.frameworks.split(",")
  for name in frameworks:
    if name not in FRAMEWORKS:
      parser.error(f"--frameworks: unknown {name!r}; expected {FRAMEWORKS}")
  import torch  # pylint: disable=g-import-not-at-top
  print(f"# {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__}; "
        f"batch {args.batch}, inputs {args.inputs}, targets {args.targets}, AdamW; "
        f"{args.warmup} warm-up + {args.steps} timed steps each, interleaved, "
        f"{'one process' if args.same_process else 'one process per framework'}; "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True)
  header = ("| model | params | framework | dtype | s/step | steps/s | target tokens/s | "
            "examples/s | GFLOP/s | speed-up | min s/step | CPU s/step | compile s | last loss |")
  rows = []
  for name in args.models.split(","):
    config = MODELS[name]
    batch_np = random_batch(config, args.batch, args.inputs, args.targets)
    flops = flops_per_example(config, args.inputs, args.targets) * args.batch
    init_params = None
    if args.torch_init == "t5lite" and any(fw.startswith("torch") for fw in frameworks):
      init_params = t5lite_runner(config.replace(dtype="float32"), batch_np)[1]
    # One dtype at a time: a framework pair (t5lite, torch) interleaved, then closed, so that
    # no more than two frameworks hold memory at once (and, with --same-process, share a heap).
    for group in (("t5lite", "torch"), ("t5lite-bf16", "torch-bf16")):
      group = [fw for fw in group if fw in frameworks]
      if not group:
        continue
      runners = {}
      for fw in group:
        init = init_params if fw.startswith("torch") else None
        runners[fw] = (make_runner(fw, config, batch_np, init) if args.same_process
                       else ProcessRunner(fw, config, batch_np, init))
      run_interleaved(runners, args.steps, args.warmup, args.pause)
      for fw, r in runners.items():
        print(f"# {name} {fw}: step times {', '.join(f'{t:.2f}' for t in r.times)} s; CPU s "
              f"{', '.join(f'{t:.2f}' for t in r.cpu)}; losses "
              f"{', '.join(f'{x:.4f}' for x in r.losses)}; load {os.getloadavg()[0]:.2f}",
              flush=True)
      counts = {r.params for r in runners.values()}
      if len(counts) != 1:
        raise SystemExit(f"{name}: parameter counts differ: "
                         f"{ {fw: r.params for fw, r in runners.items()} }")
      ref = next((statistics.median(r.times) for fw, r in runners.items()
                  if fw.startswith("torch")), None)
      for fw, r in runners.items():
        s = statistics.median(r.times)
        label = "HF transformers (PyTorch)" if fw.startswith("torch") else "t5lite (JAX)"
        dtype = "bf16" if fw.endswith("-bf16") else "fp32"
        speedup = f"{ref / s:.2f}x" if ref else "-"
        rows.append(f"| T5 1.1 {name} | {r.params / 1e6:.1f}M | {label} | {dtype} | {s:.3f} | "
                    f"{1 / s:.3f} | {args.batch * args.targets / s:.0f} | {args.batch / s:.2f} | "
                    f"{flops / s / 1e9:.1f} | {speedup} | {min(r.times):.3f} | "
                    f"{statistics.median(r.cpu):.2f} | {r.compile_s:.1f} | {r.losses[-1]:.3f} |")
      for r in runners.values():
        r.close()
      del runners
      gc.collect()
  print(f"# load average at the end {os.getloadavg()[0]:.2f}")
  print(header)
  print("|" + "---|" * (header.count("|") - 1))
  for row in rows:
    print(row)


if __name__ == "__main__":
  main()
