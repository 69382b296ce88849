"""Failures: a run killed at random moments (SIGTERM and SIGKILL in turn) and restarted until it finishes ends equal to
an uninterrupted one (final states, predictions, histories, tables); SIGTERM writes a checkpoint at the step it stops;
a damaged newest checkpoint (and a half-written orbax tmp directory beside it) falls back to the previous one.

One small experiment (`experiments/kill_and_resume.py`, module fixture): 2 folds x 2 epochs x 3 steps, a checkpoint
every step, 3 interruptions, the newest checkpoint damaged after the first.
"""

import os
import shutil

import pytest

from experiments.kill_and_resume import (child_env, compare_workdirs, damage_newest_checkpoint, run_experiment,
                                         run_once, saved_steps)
from tests.conftest import patch_records
from tests.test_multihost import COMPILATION_CACHE

ARGS = ["--mode=train", "--width=4,8,8,8", "--batch_size=8", "--epochs=2", "--config.protocol.min_support=1",
        "--config.train.checkpoint_every_steps=1"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill_and_resume")
    data = []
    for role, (subjects, prefix) in {"train": (2, "C"), "cv": (2, "A"), "cross": (2, "U")}.items():
        path = root / f"{role}.npz"
        patch_records(subjects, 8, seed=len(data), prefix=prefix).save(str(path))
        data.append(f"--{role}_data={path}")
    workdir = root / "experiment"
    report = run_experiment(str(workdir), [*ARGS, *data], interruptions=3, seed=0, max_delay_s=1.0, corrupt_after=1,
                            timeout_s=400, compilation_cache=COMPILATION_CACHE)
    return workdir, [*ARGS, *data], report


def _runs(report, outcome: str) -> list[dict]:
    return [r for r in report["runs"] if r["outcome"] == outcome]


def test_killed_and_resumed_run_ends_equal_to_an_uninterrupted_one(experiment):
    _, _, report = experiment
    assert report["runs"][-1]["outcome"] == "finished", report["runs"]
    assert report["equal"], "\n".join(report["differences"])
    assert _runs(report, "killed") and all(r["signal"] == "SIGKILL" for r in _runs(report, "killed")), report["runs"]


def test_sigterm_exits_with_the_stop_message_after_a_checkpoint_at_that_step(experiment):
    _, _, report = experiment
    stopped = _runs(report, "stopped")
    assert stopped and stopped[0]["run"] == 1, report["runs"]  # the first SIGTERM lands in training
    for run in stopped:
        assert run["returncode"] == 1 and run["checkpoint_at_stop"], run


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one_with_a_warning(experiment):
    _, _, report = experiment
    assert report["damaged_checkpoint"], "no checkpoint was damaged"
    after = [r for r in report["runs"] if r["fell_back"]]
    assert after, f"no run warned about {report['damaged_checkpoint']}"
    with open(after[0]["log"]) as f:
        log = f.read()
    assert f"checkpoint {report['damaged_checkpoint']} cannot be restored" in log
    assert "falling back to an older one" in log


def test_damaged_final_checkpoint_of_a_fold_is_trained_and_saved_again(experiment, tmp_path):
    """The worst place for damage: the fold's last step, its result not yet written. The resumed run must train
    that step again and save it again (else the next restore would fall back to the step before)."""
    workdir, cli_args, _ = experiment
    damaged = tmp_path / "damaged"
    shutil.copytree(workdir / "reference", damaged)
    last_fold = damaged / "checkpoints" / "fold_01"
    for path in (last_fold / "result.json", last_fold / "predictions.npz"):
        os.remove(path)
    shutil.rmtree(damaged / "results")
    final_step = saved_steps(str(last_fold / "latest"))[-1]
    assert damage_newest_checkpoint(str(damaged)) == str(last_fold / "latest" / str(final_step))

    run = run_once(str(damaged), cli_args, child_env(COMPILATION_CACHE), str(tmp_path / "resume.log"), None, None,
                   400, 1)
    assert run.outcome == "finished" and run.fell_back, open(run.log).read()[-4000:]
    assert compare_workdirs(str(workdir / "reference"), str(damaged)) == []
