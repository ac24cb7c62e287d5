"""`t5lite doremi`'s run: a reference model, DoReMi's proxy (doremi.py), then the domain weights
as a gin file for the main run.

  MODEL_DIR/
    reference/           a `t5lite train` run on the mixture at its current rates; reused once it
                         has reached reference_steps (doremi.reference: any other run folder)
    proxy/               the DRO proxy: checkpoints (the TrainState with α, Σα, λ, and the data
                         position), config.gin, metrics.jsonl, tb/ (per-domain weight, average
                         weight, excess loss, proxy and reference loss), loss.png
    domain_weights.gin   register_all.rates = {mixture: {task: ᾱ}}: --gin_file for the main run
    domain_weights.json  the same weights, the baseline rates, the steps
    domain_weights.png   α_t and the running average of each domain over the proxy's steps

The proxy reads the token cache (DATA_CACHE_DIR) through data/indexed.py with per-token task ids,
sampling the mixture's tasks uniformly (as Algorithm 1); its steps run on the same mesh,
shardings, optimizer, checkpointing and non-finite guard as train().
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Optional

import gin
import jax
import numpy as np

from t5lite import files
from t5lite.data.cache import keys as cache_keys
from t5lite.data.feed import indexed, streams
from t5lite.data.sources import sources
from t5lite.data.tasks import registry as tasks
from t5lite.datamix import doremi as doremi_lib
from t5lite.model.config import Config
from t5lite.model.params import abstract_params
from t5lite.runtime import partitioning
from t5lite.store import checkpoints
from t5lite.store.metrics import read_metrics
from t5lite.store.run_dir import RunDir
from t5lite.training import loop as loop_lib
from t5lite.training import optim, train
from t5lite.training.settings import DataConfig, LoopConfig, StepConfig, check_required
from t5lite.training.state import create_train_state

REFERENCE, PROXY = "reference", "proxy"
WEIGHTS_GIN, WEIGHTS_JSON, WEIGHTS_PNG = ("domain_weights.gin", "domain_weights.json",
                                          "domain_weights.png")
VECTORS = ("domain_weight", "average_weight", "excess_loss", "proxy_loss", "reference_loss",
           "domain_tokens")  # doremi_step's [k] metrics, logged per domain as NAME/task


@dataclasses.dataclass
class Result:
  """What a finished DoReMi run found: ᾱ per task, the mixture's rates before, the files."""
  mixture: str
  weights: dict[str, float]
  baseline: dict[str, float]
  steps: int
  gin_file: str


