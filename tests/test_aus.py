"""Any AU set (`config.aus`): named sets and AU lists resolved and refused in one line, the run record keeps the set
(a workdir of one set refuses another; one from before sets existed is the pain set), a dataset that does not code an
AU of the set is named, and the default job trains and explains the DISFA and BP4D sets on synthetic faces."""

import csv
import os

import numpy as np
import pytest

from aujax import facs, files, pipeline, protocol, rundir
from aujax.data import synthetic
from tests.support import TINY_WIDTHS, config_with


@pytest.mark.parametrize("value, expected", [
        ("pain", (4, 6, 7, 9, 10, 25, 26, 27)),
        ("BP4D", (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)),
        ("disfa", (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)),
        ("unbc", (4, 6, 7, 9, 10, 12, 20, 25, 26, 27, 43)),
        ("12, 4,AU43", (12, 4, 43)),
        ([25, 1], (25, 1)),
        ((2,), (2,)),
])
def test_named_sets_and_au_lists_resolve_in_their_order(value, expected):
    assert facs.resolve_aus(value) == expected


@pytest.mark.parametrize("value, message", [
        ("happy", r"'happy' is neither a named set \(pain, bp4d, disfa, unbc\) nor a known AU \(1, 2, 4, 5, .*, 43\)"),
        ("4,11", "'11' is neither a named set"),
        ([4, 3], "'3' is neither"),
        ("4,4", "expected distinct AU ids"),
        ("", "'' is neither"),
        ((), "at least one"),
])
def test_an_unknown_set_or_au_is_refused_in_one_line_listing_the_known_ones(value, message):
    with pytest.raises(ValueError, match=message) as error:
        facs.resolve_aus(value)
    assert "\n" not in str(error.value)


def test_the_settings_refuse_a_bad_set_naming_the_flag():
    with pytest.raises(ValueError, match=r"^--config.aus: AU set 'smile'"):
        pipeline.check_settings(config_with(aus="smile"))
    assert pipeline.run_settings(config_with(aus="disfa"))["aus"] == "1,2,4,5,6,9,12,15,17,20,25,26"
    assert pipeline.run_settings(config_with())["aus"] == pipeline.run_settings(config_with(aus="4,6,7,9,10,25,26,27"))[
        "aus"]


def _trained_workdir(tmp_path, config) -> str:
    """A workdir whose config.json records `config` and which holds a finished fold (trained state)."""
    workdir = str(tmp_path / "run")
    run = rundir.RunDir(workdir)
    files.write_json(run.config, pipeline.run_settings(config))
    files.write_json(run.fold(0).result, {"subject": "A000", "history": []})
    return workdir


def test_a_workdir_keeps_its_set_and_one_from_before_sets_existed_is_the_pain_set(tmp_path):
    workdir = _trained_workdir(tmp_path, config_with(aus="disfa"))
    pipeline.prepare_workdir(workdir, config_with(aus="disfa"))
    with pytest.raises(ValueError, match=r"holds a run with other settings \(aus differ"):
        pipeline.prepare_workdir(workdir, config_with(aus="bp4d"))
    adopted = config_with()
    pipeline.adopt_run_settings(workdir, adopted)
    assert facs.resolve_aus(adopted.aus) == facs.AU_SETS["disfa"]

    old = files.read_json(rundir.RunDir(workdir).config)
    del old["aus"]
    files.write_json(rundir.RunDir(workdir).config, old)
    pipeline.prepare_workdir(workdir, config_with())
    with pytest.raises(ValueError, match="aus differ"):
        pipeline.prepare_workdir(workdir, config_with(aus="disfa"))
    adopted = config_with(aus="unbc")
    pipeline.adopt_run_settings(workdir, adopted)
    assert facs.resolve_aus(adopted.aus) == facs.PAIN_AUS


def test_a_role_whose_dataset_does_not_code_an_au_of_the_set_is_named(tmp_path):
    synthetic.generate(2, 2, "posed", seed=0, name="cv set").save(str(tmp_path / "cv.records"))
    config = config_with(aus="disfa", **{"data.cv": str(tmp_path / "cv.records")})
    with pytest.raises(ValueError, match=r"^dataset 'cv set' does not code AU1 \(it codes AUs 4, 6, 7, 9, 10, 25"):
        protocol.load_roles(config)


def _small_job(aus: str):
    """The default job at a size the test tier affords: the same stages, fewer and narrower everything."""
    config = config_with(aus=aus, **{"model.widths": ",".join(map(str, TINY_WIDTHS)), "train.epochs": 1,
                                     "train.batch_size": 8, "protocol.min_support": 1,
                                     "explain.compare": ("gradient_x_input",), "explain.metrics": ("mu",),
                                     "explain.max_images": 8, "explain.batch_size": 8, "explain.grid_images": 2,
                                     "explain.examples_per_panel": 1})
    for role, subjects in (("train", 3), ("cv", 2), ("cross", 2)):
        config.synthetic[role] = dict(num_subjects=subjects, images_per_subject=8,
                                      domain="wild" if role == "cross" else "posed")
    return config


def _csv_columns(path: str) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f))


@pytest.mark.slow  # trains and explains: 50-110 s each on 2 cores
@pytest.mark.parametrize("aus", ["disfa", "bp4d"])
def test_the_default_job_trains_and_explains_another_set_on_synthetic_faces(tmp_path, aus):
    expected = facs.AU_SETS[aus]
    workdir = str(tmp_path / aus)
    pipeline.run("all", _small_job(aus), workdir)
    run = rundir.RunDir(workdir)
    columns = [f"AU{au}" for au in expected]
    for table in ("table1_f1", "table2_cross_f1", "table3_mu", "table_mu_f1"):
        assert report_columns(run.result(f"{table}.csv")) == columns, table
    with np.load(run.fold(0).predictions) as saved:
        assert saved["probabilities"].shape[1] == len(expected)
    figures = os.listdir(run.figures)
    assert "figure1_regions.png" in figures and "heatmaps_cv.png" in figures
    assert {name for name in figures if name.startswith("figure2_")} <= {f"figure2_AU{au}.png" for au in expected}
    assert files.read_json(run.config)["aus"] == ",".join(map(str, expected))
    with open(run.report, encoding="utf-8") as f:
        report = f.read()
    assert all(f"AU{au}" in report for au in expected), "the report shows every AU of the set"


def report_columns(path: str) -> list[str]:
    """The AU columns of a table CSV, in order."""
    return [name for name in _csv_columns(path) if name.startswith("AU")]
