"""report.json of `t5lite select`: what was read and skipped, the KL reduction of the DSIR
selection and of a random one of the same size, and the n-gram buckets that drove the weights."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from t5lite.datamix import dsir_features as nf

TOP = 20


def _mean(x: np.ndarray) -> float | None:
  return float(np.mean(x)) if len(x) else None


def _examples(model: dict, side: str) -> dict[str, np.ndarray]:
  return {k: model[f"{side}_{k}"] for k in ("example_buckets", "example_ngrams", "example_counts")}


def _features(order: np.ndarray, model: dict, per_million: dict,
              contribution: np.ndarray) -> list[dict]:
  """Rows for the buckets in `order`, with example n-grams (the target's, else the raw data's)."""
  target, raw = _examples(model, "target"), _examples(model, "raw")
  rows = []
  for b in order:
    row = {"bucket": int(b), "log_ratio": round(float(model["log_ratio"][b]), 4),
           "contribution": round(float(contribution[b]), 2)}
    row.update({f"{k}_per_million": round(float(v[b]), 2) for k, v in per_million.items()})
    row["ngrams"] = nf.examples_of(b, target) or nf.examples_of(b, raw)
    rows.append(row)
  return rows


def build(plan, model: dict, scores: Sequence[dict], written: Sequence[dict],
          dsir: Sequence[np.ndarray], rand: Sequence[np.ndarray]) -> dict:
  """The report of a finished selection (every shard scored and written)."""
  target, raw = model["target_counts"], model["raw_counts"]
  picked = {k: sum(w[f"{k}_counts"] for w in written) for k in ("dsir", "random")}
  kl = {"target_to_raw": nf.kl_divergence(target, raw),
        "target_to_dsir": nf.kl_divergence(target, picked["dsir"]),
        "target_to_random": nf.kl_divergence(target, picked["random"])}
  kl.update(reduction_dsir=kl["target_to_raw"] - kl["target_to_dsir"],
            reduction_random=kl["target_to_raw"] - kl["target_to_random"],
            dsir_vs_random=kl["target_to_random"] - kl["target_to_dsir"])

  n_words = [sc["n_words"] for sc in scores]
  eligible = [n >= max(plan.min_words, 0) for n in n_words]
  groups = (("eligible", eligible), ("dsir", dsir), ("random", rand))
  weights = {name: np.concatenate([plan.sampling_log_weight(sc)[m] for sc, m in zip(scores, masks)])
             for name, masks in groups}
  words = {name: np.concatenate([n[m] for n, m in zip(n_words, masks)]) for name, masks in groups}

  # Which buckets drove the selection: each bucket's summed log ratio over the DSIR picks.
  contribution = picked["dsir"] * model["log_ratio"]
  per_million = {name: 1e6 * c / max(c.sum(), 1) for name, c in
                 (("target", target), ("raw", raw), ("dsir", picked["dsir"]),
                  ("random", picked["random"]))}
  by_ratio = np.where(raw > 0, model["log_ratio"], -np.inf)  # buckets the raw data has at all
  settings = {**plan.model_settings(), **plan.selection_settings()}
  settings["raw_files"] = len(plan.raw_files)
  return {
      "settings": settings,
      "raw": {
          "files": len(plan.raw_files),
          "lines": int(sum(len(n) for n in n_words)),
          "documents": int(sum((n >= 0).sum() for n in n_words)),
          "eligible": int(sum(e.sum() for e in eligible)),
          "shorter_than_min_words": int(sum(((n >= 0) & (n < plan.min_words)).sum()
                                            for n in n_words)),
          "bad_json": int(sum(sc["bad_json"] for sc in scores)),
          "no_text": int(sum(sc["no_text"] for sc in scores)),
          "corrupt_files": [{"file": f, "error": sc["error"]}
                            for f, sc in zip(plan.raw_files, scores) if sc["error"]],
          "fit_ngrams": int(raw.sum()),
      },
      "target": {"texts": int(model["target_docs"]), "ngrams": int(target.sum()),
                 "skipped_lines": int(model["target_skipped"])},
      "selected": {"dsir": int(sum(w["dsir"] for w in written)),
                   "random": int(sum(w["random"] for w in written)),
                   "shards": plan.path("selected.*.json.gz")},
      "sampling_log_weight": {f"{k}_mean": _mean(v) for k, v in weights.items()},
      "words": {f"{k}_mean": _mean(v) for k, v in words.items()},
      "kl": {k: round(v, 6) for k, v in kl.items()},
      "top_features": {
          "by_contribution": _features(np.argsort(-contribution)[:TOP], model, per_million,
                                       contribution),
          "by_log_ratio": _features(np.argsort(-by_ratio)[:TOP], model, per_million,
                                    contribution),
      },
  }
