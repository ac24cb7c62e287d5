"""train(): pretrain, fine-tune or continue a run; one plain function, gin-configured in sections.

Restore order: (1) the latest checkpoint in model_dir -> (2) the parameters only of
`init_checkpoint` (a t5lite run folder or a checkpoints/<step> folder; fresh optimizer state,
step 0: fine-tuning) -> (3) scratch. The data stream resumes at the restored step.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Optional

import gin
import jax
from jax.experimental import multihost_utils

from t5lite.data.feed import streams
from t5lite.model import losses
from t5lite.model.config import Config, flops_per_example
from t5lite.model.network import EncoderDecoder
from t5lite.runtime import partitioning
from t5lite.serving import evaluation, inference
from t5lite.store import checkpoints
from t5lite.store.run_dir import RunDir
from t5lite.training import loop as loop_lib
from t5lite.training.settings import (HINT, DataConfig, EvalConfig, LoopConfig, StepConfig,
                                      check_required)
from t5lite.training.state import TrainState, init_state
from t5lite.training.step import train_program

REQUIRED_MACROS = {"model_dir": "MODEL_DIR", "train_steps": "TRAIN_STEPS"}


@gin.configurable(denylist=["mesh"])
def train(model_dir: str = gin.REQUIRED,
          train_steps: int = gin.REQUIRED,
          config: Config = Config(),
          data: Optional[DataConfig] = None,
          step: Optional[StepConfig] = None,
          validation: Optional[EvalConfig] = None,
          loop: Optional[LoopConfig] = None,
          init_checkpoint: Optional[str] = None,
          seed: int = 0,
          mesh: Optional[jax.sharding.Mesh] = None) -> TrainState:
  """Pretrains (or continues) a model in `model_dir` for `train_steps`; returns the final state.

  The sections default to their gin-bound instances (DataConfig(), StepConfig(), ...; see
  settings.py). seed: parameters' initialisation, data order and dropout. A step whose loss or
  gradient is not finite is skipped; after LoopConfig.max_consecutive_skips of them in a row
  the run stops (loop.DivergedError). Process 0 holds the run folder's lock for the whole run.
  """
  check_required("train", REQUIRED_MACROS, HINT, model_dir=model_dir, train_steps=train_steps)
  data = (data or DataConfig()).check()
  step, loop = step or StepConfig(), loop or LoopConfig()
  validation = validation or EvalConfig()
  name, lengths = data.mixture_or_task_name, data.lengths
  task, vocab = streams.prepare(name, lengths)  # the objective's targets must fit
  if vocab.vocab_size > config.vocab_size:
    raise ValueError(f"{name!r}'s vocabulary has {vocab.vocab_size} ids but Config.vocab_size is "
                     f"{config.vocab_size}; bind Config.vocab_size >= {vocab.vocab_size}")
  mesh = mesh or partitioning.make_mesh()
  if data.batch_size % jax.process_count():
    raise ValueError(f"BATCH_SIZE {data.batch_size} does not fit the devices: it must divide by "
                     f"{jax.process_count()} processes")
  with loop_lib.Session(RunDir(model_dir)) as session, partitioning.activate(mesh, step.fsdp):
    state = _train(session, train_steps, config, data, step, validation, loop,
                   init_checkpoint, seed, mesh, task, vocab)
  if validation.predict_examples:
    _show_predictions(config, state.params, data, validation.predict_examples, mesh,
                      step.fsdp)
  return state


def _train(session: loop_lib.Session, train_steps: int, config: Config, data: DataConfig,
           step: StepConfig, validation: EvalConfig, loop: LoopConfig,
           init_checkpoint: Optional[str], seed: int, mesh, task, vocab) -> TrainState:
  """train()'s loop, inside the mesh and the run folder's session."""
  name, lengths = data.mixture_or_task_name, data.lengths
  program = train_program(config, mesh, data, step, seed=seed)
  model, shardings = program.model, program.shardings
  state = init_state(model, program.tx, shardings, seed)
  fresh_guard = state.guard
  state, data_state = session.resume(state, shardings, fill={"guard": fresh_guard})  # (1)
  if data_state is None and init_checkpoint:  # (2) pretrained parameters, fresh optimizer state
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            state.params, shardings.params)
    state = state.replace(params=checkpoints.restore_params(init_checkpoint, abstract))
    session.say(f"initialised parameters from {init_checkpoint}")
  start = int(jax.device_get(state.step))
  session.start(start)

  if session.chief:  # the demo's token cache is built on first use; other processes wait for it
    streams.ensure_cache(name)
  loop_lib.sync("data cache ready")
  stream = streams.TrainStream(name, lengths, data.batch_size, seed, start, data_state,
                               jax.process_index(), jax.process_count())
  eval_fn = jax.jit(functools.partial(losses.eval_sums, model=model, z_loss=step.z_loss),
                    in_shardings=(shardings.params, partitioning.batch_sharding(mesh)))
  flops = flops_per_example(config, lengths["inputs"], lengths["targets"])

  def log_values(metrics, rate: Optional[float]) -> dict[str, float]:
    values = loop_lib.scalars(metrics)
    if rate is not None:
      values.update(loop_lib.throughput(rate, data.batch_size, values["target_tokens"], flops))
      values.update(stream.counters())
    return values

  def after_step(n: int, state: TrainState) -> None:
    period = validation.period
    if period and n % period == 0:
      values = evaluation.loss_and_accuracy(eval_fn, state.params, name, lengths,
                                            data.batch_size, validation.steps, mesh)
      values.update(evaluation.decoded_metrics(task, model, state.params, n, vocab, mesh,
                                               lengths, session.run_dir.path))
      session.writer.write(n, values, prefix="eval")

  return session.run(program.step_fn, state, stream, stream.state, start, train_steps, mesh, loop,
                     log_values, after_step)


def _show_predictions(config: Config, params, data: DataConfig, count: int, mesh,
                      fsdp: bool) -> None:
  """Process 0 greedy-decodes `count` held-out examples (every process joins the gather)."""
  if jax.process_count() > 1:
    params = multihost_utils.process_allgather(params, tiled=True)
  if jax.process_index() != 0:
    return
  # Alone on process 0: decode on one of its devices, not on the mesh of all processes.
  local = (partitioning.make_mesh((1, 1), jax.local_devices()[:1])
           if jax.process_count() > 1 else mesh)
  with partitioning.activate(local, fsdp):
    inference.show_predictions(EncoderDecoder(config), params, data.mixture_or_task_name,
                               data.lengths, count)


def bound_settings() -> dict[str, Any]:
  """train()'s config, sections and seed as gin binds them now, for commands that build train()'s
  step without running it (`t5lite plan`)."""
  bound = {name: p.default for name, p in inspect.signature(train).parameters.items()}
  bound.update(gin.get_bindings("train"))
  return {"config": bound["config"], "data": bound["data"] or DataConfig(),
          "step": bound["step"] or StepConfig(), "seed": bound["seed"]}
