#!/usr/bin/env bash
# One boring launch script for Cloud TPU VMs (after big_vision's run_tpu.sh):
# every host of a TPU VM slice runs the same command, `t5lite train ...`.
#
#   launch/tpu_vm.sh create --name=t5 --zone=us-central2-b --accelerator-type=v4-32 [--spot]
#   launch/tpu_vm.sh setup  --name=t5 --zone=us-central2-b
#   launch/tpu_vm.sh train  --name=t5 --zone=us-central2-b -- --gin_file=... --gin.MODEL_DIR="'gs://b/run'"
#   launch/tpu_vm.sh cache  --name=t5 --zone=us-central2-b -- c4_json_span_corruption --output gs://b/cache
#   launch/tpu_vm.sh logs | status | stop | delete  --name=t5 --zone=us-central2-b
#
# Run `launch/tpu_vm.sh --help` for every option.
set -euo pipefail

readonly SUBCOMMANDS="create setup train cache logs status stop delete"
# shellcheck disable=SC2088  # the tilde is for the worker's shell to expand
readonly REMOTE_DIR='~/t5lite'  # on every worker

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh SUBCOMMAND [OPTIONS] [-- T5LITE_ARGS...]

Subcommands:
  create   create the TPU VM (gcloud compute tpus tpu-vm create)
  setup    copy this checkout to every worker, unpack into ~/t5lite and
           pip install -e '.[tpu,data,viz]' into ~/t5lite/.venv
  train    run `t5lite train ARGS` (ARGS = everything after `--`, passed
           byte-exact) on every worker, detached; logs to
           ~/t5lite/logs/train-<timestamp>.log on each worker
  cache    run `t5lite cache ARGS --shard auto` on every worker, detached: the
           token cache built in parallel, each worker taking its share of the
           input files (t5lite finds the worker's number and count)
  logs     tail the latest train/cache log (worker 0, or --worker=N)
  status   describe the TPU VM and list t5lite train processes on all workers
  stop     send SIGTERM (or --signal=INT) to t5lite train on all workers;
           it saves a checkpoint and exits
  delete   delete the TPU VM

Options (--opt=VALUE or --opt VALUE):
  --name NAME              TPU VM name            (or env T5LITE_TPU_NAME)
  --zone ZONE              e.g. us-central2-b     (or env T5LITE_ZONE)
  --project PROJECT        GCP project            (or env T5LITE_PROJECT;
                           default: gcloud's configured project)
  --accelerator-type TYPE  create: e.g. v4-32, v5litepod-16
  --version VERSION        create: TPU runtime (default tpu-ubuntu2204-base)
  --spot                   create: a Spot (preemptible) TPU VM
  --python PYTHON          setup: interpreter for the venv on the workers
                           (default python3; python3.11 is installed with
                           apt if python3 is older than 3.11)
  --worker N               logs: which worker (default 0)
  --no-follow              logs: print the last lines and return
  --signal INT|TERM        stop: signal to send (default TERM)
  --dry-run                print each gcloud command (shell-quoted), run nothing
  -h, --help               this help
EOF
}

die() {  # die MESSAGE: usage error, exit 2
  echo "tpu_vm.sh: error: $*" >&2
  exit 2
}

# ---------------------------------------------------------------- arguments
cmd=""
name="${T5LITE_TPU_NAME:-}"
zone="${T5LITE_ZONE:-}"
project="${T5LITE_PROJECT:-}"
accelerator_type=""
version="tpu-ubuntu2204-base"
spot=0
python="python3"
worker=0
follow=1
signal="TERM"
dry_run=0
train_args=()

if (($# == 0)); then
  usage >&2
  exit 2
fi
case "$1" in
  -h | --help) usage; exit 0 ;;
esac
cmd="$1"
shift
case " $SUBCOMMANDS " in
  *" $cmd "*) ;;
  *) die "unknown subcommand '$cmd'; valid subcommands: ${SUBCOMMANDS// /, }" ;;
esac

