"""The seqio Tasks and Mixtures t5lite pretrains on, registered in one place, and what they need.

`register_all()` (re)registers, for each source prefix of sources.py — `c4` (TFDS c4/en),
`c4_json` (allenai/c4 JSON shards), `demo` (the embedded corpus) — with the gin-bound `Sources`:

  {p}_span_corruption                                                    T5 vocabulary
  {p}_bart_denoising  {p}_bart_text_infilling  {p}_bart_sentence_permutation
  {p}_bart_token_deletion  {p}_bart_document_rotation                    BART vocabulary
  {p}_prefix_lm  {p}_iid_denoising  {p}_bert_denoising  {p}_deshuffling   T5 vocabulary
  {p}_ul2_r_mean3_rate15 … {p}_ul2_s_rate25 (7 tasks) and the Mixture {p}_ul2

then the user's JSON text sources (`register_all.json_sources`, gin) with the same tasks, the
user's mixtures (`register_all.mixtures`) and mixture rates (`register_all.rates`). BART's
vocabulary is GPT-2 byte-level BPE for c4 / c4_json / json_sources and the demo SentencePiece
vocabulary (<mask> = <extra_id_0>) for demo.
Nothing is read at registration; vocabularies and files open on the first dataset read.
`get_task_or_mixture` registers on first use, so library callers need not.

Every task is registered with its objective (data/objectives/registry.py): what a registered
task needs is looked up by its name (`spec`, `task_objective`), the targets length its objective
needs (`required_targets_length`, `check_lengths`) and the objective's NumPy implementation
(`numpy_objective`, for the token cache).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import gin
import seqio
import tensorflow as tf

from t5lite.data.objectives import registry as objectives
from t5lite.data.objectives.registry import Objective
from t5lite.data.sources import seqio_sources
from t5lite.data.sources.json_lines import json_source
from t5lite.data.sources.sources import SOURCE_NAMES, Sources
from t5lite.data.vocab.seqio_vocab import GPT2BPEVocabulary

C4_TFDS = "c4_span_corruption"
C4_JSON = "c4_json_span_corruption"
DEMO = "demo_span_corruption"
TASK_NAMES = (C4_TFDS, C4_JSON, DEMO)
# The task name's suffix for each objective registered on every source (BERT-style keeps the
# name its tasks have always had); UL2's denoisers are objectives.UL2_DENOISERS.
SUFFIXES = {"span_corruption": "span_corruption", "bart_denoising": "bart_denoising",
            "bart_text_infilling": "bart_text_infilling",
            "bart_sentence_permutation": "bart_sentence_permutation",
            "bart_token_deletion": "bart_token_deletion",
            "bart_document_rotation": "bart_document_rotation", "prefix_lm": "prefix_lm",
            "iid_denoising": "iid_denoising", "bert_style_denoising": "bert_denoising",
            "deshuffling": "deshuffling"}
# How the token cache keys the steps before a text task's objective (rekey text -> targets,
# tokenize): the descriptions t5lite has always written, so that built caches keep their keys.
TEXT_STEPS_KEY = ('seqio.preprocessors.rekey({"key_map": {"inputs": null, "targets": "text"}})',
                  "tokenize")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """What t5lite knows of a task it registered: its objective (None for fine-tuning tasks), the
  steps before it (what the token cache runs and stores) and their key."""
  name: str
  source: seqio.DataSource
  vocabulary: seqio.Vocabulary
  objective: Optional[Objective]
  pre_objective: tuple[Callable, ...] = ()
  pre_objective_key: tuple[str, ...] = ()


_specs: dict[str, TaskSpec] = {}
_registered = False


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  """inputs (optional, as in t5) and targets, both with EOS."""
  return {
      "inputs": seqio.Feature(vocabulary, add_eos=True, required=False),
      "targets": seqio.Feature(vocabulary, add_eos=True),
  }


def tokenize_in_batches(dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature],
                        copy_pretokenized: bool = True, batch_size: int = 64) -> tf.data.Dataset:
  """seqio.preprocessors.tokenize (with_eos=False), encoding batch_size texts per vocabulary call.

  Same ids, keys and order as seqio's per-example map, with less per-call overhead; for
  vocabularies whose TF op is a Python call (GPT-2 BPE) it runs the `tokenizers` batch encoder.
  """

  def encode(batch):
    out = dict(batch)
    for key, feature in output_features.items():
      if key in batch and batch[key].dtype == tf.string:
        if copy_pretokenized:
          out[f"{key}_pretokenized"] = batch[key]
        out[key] = feature.vocabulary.encode_tf(batch[key])  # [batch, None] ragged
    return out

  return dataset.batch(batch_size).map(encode, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def text_steps(batched_tokenize: bool = True, copy_pretokenized: bool = True) -> list[Callable]:
  """The steps before a text task's objective: rekey text -> targets, tokenize."""
  tokenize = (functools.partial(tokenize_in_batches, copy_pretokenized=copy_pretokenized)
              if batched_tokenize else seqio.preprocessors.tokenize)
  return [functools.partial(seqio.preprocessors.rekey, key_map={"inputs": None, "targets": "text"}),
          tokenize]


