"""BART's vocabulary: GPT-2 byte-level BPE with fairseq's dictionary layout (no TensorFlow).

Id layout (fairseq `Dictionary` + `--bpe gpt2`, as in HF `facebook/bart-*`):

  <s>=0  <pad>=1  </s>=2  <unk>=3  ordinary BPE tokens 4..50260  madeupword0000..0002  <mask>=50264
  vocab_size = 50265

Which id each ordinary token gets depends on the files found in `bpe_dir`:

  1. HF BART files `vocab.json` + `merges.txt` (e.g. a download of facebook/bart-base): the ids
     of `vocab.json`, i.e. exactly HF `BartTokenizer` / fairseq BART.
  2. GPT-2 files `encoder.json` + `vocab.bpe` plus fairseq's `dict.txt` (lines "<gpt2 id> <count>"):
     id = 4 + line number of the GPT-2 id, i.e. exactly fairseq BART (pretrained checkpoints).
  3. GPT-2 files alone: the dictionary in GPT-2 id order, id = GPT-2 id + 4. Same specials, size
     and tokenization as BART, only the numbering of ordinary tokens differs (real BART numbers
     them by corpus frequency). Right for pretraining from scratch; to load facebook/bart
     weights use 1 or 2. Example: "Hello world" -> GPT-2 [15496, 995] -> here [15500, 999]
     (facebook/bart-base: [31414, 232]).

Encoding follows fairseq: raw text is BPE-encoded only; special-token strings appearing in the
text ("<mask>", "</s>") are *not* turned into special ids. No <s>/</s> is added by `encode`
(seqio appends EOS itself). Note seqio's padding and `EncDecFeatureConverter` use id 0, which
BART calls <s>; t5lite's BART objectives therefore never emit <s> (see objectives.py).

The BPE itself runs in the `tokenizers` library (Rust), without TensorFlow; seqio's Vocabulary
(what BART's seqio Tasks hold: TF ops through `tf.numpy_function`) wraps it in seqio_vocab.py.
"""
from __future__ import annotations

import functools
import json
import pathlib
import threading
from typing import Iterable, Sequence

import numpy as np

BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
NUM_SPECIAL = 4
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
MASK = "<mask>"
PAD_TO_MULTIPLE = 8  # fairseq Dictionary.finalize(padding_factor=8) adds madeupwordNNNN


