"""Using a model on inputs: score targets, decode predictions, show held-out examples.

Inputs and targets are tokenized with the run's vocabulary and get EOS, as in training; batches
are split over the mesh's 'data' axis, parameters over its 'model' axis (partitioning.RULES).
A `runs.Run` (runs.load) carries the model, parameters, vocabulary and mesh.
"""
from __future__ import annotations

import functools
from typing import Any, Iterable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from t5lite.serving import decoding
from t5lite.model import losses
from t5lite.runtime import partitioning
from t5lite.data.vocab.sentencepiece import detokenize
from t5lite.model.network import EncoderDecoder
from t5lite.serving.run import Run

DECODERS = ("greedy", "beam", "sample")


# ----------------------------------------------------------------------------- batching


def tokenize(vocabulary, text: str, max_length: Optional[int] = None) -> list[int]:
  """Token ids + EOS; longer ones are trimmed to max_length - 1 first (append_eos_after_trim)."""
  ids = list(vocabulary.encode(text))
  if max_length:
    ids = ids[:max_length - 1]
  return ids + [vocabulary.eos_id]


def _bucket(n: int, cap: Optional[int] = None) -> int:
  """Padded length: the next power of two >= n (min 8), so few shapes get compiled."""
  length = max(8, 1 << max(n - 1, 0).bit_length())
  return max(min(length, cap), n) if cap else length


def _pad(rows: Sequence[Sequence[int]], length: int, batch: int, pad_id: int = 0
         ) -> tuple[np.ndarray, np.ndarray]:
  """[batch, length] ids and validity; missing rows (the last batch) are all padding."""
  ids = np.full((batch, length), pad_id, np.int32)
  valid = np.zeros((batch, length), bool)
  for i, row in enumerate(rows):
    ids[i, :len(row)] = row
    valid[i, :len(row)] = True
  return ids, valid


def _global(x: np.ndarray, mesh) -> jax.Array:
  """A host array (the same on every process) as one array split over 'data'."""
  sharding = partitioning.batch_sharding(mesh)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _fetch(x: jax.Array) -> np.ndarray:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def batch_size_for(requested: int, mesh) -> int:
  """The requested batch rounded up to a multiple of the devices a batch is split over ('data',
  and 'expert' on an expert-parallel mesh)."""
  n = partitioning.batch_size_divisor(mesh)
  return max(n, -(-requested // n) * n)


# ----------------------------------------------------------------------------- scoring


@functools.partial(jax.jit, static_argnames=("model",))
def _token_log_likelihoods(model: EncoderDecoder, params, encoder_BI, encoder_valid_BI,
                           targets_BT, targets_valid_BT):
  """log p(target_t | inputs, targets_<t) [B, T], 0 at padding."""
  cfg = model.config
  decoder_in_BT = jnp.concatenate(  # targets shifted right behind the decoder start token
      [jnp.full(targets_BT[:, :1].shape, cfg.decoder_start_token_id, jnp.int32),
       targets_BT[:, :-1]], axis=1)
  logits_BTV = model.apply({"params": params}, encoder_BI, decoder_in_BT,
                           encoder_valid=encoder_valid_BI, decoder_valid=targets_valid_BT)
  return losses.token_log_likelihoods(logits_BTV, targets_BT) * targets_valid_BT


def score_tokens(run: Run, inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]],
                 batch_size: int = 32) -> list[np.ndarray]:
  """Per-token log-likelihoods of each target (ids including EOS) given its inputs."""
  batch_size = batch_size_for(batch_size, run.mesh)
  out = []
  with partitioning.activate(run.mesh):
    for start in range(0, len(inputs), batch_size):
      ins, tgs = inputs[start:start + batch_size], targets[start:start + batch_size]
      enc, enc_valid = _pad(ins, _bucket(max(map(len, ins))), batch_size)
      tgt, tgt_valid = _pad(tgs, _bucket(max(map(len, tgs))), batch_size)
      arrays = [_global(x, run.mesh) for x in (enc, enc_valid, tgt, tgt_valid)]
      scores = _fetch(_token_log_likelihoods(run.model, run.params, *arrays))
      out.extend(scores[i, :len(t)] for i, t in enumerate(tgs))
  return out


def score(run: Run, examples: Iterable[dict], batch_size: int = 32,
          inputs_length: Optional[int] = None, targets_length: Optional[int] = None
          ) -> list[dict]:
  """Each {"inputs", "targets", ...} example plus log_likelihood (the sum over target tokens,
  EOS included) and token_log_likelihoods."""
  examples = list(examples)
  for i, ex in enumerate(examples):
    if "inputs" not in ex or "targets" not in ex:
      raise ValueError(f"example {i} needs 'inputs' and 'targets' keys; got {sorted(ex)}")
  vocab = run.require_vocabulary()
  inputs = [tokenize(vocab, ex["inputs"], inputs_length) for ex in examples]
  targets = [tokenize(vocab, ex["targets"], targets_length) for ex in examples]
  scores = score_tokens(run, inputs, targets, batch_size)
  return [{**ex, "log_likelihood": float(np.sum(s)),
           "token_log_likelihoods": [float(v) for v in s]} for ex, s in zip(examples, scores)]


# ----------------------------------------------------------------------------- decoding


