"""Every pretraining objective, declared once: its parameters, its length rule, and its two
implementations — the seqio/TF preprocessor (the tf.data path: exactly the `t5` package's
outputs) and the NumPy noise (the token cache's path, keyed on (seed, example)).

  objective("ul2_denoiser", mean_noise_span_length=8, noise_density=0.15)  -> Objective
  Objective.tf_preprocessor()                  what a seqio Task's chain runs
  Objective.numpy(lengths, vocabulary)         raw token piece + rng -> {"inputs", "targets"}
  Objective.raw_length / targets_length / check

Tasks are registered with an Objective (data/tasks/registry.py), and the cache, `inspect` and the
length checks look it up by the task's name: nothing is found by inspecting functions. Adding an
objective is adding one ObjectiveSpec to SPECS (tests check that both implementations exist and
agree on statistics). The TF implementation is imported only when asked for.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any, Callable, Mapping, Optional, Sequence

from t5lite.data.objectives import bart_noise, lengths, numpy_objectives as np_objectives

TF_MODULE = "t5lite.data.objectives.tf_objectives"  # the seqio preprocessors (TensorFlow)
UL2_R, UL2_X, UL2_S = "[NLU]", "[NLG]", "[S2S]"  # UL2's mode tokens, encoded as text
REQUIRED = object()  # a parameter without a default
# What `t5lite inspect` counts as noise (data/statistics.py), by family.
FAMILIES = ("sentinel", "prefix", "bart", "bert", "deshuffle")


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
  """One objective. numpy: factory(vocabulary, params, raw_length) -> noise(tokens, rng) ->
  (inputs, targets) before the mode prefix and EOS; tf: the seqio preprocessor's name in
  TF_MODULE, called with the params as keywords; lengths: lengths.py's kind; family: what its
  statistics count; vocabulary: 't5' (SentencePiece with sentinels) or 'bart' (GPT-2 BPE)."""
  name: str
  lengths: str
  family: str
  vocabulary: str
  defaults: Mapping[str, Any]
  numpy: Callable
  tf: str
  extra: frozenset = frozenset()  # more parameters it passes on (BART: bart_noise's)
  doc: str = ""

  def __post_init__(self):
    assert self.lengths in lengths.KINDS and self.family in FAMILIES, self


_DENSITY = {"noise_density": 0.15}
_SPANS = {"mean_noise_span_length": 3.0, "noise_density": 0.15}
_BART = frozenset(bart_noise.NOISE_ARGS)
SPECS: dict[str, ObjectiveSpec] = {s.name: s for s in (
    ObjectiveSpec("span_corruption", "spans", "sentinel", "t5", _SPANS,
                  functools.partial(np_objectives.spans_noise, unique_sentinels=True),
                  "span_corruption", doc="T5's span corruption: unique sentinels per span"),
    ObjectiveSpec("prefix_lm", "prefix", "prefix", "t5", {"noise_density": 0.5},
                  np_objectives.prefix_noise, "prefix_lm",
                  doc="split at a uniform point; inputs = prefix, targets = the rest"),
    ObjectiveSpec("iid_denoising", "iid", "sentinel", "t5", _DENSITY, np_objectives.iid_noise,
                  "iid_denoising", doc="each token noise w.p. 0.15; runs -> sentinels"),
    ObjectiveSpec("bert_style_denoising", "clean", "bert", "t5",
                  {"noise_density": 0.15, "random_prob": 0.1}, np_objectives.bert_noise,
                  "bert_style_denoising", doc="BERT-style: noise -> sentinel or random id"),
    ObjectiveSpec("deshuffling", "clean", "deshuffle", "t5", {}, np_objectives.deshuffle_noise,
                  "deshuffling", doc="inputs = the tokens shuffled, targets = the original"),
    ObjectiveSpec("ul2_denoiser", "spans", "sentinel", "t5",
                  {"mean_noise_span_length": REQUIRED, "noise_density": REQUIRED, "mode": UL2_R},
                  functools.partial(np_objectives.spans_noise, unique_sentinels=False),
                  "ul2_denoiser", doc="UL2 R/X-denoiser: span corruption after a mode token"),
    ObjectiveSpec("ul2_prefix_lm", "prefix", "prefix", "t5", {"noise_density": 0.25, "mode": UL2_S},
                  np_objectives.prefix_noise, "ul2_prefix_lm",
                  doc="UL2 S-denoiser: prefix LM after a mode token"),
    ObjectiveSpec("bart_denoising", "clean", "bart", "bart",
                  {"permute_ratio": 1.0, "mask_ratio": 0.3, "poisson_lambda": 3.0,
                   "random_ratio": 0.1, "replace_length": 1, "rotate_ratio": 0.0,
                   "insert_ratio": 0.0},
                  functools.partial(bart_noise.noise_fn, "bart_denoising"), "bart_denoising",
                  _BART, doc="BART-large's recipe: sentence permutation, then text infilling"),
    ObjectiveSpec("bart_text_infilling", "clean", "bart", "bart",
                  {"mask_ratio": 0.3, "poisson_lambda": 3.0, "random_ratio": 0.1,
                   "replace_length": 1},
                  functools.partial(bart_noise.noise_fn, "bart_text_infilling"),
                  "bart_text_infilling", _BART, doc="BART text infilling (Poisson spans)"),
    ObjectiveSpec("bart_sentence_permutation", "clean", "bart", "bart", {"permute_ratio": 1.0},
                  functools.partial(bart_noise.noise_fn, "bart_sentence_permutation"),
                  "bart_sentence_permutation", _BART, doc="BART sentence permutation"),
    ObjectiveSpec("bart_token_deletion", "clean", "bart", "bart", {"ratio": 0.3},
                  functools.partial(bart_noise.noise_fn, "bart_token_deletion"),
                  "bart_token_deletion", _BART, doc="BART token deletion"),
    ObjectiveSpec("bart_document_rotation", "clean", "bart", "bart", {},
                  functools.partial(bart_noise.noise_fn, "bart_document_rotation"),
                  "bart_document_rotation", _BART, doc="BART document rotation"),
)}
OBJECTIVE_NAMES = tuple(SPECS)

# UL2's mixture of denoisers (Tay et al. 2022, section 3): (task suffix, objective, params,
# rate). S about 20%; the six span denoisers share the rest.
UL2_DENOISERS = (
    ("ul2_r_mean3_rate15", "ul2_denoiser", dict(mean_noise_span_length=3, noise_density=0.15,
                                                mode=UL2_R), 0.8 / 6),
    ("ul2_r_mean8_rate15", "ul2_denoiser", dict(mean_noise_span_length=8, noise_density=0.15,
                                                mode=UL2_R), 0.8 / 6),
    ("ul2_x_mean3_rate50", "ul2_denoiser", dict(mean_noise_span_length=3, noise_density=0.5,
                                                mode=UL2_X), 0.8 / 6),
    ("ul2_x_mean8_rate50", "ul2_denoiser", dict(mean_noise_span_length=8, noise_density=0.5,
                                                mode=UL2_X), 0.8 / 6),
    ("ul2_x_mean64_rate15", "ul2_denoiser", dict(mean_noise_span_length=64, noise_density=0.15,
                                                 mode=UL2_X), 0.8 / 6),
    ("ul2_x_mean64_rate50", "ul2_denoiser", dict(mean_noise_span_length=64, noise_density=0.5,
                                                 mode=UL2_X), 0.8 / 6),
    ("ul2_s_rate25", "ul2_prefix_lm", dict(noise_density=0.25, mode=UL2_S), 0.2),
)


@dataclasses.dataclass(frozen=True)
class Objective:
  """An objective with its parameters (every one, defaults filled in): what a task runs."""
  name: str
  params: Mapping[str, Any]

  @property
  def spec(self) -> ObjectiveSpec:
    return SPECS[self.name]

  @property
  def mode(self) -> Optional[str]:
    """UL2's mode token (text), prepended to the inputs; None for objectives without one."""
    return self.params.get("mode") or None

  def prefix_ids(self, vocabulary) -> list[int]:
    return list(vocabulary.encode(self.mode)) if self.mode else []

  def describe(self) -> str:
    p = self.params
    if self.name == "ul2_denoiser":
      kind = "R" if p["mode"] == UL2_R else "X"
      return f"UL2 {kind}-denoiser (mean {p['mean_noise_span_length']:g}, rate {p['noise_density']:g})"
    if self.name == "ul2_prefix_lm":
      return f"UL2 S-denoiser (prefix LM, rate {p['noise_density']:g})"
    return self.name

  def _length_args(self) -> dict[str, float]:
    density = self.params.get("noise_density", 0.15)
    return {"noise_density": density,
            "mean_noise_span_length": self.params.get("mean_noise_span_length", 3.0)}

  def raw_length(self, inputs_length: int, prefix_length: int = 0) -> int:
    """Raw tokens one example consumes at this inputs length."""
    return lengths.raw_tokens_length(self.spec.lengths, inputs_length, prefix_length,
                                     **self._length_args())

  def targets_length(self, inputs_length: int, prefix_length: int = 0) -> int:
    """The targets length (with EOS) it needs at this inputs length."""
    return lengths.required_targets_length(self.spec.lengths, inputs_length, prefix_length,
                                           **self._length_args())

  def check(self, sequence_length: Optional[Mapping[str, int]], prefix_length: int = 0) -> int:
    """Raw tokens per example; a ValueError naming the objective if the targets length (or any
    length) is missing or too short."""
    if not sequence_length or "inputs" not in sequence_length or "targets" not in sequence_length:
      raise ValueError(f"{self.describe()} needs sequence_length with 'inputs' and 'targets' "
                       f"(TASK_FEATURE_LENGTHS); got {sequence_length}")
    inputs_length, targets_length = sequence_length["inputs"], sequence_length["targets"]
    need = self.targets_length(inputs_length, prefix_length)
    if targets_length < need:
      raise ValueError(f"{self.describe()} needs targets >= {need} for inputs {inputs_length}; "
                       f"TASK_FEATURE_LENGTHS has targets {targets_length}")
    return self.raw_length(inputs_length, prefix_length)

  def tf_preprocessor(self) -> Callable:
    """The seqio preprocessor (dataset, sequence_length, output_features) of the tf.data path."""
    fn = getattr(importlib.import_module(TF_MODULE), self.spec.tf)
    return functools.partial(fn, **self.params)

  def numpy(self, sequence_length: Mapping[str, int], vocabulary
            ) -> np_objectives.NumpyObjective:
    """The token cache's implementation at these lengths with this vocabulary."""
    prefix = self.prefix_ids(vocabulary)
    raw = self.check(sequence_length, len(prefix))
    noise = self.spec.numpy(vocabulary, dict(self.params), raw)
    return np_objectives.NumpyObjective(self.name, dict(self.params), raw, prefix,
                                        sequence_length, vocabulary.eos_id, noise)


