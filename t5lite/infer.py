"""Use a trained run: load it (config, vocabulary, parameters on the mesh), score targets, decode.

  t5lite score --model_dir DIR --input FILE.jsonl [--output FILE]     {"inputs", "targets"} lines
  t5lite infer --model_dir DIR --input FILE.jsonl [--output FILE] [--decoder greedy|beam|sample]

A run folder is what `t5lite train` writes (config.gin = its operative gin config) or what
`t5lite import-hf` writes (model.gin). Its vocabulary is, in order: --vocabulary, the folder's own
spiece.model (or BART's vocab.json + merges.txt), the vocabulary of the task it trained on.
Inputs and targets are tokenized with it and get EOS, as in training; batches are split over the
mesh's 'data' axis, parameters over its 'model' axis (partitioning.RULES).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
from typing import Any, Iterable, Iterator, Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

from t5lite import checkpoints, decoding, losses, partitioning
from t5lite.config import Config
from t5lite.network import EncoderDecoder

DECODERS = ("greedy", "beam", "sample")


@dataclasses.dataclass
class Run:
  """A loaded run: its model, parameters (sharded over `mesh`), vocabulary and step."""
  model_dir: str
  config: Config
  model: EncoderDecoder
  params: Any
  step: int
  vocabulary: Any
  mesh: jax.sharding.Mesh


# ----------------------------------------------------------------------------- loading


def run_gin_files(model_dir: str) -> list[str]:
  """The run's gin file: config.gin (written by train) or model.gin (written by import-hf)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for name in ("config.gin", "model.gin"):
    path = os.path.join(model_dir, name)
    if tf.io.gfile.exists(path):
      return [path]
  return []


def parse_run_gin(model_dir: str, gin_files: Sequence[str] = (),
                  gin_bindings: Sequence[str] = (), gin_search_paths: Sequence[str] = ()) -> None:
  """Clears gin, then parses the run's gin file, then `gin_files` and `gin_bindings` on top."""
  from t5lite import finetune_tasks, main  # pylint: disable=g-import-not-at-top,unused-import
  gin.clear_config()
  args = argparse.Namespace(gin_file=run_gin_files(model_dir) + list(gin_files),
                            gin_search_paths=list(gin_search_paths),
                            gin_bindings=list(gin_bindings), num_cpu_devices=0)
  main.parse_gin(args, [])


def gin_value(selector: str, default: Any = None) -> Any:
  """A bound gin value; a `@fn()` or `%MACRO` reference is evaluated (e.g. the user's task
  registration, which returns the task name)."""
  try:
    value = gin.query_parameter(selector)
  except ValueError:
    return default
  if isinstance(value, gin.config.ConfigurableReference) and value.evaluate:
    value = value.scoped_configurable_fn()
  return value


def run_task_name() -> Optional[str]:
  """The task the parsed run trained on (registering t5lite's and the user's tasks)."""
  from t5lite import data as t5data  # pylint: disable=g-import-not-at-top
  t5data.register_all()
  name = gin_value("train.mixture_or_task_name")
  return None if name is None or name is gin.REQUIRED else name


