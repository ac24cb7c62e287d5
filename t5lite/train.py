"""train(): one plain, gin-configurable function; train_step(): pure and module-level."""
from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import signal
import time
from typing import Any, Callable, Mapping, Optional

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax

from t5lite import checkpoints, evaluation, losses, metrics_writer, optim, partitioning, runs
from t5lite.config import Config, flops_per_example
from t5lite.network import EncoderDecoder


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *, model: EncoderDecoder,
               tx: optax.GradientTransformation, schedule: Callable, z_loss: float,
               microbatches: int = 1, dropout_seed: Optional[int] = None):
  """One optimizer step. Gradients of the summed loss are accumulated over `microbatches`,
  then divided by the number of target tokens (so the step equals one big batch)."""
  dropout_rng = None
  if model.config.dropout_rate > 0 and dropout_seed is not None:
    dropout_rng = jax.random.fold_in(jax.random.key(dropout_seed), state.step)
  grad_fn = jax.value_and_grad(functools.partial(losses.batch_loss, model=model, z_loss=z_loss),
                               has_aux=True)
  if microbatches == 1:
    (_, sums), grads = grad_fn(state.params, batch, dropout_rng=dropout_rng)
  else:
    split = jax.tree.map(
        lambda x: x.reshape((microbatches, x.shape[0] // microbatches) + x.shape[1:]), batch)

    def body(carry, xs):
      i, micro = xs
      rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, i)
      (_, s), g = grad_fn(state.params, micro, dropout_rng=rng)
      return jax.tree.map(jnp.add, carry, (g, s)), None
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    zero_sums = {k: jnp.zeros((), jnp.float32) for k in losses.SUMS}
    (grads, sums), _ = jax.lax.scan(body, (zeros, zero_sums), (jnp.arange(microbatches), split))
  denom = jnp.maximum(sums["weight_sum"], 1.0)
  grads = jax.tree.map(lambda g: g / denom, grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": sums["loss"] / denom, "z_loss": sums["z_loss"] / denom,
             "accuracy": sums["accuracy"] / denom, "target_tokens": sums["weight_sum"],
             "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state.step)}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def state_shardings(config: Config, tx, mesh, fsdp: bool = False) -> tuple[TrainState, TrainState]:
  """(abstract TrainState of ShapeDtypeStructs carrying their shardings, the shardings alone),
  from the parameters' logical axis names; nothing is allocated."""
  boxed = runs.boxed_params_shape(config)
  param_shardings = partitioning.logical_shardings(boxed, mesh, fsdp)
  params_shape = partitioning.raw_values(boxed)
  opt_shape = jax.eval_shape(tx.init, params_shape)
  opt_shardings = partitioning.match_shardings(opt_shape, params_shape, param_shardings, mesh)
  shardings = TrainState(step=partitioning.replicated(mesh), params=param_shardings,
                         opt_state=opt_shardings)
  shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params_shape,
                      opt_state=opt_shape)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          shapes, shardings)
  return abstract, shardings


def create_train_state(config: Config, tx, mesh, seed: int, fsdp: bool = False):
  """Abstract init -> shardings from logical names -> jit(init, out_shardings). Nothing is
  ever built whole on one device. Returns (state, state_shardings, model)."""
  model = EncoderDecoder(config)
  _, shardings = state_shardings(config, tx, mesh, fsdp)
  return init_state(model, tx, shardings, seed), shardings, model


def init_state(model: EncoderDecoder, tx, shardings: TrainState, seed: int) -> TrainState:
  """A fresh TrainState, each leaf created directly with its sharding."""
  dummy = jnp.ones((1, 1), jnp.int32)  # parameter shapes do not depend on the input's

  def init(rng):
    params = nn.unbox(model.init(rng, dummy, dummy)["params"])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  return jax.jit(init, out_shardings=shardings)(jax.random.key(seed))


def abstract_state(state: TrainState, shardings: TrainState):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)


def jit_train_step(model: EncoderDecoder, tx, schedule, shardings: TrainState, mesh, *,
                   z_loss: float, microbatches: int = 1, dropout_seed: Optional[int] = None):
  """train_step jitted as train() runs it: explicit in/out shardings, the state donated."""
  return jax.jit(
      functools.partial(train_step, model=model, tx=tx, schedule=schedule, z_loss=z_loss,
                        microbatches=microbatches, dropout_seed=dropout_seed),
      in_shardings=(shardings, partitioning.batch_sharding(mesh)), out_shardings=(shardings, None),
      donate_argnums=(0,))


