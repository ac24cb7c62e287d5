"""train(): one plain, gin-configurable function; train_step(): pure and module-level."""
from __future__ import annotations

import dataclasses
import functools
import inspect
import time
from typing import Any, Callable, Mapping, Optional

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax

from t5lite.store import checkpoints, metrics as metrics_writer
from t5lite.serving import evaluation, run as runs
from t5lite.model import losses
from t5lite.training import optim, preemption
from t5lite.runtime import partitioning
from t5lite.model.config import Config, flops_per_example
from t5lite.model.network import EncoderDecoder


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  guard: Any  # the non-finite guard's counters (new_guard)


def new_guard() -> dict[str, jax.Array]:
  """skipped: steps skipped so far; consecutive: the current run of skipped steps; first_bad:
  the step that began that run (-1 when none)."""
  return {"skipped": jnp.zeros((), jnp.int32), "consecutive": jnp.zeros((), jnp.int32),
          "first_bad": jnp.full((), -1, jnp.int32)}


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


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
  new_state, grad_norm = apply_update(state, grads, sums["loss"], tx)
  metrics = {"loss": sums["loss"] / denom, "z_loss": sums["z_loss"] / denom,
             "accuracy": sums["accuracy"] / denom, "target_tokens": sums["weight_sum"],
             "grad_norm": grad_norm, "learning_rate": schedule(state.step),
             "skipped_steps": new_state.guard["skipped"], "guard": new_state.guard}
  return new_state, metrics


def apply_update(state: TrainState, grads, loss: jax.Array, tx: optax.GradientTransformation):
  """(state one step on, with the optimizer's update of `grads`; the gradient norm).

  The non-finite guard: a step whose loss, gradient norm or new parameters are not finite is
  not applied (parameters and optimizer state stay), and is counted; no host sync. Other fields
  of a TrainState subclass are left to the caller."""
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(params)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
  g = state.guard
  guard = {"skipped": g["skipped"] + (~ok).astype(jnp.int32),
           "consecutive": jnp.where(ok, 0, g["consecutive"] + 1),
           "first_bad": jnp.where(ok, -1, jnp.where(g["consecutive"] == 0, state.step + 1,
                                                    g["first_bad"]))}
  return state.replace(step=state.step + 1, params=keep(params, state.params),
                       opt_state=keep(opt_state, state.opt_state), guard=guard), grad_norm


def state_shardings(config: Config, tx, mesh, fsdp: bool = False) -> tuple[TrainState, TrainState]:
  """(abstract TrainState of ShapeDtypeStructs carrying their shardings, the shardings alone),
  from the parameters' logical axis names; nothing is allocated."""
  boxed = runs.boxed_params_shape(config)
  param_shardings = partitioning.logical_shardings(boxed, mesh, fsdp)
  params_shape = partitioning.raw_values(boxed)
  opt_shape = jax.eval_shape(tx.init, params_shape)
  opt_shardings = partitioning.match_shardings(opt_shape, params_shape, param_shardings, mesh)
  guard_shape = jax.eval_shape(new_guard)
  shardings = TrainState(step=partitioning.replicated(mesh), params=param_shardings,
                         opt_state=opt_shardings,
                         guard=jax.tree.map(lambda _: partitioning.replicated(mesh), guard_shape))
  shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params_shape,
                      opt_state=opt_shape, guard=guard_shape)
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
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      guard=new_guard())

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
    raise ValueError(f"BATCH_SIZE {batch_size} does not fit the devices: it must divide by the "
                     f"mesh's 'data' size {n_data} x microbatches {microbatches}")
  from t5lite.data.feed import tfdata as pipeline  # pylint: disable=g-import-not-at-top
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


