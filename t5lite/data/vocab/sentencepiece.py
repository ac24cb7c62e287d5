"""SentencePiece vocabularies with T5's conventions, without TensorFlow: load one (local or gs://)
with seqio's extra ids (sentinels), encode and decode exactly as seqio does, or train one.

  vocab = load("/data/spiece.model")          # 32000 pieces + 100 extra ids: vocab_size 32100
  vocab.encode("Hello") / vocab.decode(ids)   # seqio.SentencePieceVocabulary's ids and text

seqio's own vocabulary class (what seqio Tasks hold) wraps this one: data/vocab/seqio_vocab.py.
"""
from __future__ import annotations

import io
import json
import os
import threading
from typing import Iterable, Iterator, Optional, Sequence

from t5lite import files

T5_VOCAB_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
NUM_RESERVED = 3  # pad, eos, unk


def check_readable(path: str) -> None:
  """FileNotFoundError naming a SentencePiece model that is missing or cannot be reached."""
  try:
    found = files.exists(path)
  except Exception as e:  # pylint: disable=broad-except  (gs:// without network or credentials)
    message = getattr(e, "message", str(e)).splitlines()[0]
    raise FileNotFoundError(f"SentencePiece model {path} cannot be read: {message}") from None
  if not found:
    raise FileNotFoundError(f"SentencePiece model not found: {path}")


def with_extra_ids(model: bytes, extra_ids: int) -> bytes:
  """The serialized model with seqio's extra ids appended: pieces "▁<extra_id_i>" for i from
  extra_ids - 1 down to 0, user-defined, score 0 (so <extra_id_0> gets the highest id)."""
  if not extra_ids:
    return model
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
  proto = sentencepiece_model_pb2.ModelProto.FromString(model)
  for i in reversed(range(extra_ids)):
    proto.pieces.add(piece=f"▁<extra_id_{i}>", score=0.0,
                     type=sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED)
  return proto.SerializeToString()


class SentencePieceVocab:
  """A SentencePiece model with `extra_ids` sentinels, loaded on first use; the ids and text of
  seqio.SentencePieceVocabulary(path, extra_ids)."""

  def __init__(self, path: str, extra_ids: int = 100):
    self.path, self.extra_ids = os.fspath(path), int(extra_ids)
    self._lock = threading.Lock()
    self._loaded: Optional[tuple] = None  # (processor, serialized model)

  def _load(self):
    if self._loaded is None:
      with self._lock:
        if self._loaded is None:
          import sentencepiece as spm  # pylint: disable=g-import-not-at-top
          check_readable(self.path)
          model = with_extra_ids(files.read_bytes(self.path), self.extra_ids)
          self._loaded = (spm.SentencePieceProcessor(model_proto=model), model)
    return self._loaded

  @property
  def sentencepiece_model_file(self) -> str:
    """The model's path under seqio.SentencePieceVocabulary's name: callers take either class."""
    return self.path

  @property
  def tokenizer(self):
    """The sentencepiece processor (extra ids included)."""
    return self._load()[0]

  @property
  def sp_model(self) -> bytes:
    """The serialized model with its extra ids: what identifies the ids."""
    return self._load()[1]

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.GetPieceSize()

  pad_id, eos_id, unk_id = PAD_ID, EOS_ID, UNK_ID

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.EncodeAsIds(text)

  def decode(self, ids: Iterable[int]) -> str:
    """Text up to and including the first EOS (seqio's Vocabulary.decode)."""
    ids = [int(i) for i in ids]
    size = self.vocab_size
    ids = [UNK_ID if i >= size else i for i in ids]
    if EOS_ID in ids:
      ids = ids[:ids.index(EOS_ID) + 1]
    return self.tokenizer.DecodeIds(ids)

  def describe(self) -> dict:
    return {"type": "sentencepiece", "path": self.path, "extra_ids": self.extra_ids}

  def __getstate__(self):
    return {"path": self.path, "extra_ids": self.extra_ids}

  def __setstate__(self, state):
    self.__init__(state["path"], state["extra_ids"])

  def __eq__(self, other) -> bool:
    return (isinstance(other, SentencePieceVocab) and (self.path, self.extra_ids)
            == (other.path, other.extra_ids))

  def __hash__(self) -> int:
    return hash((SentencePieceVocab, self.path, self.extra_ids))

  def __repr__(self) -> str:
    return f"SentencePieceVocab({self.path!r}, extra_ids={self.extra_ids})"


def load(path: str = T5_VOCAB_PATH, extra_ids: int = 100) -> SentencePieceVocab:
  """The SentencePiece model at `path` with `extra_ids` sentinels appended (T5: 32000 + 100);
  FileNotFoundError naming it when it is missing or cannot be reached."""
  path = os.fspath(path)
  check_readable(path)
  return SentencePieceVocab(path, extra_ids)


def detokenize(vocabulary, ids: Iterable[int]) -> str:
  """The text of token ids up to the first EOS, seqio's padding (0) dropped; sentinels
  (<extra_id_N>) stay visible."""
  ids = [int(t) for t in ids]
  if vocabulary.eos_id in ids:
    ids = ids[:ids.index(vocabulary.eos_id)]
  return vocabulary.decode([t for t in ids if t != 0])


def iter_text_lines(input_patterns: Iterable[str], max_chars_per_line: int = 8192) -> Iterator[str]:
  """Non-empty text lines from JSON-lines shards (`*.json[.gz]`, key `text`) or plain text files.

  Files are globbed (files.py: local or gs://) and read in sorted order. Documents are split
  at newlines and long lines cut at max_chars_per_line, as SentencePiece trains on sentences.
  """
  for pattern in input_patterns:
    for path in files.glob_all(os.fspath(pattern), "text to train the vocabulary on"):
      is_json = ".json" in os.path.basename(path)
      for raw_line in files.open_lines(path):
        line = raw_line.decode("utf-8")
        if not line.strip():
          continue
        text = json.loads(line)["text"] if is_json else line
        for piece in text.split("\n"):
          piece = piece.strip()
          for start in range(0, len(piece), max_chars_per_line):
            yield piece[start:start + max_chars_per_line]


def train_vocabulary(input_patterns: Sequence[str] | str, output_path: str, vocab_size: int = 32000,
                     model_type: str = "unigram", character_coverage: float = 0.9995,
                     input_sentence_size: int = 0, num_threads: int = 1, seed: int = 0) -> str:
  """Trains a SentencePiece model with T5's conventions and writes it to `output_path`.

  pad 0, eos 1, unk 2, no BOS, nmt_nfkc normalisation, unigram. input_sentence_size=0 uses all
  lines (else a seeded random sample); with num_threads=1 and a fixed seed the model is deterministic. Returns output_path.
  """
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel

  if isinstance(input_patterns, (str, os.PathLike)):
    input_patterns = [input_patterns]
  output_path = os.fspath(output_path)
  spm.set_random_generator_seed(seed)
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter_text_lines(input_patterns), model_writer=model,
      vocab_size=vocab_size, model_type=model_type, character_coverage=character_coverage,
      normalization_rule_name="nmt_nfkc", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
      input_sentence_size=input_sentence_size,
      shuffle_input_sentence=input_sentence_size > 0,
      max_sentence_length=8192 * 4, num_threads=num_threads, minloglevel=2)
  files.write_bytes(output_path, model.getvalue())
  return output_path
