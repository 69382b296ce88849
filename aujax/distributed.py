"""Multi-host runs: start JAX's distributed runtime when one job spans several processes (hosts, or one process per
GPU under SLURM).

Every process runs the same command. `--distributed=auto` (the default) starts the runtime when the job has several
processes, which it tells from
  - the flags `--coordinator_address`, `--num_processes` and `--process_id` (all three), or
  - the environment: SLURM (`srun` with more than one task), Open MPI (`mpirun -n` > 1), GKE TPU workers
    (`TPU_WORKER_HOSTNAMES` naming more than one host); JAX then reads the addresses from the same variables.
A Cloud TPU VM slice started with `gcloud compute tpus tpu-vm ssh --worker=all` cannot be told from the environment:
pass `--distributed=on` there (JAX reads the slice from the TPU metadata server). `--distributed=off` never starts it.

Once started, `jax.devices()` lists the devices of every process, so the ('data',) mesh of `make_mesh` spans all
hosts and each global batch is split over all of their devices (`put_rows`: each process reads only the rows of its
own devices). CPU processes exchange data through gloo (TCP).
"""

import os
from collections.abc import Sequence

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MODES = ("auto", "on", "off")
_FLAGS = ("--coordinator_address", "--num_processes", "--process_id")


def _int_env(environ, name: str) -> int:
    try:
        return int(environ.get(name, "1"))
    except ValueError:
        return 1


def cluster_environment(environ=os.environ) -> str | None:
    """The multi-process launcher the environment variables name ('SLURM', 'Open MPI', 'TPU workers'), or None when
    this is a plain single process."""
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")  # what JAX reads
    if _int_env(environ, "SLURM_NTASKS") > 1 and all(k in environ for k in slurm):
        return "SLURM"
    if _int_env(environ, "OMPI_COMM_WORLD_SIZE") > 1 and "OMPI_MCA_orte_hnp_uri" in environ:
        return "Open MPI"
    if len([h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]) > 1:
        return "TPU workers"
    return None


def _device_ids(local_device_ids: Sequence[int | str] | None) -> list[int] | None:
    if not local_device_ids:
        return None
    try:
        return [int(i) for i in local_device_ids]
    except ValueError:
        raise ValueError(f"--local_device_ids={','.join(map(str, local_device_ids))}: expected device numbers "
                         "such as 0,1") from None


def _check_flags(mode: str, coordinator_address, num_processes, process_id, environment: str | None) -> list[str]:
    """The multi-host flags given; ValueError naming the flag for combinations that cannot work."""
    if mode not in MODES:
        raise ValueError(f"--distributed={mode!r}: use one of {', '.join(MODES)}")
    given = [flag for flag, value in zip(_FLAGS, (coordinator_address, num_processes, process_id))
             if value is not None]
    if mode == "off" and given:
        raise ValueError(f"{', '.join(given)} given with --distributed=off")
    if given and len(given) < len(_FLAGS) and environment is None:
        missing = [flag for flag in _FLAGS if flag not in given]
        raise ValueError(f"{', '.join(given)} given without {', '.join(missing)}: a multi-host run needs all three "
                         "(or a SLURM / Open MPI / TPU environment that supplies them)")
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"--num_processes={num_processes} must be at least 1")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"--process_id={process_id} must lie in 0 .. {num_processes - 1} (--num_processes="
                         f"{num_processes})")
    if coordinator_address is not None and not coordinator_address.rpartition(":")[2].isdigit():
        raise ValueError(f"--coordinator_address={coordinator_address!r}: expected host:port, e.g. 10.0.0.1:1234")
    return given


def _use_gloo_on_cpu() -> None:
    """CPU devices of different processes exchange data through gloo; set it explicitly (jax 0.10 defaults to it,
    older versions had no CPU collectives unless asked)."""
    if "jax_cpu_collectives_implementation" in jax.config.values:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: Sequence[int | str] | None = None,
               mode: str = "auto") -> bool:
    """Start JAX's distributed runtime if this process is one of several; True if it runs (now or already).

    Call before anything touches a JAX backend (jax.devices(), device_put, jit). Unset arguments are read by JAX from
    the environment (SLURM, Open MPI, Cloud TPU metadata).

    Args:
      coordinator_address: 'host:port' of process 0, the same on every process.
      num_processes: processes in the job.
      process_id: this process's index in 0 .. num_processes - 1.
      local_device_ids: the local devices this process drives (default: all of them).
      mode: 'auto', 'on' or 'off' (see the module docstring).

    Raises:
      ValueError naming the flag for settings that cannot work, or the coordinator that cannot be reached.
    """
    environment = cluster_environment()
    given = _check_flags(mode, coordinator_address, num_processes, process_id, environment)
    device_ids = _device_ids(local_device_ids)
    if mode == "off" or (mode == "auto" and not given and environment is None):
        return False
    if jax.distributed.is_initialized():
        return True
    _use_gloo_on_cpu()
    source = "flags" if given else environment or "JAX's cluster detection"
    logging.info("starting JAX's distributed runtime (%s)", source)
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id, device_ids)
    except (RuntimeError, ValueError) as e:  # jax raises both for unreachable coordinators and undetected clusters
        where = f"the coordinator {coordinator_address}" if coordinator_address else f"the job ({source})"
        raise ValueError(f"--distributed={mode}: could not join {where}: {e}") from None
    logging.info("process %d of %d: %d local of %d %s devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count(), jax.devices()[0].platform)
    return True


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (nothing to wait for in a single process): what process 0
    wrote before it is then there for all processes to read."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def make_mesh() -> Mesh:
    """A one-axis mesh over every device of every host."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def put_rows(source, index: np.ndarray, mesh: Mesh) -> tuple[jax.Array, int]:
    """`source[index]` as one array split by rows over 'data', and how many distinct rows this process read.

    Args:
      source: rows to take from, indexable by an integer array: a numpy array, a memory map, `records.LazyImages`.
      index: (n,) int, n a multiple of the devices; -1 gives a row of zeros.

    Each process reads, in one call, only the rows that its own devices hold.
    """
    shape = (len(index),) + tuple(source.shape[1:])
    sharding = NamedSharding(mesh, P("data"))
    local = np.concatenate([index[i[0]] for i in sharding.addressable_devices_indices_map(shape).values()])
    rows = np.unique(local[local >= 0])
    held = source[rows]

    def block(device_index) -> np.ndarray:
        wanted = index[device_index[0]]
        out = np.zeros((len(wanted),) + shape[1:], held.dtype)
        real = wanted >= 0
        out[real] = held[np.searchsorted(rows, wanted[real])]
        return out

    return jax.make_array_from_callback(shape, sharding, block), len(rows)