@dataclasses.dataclass(frozen=True)
class TrainProgram:
  """What train() compiles and runs: model, optimizer, schedule, the state's shardings, the jitted
  step, and the step's arguments as ShapeDtypeStructs with their shardings (nothing allocated)."""
  model: EncoderDecoder
  tx: optax.GradientTransformation
  schedule: Callable
  shardings: TrainState
  abstract_state: TrainState
  abstract_batch: dict[str, jax.ShapeDtypeStruct]
  step_fn: Callable

  def lower(self):
    """The step lowered for the mesh's devices from abstract arguments (`.compile()` next)."""
    return self.step_fn.lower(self.abstract_state, self.abstract_batch)


def train_program(config: Config, mesh, task_feature_lengths: Mapping[str, int], batch_size: int,
                  *, z_loss: float = 1e-4, microbatches: int = 1, fsdp: bool = False,
                  seed: int = 0) -> TrainProgram:
  """train()'s step for these arguments, shared by train() and `t5lite plan` (which compiles it
  for a TPU topology without running it). Call inside partitioning.activate(mesh, fsdp); the
  optimizer and schedule come from gin (optim.make_optimizer, optim.learning_rate_schedule)."""
  n_data = mesh.shape["data"]
  if batch_size % (n_data * microbatches):
    raise ValueError(f"batch_size={batch_size} must divide by mesh 'data' size {n_data} x "
                     f"microbatches {microbatches}")
  from t5lite.data import pipeline  # pylint: disable=g-import-not-at-top
  schedule = optim.learning_rate_schedule()
  tx = optim.make_optimizer(schedule=schedule)
  model = EncoderDecoder(config)
  abstract, shardings = state_shardings(config, tx, mesh, fsdp)
  batch_shard = partitioning.batch_sharding(mesh)
  batch = {name: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_shard) for name, (shape, dtype)
           in pipeline.batch_shapes(task_feature_lengths, batch_size).items()}
  step_fn = jit_train_step(model, tx, schedule, shardings, mesh, z_loss=z_loss,
                           microbatches=microbatches, dropout_seed=seed)
  return TrainProgram(model, tx, schedule, shardings, abstract, batch, step_fn)


