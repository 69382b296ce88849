"""Faults a run meets, and how it ends: Ctrl-C, a second process on the workdir, a full disk, a config field or flag
that does not exist or does not parse, an unexpected error. Each ends with one `aujax: error:` line, printed once,
exit status 1 and no traceback; a run stopped by Ctrl-C or by a full disk resumes from its last complete checkpoint.

The command line runs of the module fixture `interrupted` (one fold of 3 steps per epoch, 12 epochs, the workdir on
a 4 MB tmpfs where this process may mount one; the full-disk runs are skipped where it may not):
  outside   Ctrl-C while the data are loaded, before training: interrupted at once
  ctrl_c    Ctrl-C once epoch 1 is logged: a checkpoint at the next step, then the stop message
  full      the same command with the disk filled to 32 kB free: refused before a checkpoint is written
  freed     the same command after the filler is deleted: resumes from the Ctrl-C checkpoint and finishes
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
import tempfile
import threading

import jax
import numpy as np
import pytest

from aujax import files, train, workdir_lock
from tests.support import (COMPILATION_CACHE, REPO, _assert_one_error_line, _cfg, _fold_setup, _main, child_env,
                           patch_records, saved_steps)

ARGS = ["--mode=train", "--width=4,8,8,8", "--batch_size=8", "--epochs=12", "--config.protocol.max_folds=1",
        "--config.protocol.min_support=1"]
STEPS = 36  # 12 epochs of 3 steps: fold A000 trains on 16 train-role and 8 cv-role images


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


# `python -m aujax.main` with Python's own Ctrl-C handler: a process started in the background of a shell without job
# control inherits SIGINT ignored, and Python then keeps it ignored (the run would train on, as a user's nohup run does).
_WITH_PYTHON_S_CTRL_C = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                         "runpy.run_module('aujax.main', run_name='__main__', alter_sys=True)")


def _interrupt_when(text: str, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the command line; send it SIGINT (Ctrl-C) when `text` first appears in its log."""
    env = {**child_env(COMPILATION_CACHE), "PYTHONPATH": REPO}
    process = subprocess.Popen([sys.executable, "-c", _WITH_PYTHON_S_CTRL_C, *args], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    lines, sent = [], False
    try:
        for line in process.stderr:
            lines.append(line)
            if text in line and not sent:
                process.send_signal(signal.SIGINT)
                sent = True
        process.wait()
    finally:
        watchdog.cancel()
    assert sent, f"{text!r} never appeared:\n{''.join(lines)[-3000:]}"
    return subprocess.CompletedProcess(args, process.returncode, "", "".join(lines))


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    data = []
    for role, (subjects, per_subject, prefix) in {"train": (2, 8, "C"), "cv": (2, 8, "A"),
                                                   "cross": (2, 4, "U")}.items():
        path = root / f"{role}.npz"
        patch_records(subjects, per_subject, seed=len(data), prefix=prefix).save(str(path))
        data.append(f"--{role}_data={path}")
    with _tmpfs(root / "disk", "4m") as disk:
        workdir = (disk or root) / "run"
        latest = workdir / "checkpoints" / "fold_00" / "latest"
        args = [f"--workdir={workdir}", *ARGS, *data]
        runs = {"outside": _interrupt_when("cross role:", args), "ctrl_c": _interrupt_when("epoch 1/12", args)}
        runs["steps after ctrl_c"] = saved_steps(str(latest))
        if disk is not None:
            filler = _fill(disk, leave=32_000)
            runs["full"] = _main(*args, env_extra=child_env(COMPILATION_CACHE))
            runs["steps after full"] = saved_steps(str(latest))
            runs["files after full"] = sorted(os.listdir(latest.parent))
            filler.unlink()
            runs["freed"] = _main(*args, env_extra=child_env(COMPILATION_CACHE))
        yield latest, runs


def _stop_step(result) -> int:
    return int(re.search(r"stopped by request in fold A000 at step (\d+)", result.stderr).group(1))


@pytest.mark.slow
@pytest.mark.multiprocess  # the command line, interrupted and resumed
def test_ctrl_c_outside_training_ends_the_run_at_once_with_one_line(interrupted):
    _, runs = interrupted
    _assert_one_error_line(runs["outside"], "interrupted (Ctrl-C)", "run the same command again")


@pytest.mark.slow
@pytest.mark.multiprocess  # the command line, interrupted and resumed
def test_ctrl_c_in_training_saves_a_checkpoint_at_the_next_step_and_stops(interrupted):
    latest, runs = interrupted
    _assert_one_error_line(runs["ctrl_c"], "stopped by request in fold A000 at step", "after saving a checkpoint")
    step = _stop_step(runs["ctrl_c"])
    assert 3 <= step < STEPS
    assert runs["steps after ctrl_c"][-1] == step


@pytest.mark.slow
@pytest.mark.multiprocess  # the command line, interrupted and resumed
def test_a_full_disk_is_one_line_naming_the_checkpoint_and_the_space_and_keeps_the_last_checkpoint(interrupted):
    latest, runs = interrupted
    if "full" not in runs:
        pytest.skip("a full filesystem needs a tmpfs mount (root)")
    _assert_one_error_line(runs["full"], f"no space left on device writing {latest}", "kB needed", "kB free there",
                           "run the same command again")
    assert runs["steps after full"] == [_stop_step(runs["ctrl_c"])]
    assert not [name for name in runs["files after full"] if name.endswith(".tmp")], runs["files after full"]


@pytest.mark.slow
@pytest.mark.multiprocess  # the command line, interrupted and resumed
def test_after_space_is_freed_the_run_resumes_from_its_last_checkpoint_and_finishes(interrupted):
    latest, runs = interrupted
    if "freed" not in runs:
        pytest.skip("a full filesystem needs a tmpfs mount (root)")
    assert runs["freed"].returncode == 0, runs["freed"].stderr[-3000:]
    assert f"resumed from step {_stop_step(runs['ctrl_c'])}" in runs["freed"].stderr
    assert saved_steps(str(latest))[-1] == STEPS
    history = json.loads((latest.parent / "result.json").read_text())["history"]
    assert [h["step"] for h in history] == list(range(3, STEPS + 1, 3))


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


@pytest.mark.slow  # trains a fold three times
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's failing writer threads
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


@pytest.mark.multiprocess  # a second process holds the lock
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


@pytest.mark.slow  # the command line
def test_a_second_run_on_a_workdir_in_use_is_refused_naming_the_holder(tmp_path):
    with workdir_lock.held(str(tmp_path)):
        result = _main(f"--workdir={tmp_path}", "--mode=preprocess", "--dataset=ck_plus", f"--manual_dir={tmp_path}")
    _assert_one_error_line(result, f"--workdir={tmp_path} is in use by process {os.getpid()} on host "
                                   f"{socket.gethostname()}", "use another --workdir")


def test_a_config_field_that_does_not_exist_is_named_with_the_config_sections():
    """Checked before the flags are parsed (the command line's one-line contract: tests/test_cli.py); integer flags
    that do not parse or fit are tested there too (--epochs=two on the command line, --seed=-1 in-process)."""
    from absl import flags

    from aujax import main
    from aujax.configs import default

    sections = ", ".join(sorted(default.get_config().keys()))
    assert {"data", "model", "train", "explain"} <= set(sections.split(", "))
    with pytest.raises(flags.Error, match=re.escape(
            f"--config.nonexistent: no such field; the top-level sections are {sections}")):
        main._check_config_overrides(["aujax", "--config.nonexistent=1"])
    with pytest.raises(flags.Error, match=re.escape(
            "--config.train.epoch: no such field (config.train has batch_size, checkpoint_every_steps, epochs,")) as e:
        main._check_config_overrides(["aujax", f"--config={REPO}/experiments/paper.py", "--config.train.epoch=3"])
    assert sections in str(e.value)


@pytest.mark.slow  # the command line
def test_an_unexpected_error_is_one_line_naming_a_log_file_with_its_traceback(tmp_path):
    code = ("import runpy, sys\nfrom aujax import pipeline\n"
            "def broken(*args, **kwargs):\n    raise RuntimeError('simulated bug\\nsecond line')\n"
            "pipeline.run = broken\nsys.argv = ['aujax.main', sys.argv[1]]\n"
            "runpy.run_module('aujax.main', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code, f"--workdir={tmp_path}"], cwd=REPO, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": REPO}, timeout=300)
    message = _assert_one_error_line(result, "unexpected RuntimeError: simulated bug (the traceback is in "
                                             f"{tmp_path}/logs/error-", "please report it")
    log = re.search(r"the traceback is in (\S+);", message).group(1)
    assert "Traceback" in open(log).read() and "in broken" in open(log).read()


def test_an_unexpected_error_s_traceback_goes_to_the_temp_directory_where_the_workdir_cannot_take_it(tmp_path):
    from aujax import main

    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    try:
        raise RuntimeError("simulated bug")
    except RuntimeError as e:
        line = main._error_line(e, str(blocker / "run"))
    log = re.search(r"the traceback is in (\S+);", line).group(1)
    try:
        assert os.path.dirname(log) == tempfile.gettempdir() and os.path.basename(log).startswith("aujax-error-")
        assert "simulated bug" in open(log).read()
    finally:
        os.remove(log)
