"""Switch tiny end to end on the embedded demo task: train() logs the router metrics apart from the
cross-entropy, resumes exactly onto a mesh with another expert-axis size, fine-tunes from its
checkpoint, `t5lite eval` evaluates it, and `t5lite plan` compiles its step for a TPU topology with
expert parallelism (all-to-alls in the HLO)."""
import json
import os
import pathlib
import subprocess
import sys

import gin
import jax
import numpy as np
import pytest

from t5lite import main as cli
from t5lite.cli import common
from t5lite.runtime import partitioning
from t5lite.training import train

STEPS = 6
FAST = [
    "--gin_file=models/switch/tiny.gin", "--gin_file=runs/demo.gin",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}", "--gin.BATCH_SIZE=8",
    "--gin.Config.emb_dim=32", "--gin.Config.mlp_dim=64", "--gin.Config.num_heads=2",
    "--gin.Config.head_dim=16", "--gin.Config.num_experts=4", "--gin.Config.expert_group_size=32",
    "--gin.LoopConfig.log_period=1", "--gin.EvalConfig.period=0",
    "--gin.EvalConfig.predict_examples=0", "--gin.learning_rate_schedule.name='constant'",
    "--gin.learning_rate_schedule.peak=1e-2", "--gin.Checkpointer.async_save=False",
]
ROUTER = ("router_aux_loss", "router_z_loss", "router_dropped_fraction", "router_expert_usage",
          "router_confidence", "router_max_load")


def run_train(model_dir, steps, mesh_shape, *extra):
  gin.clear_config()
  args = FAST + [f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}", *extra]
  common.parse_gin_flags(args)
  return train.train(mesh=partitioning.make_mesh(mesh_shape))


def train_rows(model_dir):
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    return {r["step"]: r for r in map(json.loads, f) if r["split"] == "train"}


@pytest.mark.slow
def test_train_resume_on_another_expert_axis_finetune_and_eval(tmp_path):
  straight = str(tmp_path / "straight")
  want = jax.device_get(run_train(straight, STEPS, (4, 2, 1)).params)
  rows = train_rows(straight)
  assert sorted(rows) == list(range(1, STEPS + 1))
  for key in ROUTER + ("cross_entropy", "loss"):
    assert np.isfinite(rows[STEPS][key]), key
  assert rows[STEPS]["loss"] > rows[STEPS]["cross_entropy"]  # + z-loss + 0.01 x aux loss
  assert rows[STEPS]["loss"] < rows[1]["loss"]

  half = str(tmp_path / "half")
  run_train(half, STEPS // 2, (4, 2, 1))
  resumed = jax.device_get(run_train(half, STEPS, (2, 4, 1)).params)  # expert axis 2 -> 4
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # another mesh: another sum order
  np.testing.assert_allclose([train_rows(half)[s]["loss"] for s in range(1, STEPS + 1)],
                             [rows[s]["loss"] for s in range(1, STEPS + 1)], rtol=1e-4)

  tuned = str(tmp_path / "tuned")  # fine-tuning: its parameters, fresh optimizer, dropout
  run_train(tuned, 2, (8, 1, 1), f"--gin.train.init_checkpoint='{straight}'",
            "--gin.Config.dropout_rate=0.1")
  assert sorted(train_rows(tuned)) == [1, 2]

  gin.clear_config()
  assert cli.main(["eval", f"--model_dir={straight}", "--eval_steps=1", "--num_examples=0",
                   "--gin.make_mesh.mesh_shape=(2, 4, 1)"]) == 0
  result = json.loads(pathlib.Path(straight, "eval.jsonl").read_text().splitlines()[-1])
  assert result["step"] == STEPS and np.isfinite(result["loss"])


@pytest.mark.slow
def test_plan_switch_on_a_tpu_topology_with_expert_parallelism():
  pytest.importorskip("libtpu")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", TPU_SKIP_MDS_QUERY="1")
  t5lite = str(pathlib.Path(sys.executable).parent / "t5lite")
  proc = subprocess.run(
      [t5lite, "plan", "--json", "--topology", "v5e:2x2", "--gin_file=models/switch/tiny.gin",
       "--gin_file=runs/pretrain.gin", "--gin.BATCH_SIZE=8",
       "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}",
       "--gin.make_mesh.mesh_shape=(1, 4, 1)"], env=env, capture_output=True, text=True,
      timeout=600)
  assert proc.stdout.strip(), proc.stderr[-3000:]
  plan = json.loads(proc.stdout)
  assert proc.returncode == 0 and plan["fits"], proc.stderr[-3000:]
  assert plan["mesh"] == {"data": 1, "expert": 4, "model": 1}
  assert plan["collectives"]["all-to-all"] > 0
  assert plan["config"]["num_experts"] == 8
  # Experts split 4 ways: each chip holds 2 of the 8 experts' kernels.
  assert plan["per_device_bytes"]["parameters"] < 4 * plan["parameters"]
