"""The vocabularies as seqio.Vocabulary, for seqio Tasks (TensorFlow): T5's SentencePiece (seqio's
own class, loaded lazily with a clear error for a missing model), and GPT-2 BPE with BART's ids
around gpt2.py's GPT2BPE (its TF ops through tf.numpy_function)."""
from __future__ import annotations

import os
import pathlib
from typing import Iterable, Sequence

import numpy as np
import seqio
import tensorflow as tf

from t5lite.data.vocab import gpt2, sentencepiece


class SentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """seqio's vocabulary, loaded lazily, with a clear FileNotFoundError naming a missing model."""

  def _model_context(self):
    if not self._model:
      sentencepiece.check_readable(self.sentencepiece_model_file)
    return super()._model_context()

  def describe(self) -> dict:
    return {"type": "sentencepiece", "path": self.sentencepiece_model_file,
            "extra_ids": self.extra_ids}


def get_vocabulary(path: str = sentencepiece.T5_VOCAB_PATH,
                   extra_ids: int = 100) -> SentencePieceVocabulary:
  """The SentencePiece model at `path` with `extra_ids` sentinels appended (T5: 32000 + 100)."""
  path = os.fspath(path)
  sentencepiece.check_readable(path)
  return SentencePieceVocabulary(path, extra_ids=extra_ids)


class GPT2BPEVocabulary(seqio.Vocabulary):
  """gpt2.GPT2BPE as a seqio.Vocabulary (ids, specials, <mask> and word starts are its)."""

  def __init__(self, bpe_dir: str | pathlib.Path, dict_path: str | pathlib.Path | None = None):
    super().__init__(extra_ids=0)
    self.core = gpt2.GPT2BPE(bpe_dir, dict_path)

  bpe_dir = property(lambda self: self.core.bpe_dir)
  bos_id = property(lambda self: self.core.bos_id)
  pad_id = property(lambda self: self.core.pad_id)
  eos_id = property(lambda self: self.core.eos_id)
  unk_id = property(lambda self: self.core.unk_id)
  mask_id = property(lambda self: self.core.mask_id)
  _base_vocab_size = property(lambda self: self.core.vocab_size)

  def word_start_table(self) -> np.ndarray:
    return self.core.word_start_table()

  def id_for_piece(self, piece: str) -> int:
    return self.core.id_for_piece(piece)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return self.core.encode_batch(texts)

  def _encode(self, s: str) -> Sequence[int]:
    return self.core.encode(s)

  def _decode(self, ids: Iterable[int]) -> str:
    return self.core.decode_pieces(ids)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """Scalar string -> int32[length]; 1-D strings -> RaggedTensor int32[batch, None]."""
    s = tf.convert_to_tensor(s, dtype=tf.string)

    def _np(texts):  # tf.numpy_function: ~2x less overhead per call than tf.py_function
      texts = [t.decode("utf-8") for t in np.atleast_1d(texts)]
      ids = self.encode_batch(texts) if len(texts) > 1 else [np.asarray(self._encode(texts[0]))]
      lengths = np.asarray([len(x) for x in ids], dtype=np.int64)
      flat = np.concatenate(ids).astype(np.int32) if ids else np.zeros([0], np.int32)
      return flat, lengths

    flat, lengths = tf.numpy_function(_np, [s], [tf.int32, tf.int64], stateful=False)
    flat.set_shape([None])
    if s.shape.rank == 0:
      return flat
    lengths.set_shape([None])
    return tf.RaggedTensor.from_row_lengths(flat, lengths)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """int ids [..., length] -> strings [...]."""
    ids = tf.convert_to_tensor(ids)

    def _np(x):
      flat = x.reshape([-1, x.shape[-1]]) if x.ndim else x.reshape([1, 1])
      out = [self._decode(row).encode("utf-8") for row in flat]
      return np.asarray(out, dtype=object).reshape(x.shape[:-1])

    out = tf.numpy_function(_np, [ids], tf.string, stateful=False)
    out.set_shape(ids.shape[:-1])
    return out

  def describe(self) -> dict:
    return self.core.describe()

  def __eq__(self, other) -> bool:
    return isinstance(other, GPT2BPEVocabulary) and self.core == other.core

  def __hash__(self) -> int:
    return hash((GPT2BPEVocabulary, self.core))

  def __repr__(self) -> str:
    return f"GPT2BPEVocabulary({str(self.bpe_dir)!r})"
