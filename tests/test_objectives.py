"""Invariants and statistics of the BART, T5 and UL2 objectives on the real C4 sample."""
import collections
import gzip
import json

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5lite.data.objectives import bart_noise
from t5lite.data.objectives import registry as objectives
from t5lite.data.objectives import tf_objectives as obj
from t5lite.data.sources import json_lines, sources
from t5lite.data.tasks import registry as tasks
from t5lite.data.vocab.seqio_vocab import GPT2BPEVocabulary
from t5lite.data.objectives.tf_spans import noise_span_to_unique_sentinel
from t5lite.data.vocab.seqio_vocab import get_vocabulary

P = "testc4"  # task-name prefix of the objectives registered on the C4 sample
LENGTHS = {"inputs": 512, "targets": 512}


@pytest.fixture(scope="module")
def vocabs(t5_vocab_path, gpt2_bpe_dir):
  return get_vocabulary(str(t5_vocab_path)), GPT2BPEVocabulary(gpt2_bpe_dir)


@pytest.fixture(scope="module")
def registered(c4_sample, vocabs):
  t5, gpt2 = vocabs
  return tasks.register_source_tasks(P, json_lines.json_source(str(c4_sample)), t5, gpt2)


@pytest.fixture(scope="module")
def docs(c4_sample):
  with gzip.open(c4_sample, "rt", encoding="utf-8") as f:
    return [json.loads(line)["text"] for line in f]


def examples(name, n, lengths=None, seed=0):
  """The first n preprocessed (unpacked) examples of a registered task or mixture, in order."""
  provider = tasks.get_task_or_mixture(name)
  ds = provider.get_dataset(lengths or LENGTHS, split="train", shuffle=False, seed=seed,
                            num_epochs=None if n > 800 else 1)
  return list(ds.take(n).as_numpy_iterator())


def strip_eos(x, eos):
  x = list(x)
  assert x[-1] == eos
  return x[:-1]


# --- BART ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpt2_chunks(docs, vocabs):
  """Real GPT-2 token chunks of 511 (one example's raw tokens at inputs 512)."""
  stream = np.concatenate(vocabs[1].encode_batch(docs[:300]))
  return [stream[i:i + 511] for i in range(0, len(stream) - 511, 511)]


def _unique(chunk, gpt2):
  """Stand-in ids 4..4+n (so every output token names its source position), same word starts."""
  real = gpt2.word_start_table()
  table = np.ones(4 + len(chunk), dtype=bool)
  table[4:] = real[chunk]
  full_stop = gpt2.id_for_piece(".")
  stops = np.flatnonzero(chunk == full_stop)
  info = bart_noise.BartVocabInfo(mask_id=10**6, full_stop_id=4 + (stops[0] if len(stops) else 10**7),
                           word_start=table, random_low=2 * 10**6, random_high=2 * 10**6 + 1)
  return np.arange(4, 4 + len(chunk)), info, table


def test_text_infilling_statistics(gpt2_chunks, vocabs):
  rng = np.random.default_rng(0)
  masked_words = words = random_masks = masks = inserts = 0
  lengths = []
  for chunk in gpt2_chunks[:300]:
    ids, info, table = _unique(chunk, vocabs[1])
    table[4] = True  # the first token starts a word
    stats = {}
    out = bart_noise.bart_noise(ids, rng, info, mask_ratio=0.3, poisson_lambda=3.0, random_ratio=0.1,
                         stats=stats)
    assert stats["span_lengths"].sum() == stats["num_to_mask"]  # the word budget
    assert stats["num_to_mask"] == int(np.ceil(0.3 * table[4:].sum()))
    lengths.append(stats["span_lengths"])
    inserts += stats["num_inserts"]
    kept = out[out < 10**6]
    assert np.all(np.diff(kept) > 0)  # order preserved
    noise = (out == info.mask_id) | (out == info.random_low)
    masks += noise.sum()
    random_masks += (out == info.random_low).sum()
    # Removed positions form whole words: each removed run starts at a word start and the
    # token after it (if any) is a word start.
    removed = np.setdiff1d(ids, kept)
    runs = np.split(removed, np.flatnonzero(np.diff(removed) > 1) + 1) if len(removed) else []
    for run in runs:
      assert table[run[0]]
      assert run[-1] + 1 >= 4 + len(chunk) or table[run[-1] + 1]
    words += table[4:].sum()
    masked_words += table[removed].sum()
  lengths = np.concatenate(lengths)
  # Span lengths ~ Poisson(3) without the zeros (mean 3 / (1 - e^-3) = 3.157); zeros -> inserts.
  assert abs(lengths.mean() - 3 / (1 - np.exp(-3))) < 0.1
  assert abs(inserts / (inserts + len(lengths)) - np.exp(-3)) < 0.015
  # One <mask> (or random token) per span, except where an earlier span runs over a later
  # span's start and deletes its <mask> (fairseq keeps overlapping spans).
  assert 0.75 * (len(lengths) + inserts) < masks <= len(lengths) + inserts
  assert abs(random_masks / masks - 0.1) < 0.02
  # 30% of words are drawn; overlapping spans (fairseq keeps them) leave ~26% masked.
  assert 0.24 < masked_words / words < 0.30