@functools.lru_cache(maxsize=None)
def _byte_decoder() -> dict[str, int]:
  """GPT-2's reversible byte <-> printable-unicode table (openai/gpt-2 encoder.py), inverted."""
  bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
      range(ord("®"), ord("ÿ") + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return {chr(c): b for b, c in zip(bs, cs)}


def _missing(bpe_dir: pathlib.Path) -> FileNotFoundError:
  return FileNotFoundError(
      f"GPT-2 BPE files not found in {bpe_dir}: need encoder.json + vocab.bpe (GPT-2, e.g. "
      "https://openaipublic.blob.core.windows.net/gpt-2/models/124M/{encoder.json,vocab.bpe}) or "
      "vocab.json + merges.txt (HF facebook/bart-base). Set gin `GPT2_BPE_DIR` or pass bpe_dir.")


class GPT2BPE:
  """GPT-2 byte-level BPE with BART/fairseq ids (see the module docstring for the layout)."""

  def __init__(self, bpe_dir: str | pathlib.Path, dict_path: str | pathlib.Path | None = None):
    """Files are read lazily (on first encode/decode), so tasks can be registered without them.

    Args:
      bpe_dir: folder with `encoder.json` + `vocab.bpe` (GPT-2) or `vocab.json` + `merges.txt` (HF BART).
      dict_path: optional fairseq `dict.txt`; default `bpe_dir/dict.txt` when that file exists.
    """
    self.bpe_dir = pathlib.Path(bpe_dir).expanduser()
    self._dict_path = None if dict_path is None else pathlib.Path(dict_path).expanduser()
    self._lock = threading.Lock()
    self._loaded = None  # (tokenizer, gpt2_to_id np.ndarray, id_to_piece list)

  # -- loading ---------------------------------------------------------------------------------
  def _load(self):
    if self._loaded is None:
      with self._lock:
        if self._loaded is None:
          self._loaded = self._build()
    return self._loaded

  def _build(self):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
    d = self.bpe_dir
    if (d / "encoder.json").exists() and (d / "vocab.bpe").exists():
      vocab_file, merges_file, hf_ids = d / "encoder.json", d / "vocab.bpe", False
    elif (d / "vocab.json").exists() and (d / "merges.txt").exists():
      vocab_file, merges_file, hf_ids = d / "vocab.json", d / "merges.txt", True
    else:
      raise _missing(d)
    encoder = json.loads(vocab_file.read_text(encoding="utf-8"))
    merges = []
    for line in merges_file.read_text(encoding="utf-8").splitlines():
      if line and not line.startswith("#version"):
        a, b = line.split(" ")
        merges.append((a, b))
    reserved = set(SPECIALS) | {MASK}
    # The BPE model runs on "raw" ids (GPT-2's, or vocab.json's); `raw_to_id` maps them to ours.
    bpe_vocab = {piece: i for piece, i in encoder.items() if not (hf_ids and piece in reserved)}
    num_raw = max(bpe_vocab.values()) + 1
    id_to_piece: list[str | None] = list(SPECIALS)
    if hf_ids:
      raw_to_id = np.arange(num_raw, dtype=np.int32)
      size = max(max(encoder.values()) + 1, encoder.get(MASK, -1) + 1)
      id_to_piece = [None] * size
      for piece, i in encoder.items():
        id_to_piece[i] = piece
      self._mask_id = encoder.get(MASK, size - 1)
    else:
      dict_path = self._dict_path or (d / "dict.txt" if (d / "dict.txt").exists() else None)
      if dict_path is not None:
        order = [line.split(" ")[0] for line in
                 pathlib.Path(dict_path).read_text(encoding="utf-8").splitlines() if line.strip()]
      else:
        order = [str(i) for i in range(num_raw)]
      raw_to_id = np.full(num_raw, UNK_ID, dtype=np.int32)  # GPT-2 ids absent from dict.txt -> <unk>
      raw_piece = {i: piece for piece, i in encoder.items()}
      for k, sym in enumerate(order):
        if sym.isdigit() and int(sym) < num_raw:
          raw_to_id[int(sym)] = NUM_SPECIAL + k
          id_to_piece.append(raw_piece[int(sym)])
        else:
          id_to_piece.append(sym)  # e.g. madeupword0000 in a real dict.txt
      k = 0
      while len(id_to_piece) % PAD_TO_MULTIPLE:
        id_to_piece.append(f"madeupword{k:04d}")
        k += 1
      self._mask_id = len(id_to_piece)
      id_to_piece.append(MASK)
    tokenizer = Tokenizer(models.BPE(vocab=bpe_vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer, raw_to_id, id_to_piece

  # -- ids -------------------------------------------------------------------------------------
  extra_ids = 0

  @property
  def bos_id(self) -> int:
    return BOS_ID

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def eos_id(self) -> int:
    return EOS_ID

  @property
  def unk_id(self) -> int:
    return UNK_ID

  @property
  def mask_id(self) -> int:
    self._load()
    return self._mask_id

  @property
  def vocab_size(self) -> int:
    return len(self._load()[2])

  def word_start_table(self) -> np.ndarray:
    """bool[vocab_size]: token begins a word (GPT-2 piece starts with 'Ġ', or a special/madeupword).

    fairseq `get_whole_word_mask` + `GPT2BPE.is_beginning_of_word` (decoded text starts with " ").
    """
    id_to_piece = self._load()[2]
    table = np.zeros(len(id_to_piece), dtype=bool)
    for i, piece in enumerate(id_to_piece):
      table[i] = (i < NUM_SPECIAL or piece is None or piece.startswith("Ġ")
                  or piece.startswith("madeupword") or piece == MASK)
    return table

  def id_for_piece(self, piece: str) -> int:
    """Our id for one BPE piece string (e.g. '.' or 'Ġthe')."""
    return self._load()[2].index(piece)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    tokenizer, raw_to_id, _ = self._load()
    return [raw_to_id[np.asarray(e.ids, dtype=np.int64)] for e in tokenizer.encode_batch(list(texts))]

  def encode(self, s: str) -> list[int]:
    tokenizer, raw_to_id, _ = self._load()
    return raw_to_id[np.asarray(tokenizer.encode(s).ids, dtype=np.int64)].tolist()

  def decode(self, ids: Iterable[int]) -> str:
    """The text up to the first EOS (seqio's Vocabulary.decode); skips <s>/<pad>/</s>; writes
    <unk>, <mask> and madeupwords as their names."""
    ids = [int(i) for i in ids]
    if EOS_ID in ids:
      ids = ids[:ids.index(EOS_ID) + 1]
    return self.decode_pieces(ids)

  def decode_pieces(self, ids: Iterable[int]) -> str:
    """Every id's text (no EOS trimming)."""
    _, _, id_to_piece = self._load()
    table = _byte_decoder()
    out = bytearray()
    for i in ids:
      i = int(i)
      if i in (BOS_ID, PAD_ID, EOS_ID):
        continue
      piece = id_to_piece[i] if 0 <= i < len(id_to_piece) else None
      if piece is None:
        piece = SPECIALS[UNK_ID]
      if i == UNK_ID or i == self._mask_id or piece.startswith("madeupword"):
        out += piece.encode("utf-8")
      else:
        out += bytes(table[c] for c in piece)
    return out.decode("utf-8", errors="replace")

  def __eq__(self, other) -> bool:
    return (isinstance(other, GPT2BPE) and self.bpe_dir == other.bpe_dir
            and self._dict_path == other._dict_path)

  def __hash__(self) -> int:
    return hash((GPT2BPE, str(self.bpe_dir), str(self._dict_path)))

  def __repr__(self) -> str:
    return f"GPT2BPE({str(self.bpe_dir)!r})"

  def describe(self) -> dict:
    return {"type": "gpt2_bpe", "dir": str(self.bpe_dir),
            "dict": None if self._dict_path is None else str(self._dict_path)}

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_lock"] = None
    state["_loaded"] = None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()
