"""`t5lite plan`: train's exact step compiled for a TPU topology by libtpu's compiler on this CPU
machine, through the real command in subprocesses (started together: XLA compiles on one core)."""
import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import gin
import jax
import pytest

from t5lite.training import planner
from t5lite.model import params as model_params
from t5lite.cli import common
from t5lite.model.config import Config, flops_per_example
from t5lite.data.feed import features
from t5lite.data.feed import tfdata as pipeline

T5LITE = str(pathlib.Path(sys.executable).parent / "t5lite")
TINY = ["--gin_file=models/t5_1_1/tiny.gin", "--gin_file=runs/pretrain.gin",
        "--gin.BATCH_SIZE=8", "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 16}"]
# 16384 inputs: the encoder's attention alone outgrows a v5e chip; refused within seconds.
MISFIT = ["--gin_file=models/t5_1_1/tiny.gin", "--gin_file=runs/pretrain.gin",
          "--gin.BATCH_SIZE=8", "--gin.TASK_FEATURE_LENGTHS={'inputs': 16384, 'targets': 16}"]
GiB = 1024 ** 3


def _require_libtpu():
  if importlib.util.find_spec("libtpu") is None:
    msg = "libtpu (the TPU compiler) is not installed: pip install -e '.[plan]'"
    if os.environ.get("CI") == "true":
      pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def runs_(tmp_path_factory):
  """name -> (returncode, JSON, stderr, dump folder) of the plan commands, run concurrently."""
  _require_libtpu()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", TPU_SKIP_MDS_QUERY="1")
  commands = {"tpu": ["--topology", "v5e:2x2", *TINY], "cpu": ["--topology", "cpu:8", *TINY],
              "misfit": ["--topology", "v5e:2x2", *MISFIT]}
  procs = {}
  for name, args in commands.items():
    dump = tmp_path_factory.mktemp(name)
    procs[name] = (subprocess.Popen([T5LITE, "plan", "--json", "--dump", str(dump), *args],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True), dump)
  out = {}
  for name, (proc, dump) in procs.items():
    stdout, stderr = proc.communicate(timeout=600)
    assert stdout.strip(), f"{name}: no output; stderr:\n{stderr[-3000:]}"
    out[name] = (proc.returncode, json.loads(stdout), stderr, dump)
  return out


def tiny_config() -> Config:
  return Config(emb_dim=128, num_heads=4, head_dim=32, mlp_dim=256, num_encoder_layers=2,
                num_decoder_layers=2)


@pytest.mark.slow
def test_fits_on_a_tpu_topology(runs_):
  rc, plan, stderr, _ = runs_["tpu"]
  assert rc == 0, stderr[-3000:]
  assert (plan["devices"], plan["device_kind"], plan["mesh"]) == (4, "TPU v5 lite",
                                                                   {"data": 4, "model": 1})
  params = sum(math.prod(x.shape) for x in jax.tree.leaves(model_params.boxed_params_shape(
      tiny_config())))
  assert plan["parameters"] == params
  mem = plan["per_device_bytes"]
  assert mem["parameters"] == 4 * params  # float32, replicated: mesh model axis is 1
  assert mem["batch"] == 8 // 4 * (3 * 64 + 5 * 16) * 4  # 8 int32 features, batch over 'data'
  assert mem["aliased"] >= mem["parameters"] + mem["optimizer_state"]  # the state is donated
  assert mem["sum"] == mem["arguments"] + mem["outputs"] - mem["aliased"] + mem["temporaries"]
  # On TPU the verdict follows XLA's peak (what its own out-of-memory check compares).
  assert mem["total"] == mem["xla_peak"] >= mem["temporaries"]
  # The compiler's own limit, a little under the datasheet's 16 GB (GiB in practice) per chip.
  assert 15 * GiB < plan["capacity_bytes"] <= 16 * GiB
  assert plan["fits"] and plan["margin_bytes"] == plan["capacity_bytes"] - mem["total"]
  assert plan["compile_seconds"] > 0 and plan["message"] is None
  assert set(plan["collectives"]) == set(planner.COLLECTIVES)
  assert plan["collectives"]["all-reduce"] >= 1  # data-parallel gradients


def test_xla_flops_near_the_formula(runs_):
  _, plan, _, _ = runs_["tpu"]
  flops = plan["flops"]
  assert flops["formula_total"] == flops_per_example(tiny_config(), 64, 16) * 8
  assert flops["xla_total"] == flops["xla_per_device"] * 4
  # The formula counts matmuls only; at 64/16 tokens the rest (softmax, norms, the optimizer) adds
  # a fifth (at 512/114 and batch 128 XLA's count is within 5%).
  assert 1.0 <= flops["xla_over_formula"] < 1.5, flops


