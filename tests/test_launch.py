"""Tests for launch/tpu_vm.sh and launch/gpu.sh, with a fake gcloud and a fake t5lite.

The fake `gcloud` records its argv (one JSON list per line, so byte-exact) and,
for `compute tpus tpu-vm ssh ... --command TEXT`, runs TEXT with `bash -c` in a
fake worker home: what the test sees is exactly what a TPU worker would run.
Only pytest and the standard library are needed; nothing touches the network
or any process the tests did not start.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
TPU_VM = REPO / "launch" / "tpu_vm.sh"
GPU = REPO / "launch" / "gpu.sh"
BASH = shutil.which("bash")

# Arguments no shell may touch on their way to `t5lite train`.
TRICKY_ARGS = [
    "--gin_file=gin_configs/runs/t5_base.gin",
    "--gin.MODEL_DIR=\"'/tmp/a b'\"",
    "--gin.X='$HOME;echo pwned'",
    "--gin.Y=`touch /tmp/t5lite-pwned`",
    '--gin.Z="double \\" quoted"',
    "--gin.MULTI='line one\nline two'",
    "--gin.U='ünïcødé ✓ 日本'",
    "",
    "  leading and trailing spaces  ",
    "*",
    "-- not an option",
]

FAKE_GCLOUD = """\
#!{python}
import json, os, pathlib, subprocess, sys
argv = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a", encoding="utf-8") as f:
    f.write(json.dumps(argv) + "\\n")
