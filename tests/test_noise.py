"""NumPy objectives (data/objectives/numpy_objectives.py) against the TF preprocessors'
definitions, on real C4 pieces."""
import collections
import gzip
import json
import math
import pickle

import numpy as np
import pytest
import scipy.stats
import seqio
import tensorflow as tf

from t5lite.data.objectives import bart_noise
from t5lite.data.tasks import finetune
from t5lite.data.objectives import numpy_objectives as noise
from t5lite.data.objectives import registry as objectives
from t5lite.data.objectives import tf_objectives as obj
from t5lite.data.objectives import tf_spans as sc
from t5lite.data.tasks import registry as tasks
from t5lite.data.vocab.seqio_vocab import GPT2BPEVocabulary
from t5lite.data.vocab.seqio_vocab import get_vocabulary

SC_LENGTHS = {"inputs": 512, "targets": 114}


# --- fixtures: the real C4 sample as continuous token streams ---------------------------------
@pytest.fixture(scope="module")
def docs(c4_sample):
  with gzip.open(c4_sample, "rt", encoding="utf-8") as f:
    return [json.loads(line)["text"] for line in f]


@pytest.fixture(scope="module")
def t5(t5_vocab_path):
  return get_vocabulary(str(t5_vocab_path))


@pytest.fixture(scope="module")
def t5_stream(docs, t5):
  """The whole sample's T5 ids, documents concatenated (what the cache cuts into pieces)."""
  return np.concatenate([np.asarray(ids, np.int32) for ids in t5.tokenizer.encode(docs)])


@pytest.fixture(scope="module")
def gpt2(gpt2_bpe_dir):
  return GPT2BPEVocabulary(gpt2_bpe_dir)


@pytest.fixture(scope="module")
def gpt2_stream(docs, gpt2):
  return np.concatenate(gpt2.encode_batch(docs[:300])).astype(np.int32)


def make(name, lengths, vocabulary, **params):
  """The NumPy implementation of objective `name` (registry.py) at these lengths."""
  return objectives.objective(name, **params).numpy(lengths, vocabulary)


def pieces(stream, length, n):
  assert len(stream) >= n * length, "the sample is too short for this test"
  return [stream[i * length:(i + 1) * length] for i in range(n)]


def examples(objective, stream, n, seed=0):
  """(piece, example) of the first n raw pieces of the stream, example i keyed on (seed, i)."""
  out = []
  for i, piece in enumerate(pieces(stream, objective.raw_length(), n)):
    out.append((piece, objective(piece, noise.example_rng(seed, i))))
  return out


def strip_eos(x, eos=1):
  assert x[-1] == eos
  return x[:-1]


def merge_spans(inputs, targets, is_sentinel):
  """The original tokens: the inputs' i-th sentinel replaced by the targets' i-th noise run.

  Sentinels split the targets into runs; t5's layout puts a run after its sentinel when the
  piece starts with non-noise (span masks always do), before it otherwise (iid masks may).
  """
  runs = np.split(targets, np.flatnonzero(is_sentinel(targets)))
  runs = iter([r[~is_sentinel(r)] for r in runs if np.any(~is_sentinel(r))])
  restored = []
  for t in inputs:
    restored += list(next(runs)) if is_sentinel(t) else [t]
  assert next(runs, None) is None
  return np.asarray(restored)


