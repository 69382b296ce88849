"""Faults a run meets, and how it ends: Ctrl-C in training stops after a checkpoint (a second one at once); a full disk
is one clear error, and no write leaves half a file behind; training stopped by a full disk resumes exactly; a workdir
is held by one run at a time.

The full-disk tests need a tmpfs mount (root) and are skipped where this process may not mount one.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from aujax import files, train, workdir_lock
from experiments.kill_and_resume import saved_steps
from tests.conftest import REPO
from tests.test_train import _cfg, _fold_setup


@contextlib.contextmanager
def _tmpfs(path, size: str):
    """A tmpfs of `size` mounted at `path` within, or None where this process may not mount one."""
    os.makedirs(path, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    with _tmpfs(tmp_path / "disk", "2m") as disk:
        if disk is None:
            pytest.skip("a full filesystem needs a tmpfs mount (root)")
        yield disk


def _fill(disk, leave: int):
    """A file that leaves about `leave` bytes free on `disk`; returns its path."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with open(filler, "ab") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def test_a_second_ctrl_c_stops_at_once_and_ctrl_c_is_python_s_again_after_training():
    stop, before = train.StopRequested(), signal.getsignal(signal.SIGINT)
    with stop.ctrl_c_deferred():
        signal.raise_signal(signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_in_a_multi_host_run_is_passed_on_as_sigterm_to_jax_s_preemption_service(monkeypatch):
    """Which picks one step for every process to stop at (tests/test_multihost.py: SIGTERM to one of 2 processes)."""
    sent = []
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(os, "kill", lambda pid, signum: sent.append((pid, signum)))
    stop = train.StopRequested()
    with stop.ctrl_c_deferred():
        signal.raise_signal(signal.SIGINT)
    assert sent == [(os.getpid(), signal.SIGTERM)] and not stop.requested  # set at the agreed step by after_step


def test_a_disk_that_fills_while_orbax_writes_is_a_disk_full_error_and_the_fold_resumes_exactly(tmp_path, small_disk):
    """Stopped after the checkpoint of step 2, then resumed with room for the state (67.5 kB) but not for its
    checkpoint (about 220 kB with orbax's metadata): orbax's writer threads fail, and the error they hand to the main
    thread is a DiskFullError naming the fold's directory."""
    trainer, fold, data, labels = _fold_setup(_cfg())  # 2 epochs of 2 steps
    straight, straight_history = train.fit_fold(trainer, fold, data, labels, str(tmp_path / "straight"),
                                                train.StopRequested())

    class StopAtStep2(train.StopRequested):
        def after_step(self, step):
            self.requested = step == 2

    directory = small_disk / "fold"
    with pytest.raises(train.TrainingStopped):
        train.fit_fold(trainer, fold, data, labels, str(directory), StopAtStep2())
    filler = _fill(small_disk, leave=160_000)
    with pytest.raises(files.DiskFullError, match=f"no space left on device writing {re.escape(str(directory))} "
                                                  ".*kB needed"):
        train.fit_fold(trainer, fold, data, labels, str(directory), train.StopRequested())
    assert saved_steps(str(directory / "latest")) == [2]  # and the tmp directory of step 4, which orbax ignores
    filler.unlink()
    resumed, resumed_history = train.fit_fold(trainer, fold, data, labels, str(directory), train.StopRequested())
    for a, b in zip(jax.tree_util.tree_leaves(straight), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert [(h["step"], h["loss"]) for h in resumed_history] == [(h["step"], h["loss"]) for h in straight_history]


def test_a_write_to_a_full_disk_names_path_and_space_and_leaves_the_old_file_and_no_tmp(small_disk):
    table, predictions = small_disk / "results" / "table.json", small_disk / "predictions.npz"
    files.write_json(str(table), {"rows": [1]})
    _fill(small_disk, leave=0)
    rows = {"rows": list(range(50_000))}
    with pytest.raises(files.DiskFullError, match=re.escape(
            f"no space left on device writing {table} (disk full or quota used up): "
            f"{files.format_bytes(len(json.dumps(rows, indent=2)))} needed, ")):
        files.write_json(str(table), rows)
    with pytest.raises(files.DiskFullError, match=re.escape(f"writing {predictions} (disk full or quota used up): "
                                                            "400.0 kB needed")):
        files.write_npz(str(predictions), probabilities=np.zeros((100, 1000), np.float32))
    assert json.loads(table.read_text()) == {"rows": [1]}
    assert sorted(os.listdir(small_disk)) == ["filler", "results"] and os.listdir(table.parent) == ["table.json"]


def test_write_npz_writes_a_file_numpy_reads(tmp_path):
    files.write_npz(str(tmp_path / "a" / "p.npz"), index=np.arange(3), probabilities=np.eye(3, dtype=np.float32))
    with np.load(tmp_path / "a" / "p.npz", allow_pickle=False) as saved:
        np.testing.assert_array_equal(saved["index"], np.arange(3))
        np.testing.assert_array_equal(saved["probabilities"], np.eye(3))
    assert os.listdir(tmp_path / "a") == ["p.npz"]


def test_the_workdir_lock_is_exclusive_names_its_holder_and_dies_with_it(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom aujax import workdir_lock\nwith workdir_lock.held(sys.argv[1]):\n"
         "    print('held', flush=True)\n    time.sleep(600)", str(tmp_path)],
        env={**os.environ, "PYTHONPATH": REPO}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(workdir_lock.WorkdirInUseError, match=re.escape(
                f"--workdir={tmp_path} is in use by process {holder.pid} on host {socket.gethostname()}")):
            with workdir_lock.held(str(tmp_path)):
                pass
    finally:
        holder.kill()  # SIGKILL: the holder cleans nothing up
        holder.wait()
    with workdir_lock.held(str(tmp_path)):
        with pytest.raises(workdir_lock.WorkdirInUseError, match=f"in use by process {os.getpid()} "):
            with workdir_lock.held(str(tmp_path)):
                pass
    with workdir_lock.held(str(tmp_path)):  # released when its holder left the block
        pass
