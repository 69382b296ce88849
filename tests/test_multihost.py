"""Multi-host runs on one machine: 2 processes x 4 simulated CPU devices (jax.distributed, gloo collectives) train like
1 process x 8 devices, stop together when one of them receives SIGTERM, and leave checkpoints that a single process
restores and resumes.

Runs (module fixture, the command line each time, one fold, 2 steps per epoch):
  one       1 process x 8 devices, 1 epoch
  two       2 processes x 4 devices, 4 epochs; SIGTERM to process 1 once epoch 1 is logged
  resumed   a copy of `two`'s workdir, finished by 1 process x 8 devices
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from aujax import distributed
from aujax.checkpoints import restore_saved
from tests.support import (COMPILATION_CACHE, CROSS_LAYOUT_REL, REPO, child_env, patch_records,
                           saved_steps, tree_relative_difference)

ARGS = ["--mode=train", "--width=4,8,8,8", "--batch_size=8", "--config.protocol.max_folds=1",
        "--config.protocol.min_support=1"]
STEPS_PER_EPOCH = 2  # fold 0 trains on 4 + 4 train-role images and the 8 of the other cv subject
_STOPPED = re.compile(r"aujax: error: stopped by request in fold \S+ at step (\d+)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(name: str, logs, workdir, args: list[str], processes: int, devices: int, timeout: float = 400,
            sigterm_process_1_after: str | None = None) -> list[tuple[int, str]]:
    """Run the command line as `processes` processes of `devices` CPU devices each; [(exit status, output)] per
    process. `sigterm_process_1_after`: text whose appearance in process 0's output sends SIGTERM to process 1."""
    env = {**child_env(COMPILATION_CACHE), "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    command = [sys.executable, "-m", "aujax.main", f"--workdir={workdir}", *ARGS, *args]
    if processes > 1:
        command += [f"--coordinator_address=localhost:{_free_port()}", f"--num_processes={processes}"]
    paths = [logs / f"{name}.{i}.log" for i in range(processes)]
    handles = [open(p, "w") for p in paths]
    children = [subprocess.Popen(command + ([f"--process_id={i}"] if processes > 1 else []), cwd=REPO, env=env,
                                 stdout=h, stderr=subprocess.STDOUT) for i, h in enumerate(handles)]
    deadline, signalled = time.monotonic() + timeout, False
    try:
        while any(c.poll() is None for c in children):
            if time.monotonic() > deadline:
                pytest.fail(f"{name}: no exit within {timeout:.0f} s\n" + _tails(paths))
            if sigterm_process_1_after and not signalled and sigterm_process_1_after in paths[0].read_text():
                children[1].send_signal(signal.SIGTERM)
                signalled = True
            time.sleep(0.1)
    finally:
        for c, h in zip(children, handles):
            if c.poll() is None:
                c.kill()
                c.wait()
            h.close()
    return [(c.returncode, p.read_text()) for c, p in zip(children, paths)]


def _tails(paths) -> str:
    return "\n".join(f"--- {p}:\n{p.read_text()[-4000:]}" for p in paths)


def _expect_success(name: str, outputs: list[tuple[int, str]]) -> None:
    if any(code for code, _ in outputs):
        pytest.fail(f"{name} failed: exit {[c for c, _ in outputs]}\n" +
                    "\n".join(f"--- process {i}:\n{text[-4000:]}" for i, (_, text) in enumerate(outputs)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost")
    roles = {}
    for role, (subjects, per_subject, prefix) in {"train": (2, 4, "C"), "cv": (2, 8, "A"),
                                                   "cross": (2, 4, "U")}.items():
        roles[role] = root / f"{role}.records"
        patch_records(subjects, per_subject, seed=len(roles), prefix=prefix).save(str(roles[role]))
    data = [f"--{role}_data={path}" for role, path in roles.items()]

    one = _launch("one", root, root / "one", [*data, "--epochs=1"], processes=1, devices=8)
    _expect_success("1 process x 8 devices", one)
    two = _launch("two", root, root / "two", [*data, "--epochs=4"], processes=2, devices=4,
                  sigterm_process_1_after="epoch 1/4")
    shutil.copytree(root / "two", root / "resumed")
    resumed = _launch("resumed", root, root / "resumed", [*data, "--epochs=4"], processes=1, devices=8)
    return {"root": root, "one": one, "two": two, "resumed": resumed}


def _stop_step(outputs) -> list[int | None]:
    return [int(m.group(1)) if (m := _STOPPED.search(text)) else None for _, text in outputs]


@pytest.mark.slow
@pytest.mark.multiprocess  # the `runs` fixture: the command line as 1 and 2 processes
def test_sigterm_to_one_process_stops_both_at_the_same_step_after_a_checkpoint(runs):
    two = runs["two"]
    steps = _stop_step(two)
    assert [code for code, _ in two] == [1, 1] and steps[0] is not None, _tails(
        [runs["root"] / f"two.{i}.log" for i in range(2)])
    assert steps[0] == steps[1], f"the processes stopped at different steps: {steps}"
    assert STEPS_PER_EPOCH < steps[0] < 4 * STEPS_PER_EPOCH, f"stopped at step {steps[0]}, not during epochs 2-4"
    assert "SIGTERM caught" in two[1][1]  # JAX's preemption notifier, not a Python handler, took the signal
    assert saved_steps(runs["root"] / "two" / "checkpoints" / "fold_00" / "latest")[-1] == steps[0]


@pytest.mark.slow
@pytest.mark.multiprocess  # the `runs` fixture: the command line as 1 and 2 processes
def test_two_processes_train_like_one_process_and_their_checkpoint_restores_in_one(runs):
    """Step 2 (end of epoch 1), written by 2 processes x 4 devices, restored here in one process on one device,
    against the same step of the 1-process x 8-device run."""
    _expect_success("1 process x 8 devices", runs["one"])
    two_dir = runs["root"] / "two" / "checkpoints" / "fold_00" / "latest"
    assert STEPS_PER_EPOCH in saved_steps(two_dir), f"{two_dir}: the epoch 1 checkpoint is gone (stopped too late)"
    two = restore_saved(str(two_dir), STEPS_PER_EPOCH)
    one = restore_saved(str(runs["root"] / "one" / "checkpoints" / "fold_00" / "latest"), STEPS_PER_EPOCH)
    for part in ("params", "batch_stats", "opt_state"):  # the same 8 devices; gloo sums in another order
        assert tree_relative_difference(one[part], two[part]) <= CROSS_LAYOUT_REL, part
    assert int(two["step"]) == int(one["step"]) == STEPS_PER_EPOCH


@pytest.mark.slow
@pytest.mark.multiprocess  # the `runs` fixture: the command line as 1 and 2 processes
def test_each_process_reads_and_holds_only_the_images_of_its_own_devices(runs):
    """24 training images (8 train role + 16 cv role) over 8 devices; the records are records directories, whose
    images each process reads by row (memory-mapped)."""
    _expect_success("1 process x 8 devices", runs["one"])
    assert "patches+patches: process 0 holds 24 of 24 images on 8 of 8 devices (3 per device)" in runs["one"][0][1]
    for process, (_, text) in enumerate(runs["two"]):
        assert (f"patches+patches: process {process} holds 12 of 24 images on 4 of 8 devices (3 per device)"
                in text), text[-3000:]


@pytest.mark.slow
@pytest.mark.multiprocess  # the `runs` fixture: the command line as 1 and 2 processes
def test_checkpoint_of_two_processes_resumes_in_one_process(runs):
    _expect_success("resume in 1 process", runs["resumed"])
    text = runs["resumed"][0][1]
    stopped = _stop_step(runs["two"])[0]
    assert f"resumed from step {stopped}" in text, text[-3000:]
    fold = runs["root"] / "resumed" / "checkpoints" / "fold_00"
    assert saved_steps(fold / "latest")[-1] == 4 * STEPS_PER_EPOCH
    history = json.loads((fold / "result.json").read_text())["history"]
    assert [h["step"] for h in history] == [2, 4, 6, 8]
    assert (runs["root"] / "resumed" / "results" / "table2_cross_f1.json").is_file()


def test_multi_host_flags_are_checked_before_anything_starts(monkeypatch):
    for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"):  # a CI job's own launcher
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="--process_id given without --coordinator_address, --num_processes"):
        distributed.initialize(process_id=1)
    with pytest.raises(ValueError, match=r"--process_id=2 must lie in 0 \.\. 1"):
        distributed.initialize("10.0.0.1:1234", 2, 2)
    with pytest.raises(ValueError, match="expected host:port"):
        distributed.initialize("10.0.0.1", 2, 0)
    with pytest.raises(ValueError, match="given with --distributed=off"):
        distributed.initialize("10.0.0.1:1234", 2, 0, mode="off")
    assert distributed.initialize() is False  # a plain process: nothing to start


def test_launchers_are_told_from_the_environment():
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[01-02]", "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}
    assert distributed.cluster_environment({**slurm, "SLURM_NTASKS": "2"}) == "SLURM"
    assert distributed.cluster_environment({**slurm, "SLURM_NTASKS": "1"}) is None  # one task: a plain process
    assert distributed.cluster_environment({"SLURM_NTASKS": "4"}) is None  # sbatch script outside srun
    assert distributed.cluster_environment({"TPU_WORKER_HOSTNAMES": "t-0,t-1"}) == "TPU workers"
    assert distributed.cluster_environment({"TPU_WORKER_HOSTNAMES": "localhost"}) is None
    assert distributed.cluster_environment({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_MCA_orte_hnp_uri": "1;tcp://x:1"}) \
        == "Open MPI"
    assert distributed.cluster_environment({}) is None


def _launch_sh(*args, env_extra=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()  # what launch.sh reads, left to each test
           if not k.startswith(("SLURM_", "NCCL_", "XLA_", "JAX_")) and k not in ("PYTHON", "TPU_NAME", "ZONE",
                                                                                  "AUJAX_DIR")}
    return subprocess.run([os.path.join(REPO, "launch.sh"), *args], env={**env, **(env_extra or {})},
                          capture_output=True, text=True, timeout=60)


def _running_line(result) -> str:
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("launch.sh: running: ")]
    assert len(lines) == 1, result.stdout
    return lines[0].removeprefix("launch.sh: running: ")


def test_launch_sh_parses():
    assert subprocess.run(["bash", "-n", os.path.join(REPO, "launch.sh")]).returncode == 0


def test_launch_sh_dry_runs_print_the_commands():
    gpu_settings = ("JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_MEM_FRACTION=0.90 "
                    "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true python3 -m aujax.main")
    assert _running_line(_launch_sh("gpu", "--dry-run", "--", "--epochs=1")) == f"{gpu_settings} --epochs=1"

    two_hosts = _launch_sh("gpu", "--dry-run", "--coordinator=10.0.0.1:1234", "--num_processes=2", "--process_id=1",
                           "--", "--config=experiments/paper.py", "--workdir=/shared/run 1")
    assert _running_line(two_hosts) == (f"{gpu_settings} --coordinator_address=10.0.0.1:1234 --num_processes=2 "
                                        "--process_id=1 --config=experiments/paper.py '--workdir=/shared/run 1'")

    slurm = _launch_sh("gpu", "--dry-run", "--", "--epochs=1", env_extra={
        "SLURM_NTASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1", "NCCL_SOCKET_IFNAME": "ib0"})
    assert "SLURM task 9 of 16" in slurm.stdout
    assert _running_line(slurm) == (gpu_settings.replace(" python3", " NCCL_SOCKET_IFNAME=ib0 python3")
                                    + " --distributed=on --epochs=1")

    tpu = _launch_sh("tpu", "--dry-run", "--", "--config=experiments/paper.py", "--workdir=/mnt/shared/run",
                     env_extra={"TPU_NAME": "au-v4", "ZONE": "us-central2-b"})
    assert _running_line(tpu) == (
        "gcloud compute tpus tpu-vm ssh au-v4 --zone=us-central2-b --worker=all '--command=cd aujax && "
        "JAX_PLATFORMS=tpu python3 -m aujax.main --distributed=on --config=experiments/paper.py "
        "--workdir=/mnt/shared/run'")


def test_launch_sh_refuses_incomplete_settings():
    partial = _launch_sh("gpu", "--dry-run", "--process_id=1", "--", "--epochs=1")
    assert partial.returncode == 2 and "--coordinator=HOST:PORT, --num_processes=N and --process_id=I" in partial.stderr
    no_tpu_name = _launch_sh("tpu", "--dry-run", "--", "--epochs=1")
    assert no_tpu_name.returncode != 0 and "set TPU_NAME" in no_tpu_name.stderr
    unknown = _launch_sh("tpux", "--dry-run")
    assert unknown.returncode == 2 and "unknown target 'tpux'" in unknown.stderr
