"""The TensorFlow-free core: a token cache's manifest holds what its feed needs, and a Python that
cannot import TensorFlow or seqio (tests/without_tf/sitecustomize.py) trains, evaluates and decodes from it."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from t5lite.data.cache import build as cache_build
from t5lite.data.cache import keys, manifest
from t5lite.data.feed import indexed
from t5lite.data.sources.sources import Sources
from t5lite.data.tasks import registry as tasks

REPO = pathlib.Path(__file__).resolve().parents[1]
WITHOUT_TF = str(REPO / "tests" / "without_tf")  # its sitecustomize.py hides TF and seqio
LENGTHS = {"inputs": 64, "targets": 16}
CLEAN_LENGTHS = {"inputs": 64, "targets": 64}

# Where the TensorFlow line falls: the modules that need seqio / TensorFlow (seqio's tasks, their
# tf.data pipeline, building caches, `t5lite inspect`'s statistics, DoReMi's reference runs).
# Every other module of the package imports without them.
TF_SIDE = {"t5lite.data.cache.build", "t5lite.data.cache.keys", "t5lite.data.feed.tfdata",
           "t5lite.data.objectives.tf_objectives", "t5lite.data.objectives.tf_spans",
           "t5lite.data.sources.json_lines", "t5lite.data.sources.seqio_sources",
           "t5lite.data.statistics", "t5lite.data.tasks.finetune", "t5lite.data.tasks.registry",
           "t5lite.data.vocab.seqio_vocab", "t5lite.datamix.doremi_run"}
BLOCKED = ("tensorflow", "tensorflow_text", "tensorflow_datasets", "seqio")


@pytest.fixture(scope="module")
def cache(c4_sample, t5_vocab_path, gpt2_bpe_dir, tmp_path_factory):
  """Caches (train and validation) of C4 span corruption, the UL2 mixture and BART denoising
  on the real C4 sample, built by the registered seqio tasks; their folder."""
  tasks.register_all(Sources(vocabulary_path=str(t5_vocab_path), c4_json_files=str(c4_sample),
                             c4_json_validation_files=str(c4_sample),
                             gpt2_bpe_dir=str(gpt2_bpe_dir)))
  root = str(tmp_path_factory.mktemp("tokens"))
  for name in ("c4_json_span_corruption", "c4_json_ul2", "c4_json_bart_denoising"):
    cache_build.build(name, root, echo=lambda s: None)
  yield root
  tasks.register_all()


@pytest.mark.parametrize("name", ["c4_json_span_corruption", "c4_json_ul2",
                                  "c4_json_bart_denoising"])
def test_manifest_is_the_registered_tasks(cache, name):
  """What the manifest rebuilds (objectives with every parameter, rates, vocabularies from the
  copied files, keys) is what the seqio registry derives, and feeds the same batches."""
  lengths = LENGTHS if name.endswith("span_corruption") else CLEAN_LENGTHS
  for split in ("train", "validation"):
    registered, written = keys.cached_tasks(name, split), manifest.read(cache, name, split)
    assert [(t.name, t.rate, t.objective, t.key) for t in written] == [
        (t.name, t.rate, t.objective, t.key) for t in registered]
    assert len(written) == (7 if name.endswith("ul2") else 1)
    for old, new in zip(registered, written):
      assert manifest.vocabulary_fingerprint(new.vocabulary) == old.key.vocabulary
      assert new.vocabulary.eos_id == old.vocabulary.eos_id
      assert new.vocabulary.extra_ids == old.vocabulary.extra_ids
      assert os.path.dirname(new.vocabulary.path if hasattr(new.vocabulary, "path")
                             else str(new.vocabulary.bpe_dir)).startswith(cache)
    streams = [indexed.IndexedStream(name, lengths, 8, cache, split=split, seed=3, tasks=t)
               for t in (registered, written)]
    for b in (0, 5):
      one, two = (s.batch(b) for s in streams)
      assert one.keys() == two.keys()
      for k in one:
        np.testing.assert_array_equal(one[k], two[k], err_msg=f"{name} {split} batch {b} {k}")


def test_missing_manifest_names_the_command(cache, tmp_path):
  with pytest.raises(FileNotFoundError, match=r"t5lite cache c4_json_prefix_lm --output"):
    manifest.read(cache, "c4_json_prefix_lm", "train")
  broken = tmp_path / "m"
  path = manifest.path(cache, "c4_json_span_corruption", "train")
  data = json.loads(pathlib.Path(path).read_text())
  data["tasks"][0]["key"]["vocabulary"]["sha256"] = "0" * 64
  target = manifest.path(str(broken), "c4_json_span_corruption", "train")
  os.makedirs(os.path.dirname(target))
  os.symlink(os.path.join(os.path.dirname(path), "vocabularies"),
             os.path.join(os.path.dirname(target), "vocabularies"))
  pathlib.Path(target).write_text(json.dumps(data))
  with pytest.raises(ValueError, match="not the one its cache was built with"):
    manifest.read(str(broken), "c4_json_span_corruption", "train")


def _without_tf(args, tmp_path, timeout=600):
  env = {k: v for k, v in os.environ.items() if not k.startswith("T5LITE_") or k == "T5LITE_TRACEBACK"}
  env.update(PYTHONPATH=os.pathsep.join([WITHOUT_TF, str(REPO)]), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_core_modules_import_without_tensorflow(tmp_path):
  """Every module but TF_SIDE imports in a Python without TensorFlow and seqio; TF_SIDE's fail
  for want of them (so the line is where this test says)."""
  code = ("import importlib, json, pkgutil, sys, t5lite\n"
          "failed = {}\n"
          "for m in pkgutil.walk_packages(t5lite.__path__, 't5lite.'):\n"
          "  if m.name.endswith('__main__'): continue\n"
          "  try: importlib.import_module(m.name)\n"
          "  except ModuleNotFoundError as e: failed[m.name] = e.name\n"
          f"loaded = [m for m in sys.modules if m.split('.')[0] in {BLOCKED!r}]\n"
          "from t5lite.extras import tf_data_available\n"
          "print(json.dumps({'failed': failed, 'loaded': loaded, "
          "'available': tf_data_available()}))\n")
  script = tmp_path / "core.py"
  script.write_text(code)
  result = _without_tf([str(script)], tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert set(report["failed"]) == TF_SIDE, report["failed"]
  assert all(name.split(".")[0] in BLOCKED for name in report["failed"].values()), report
  assert report["loaded"] == [] and report["available"] is False


def _train(cache, tmp_path, **changes):
  """`t5lite train` of the tiny T5 1.1 on the cache's C4 span corruption, without TF; a binding
  given as None is left out."""
  bindings = {"MODEL_DIR": f"'{tmp_path / 'run'}'", "DATA_CACHE_DIR": f"'{cache}'",
              "MIXTURE_OR_TASK_NAME": "'c4_json_span_corruption'",
              "TASK_FEATURE_LENGTHS": str(LENGTHS), "BATCH_SIZE": "8", "TRAIN_STEPS": "4",
              "Config.dtype": "'float32'", "EvalConfig.period": "4", "EvalConfig.steps": "2",
              "EvalConfig.predict_examples": "2", "LoopConfig.log_period": "2",
              "Checkpointer.save_period": "4", **changes}
  flags = [f"--gin.{k}={v}" for k, v in bindings.items() if v is not None]
  return _without_tf(["-m", "t5lite", "train", "--gin_file=models/t5_1_1/tiny.gin",
                      "--gin_file=runs/pretrain.gin", *flags], tmp_path)


def _metrics(model_dir, split):
  rows = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
  return [r for r in rows if r.get("split") == split]


def test_remote_path_without_tensorflow_names_the_extra(tmp_path):
  """gs:// goes through tf.io.gfile: without TensorFlow, one ImportError naming the `data` extra."""
  code = ("from t5lite import files\n"
          "try:\n  files.exists('gs://bucket/x')\nexcept ImportError as e:\n  print(e)\n")
  result = _without_tf(["-c", code], tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "remote paths (gs://...)" in result.stdout and "t5lite[data]" in result.stdout


def test_train_eval_and_predict_from_a_cache_without_tensorflow(cache, tmp_path):
  """`t5lite train` from the cache alone: steps, a checkpoint, eval loss, decoded predictions."""
  result = _train(cache, tmp_path)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  evals = _metrics(tmp_path / "run", "eval")
  assert [m["step"] for m in evals] == [4] and np.isfinite(evals[0]["loss"]), evals
  assert max(m["step"] for m in _metrics(tmp_path / "run", "train")) == 4
  assert (tmp_path / "run" / "checkpoints" / "4").is_dir()
  assert result.stdout.count("held-out example") == 2, result.stdout[-2000:]
  assert "prediction:" in result.stdout


@pytest.mark.slow
def test_resume_from_a_cache_and_no_cache_without_tensorflow(cache, tmp_path):
  """A run resumes from its checkpoint and the cache's saved position; without a cache the
  error names the extra to install (exit 2, one line)."""
  first = _train(cache, tmp_path, TRAIN_STEPS="2", **{"Checkpointer.save_period": "2",
                                                      "EvalConfig.period": "0",
                                                      "EvalConfig.predict_examples": "0"})
  assert first.returncode == 0, first.stderr[-3000:]
  again = _train(cache, tmp_path, **{"EvalConfig.predict_examples": "0"})
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resumed from" in again.stdout + again.stderr
  assert [m["step"] for m in _metrics(tmp_path / "run", "train")][-1] == 4

  no_cache = _train(cache, tmp_path, DATA_CACHE_DIR=None, MODEL_DIR=f"'{tmp_path / 'other'}'")
  assert no_cache.returncode == 2, no_cache.stderr[-3000:]
  assert "t5lite[data]" in no_cache.stderr and "without a token cache" in no_cache.stderr
  assert len(no_cache.stderr.strip().splitlines()) == 2  # the line and the traceback hint


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_section_without_tensorflow(tmp_path):
  """benchmarks/gpu_check.py --smoke on CPU in a Python without TensorFlow and seqio: every
  section wrote its entry (JSON and Markdown), and the float32 trajectory equals the stored one."""
  out = tmp_path / "check"
  result = _without_tf([str(REPO / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(out)],
                       tmp_path, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  report = json.loads((out / "gpu_check.json").read_text())
  sections = report["sections"]
  assert list(sections) == ["env", "correctness", "throughput", "attention", "decoding",
                            "switch"], sections.keys()
  for name, section in sections.items():
    assert section["status"] == "ok", (name, section)
  assert [row["model"] for row in sections["switch"]["rows"]] == ["Switch tiny", "T5 1.1 tiny"]
  assert sections["correctness"]["summary"]["float32_max_rel_diff"] <= 1e-3
  frameworks = {row["framework"] for row in sections["throughput"]["rows"]}
  assert frameworks == {"t5lite (JAX)", "HF transformers (PyTorch eager, autocast)"}
  assert all(row["max diff / max (grads)"] < 0.05 for row in sections["attention"]["rows"])
  markdown = (out / "gpu_check.md").read_text()
  assert all(f"## {name}: " in markdown for name in sections)
