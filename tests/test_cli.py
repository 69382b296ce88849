"""Settings the run refuses, each with one clear message naming the flag (in-process: `pipeline.check_settings` and
`pipeline.run`), and the command line's contract for them: one `aujax: error:` line, exit status 1, no traceback."""

import json
import re

import pytest

from aujax import pipeline
from tests.support import _assert_one_error_line, _main, config_with, patch_records, run_python


def _data_files(tmp_path, **roles) -> dict:
    """Small patch-record files for the train, cv and cross roles, as config fields; `roles` replaces some."""
    fields = {}
    for role, (subjects, prefix) in {"train": (3, "C"), "cv": (2, "A"), "cross": (2, "U")}.items():
        fields[f"data.{role}"] = str(tmp_path / f"{role}.npz")
        patch_records(subjects, 4, seed=len(fields), prefix=prefix).save(fields[f"data.{role}"])
    return {**fields, **{f"data.{role}": spec for role, spec in roles.items()}}


@pytest.mark.slow  # the command line, twice
def test_a_refused_setting_is_one_error_line_exit_1_and_no_traceback(tmp_path):
    """The contract of every refusal below, on the command line: a setting the pipeline refuses, and a flag that
    does not parse (absl's parser, before the pipeline starts)."""
    _assert_one_error_line(_main(f"--workdir={tmp_path}", "--train_data=affectnet"),
                           "--train_data='affectnet'", "unknown dataset", "ck_plus")
    _assert_one_error_line(_main(f"--workdir={tmp_path}", "--epochs=two"), "flag --epochs=two: invalid literal")


def test_unknown_dataset_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"--cv_data='affectnet': unknown dataset; use 'synthetic', .*'ck_plus'"):
        pipeline.run("all", config_with(**_data_files(tmp_path, cv="affectnet")), str(tmp_path / "wd"))


def test_unwritable_workdir_is_named(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match=re.escape(f"--workdir={blocker}/run is not a writable directory")):
        pipeline.run("all", config_with(), f"{blocker}/run")


@pytest.mark.slow  # a fresh interpreter: 4 CPU devices need XLA_FLAGS before jax is imported
def test_batch_sizes_not_divisible_by_the_device_count():
    code = """
import pytest
from aujax import pipeline
from aujax.configs import default
config = default.get_config()
config.train.batch_size = 6
with pytest.raises(ValueError, match=r"--batch_size=6 must be a positive multiple of the number of devices \\(4"):
    pipeline.check_settings(config)
config = default.get_config()
config.explain.batch_size = 10
with pytest.raises(ValueError, match=r"--config.explain.batch_size=10 must be a positive multiple of the number of "
                                     r"devices \\(4\\)"):
    pipeline.check_settings(config)
print("ok")
"""
    result = run_python(code, {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert result.stdout.strip().endswith("ok")


def test_bad_width_threshold_and_seed():
    with pytest.raises(ValueError, match="width 'wide'"):
        pipeline.check_settings(config_with(**{"model.widths": "wide"}))
    with pytest.raises(ValueError, match=re.escape("--threshold=1.5 must lie strictly between 0 and 1")):
        pipeline.check_settings(config_with(**{"model.threshold": 1.5}))
    with pytest.raises(ValueError, match="--seed=-1 must be a non-negative integer"):
        pipeline.check_settings(config_with(seed=-1))


def test_bad_localisation_metrics():
    with pytest.raises(ValueError, match=r"--config.explain.metrics: .*'accuracy'.*roc_auc"):
        pipeline.check_settings(config_with(**{"explain.metrics": ("mu", "accuracy")}))
    with pytest.raises(ValueError, match=r"--config.explain.metrics=\('roc_auc',\): must include 'mu'"):
        pipeline.check_settings(config_with(**{"explain.metrics": ("roc_auc",)}))


def test_workdir_of_another_configuration_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"seed": 123}))
    (tmp_path / "checkpoints" / "fold_00").mkdir(parents=True)  # it trained: a finished fold
    (tmp_path / "checkpoints" / "fold_00" / "result.json").write_text("{}")
    with pytest.raises(ValueError, match=f"--workdir={tmp_path} holds a run with other settings"):
        pipeline.run("all", config_with(), str(tmp_path))


def test_evaluate_without_training_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"have not finished; run --mode=train"):
        pipeline.run("evaluate", config_with(**_data_files(tmp_path)), str(tmp_path / "wd"))