# --- sentinel functions and masks vs TF --------------------------------------------------------
def test_sentinel_functions_equal_tf():
  rng = np.random.default_rng(0)
  masks = [np.zeros(0, bool), np.array([True]), np.array([False]), np.array([True, True, False])]
  masks += [rng.random(n) < p for n in (2, 7, 40, 300) for p in (0.1, 0.5, 0.9)]
  masks += [noise.random_spans_noise_mask(n, d, m, noise.example_rng(1, n))
            for n in (2, 3, 10, 568) for d, m in ((0.15, 3.0), (0.5, 3.0))]
  for mask in masks:
    tokens = np.arange(10, 10 + len(mask), dtype=np.int32)
    tf_tokens, tf_mask = tf.constant(tokens), tf.constant(mask, tf.bool)
    np.testing.assert_array_equal(noise.noise_span_to_sentinel(tokens, mask, 1000),
                                  sc.noise_span_to_unique_sentinel(tf_tokens, tf_mask, 1000))
    np.testing.assert_array_equal(noise.nonnoise_span_to_sentinel(tokens, mask, 1000),
                                  sc.nonnoise_span_to_unique_sentinel(tf_tokens, tf_mask, 1000))
    for n in (4, 100):  # UL2 / iid: sentinels repeat after the extra ids
      np.testing.assert_array_equal(
          noise.noise_span_to_sentinel(tokens, mask, 1000, n),
          obj.noise_span_to_sentinel(tf_tokens, tf_mask, 1000, num_sentinels=n))
      np.testing.assert_array_equal(
          noise.nonnoise_span_to_sentinel(tokens, mask, 1000, n),
          obj.nonnoise_span_to_sentinel(tf_tokens, tf_mask, 1000, num_sentinels=n))


@pytest.mark.parametrize("num_sentinels", [0, 5])
def test_span_fast_path_equals_sentinel_functions(num_sentinels):
  """The objectives build inputs/targets from span starts; the same as the mask functions."""
  for n in (0, 1, 2, 3, 5, 64, 568):
    for d, m in ((0.15, 3.0), (0.5, 3.0), (0.15, 64.0)):
      tokens = np.arange(10, 10 + n, dtype=np.int32)
      mask = noise.random_spans_noise_mask(n, d, m, noise.example_rng(7, n))
      inputs, targets = noise._spans(  # pylint: disable=protected-access
          tokens, noise.example_rng(7, n), vocab_size=1000, num_sentinels=num_sentinels,
          noise_density=d, mean_noise_span_length=m,
          sentinels=noise.sentinel_ids(1000, 2, num_sentinels))  # the mask's draws; more spans
      np.testing.assert_array_equal(inputs, noise.noise_span_to_sentinel(
          tokens, mask, 1000, num_sentinels))
      np.testing.assert_array_equal(targets, noise.nonnoise_span_to_sentinel(
          tokens, mask, 1000, num_sentinels))


def _runs(mask):
  """Lengths of the alternating runs of a mask, first run first."""
  change = np.flatnonzero(np.diff(mask.astype(np.int8))) + 1
  return np.diff(np.concatenate([[0], change, [len(mask)]]))


def test_span_mask_counts_equal_tf():
  """num_noise and num_spans for every length, in TF's float32 arithmetic, start/end, spans >= 1."""
  configs = ((0.15, 3.0), (0.15, 8.0), (0.5, 3.0), (0.5, 64.0), (0.15, 64.0), (0.25, 3.0))
  # 190, 350: n * 0.15 rounds up in float32 (28.5000007) and down in float64 (28.4999999).
  lengths = list(range(1, 40)) + [97, 100, 128, 190, 255, 256, 350, 511, 564, 568, 1137]
  seeds = tf.constant([[1, 2], [3, 4]])
  for d, m in configs:
    for n in lengths:
      ours = noise.random_spans_noise_mask(n, d, m, noise.example_rng(0, n))
      theirs = sc.random_spans_noise_mask(n, d, m, seeds).numpy()
      assert ours.shape == theirs.shape == (n,)
      assert ours.sum() == theirs.sum(), (d, m, n)
      assert len(_runs(ours)) == len(_runs(theirs)), (d, m, n)
      if n >= 2:
        # the t5 package's definition, in TF's float32 products and round-half-to-even
        num_noise = min(max(int(np.round(np.float32(n) * np.float32(d))), 1), n - 1)
        assert ours.sum() == num_noise, (d, m, n)
        assert not ours[0] and ours[-1]
        assert len(_runs(ours)) // 2 == max(int(np.round(np.float32(num_noise) / np.float32(m))), 1)
        assert _runs(ours).min() >= 1


