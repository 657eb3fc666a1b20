#!/usr/bin/env bash
# Runs phasemix on every worker of a Cloud TPU VM pod slice (one JAX process per worker).
#
#   export TPU_NAME=my-v4-32 ZONE=us-central2-b PROJECT=my-project   # PROJECT is optional
#   launch/tpu_pod.sh setup                  # copy this checkout to every worker, make a venv
#   launch/tpu_pod.sh run experiments.grokking --workdir=/mnt/shared/runs/g97 --config.task.p=97
#   launch/tpu_pod.sh stop                   # SIGTERM: checkpoint, then exit (resume with run)
#
# `run` starts the same command on all workers (gcloud ... ssh --worker=all); phasemix finds the
# pod's workers and process 0's address from the TPU VM metadata by itself. The workdir must be
# a folder every worker mounts (e.g. a Filestore NFS share or a gcsfuse bucket): each worker
# writes its part of the checkpoints, and worker 0 the metrics. Re-running `run` resumes.
#
# Environment: TPU_NAME and ZONE (required), PROJECT, REMOTE_DIR (default phasemix, under the
# remote home), PIP_EXTRA (default '.[tpu]': the package with jax[tpu]).
set -euo pipefail

usage() {
  echo "usage: TPU_NAME=... ZONE=... $0 setup | run MODULE [FLAGS...] | stop" >&2
  exit 2
}
[[ $# -ge 1 ]] || usage
: "${TPU_NAME:?set TPU_NAME to the name of the TPU VM}"
: "${ZONE:?set ZONE to the zone of the TPU VM}"
remote_dir=${REMOTE_DIR:-phasemix}
pip_extra=${PIP_EXTRA:-.[tpu]}

gcloud_args=(--zone="$ZONE")
if [[ -n ${PROJECT:-} ]]; then
  gcloud_args+=(--project="$PROJECT")
fi

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_args[@]}" --worker=all --command "$1"
}

command=$1
shift
case $command in
  setup)
    # The tracked files of this checkout, as one archive, unpacked on every worker.
    archive=$(mktemp -t phasemix.XXXXXX.tar.gz)
    trap 'rm -f "$archive"' EXIT
    git -C "$(dirname "$0")/.." archive --format=tar.gz -o "$archive" HEAD
    gcloud compute tpus tpu-vm scp "${gcloud_args[@]}" --worker=all "$archive" \
      "$TPU_NAME:phasemix.tar.gz"
    on_all_workers "set -e; mkdir -p $(printf '%q' "$remote_dir"); \
      tar -xzf phasemix.tar.gz -C $(printf '%q' "$remote_dir"); cd $(printf '%q' "$remote_dir"); \
      python3 -m venv .venv; .venv/bin/pip install -q --upgrade pip; \
      .venv/bin/pip install -q -e $(printf '%q' "$pip_extra"); \
      .venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_devices())'"
    ;;
  run)
    [[ $# -ge 1 ]] || usage
    # Quoted here so that flags with spaces or quotes reach python unchanged.
    args=$(printf '%q ' "$@")
    # exec: the pid written is python's own, for `stop`.
    on_all_workers "cd $(printf '%q' "$remote_dir") && echo \$\$ > .phasemix_run.pid && \
      exec .venv/bin/python -m $args"
    ;;
  stop)
    on_all_workers "cd $(printf '%q' "$remote_dir") && \
      if [ -f .phasemix_run.pid ]; then kill -TERM \$(cat .phasemix_run.pid) || true; fi"
    ;;
  *)
    usage
    ;;
esac
