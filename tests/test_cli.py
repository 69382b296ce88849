"""The command line: bad flags get one clear message (no traceback), and a tiny run writes its tables."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, patch_records


def _main(*args, env_extra=None, timeout=600):
    env = {**os.environ, "PYTHONPATH": REPO, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "aujax.main", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _assert_clean_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    message = [line for line in result.stderr.splitlines() if line.startswith("aujax: error:")]
    assert message, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in message[0], message[0]


def test_unknown_dataset_is_named(tmp_path):
    result = _main(f"--workdir={tmp_path}", "--cv_data=affectnet")
    _assert_clean_error(result, "--cv_data='affectnet'", "unknown dataset", "ck_plus")


def test_unwritable_workdir_is_named(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    result = _main(f"--workdir={blocker}/run")
    _assert_clean_error(result, f"--workdir={blocker}/run", "not a writable directory")


def test_batch_sizes_not_divisible_by_the_device_count(tmp_path):
    four_devices = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    result = _main(f"--workdir={tmp_path}", "--batch_size=6", env_extra=four_devices)
    _assert_clean_error(result, "--batch_size=6", "multiple of the number of devices (4")
    result = _main(f"--workdir={tmp_path}", "--config.explain.batch_size=10", env_extra=four_devices)
    _assert_clean_error(result, "--config.explain.batch_size=10", "multiple of the number of devices (4)")


def test_bad_width_and_threshold(tmp_path):
    _assert_clean_error(_main(f"--workdir={tmp_path}", "--width=wide"), "width 'wide'")
    _assert_clean_error(_main(f"--workdir={tmp_path}", "--threshold=1.5"), "--threshold=1.5")


def test_bad_localisation_metrics(tmp_path):
    _assert_clean_error(_main(f"--workdir={tmp_path}", "--config.explain.metrics=('mu', 'accuracy')"),
                        "--config.explain.metrics", "'accuracy'", "roc_auc")
    _assert_clean_error(_main(f"--workdir={tmp_path}", "--config.explain.metrics=('roc_auc',)"),
                        "--config.explain.metrics", "must include 'mu'")


def test_workdir_of_another_configuration_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"seed": 123}))
    (tmp_path / "checkpoints" / "fold_00").mkdir(parents=True)  # it trained: a finished fold
    (tmp_path / "checkpoints" / "fold_00" / "result.json").write_text("{}")
    _assert_clean_error(_main(f"--workdir={tmp_path}"), "holds a run with other settings")


def test_evaluate_without_training_says_what_to_run(tmp_path):
    data = {}
    for role, (subjects, prefix) in {"train": (3, "C"), "cv": (2, "A"), "cross": (2, "U")}.items():
        data[role] = str(tmp_path / f"{role}.npz")
        patch_records(subjects, 4, seed=len(data), prefix=prefix).save(data[role])
    result = _main(f"--workdir={tmp_path}/wd", "--mode=evaluate", f"--train_data={data['train']}",
                   f"--cv_data={data['cv']}", f"--cross_data={data['cross']}")
    _assert_clean_error(result, "have not finished", "--mode=train")