def test_prefix_mask_range_equals_tf():
  """The prefix is uniform in [round((1 - 2d)(n - 1)), n - 1]; at n 46, d 0.15 the float32
  product rounds to 32 (float64: 31)."""
  for n, d in ((46, 0.15), (511, 0.5), (506, 0.25), (2, 0.5), (1, 0.5)):
    ours = [int(np.sum(~noise.random_prefix_noise_mask(n, d, noise.example_rng(0, i))))
            for i in range(2000)]
    want = min(n - 1, max(1, int(np.round(np.float32(1 - 2 * d) * np.float32(n - 1)))))
    assert (min(ours), max(ours)) == (want, n - 1), (n, d)
    if n < 100:  # few values: TF's draws cover them too
      theirs = [int(np.sum(~obj.random_prefix_noise_mask(n, d, tf.constant([[i, 3]])).numpy()))
                for i in range(150)]
      assert (min(theirs), max(theirs)) == (want, n - 1), (n, d)


def _composition_pmf(items, parts):
  """P(first part = j), j = 1..items - parts + 1, of a uniform composition into positive parts."""
  total = math.comb(items - 1, parts - 1)
  return np.array([math.comb(items - j - 1, parts - 2) / total
                   for j in range(1, items - parts + 2)])


def _first_runs(mask):
  runs = _runs(mask)
  return runs[0], runs[1]  # first non-noise span, first noise span


def _decile_bins(x, pmf):
  """Bin index of each value of x (values 1..len(pmf)), bins ~10% of the pmf's mass each."""
  edges = np.unique(np.searchsorted(np.cumsum(pmf), np.linspace(0.1, 0.9, 9))) + 2
  return np.searchsorted(edges, x, side="right")


