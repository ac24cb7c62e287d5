"""`t5lite train`: pretrain, fine-tune or continue a run; gin-configured."""
from __future__ import annotations

import argparse
from typing import Sequence

from t5lite.cli import common


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(prog="t5lite train", description=(
      "Pretrain or fine-tune. Running the same command again resumes from MODEL_DIR's latest "
      "checkpoint."))
  common.add_gin_flags(parser)
  args = common.parse_args(parser, argv)
  common.parse_gin(args)
  common.start_devices()
  from t5lite.runtime import partitioning  # pylint: disable=g-import-not-at-top
  from t5lite.training import train  # pylint: disable=g-import-not-at-top
  train.train(mesh=partitioning.make_mesh())
  return 0