@gin.configurable(denylist=["mesh"])
def doremi(model_dir: str = gin.REQUIRED,
           mixture: str = gin.REQUIRED,
           reference_steps: int = gin.REQUIRED,
           proxy_steps: int = gin.REQUIRED,
           batch_size: int = gin.REQUIRED,
           task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
           reference: Optional[str] = None,
           config: Config = Config(),
           eta: float = 1.0,
           smoothing: float = 1e-3,
           seed: int = 0,
           log_period: int = 10,
           mesh: Optional[jax.sharding.Mesh] = None) -> Optional[Result]:
  """DoReMi's domain weights for `mixture` (its leaf tasks are the domains), in model_dir.

  The reference: `reference` (a run folder) if given, else train() on the mixture as registered,
  for reference_steps, in model_dir/reference (train's gin bindings: BATCH_SIZE, optimizer, ...;
  resumed or reused there). The proxy: `config` (the same architecture unless gin binds another)
  for proxy_steps at batch_size, with DoReMi's step size eta and smoothing c, logging every
  log_period steps; resumed from its latest checkpoint. Both share train()'s StepConfig (z_loss,
  fsdp) and LoopConfig (max_consecutive_skips). Returns None when stopped early (SIGTERM /
  SIGINT): run again to resume.
  """
  check_required("doremi", REQUIRED_MACROS, "use --gin_file=runs/doremi.gin and set it on "
                       "the command line", model_dir=model_dir, mixture=mixture,
                       reference_steps=reference_steps, proxy_steps=proxy_steps,
                       batch_size=batch_size, task_feature_lengths=task_feature_lengths)
  step = StepConfig()
  if step.microbatches != 1:
    raise ValueError(f"StepConfig.microbatches={step.microbatches}: the DoReMi proxy has no "
                     "gradient accumulation; bind it to 1 (or lower DOREMI_BATCH_SIZE)")
  cache_dir = sources.Sources().cache_dir
  if not cache_dir:
    raise ValueError("t5lite doremi reads the token cache: set DATA_CACHE_DIR (gin) to a cache "
                     f"folder (`t5lite cache {mixture} --output DIR` builds it, or "
                     "Sources.build_missing_cache = True builds it on first use)")
  tasks.register_all()
  baseline = _domains(mixture, task_feature_lengths, config)
  mesh = mesh or partitioning.make_mesh()
  if batch_size % mesh.shape["data"] or batch_size % jax.process_count():
    raise ValueError(f"doremi.batch_size {batch_size} does not fit the devices: it must divide "
                     f"by the mesh's 'data' size {mesh.shape['data']} and by "
                     f"{jax.process_count()} processes")
  if eta <= 0 or not 0 <= smoothing <= 1:
    raise ValueError(f"doremi.eta = {eta}, doremi.smoothing = {smoothing}: expected eta > 0 and "
                     "0 <= smoothing <= 1")
  run_dir = RunDir(model_dir)
  reference_path = _reference(run_dir, reference, mixture, reference_steps, mesh)
  if reference_path is None:
    return None
  uniform = tasks.register_mixture(f"{mixture}_doremi_uniform",
                                   [(task, 1.0) for task in baseline]).name
  if jax.process_index() == 0:
    streams.ensure_cache(mixture)
  loop_lib.sync("data cache ready")
  loop = dataclasses.replace(LoopConfig(), log_period=log_period)
  with (loop_lib.Session(RunDir(run_dir.file(PROXY)), "the DoReMi proxy") as session,
        partitioning.activate(mesh, step.fsdp)):
    state, names = _proxy(session, reference_path, uniform, proxy_steps, batch_size,
                          task_feature_lengths, config, eta, smoothing, step, loop, seed, mesh,
                          streams.cache_dir(sources.Sources()))
  steps = int(jax.device_get(state.step))
  if steps < proxy_steps:
    return None
  average = np.asarray(jax.device_get(state.alpha_sum), np.float64) / steps
  result = Result(mixture, {n: float(w) for n, w in zip(names, average)},
                  {n: baseline[n] for n in names}, steps, run_dir.file(WEIGHTS_GIN))
  if jax.process_index() == 0:
    write_outputs(run_dir, result, reference_path, eta, smoothing,
                  RunDir(run_dir.file(PROXY)).metrics)
  return result


def _domains(mixture: str, lengths: Mapping[str, int], config: Config) -> dict[str, float]:
  """{task: normalised rate} of a mixture of >= 2 tasks sharing one vocabulary; ValueError
  otherwise."""
  if not tasks.is_mixture(mixture):
    raise ValueError(f"DOREMI_MIXTURE {mixture!r} is a task; DoReMi weighs the tasks of a "
                     "mixture (register_all.mixtures = {'name': [('task_a', 1.0), ...]})")
  leaves = tasks.leaf_tasks(mixture)
  if len(leaves) < 2:
    raise ValueError(f"mixture {mixture!r} has {len(leaves)} task; DoReMi needs >= 2 domains")
  vocabularies = {task.name: task.output_features["targets"].vocabulary for task, _ in leaves}
  kinds = {n: cache_keys.vocabulary_fingerprint(v)["sha256"] for n, v in vocabularies.items()}
  if len(set(kinds.values())) > 1:
    raise ValueError(f"mixture {mixture!r}: its tasks use different vocabularies "
                     f"({vocabularies}); one model needs one vocabulary")
  first = next(iter(vocabularies.values()))
  if first.vocab_size > config.vocab_size:
    raise ValueError(f"{mixture!r}'s vocabulary has {first.vocab_size} ids but Config.vocab_size "
                     f"is {config.vocab_size}; bind Config.vocab_size >= {first.vocab_size}")
  tasks.check_lengths(mixture, lengths)
  return {task.name: float(rate) for task, rate in leaves}


