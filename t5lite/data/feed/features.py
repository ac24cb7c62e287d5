"""What a batch holds: seqio's EncDecFeatureConverter(pack=True) layout, written down without seqio
so that the trainer, the planner and the token cache's feed need no TensorFlow.

Every feature is int32 [batch, length]: encoder_* at the inputs length, decoder_* at the targets
length. Packed rows also carry segment ids (1, 2, ... per example; 0 = padding) and positions
(0, 1, ... within each example). tests/test_plan.py checks this against seqio's converter.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

MODEL_FEATURES = ("encoder_input_tokens", "decoder_target_tokens", "decoder_input_tokens",
                  "decoder_loss_weights")
PACKING_FEATURES = ("encoder_segment_ids", "encoder_positions", "decoder_segment_ids",
                    "decoder_positions")
FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
            "decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
            "decoder_segment_ids", "decoder_positions")
TASK_IDS = "decoder_task_ids"  # optional (DoReMi): task index + 1 per target token, 0 = padding


def feature_length(feature: str, task_feature_lengths: Mapping[str, int]) -> int:
  return int(task_feature_lengths["inputs" if feature.startswith("encoder") else "targets"])


def batch_shapes(task_feature_lengths: Mapping[str, int], batch_size: int, pack: bool = True
                 ) -> dict[str, tuple[tuple[int, int], np.dtype]]:
  """{feature: ([batch_size, length], dtype)} of a batch (global batch_size)."""
  names = FEATURES if pack else MODEL_FEATURES
  return {k: ((batch_size, feature_length(k, task_feature_lengths)), np.dtype(np.int32))
          for k in names}