while (($# > 0)); do
  opt="$1"
  shift
  value=""
  has_value=0
  if [[ "$opt" == --*=* ]]; then
    value="${opt#*=}"
    opt="${opt%%=*}"
    has_value=1
  fi
  case "$opt" in
    --name | --zone | --project | --accelerator-type | --version | --python | --worker | --signal)
      if ((!has_value)); then
        (($# > 0)) || die "$opt needs a value"
        value="$1"
        shift
      fi
      case "$opt" in
        --name) name="$value" ;;
        --zone) zone="$value" ;;
        --project) project="$value" ;;
        --accelerator-type) accelerator_type="$value" ;;
        --version) version="$value" ;;
        --python) python="$value" ;;
        --worker) worker="$value" ;;
        --signal) signal="${value#SIG}" ;;
      esac
      ;;
    --spot) spot=1 ;;
    --no-follow) follow=0 ;;
    --dry-run) dry_run=1 ;;
    -h | --help) usage; exit 0 ;;
    --)
      [[ "$cmd" == train || "$cmd" == cache ]] || die "arguments after -- are only taken by train and cache"
      train_args=("$@")
      break
      ;;
    *) die "unknown option '$opt' for $cmd (see --help)" ;;
  esac
done

require() {  # require VALUE FLAG ENVVAR
  [[ -n "$1" ]] || die "$2 is required for $cmd${3:+ (or set $3)}"
}
require "$name" --name T5LITE_TPU_NAME
require "$zone" --zone T5LITE_ZONE
[[ "$cmd" != create ]] || require "$accelerator_type" --accelerator-type ""
[[ "$worker" =~ ^[0-9]+$ ]] || die "--worker must be a worker number, got '$worker'"
[[ "$signal" == INT || "$signal" == TERM ]] || die "--signal must be INT or TERM, got '$signal'"
[[ "$cmd" != train || ${#train_args[@]} -gt 0 ]] ||
  die "train needs the t5lite train arguments after --, e.g. -- --gin_file=..."
[[ "$cmd" != cache || ${#train_args[@]} -gt 0 ]] ||
  die "cache needs the t5lite cache arguments after --, e.g. -- c4_json_span_corruption --output gs://BUCKET/cache"

if ((!dry_run)) && ! command -v gcloud >/dev/null 2>&1; then
  die "gcloud not found on PATH; install the Google Cloud SDK (https://cloud.google.com/sdk/docs/install) and run 'gcloud auth login'"
fi

# ---------------------------------------------------------------- helpers
location=(--zone="$zone")
[[ -z "$project" ]] || location+=(--project="$project")

# shellcheck source=launch/shquote.sh
source "$(dirname "${BASH_SOURCE[0]}")/shquote.sh"

run() {  # run CMD...: print it (shell-quoted) with --dry-run, else run it
  if ((dry_run)); then
    shquote "$@"
  else
    "$@"
  fi
}

ssh_all() {  # ssh_all WORKER COMMAND_TEXT: run COMMAND_TEXT in the worker's shell
  run gcloud compute tpus tpu-vm ssh "$name" "${location[@]}" --worker="$1" --command "$2"
}

# ---------------------------------------------------------------- subcommands
case "$cmd" in
  create)
    create=(gcloud compute tpus tpu-vm create "$name" "${location[@]}"
      --accelerator-type="$accelerator_type" --version="$version")
    ((!spot)) || create+=(--spot)
    run "${create[@]}"
    ;;

  setup)
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    tmpdir="$(mktemp -d)"
    trap 'rm -rf "$tmpdir"' EXIT
    tarball="$tmpdir/t5lite.tar.gz"
    if ((dry_run)); then
      echo "# would pack $repo (files git does not ignore, no .venv) into $tarball" >&2
    elif git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
      # The working tree as it is now: tracked and untracked files, minus
      # what .gitignore names (and minus deleted files, which tar can't read).
      git -C "$repo" ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do
          [[ "$f" == .venv/* || ! -e "$repo/$f" ]] || printf '%s\0' "$f"
        done |
        COPYFILE_DISABLE=1 tar -czf "$tarball" -C "$repo" --null -T -
    else
      COPYFILE_DISABLE=1 tar -czf "$tarball" --exclude=.venv --exclude=.git -C "$repo" .
    fi
    run gcloud compute tpus tpu-vm scp --recurse "$tarball" "$name:t5lite.tar.gz" "${location[@]}" --worker=all
    # Unpack over the old code (keeping .venv and logs), then install.
    # python3 must be >= 3.11 (pyproject); Ubuntu 22.04 images ship 3.10.
    remote="set -e; mkdir -p $REMOTE_DIR && cd $REMOTE_DIR"
    remote+=" && find . -mindepth 1 -maxdepth 1 ! -name .venv ! -name logs -exec rm -rf {} +"
    remote+=" && tar -xzf ~/t5lite.tar.gz && rm -f ~/t5lite.tar.gz"
    remote+=" && py=$(printf '%q' "$python")"
    remote+=" && if ! \$py -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then py=python3.11;"
    remote+=" command -v \$py >/dev/null || { sudo apt-get -qq update && sudo DEBIAN_FRONTEND=noninteractive apt-get -qq install -y python3.11 python3.11-venv; }; fi"
    remote+=" && if [ ! -x .venv/bin/python ]; then \$py -m venv .venv || { sudo apt-get -qq update"
    remote+=" && sudo DEBIAN_FRONTEND=noninteractive apt-get -qq install -y \"\$(basename \$py)-venv\" && \$py -m venv .venv; }; fi"
    remote+=" && .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[tpu,data,viz]'"
    remote+=" && echo \"\$(hostname): t5lite installed in $REMOTE_DIR\""
    ssh_all all "$remote"
    ;;

  train | cache)
    # cache: each worker builds its share of the input files (t5lite cache --shard auto).
    [[ "$cmd" != cache ]] || train_args+=(--shard=auto)
    # The arguments travel as base64 of NUL-terminated strings: the worker's
    # shell only ever sees [A-Za-z0-9+/=], and decodes them into a bash array,
    # so quotes, spaces, $, ;, backticks and newlines arrive untouched.
    args_b64="$(printf '%s\0' "${train_args[@]}" | base64 | tr -d '\n')"
    log="logs/$cmd-$(date -u +%Y%m%d-%H%M%S).log"
    echo "tpu_vm.sh: every worker runs: t5lite $cmd $(shquote "${train_args[@]}")" >&2
    remote="set -e; cd $REMOTE_DIR && mkdir -p logs"
    remote+="; [ -x .venv/bin/t5lite ] || { echo \"\$(hostname): no $REMOTE_DIR/.venv/bin/t5lite; run: launch/tpu_vm.sh setup\" >&2; exit 1; }"
    remote+="; mapfile -d \"\" -t args < <(printf %s $args_b64 | base64 -d)"
    remote+="; nohup setsid .venv/bin/t5lite $cmd \"\${args[@]}\" > $log 2>&1 < /dev/null &"
    remote+=" ln -sfn ${log#logs/} logs/latest.log"
    remote+="; echo \"\$(hostname): t5lite $cmd started (pid \$!), log: $REMOTE_DIR/$log\""
    ssh_all all "$remote"
    echo "tpu_vm.sh: log on each worker: $REMOTE_DIR/$log  (see: launch/tpu_vm.sh logs)" >&2
    ;;

  logs)
    if ((follow)); then tail_opts="-n 100 -F"; else tail_opts="-n 100"; fi
    ssh_all "$worker" "tail $tail_opts $REMOTE_DIR/logs/latest.log"
    ;;

  status)
    run gcloud compute tpus tpu-vm describe "$name" "${location[@]}"
    # '[t]5lite' matches "t5lite" but not this command line itself.
    ssh_all all "h=\$(hostname); pgrep -af '[t]5lite train' | sed \"s|^|\$h: |\"; pgrep -f '[t]5lite train' >/dev/null || echo \"\$h: no t5lite train running\""
    ;;

  stop)
    ssh_all all "h=\$(hostname); if pkill -$signal -f '[t]5lite train'; then echo \"\$h: sent SIG$signal to t5lite train (it checkpoints, then exits)\"; else echo \"\$h: no t5lite train running\"; fi"
    ;;

  delete)
    run gcloud compute tpus tpu-vm delete "$name" "${location[@]}" --quiet
    ;;
esac
