"""End-to-end train() on the embedded demo task: loss falls, resume is exact, gin and CLI errors."""
import json
import os

import gin
import jax
import numpy as np
import pytest

from t5lite import main as cli
from t5lite.runtime import partitioning
from t5lite.training import train
from t5lite.cli import common
from t5lite.store.checkpoints import Checkpointer

STEPS = 16
FAST = [
    "--gin_file=models/t5_1_1/tiny.gin", "--gin_file=runs/demo.gin",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}", "--gin.BATCH_SIZE=8",
    "--gin.Config.emb_dim=64", "--gin.Config.mlp_dim=128", "--gin.Config.num_heads=4", "--gin.Config.head_dim=16",
    "--gin.LoopConfig.log_period=1", "--gin.EvalConfig.period=0", "--gin.EvalConfig.predict_examples=0",
    "--gin.make_optimizer.name='adamw'", "--gin.learning_rate_schedule.name='constant'",
    "--gin.learning_rate_schedule.peak=1e-2", "--gin.Checkpointer.async_save=False",
]


def run_train(model_dir, steps, *extra, mesh_shape=(4, 2)):
  gin.clear_config()
  args = FAST + [f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}", *extra]
  common.parse_gin_flags(args)
  return train.train(mesh=partitioning.make_mesh(mesh_shape))


def read_losses(model_dir):
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("straight"))
  state = run_train(d, STEPS)
  return d, jax.device_get(state.params)


def test_train_end_to_end_loss_falls_and_writes_outputs(straight):
  d, _ = straight
  losses = read_losses(d)
  assert sorted(losses) == list(range(1, STEPS + 1))
  first, last = losses[1], np.mean([losses[s] for s in range(STEPS - 2, STEPS + 1)])
  assert last < first - 1.0, (first, last)
  assert os.path.exists(os.path.join(d, "config.gin"))
  assert "Config.emb_dim = 64" in open(os.path.join(d, "config.gin")).read()
  assert os.path.getsize(os.path.join(d, "loss.png")) > 1000
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(d, "tb", "train")))
  assert Checkpointer(os.path.join(d, "checkpoints")).latest_step() == STEPS
  rows = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl"))]
  for key in ("loss", "accuracy", "z_loss", "learning_rate", "grad_norm", "steps_per_s",
              "examples_per_s", "target_tokens_per_s"):
    assert key in rows[5], key


@pytest.mark.slow
def test_resume_equals_straight_run(straight, tmp_path):
  """N steps, a restart of the same command, N more == 2N steps straight (params and losses)."""
  d, params = straight
  half = str(tmp_path / "half")
  run_train(half, STEPS // 2)
  assert Checkpointer(os.path.join(half, "checkpoints")).latest_step() == STEPS // 2
  resumed = jax.device_get(run_train(half, STEPS).params)
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  got, want = read_losses(half), read_losses(d)
  np.testing.assert_allclose([got[s] for s in range(1, STEPS + 1)],
                             [want[s] for s in range(1, STEPS + 1)], rtol=1e-4)


def test_gin_override_changes_the_model(tmp_path):
  gin.clear_config()
  common.parse_gin_flags(["--gin_file=models/t5_1_1/small.gin", "--gin.Config.num_heads=3",
                          "--gin.Config.emb_dim", "96"])
  from t5lite.model.config import Config
  cfg = Config()
  assert (cfg.num_heads, cfg.emb_dim, cfg.mlp_dim) == (3, 96, 1024)
  gin.clear_config()
  assert Config().num_heads == 6  # the dataclass default


def _cli_error(capsys, args):
  gin.clear_config()
  with pytest.raises(SystemExit) as e:
    cli.run_with_args(args)
  assert e.value.code == 2
  return capsys.readouterr().err


def test_unknown_task_lists_registered(capsys, tmp_path):
  err = _cli_error(capsys, ["train", "--gin_file=runs/demo.gin",
                            f"--gin.MODEL_DIR='{tmp_path}'", "--gin.MIXTURE_OR_TASK_NAME='c4_spam'"])
  assert "unknown task or mixture 'c4_spam'" in err
  assert "demo_span_corruption" in err and "c4_json_span_corruption" in err


def test_missing_required_macro_is_named(capsys):
  err = _cli_error(capsys, ["train", "--gin_file=models/t5_1_1/tiny.gin",
                            "--gin_file=runs/pretrain.gin"])
  assert "MODEL_DIR" in err


def test_misspelt_binding_names_where(capsys):
  err = _cli_error(capsys, ["train", "--gin_file=runs/demo.gin", "--gin.Config.emb_dimm=3"])
  assert "emb_dimm" in err and "Config" in err


def test_missing_gin_file(capsys):
  err = _cli_error(capsys, ["train", "--gin_file=runs/nope.gin"])
  assert "runs/nope.gin" in err and "not found" in err


def test_vocab_larger_than_model_is_refused(capsys, tmp_path):
  err = _cli_error(capsys, ["train", "--gin_file=runs/demo.gin", f"--gin.MODEL_DIR='{tmp_path}'",
                            "--gin.Config.vocab_size=1000"])
  assert "Config.vocab_size is 1000" in err


def test_targets_too_short_for_the_objective(capsys, tmp_path):
  err = _cli_error(capsys, ["train", "--gin_file=runs/ul2_demo.gin", f"--gin.MODEL_DIR='{tmp_path}'",
                            "--gin.TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 114}"])
  assert "targets length 114 is too short for inputs 512" in err