class DivergedError(RuntimeError):
  """Training stopped after too many non-finite steps in a row."""
  exit_code = 3


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
          max_consecutive_skips: int = 20,
          mesh: Optional[jax.sharding.Mesh] = None) -> TrainState:
  """Pretrains (or continues) a model in `model_dir`; returns the final state.

  Restore order: (1) the latest checkpoint in model_dir -> (2) the parameters only of
  `init_checkpoint` (a t5lite run folder or a checkpoints/<step> folder; fresh optimizer state,
  step 0: fine-tuning) -> (3) scratch.
  The data stream resumes at the restored step (data/streams.py). A step whose loss or gradient
  is not finite is skipped (train_step); after max_consecutive_skips of them in a row the run
  stops (DivergedError) naming the first bad step and the last good checkpoint. Process 0 holds
  the run folder's lock (lock.py) for the whole run.
  """
  check_required("train", REQUIRED_MACROS, "set it in a gin file or on the command line",
                 model_dir=model_dir, train_steps=train_steps,
                 mixture_or_task_name=mixture_or_task_name,
                 task_feature_lengths=task_feature_lengths, batch_size=batch_size)
  from t5lite.data.feed import streams  # pylint: disable=g-import-not-at-top
  from t5lite.data.tasks import registry as tasks  # pylint: disable=g-import-not-at-top
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
    raise ValueError(f"BATCH_SIZE {batch_size} does not fit the devices: it must divide by "
                     f"{jax.process_count()} processes")
  is_chief = jax.process_index() == 0
  run_dir = runs.RunDir(model_dir)
  run_lock = lock_run(run_dir)
  try:
    with partitioning.activate(mesh, fsdp):
      state = _train(run_dir, train_steps, mixture_or_task_name, task_feature_lengths, batch_size,
                     config, z_loss, microbatches, seed, fsdp, eval_period, eval_steps,
                     log_period, init_checkpoint, max_consecutive_skips, mesh, task, vocab,
                     streams)
  finally:
    if run_lock is not None:
      run_lock.release()
  if predict_examples:
    params = state.params
    if jax.process_count() > 1:  # every process joins the gather; process 0 decodes
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      params = multihost_utils.process_allgather(params, tiled=True)
    if is_chief:
      from t5lite.serving import inference  # pylint: disable=g-import-not-at-top
      # Alone on process 0: decode on one of its devices, not on the mesh of all processes.
      local = (partitioning.make_mesh((1, 1), jax.local_devices()[:1])
               if jax.process_count() > 1 else mesh)
      with partitioning.activate(local, fsdp):
        inference.show_predictions(EncoderDecoder(config), params, mixture_or_task_name,
                                   task_feature_lengths, predict_examples)
  return state


def _train(run_dir, train_steps, name, lengths, batch_size, config, z_loss, microbatches, seed,
           fsdp, eval_period, eval_steps, log_period, init_checkpoint, max_consecutive_skips,
           mesh, task, vocab, streams) -> TrainState:
  """train()'s loop, inside the mesh and the run lock."""
  is_chief = jax.process_index() == 0
  program = train_program(config, mesh, lengths, batch_size, z_loss=z_loss,
                          microbatches=microbatches, fsdp=fsdp, seed=seed)
  model, tx, shardings, step_fn = program.model, program.tx, program.shardings, program.step_fn
  state = init_state(model, tx, shardings, seed)
  ckpt = checkpoints.Checkpointer(run_dir.checkpoints)
  start, data_state = ckpt.latest_step(), None
  if start is not None:  # (1) resume
    state, data_state = ckpt.restore(start, abstract_state(state, shardings),
                                     fill={"guard": state.guard})
    if is_chief:
      print(f"t5lite: resumed from {ckpt.directory}/{start}", flush=True)
  elif init_checkpoint:  # (2) pretrained parameters, fresh optimizer state
    params = checkpoints.restore_params(init_checkpoint, abstract_state(state, shardings).params)
    state = state.replace(params=params)
    if is_chief:
      print(f"t5lite: initialised parameters from {init_checkpoint}", flush=True)
  start = int(jax.device_get(state.step))
  writer = metrics_writer.MetricsWriter(run_dir, enabled=is_chief)
  if is_chief:
    run_dir.write_config(gin.operative_config_str())
    writer.drop_after(start)  # steps a crash logged after the checkpoint are logged again

  if is_chief:  # the demo's token cache is built on first use; other processes wait for it
    streams.ensure_cache(name)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("t5lite: data cache ready")
  data = streams.TrainStream(name, lengths, batch_size, seed, start, data_state,
                             jax.process_index(), jax.process_count())
  eval_fn = jax.jit(functools.partial(losses.eval_sums, model=model, z_loss=z_loss),
                    in_shardings=(shardings.params, partitioning.batch_sharding(mesh)))
  flops = flops_per_example(config, lengths["inputs"], lengths["targets"])

  def log_values(metrics, rate: Optional[float]) -> dict[str, float]:
    values = _values(metrics)
    if rate is not None:
      values.update(_throughput(rate, batch_size, values["target_tokens"], flops))
      values.update(data.counters())
    return values

  def after_step(step: int, state: TrainState) -> None:
    if eval_period and step % eval_period == 0:
      values = evaluation.loss_and_accuracy(eval_fn, state.params, name, lengths, batch_size,
                                            eval_steps, mesh)
      values.update(evaluation.decoded_metrics(task, model, state.params, step, vocab, mesh,
                                               lengths, run_dir.path))
      writer.write(step, values, prefix="eval")

  state, step, diverged = run_steps(step_fn, state, data, data.state, ckpt, writer, start,
                                    train_steps, mesh, log_period, max_consecutive_skips,
                                    log_values, after_step)
  if diverged is not None:
    last = ckpt.latest_step()
    good = f"{ckpt.directory}/{last}" if last is not None else "none (nothing was saved)"
    raise DivergedError(
        f"training diverged: {int(diverged[1]['consecutive'])} non-finite steps in a row "
        f"(train.max_consecutive_skips={max_consecutive_skips}) up to step {diverged[0]}; the "
        f"first bad step was {int(diverged[1]['first_bad'])}; last good checkpoint: {good}. "
        "Lower the learning rate or fix the data, then rerun to resume from it")
  if step < train_steps and is_chief:
    print(f"t5lite: stopped at step {step} on request; checkpoint saved. Run the same command "
          "again to resume.", flush=True)
  writer.finish()
  return state


