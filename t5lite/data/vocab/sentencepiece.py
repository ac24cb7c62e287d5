"""SentencePiece vocabularies: load one (local or gs://), or train one with T5's conventions."""
from __future__ import annotations

import io
import json
import os
from typing import Iterable, Iterator, Sequence

import seqio

from t5lite import files

T5_VOCAB_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"


class SentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """seqio's vocabulary, loaded lazily, with a clear FileNotFoundError naming a missing model."""

  def _model_context(self):
    if not self._model:
      _check_readable(self.sentencepiece_model_file)
    return super()._model_context()


def _check_readable(path: str) -> None:
  """FileNotFoundError naming a SentencePiece model that is missing or cannot be reached."""
  try:
    found = files.exists(path)
  except Exception as e:  # pylint: disable=broad-except  (gs:// without network or credentials)
    message = getattr(e, "message", str(e)).splitlines()[0]
    raise FileNotFoundError(f"SentencePiece model {path} cannot be read: {message}") from None
  if not found:
    raise FileNotFoundError(f"SentencePiece model not found: {path}")


def get_vocabulary(path: str = T5_VOCAB_PATH, extra_ids: int = 100) -> SentencePieceVocabulary:
  """The SentencePiece model at `path` with `extra_ids` sentinels appended (T5: 32000 + 100)."""
  path = os.fspath(path)
  _check_readable(path)
  return SentencePieceVocabulary(path, extra_ids=extra_ids)


def detokenize(vocabulary: seqio.Vocabulary, ids: Iterable[int]) -> str:
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
