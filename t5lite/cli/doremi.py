"""`t5lite doremi`: DoReMi domain weights for a mixture (t5lite/doremi_run.py), gin-configured.

  t5lite doremi --gin_file=models/t5_1_1/small.gin --gin_file=runs/doremi.gin \\
      --gin.DOREMI_MIXTURE="'my_mixture'" --gin.MODEL_DIR="'/tmp/doremi'" \\
      --gin.DATA_CACHE_DIR="'/data/cache'"
  t5lite train ... --gin_file=/tmp/doremi/domain_weights.gin
"""
from __future__ import annotations

import argparse
from typing import Sequence

from t5lite.cli import common


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(prog="t5lite doremi", description=(
      "DoReMi (Xie et al. 2023): train a reference model on a mixture (or reuse one), then a "
      "proxy with group DRO over the mixture's tasks; writes MODEL_DIR/domain_weights.gin, the "
      "mixture with the weights found, for --gin_file in the main run. Running the same command "
      "again resumes (or reuses) what is done."))
  common.add_gin_flags(parser)
  args = common.parse_args(parser, argv)
  common.parse_gin(args)
  common.start_devices()
  import jax  # pylint: disable=g-import-not-at-top
  from t5lite.datamix import doremi_run  # pylint: disable=g-import-not-at-top
  from t5lite.runtime import partitioning  # pylint: disable=g-import-not-at-top
  result = doremi_run.doremi(mesh=partitioning.make_mesh())
  if result is not None and jax.process_index() == 0:
    width = max(len(n) for n in result.weights)
    print(f"t5lite doremi: domain weights of {result.mixture!r} after {result.steps} proxy steps "
          f"-> {result.gin_file}")
    print(f"  {'task':<{width}}  rate before  DoReMi")
    for name in sorted(result.weights):
      print(f"  {name:<{width}}  {result.baseline[name]:>11.4f}  {result.weights[name]:.4f}")
  return 0
