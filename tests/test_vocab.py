"""The vocabularies without TensorFlow (data/vocab/sentencepiece.py, gpt2.py) give seqio's ids
and text: what a bare JAX image scores, decodes and feeds the token cache with."""
import gzip
import json
import pickle

import numpy as np
import pytest

from t5lite.data.vocab import gpt2, sentencepiece, seqio_vocab


@pytest.fixture(scope="module")
def texts(c4_sample):
  with gzip.open(c4_sample, "rt", encoding="utf-8") as f:
    return [json.loads(line)["text"] for line in f][:40]


def test_sentencepiece_equals_seqios(t5_vocab_path, texts):
  ours = sentencepiece.load(str(t5_vocab_path))
  theirs = seqio_vocab.get_vocabulary(str(t5_vocab_path))
  assert ours.vocab_size == theirs.vocab_size == 32100
  assert ours.sp_model == theirs.sp_model  # what the token cache's key fingerprints
  assert (ours.eos_id, ours.pad_id, ours.unk_id, ours.extra_ids) == (1, 0, 2, 100)
  for text in texts + ["a <extra_id_0> b", ""]:
    ids = ours.encode(text)
    assert ids == list(theirs.encode(text))
    with_sentinels = ids[:5] + [32099, 32000] + ids[5:] + [1, 7, 8]  # EOS, then more
    assert ours.decode(with_sentinels) == theirs.decode(with_sentinels)
  assert "<extra_id_0>" in ours.decode([32099])
  assert ours.decode([40000, 1]) == theirs.decode([40000, 1])  # out of range -> unk
  copy = pickle.loads(pickle.dumps(ours))
  assert copy == ours and copy.encode(texts[0]) == ours.encode(texts[0])


def test_sentencepiece_missing_model_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="SentencePiece model not found: .*nope.model"):
    sentencepiece.load(str(tmp_path / "nope.model"))


def test_gpt2_core_equals_the_seqio_adapter(gpt2_bpe_dir, texts):
  core = gpt2.GPT2BPE(gpt2_bpe_dir)
  adapter = seqio_vocab.GPT2BPEVocabulary(gpt2_bpe_dir)
  assert core.vocab_size == adapter.vocab_size == 50265 and core.extra_ids == 0
  assert core.mask_id == adapter.mask_id and core.eos_id == adapter.eos_id == 2
  for text in texts[:10]:
    ids = core.encode(text)
    assert ids == list(adapter.encode(text))
    assert core.decode(ids + [2, 50, 60]) == adapter.decode(ids + [2, 50, 60]) == text
  np.testing.assert_array_equal(core.word_start_table(), adapter.word_start_table())
  assert core.describe() == {"type": "gpt2_bpe", "dir": str(gpt2_bpe_dir), "dict": None}
