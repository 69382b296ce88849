#!/usr/bin/env bash
# Runs aujax (python -m aujax.main) on GPU hosts or a Cloud TPU VM slice. Prints what it runs before running it;
# --dry-run prints only.
#
#   ./launch.sh gpu [--dry-run] -- --config=experiments/paper.py --workdir=runs/paper
#       one GPU host, all its GPUs (data parallel over them)
#   ./launch.sh gpu [--dry-run] --coordinator=10.0.0.1:1234 --num_processes=2 --process_id=0 -- <aujax flags>
#       several GPU hosts: run the same line on every host with its own --process_id (0 on the coordinator)
#   srun --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 ./launch.sh gpu -- <aujax flags>
#       several GPU hosts under SLURM, one process per GPU: JAX reads coordinator, count and id from SLURM
#   TPU_NAME=my-tpu ZONE=us-central2-b ./launch.sh tpu [--dry-run] -- <aujax flags>
#       every worker of a TPU VM slice over `gcloud compute tpus tpu-vm ssh --worker=all`; the repository must be
#       in ~/$AUJAX_DIR (default aujax) on each worker, e.g. copied with
#       gcloud compute tpus tpu-vm scp --recurse . "$TPU_NAME":aujax --zone="$ZONE" --worker=all
#
# Several hosts write one --workdir: it must be a filesystem they all mount at the same path (checkpoints are
# written by every process, tables and figures by process 0). Relative paths are relative to the repository root
# (GPU) or ~/$AUJAX_DIR (TPU).
set -euo pipefail

usage() {  # the comment block above
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit "${1:-0}"
}

[[ $# -ge 1 ]] || usage 2
target=$1
shift
case "$target" in
  gpu | tpu) ;;
  -h | --help) usage 0 ;;
  *) echo "launch.sh: unknown target '$target' (gpu or tpu)" >&2; usage 2 ;;
esac

dry_run=0 coordinator="" num_processes="" process_id=""
while [[ $# -gt 0 && "$1" != "--" ]]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --coordinator=*) coordinator=${1#*=} ;;
    --num_processes=*) num_processes=${1#*=} ;;
    --process_id=*) process_id=${1#*=} ;;
    -h | --help) usage 0 ;;
    *) echo "launch.sh: unknown option '$1' (aujax flags go after --)" >&2; exit 2 ;;
  esac
  shift
done
[[ $# -gt 0 ]] && shift  # the --
aujax_flags=("$@")
python=${PYTHON:-python3}

quote() {  # $1 as one shell word: as it is where that is safe, else in single quotes
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

show() {  # the environment settings and the command, as a line that can be pasted into a shell
  local line="launch.sh: running:" word
  for word in "${settings[@]}" "${command[@]}"; do line+=" $(quote "$word")"; done
  echo "$line"
}

settings=() command=()
if [[ "$target" == gpu ]]; then
  multi_host=()
  if [[ -n "$coordinator$num_processes$process_id" ]]; then
    if [[ -z "$coordinator" || -z "$num_processes" || -z "$process_id" ]]; then
      echo "launch.sh: several hosts need --coordinator=HOST:PORT, --num_processes=N and --process_id=I" >&2
      exit 2
    fi
    multi_host=(--coordinator_address="$coordinator" --num_processes="$num_processes" --process_id="$process_id")
    echo "launch.sh: process $process_id of $num_processes, coordinator $coordinator"
  elif [[ "${SLURM_NTASKS:-1}" -gt 1 && -n "${SLURM_PROCID:-}" ]]; then
    multi_host=(--distributed=on)  # JAX reads the coordinator, count and id from SLURM's variables
    echo "launch.sh: SLURM task $SLURM_PROCID of $SLURM_NTASKS (local GPU ${SLURM_LOCALID:-?})"
  fi
  # JAX_PLATFORMS=cuda: fail if the CUDA backend is missing instead of training on the CPU.
  # XLA_PYTHON_CLIENT_MEM_FRACTION: the host's GPUs serve this job only; XLA may take 90% (default 75%) for the
  #   resident dataset, activations and its buffers, leaving the rest to CUDA libraries.
  # --xla_gpu_enable_latency_hiding_scheduler: overlaps the gradient all-reduce across GPUs with the backward pass
  #   (no effect on a single GPU).
  xla_flags=${XLA_FLAGS:-}
  [[ "$xla_flags" == *xla_gpu_enable_latency_hiding_scheduler* ]] ||
    xla_flags="${xla_flags:+$xla_flags }--xla_gpu_enable_latency_hiding_scheduler=true"
  settings=("JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}"
            "XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}"
            "XLA_FLAGS=$xla_flags")
  for name in $(compgen -e | grep '^NCCL_' || true); do  # NCCL_SOCKET_IFNAME and the like, when the site sets them
    settings+=("$name=${!name}")
  done
  command=("$python" -m aujax.main "${multi_host[@]}" "${aujax_flags[@]}")
  if [[ $dry_run == 0 && "${JAX_PLATFORMS:-cuda}" == cuda ]] && ! nvidia-smi -L >/dev/null 2>&1; then
    echo "launch.sh: no NVIDIA GPU on $(hostname) (nvidia-smi -L fails); on CPUs run python -m aujax.main" >&2
    exit 1
  fi
  cd "$(dirname "$0")"
else
  : "${TPU_NAME:?launch.sh tpu: set TPU_NAME to the name of the TPU VM}"
  : "${ZONE:?launch.sh tpu: set ZONE to the zone of the TPU VM}"
  if [[ -n "$coordinator$num_processes$process_id" ]]; then
    echo "launch.sh: --coordinator/--num_processes/--process_id are for GPU hosts; a TPU slice finds its workers" >&2
    exit 2
  fi
  remote="cd ${AUJAX_DIR:-aujax} && JAX_PLATFORMS=tpu $python -m aujax.main --distributed=on"
  for flag in "${aujax_flags[@]}"; do remote+=" $(quote "$flag")"; done
  command=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$remote")
fi

show
[[ $dry_run == 1 ]] && exit 0
exec env "${settings[@]}" "${command[@]}"