def objective(name: str, **params) -> Objective:
  """`name` with `params` over its defaults; a ValueError for an unknown objective, an unknown
  or missing parameter, or a value it cannot take."""
  spec = SPECS.get(name)
  if spec is None:
    raise ValueError(f"unknown objective {name!r}; expected one of {OBJECTIVE_NAMES}")
  unknown = sorted(k for k in params if k not in spec.defaults and k not in spec.extra)
  if unknown:
    raise ValueError(f"{name} has no argument {unknown[0]!r}; it takes "
                     f"{sorted(set(spec.defaults) | spec.extra)}")
  merged = {**spec.defaults, **params}
  missing = [k for k, v in merged.items() if v is REQUIRED]
  if missing:
    raise ValueError(f"{name} needs the arguments {missing}")
  if spec.lengths == "prefix" and merged["noise_density"] > 0.5:
    raise ValueError(f"prefix LM noise density must be <= 0.5; got {merged['noise_density']}")
  return Objective(name, merged)


def required_targets_length(name: str, inputs_length: int, prefix_length: int = 0,
                            **params) -> int:
  """The targets length (with EOS) objective `name` needs for `inputs_length`."""
  return objective(name, **_known(name, params)).targets_length(inputs_length, prefix_length)


def raw_tokens_length(name: str, inputs_length: int, prefix_length: int = 0, **params) -> int:
  """Raw tokens one example of objective `name` consumes for `inputs_length`."""
  return objective(name, **_known(name, params)).raw_length(inputs_length, prefix_length)


def _known(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
  """The length-shaping parameters that `name` takes (a UL2 denoiser's lengths need only its
  density and span length, its mode is a prefix length)."""
  spec = SPECS.get(name)
  if spec is None:
    raise ValueError(f"unknown objective {name!r}; expected one of {OBJECTIVE_NAMES}")
  out = {k: v for k, v in params.items() if k in spec.defaults}
  for key, value in spec.defaults.items():  # REQUIRED ones only shape lengths: any value will do
    if value is REQUIRED and key not in out:
      out[key] = _ANY[key]
  return out


_ANY = {"mean_noise_span_length": 3.0, "noise_density": 0.15}


def names(vocabulary: Optional[str] = None) -> Sequence[str]:
  """The objectives' names, those of one vocabulary kind ('t5', 'bart') when given."""
  return tuple(n for n, s in SPECS.items() if vocabulary in (None, s.vocabulary))
