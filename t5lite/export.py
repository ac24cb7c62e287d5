"""Hugging Face folders <-> t5lite run folders.

  t5lite import-hf HF_DIR MODEL_DIR    a save_pretrained folder (T5, T5 1.1, mT5, BART; safetensors)
  t5lite export-hf MODEL_DIR OUT_DIR   a folder `AutoModelForSeq2SeqLM.from_pretrained` loads

An imported MODEL_DIR is a t5lite run at step 0:
  checkpoints/0/   a TrainState: the HF weights, step 0, fresh state of the gin-bound optimizer
                   (default Adafactor; bind make_optimizer.* at import to match your training)
  model.gin        the Config bindings (architecture and dtype) and the vocabulary
  spiece.model     copied from HF_DIR when there (BART: vocab.json + merges.txt)
So `t5lite train --gin_file=runs/pretrain.gin --gin_file=MODEL_DIR/model.gin
--gin.MODEL_DIR="'MODEL_DIR'"` continues pretraining from it, and `train.init_checkpoint=MODEL_DIR`
fine-tunes from its parameters in another folder with any optimizer.
"""
from __future__ import annotations

import argparse
import os
import shutil
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from t5lite import checkpoints, hf, optim, partitioning
from t5lite.config import Config

# Fields a run config sets rather than the architecture (pretraining 0.0, fine-tuning 0.1 ...).
_RUN_FIELDS = ("dropout_rate", "remat_policy", "scan_layers")
_VOCAB_FILES = ("spiece.model", "vocab.json", "merges.txt")


def model_gin(config: Config, model_dir: str, source: str) -> str:
  """Gin text binding every architecture field of `config`, and the vocabulary in model_dir."""
  lines = [f"# Imported by `t5lite import-hf` from {source}.",
           "# Put this file after runs/*.gin: it sets the model and its vocabulary.", ""]
  for field in Config.__dataclass_fields__:
    if field not in _RUN_FIELDS:
      lines.append(f"Config.{field} = {getattr(config, field)!r}")
  model_dir = os.path.abspath(model_dir)
  if os.path.exists(os.path.join(model_dir, "spiece.model")):
    lines += ["", f"VOCABULARY_PATH = {os.path.join(model_dir, 'spiece.model')!r}",
              "register_tasks.vocabulary_path = %VOCABULARY_PATH",
              "register_objective_tasks.vocabulary_path = %VOCABULARY_PATH"]
  elif os.path.exists(os.path.join(model_dir, "vocab.json")):
    lines += ["", f"register_objective_tasks.gpt2_bpe_dir = {model_dir!r}"]
  else:
    lines += ["", "# No vocabulary file was found in the HF folder: bind one for your tasks."]
  return "\n".join(lines) + "\n"


def import_hf(hf_dir: str, model_dir: str, dtype: str = "float32",
              mesh: Optional[jax.sharding.Mesh] = None) -> Config:
  """Writes MODEL_DIR (see the module docstring) from the HF folder; returns the Config."""
  hf_dir, model_dir = os.fspath(hf_dir), os.fspath(model_dir)
  ckpt_dir = os.path.join(model_dir, "checkpoints")
  if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
    raise FileExistsError(f"{model_dir} already has checkpoints; import into an empty folder")
  config, params = hf.load_hf_dir(hf_dir, dtype=dtype)
  os.makedirs(model_dir, exist_ok=True)
  for name in _VOCAB_FILES:
    if os.path.exists(os.path.join(hf_dir, name)):
      shutil.copyfile(os.path.join(hf_dir, name), os.path.join(model_dir, name))
  with open(os.path.join(model_dir, "model.gin"), "w") as f:
    f.write(model_gin(config, model_dir, os.path.abspath(hf_dir)))

  from t5lite import infer, train  # pylint: disable=g-import-not-at-top
  mesh = mesh or partitioning.make_mesh()
  abstract = infer.abstract_params(config, mesh)
  param_shardings = jax.tree.map(lambda x: x.sharding, abstract)
  params = jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), params, abstract)
  tx = optim.make_optimizer()
  opt_shape = jax.eval_shape(tx.init, params)
  opt_shardings = partitioning.match_shardings(opt_shape, params, param_shardings, mesh)
  state = train.TrainState(step=jax.device_put(jnp.zeros((), jnp.int32),
                                               partitioning.replicated(mesh)),
                           params=params,
                           opt_state=jax.jit(tx.init, out_shardings=opt_shardings)(params))
  ckpt = checkpoints.Checkpointer(ckpt_dir, async_save=False)
  # Saved from host memory: orbax's per-shard device transfers cost seconds for small models.
  ckpt.save(0, jax.device_get(state), {"batches": 0, "imported_from": os.path.abspath(hf_dir)},
            force=True)
  ckpt.close()
  return config


def export_hf(model_dir: str, out_dir: str, step: Optional[int] = None,
              gin_files: Sequence[str] = (), gin_bindings: Sequence[str] = ()) -> str:
  """Writes config.json + model.safetensors (+ the run's spiece.model) to out_dir."""
  from t5lite import infer  # pylint: disable=g-import-not-at-top
  run = infer.load_run(model_dir, step, gin_files, gin_bindings, mesh=partitioning.make_mesh())
  hf.save_hf_dir(run.config, jax.device_get(run.params), out_dir)
  vocab_file = getattr(run.vocabulary, "sentencepiece_model_file", None)
  if vocab_file:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (gs:// vocabularies)
    tf.io.gfile.copy(vocab_file, os.path.join(out_dir, "spiece.model"), overwrite=True)
  for name in ("vocab.json", "merges.txt"):
    if os.path.exists(os.path.join(model_dir, name)):
      shutil.copyfile(os.path.join(model_dir, name), os.path.join(out_dir, name))
  return out_dir


def import_cli(argv: Sequence[str]) -> int:
  from t5lite import main  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog="t5lite import-hf",
      description="Convert a Hugging Face save_pretrained folder (T5, T5 1.1, mT5, BART; "
                  "safetensors only) into a t5lite run folder: checkpoints/0, model.gin and the "
                  "vocabulary.")
  parser.add_argument("hf_dir")
  parser.add_argument("model_dir")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                      help="activation dtype written to model.gin (parameters stay float32)")
  main.add_gin_flags(parser)
  rest, bindings = main.split_gin_overrides(argv)
  args = parser.parse_args(rest)
  main.parse_gin(args, bindings)
  partitioning.emulate_cpu_devices()
  config = import_hf(args.hf_dir, args.model_dir, args.dtype)
  print(f"t5lite: imported {args.hf_dir} ({config.family}, d_model {config.emb_dim}, "
        f"{config.num_encoder_layers}+{config.num_decoder_layers} layers) into {args.model_dir}; "
        f"use --gin_file={os.path.join(args.model_dir, 'model.gin')}")
  return 0


def export_cli(argv: Sequence[str]) -> int:
  from t5lite import main  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog="t5lite export-hf",
      description="Write a t5lite run's checkpoint as a Hugging Face folder (config.json, "
                  "model.safetensors, spiece.model) for from_pretrained.")
  parser.add_argument("model_dir")
  parser.add_argument("out_dir")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  main.add_gin_flags(parser)
  rest, bindings = main.split_gin_overrides(argv)
  args = parser.parse_args(rest)
  gin_files = [main._resolve_gin_file(f, main.gin_config_dirs())  # pylint: disable=protected-access
               for f in args.gin_file]
  export_hf(args.model_dir, args.out_dir, args.step, gin_files,
            list(args.gin_bindings) + bindings)
  print(f"t5lite: wrote {args.out_dir}")
  return 0