def _reference(run_dir: RunDir, reference: Optional[str], mixture: str, steps: int,
               mesh) -> Optional[str]:
  """The reference run folder: `reference` as given, else model_dir/reference trained (or
  resumed) up to `steps` with train(), or reused when it has reached them; None when its
  training was stopped on request."""
  chief = jax.process_index() == 0
  if reference:
    checkpoints.resolve(reference)  # a clear error when it holds no checkpoint
    if chief:
      print(f"t5lite doremi: reference model {reference}", flush=True)
    return reference
  ref_dir = RunDir(run_dir.file(REFERENCE))
  done = ref_dir.checkpoint_steps()
  if done and done[-1] >= steps:
    if chief:
      print(f"t5lite doremi: reusing the reference model {ref_dir.path} (step {done[-1]})",
            flush=True)
    return ref_dir.path
  if chief:
    print(f"t5lite doremi: training the reference model on {mixture!r} at its rates, "
          f"{steps} steps -> {ref_dir.path}", flush=True)
  train.train(model_dir=ref_dir.path, train_steps=steps, mesh=mesh,
              data=dataclasses.replace(DataConfig(), mixture_or_task_name=mixture))
  if ref_dir.checkpoint_steps()[-1:] != [steps]:
    return None  # stopped on request (SIGTERM / SIGINT): train() said so and saved
  return ref_dir.path


def _proxy(session: loop_lib.Session, reference_path: str, uniform: str, proxy_steps: int,
           batch_size: int, lengths, config: Config, eta: float, smoothing: float,
           step: StepConfig, loop: LoopConfig, seed: int, mesh, cache_dir: str):
  """The proxy's loop (train._train's shape): (final DoremiState, domain names in α's order)."""
  stream = indexed.IndexedStream(uniform, lengths, batch_size, cache_dir, seed=seed,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count(), task_ids=True)
  names = [t.name for t in stream.tasks]
  schedule = optim.learning_rate_schedule()
  tx = optim.make_optimizer(schedule=schedule)
  base, base_shardings, model = create_train_state(config, tx, mesh, seed, step.fsdp)
  shardings = doremi_lib.state_shardings(base_shardings, mesh)
  state = jax.device_put(doremi_lib.new_state(base, len(names)), shardings)
  reference_abstract = abstract_params(config, mesh, step.fsdp)
  reference_params = checkpoints.restore_params(reference_path, reference_abstract)
  # Resume: parameters, optimizer, α, Σα, λ and the data position.
  state, data_state = session.resume(state, shardings)
  start = int(jax.device_get(state.step))
  session.start(start)
  data = (stream.iterator(state=data_state) if data_state else stream.iterator(start))
  step_fn = doremi_lib.jit_doremi_step(
      model, model, tx, schedule, shardings,
      jax.tree.map(lambda a: a.sharding, reference_abstract), mesh, z_loss=step.z_loss, eta=eta,
      smoothing=smoothing, dropout_seed=seed)
  step_with_reference = lambda state, batch: step_fn(state, reference_params, batch)  # noqa: E731

  def log_values(metrics, rate: Optional[float]) -> dict[str, float]:
    rates = {} if rate is None else {"steps_per_s": rate, "examples_per_s": rate * batch_size}
    return {**scalars(metrics, names), **rates}

  state = session.run(step_with_reference, state, data, data.get_state, start, proxy_steps, mesh,
                      loop, log_values)
  return state, names