def run_vocabulary(model_dir: str, vocabulary: Optional[str] = None):
  """--vocabulary -> the folder's spiece.model / vocab.json+merges.txt -> the run's task's."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from t5lite.data import gpt2_vocab, vocab  # pylint: disable=g-import-not-at-top

  def from_path(path):
    if tf.io.gfile.isdir(path):
      return gpt2_vocab.GPT2BPEVocabulary(path)
    return vocab.get_vocabulary(path)
  if vocabulary:
    return from_path(vocabulary)
  if tf.io.gfile.exists(os.path.join(model_dir, "spiece.model")):
    return from_path(os.path.join(model_dir, "spiece.model"))
  if tf.io.gfile.exists(os.path.join(model_dir, "vocab.json")):
    return from_path(model_dir)
  name = run_task_name()
  if name:
    from t5lite.data import get_task_or_mixture  # pylint: disable=g-import-not-at-top
    return get_task_or_mixture(name).output_features["targets"].vocabulary
  raise ValueError(f"{model_dir}: no vocabulary found (no spiece.model, no vocab.json, no "
                   "train.mixture_or_task_name in its gin); pass --vocabulary PATH")


def abstract_params(config: Config, mesh: jax.sharding.Mesh, fsdp: bool = False) -> Any:
  """ShapeDtypeStructs of the parameters, with their shardings on `mesh` (nothing allocated)."""
  model = EncoderDecoder(config)
  dummy = jnp.ones((1, 1), jnp.int32)
  boxed = jax.eval_shape(lambda rng: model.init(rng, dummy, dummy)["params"], jax.random.key(0))
  shardings = partitioning.logical_shardings(boxed, mesh, fsdp)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      partitioning.raw_values(boxed), shardings)


def load_run(model_dir: str, step: Optional[int] = None, gin_files: Sequence[str] = (),
             gin_bindings: Sequence[str] = (), vocabulary: Optional[str] = None,
             dtype: Optional[str] = None, mesh: Optional[jax.sharding.Mesh] = None,
             parse_gin: bool = True) -> Run:
  """Loads a run folder's parameters (latest checkpoint, or `step`) onto `mesh` (default: the
  gin-bound make_mesh). Replaces the global gin config with the run's unless parse_gin=False."""
  model_dir = os.fspath(model_dir)
  if parse_gin:
    parse_run_gin(model_dir, gin_files, gin_bindings)
  config = Config()
  if dtype:
    config = config.replace(dtype=dtype)
  mesh = mesh or partitioning.make_mesh()
  folder, latest = checkpoints.resolve(model_dir)
  step = latest if step is None else step
  params = checkpoints.restore_params(folder, abstract_params(config, mesh), step)
  try:
    vocab = run_vocabulary(model_dir, vocabulary)
  except ValueError:
    vocab = None  # export-hf needs none; score/infer/eval say what is missing
  return Run(model_dir, config, EncoderDecoder(config), params, step, vocab, mesh)


def _vocabulary(run: Run):
  if run.vocabulary is None:
    run_vocabulary(run.model_dir)  # raises the ValueError that says what to pass
  return run.vocabulary


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


def _batch_size(requested: int, mesh) -> int:
  n = mesh.shape["data"]
  return max(n, -(-requested // n) * n)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
  for start in range(0, len(items), size):
    yield items[start:start + size]


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
  batch_size = _batch_size(batch_size, run.mesh)
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
  vocab = _vocabulary(run)
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
  batch_size = _batch_size(batch_size, run.mesh)
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


def detokenize(vocabulary, ids: Sequence[int]) -> str:
  return vocabulary.decode([int(t) for t in ids])


def infer(run: Run, examples: Iterable[dict], max_decode_length: int = 128,
          inputs_length: Optional[int] = None, **decode_kwargs) -> list[dict]:
  """Each {"inputs", ...} example plus its "prediction" (and "score" for beam search)."""
  examples = list(examples)
  for i, ex in enumerate(examples):
    if "inputs" not in ex:
      raise ValueError(f"example {i} needs an 'inputs' key; got {sorted(ex)}")
  vocab = _vocabulary(run)
  inputs = [tokenize(vocab, ex["inputs"], inputs_length) for ex in examples]
  tokens, scores = decode_tokens(run, inputs, max_decode_length, **decode_kwargs)
  out = []
  for ex, ids, s in zip(examples, tokens, scores):
    row = {**ex, "prediction": detokenize(vocab, ids)}
    if not np.isnan(s):
      row["score"] = s
    out.append(row)
  return out


# ----------------------------------------------------------------------------- CLI


def read_jsonl(path: str) -> list[dict]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"input file not found: {path}")
  rows = []
  with tf.io.gfile.GFile(path) as f:
    for n, line in enumerate(f, 1):
      if line.strip():
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{n}: not a JSON line ({e})") from None
  return rows


def write_jsonl(rows: Iterable[dict], path: Optional[str]) -> None:
  """To `path`, or stdout when None; only process 0 writes."""
  if jax.process_index() != 0:
    return
  text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
  if path is None:
    sys.stdout.write(text)
    sys.stdout.flush()
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(text)


def add_run_flags(parser: argparse.ArgumentParser) -> None:
  """--model_dir, --step, --vocabulary, --dtype, --batch_size and the gin flags."""
  from t5lite import main  # pylint: disable=g-import-not-at-top
  parser.add_argument("--model_dir", required=True, help="a t5lite run folder (train or import-hf)")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  parser.add_argument("--vocabulary", default=None,
                      help="SentencePiece .model (or BART vocab.json+merges.txt folder); default: "
                           "the run's")
  parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                      help="activation dtype (default: the run's Config.dtype)")
  parser.add_argument("--batch_size", type=int, default=32)
  main.add_gin_flags(parser)


