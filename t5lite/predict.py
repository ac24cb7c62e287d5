"""Held-out examples as text: corrupted input, true target, and the model's greedy prediction."""
from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from t5lite import decoding


def show_predictions(model, params: Any, name: str, task_feature_lengths: Mapping[str, int],
                     num_examples: int = 3, split: str = "validation") -> list[dict]:
  """Greedy-decodes the first `num_examples` unpacked examples of `split`; prints and returns them."""
  from t5lite.data import get_task_or_mixture, pipeline  # pylint: disable=g-import-not-at-top
  task = get_task_or_mixture(name)
  vocab = task.output_features["targets"].vocabulary
  ds = pipeline.get_dataset(name, task_feature_lengths, num_examples, split=split,
                            shuffle=False, seed=0, pack=False)
  batch = next(ds.as_numpy_iterator())
  params = jax.device_get(params)
  tokens = np.asarray(jax.device_get(decoding.greedy_decode(
      model, params, batch["encoder_input_tokens"], task_feature_lengths["targets"])))
  shown = []
  for i in range(len(tokens)):
    rows = {"input": batch["encoder_input_tokens"][i], "target": batch["decoder_target_tokens"][i],
            "prediction": tokens[i]}
    text = {k: _decode(vocab, v) for k, v in rows.items()}
    shown.append(text)
    print(f"\n--- held-out example {i + 1} ({split}) ---")
    for k, v in text.items():
      print(f"{k:>10}: {v}")
  return shown


def _decode(vocab, ids: np.ndarray) -> str:
  """Decodes up to the first EOS; sentinels (<extra_id_N>) stay visible."""
  ids = [int(t) for t in ids]
  eos = vocab.eos_id
  if eos in ids:
    ids = ids[:ids.index(eos)]
  ids = [t for t in ids if t != 0]
  return vocab.decode(ids)
