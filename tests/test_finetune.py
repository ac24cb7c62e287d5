"""Fine-tuning from an imported checkpoint on a user JSONL task registered by gin alone; exact match
on decoded validation predictions rises; `t5lite eval` output; TSV tasks; metric errors."""
import collections
import gzip
import json
import os

import gin
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from t5lite.store import checkpoints  # pylint: disable=g-import-not-at-top
from t5lite import gin_files, main  # pylint: disable=g-import-not-at-top
from t5lite.runtime import partitioning  # pylint: disable=g-import-not-at-top
from t5lite.training import train  # pylint: disable=g-import-not-at-top
from t5lite.data.tasks import finetune
from t5lite.data.vocab import sentencepiece as vocab_lib  # pylint: disable=g-import-not-at-top

V = 256  # 90 pieces + 100 extra ids, rounded up to 128
STEPS, SAVE_PERIOD = 150, 50


def copy_task_files(c4_sample, folder, num_words=3, common=64):
  """Copy a short sequence of common C4 words (each document's first `num_words` among the
  `common` most frequent words): a task a tiny model learns in a few hundred steps."""
  with gzip.open(c4_sample, "rt") as f:
    docs = [[w for w in json.loads(line)["text"].lower().split() if w.isalpha()] for line in f]
  top = {w for w, _ in collections.Counter(w for d in docs for w in d).most_common(common)}
  rows = []
  for words in docs:
    words = [w for w in words if w in top][:num_words]
    if len(words) == num_words:
      rows.append({"inputs": " ".join(words), "targets": " ".join(words)})
  train_rows, validation_rows = rows[:-32], rows[-32:]
  for name, part in (("train", train_rows), ("validation", validation_rows)):
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
  return str(folder / "train.jsonl"), str(folder / "validation.jsonl")


def task_vocabulary(folder, train_file):
  """A small SentencePiece model trained on the task's text (256 logits, not 32128: fast)."""
  text = folder / "text.txt"
  text.write_text("".join(json.loads(l)["targets"] + "\n" for l in open(train_file)))
  return vocab_lib.train_vocabulary([str(text)], str(folder / "spiece.model"), vocab_size=90)


def hf_t5_1_0():
  """A random tiny T5 1.0 (ReLU, tied embeddings): the 'pretrained' model we fine-tune."""
  torch.manual_seed(0)
  config = transformers.T5Config(vocab_size=V, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                 num_heads=4, feed_forward_proj="relu", tie_word_embeddings=True,
                                 decoder_start_token_id=0)
  return transformers.T5ForConditionalGeneration(config)


def cli(*argv):
  gin.clear_config()
  assert main.main(list(argv)) == 0


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, c4_sample):
  root = tmp_path_factory.mktemp("finetune")
  train_file, validation_file = copy_task_files(c4_sample, root)
  hf_dir = root / "hf"
  hf_t5_1_0().save_pretrained(hf_dir)
  (hf_dir / "spiece.model").write_bytes(open(task_vocabulary(root, train_file), "rb").read())
  pretrained = root / "pretrained"
  cli("import-hf", str(hf_dir), str(pretrained))
  model_dir = root / "ft"
  gin.clear_config()
  gin_files.parse(["runs/finetune.gin", str(pretrained / "model.gin")], [
      f"MODEL_DIR = '{model_dir}'", f"INIT_CHECKPOINT = '{pretrained}'",
      f"TRAIN_STEPS = {STEPS}", "BATCH_SIZE = 32",
      "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 16}",
      "register_user_task.name = 'copy_words'", f"register_user_task.train_files = '{train_file}'",
      f"register_user_task.validation_files = '{validation_file}'",
      "make_optimizer.name = 'adamw'", "learning_rate_schedule.peak = 3e-3",
      f"Checkpointer.save_period = {SAVE_PERIOD}", "Checkpointer.async_save = False",
      f"EvalConfig.period = {SAVE_PERIOD}", "EvalConfig.steps = 2", "LoopConfig.log_period = 20"])
  train.train(mesh=partitioning.make_mesh((4, 2)))
  cli("eval", f"--model_dir={model_dir}", "--all_checkpoints", "--num_examples=32",
      "--eval_steps=2")
  return model_dir, pretrained


@pytest.mark.slow
def test_finetuning_raises_exact_match(finetuned):
  model_dir, _ = finetuned
  rows = [json.loads(l) for l in open(model_dir / "eval.jsonl")]
  assert [r["step"] for r in rows] == list(range(SAVE_PERIOD, STEPS + 1, SAVE_PERIOD))
  assert {r["task"] for r in rows} == {"copy_words"}
  em = [r["exact_match"] for r in rows]
  assert em[-1] > em[0] and em[-1] >= 25.0, em
  losses = [r["loss"] for r in rows]
  assert losses[-1] < losses[0], losses
  assert any(f.startswith("events.out.tfevents")
             for f in os.listdir(model_dir / "tb" / "eval_copy_words"))