def test_sentence_permutation_moves_whole_sentences(gpt2_chunks, vocabs):
  gpt2 = vocabs[1]
  full_stop = gpt2.id_for_piece(".")
  rng = np.random.default_rng(1)
  changed = 0
  for chunk in gpt2_chunks[:100]:
    info = bart_noise.bart_vocab_info(gpt2)
    out = bart_noise.bart_noise(chunk, rng, info, permute_ratio=1.0)
    # Sentence = up to and including a '.' that does not follow a '.'; the last ends the chunk.
    stops = chunk == full_stop
    ends = np.flatnonzero(stops & ~np.concatenate([[False], stops[:-1]])) + 1
    ends = np.unique(np.concatenate([ends, [len(chunk)]]))
    sentences = collections.Counter(
        tuple(s) for s in np.split(chunk, ends[:-1]) if len(s))
    # Greedily re-split the output into the original sentences.
    pos, found = 0, collections.Counter()
    by_first = collections.defaultdict(list)
    for s in sentences:
      by_first[s[0]].append(s)
    while pos < len(out):
      match = [s for s in by_first[out[pos]] if tuple(out[pos:pos + len(s)]) == s
               and found[s] < sentences[s]]
      assert match, "output is not a sequence of the original sentences"
      s = max(match, key=len)
      found[s] += 1
      pos += len(s)
    assert found == sentences
    changed += not np.array_equal(out, chunk)
  assert changed > 90


def test_token_deletion_rotation_and_pipeline(registered, vocabs, docs):
  gpt2 = vocabs[1]
  for ex in examples(f"{P}_bart_token_deletion", 30):
    inputs, targets = strip_eos(ex["inputs"], 2), strip_eos(ex["targets"], 2)
    assert len(inputs) == len(targets) - int(np.ceil(0.3 * len(targets)))
    it = iter(targets)  # a subsequence of the original
    assert all(any(t == u for u in it) for t in inputs)
  for ex in examples(f"{P}_bart_document_rotation", 30):
    inputs, targets = strip_eos(ex["inputs"], 2), strip_eos(ex["targets"], 2)
    k = next(k for k in range(len(targets)) if targets[k:] + targets[:k] == inputs)
    assert 0 <= k < len(targets)
  # bart_denoising: targets are the clean stream, in order; inputs contain <mask>s.
  exs = examples(f"{P}_bart_denoising", 60)
  stream = np.concatenate([strip_eos(ex["targets"], 2) for ex in exs])
  want = np.concatenate(gpt2.encode_batch(docs[:128]))[:len(stream)]
  np.testing.assert_array_equal(stream, want)
  assert all(len(ex["targets"]) == 512 for ex in exs[:-1])
  assert np.mean([(ex["inputs"] == gpt2.mask_id).sum() for ex in exs]) > 20
  assert np.mean([len(ex["inputs"]) for ex in exs]) < 0.85 * 512


def test_bart_is_deterministic(registered):
  a = examples(f"{P}_bart_denoising", 3, seed=3)
  b = examples(f"{P}_bart_denoising", 3, seed=3)
  c = examples(f"{P}_bart_denoising", 3, seed=4)
  assert all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, b))
  assert not all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, c))


# --- T5 ----------------------------------------------------------------------------------------
def test_prefix_lm_concatenates_to_original(registered, vocabs, docs):
  t5 = vocabs[0]
  exs = examples(f"{P}_prefix_lm", 100)
  parts = [strip_eos(ex["inputs"], 1) + strip_eos(ex["targets"], 1) for ex in exs]
  stream = np.concatenate(parts)
  want = np.concatenate([t5.encode(d) for d in docs[:128]])[:len(stream)]
  np.testing.assert_array_equal(stream, want)
  assert all(len(p) == 511 for p in parts[:-1])
  fractions = [len(ex["targets"]) / 511 for ex in exs]
  assert 0.4 < np.mean(fractions) < 0.6 and min(fractions) < 0.1 and max(fractions) > 0.9