def run_steps(step_fn: Callable, state, data, data_state: Callable, ckpt, writer, start: int,
              total: int, mesh, log_period: int, max_skips: int, log_values: Callable,
              after_step: Optional[Callable] = None):
  """The step loop train() and `t5lite doremi`'s proxy share: (state, last step, diverged).

  Step n's metrics are read once step n+1 is dispatched (no host sync in between); every
  log_period steps writer gets log_values(metrics, steps/s) (rate None for the last step).
  Checkpoints: ckpt's period (a periodic save waits for a finite step), SIGTERM / SIGINT, and the
  last step, with data_state(). diverged = (step, guard) after max_skips non-finite steps in a
  row, else None. data and ckpt are closed on the way out.
  """
  preempt = preemption.Preemption()
  pending = None  # (step, device metrics) of the step before the current one
  t_last, step_last = time.perf_counter(), start
  progress = writer.progress(start, total)
  step, save_due, diverged = start, False, None
  try:
    while step < total:
      batch = partitioning.host_to_global(next(data), mesh)
      state, metrics = step_fn(state, batch)
      step += 1
      if pending is not None:  # step n-1's results, now that step n is dispatched
        prev_step, prev_metrics = pending
        guard = jax.device_get(prev_metrics["guard"])
        if int(guard["consecutive"]) >= max_skips:
          diverged = (prev_step, guard)
          break
        if prev_step % log_period == 0 or prev_step == 1:
          now = time.perf_counter()
          rate = (prev_step - step_last) / max(now - t_last, 1e-9)
          writer.write(prev_step, log_values(prev_metrics, rate))
          t_last, step_last = now, prev_step
      pending = (step, metrics)
      progress.update(1)
      if after_step is not None:
        after_step(step, state)
      stop = preempt.reached(step)
      save_due = save_due or ckpt.should_save(step)
      if save_due or stop or step == total:
        # A periodic save waits for a finite step, so that a checkpoint always follows a good one.
        if stop or step == total or int(jax.device_get(state.guard["consecutive"])) == 0:
          ckpt.save(step, state, data_state(), force=True)
          save_due = False
      if stop:
        break
    if pending is not None and diverged is None:
      writer.write(pending[0], log_values(pending[1], None))
  finally:
    progress.close()
    ckpt.close()
    preempt.restore()
    data.close()
  return state, step, diverged


def _values(metrics) -> dict[str, float]:
  metrics = jax.device_get(metrics)
  return {k: float(v) for k, v in metrics.items() if k != "guard"}


def lock_run(run_dir: runs.RunDir):
  """Process 0 takes the run folder's lock; every process stops if it could not."""
  from t5lite.store import run_lock as lock  # pylint: disable=g-import-not-at-top
  held, error = None, None
  if jax.process_index() == 0:
    try:
      held = lock.RunLock(run_dir.lock).acquire()
    except lock.LockedError as e:
      error = e
  if jax.process_count() > 1:
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not ok and error is None:
      error = lock.LockedError(f"{run_dir.path}: process 0 could not take the run lock "
                               "(its output names the holder)")
  if error is not None:
    raise error
  return held


def bound_arguments() -> dict[str, Any]:
  """train()'s arguments as gin would pass them now (its bindings over its defaults), for
  commands that build train()'s step without running train() (`t5lite plan`)."""
  defaults = {name: p.default for name, p in inspect.signature(train).parameters.items()}
  return {**defaults, **gin.get_bindings("train")}


REQUIRED_MACROS = {"model_dir": "MODEL_DIR", "train_steps": "TRAIN_STEPS",
                   "mixture_or_task_name": "MIXTURE_OR_TASK_NAME",
                   "task_feature_lengths": "TASK_FEATURE_LENGTHS", "batch_size": "BATCH_SIZE"}


def check_required(owner: str, macros: Mapping[str, str], hint: str, **values) -> None:
  """gin passes `X = %gin.REQUIRED` macros through as a sentinel; name the ones left unset
  (macros: {argument: MACRO}; owner: the configurable's name)."""
  missing = [k for k, v in values.items() if v is gin.REQUIRED]
  if missing:
    names = ", ".join(f"{macros[k]} ({owner}.{k})" for k in missing)
    raise ValueError(f"required gin macro not set: {names}; {hint}, e.g. "
                     f"--gin.{macros[missing[0]]}=...")


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
