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

Also here: what a registered task needs — its objective (`task_objective`), the targets length the
objective needs (`required_targets_length`, `check_lengths`).
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import gin
import seqio
import tensorflow as tf

from t5lite.data.objectives import bart_noise
from t5lite.data.objectives import tf_objectives as obj
from t5lite.data.objectives import tf_spans as sc
from t5lite.data.vocab.gpt2 import GPT2BPEVocabulary
from t5lite.data.sources.sources import SOURCE_NAMES
from t5lite.data.sources.sources import Sources
from t5lite.data.sources.sources import json_source

C4_TFDS = "c4_span_corruption"
C4_JSON = "c4_json_span_corruption"
DEMO = "demo_span_corruption"
TASK_NAMES = (C4_TFDS, C4_JSON, DEMO)

# task suffix -> preprocessor; BART ones get the BART vocabulary.
BART_OBJECTIVES = {
    "bart_denoising": bart_noise.bart_denoising,
    "bart_text_infilling": bart_noise.bart_text_infilling,
    "bart_sentence_permutation": bart_noise.bart_sentence_permutation,
    "bart_token_deletion": bart_noise.bart_token_deletion,
    "bart_document_rotation": bart_noise.bart_document_rotation,
}
T5_OBJECTIVES = {
    "prefix_lm": obj.prefix_lm,
    "iid_denoising": obj.iid_denoising,
    "bert_denoising": obj.bert_style_denoising,
    "deshuffling": obj.deshuffling,
}
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


def preprocessors(objective: Callable, batched_tokenize: bool = True,
                  copy_pretokenized: bool = True) -> list[Callable]:
  """The `t5` package's chain (task c4_v220_span_corruption): rekey text->targets, tokenize, the objective, append_eos_after_trim."""
  tokenize = (functools.partial(tokenize_in_batches, copy_pretokenized=copy_pretokenized)
              if batched_tokenize else seqio.preprocessors.tokenize)
  return [
      functools.partial(seqio.preprocessors.rekey, key_map={"inputs": None, "targets": "text"}),
      tokenize,
      objective,
      seqio.preprocessors.append_eos_after_trim,
  ]


def span_corruption_preprocessors(**span_kwargs) -> list[Callable]:
  span = functools.partial(sc.span_corruption, **span_kwargs) if span_kwargs else sc.span_corruption
  return preprocessors(span)


def add_task(name: str, source: seqio.DataSource, vocabulary: seqio.Vocabulary,
             chain: Optional[Sequence[Callable]] = None) -> seqio.Task:
  """(Re-)registers one task (span corruption unless `chain` is given)."""
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name, source=source, output_features=output_features(vocabulary),
      preprocessors=list(chain or span_corruption_preprocessors()), metric_fns=[])


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
  """Registers every objective's task (and the {prefix}_ul2 mixture) on one source; the names."""
  names = [add_task(f"{prefix}_span_corruption", source, t5_vocabulary).name]
  for suffix, fn in BART_OBJECTIVES.items():
    batched = isinstance(bart_vocabulary, GPT2BPEVocabulary)
    names.append(add_task(f"{prefix}_{suffix}", source, bart_vocabulary,
                          preprocessors(fn, batched, copy_pretokenized=False)).name)
  for suffix, fn in T5_OBJECTIVES.items():
    names.append(add_task(f"{prefix}_{suffix}", source, t5_vocabulary,
                          preprocessors(fn, batched_tokenize=False)).name)
  s_total = sum(rate for _, kind, _, rate in obj.UL2_DENOISERS if kind == "s")
  other_total = sum(rate for _, kind, _, rate in obj.UL2_DENOISERS if kind != "s")
  mixture = []
  for suffix, kind, kwargs, rate in obj.UL2_DENOISERS:
    name = f"{prefix}_{suffix}"
    add_task(name, source, t5_vocabulary,
             preprocessors(obj.ul2_preprocessor(kind, **kwargs), batched_tokenize=False))
    names.append(name)
    scale = ul2_s_rate / s_total if kind == "s" else (1 - ul2_s_rate) / other_total
    mixture.append((name, rate * scale))
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
    t5_vocabulary, bart_vocabulary = sources.vocabularies(prefix)
    names += register_source_tasks(prefix, sources.source(prefix), t5_vocabulary,
                                   bart_vocabulary, ul2_s_rate)
  for prefix, patterns in dict(json_sources).items():
    splits = dict(patterns) if isinstance(patterns, Mapping) else {"train": patterns}
    if prefix in SOURCE_NAMES or "train" not in splits or set(splits) - {"train", "validation"}:
      raise ValueError(f"register_all.json_sources[{prefix!r}] = {patterns!r}: expected a new "
                       f"prefix (not one of {SOURCE_NAMES}) and a file pattern or "
                       "{'train': pattern, 'validation': pattern}")
    source = json_source(splits["train"], splits.get("validation"))
    names += register_source_tasks(prefix, source, sources.t5_vocabulary(),
                                   sources.gpt2_vocabulary(), ul2_s_rate)
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


def task_objective(task) -> tuple[Optional[str], dict]:
  """(objective name from objectives.OBJECTIVE_NAMES, its keyword arguments with defaults) of a
  task's preprocessors; (None, {}) when no preprocessor is a known objective."""
  for fn in task.preprocessors:
    keywords = {}
    while isinstance(fn, functools.partial):
      keywords = {**fn.keywords, **keywords}
      fn = fn.func
    if getattr(fn, "__name__", None) in obj.OBJECTIVE_NAMES:
      defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items()
                  if p.default is not inspect.Parameter.empty}
      return fn.__name__, {**defaults, **keywords}
  return None, {}


def mode_prefix_length(task, kwargs: Mapping[str, Any]) -> int:
  """Ids of a UL2 mode token ("[NLU]" ...) prepended to the inputs; 0 for other objectives."""
  mode = kwargs.get("mode")
  if not mode:
    return 0
  return len(task.output_features["inputs"].vocabulary.encode(mode))


def required_targets_length(task, inputs_length: int) -> Optional[int]:
  """The targets length (with EOS) a task's objective needs; None for an unknown objective."""
  objective, kwargs = task_objective(task)
  if objective is None:
    return None
  noise = {k: v for k, v in kwargs.items() if k in ("noise_density", "mean_noise_span_length")}
  return obj.required_targets_length(objective, inputs_length,
                                     mode_prefix_length(task, kwargs), **noise)


def check_lengths(name: str, task_feature_lengths: Mapping[str, int]) -> Optional[int]:
  """The targets length task or mixture `name` needs at task_feature_lengths['inputs'] (the
  largest over a mixture's tasks; None if no task has a known objective). A ValueError naming
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
