"""GPT2BPEVocabulary against GPT-2's known ids and HF transformers' BartTokenizer, on real C4 text."""
import gzip
import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from t5lite.data.vocab import seqio_vocab as gpt2_vocab

NUM_DOCS = 1000  # every document of the sample


@pytest.fixture(scope="module")
def docs(c4_sample):
  with gzip.open(c4_sample, "rt", encoding="utf-8") as f:
    return [json.loads(line)["text"] for line in f]


@pytest.fixture(scope="module")
def vocab(gpt2_bpe_dir):
  return gpt2_vocab.GPT2BPEVocabulary(gpt2_bpe_dir)


def _write_bart_vocab_json(vocab, gpt2_bpe_dir, out_dir, order=None):
  """An HF BART-style vocab.json (piece -> id, specials at 0..3, <mask> last) + merges.txt."""
  encoder = json.loads((gpt2_bpe_dir / "encoder.json").read_text(encoding="utf-8"))
  piece_of = {i: p for p, i in encoder.items()}
  order = range(len(encoder)) if order is None else order
  table = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
  for k, gpt2_id in enumerate(order):
    table[piece_of[gpt2_id]] = 4 + k
  for k in range(3):
    table[f"madeupword{k:04d}"] = len(table)
  table["<mask>"] = len(table)
  (out_dir / "vocab.json").write_text(json.dumps(table), encoding="utf-8")
  shutil.copy(gpt2_bpe_dir / "vocab.bpe", out_dir / "merges.txt")
  return out_dir


def test_bart_layout(vocab):
  assert (vocab.bos_id, vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2, 3)
  assert vocab.mask_id == 50264
  assert vocab.vocab_size == 50265


def test_known_gpt2_ids(vocab):
  # GPT-2: "Hello world" -> [15496, 995]; " Hello" -> 18435; "." -> 13; BART layout adds 4.
  assert vocab.encode("Hello world") == [15496 + 4, 995 + 4]
  assert vocab.encode(" Hello world") == [18435 + 4, 995 + 4]
  assert vocab.encode(".") == [13 + 4]
  assert vocab.id_for_piece("Ġworld") == 999
  # Special-token strings in raw text stay text (fairseq): '<', 'mask', '>'.
  assert vocab.mask_id not in vocab.encode("a <mask> b")


def test_round_trip_c4(vocab, docs):
  ids = vocab.encode_batch(docs)
  assert all(vocab.decode(x) == d for x, d in zip(ids, docs))
  assert sum(len(x) for x in ids) > 400_000
  assert all(4 <= x.min() and x.max() < vocab.mask_id for x in ids)


def test_tf_ops_match_python(vocab, docs):
  text = docs[0]
  ids_tf = vocab.encode_tf(tf.constant(text)).numpy().tolist()
  assert ids_tf == vocab.encode(text)
  ragged = vocab.encode_tf(tf.constant(docs[:3]))
  assert ragged.to_list() == [vocab.encode(d) for d in docs[:3]]
  padded = tf.constant([ids_tf[:20] + [vocab.eos_id, 7, 8], ids_tf[:23]])
  out = vocab.decode_tf(padded).numpy()
  assert out[0].decode() == vocab.decode(ids_tf[:20]) == vocab.decode(ids_tf[:20] + [2, 7, 8])
  assert out[1].decode() == vocab.decode(ids_tf[:23])


def test_matches_hf_bart_tokenizer_ids(vocab, docs, gpt2_bpe_dir, tmp_path):
  """HF BartTokenizer over a BART-layout vocab.json from the same files gives the same ids."""
  transformers = pytest.importorskip("transformers")
  hf_dir = _write_bart_vocab_json(vocab, gpt2_bpe_dir, tmp_path)
  hf = transformers.BartTokenizer(str(hf_dir / "vocab.json"), str(hf_dir / "merges.txt"))
  assert (hf.bos_token_id, hf.pad_token_id, hf.eos_token_id, hf.unk_token_id, hf.mask_token_id) == (
      0, 1, 2, 3, 50264)
  ours_from_hf_files = gpt2_vocab.GPT2BPEVocabulary(hf_dir)
  for doc in docs[:NUM_DOCS]:
    want = hf(doc)["input_ids"]  # <s> ... </s>
    assert [0] + vocab.encode(doc) + [2] == want
    assert ours_from_hf_files.encode(doc) == want[1:-1]
    assert vocab.decode(want) == hf.decode(want, skip_special_tokens=True,
                                           clean_up_tokenization_spaces=False)


def test_matches_hf_bart_tokenizer_on_gpt2_files(vocab, docs, gpt2_bpe_dir):
  """HF BartTokenizer built from the raw GPT-2 files: same pieces, ids shifted by 4."""
  transformers = pytest.importorskip("transformers")
  hf = transformers.BartTokenizer(str(gpt2_bpe_dir / "encoder.json"), str(gpt2_bpe_dir / "vocab.bpe"))
  for doc in docs[:NUM_DOCS // 2]:
    want = hf(doc, add_special_tokens=False)["input_ids"]
    assert vocab.encode(doc) == [i + 4 for i in want]


def test_fairseq_dict_txt_order(vocab, docs, gpt2_bpe_dir, tmp_path):
  """With a fairseq dict.txt the ids follow its line order (how real BART numbers tokens)."""
  transformers = pytest.importorskip("transformers")
  order = list(range(50257))
  # Put 'Hello' (15496) and 'Ġworld' (995) where facebook/bart-base has them: 31414, 232.
  for gpt2_id, bart_id in ((15496, 31414), (995, 232)):
    j = order.index(gpt2_id)
    order[j], order[bart_id - 4] = order[bart_id - 4], order[j]
  (tmp_path / "dict.txt").write_text("".join(f"{i} {1000 - k}\n" for k, i in enumerate(order)))
  ours = gpt2_vocab.GPT2BPEVocabulary(gpt2_bpe_dir, dict_path=tmp_path / "dict.txt")
  assert ours.encode("Hello world") == [31414, 232]
  assert ours.vocab_size == 50265 and ours.mask_id == 50264
  hf_dir = _write_bart_vocab_json(vocab, gpt2_bpe_dir, tmp_path, order=order)
  hf = transformers.BartTokenizer(str(hf_dir / "vocab.json"), str(hf_dir / "merges.txt"))
  for doc in docs[:20]:
    ids = ours.encode(doc)
    assert [0] + ids + [2] == hf(doc)["input_ids"]
    assert ours.decode(ids) == doc


def test_word_starts(vocab):
  table = vocab.word_start_table()
  ids = vocab.encode("Hello world, it's fine.")
  assert [bool(table[i]) for i in ids] == [False, True, False, True, False, True, False]
  assert table[:4].all() and table[vocab.mask_id]


def test_missing_files_error(tmp_path):
  v = gpt2_vocab.GPT2BPEVocabulary(tmp_path)
  with pytest.raises(FileNotFoundError, match="GPT2_BPE_DIR"):
    v.encode("x")


def test_pickle_and_equality(vocab, gpt2_bpe_dir):
  import pickle
  again = pickle.loads(pickle.dumps(vocab))
  assert again == vocab and hash(again) == hash(vocab)
  assert again.encode("Hello") == vocab.encode("Hello")
  assert np.all(again.word_start_table() == vocab.word_start_table())