def text_chain(objective: Optional[Objective] = None, batched_tokenize: bool = True,
               copy_pretokenized: bool = True) -> list[Callable]:
  """The `t5` package's chain (task c4_v220_span_corruption): rekey text -> targets, tokenize,
  the objective (default span corruption), append_eos_after_trim."""
  objective = objective or objectives.objective("span_corruption")
  return text_steps(batched_tokenize, copy_pretokenized) + [
      objective.tf_preprocessor(), seqio.preprocessors.append_eos_after_trim]


def add_task(name: str, source: seqio.DataSource, vocabulary: seqio.Vocabulary,
             objective: Optional[Objective] = None, chain: Optional[Sequence[Callable]] = None,
             batched_tokenize: bool = True, copy_pretokenized: bool = True) -> seqio.Task:
  """(Re-)registers one text task: `objective` (default span corruption) through text_chain, or
  an explicit seqio `chain` (a peer's preprocessors, for comparisons: no objective is known)."""
  if chain is None:
    objective = objective or objectives.objective("span_corruption")
    chain = text_chain(objective, batched_tokenize, copy_pretokenized)
    steps, key = tuple(chain[:2]), TEXT_STEPS_KEY
  else:
    steps, key = (), ()
  seqio.TaskRegistry.remove(name)
  task = seqio.TaskRegistry.add(name, source=source, output_features=output_features(vocabulary),
                                preprocessors=list(chain), metric_fns=[])
  _specs[name] = TaskSpec(name, source, vocabulary, objective, steps, key)
  return task


def spec(task: Union[str, seqio.Task]) -> TaskSpec:
  """The TaskSpec of a task t5lite registered; a ValueError naming the task otherwise."""
  name = task if isinstance(task, str) else task.name
  if name not in _specs:
    raise ValueError(f"task {name!r} was not registered by t5lite (data/tasks/registry.py "
                     "add_task): its objective and preprocessing are unknown")
  return _specs[name]


@gin.configurable
def register_mixture(name: str, tasks_and_rates: Sequence[tuple[str, float]]) -> seqio.Mixture:
  """(Re-)registers the seqio Mixture `name` sampling each task in proportion to its rate."""
  tasks_and_rates = [(str(task), float(rate)) for task, rate in tasks_and_rates]
  for task, _ in tasks_and_rates:
    if task not in seqio.TaskRegistry.names() and task not in seqio.MixtureRegistry.names():
      raise ValueError(f"register_mixture({name!r}): unknown task or mixture {task!r}")
  seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, tasks_and_rates)


def register_source_tasks(prefix: str, source: seqio.DataSource,
                          t5_vocabulary: seqio.Vocabulary, bart_vocabulary: seqio.Vocabulary,
                          ul2_s_rate: float = 0.2) -> list[str]:
  """Registers every objective's task (and the {prefix}_ul2 mixture) on one source; the names.
  BART objectives get the BART vocabulary, the others the T5 one."""
  names = []
  for name, suffix in SUFFIXES.items():
    objective = objectives.objective(name)
    if objective.spec.vocabulary == "bart":
      batched = isinstance(bart_vocabulary, GPT2BPEVocabulary)
      names.append(add_task(f"{prefix}_{suffix}", source, bart_vocabulary, objective,
                            batched_tokenize=batched, copy_pretokenized=False).name)
    else:
      # Span corruption tokenizes in batches; the other T5 objectives keep seqio's tokenize.
      names.append(add_task(f"{prefix}_{suffix}", source, t5_vocabulary, objective,
                            batched_tokenize=name == "span_corruption").name)
  is_s = lambda objective: objective == "ul2_prefix_lm"  # noqa: E731
  s_total = sum(rate for _, o, _, rate in objectives.UL2_DENOISERS if is_s(o))
  other_total = sum(rate for _, o, _, rate in objectives.UL2_DENOISERS if not is_s(o))
  mixture = []
  for suffix, name, params, rate in objectives.UL2_DENOISERS:
    task = f"{prefix}_{suffix}"
    add_task(task, source, t5_vocabulary, objectives.objective(name, **params),
             batched_tokenize=False)
    names.append(task)
    scale = ul2_s_rate / s_total if is_s(name) else (1 - ul2_s_rate) / other_total
    mixture.append((task, rate * scale))
  register_mixture(f"{prefix}_ul2", mixture)
  names.append(f"{prefix}_ul2")
  return names