def load_run_from_args(args: argparse.Namespace, bindings: Sequence[str]) -> Run:
  from t5lite import main  # pylint: disable=g-import-not-at-top
  gin_files = [main._resolve_gin_file(f, main.gin_config_dirs())  # pylint: disable=protected-access
               for f in args.gin_file]
  parse_run_gin(args.model_dir, gin_files, list(args.gin_bindings) + list(bindings),
                args.gin_search_paths)
  if args.num_cpu_devices:
    gin.bind_parameter("emulate_cpu_devices.num_devices", args.num_cpu_devices)
  partitioning.emulate_cpu_devices()
  partitioning.initialize_distributed()
  return load_run(args.model_dir, args.step, vocabulary=args.vocabulary, dtype=args.dtype,
                  parse_gin=False)


def _parse(prog: str, description: str, argv: Sequence[str], add_flags):
  from t5lite import main  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog=prog, description=description)
  add_run_flags(parser)
  parser.add_argument("--input", required=True, help="JSON lines file")
  parser.add_argument("--output", default=None, help="JSON lines file (default: stdout)")
  parser.add_argument("--inputs_length", type=int, default=None,
                      help="trim inputs to this many tokens, EOS included (default: no trim)")
  add_flags(parser)
  rest, bindings = main.split_gin_overrides(argv)
  return parser.parse_args(rest), bindings


def score_cli(argv: Sequence[str]) -> int:
  """`t5lite score --model_dir DIR --input FILE.jsonl [--output FILE]`."""
  def flags(parser):
    parser.add_argument("--targets_length", type=int, default=None,
                        help="trim targets to this many tokens, EOS included (default: no trim)")
  args, bindings = _parse(
      "t5lite score", "Log-likelihood of each line's targets given its inputs (JSON lines "
      '{"inputs": ..., "targets": ...}); writes log_likelihood and token_log_likelihoods.',
      argv, flags)
  examples = read_jsonl(args.input)
  run = load_run_from_args(args, bindings)
  write_jsonl(score(run, examples, args.batch_size, args.inputs_length, args.targets_length),
              args.output)
  return 0


def infer_cli(argv: Sequence[str]) -> int:
  """`t5lite infer --model_dir DIR --input FILE.jsonl [--output FILE] [--decoder ...]`."""
  def flags(parser):
    parser.add_argument("--decoder", default="greedy", choices=DECODERS)
    parser.add_argument("--max_decode_length", type=int, default=None,
                        help="default: the run's targets length, else 128")
    parser.add_argument("--beam_size", type=int, default=4)
    parser.add_argument("--length_penalty", type=float, default=0.6, help="beam search alpha")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling; 0 = argmax")
    parser.add_argument("--top_k", type=int, default=0, help="sampling; 0 = all")
    parser.add_argument("--top_p", type=float, default=1.0, help="sampling (nucleus)")
    parser.add_argument("--seed", type=int, default=0, help="sampling")
  args, bindings = _parse(
      "t5lite infer", 'Decode a prediction for each JSON line {"inputs": ...}; writes the line '
      'with "prediction" added.', argv, flags)
  examples = read_jsonl(args.input)
  run = load_run_from_args(args, bindings)
  max_len = args.max_decode_length or (gin_value("train.task_feature_lengths") or {}).get(
      "targets", 128)
  rows = infer(run, examples, max_len, args.inputs_length, decoder=args.decoder,
               batch_size=args.batch_size, beam_size=args.beam_size,
               length_penalty=args.length_penalty, temperature=args.temperature,
               top_k=args.top_k, top_p=args.top_p, seed=args.seed)
  write_jsonl(rows, args.output)
  return 0