def decode_tokens(run: Run, inputs: Sequence[Sequence[int]], max_decode_length: int,
                  decoder: str = "greedy", batch_size: int = 32, beam_size: int = 4,
                  length_penalty: float = 0.6, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, seed: int = 0) -> tuple[list[list[int]], list[float]]:
  """Generated ids (up to, without, EOS) for each input, and beam scores (nan otherwise)."""
  if decoder not in DECODERS:
    raise ValueError(f"decoder={decoder!r}; expected one of {DECODERS}")
  batch_size = batch_size_for(batch_size, run.mesh)
  cfg = run.config
  tokens, scores = [], []
  with partitioning.activate(run.mesh):
    for index, start in enumerate(range(0, len(inputs), batch_size)):
      rows = inputs[start:start + batch_size]
      enc, valid = _pad(rows, _bucket(max(map(len, rows))), batch_size)
      enc, valid = _global(enc, run.mesh), _global(valid, run.mesh)
      batch_scores = np.full((batch_size,), np.nan)
      if decoder == "greedy":
        out = decoding.greedy_decode(run.model, run.params, enc, max_decode_length,
                                     encoder_valid=valid)
      elif decoder == "beam":
        out, beam_scores = decoding.beam_search(run.model, run.params, enc, max_decode_length,
                                                beam_size=beam_size, length_penalty=length_penalty,
                                                encoder_valid=valid)
        out, batch_scores = out[:, 0], _fetch(beam_scores[:, 0])
      else:
        rng = jax.random.fold_in(jax.random.key(seed), index)
        out = decoding.sample_decode(run.model, run.params, enc, max_decode_length, rng,
                                     temperature=temperature, top_k=top_k, top_p=top_p,
                                     encoder_valid=valid)
      out = _fetch(out)
      for i in range(len(rows)):
        ids = [int(t) for t in out[i]]
        tokens.append(ids[:ids.index(cfg.eos_token_id)] if cfg.eos_token_id in ids else ids)
        scores.append(float(batch_scores[i]))
  return tokens, scores


def infer(run: Run, examples: Iterable[dict], max_decode_length: int = 128,
          inputs_length: Optional[int] = None, **decode_kwargs) -> list[dict]:
  """Each {"inputs", ...} example plus its "prediction" (and "score" for beam search)."""
  examples = list(examples)
  for i, ex in enumerate(examples):
    if "inputs" not in ex:
      raise ValueError(f"example {i} needs an 'inputs' key; got {sorted(ex)}")
  vocab = run.require_vocabulary()
  inputs = [tokenize(vocab, ex["inputs"], inputs_length) for ex in examples]
  tokens, scores = decode_tokens(run, inputs, max_decode_length, **decode_kwargs)
  out = []
  for ex, ids, s in zip(examples, tokens, scores):
    row = {**ex, "prediction": detokenize(vocab, ids)}
    if not np.isnan(s):
      row["score"] = s
    out.append(row)
  return out


# ----------------------------------------------------------------------------- held-out examples


def _held_out(name: str, task_feature_lengths: Mapping[str, int], num_examples: int,
              split: str) -> tuple[Any, dict]:
  """(vocabulary, one batch of `num_examples` unpacked examples of `split`): seqio's tf.data
  pipeline where seqio is installed, else the token cache (its manifest names the vocabulary)."""
  # pylint: disable=g-import-not-at-top
  from t5lite.extras import tf_data_available
  if tf_data_available():
    from t5lite.data.tasks.registry import get_task_or_mixture
    from t5lite.data.feed import tfdata as pipeline
    vocab = get_task_or_mixture(name).output_features["targets"].vocabulary
    ds = pipeline.get_dataset(name, task_feature_lengths, num_examples, split=split,
                              shuffle=False, seed=0, pack=False)
    return vocab, next(ds.as_numpy_iterator())
  from t5lite.extras import require_tf_data
  from t5lite.data.feed import indexed, streams
  from t5lite.data.sources.sources import Sources
  if not Sources().cache_dir:
    require_tf_data(f"reading task {name!r} without a token cache (Sources.cache_dir)")
  directory = streams.cache_dir(Sources())
  tasks = indexed.stream_tasks(name, split, directory)
  stream = indexed.IndexedStream(name, task_feature_lengths, num_examples, directory,
                                 split=split, shuffle=False, tasks=tasks)
  return tasks[0].vocabulary, stream.batch(0)


def show_predictions(model, params: Any, name: str, task_feature_lengths: Mapping[str, int],
                     num_examples: int = 3, split: str = "validation") -> list[dict]:
  """Greedy-decodes the first `num_examples` unpacked examples of `split`; prints and returns them
  (corrupted input, true target, prediction; sentinels stay visible)."""
  vocab, batch = _held_out(name, task_feature_lengths, num_examples, split)
  params = jax.device_get(params)
  tokens = np.asarray(jax.device_get(decoding.greedy_decode(
      model, params, batch["encoder_input_tokens"], task_feature_lengths["targets"])))
  shown = []
  for i in range(len(tokens)):
    rows = {"input": batch["encoder_input_tokens"][i], "target": batch["decoder_target_tokens"][i],
            "prediction": tokens[i]}
    text = {k: detokenize(vocab, v) for k, v in rows.items()}
    shown.append(text)
    print(f"\n--- held-out example {i + 1} ({split}) ---")
    for k, v in text.items():
      print(f"{k:>10}: {v}")
  return shown
