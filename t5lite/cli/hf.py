"""`t5lite import-hf HF_DIR MODEL_DIR` and `t5lite export-hf MODEL_DIR OUT_DIR` (hf_folders.py)."""
from __future__ import annotations

import argparse
from typing import Sequence

from t5lite.convert import hf_folders
from t5lite.store import run_dir as run_folder
from t5lite.cli import common


def import_main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(
      prog="t5lite import-hf",
      description="Convert a Hugging Face save_pretrained folder (T5, T5 1.1, mT5, BART, "
                  "SwitchTransformers; safetensors only) into a t5lite run folder: checkpoints/0, "
                  "model.gin and the vocabulary.")
  parser.add_argument("hf_dir")
  parser.add_argument("model_dir")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                      help="activation dtype written to model.gin (parameters stay float32)")
  common.add_gin_flags(parser)
  args = common.parse_args(parser, argv)
  common.parse_gin(args)
  common.start_devices()
  config = hf_folders.import_hf(args.hf_dir, args.model_dir, args.dtype)
  run_dir = run_folder.RunDir(args.model_dir)
  experts = f", {config.num_experts} experts" if config.num_experts else ""
  print(f"t5lite: imported {args.hf_dir} ({config.family}, d_model {config.emb_dim}, "
        f"{config.num_encoder_layers}+{config.num_decoder_layers} layers{experts}) into "
        f"{run_dir.path}; use --gin_file={run_dir.file(run_folder.MODEL_GIN)}")
  return 0


def export_main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(
      prog="t5lite export-hf",
      description="Write a t5lite run's checkpoint as a Hugging Face folder (config.json, "
                  "model.safetensors, spiece.model) for from_pretrained.")
  parser.add_argument("model_dir")
  parser.add_argument("out_dir")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  common.add_gin_flags(parser)
  args = common.parse_args(parser, argv)
  args.vocabulary, args.dtype = None, None
  out = hf_folders.export_hf(common.load_run(args), args.out_dir)
  print(f"t5lite: wrote {out}")
  return 0
