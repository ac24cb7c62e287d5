"""Hugging Face folders <-> t5lite run folders, both directions (hf.py maps the weights).

import_hf(HF_DIR, MODEL_DIR): a save_pretrained folder (T5, T5 1.1, mT5, BART; safetensors) becomes
a t5lite run at step 0:
  checkpoints/0/   a TrainState: the HF weights, step 0, fresh state of the gin-bound optimizer
                   (default Adafactor; bind make_optimizer.* at import to match your training)
  model.gin        the Config bindings (architecture and dtype) and the vocabulary
  spiece.model     copied from HF_DIR when there (BART: vocab.json + merges.txt)
So `t5lite train --gin_file=runs/pretrain.gin --gin_file=MODEL_DIR/model.gin
--gin.MODEL_DIR="'MODEL_DIR'"` continues pretraining from it, and `train.init_checkpoint=MODEL_DIR`
fine-tunes from its parameters in another folder with any optimizer.

export_hf(MODEL_DIR, OUT_DIR): a folder `AutoModelForSeq2SeqLM.from_pretrained` loads.
MODEL_DIR may be local (relative or absolute) or gs://; HF folders are local.
"""
from __future__ import annotations

import os
from typing import Optional

import jax
import jax.numpy as jnp

from t5lite.store import checkpoints
from t5lite import files
from t5lite.convert import hf
from t5lite.training import optim
from t5lite.training.state import TrainState, new_guard
from t5lite.runtime import partitioning
from t5lite.model.params import abstract_params
from t5lite.serving.run import Run
from t5lite.store import run_dir as run_folder
from t5lite.store.run_dir import RunDir
from t5lite.model.config import Config

# Fields a run config sets rather than the architecture (pretraining 0.0, fine-tuning 0.1 ...).
_RUN_FIELDS = ("dropout_rate", "remat_policy", "scan_layers", "attention_kernel")


def model_gin(config: Config, run_dir: RunDir, source: str) -> str:
  """Gin text binding every architecture field of `config`, and the vocabulary in the run folder."""
  lines = [f"# Imported by `t5lite import-hf` from {source}.",
           "# Put this file after runs/*.gin: it sets the model and its vocabulary.", ""]
  for field in Config.__dataclass_fields__:
    if field not in _RUN_FIELDS:
      lines.append(f"Config.{field} = {getattr(config, field)!r}")
  vocab = run_dir.vocabulary_file()
  if vocab == run_dir.path:
    lines += ["", f"GPT2_BPE_DIR = {vocab!r}"]
  elif vocab:
    lines += ["", f"VOCABULARY_PATH = {vocab!r}"]
  else:
    lines += ["", "# No vocabulary file was found in the HF folder: bind VOCABULARY_PATH."]
  return "\n".join(lines) + "\n"


def import_hf(hf_dir: str, model_dir: str, dtype: str = "float32",
              mesh: Optional[jax.sharding.Mesh] = None) -> Config:
  """Writes MODEL_DIR (see the module docstring) from the HF folder; returns the Config."""
  hf_dir = os.path.abspath(os.fspath(hf_dir))
  if not os.path.isfile(os.path.join(hf_dir, "config.json")):
    what = "has no config.json" if os.path.isdir(hf_dir) else "does not exist"
    raise FileNotFoundError(f"HF folder {hf_dir} {what} (expected a save_pretrained folder "
                            "with config.json and model.safetensors)")
  run_dir = RunDir(model_dir)
  if run_dir.checkpoint_steps():
    raise FileExistsError(f"{run_dir.path} already has checkpoints; import into an empty folder")
  config, params = hf.load_hf_dir(hf_dir, dtype=dtype)
  files.makedirs(run_dir.path)
  for name in run_folder.VOCAB_FILES:
    if os.path.exists(os.path.join(hf_dir, name)):
      files.copy(os.path.join(hf_dir, name), run_dir.file(name), overwrite=True)
  files.write_text(run_dir.file(run_folder.MODEL_GIN), model_gin(config, run_dir, hf_dir))

  mesh = mesh or partitioning.make_mesh()
  abstract = abstract_params(config, mesh)
  param_shardings = jax.tree.map(lambda x: x.sharding, abstract)
  params = jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), params, abstract)
  tx = optim.make_optimizer()
  opt_shape = jax.eval_shape(tx.init, params)
  opt_shardings = partitioning.match_shardings(opt_shape, params, param_shardings, mesh)
  state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32),
                                               partitioning.replicated(mesh)),
                           params=params,
                           opt_state=jax.jit(tx.init, out_shardings=opt_shardings)(params),
                           guard=new_guard())
  ckpt = checkpoints.Checkpointer(run_dir.checkpoints, async_save=False)
  # Saved from host memory: orbax's per-shard device transfers cost seconds for small models.
  ckpt.save(0, jax.device_get(state), {"batches": 0, "imported_from": hf_dir}, force=True)
  ckpt.close()
  return config


def export_hf(run: Run, out_dir: str) -> str:
  """Writes config.json + model.safetensors (+ the run's vocabulary files) of a loaded run to a
  local out_dir."""
  out_dir = os.path.abspath(os.fspath(out_dir))
  hf.save_hf_dir(run.config, jax.device_get(run.params), out_dir)
  vocab_file = getattr(run.vocabulary, "sentencepiece_model_file", None)
  if vocab_file:
    files.copy(vocab_file, os.path.join(out_dir, run_folder.SPIECE), overwrite=True)
  for name in run_folder.BART_VOCAB_FILES:
    if files.exists(run.run_dir.file(name)):
      files.copy(run.run_dir.file(name), os.path.join(out_dir, name), overwrite=True)
  return out_dir