def _sentinel_stats(ex, vocab_size, eos=1):
  inputs, targets = strip_eos(ex["inputs"], eos), strip_eos(ex["targets"], eos)
  sentinel = lambda t: t >= vocab_size - 100
  noise = [t for t in targets if not sentinel(t)]
  spans = sum(sentinel(t) for t in inputs)
  kept = sum(not sentinel(t) for t in inputs)
  return len(noise), kept, spans


def test_iid_denoising_density(registered, vocabs):
  noise = total = 0
  for ex in examples(f"{P}_iid_denoising", 150):
    n, kept, _ = _sentinel_stats(ex, vocabs[0].vocab_size)
    noise += n
    total += n + kept
  assert abs(noise / total - 0.15) < 0.01


def test_bert_style_denoising(registered, vocabs):
  sentinel = vocabs[0].vocab_size - 1
  noised = random = total = 0
  for ex in examples(f"{P}_bert_denoising", 150):
    inputs, targets = np.asarray(ex["inputs"]), np.asarray(ex["targets"])
    assert len(inputs) == len(targets)
    is_sentinel = inputs == sentinel
    is_random = (inputs != targets) & ~is_sentinel
    noised += is_sentinel.sum() + is_random.sum()
    random += is_random.sum()
    total += len(targets) - 1
    assert np.all(inputs[is_random] >= 3)
  assert abs(noised / total - 0.15) < 0.01
  assert abs(random / noised - 0.1) < 0.015  # (a random id equal to the original is unseen)


def test_deshuffling_is_a_permutation(registered):
  for ex in examples(f"{P}_deshuffling", 20):
    inputs, targets = strip_eos(ex["inputs"], 1), strip_eos(ex["targets"], 1)
    assert sorted(inputs) == sorted(targets) and inputs != targets


# --- UL2 ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ul2_denoisers(registered, vocabs):
  t5 = vocabs[0]
  lengths = {"inputs": 256, "targets": 256}
  for suffix, _, kwargs, _ in objectives.UL2_DENOISERS:
    kind = suffix.split("_")[1]  # r, x or s
    mode = t5.encode(kwargs["mode"])
    exs = examples(f"{P}_{suffix}", 25, lengths)
    assert all(list(ex["inputs"][:len(mode)]) == mode for ex in exs)
    stripped = [{**ex, "inputs": ex["inputs"][len(mode):]} for ex in exs]
    rate = kwargs["noise_density"]
    if kind == "s":
      fractions = [(len(ex["targets"]) - 1) / (len(ex["targets"]) + len(ex["inputs"]) - 2)
                   for ex in stripped[:-1]]
      assert abs(np.mean(fractions) - rate) < 0.04 and max(fractions) <= 0.51
      continue
    mean = kwargs["mean_noise_span_length"]
    for ex in stripped[:-1]:  # t5's random_spans_noise_mask counts, exactly
      noise, kept, spans = _sentinel_stats(ex, t5.vocab_size)
      assert noise == np.clip(np.round((noise + kept) * rate), 1, noise + kept - 1), suffix
      assert spans == max(np.round(noise / mean), 1), suffix
    assert all(len(ex["inputs"]) >= 250 for ex in exs[:-1])


def test_sentinels_repeat_after_extra_ids():
  tokens = tf.range(10, 22)  # 12 tokens, 6 one-token noise spans
  mask = tf.constant([False, True] * 6)
  inputs = obj.noise_span_to_sentinel(tokens, mask, 1000, num_sentinels=4).numpy().tolist()
  assert inputs == [10, 999, 12, 998, 14, 997, 16, 996, 18, 999, 20, 998]
  targets = obj.nonnoise_span_to_sentinel(tokens, mask, 1000, num_sentinels=4).numpy().tolist()
  assert targets == [999, 11, 998, 13, 997, 15, 996, 17, 999, 19, 998, 21]
  # Up to num_sentinels spans it is t5's noise_span_to_unique_sentinel.
  np.testing.assert_array_equal(
      obj.noise_span_to_sentinel(tokens, mask, 1000, num_sentinels=100),
      noise_span_to_unique_sentinel(tokens, mask, 1000))


@pytest.mark.slow
def test_ul2_mixture_rates(registered, vocabs):
  t5 = vocabs[0]
  mode = {tuple(t5.encode(m)): m for m in (objectives.UL2_R, objectives.UL2_X, objectives.UL2_S)}
  mix = seqio.MixtureRegistry.get(f"{P}_ul2")
  total = sum(mix.get_rate(t) for t in mix.tasks)
  s_task = seqio.get_mixture_or_task(f"{P}_ul2_s_rate25")
  assert abs(mix.get_rate(s_task) / total - 0.2) < 1e-9 and len(mix.tasks) == 7
  counts = collections.Counter()
  n = 800
  for ex in examples(f"{P}_ul2", n, {"inputs": 64, "targets": 64}, seed=7):
    prefix = next(k for k in mode if tuple(ex["inputs"][:len(k)]) == k)
    counts[mode[prefix]] += 1
  assert abs(counts[objectives.UL2_S] / n - 0.2) < 0.05  # 3.5 sigma
  assert abs(counts[objectives.UL2_R] / n - 0.8 * 2 / 6) < 0.055
  assert abs(counts[objectives.UL2_X] / n - 0.8 * 4 / 6) < 0.06


