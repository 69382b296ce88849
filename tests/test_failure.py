"""Failures: a run killed at random moments (SIGTERM and SIGKILL in turn) and restarted until it finishes ends equal to
an uninterrupted one (final states, predictions, histories, tables); SIGTERM writes a checkpoint at the step it stops;
a damaged newest checkpoint (and a half-written orbax tmp directory beside it) falls back to the previous one.

One small experiment (`python -m experiments.kill_and_resume`, module fixture, read from the report it writes,
<workdir>/kill_and_resume.json): 2 folds x 2 epochs x 3 steps, a checkpoint every step, 3 interruptions, the newest
checkpoint damaged after the first.
"""

import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from aujax.checkpoints import restore_saved
from tests.support import REPO, _main, child_env, patch_records, saved_steps

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

ARGS = ["--mode=train", "--width=4,8,8,8", "--batch_size=8", "--epochs=2", "--config.protocol.min_support=1",
        "--config.train.checkpoint_every_steps=1"]
_VOLATILE_KEYS = ("images_per_second", "seconds")  # measured, not computed: differ between any two runs


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill_and_resume")
    data = []
    for role, (subjects, prefix) in {"train": (2, "C"), "cv": (2, "A"), "cross": (2, "U")}.items():
        path = root / f"{role}.npz"
        patch_records(subjects, 8, seed=len(data), prefix=prefix).save(str(path))
        data.append(f"--{role}_data={path}")
    workdir = root / "experiment"
    command = [sys.executable, "-m", "experiments.kill_and_resume", f"--workdir={workdir}", "--interruptions=3",
               "--seed=0", "--max_delay=1.0", "--corrupt_after=1", "--timeout=400", "--", *ARGS, *data]
    completed = subprocess.run(command, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=2400)
    report_path = workdir / "kill_and_resume.json"
    assert report_path.is_file(), f"exit {completed.returncode}\n{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}"
    report = json.loads(report_path.read_text())
    assert completed.returncode == (0 if report["equal"] else 1), completed.stderr[-3000:]  # the exit status says so
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


def _damage(step_dir) -> None:
    """Every file of a checkpoint cut to half its length, as a write cut short leaves them, and a half-written orbax
    tmp directory of the next step beside it."""
    for root, _, names in os.walk(step_dir):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
    step = int(os.path.basename(step_dir))
    tmp = os.path.join(os.path.dirname(step_dir), f"{step + 1}.orbax-checkpoint-tmp-0", "default")
    os.makedirs(tmp)
    with open(os.path.join(tmp, "_METADATA"), "w") as f:
        f.write('{"tree_metadata": {"par')


def _json(path):
    """A JSON file without its measured (volatile) fields."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in _VOLATILE_KEYS}
        return [strip(v) for v in value] if isinstance(value, list) else value

    with open(path) as f:
        return strip(json.load(f))


def test_damaged_final_checkpoint_of_a_fold_is_trained_and_saved_again(experiment, tmp_path):
    """The worst place for damage: the fold's last step, its result not yet written. The resumed run must train
    that step again and save it again (else the next restore would fall back to the step before), and end equal to
    the uninterrupted run: final state, held-out predictions, history and tables, exactly (the same compiled
    programs on the same layout from a bit-exact checkpoint)."""
    workdir, cli_args, _ = experiment
    reference, damaged = workdir / "reference", tmp_path / "damaged"
    shutil.copytree(reference, damaged)
    last_fold = damaged / "checkpoints" / "fold_01"
    for path in (last_fold / "result.json", last_fold / "predictions.npz"):
        os.remove(path)
    shutil.rmtree(damaged / "results")
    final_step = saved_steps(last_fold / "latest")[-1]
    assert len(saved_steps(last_fold / "latest")) >= 2  # an older checkpoint to fall back to
    _damage(str(last_fold / "latest" / str(final_step)))

    run = _main(f"--workdir={damaged}", *cli_args, env_extra=child_env(), timeout=400)
    assert run.returncode == 0, run.stderr[-4000:]
    assert f"checkpoint {last_fold / 'latest'}/{final_step} cannot be restored" in run.stderr, run.stderr[-4000:]
    assert saved_steps(last_fold / "latest")[-1] == final_step
    for fold in ("fold_00", "fold_01"):
        a, b = (w / "checkpoints" / fold for w in (reference, damaged))
        steps = [saved_steps(d / "latest")[-1:] for d in (a, b)]
        assert steps[0] == steps[1] != [], (fold, steps)
        states = [restore_saved(str(d / "latest"), steps[0][0]) for d in (a, b)]
        for x, y in zip(jax.tree_util.tree_leaves(states[0]), jax.tree_util.tree_leaves(states[1]), strict=True):
            np.testing.assert_array_equal(x, y, err_msg=fold)
        with np.load(a / "predictions.npz") as pa, np.load(b / "predictions.npz") as pb:
            np.testing.assert_array_equal(pa["test_index"], pb["test_index"])
            np.testing.assert_array_equal(pa["probabilities"], pb["probabilities"])
        assert _json(a / "result.json") == _json(b / "result.json"), fold
    tables = sorted(os.path.basename(p) for p in glob.glob(str(reference / "results" / "*.json")))
    assert tables
    for name in tables:
        assert _json(reference / "results" / name) == _json(damaged / "results" / name), name