class Preemption:
  """SIGTERM/SIGINT ask the loop to stop after the current step (then it saves and exits).

  One process: a Python handler sets a flag. Several processes must stop after the *same* step
  (the checkpoint save is collective), so they use JAX's preemption sync service: the C++ SIGTERM
  handler that jax.distributed.initialize installs tells every process, and
  `reached_preemption_sync_point(step)` turns True on all of them at one step (the highest step
  any process had reached, plus one); no per-step host sync. A Python SIGTERM handler would
  replace that C++ one, so none is installed; SIGINT re-sends SIGTERM to this process.
  """

  def __init__(self):
    self.requested = False
    self._previous = {}
    self._multi = jax.process_count() > 1
    if not self._multi:
      handlers = {signal.SIGTERM: self._handle, signal.SIGINT: self._handle}
    elif _preemption_service() is not None:
      handlers = {signal.SIGINT: self._forward}
    else:
      handlers = {}
      print("t5lite: warning: jax_enable_preemption_service is off; SIGTERM ends this process "
            "without a checkpoint", flush=True)
    for sig, handler in handlers.items():
      try:
        self._previous[sig] = signal.signal(sig, handler)
      except ValueError:  # not the main thread
        pass

  def _handle(self, signum, frame):
    del frame
    self.requested = True
    print(f"\nt5lite: received signal {signum}; stopping after this step and saving a checkpoint",
          flush=True)

  def _forward(self, signum, frame):
    del frame
    print(f"\nt5lite: received signal {signum}; telling all processes to stop", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # to the preemption service's handler

  def reached(self, step: int) -> bool:
    if not self._multi:
      return self.requested
    if _preemption_service() is None:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    stop = bool(multihost_utils.reached_preemption_sync_point(step))
    if stop:
      print(f"t5lite: preemption notice; all processes stop after step {step} and save a "
            "checkpoint", flush=True)
    return stop

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _preemption_service():
  return jax._src.distributed.global_state.preemption_sync_manager  # pylint: disable=protected-access


@gin.configurable(denylist=["mesh"])
def train(model_dir: str = gin.REQUIRED,
          train_steps: int = gin.REQUIRED,
          mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          batch_size: int = gin.REQUIRED,
          config: Config = Config(),
          z_loss: float = 1e-4,
          microbatches: int = 1,
          seed: int = 0,
          fsdp: bool = False,
          eval_period: int = 0,
          eval_steps: int = 10,
          log_period: int = 100,
          predict_examples: int = 0,
          init_checkpoint: Optional[str] = None,
          mesh: Optional[jax.sharding.Mesh] = None) -> TrainState:
  """Pretrains (or continues) a model in `model_dir`; returns the final state.

  Restore order: (1) the latest checkpoint in model_dir -> (2) the parameters only of
  `init_checkpoint` (a t5lite run folder or a checkpoints/<step> folder; fresh optimizer state,
  step 0: fine-tuning) -> (3) scratch.
  The data stream resumes at the restored step (its order depends only on seed, step and
  the process index/count).
  """
  _check_required(model_dir=model_dir, train_steps=train_steps,
                  mixture_or_task_name=mixture_or_task_name,
                  task_feature_lengths=task_feature_lengths, batch_size=batch_size)
  from t5lite.data import pipeline, tasks  # pylint: disable=g-import-not-at-top
  tasks.register_all()
  task = tasks.get_task_or_mixture(mixture_or_task_name)
  tasks.check_lengths(mixture_or_task_name, task_feature_lengths)  # objective's targets must fit
  vocab = task.output_features["targets"].vocabulary
  if vocab.vocab_size > config.vocab_size:
    raise ValueError(f"{mixture_or_task_name!r}'s vocabulary has {vocab.vocab_size} ids but "
                     f"Config.vocab_size is {config.vocab_size}; bind Config.vocab_size >= "
                     f"{vocab.vocab_size}")
  mesh = mesh or partitioning.make_mesh()
  if batch_size % jax.process_count():
    raise ValueError(f"batch_size={batch_size} must divide by {jax.process_count()} processes")
  host_batch = batch_size // jax.process_count()
  shard_info = None
  if jax.process_count() > 1:
    import seqio  # pylint: disable=g-import-not-at-top
    shard_info = seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())
  is_chief = jax.process_index() == 0
  run_dir = runs.RunDir(model_dir)

  with partitioning.activate(mesh, fsdp):
    program = train_program(config, mesh, task_feature_lengths, batch_size, z_loss=z_loss,
                            microbatches=microbatches, fsdp=fsdp, seed=seed)
    model, tx, shardings, step_fn = program.model, program.tx, program.shardings, program.step_fn
    li, lt = task_feature_lengths["inputs"], task_feature_lengths["targets"]
    state = init_state(model, tx, shardings, seed)
    ckpt = checkpoints.Checkpointer(run_dir.checkpoints)
    start = ckpt.latest_step()
    if start is not None:  # (1) resume
      state, data_state = ckpt.restore(start, abstract_state(state, shardings))
      if is_chief:
        print(f"t5lite: resumed from {ckpt.directory}/{start} (data at batch "
              f"{data_state.get('batches', start)})", flush=True)
    elif init_checkpoint:  # (2) pretrained parameters, fresh optimizer state
      params = checkpoints.restore_params(init_checkpoint,
                                          abstract_state(state, shardings).params)
      state = state.replace(params=params)
      if is_chief:
        print(f"t5lite: initialised parameters from {init_checkpoint}", flush=True)
    start = int(jax.device_get(state.step))
    if is_chief:
      run_dir.write_config(gin.operative_config_str())

    dataset = pipeline.get_dataset(mixture_or_task_name, task_feature_lengths, host_batch,
                                   split="train", shuffle=True, seed=seed, shard_info=shard_info,
                                   start_batch=start)
    batches = iter(dataset.as_numpy_iterator())
    eval_fn = jax.jit(functools.partial(losses.eval_sums, model=model, z_loss=z_loss),
                      in_shardings=(shardings.params, partitioning.batch_sharding(mesh)))

    writer = metrics_writer.MetricsWriter(run_dir, enabled=is_chief)
    flops = flops_per_example(config, li, lt)
    preempt = Preemption()
    pending = None  # (step, device metrics, time) of the step before the current one
    t_last, step_last = time.perf_counter(), start
    progress = writer.progress(start, train_steps)
    step = start
    try:
      while step < train_steps:
        batch = partitioning.host_to_global(next(batches), mesh)
        state, metrics = step_fn(state, batch)
        step += 1
        if pending is not None:  # fetch step n-1's metrics now that step n is dispatched
          prev_step, prev_metrics = pending
          if prev_step % log_period == 0 or prev_step == 1:
            now = time.perf_counter()
            values = {k: float(v) for k, v in jax.device_get(prev_metrics).items()}
            rate = (prev_step - step_last) / max(now - t_last, 1e-9)
            values.update(_throughput(rate, batch_size, values["target_tokens"], flops))
            writer.write(prev_step, values)
            t_last, step_last = now, prev_step
        pending = (step, metrics)
        progress.update(1)
        if eval_period and step % eval_period == 0:
          values = evaluation.loss_and_accuracy(eval_fn, state.params, mixture_or_task_name,
                                                task_feature_lengths, host_batch, eval_steps,
                                                mesh, shard_info)
          values.update(evaluation.decoded_metrics(task, model, state.params, step, vocab, mesh,
                                                   task_feature_lengths, run_dir.path))
          writer.write(step, values, prefix="eval")
        stop = preempt.reached(step)
        if ckpt.should_save(step) or stop or step == train_steps:
          ckpt.save(step, state, {"batches": step, "seed": seed,
                                  "process_count": jax.process_count()}, force=True)
        if stop:
          break
      if pending is not None:
        values = {k: float(v) for k, v in jax.device_get(pending[1]).items()}
        writer.write(pending[0], values)
    finally:
      progress.close()
      ckpt.close()
      preempt.restore()
    if step < train_steps:
      if is_chief:
        print(f"t5lite: stopped at step {step} on request; checkpoint saved. Run the same "
              "command again to resume.", flush=True)
    writer.finish()
    if predict_examples:
      params = state.params
      if jax.process_count() > 1:  # every process joins the gather; process 0 decodes
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        params = multihost_utils.process_allgather(params, tiled=True)
      if is_chief:
        from t5lite import inference  # pylint: disable=g-import-not-at-top
        # Alone on process 0: decode on one of its devices, not on the mesh of all processes.
        local = (partitioning.make_mesh((1, 1), jax.local_devices()[:1])
                 if jax.process_count() > 1 else mesh)
        with partitioning.activate(local, fsdp):
          inference.show_predictions(model, params, mixture_or_task_name, task_feature_lengths,
                                   predict_examples)
  return state