def test_span_length_distribution_matches_tf():
  """Span lengths at 568 tokens (85 noise tokens in 28 spans, 483 non-noise) from numpy and TF.

  The first span of each kind is iid across masks: a two-sample chi-square (decile bins) against
  300 TF masks, and a goodness-of-fit against the exact law of a uniform composition
  (C(N-j-1, k-2) / C(N-1, k-1)) over 5000 numpy masks. Over all spans, the variance of span
  lengths matches TF's within 5 standard errors (the mean is fixed: 85/28, 483/28).
  """
  tf_masks = [sc.random_spans_noise_mask(
      568, 0.15, 3.0, tf.random.experimental.stateless_split([s, 11], 2)).numpy()
              for s in range(300)]
  np_masks = [noise.random_spans_noise_mask(568, 0.15, 3.0, noise.example_rng(5, i))
              for i in range(5000)]
  tf_first = np.array([_first_runs(m) for m in tf_masks])  # [300, 2]
  np_first = np.array([_first_runs(m) for m in np_masks])  # [5000, 2]
  for column, items in ((0, 483), (1, 85)):
    pmf = _composition_pmf(items, 28)
    table = [np.bincount(_decile_bins(x[:, column], pmf), minlength=10)
             for x in (np_first, tf_first)]  # [2, bins]
    table = np.stack(table)
    assert scipy.stats.chi2_contingency(table[:, table.sum(0) > 0]).pvalue > 1e-3
    observed = np.bincount(np_first[:, column], minlength=len(pmf) + 1)[1:]
    expected = pmf * len(np_masks)
    keep = expected >= 5  # chi-square needs enough expected counts; the tail pooled
    obs = np.append(observed[keep], observed[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    assert scipy.stats.chisquare(obs, exp).pvalue > 1e-3
  for parity in (0, 1):  # non-noise runs, noise runs
    tf_runs = np.array([_runs(m)[parity::2] for m in tf_masks])  # [300, 28]
    np_runs = np.array([_runs(m)[parity::2] for m in np_masks])  # [5000, 28]
    assert tf_runs.mean() == pytest.approx(np_runs.mean(), abs=1e-9)
    # The mean is fixed, so a mask's mean square carries the variance; masks are iid.
    tf_sq, np_sq = (tf_runs ** 2).mean(1), (np_runs ** 2).mean(1)  # [masks]
    se = np.sqrt(tf_sq.var() / len(tf_sq) + np_sq.var() / len(np_sq))
    assert abs(tf_sq.mean() - np_sq.mean()) < 5 * se


# --- example_rng ---------------------------------------------------------------------------------
def test_example_rng_is_keyed_philox_and_sound():
  a = noise.example_rng(3, 17).integers(0, 2**62, 8)
  b = np.random.Generator(np.random.Philox(key=(3 << 64) | 17)).integers(0, 2**62, 8)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, noise.example_rng(17, 3).integers(0, 2**62, 8))
  # First draws over consecutive indices: uniform, and uncorrelated with the neighbour's.
  u = np.array([noise.example_rng(0, i).random() for i in range(20000)])
  assert scipy.stats.kstest(u, "uniform").pvalue > 1e-3
  assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 4 / np.sqrt(len(u))
  with pytest.raises(ValueError, match="seed, index"):
    noise.example_rng(-1, 0)


def test_determinism(t5, t5_stream):
  objective = make("span_corruption", SC_LENGTHS, t5)
  piece = t5_stream[:objective.raw_length()]
  once = objective(piece, noise.example_rng(9, 123))
  again = objective(piece, noise.example_rng(9, 123))
  np.testing.assert_array_equal(once["inputs"], again["inputs"])
  np.testing.assert_array_equal(once["targets"], again["targets"])
  assert not np.array_equal(once["inputs"], objective(piece, noise.example_rng(9, 124))["inputs"])
  assert not np.array_equal(once["inputs"], objective(piece, noise.example_rng(10, 123))["inputs"])
  # Any call order (other workers, a restart) gives example i the same noise.
  ps = pieces(t5_stream, objective.raw_length(), 20)
  forward = [objective(p, noise.example_rng(9, i)) for i, p in enumerate(ps)]
  order = np.random.default_rng(0).permutation(20)
  shuffled = {i: objective(ps[i], noise.example_rng(9, i)) for i in order}
  for i, ex in enumerate(forward):
    np.testing.assert_array_equal(ex["inputs"], shuffled[i]["inputs"])
    np.testing.assert_array_equal(ex["targets"], shuffled[i]["targets"])


def test_objectives_pickle(t5, gpt2):
  """grain's worker processes get the Objective pickled: the same examples come back."""
  tokens = np.arange(3, 1003, dtype=np.int32)
  for name, vocab in (("span_corruption", t5), ("bart_denoising", gpt2), ("prefix_lm", t5)):
    objective = make(name, {"inputs": 512, "targets": 512}, vocab)
    clone = pickle.loads(pickle.dumps(objective))
    a, b = objective(tokens, noise.example_rng(0, 5)), clone(tokens, noise.example_rng(0, 5))
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    np.testing.assert_array_equal(a["targets"], b["targets"])


# --- span corruption and UL2 on real C4 --------------------------------------------------------
def test_span_corruption_on_c4(t5, t5_stream):
  objective = make("span_corruption", SC_LENGTHS, t5)
  assert objective.raw_length() == 568
  first_sentinel = t5.vocab_size - 1  # <extra_id_0> = 32099
  is_sentinel = lambda t: t > first_sentinel - 100
  noise_tokens = clean = spans = 0
  for piece, ex in examples(objective, t5_stream, 400):
    inputs, targets = ex["inputs"], ex["targets"]
    assert inputs.dtype == targets.dtype == np.int32
    # A full 568-token piece: 483 kept + 28 sentinels + EOS, 85 noise + 28 sentinels + EOS.
    assert len(inputs) == 512 and len(targets) == 114
    inputs, targets = strip_eos(inputs), strip_eos(targets)
    np.testing.assert_array_equal(merge_spans(inputs, targets, is_sentinel), piece)
    k = int(np.sum(is_sentinel(targets)))
    np.testing.assert_array_equal(targets[is_sentinel(targets)],
                                  np.arange(first_sentinel, first_sentinel - k, -1))
    np.testing.assert_array_equal(inputs[is_sentinel(inputs)], targets[is_sentinel(targets)])
    spans += k
    noise_tokens += len(targets) - k
    clean += len(inputs) - k
  assert abs(noise_tokens / (noise_tokens + clean) - 0.15) < 0.01
  assert abs(noise_tokens / spans - 3.0) < 0.15


def test_short_last_piece(t5, t5_stream):
  """The stream's last piece may be short: the TF definition's counts at its length."""
  objective = make("span_corruption", SC_LENGTHS, t5)
  for n in (0, 1, 2, 5, 100, 567):
    ex = objective(t5_stream[:n], noise.example_rng(0, n))
    inputs, targets = strip_eos(ex["inputs"]), strip_eos(ex["targets"])
    num_noise, num_spans = noise.span_counts(n, 0.15, 3.0)
    if n >= 2:
      assert len(targets) == num_noise + num_spans and len(inputs) == n - num_noise + num_spans
      np.testing.assert_array_equal(
          merge_spans(inputs, targets, lambda t: t >= t5.vocab_size - 100), t5_stream[:n])


def test_ul2_denoisers_on_c4(t5, t5_stream):
  """test_objectives.test_ul2_denoisers' expectations, and exact recovery, at 256 and 512."""
  for lengths in ({"inputs": 256, "targets": 256}, {"inputs": 512, "targets": 512}):
    for suffix, name, kwargs, _ in objectives.UL2_DENOISERS:
      kind = suffix.split("_")[1]  # r, x or s
      mode = kwargs["mode"]
      objective = make(name, lengths, t5, **kwargs)
      prefix = t5.encode(mode)
      exs = examples(objective, t5_stream, 200 if kind == "s" else 30)
      for _, ex in exs:
        assert list(ex["inputs"][:len(prefix)]) == prefix
        assert len(ex["inputs"]) <= lengths["inputs"] and len(ex["targets"]) <= lengths["targets"]
      stripped = [(p, strip_eos(ex["inputs"])[len(prefix):], strip_eos(ex["targets"]))
                  for p, ex in exs]
      rate = kwargs["noise_density"]
      if kind == "s":
        fractions = [len(t) / (len(t) + len(i)) for _, i, t in stripped]
        assert abs(np.mean(fractions) - rate) < 0.04 and max(fractions) <= 0.51, suffix
        for piece, inputs, targets in stripped:  # prefix + targets = the original
          np.testing.assert_array_equal(np.concatenate([inputs, targets]), piece)
        continue
      mean = kwargs["mean_noise_span_length"]
      is_sentinel = lambda t: t >= t5.vocab_size - 100
      for piece, inputs, targets in stripped:
        noise_tokens = int(np.sum(~is_sentinel(targets)))
        kept = int(np.sum(~is_sentinel(inputs)))
        spans = int(np.sum(is_sentinel(inputs)))
        assert noise_tokens == np.clip(np.round((noise_tokens + kept) * rate), 1,
                                       noise_tokens + kept - 1), suffix
        assert spans == max(np.round(noise_tokens / mean), 1), suffix
        # Sentinels repeat after the 100 extra ids (X (3, 0.5) at 512: ~128 spans).
        np.testing.assert_array_equal(targets[is_sentinel(targets)],
                                      noise.sentinel_ids(t5.vocab_size, spans, 100))
        np.testing.assert_array_equal(inputs[is_sentinel(inputs)], targets[is_sentinel(targets)])
        np.testing.assert_array_equal(merge_spans(inputs, targets, is_sentinel), piece)
        assert len(inputs) + len(prefix) + 1 >= lengths["inputs"] - 6


# --- the other T5 objectives on real C4 ----------------------------------------------------------
def test_t5_objectives_on_c4(t5, t5_stream):
  """test_objectives' expectations for prefix LM, iid, BERT-style and deshuffling."""
  lengths = {"inputs": 512, "targets": 512}
  prefix_lm = make("prefix_lm", lengths, t5)
  fractions = []
  for piece, ex in examples(prefix_lm, t5_stream, 100):
    inputs, targets = strip_eos(ex["inputs"]), strip_eos(ex["targets"])
    np.testing.assert_array_equal(np.concatenate([inputs, targets]), piece)
    fractions.append(len(targets) / len(piece))
  assert len(piece) == 511
  assert 0.4 < np.mean(fractions) < 0.6 and min(fractions) < 0.1 and max(fractions) > 0.9

  iid_targets = objectives.required_targets_length("iid_denoising", 512)
  iid = make("iid_denoising", {"inputs": 512, "targets": iid_targets}, t5)
  is_sentinel = lambda t: t >= t5.vocab_size - 100
  noise_tokens = total = 0
  for piece, ex in examples(iid, t5_stream, 150):
    inputs, targets = strip_eos(ex["inputs"]), strip_eos(ex["targets"])
    n = int(np.sum(~is_sentinel(targets)))
    noise_tokens += n
    total += n + int(np.sum(~is_sentinel(inputs)))
    if len(ex["targets"]) < iid_targets:  # untrimmed: the original back
      np.testing.assert_array_equal(merge_spans(inputs, targets, is_sentinel), piece)
  assert abs(noise_tokens / total - 0.15) < 0.01

  bert = make("bert_style_denoising", lengths, t5)
  sentinel = t5.vocab_size - 1
  noised = random = total = 0
  for piece, ex in examples(bert, t5_stream, 150):
    inputs, targets = ex["inputs"], ex["targets"]
    np.testing.assert_array_equal(strip_eos(targets), piece)
    assert len(inputs) == len(targets)
    is_sentinel = inputs == sentinel
    is_random = (inputs != targets) & ~is_sentinel
    noised += is_sentinel.sum() + is_random.sum()
    random += is_random.sum()
    total += len(targets) - 1
    assert np.all(inputs[is_random] >= 3) and np.all(inputs < t5.vocab_size)
  assert abs(noised / total - 0.15) < 0.01
  assert abs(random / noised - 0.1) < 0.015  # (a random id equal to the original is unseen)

  deshuffling = make("deshuffling", lengths, t5)
  for piece, ex in examples(deshuffling, t5_stream, 20):
    inputs, targets = strip_eos(ex["inputs"]), strip_eos(ex["targets"])
    np.testing.assert_array_equal(targets, piece)
    assert sorted(inputs) == sorted(targets) and list(inputs) != list(targets)


# --- BART on real C4 with GPT-2 BPE ------------------------------------------------------------
BART_LENGTHS = {"inputs": 512, "targets": 512}


def test_bart_objectives_call_bart_noise_with_their_arguments(gpt2, gpt2_stream):
  """Each BART objective is bart_noise.bart_noise with its preprocessor's arguments."""
  info = bart_noise.bart_vocab_info(gpt2)
  expected = {
      "bart_denoising": dict(permute_ratio=1.0, mask_ratio=0.3, poisson_lambda=3.0,
                             random_ratio=0.1, replace_length=1),
      "bart_text_infilling": dict(mask_ratio=0.3, poisson_lambda=3.0, random_ratio=0.1,
                                  replace_length=1),
      "bart_sentence_permutation": dict(permute_ratio=1.0),
      "bart_token_deletion": dict(mask_ratio=0.3, poisson_lambda=None, random_ratio=0.0,
                                  replace_length=0, whole_words=False),
      "bart_document_rotation": dict(rotate_ratio=1.0),
  }
  for name, kwargs in expected.items():
    objective = make(name, BART_LENGTHS, gpt2)
    assert objective.raw_length() == 511
    for i, piece in enumerate(pieces(gpt2_stream, 511, 5)):
      ex = objective(piece, noise.example_rng(2, i))
      want = bart_noise.bart_noise(piece, noise.example_rng(2, i), info, **kwargs)
      np.testing.assert_array_equal(strip_eos(ex["inputs"], gpt2.eos_id), want[:511])
      np.testing.assert_array_equal(strip_eos(ex["targets"], gpt2.eos_id), piece)
  # A preprocessor argument reaches bart_noise.
  deletion = make("bart_token_deletion", BART_LENGTHS, gpt2, ratio=0.5)
  ex = deletion(gpt2_stream[:511], noise.example_rng(0, 0))
  assert len(ex["inputs"]) - 1 == 511 - math.ceil(0.5 * 511)


def test_bart_statistics_on_c4(gpt2, gpt2_stream):
  """test_objectives' expectations for deletion, rotation, permutation and denoising."""
  eos = gpt2.eos_id
  run = lambda name, n: examples(make(name, BART_LENGTHS, gpt2), gpt2_stream, n)
  for piece, ex in run("bart_token_deletion", 30):
    inputs, targets = list(strip_eos(ex["inputs"], eos)), list(strip_eos(ex["targets"], eos))
    assert len(inputs) == len(targets) - int(np.ceil(0.3 * len(targets)))
    it = iter(targets)  # a subsequence of the original
    assert all(any(t == u for u in it) for t in inputs)
  for piece, ex in run("bart_document_rotation", 30):
    inputs, targets = list(strip_eos(ex["inputs"], eos)), list(strip_eos(ex["targets"], eos))
    assert any(targets[k:] + targets[:k] == inputs for k in range(len(targets)))
  full_stop = gpt2.id_for_piece(".")
  changed = 0
  for piece, ex in run("bart_sentence_permutation", 60):
    inputs = strip_eos(ex["inputs"], eos)
    stops = piece == full_stop
    ends = np.flatnonzero(stops & ~np.concatenate([[False], stops[:-1]])) + 1
    ends = np.unique(np.concatenate([ends, [len(piece)]]))
    sentences = collections.Counter(tuple(s) for s in np.split(piece, ends[:-1]) if len(s))
    assert collections.Counter(
        tuple(s) for s in _resplit(inputs, sentences)) == sentences
    changed += not np.array_equal(inputs, piece)
  assert changed > 50
  for name in ("bart_denoising", "bart_text_infilling"):
    exs = run(name, 60)
    stream = np.concatenate([strip_eos(ex["targets"], eos) for _, ex in exs])
    np.testing.assert_array_equal(stream, gpt2_stream[:len(stream)])
    assert np.mean([(ex["inputs"] == gpt2.mask_id).sum() for _, ex in exs]) > 20
    assert np.mean([len(ex["inputs"]) for _, ex in exs]) < 0.85 * 512


def _resplit(tokens, sentences):
  """Greedily re-splits tokens into the given sentences (a Counter of tuples)."""
  by_first = collections.defaultdict(list)
  for s in sentences:
    by_first[s[0]].append(s)
  pos, found = 0, collections.Counter()
  while pos < len(tokens):
    match = [s for s in by_first[tokens[pos]] if tuple(tokens[pos:pos + len(s)]) == s
             and found[s] < sentences[s]]
    assert match, "output is not a sequence of the original sentences"
    s = max(match, key=len)
    found[s] += 1
    pos += len(s)
    yield s


# --- every objective: types, lengths, trimming -------------------------------------------------
@pytest.mark.parametrize("name", objectives.OBJECTIVE_NAMES)
def test_every_objective_fits_its_lengths(name, t5, t5_stream):
  kwargs = dict(noise_density=0.5, mean_noise_span_length=3.0) if name == "ul2_denoiser" else {}
  inputs_length = 128
  mode = {"ul2_denoiser": objectives.UL2_R, "ul2_prefix_lm": objectives.UL2_S}.get(name)
  targets_length = objectives.required_targets_length(name, inputs_length,
                                               len(t5.encode(mode)) if mode else 0, **kwargs)
  lengths = {"inputs": inputs_length, "targets": targets_length}
  objective = make(name, lengths, t5, **kwargs)
  assert objective.name == name
  raw = objective.raw_length()
  for n in (raw, raw // 2, 1, 3 * raw):  # the last, short piece; a too-long one gets trimmed
    for i in range(5):
      ex = objective(t5_stream[i * n:(i + 1) * n], noise.example_rng(1, i))
      assert set(ex) == {"inputs", "targets"}
      for key in ("inputs", "targets"):
        assert ex[key].dtype == np.int32 and ex[key].ndim == 1
        assert 1 <= len(ex[key]) <= lengths[key] and ex[key][-1] == 1
        assert np.all(ex[key][:-1] != 1)  # EOS only at the end
      if n >= raw and name in ("span_corruption", "ul2_denoiser", "bert_style_denoising",
                               "deshuffling"):
        assert len(ex["inputs"]) >= inputs_length - 1  # a full piece fills the inputs


def test_too_short_targets_and_bad_arguments(t5):
  with pytest.raises(ValueError, match=r"UL2 X-denoiser \(mean 3, rate 0.5\) needs targets >= 508"):
    make("ul2_denoiser", SC_LENGTHS, t5, mode=objectives.UL2_X, noise_density=0.5,
                    mean_noise_span_length=3)
  with pytest.raises(ValueError, match="span_corruption needs targets >= 114 for inputs 512"):
    make("span_corruption", {"inputs": 512, "targets": 100}, t5)
  with pytest.raises(ValueError, match="unknown objective 'nope'"):
    make("nope", SC_LENGTHS, t5)
  with pytest.raises(ValueError, match="ul2_denoiser needs the arguments"):
    make("ul2_denoiser", SC_LENGTHS, t5)
  with pytest.raises(ValueError, match="prefix_lm has no argument 'mean_noise_span_length'"):
    make("prefix_lm", {"inputs": 512, "targets": 512}, t5, mean_noise_span_length=3)
  with pytest.raises(ValueError, match="noise density must be <= 0.5"):
    make("prefix_lm", {"inputs": 512, "targets": 512}, t5, noise_density=0.6)


# --- for_task on the registered tasks ----------------------------------------------------------
def test_for_task_on_demo_tasks():
  get = tasks.get_task_or_mixture
  objective = tasks.numpy_objective(get("demo_span_corruption"), SC_LENGTHS)
  assert objective.name == "span_corruption" and objective.raw_length() == 568
  vocab = get("demo_span_corruption").output_features["targets"].vocabulary
  lengths = {"inputs": 512, "targets": 512}
  for suffix, name, kwargs, _ in objectives.UL2_DENOISERS:
    objective = tasks.numpy_objective(get(f"demo_{suffix}"), lengths)
    mode = kwargs["mode"]
    assert objective.name == name
    assert objective.kwargs["mode"] == mode
    assert list(objective.prefix) == vocab.encode(mode)
    assert objective.raw_length() == objectives.raw_tokens_length(
        objective.name, 512, len(objective.prefix), **kwargs)
    ex = objective(np.arange(3, 3 + objective.raw_length()), noise.example_rng(0, 0))
    assert list(ex["inputs"][:len(objective.prefix)]) == vocab.encode(mode)
  for task, name, raw in (("demo_bart_denoising", "bart_denoising", 511),
                          ("demo_bart_token_deletion", "bart_token_deletion", 511),
                          ("demo_prefix_lm", "prefix_lm", 511),
                          ("demo_iid_denoising", "iid_denoising", 511),
                          ("demo_bert_denoising", "bert_style_denoising", 511),
                          ("demo_deshuffling", "deshuffling", 511)):
    objective = tasks.numpy_objective(get(task), lengths)
    assert (objective.name, objective.raw_length()) == (name, raw), task
  ex = tasks.numpy_objective(get("demo_bart_text_infilling"), lengths)(
      np.arange(3, 514), noise.example_rng(0, 0))
  assert (ex["inputs"] == vocab.vocab_size - 1).sum() > 3  # <mask> = <extra_id_0>


def test_for_task_errors_name_the_task(tmp_path):
  get = tasks.get_task_or_mixture
  with pytest.raises(ValueError, match=r"task 'demo_ul2_x_mean3_rate50': UL2 X-denoiser .* "
                                       r"needs targets >= \d+ for inputs 512"):
    tasks.numpy_objective(get("demo_ul2_x_mean3_rate50"), SC_LENGTHS)
  with pytest.raises(ValueError, match="task 'demo_bart_denoising': bart_denoising needs targets"):
    tasks.numpy_objective(get("demo_bart_denoising"), SC_LENGTHS)
  train = tmp_path / "train.jsonl"
  train.write_text(json.dumps({"inputs": "a b", "targets": "b a"}) + "\n")
  name = finetune.register_user_task(name="test_noise_finetune", train_files=str(train))
  try:
    with pytest.raises(ValueError, match="task 'test_noise_finetune' has no pretraining objective"):
      tasks.numpy_objective(get(name), SC_LENGTHS)
  finally:
    seqio.TaskRegistry.remove(name)
  with pytest.raises(ValueError, match="needs a seqio.Task"):
    tasks.numpy_objective(get("demo_ul2"), SC_LENGTHS)