@pytest.mark.slow  # the module fixture fine-tunes for ~1 min: test-all
def test_training_evaluates_decoded_metrics_periodically(finetuned):
  """train() itself decodes validation examples every eval_period and logs exact match."""
  model_dir, _ = finetuned
  rows = [json.loads(l) for l in open(model_dir / "metrics.jsonl")]
  evals = [r for r in rows if r["split"] == "eval"]
  assert [r["step"] for r in evals] == list(range(SAVE_PERIOD, STEPS + 1, SAVE_PERIOD))
  em = [r["exact_match"] for r in evals]
  assert em[-1] > em[0] and em[-1] >= 25.0, em


@pytest.mark.slow
def test_finetuning_starts_from_the_pretrained_parameters(finetuned, tmp_path):
  """init_checkpoint: the imported parameters at step 0 (a 0-step run returns them); the
  config.gin names the user task registration, so eval/infer re-register it."""
  model_dir, pretrained = finetuned
  text = (model_dir / "config.gin").read_text()
  assert "register_user_task" in text and "Config.dropout_rate = 0.1" in text
  assert checkpoints.resolve(str(model_dir))[1] == STEPS
  gin.clear_config()
  gin_files.parse([str(model_dir / "config.gin")],
                  [f"train.model_dir = '{tmp_path / 'zero'}'", "train.train_steps = 0"])
  state = train.train(mesh=partitioning.make_mesh((4, 2)))
  assert int(state.step) == 0
  imported = checkpoints.restore_params(
      str(pretrained), jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state.params))
  for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(imported)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_infer_on_the_finetuned_run(finetuned, tmp_path):
  model_dir, _ = finetuned
  rows = [json.loads(l) for l in open(os.path.join(os.path.dirname(model_dir), "validation.jsonl"))]
  inp = tmp_path / "in.jsonl"
  inp.write_text("".join(json.dumps({"inputs": r["inputs"]}) + "\n" for r in rows))
  cli("infer", f"--model_dir={model_dir}", f"--input={inp}", f"--output={tmp_path / 'out.jsonl'}")
  preds = [json.loads(l)["prediction"] for l in open(tmp_path / "out.jsonl")]
  hits = np.mean([p == r["targets"] for p, r in zip(preds, rows)])
  assert hits >= 0.25, list(zip(preds, rows))[:5]


def test_tsv_task_and_metric_errors(tmp_path, t5_vocab_path):
  tsv = tmp_path / "pairs.tsv"
  tsv.write_text("hello world\tbonjour le monde\nshort\tcourt\n")
  gin.clear_config()
  name = finetune.register_user_task(
      name="tsv_pairs", train_files=str(tsv), format="tsv", vocabulary_path=str(t5_vocab_path))
  import seqio  # pylint: disable=g-import-not-at-top
  ds = seqio.get_mixture_or_task(name).get_dataset(
      {"inputs": 8, "targets": 8}, split="train", shuffle=False, num_epochs=1)
  examples = list(ds.as_numpy_iterator())
  assert [e["targets_pretokenized"].decode() for e in examples] == ["bonjour le monde", "court"]
  assert all(e["inputs"][-1] == 1 for e in examples)  # EOS
  assert finetune.exact_match(["a", "b"], ["a", "c"]) == {"exact_match": 50.0}
  with pytest.raises(ValueError, match="unknown metric"):
    finetune.metric_fns(["f1"])
  with pytest.raises(FileNotFoundError, match="no file matches"):
    finetune.register_user_task(name="x", train_files=str(tmp_path / "none.jsonl"))
  assert jax.device_count() == 8


def test_bleu_and_rouge(monkeypatch):
  """Real values with sacrebleu / rouge-score (installed by `make test`); a clear error without."""
  fns = finetune.metric_fns(["bleu", "rouge"])
  same = ["the cat sat on the mat today", "a quick brown fox jumps"]
  assert fns[0](same, same)["bleu"] == pytest.approx(100.0)
  assert fns[1](same, same)["rouge1"] == pytest.approx(100.0)
  half = fns[1](["the cat sat on the mat"], ["the cat"])
  assert half["rouge1"] == pytest.approx(100 * 2 * (1.0 * 2 / 6) / (1.0 + 2 / 6))
  assert 0 < fns[0](same, ["the cat sat on a mat today", "a slow brown fox jumps"])["bleu"] < 100
  monkeypatch.setitem(finetune._PACKAGES, "bleu", ("no_such_bleu_module", "sacrebleu"))
  with pytest.raises(ImportError, match="pip install sacrebleu"):
    finetune.metric_fns(["bleu"])