def bound_arguments() -> dict[str, Any]:
  """train()'s arguments as gin would pass them now (its bindings over its defaults), for
  commands that build train()'s step without running train() (`t5lite plan`)."""
  defaults = {name: p.default for name, p in inspect.signature(train).parameters.items()}
  return {**defaults, **gin.get_bindings("train")}


REQUIRED_MACROS = {"model_dir": "MODEL_DIR", "train_steps": "TRAIN_STEPS",
                   "mixture_or_task_name": "MIXTURE_OR_TASK_NAME",
                   "task_feature_lengths": "TASK_FEATURE_LENGTHS", "batch_size": "BATCH_SIZE"}


def _check_required(**values) -> None:
  """gin passes `X = %gin.REQUIRED` macros through as a sentinel; name the ones left unset."""
  missing = [k for k, v in values.items() if v is gin.REQUIRED]
  if missing:
    names = ", ".join(f"{REQUIRED_MACROS[k]} (train.{k})" for k in missing)
    raise ValueError(f"required gin macro not set: {names}; set it in a gin file or on the "
                     f"command line, e.g. --gin.{REQUIRED_MACROS[missing[0]]}=...")


PEAK_FLOPS = {"h100": 989e12, "h200": 989e12, "a100": 312e12, "tpu v4": 275e12,
              "tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v5p": 459e12, "tpu v6": 918e12}


def peak_flops_per_device() -> Optional[float]:
  kind = jax.devices()[0].device_kind.lower()
  for name, peak in PEAK_FLOPS.items():
    if name in kind:
      return peak
  return None


def _throughput(steps_per_s: float, batch_size: int, target_tokens: float, flops: float) -> dict:
  out = {"steps_per_s": steps_per_s, "examples_per_s": steps_per_s * batch_size,
         "target_tokens_per_s": steps_per_s * target_tokens}
  peak = peak_flops_per_device()
  if peak:
    out["mfu"] = steps_per_s * batch_size * flops / (peak * jax.device_count())
  return out
