#!/usr/bin/env bash
# Train on the GPUs of this one node.
#
#   launch/gpu.sh [--dry-run] [--num_processes N] [--port P] [--] T5LITE_TRAIN_ARGS...
#
# Default: one process, `t5lite train ARGS`, that sees every local GPU.
# --num_processes N: N processes, process i sees only GPU i (CUDA_VISIBLE_DEVICES)
# and gets T5LITE_COORDINATOR_ADDRESS=127.0.0.1:P, T5LITE_NUM_PROCESSES=N and
# T5LITE_PROCESS_ID=i, from which t5lite calls jax.distributed.initialize. The
# script waits for all of them; if one fails, the others are sent SIGTERM and
# the script exits with the failed process's status. Ctrl-C / SIGTERM are passed
# on as SIGTERM, so every process checkpoints and exits.
#
# XLA_FLAGS gets --xla_gpu_enable_latency_hiding_scheduler=true unless XLA_FLAGS
# already sets that flag; XLA_PYTHON_CLIENT_MEM_FRACTION defaults to 0.9.
# The t5lite used is $T5LITE_BIN, else .venv/bin/t5lite of this checkout, else
# t5lite on PATH.
set -euo pipefail

usage() { sed -n '2,17s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
die() { echo "gpu.sh: error: $*" >&2; exit 2; }

dry_run=0
num_processes=0
port=8476
while (($# > 0)); do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --num_processes=* | --num-processes=*) num_processes="${1#*=}"; shift ;;
    --num_processes | --num-processes) (($# > 1)) || die "$1 needs a value"; num_processes="$2"; shift 2 ;;
    --port=*) port="${1#*=}"; shift ;;
    --port) (($# > 1)) || die "$1 needs a value"; port="$2"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) break ;;  # the first argument that is not ours starts t5lite's
  esac
done
[[ "$num_processes" =~ ^[0-9]+$ ]] || die "--num_processes must be a number, got '$num_processes'"
[[ "$port" =~ ^[0-9]+$ ]] || die "--port must be a number, got '$port'"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${T5LITE_BIN:-}" ]]; then
  t5lite="$T5LITE_BIN"
elif [[ -x "$repo/.venv/bin/t5lite" ]]; then
  t5lite="$repo/.venv/bin/t5lite"
else
  t5lite="t5lite"
fi

if [[ " ${XLA_FLAGS:-} " != *" --xla_gpu_enable_latency_hiding_scheduler"[=\ ]* ]]; then
  export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_latency_hiding_scheduler=true"
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"

# shellcheck source=launch/shquote.sh
source "$(dirname "${BASH_SOURCE[0]}")/shquote.sh"

common_env=(XLA_FLAGS="$XLA_FLAGS" XLA_PYTHON_CLIENT_MEM_FRACTION="$XLA_PYTHON_CLIENT_MEM_FRACTION")

# ---------------------------------------------------------------- one process
if ((num_processes <= 1)); then
  if ((dry_run)); then
    shquote "${common_env[@]}" "$t5lite" train "$@"
    exit 0
  fi
  exec "$t5lite" train "$@"
fi

# ---------------------------------------------------------------- N processes
# Process i gets the i-th GPU of CUDA_VISIBLE_DEVICES if that is set, else GPU i.
gpus=()
if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
  IFS=, read -r -a gpus <<<"$CUDA_VISIBLE_DEVICES"
  ((${#gpus[@]} >= num_processes)) ||
    die "--num_processes $num_processes but CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES has ${#gpus[@]} GPUs"
else
  for ((i = 0; i < num_processes; i++)); do gpus+=("$i"); done
fi

rank_env() {  # rank_env I: the environment of process I, as NAME=VALUE words
  echo "CUDA_VISIBLE_DEVICES=${gpus[$1]} T5LITE_COORDINATOR_ADDRESS=127.0.0.1:$port" \
    "T5LITE_NUM_PROCESSES=$num_processes T5LITE_PROCESS_ID=$1"
}

if ((dry_run)); then
  for ((i = 0; i < num_processes; i++)); do
    # shellcheck disable=SC2046  # rank_env's words have no spaces or globs
    shquote "${common_env[@]}" $(rank_env "$i") "$t5lite" train "$@"
  done
  exit 0
fi

declare -A rank_of=()  # pid -> process id
stop_all() { kill -TERM "${!rank_of[@]}" 2>/dev/null || true; }
trap 'echo "gpu.sh: stopping: SIGTERM to every process" >&2; stop_all' INT TERM

for ((i = 0; i < num_processes; i++)); do
  # shellcheck disable=SC2046
  env $(rank_env "$i") "$t5lite" train "$@" &
  rank_of[$!]=$i
done
echo "gpu.sh: started $num_processes processes (pids ${!rank_of[*]}), coordinator 127.0.0.1:$port" >&2

# Poll rather than `wait -n`, so this works the same with every bash >= 4.
failed=0
while ((${#rank_of[@]} > 0)); do
  for pid in "${!rank_of[@]}"; do
    kill -0 "$pid" 2>/dev/null && continue  # still running
    rc=0
    wait "$pid" || rc=$?
    if ((rc != 0 && failed == 0)); then
      failed=$rc
      echo "gpu.sh: process ${rank_of[$pid]} (pid $pid) exited with status $rc; stopping the others" >&2
      unset "rank_of[$pid]"
      stop_all
    fi
    unset "rank_of[$pid]"
  done
  ((${#rank_of[@]} == 0)) || sleep 0.2
done
exit "$failed"