def test_register_mixture_from_gin(registered):
  # Scoped so the bindings cannot leak into other tests; a gin file writes them unscoped.
  gin.parse_config(f"""
      test_objectives/register_mixture.name = 'testc4_my_mix'
      test_objectives/register_mixture.tasks_and_rates = [('{P}_prefix_lm', 1.0), ('{P}_ul2', 2.0)]
  """)
  with gin.config_scope("test_objectives"):
    tasks.register_mixture()
  mix = seqio.MixtureRegistry.get("testc4_my_mix")
  assert mix.get_rate(seqio.get_mixture_or_task(f"{P}_prefix_lm")) == 1.0
  assert len(mix.tasks) == 8
  with pytest.raises(ValueError, match="unknown task"):
    tasks.register_mixture("bad", [("no_such_task", 1.0)])


# --- lengths -----------------------------------------------------------------------------------
def test_required_targets_length():
  assert objectives.required_targets_length("span_corruption", 512) == 114
  assert objectives.raw_tokens_length("span_corruption", 512) == 568
  assert objectives.required_targets_length("bart_denoising", 512) == 512
  assert objectives.required_targets_length("deshuffling", 512) == 512
  assert objectives.required_targets_length("prefix_lm", 512) == 511
  assert 170 < objectives.required_targets_length("iid_denoising", 512) < 230
  assert objectives.required_targets_length("ul2_denoiser", 512, noise_density=0.5,
                                     mean_noise_span_length=3) == 512
  assert objectives.required_targets_length("ul2_denoiser", 512, prefix_length=4, noise_density=0.15,
                                     mean_noise_span_length=3) == 114
  assert objectives.required_targets_length("ul2_prefix_lm", 512, prefix_length=5) == 255
  for name in objectives.OBJECTIVE_NAMES:
    assert 0 < objectives.required_targets_length(name, 512) <= 512
  with pytest.raises(ValueError, match="unknown objective"):
    objectives.required_targets_length("nope", 512)


def test_too_short_targets_is_a_clear_error(registered):
  task = seqio.get_mixture_or_task(f"{P}_ul2_x_mean3_rate50")
  msg = (r"UL2 X-denoiser \(mean 3, rate 0.5\) needs targets >= 508 for inputs 512; "
         r"TASK_FEATURE_LENGTHS has targets 114")
  with pytest.raises(ValueError, match=msg):
    task.get_dataset({"inputs": 512, "targets": 114}, split="train", shuffle=False)
  with pytest.raises(ValueError, match="bart_denoising needs targets >= 512"):
    seqio.get_mixture_or_task(f"{P}_bart_denoising").get_dataset(
        {"inputs": 512, "targets": 114}, split="train", shuffle=False)


def test_default_registration_names():
  names = set(tasks.register_all())
  for p in sources.SOURCE_NAMES:
    for suffix in ("bart_denoising", "prefix_lm", "iid_denoising", "bert_denoising",
                   "deshuffling", "ul2"):
      assert f"{p}_{suffix}" in names
  assert "c4_ul2" in seqio.MixtureRegistry.names()


def test_demo_bart_and_ul2():
  """The demo tasks run without downloads: BART on the demo SentencePiece vocab, <mask> = sentinel."""
  ex = examples("demo_bart_denoising", 2, {"inputs": 256, "targets": 256})[0]
  vocab = tasks.get_task_or_mixture("demo_bart_denoising").output_features["inputs"].vocabulary
  assert (ex["inputs"] == vocab.vocab_size - 1).sum() > 3
  ex = examples("demo_ul2", 5, {"inputs": 256, "targets": 256})[0]
  assert vocab.decode(ex["inputs"].tolist()).startswith("[")


def test_sentencepiece_bart_random_tokens_are_never_sentinels(t5_vocab_path):
  """Random replacement tokens come from the real pieces [3, 32000), never an extra id (which
  would be <mask> itself or another sentinel)."""
  vocab = get_vocabulary(str(t5_vocab_path))
  info = bart_noise.bart_vocab_info(vocab)
  assert (info.random_low, info.random_high, info.mask_id) == (3, 32000, 32099)
  assert info.word_start[32000:].all()  # sentinels start words