def test_tpu_program_has_none_of_the_cpu_kernels(runs_):
  """ops.py's custom VJPs and optimization barriers are for XLA:CPU; the TPU step has neither,
  and the same step planned for CPU devices has both (so this test can fail)."""
  tpu, cpu = runs_["tpu"][3], runs_["cpu"][3]
  assert "custom_vjp_call" not in (tpu / "train_step.jaxpr.txt").read_text()
  assert "optimization_barrier" not in (tpu / "train_step.stablehlo.mlir").read_text()
  assert "opt-barrier" not in (tpu / "train_step.hlo.txt").read_text()
  assert "custom_vjp_call" in (cpu / "train_step.jaxpr.txt").read_text()
  assert "optimization_barrier" in (cpu / "train_step.stablehlo.mlir").read_text()


def test_cpu_devices_are_a_topology_too(runs_):
  rc, plan, stderr, _ = runs_["cpu"]
  assert rc == 0, stderr[-3000:]
  assert (plan["devices"], plan["device_kind"], plan["mesh"]) == (8, "cpu", {"data": 8, "model": 1})
  assert plan["fits"] and plan["flops"]["xla_per_device"] > 0
  mem = plan["per_device_bytes"]
  assert mem["total"] == mem["sum"] >= mem["temporaries"] > 0  # XLA:CPU's peak omits temporaries


def test_misfit_exits_nonzero_with_one_line(runs_):
  rc, plan, stderr, _ = runs_["misfit"]
  assert rc == 1, stderr[-3000:]
  assert not plan["fits"] and "RESOURCE_EXHAUSTED" in plan["compiler_error"]
  lines = [l for l in stderr.splitlines() if l.startswith("t5lite")]
  assert len(lines) == 1, stderr[-3000:]
  line = lines[0]
  assert line.startswith("t5lite plan: does not fit on v5e:2x2") and "short by" in line
  for knob in ("remat", "StepConfig.fsdp=True", "StepConfig.microbatches=2", "make_mesh.mesh_shape"):
    assert knob in line, line
  assert plan["per_device_bytes"]["total"] > plan["capacity_bytes"]


def test_bad_topology_names_examples():
  for name in ("v5e", "cpu:x", "cpu:0"):
    with pytest.raises(ValueError, match="e.g. v4:2x2x1, v5e:2x2"):
      planner.target(name)


def test_train_arguments_follow_gin_and_name_missing_macros():
  common.register_configurables()
  try:
    gin.clear_config()
    gin.parse_config(["DataConfig.batch_size = 64", "StepConfig.microbatches = 2",
                      "train.config = @Config()", "Config.num_heads = 3",
                      "DataConfig.task_feature_lengths = {'inputs': 32, 'targets': 8}"])
    args = planner.train_arguments()
    assert (args["batch_size"], args["microbatches"], args["config"].num_heads) == (64, 2, 3)
    assert args["fsdp"] is False and args["z_loss"] == 1e-4  # train()'s defaults
    gin.clear_config()
    gin.parse_config(["DataConfig.batch_size = 64"])
    with pytest.raises(ValueError, match="TASK_FEATURE_LENGTHS"):
      planner.train_arguments()
  finally:
    gin.clear_config()


def test_batch_shapes_are_the_pipelines():
  """The abstract batch plan compiles for is what the real packed pipeline yields."""
  from t5lite.data.tasks import registry as tasks  # pylint: disable=g-import-not-at-top
  tasks.register_all()
  lengths = {"inputs": 64, "targets": 16}
  batch = next(pipeline.get_dataset("demo_span_corruption", lengths, 4).as_numpy_iterator())
  expected = features.batch_shapes(lengths, 4)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected


def _plan(**changes) -> planner.Plan:
  fields = dict(topology="v5e:2x2", device_kind="TPU v5 lite", devices=4, cores_per_device=1,
                mesh={"data": 4, "model": 1}, config=tiny_config(), batch_size=128,
                task_feature_lengths={"inputs": 512, "targets": 114}, microbatches=1, fsdp=False,
                parameters=1, capacity_bytes=16 * GiB, capacity_source="", parameter_bytes=0,
                optimizer_bytes=0, batch_bytes=0, trace_seconds=0.0, compile_seconds=0.0,
                formula_flops=1.0, required_bytes=20 * GiB)
  fields.update(changes)
  return planner.Plan(**fields)


def test_advice_leaves_out_knobs_already_used():
  everything = _plan().shortfall_line()
  assert "short by 4.00 GiB" in everything
  for knob in ("remat", "StepConfig.fsdp=True", "StepConfig.microbatches=2", 'mesh_shape="(-1, 2)"'):
    assert knob in everything
  used = _plan(fsdp=True, microbatches=128, mesh={"data": 1, "model": 4},
               config=tiny_config().replace(remat_policy='full')).shortfall_line()
  for knob in ("remat", "fsdp", "microbatches", "mesh_shape"):
    assert knob not in used, used
  assert "a larger topology" in used


def test_flops_note_when_xla_sees_a_loop():
  assert _plan().flops_note is None
  assert "microbatch loop" in _plan(microbatches=2).flops_note