@gin.configurable
def register_all(sources: Optional[Sources] = None,
                 mixtures: Mapping[str, Sequence[tuple[str, float]]] = (),
                 ul2_s_rate: float = 0.2,
                 json_sources: Mapping[str, Any] = (),
                 rates: Mapping[str, Mapping[str, float]] = ()) -> list[str]:
  """(Re-)registers every task with `sources` (default: the gin-bound Sources()), then the user's
  mixtures, e.g. in gin: register_all.mixtures = {'mix': [('c4_prefix_lm', 1.0), ('c4_ul2', 2.0)]}.
  ul2_s_rate is the S-denoiser's share of each {p}_ul2 mixture. Returns the registered names.

  json_sources: more text sources, {prefix: train file pattern(s), or {'train': ...,
    'validation': ...}} of JSON-lines shards ({"text": ...}); each gets every objective's tasks
    ({prefix}_span_corruption, ...) with the T5 vocabulary (VOCABULARY_PATH), e.g. the domains of
    a mixture: register_all.json_sources = {'wiki': '/data/wiki/*.json.gz'}.
  rates: {mixture: {task: rate}} re-registers each mixture with these rates, applied last (what
    `t5lite doremi` writes into domain_weights.gin); every leaf task of the mixture is named."""
  global _registered
  sources = sources or Sources()
  names = []
  for prefix in SOURCE_NAMES:
    t5_vocabulary, bart_vocabulary = seqio_sources.vocabularies(sources, prefix)
    names += register_source_tasks(prefix, seqio_sources.source(sources, prefix), t5_vocabulary,
                                   bart_vocabulary, ul2_s_rate)
  for prefix, patterns in dict(json_sources).items():
    splits = dict(patterns) if isinstance(patterns, Mapping) else {"train": patterns}
    if prefix in SOURCE_NAMES or "train" not in splits or set(splits) - {"train", "validation"}:
      raise ValueError(f"register_all.json_sources[{prefix!r}] = {patterns!r}: expected a new "
                       f"prefix (not one of {SOURCE_NAMES}) and a file pattern or "
                       "{'train': pattern, 'validation': pattern}")
    source = json_source(splits["train"], splits.get("validation"))
    names += register_source_tasks(prefix, source, seqio_sources.t5_vocabulary(sources),
                                   seqio_sources.gpt2_vocabulary(sources), ul2_s_rate)
  for name, tasks_and_rates in dict(mixtures).items():
    names.append(register_mixture(name, tasks_and_rates).name)
  for name, task_rates in dict(rates).items():
    set_rates(name, task_rates)
  _registered = True
  return names


def set_rates(name: str, task_rates: Mapping[str, float]) -> seqio.Mixture:
  """Re-registers mixture `name` over its leaf tasks with `task_rates` ({task: rate > 0}, every
  leaf task named once)."""
  if name not in seqio.MixtureRegistry.names():
    raise ValueError(f"register_all.rates: {name!r} is not a registered mixture; mixtures: "
                     f"{sorted(seqio.MixtureRegistry.names())}")
  tasks = sorted(t.name for t in seqio.MixtureRegistry.get(name).tasks)
  given = {str(k): float(v) for k, v in dict(task_rates).items()}
  if sorted(given) != tasks or any(not r > 0 for r in given.values()):
    raise ValueError(f"register_all.rates[{name!r}] = {given}: expected a positive rate for each "
                     f"of its tasks {tasks}")
  return register_mixture(name, [(task, given[task]) for task in tasks])


