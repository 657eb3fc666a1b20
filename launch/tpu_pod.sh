#!/usr/bin/env bash
# Runs phasemix on every worker of a Cloud TPU VM pod slice (one JAX process per worker).
#
#   export TPU_NAME=my-v4-32 ZONE=us-central2-b PROJECT=my-project   # PROJECT is optional
#   launch/tpu_pod.sh setup                  # copy this checkout to every worker, make a venv
#   launch/tpu_pod.sh run experiments.grokking --workdir=/mnt/shared/runs/g97 --config.task.p=97
#   launch/tpu_pod.sh stop                   # SIGTERM: checkpoint, then exit (resume with run)
#   launch/tpu_pod.sh --dry-run setup        # (or DRY_RUN=1) print the commands, run nothing
#
# `setup` makes the venv with uv and a Python of PYTHON_VERSION (default 3.11): the TPU VM
# images ship Python 3.10, older than phasemix needs (>= 3.11), and uv fetches a standalone
# build where the VM has none. `run` starts the same command on all workers (gcloud ... ssh
# --worker=all) with --distributed=auto; phasemix finds the pod's workers and process 0's
# address from the TPU VM metadata by itself. The workdir must be a folder every worker mounts
# (e.g. a Filestore NFS share or a gcsfuse bucket): each worker writes its part of the
# checkpoints, and worker 0 the metrics. Re-running `run` resumes.
#
# Environment: TPU_NAME and ZONE (required), PROJECT, REMOTE_DIR (default phasemix, under the
# remote home), PIP_EXTRA (default '.[tpu]': the package with jax[tpu]), PYTHON_VERSION
# (default 3.11; at least 3.11), DRY_RUN (1: as --dry-run).
set -euo pipefail

usage() {
  echo "usage: TPU_NAME=... ZONE=... $0 [--dry-run] setup | run MODULE [FLAGS...] | stop" >&2
  exit 2
}

# One argument as the shell reads it back: bare if plain, else in single quotes (NAME=value
# and --flag=value quote only the value, so an environment assignment still reads as one).
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  elif [[ $1 =~ ^([A-Za-z0-9_@%+:,./-]+=)(.*)$ ]]; then
    printf "%s'%s'" "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]//\'/\'\\\'\'}"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Prints a command quoted, on one line.
show() {
  local line="" arg
  for arg in "$@"; do
    line+="$(quote "$arg") "
  done
  echo "${line% }"
}

dry_run=0
[[ ${DRY_RUN:-0} == 1 ]] && dry_run=1
if [[ ${1:-} == --dry-run ]]; then
  dry_run=1
  shift
fi
[[ $# -ge 1 ]] || usage
: "${TPU_NAME:?set TPU_NAME to the name of the TPU VM}"
: "${ZONE:?set ZONE to the zone of the TPU VM}"
remote_dir=${REMOTE_DIR:-phasemix}
pip_extra=${PIP_EXTRA:-.[tpu]}
python_version=${PYTHON_VERSION:-3.11}
if [[ ! $python_version =~ ^3\.(1[1-9]|[2-9][0-9])(\.[0-9]+)?$ ]]; then
  echo "error: PYTHON_VERSION=$python_version: phasemix needs Python >= 3.11, e.g. PYTHON_VERSION=3.12" >&2
  exit 2
fi

gcloud_args=(--zone="$ZONE")
if [[ -n ${PROJECT:-} ]]; then
  gcloud_args+=(--project="$PROJECT")
fi

# Runs a command here, or prints it in a dry run.
do_or_show() {
  if ((dry_run)); then
    show "$@"
  else
    "$@"
  fi
}

on_all_workers() {
  do_or_show gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_args[@]}" --worker=all \
    --command "$1"
}

command=$1
shift
case $command in
  setup)
    # The tracked files of this checkout, as one archive, unpacked on every worker.
    if ((dry_run)); then
      archive=${TMPDIR:-/tmp}/phasemix.XXXXXX.tar.gz  # mktemp's name, not made
    else
      archive=$(mktemp -t phasemix.XXXXXX.tar.gz)
      trap 'rm -f "$archive"' EXIT
    fi
    root=$(cd "$(dirname "$0")/.." && pwd)
    do_or_show git -C "$root" archive --format=tar.gz -o "$archive" HEAD
    do_or_show gcloud compute tpus tpu-vm scp "${gcloud_args[@]}" --worker=all "$archive" \
      "$TPU_NAME:phasemix.tar.gz"
    dir=$(printf '%q' "$remote_dir")
    # uv from PyPI (pip --user) or, where pip is missing, from its installer; both put it in
    # ~/.local/bin. `uv venv --python` finds that Python on the VM or downloads a build of it.
    on_all_workers "set -e; mkdir -p $dir; tar -xzf phasemix.tar.gz -C $dir; cd $dir; \
export PATH=\"\$HOME/.local/bin:\$PATH\"; \
command -v uv >/dev/null || python3 -m pip install --user --quiet uv \
|| curl -LsSf https://astral.sh/uv/install.sh | sh; \
rm -rf .venv; uv venv --quiet --python $python_version .venv; \
uv pip install --quiet --python .venv/bin/python -e $(printf '%q' "$pip_extra"); \
.venv/bin/python -c \"import sys; assert sys.version_info >= (3, 11), sys.version; \
import jax; print(sys.version.split()[0], jax.process_index(), jax.local_devices())\""
    ;;
  run)
    [[ $# -ge 1 ]] || usage
    module=$1
    shift
    # Quoted here so that flags with spaces or quotes reach python unchanged. --distributed=auto
    # first, so a flag given here still wins.
    args=$(printf '%q ' "$module" --distributed=auto "$@")
    # exec: the pid written is python's own, for `stop`.
    on_all_workers "cd $(printf '%q' "$remote_dir") && echo \$\$ > .phasemix_run.pid && \
exec .venv/bin/python -m ${args% }"
    if ((dry_run)); then
      echo "# every worker runs that --command; JAX reads the worker list and process 0's address from the TPU VM metadata (worker i is process i of the slice's workers)"
    fi
    ;;
  stop)
    on_all_workers "cd $(printf '%q' "$remote_dir") && \
if [ -f .phasemix_run.pid ]; then kill -TERM \$(cat .phasemix_run.pid) || true; fi"
    ;;
  *)
    usage
    ;;
esac