def scalars(metrics: Mapping[str, Any], names: list[str]) -> dict[str, float]:
  """doremi_step's metrics as named scalars: the [k] vectors become NAME/task."""
  values = jax.device_get(metrics)
  out = {}
  for key, value in values.items():
    if key == "guard":
      continue
    if key in VECTORS:
      out.update({f"{key}/{n}": float(v) for n, v in zip(names, value)})
    else:
      out[key] = float(value)
  return out


# ----------------------------------------------------------------------------- the outputs


def weights_gin(result: Result, reference: str, eta: float, smoothing: float) -> str:
  """domain_weights.gin: the mixture re-registered with DoReMi's rates (register_all.rates)."""
  lines = [
      f"# DoReMi domain weights for mixture {result.mixture!r} (Xie et al. 2023), written by "
      "`t5lite doremi`:",
      f"# the proxy's weights averaged over its {result.steps} steps (eta {eta}, smoothing "
      f"{smoothing}); reference model {reference}.",
      "# Train on them: t5lite train --gin_file=... --gin_file=THIS_FILE (after the files that "
      "declare the mixture).",
      "# Rates before (normalised): " + ", ".join(
          f"{n} {r:.4f}" for n, r in sorted(result.baseline.items())),
      "register_all.rates = {",
      f"    {result.mixture!r}: {{",
      *[f"        {n!r}: {w:.6g}," for n, w in sorted(result.weights.items())],
      "    },",
      "}",
  ]
  return "\n".join(lines) + "\n"


def write_outputs(run_dir: RunDir, result: Result, reference: str, eta: float,
                  smoothing: float, metrics_path: str) -> None:
  files.write_text(run_dir.file(WEIGHTS_GIN), weights_gin(result, reference, eta, smoothing))
  summary = {"mixture": result.mixture, "weights": result.weights, "baseline": result.baseline,
             "steps": result.steps, "eta": eta, "smoothing": smoothing, "reference": reference}
  files.write_text(run_dir.file(WEIGHTS_JSON), json.dumps(summary, indent=1, sort_keys=True))
  write_weights_plot(metrics_path, run_dir.file(WEIGHTS_PNG), result)


def write_weights_plot(metrics_path: str, png_path: str, result: Result) -> bool:
  """α_t (thin) and its running average (thick) per domain over the proxy's logged steps, the
  baseline rates dotted; False when nothing was logged."""
  records = [r for r in read_metrics(metrics_path) if r.get("split") == "train"]
  if not records:
    return False
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(8, 4.5))
  for i, name in enumerate(sorted(result.weights)):
    color = f"C{i % 10}"
    for key, width, label in (("domain_weight", 0.8, None), ("average_weight", 2.0, name)):
      points = sorted((r["step"], r[f"{key}/{name}"]) for r in records if f"{key}/{name}" in r)
      if points:
        ax.plot(*zip(*points), color=color, linewidth=width, label=label,
                alpha=0.5 if label is None else 1.0)
    ax.axhline(result.baseline[name], color=color, linestyle=":", linewidth=1)
  ax.set_xlabel("proxy step")
  ax.set_ylabel("domain weight")
  ax.set_title(f"DoReMi on {result.mixture}: α_t (thin), average (thick), rates before (dotted)",
               fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  files.makedirs(os.path.dirname(png_path) or ".")
  with files.open_file(png_path, "wb") as f:
    fig.savefig(f, format="png", dpi=100)
  plt.close(fig)
  return True


REQUIRED_MACROS = {"model_dir": "MODEL_DIR", "mixture": "DOREMI_MIXTURE",
                   "reference_steps": "TRAIN_STEPS", "proxy_steps": "DOREMI_PROXY_STEPS",
                   "batch_size": "DOREMI_BATCH_SIZE", "task_feature_lengths": "TASK_FEATURE_LENGTHS"}