def get_task_or_mixture(name: str) -> Union[seqio.Task, seqio.Mixture]:
  """The registered seqio Task or Mixture `name` (registering t5lite's tasks on first use); a
  ValueError listing the registered names otherwise."""
  if not _registered:
    register_all()
  if name in seqio.MixtureRegistry.names():
    return seqio.MixtureRegistry.get(name)
  if name in seqio.TaskRegistry.names():
    return seqio.TaskRegistry.get(name)
  raise ValueError(
      f"unknown task or mixture {name!r}; registered tasks: "
      f"{sorted(seqio.TaskRegistry.names())}; mixtures: {sorted(seqio.MixtureRegistry.names())}")


def is_mixture(name: str) -> bool:
  """Whether `name` is a registered mixture (a task otherwise; unknown names raise)."""
  return isinstance(get_task_or_mixture(name), seqio.Mixture)


# ----------------------------------------------------------------------------- what tasks need


def leaf_tasks(name: str) -> list[tuple[Any, float]]:
  """(seqio.Task, normalised rate) of a task (rate 1) or of a mixture's tasks."""
  provider = get_task_or_mixture(name)
  if isinstance(provider, seqio.Task):
    return [(provider, 1.0)]
  tasks = sorted(provider.tasks, key=lambda t: t.name)
  total = sum(provider.get_rate(t) for t in tasks)
  return [(t, provider.get_rate(t) / total) for t in tasks]


def task_objective(task) -> Optional[Objective]:
  """The Objective a task was registered with; None for tasks without one (fine-tuning, and
  tasks t5lite did not register)."""
  known = _specs.get(task if isinstance(task, str) else task.name)
  return known.objective if known else None


def required_targets_length(task, inputs_length: int) -> Optional[int]:
  """The targets length (with EOS) a task's objective needs; None for a task without one."""
  objective = task_objective(task)
  if objective is None:
    return None
  prefix = objective.prefix_ids(task.output_features["inputs"].vocabulary)
  return objective.targets_length(inputs_length, len(prefix))


def check_lengths(name: str, task_feature_lengths: Mapping[str, int]) -> Optional[int]:
  """The targets length task or mixture `name` needs at task_feature_lengths['inputs'] (the
  largest over a mixture's tasks; None if no task has an objective). A ValueError naming
  each task that doesn't fit if task_feature_lengths['targets'] is shorter."""
  inputs_length = int(task_feature_lengths["inputs"])
  targets_length = task_feature_lengths.get("targets")
  needs = {task.name: required_targets_length(task, inputs_length)
           for task, _ in leaf_tasks(name)}
  known = [n for n in needs.values() if n is not None]
  if not known:
    return None
  need = max(known)
  if targets_length is not None and targets_length < need:
    short = ", ".join(f"{task} needs {n}" for task, n in needs.items()
                      if n is not None and n > targets_length)
    raise ValueError(
        f"{name!r}: targets length {targets_length} is too short for inputs {inputs_length} "
        f"({short}); use TASK_FEATURE_LENGTHS = {{'inputs': {inputs_length}, 'targets': {need}}} "
        f"(or shorter inputs)")
  return need


def checked_objective(task) -> Objective:
  """The Objective of a seqio Task, checked against its features; ValueError naming the task if
  it has none or its features are not what objectives assume (one vocabulary, EOS)."""
  if not isinstance(task, seqio.Task):
    raise ValueError(f"an objective needs a seqio.Task; got {task!r} (a mixture: one "
                     "objective per task)")
  objective = task_objective(task)
  if objective is None:
    raise ValueError(f"task {task.name!r} has no pretraining objective (expected one of "
                     f"{objectives.OBJECTIVE_NAMES})")
  features = task.output_features
  if "targets" not in features or not features["targets"].add_eos or (
      "inputs" in features and not features["inputs"].add_eos):
    raise ValueError(f"task {task.name!r}: expected 'targets' (and 'inputs') features with "
                     "add_eos=True, as append_eos_after_trim after the objective assumes")
  if "inputs" in features and features["inputs"].vocabulary != features["targets"].vocabulary:
    raise ValueError(f"task {task.name!r}: {objective.name} needs the same vocabulary for "
                     "inputs and targets")
  return objective


def numpy_objective(task, sequence_length: Mapping[str, int]):
  """The token cache's implementation of a seqio Task's objective at these lengths
  (NumpyObjective); ValueError naming the task if checked_objective refuses it or its targets
  length is too short."""
  objective = checked_objective(task)
  try:
    return objective.numpy(sequence_length, task.output_features["targets"].vocabulary)
  except ValueError as e:
    raise ValueError(f"task {task.name!r}: {e}") from e