worker_home = pathlib.Path(os.environ["FAKE_WORKER_HOME"])
if argv[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
    text = next(
        [a.split("=", 1)[1]] if a.startswith("--command=") else argv[i + 1 : i + 2]
        for i, a in enumerate(argv) if a == "--command" or a.startswith("--command=")
    )[0]
    env = dict(os.environ, HOME=str(worker_home),
               PATH=os.environ["FAKE_WORKER_BIN"] + os.pathsep + os.environ["PATH"])
    sys.exit(subprocess.run(["bash", "-c", text], cwd=worker_home, env=env).returncode)
if argv[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
    files = [a for a in argv[4:] if not a.startswith("--")]
    src, dst = files[0], files[1].split(":", 1)[1]
    (worker_home / dst).write_bytes(pathlib.Path(src).read_bytes())
"""

# Records its argv (and the T5LITE_* env), prints to its log, then waits for a
# `release` file so the test can tell that the launcher did not wait for it.
FAKE_T5LITE = """\
#!{python}
import json, os, pathlib, sys, time
home = pathlib.Path(os.environ["HOME"])
(home / "t5lite_argv.json").write_text(json.dumps(sys.argv[1:]), encoding="utf-8")
print("fake t5lite: step 1", flush=True)
deadline = time.time() + 30
while not (home / "release").exists() and time.time() < deadline:
    time.sleep(0.05)
print("fake t5lite: done", flush=True)
"""

# Records argv for the commands a worker must not really run here.
FAKE_RECORDER = """\
#!{python}
import json, os, pathlib, sys
with open(pathlib.Path(os.environ["HOME"]) / "calls.jsonl", "a", encoding="utf-8") as f:
    f.write(json.dumps([pathlib.Path(sys.argv[0]).name] + sys.argv[1:]) + "\\n")
sys.exit(int(os.environ.get("FAKE_RECORDER_RC", "0")))
"""


def _script(path: pathlib.Path, text: str) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.format(python=sys.executable), encoding="utf-8")
    path.chmod(0o755)
    return path


class FakeCloud:
    """A fake gcloud on PATH and one fake worker (its home directory)."""

    def __init__(self, tmp: pathlib.Path):
        self.bin = tmp / "bin"
        self.worker_bin = tmp / "worker_bin"
        self.home = tmp / "worker_home"
        self.log = tmp / "gcloud.jsonl"
        self.home.mkdir()
        self.log.touch()
        _script(self.bin / "gcloud", FAKE_GCLOUD)
        _script(self.home / "t5lite" / ".venv" / "bin" / "t5lite", FAKE_T5LITE)
        for name in ("pkill", "pgrep"):  # never signal real processes
            _script(self.worker_bin / name, FAKE_RECORDER)
        self.env = dict(
            os.environ,
            PATH=f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            FAKE_GCLOUD_LOG=str(self.log),
            FAKE_WORKER_HOME=str(self.home),
            FAKE_WORKER_BIN=str(self.worker_bin),
        )
        for var in ("T5LITE_TPU_NAME", "T5LITE_ZONE", "T5LITE_PROJECT"):
            self.env.pop(var, None)

    def run(self, *args, env=None, timeout=60):
        return subprocess.run(
            [BASH, str(TPU_VM), *args], env=env or self.env, capture_output=True,
            text=True, encoding="utf-8", timeout=timeout,
        )

    def calls(self):
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines()]

    def worker_calls(self):
        path = self.home / "calls.jsonl"
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def cloud(tmp_path):
    return FakeCloud(tmp_path)


def _wait_for(predicate, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


LOCATION = ["--name=t5-test", "--zone=us-central2-b", "--project=my-proj"]


def test_train_passes_tricky_args_byte_exact_and_runs_detached(cloud):
    result = cloud.run("train", *LOCATION, "--", *TRICKY_ARGS)
    assert result.returncode == 0, result.stderr

    # The launcher returned while t5lite still runs (it waits for `release`).
    argv_file = cloud.home / "t5lite_argv.json"
    assert _wait_for(argv_file.exists)
    assert json.loads(argv_file.read_text(encoding="utf-8")) == ["train", *TRICKY_ARGS]
    assert not pathlib.Path("/tmp/t5lite-pwned").exists()

    [call] = cloud.calls()
    assert call[:5] == ["compute", "tpus", "tpu-vm", "ssh", "t5-test"]
    assert "--zone=us-central2-b" in call and "--project=my-proj" in call
    assert "--worker=all" in call

    # Its output goes to a timestamped log whose name the launcher printed.
    logs = sorted((cloud.home / "t5lite" / "logs").glob("train-*.log"))
    assert len(logs) == 1
    assert f"t5lite/logs/{logs[0].name}" in result.stdout + result.stderr
    assert (cloud.home / "t5lite" / "logs" / "latest.log").resolve() == logs[0].resolve()
    assert _wait_for(lambda: "step 1" in logs[0].read_text(encoding="utf-8"))
    (cloud.home / "release").touch()
    assert _wait_for(lambda: "done" in logs[0].read_text(encoding="utf-8"))


def test_common_options_come_from_env(cloud):
    env = dict(cloud.env, T5LITE_TPU_NAME="env-tpu", T5LITE_ZONE="europe-west4-a",
               T5LITE_PROJECT="env-proj")
    result = cloud.run("delete", env=env)
    assert result.returncode == 0, result.stderr
    assert cloud.calls() == [["compute", "tpus", "tpu-vm", "delete", "env-tpu",
                              "--zone=europe-west4-a", "--project=env-proj", "--quiet"]]


def test_dry_run_runs_nothing_and_prints_the_commands(cloud):
    result = cloud.run("train", *LOCATION, "--dry-run", "--", *TRICKY_ARGS)
    assert result.returncode == 0, result.stderr
    assert cloud.calls() == []
    assert not (cloud.home / "t5lite" / "logs").exists()
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gcloud compute tpus tpu-vm ssh t5-test ")
    # The printed line is shell-quoted: a shell reads it back as one gcloud argv.
    words = subprocess.run(
        [BASH, "-c", f'printf "%s\\0" {lines[0]}'], capture_output=True, check=True,
    ).stdout.decode().split("\0")[:-1]
    assert words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "t5-test"]
    assert words[-2] == "--command"

    result = cloud.run("create", *LOCATION, "--accelerator-type=v4-8", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "gcloud compute tpus tpu-vm create t5-test --zone=us-central2-b --project=my-proj"
        " --accelerator-type=v4-8 --version=tpu-ubuntu2204-base"
    ]
    result = cloud.run("setup", *LOCATION, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert [line.split()[:5] for line in result.stdout.splitlines()] == [
        ["gcloud", "compute", "tpus", "tpu-vm", "scp"], ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
    assert cloud.calls() == []


@pytest.mark.parametrize("spot", [False, True])
def test_create(cloud, spot):
    result = cloud.run("create", *LOCATION, "--accelerator-type", "v4-32",
                       *(["--spot"] if spot else []))
    assert result.returncode == 0, result.stderr
    expected = ["compute", "tpus", "tpu-vm", "create", "t5-test", "--zone=us-central2-b",
                "--project=my-proj", "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]
    assert cloud.calls() == [expected + (["--spot"] if spot else [])]


def test_setup_copies_the_checkout_and_installs(cloud):
    venv_bin = cloud.home / "t5lite" / ".venv" / "bin"
    _script(venv_bin / "python", FAKE_RECORDER)  # an existing venv: not recreated
    _script(venv_bin / "pip", FAKE_RECORDER)
    (cloud.worker_bin / "python3").symlink_to(sys.executable)  # >= 3.11
    (cloud.home / "t5lite" / "stale.py").write_text("deleted upstream")

    result = cloud.run("setup", *LOCATION)
    assert result.returncode == 0, result.stderr
    scp, ssh = cloud.calls()
    assert scp[:4] == ["compute", "tpus", "tpu-vm", "scp"] and "--recurse" in scp
    assert "t5-test:t5lite.tar.gz" in scp and "--worker=all" in ssh
    code = cloud.home / "t5lite"
    assert (code / "pyproject.toml").read_bytes() == (REPO / "pyproject.toml").read_bytes()
    assert (code / "launch" / "tpu_vm.sh").exists()
    assert not (code / "stale.py").exists()
    assert (code / ".venv" / "bin" / "t5lite").exists()  # the venv is kept
    assert not (cloud.home / "t5lite.tar.gz").exists()
    assert ["pip", "install", "-q", "-e", ".[tpu,data,viz]"] in cloud.worker_calls()


def test_missing_zone_is_a_clear_error(cloud):
    result = cloud.run("create", "--name=t5-test", "--accelerator-type=v4-8")
    assert result.returncode == 2
    assert "--zone is required for create (or set T5LITE_ZONE)" in result.stderr
    assert cloud.calls() == []


def test_gcloud_missing_from_path_is_a_clear_error(tmp_path, cloud):
    bare = tmp_path / "bare_bin"  # bash only, no gcloud
    bare.mkdir()
    (bare / "bash").symlink_to(BASH)
    result = cloud.run("create", *LOCATION, "--accelerator-type=v4-8",
                       env=dict(cloud.env, PATH=str(bare)))
    assert result.returncode == 2
    assert "gcloud not found on PATH; install the Google Cloud SDK" in result.stderr


def test_unknown_subcommand_lists_the_valid_ones(cloud):
    result = cloud.run("lanch", *LOCATION)
    assert result.returncode == 2
    assert "unknown subcommand 'lanch'" in result.stderr
    for sub in ("create", "setup", "train", "logs", "status", "stop", "delete"):
        assert sub in result.stderr
    assert cloud.calls() == []


def test_help(cloud):
    result = cloud.run("--help")
    assert result.returncode == 0 and "Usage:" in result.stdout


@pytest.mark.parametrize("signal", [None, "INT"])
def test_stop_signals_training_on_every_worker(cloud, signal):
    result = cloud.run("stop", *LOCATION, *([f"--signal={signal}"] if signal else []))
    assert result.returncode == 0, result.stderr
    [call] = cloud.calls()
    assert call[3] == "ssh" and "--worker=all" in call
    assert cloud.worker_calls() == [["pkill", f"-{signal or 'TERM'}", "-f", "[t]5lite train"]]
    assert f"sent SIG{signal or 'TERM'}" in result.stdout


def test_status_and_logs(cloud):
    logs = cloud.home / "t5lite" / "logs"
    logs.mkdir(parents=True)
    (logs / "train-1.log").write_text("".join(f"line {i}\n" for i in range(150)))
    (logs / "latest.log").symlink_to("train-1.log")

    result = cloud.run("logs", *LOCATION, "--worker=3", "--no-follow")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"line {i}" for i in range(50, 150)]
    assert "--worker=3" in cloud.calls()[0]

    result = cloud.run("status", *LOCATION)
    assert result.returncode == 0, result.stderr
    describe, ssh = cloud.calls()[1:]
    assert describe[:5] == ["compute", "tpus", "tpu-vm", "describe", "t5-test"]
    assert "--worker=all" in ssh
    assert ["pgrep", "-af", "[t]5lite train"] in cloud.worker_calls()


# ---------------------------------------------------------------- launch/gpu.sh

FAKE_GPU_T5LITE = """\
#!{python}
import json, os, sys
keys = ["CUDA_VISIBLE_DEVICES", "T5LITE_COORDINATOR_ADDRESS", "T5LITE_NUM_PROCESSES",
        "T5LITE_PROCESS_ID", "XLA_FLAGS", "XLA_PYTHON_CLIENT_MEM_FRACTION"]
record = {{"argv": sys.argv[1:], "env": {{k: os.environ.get(k) for k in keys}}}}
with open(os.environ["FAKE_T5LITE_LOG"], "a", encoding="utf-8") as f:
    f.write(json.dumps(record) + "\\n")
fail = os.environ.get("FAKE_FAIL_PROCESS_ID")
sys.exit(7 if fail is not None and fail == os.environ.get("T5LITE_PROCESS_ID") else 0)
"""


@pytest.fixture
def gpu_env(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "XLA_PYTHON_CLIENT_MEM_FRACTION", "CUDA_VISIBLE_DEVICES")
           and not k.startswith("T5LITE_")}
    env["T5LITE_BIN"] = str(_script(tmp_path / "t5lite", FAKE_GPU_T5LITE))
    env["FAKE_T5LITE_LOG"] = str(tmp_path / "t5lite.jsonl")
    return env


def _gpu(env, *args):
    return subprocess.run([BASH, str(GPU), *args], env=env, capture_output=True, text=True,
                          encoding="utf-8", timeout=60)


def _gpu_records(env):
    path = pathlib.Path(env["FAKE_T5LITE_LOG"])
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_gpu_dry_run_shows_command_and_env(gpu_env):
    result = _gpu(gpu_env, "--dry-run", "--gin_file=a.gin", "--gin.MODEL_DIR=\"'/tmp/a b'\"")
    assert result.returncode == 0, result.stderr
    assert _gpu_records(gpu_env) == []
    [line] = result.stdout.splitlines()
    assert "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true" in line
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9" in line
    assert f"{gpu_env['T5LITE_BIN']} train --gin_file=a.gin" in line

    env = dict(gpu_env, XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=false",
               XLA_PYTHON_CLIENT_MEM_FRACTION="0.5")
    result = _gpu(env, "--dry-run", "--num_processes", "2", "--", "--gin_file=a.gin")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    for i, line in enumerate(lines):
        assert "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=false " in line  # kept
        assert "XLA_PYTHON_CLIENT_MEM_FRACTION=0.5" in line
        assert f"CUDA_VISIBLE_DEVICES={i} " in line and f"T5LITE_PROCESS_ID={i} " in line
        assert "T5LITE_NUM_PROCESSES=2" in line and "T5LITE_COORDINATOR_ADDRESS=127.0.0.1:" in line


def test_gpu_one_process_passes_args_exactly(gpu_env):
    result = _gpu(gpu_env, *TRICKY_ARGS[:7])
    assert result.returncode == 0, result.stderr
    [record] = _gpu_records(gpu_env)
    assert record["argv"] == ["train", *TRICKY_ARGS[:7]]
    assert record["env"]["T5LITE_PROCESS_ID"] is None
    assert record["env"]["XLA_FLAGS"] == "--xla_gpu_enable_latency_hiding_scheduler=true"


def test_gpu_num_processes_runs_one_process_per_gpu(gpu_env):
    result = _gpu(gpu_env, "--num_processes", "2", "--port=23456", "--gin_file=a.gin")
    assert result.returncode == 0, result.stderr
    records = sorted(_gpu_records(gpu_env), key=lambda r: r["env"]["T5LITE_PROCESS_ID"])
    assert [r["argv"] for r in records] == [["train", "--gin_file=a.gin"]] * 2
    assert [r["env"]["T5LITE_PROCESS_ID"] for r in records] == ["0", "1"]
    assert [r["env"]["CUDA_VISIBLE_DEVICES"] for r in records] == ["0", "1"]
    assert {r["env"]["T5LITE_COORDINATOR_ADDRESS"] for r in records} == {"127.0.0.1:23456"}
    assert {r["env"]["T5LITE_NUM_PROCESSES"] for r in records} == {"2"}

    # Process i gets the i-th of the GPUs this job was given.
    env = dict(gpu_env, CUDA_VISIBLE_DEVICES="4,6")
    pathlib.Path(env["FAKE_T5LITE_LOG"]).unlink()
    assert _gpu(env, "--num_processes=2").returncode == 0
    assert sorted(r["env"]["CUDA_VISIBLE_DEVICES"] for r in _gpu_records(env)) == ["4", "6"]


def test_gpu_num_processes_propagates_a_failure(gpu_env):
    env = dict(gpu_env, FAKE_FAIL_PROCESS_ID="1")
    result = _gpu(env, "--num_processes", "2", "--gin_file=a.gin")
    assert result.returncode == 7
    assert "process 1" in result.stderr


# ---------------------------------------------------------------- launch/slurm_example.sbatch

FAKE_SRUN = """\
#!{python}
import json, os, sys
env = {{k: os.environ.get(k) for k in ("JAX_LOCAL_DEVICE_IDS", "XLA_FLAGS")}}
print(json.dumps({{"argv": sys.argv[1:], "env": env, "cwd": os.getcwd()}}))
"""


def test_slurm_example_runs_t5lite_train_with_srun(tmp_path):
    _script(tmp_path / "srun", FAKE_SRUN)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PATH=f"{tmp_path}{os.pathsep}{env['PATH']}", SLURM_SUBMIT_DIR=str(REPO),
               SLURM_JOB_ID="123")
    result = subprocess.run([BASH, str(REPO / "launch" / "slurm_example.sbatch")], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["argv"][:3] == ["--kill-on-bad-exit=1", ".venv/bin/t5lite", "train"]
    assert any(a.startswith("--gin.MODEL_DIR='") for a in record["argv"])
    assert record["env"]["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3,4,5,6,7"
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in record["env"]["XLA_FLAGS"]
    assert record["cwd"] == str(REPO)


def test_cache_runs_on_every_worker_with_its_share(cloud):
    """`cache` runs `t5lite cache ARGS --shard=auto` on every worker, detached, logged."""
    args = ["c4_json_span_corruption", "--output", "gs://b/cache", "--gin.C4_JSON_FILES='a b'"]
    result = cloud.run("cache", *LOCATION, "--", *args)
    assert result.returncode == 0, result.stderr
    argv_file = cloud.home / "t5lite_argv.json"
    assert _wait_for(argv_file.exists)
    assert json.loads(argv_file.read_text(encoding="utf-8")) == ["cache", *args, "--shard=auto"]
    [call] = cloud.calls()
    assert call[:4] == ["compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in call
    logs = sorted((cloud.home / "t5lite" / "logs").glob("cache-*.log"))
    assert len(logs) == 1
    (cloud.home / "release").touch()
    result = cloud.run("cache", *LOCATION)
    assert result.returncode == 2 and "cache needs the t5lite cache arguments" in result.stderr


def test_shard_auto_finds_the_host(monkeypatch):
    from t5lite.runtime import devices  # pylint: disable=g-import-not-at-top
    for var in ("T5LITE_PROCESS_ID", "T5LITE_NUM_PROCESSES", "SLURM_PROCID", "SLURM_NTASKS",
                "TPU_WORKER_ID", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TPU_WORKER_ID", "2")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "h0,h1,h2,h3")
    assert devices.host_and_count() == (2, 4)
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "3")
    assert devices.host_and_count() == (1, 3)
