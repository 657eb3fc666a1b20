#!/usr/bin/env bash
# Starts N processes of a phasemix entry point on this machine, joined over loopback with CPU
# collectives (gloo): the multi-host code path of a cluster job, on one machine, for testing.
#
#   launch/local_multiprocess.sh 2 experiments.grokking \
#       --config=experiments/grokking.py:smoke --workdir=/tmp/grokking_2proc
#   launch/local_multiprocess.sh --dry-run 2 experiments.grokking --workdir=/tmp/g   # print only
#
# Process 0 prints to this terminal; process i > 0 writes to $LOG_DIR/process_<i>.log.
# If any process fails, the others are stopped and this script exits with the first failure's
# status, so nothing is left waiting on a dead peer. Re-running the same command resumes.
# --dry-run (or DRY_RUN=1) prints each process's command, one a line, and starts nothing.
#
# Environment (all optional):
#   PYTHON      the interpreter (default: the checkout's .venv/bin/python if there, else python3)
#   PORT        the coordinator's port on localhost (default: a free one)
#   LOG_DIR     where processes 1..N-1 log (default: a new temporary folder)
#   JAX_PLATFORMS  default cpu, so a machine with a GPU still tests the CPU path
#   GRACE       seconds the others get to stop after a failure before SIGKILL (default 20)
#   DRY_RUN     1: as --dry-run

# `wait -n` (below) needs bash >= 4.3; macOS ships bash 3.2 as /bin/bash.
bash_version=("${BASH_VERSINFO[@]:0:2}")
if ((bash_version[0] < 4 || (bash_version[0] == 4 && bash_version[1] < 3))); then
  echo "error: $0 needs bash >= 4.3 (for wait -n), not ${bash_version[0]}.${bash_version[1]}: run it with a newer bash (on macOS: brew install bash)" >&2
  exit 2
fi
set -euo pipefail

dry_run=0
[[ ${DRY_RUN:-0} == 1 ]] && dry_run=1
if [[ ${1:-} == --dry-run ]]; then
  dry_run=1
  shift
fi
if [[ $# -lt 2 || ! $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [--dry-run] NUM_PROCESSES MODULE [FLAGS...]   e.g. $0 2 experiments.grokking --workdir=/tmp/g" >&2
  exit 2
fi
num_processes=$1
module=$2
shift 2

root=$(cd "$(dirname "$0")/.." && pwd)
default_python=python3
if [[ -x $root/.venv/bin/python ]]; then  # the README's install, used without activating it
  default_python=$root/.venv/bin/python
fi
python=${PYTHON:-$default_python}
grace=${GRACE:-20}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
if ((dry_run)); then  # nothing is bound or made: the names stand for what a real run picks
  port=${PORT:-FREE_PORT}
  log_dir=${LOG_DIR:-${TMPDIR:-/tmp}/phasemix_local.XXXXXX}
else
  port=${PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
  log_dir=${LOG_DIR:-$(mktemp -d -t phasemix_local.XXXXXX)}
  mkdir -p "$log_dir"
fi

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

pids=()
stop_all() {
  local signal=$1 pid
  for pid in ${pids[@]+"${pids[@]}"}; do
    kill "-$signal" "$pid" 2>/dev/null || true
  done
}
# Ctrl-C or a scheduler's SIGTERM reaches every process (each saves a checkpoint on SIGTERM).
trap 'stop_all TERM' INT TERM

for ((i = 0; i < num_processes; i++)); do
  command=("$python" -m "$module" --coordinator_address="127.0.0.1:$port"
           --num_processes="$num_processes" --process_id="$i" "$@")
  if ((dry_run)); then
    environment=("JAX_PLATFORMS=$JAX_PLATFORMS")
    if [[ -n ${XLA_FLAGS:-} ]]; then  # inherited, e.g. several CPU devices per process
      environment+=("XLA_FLAGS=$XLA_FLAGS")
    fi
    line=$(show "${environment[@]}" "${command[@]}")
    if ((i == 0)); then
      echo "$line"
    else
      echo "$line > $(quote "$log_dir/process_$i.log") 2>&1"
    fi
  elif ((i == 0)); then
    "${command[@]}" &
    pids+=($!)
  else
    "${command[@]}" >"$log_dir/process_$i.log" 2>&1 &
    pids+=($!)
  fi
done
((dry_run)) && exit 0
echo "started $num_processes processes (coordinator 127.0.0.1:$port); logs of 1..$((num_processes - 1)) in $log_dir" >&2

status=0
for ((left = num_processes; left > 0; left--)); do
  if wait -n; then
    continue
  else
    status=$?
  fi
  echo "a process exited with status $status; stopping the others" >&2
  stop_all TERM
  for ((waited = 0; waited < grace; waited++)); do
    alive=0
    for pid in "${pids[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    ((alive)) || break
    sleep 1
  done
  stop_all KILL
  wait || true
  for ((i = 1; i < num_processes; i++)); do
    echo "--- last lines of $log_dir/process_$i.log" >&2
    tail -n 5 "$log_dir/process_$i.log" >&2 || true
  done
  break
done
exit "$status"
