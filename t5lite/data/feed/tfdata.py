"""Batched, packed, deterministic input pipelines over the registered seqio tasks."""
from __future__ import annotations

from typing import Mapping, Optional

import seqio
import tensorflow as tf

from t5lite.data.tasks.registry import get_task_or_mixture


def get_dataset(name: str, task_feature_lengths: Mapping[str, int], batch_size: int,
                split: str = "train", shuffle: bool = True, seed: int = 0,
                shard_info: Optional[seqio.ShardInfo] = None, pack: bool = True,
                num_epochs: Optional[int] = None, start_batch: int = 0) -> tf.data.Dataset:
  """Batches of EncDecFeatureConverter features for this host (batch_size is per host).

  Each batch: encoder_input_tokens [batch, inputs_len], decoder_target_tokens,
  decoder_input_tokens, decoder_loss_weights [batch, targets_len], plus encoder/decoder
  segment_ids and positions when packed. The stream depends only on (seed, shard_info) and
  the batch index; start_batch=k yields batch k onward (it recomputes and drops the first k
  batches, since packing makes each batch depend on the examples before it).
  """
  provider = get_task_or_mixture(name)
  ds = seqio.get_dataset(
      provider, task_feature_lengths=dict(task_feature_lengths),
      feature_converter=seqio.EncDecFeatureConverter(pack=pack), dataset_split=split,
      shuffle=shuffle, num_epochs=num_epochs, shard_info=shard_info, seed=seed,
      batch_size=batch_size, verbose=False)
  options = tf.data.Options()
  options.deterministic = True
  ds = ds.with_options(options)
  if start_batch:
    ds = ds.skip(start_batch)
  return ds.prefetch(tf.data.AUTOTUNE)
