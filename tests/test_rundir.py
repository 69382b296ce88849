"""The run directory: every path of the workdir layout from one object, and the modules that only need paths stay
free of matplotlib."""

import os
import subprocess
import sys

import pytest

from aujax import rundir
from tests.support import REPO


def test_every_path_of_the_layout_comes_from_the_run_directory(tmp_path):
    run = rundir.RunDir(str(tmp_path))
    assert run.config == f"{tmp_path}/config.json"
    fold = run.fold(3)
    assert fold.root == f"{tmp_path}/checkpoints/fold_03" and fold.name == "fold_03"
    assert (fold.latest, fold.best) == (f"{fold.root}/latest", f"{fold.root}/best")
    assert (fold.history, fold.result, fold.predictions) == tuple(
        f"{fold.root}/{name}" for name in ("history.json", "result.json", "predictions.npz"))
    assert run.summary == f"{tmp_path}/results/summary.json"
    assert run.result("table1_f1.csv") == f"{tmp_path}/results/table1_f1.csv"
    assert run.figure(rundir.FIGURE1) == f"{tmp_path}/results/figures/figure1_regions.png"
    assert run.figure(rundir.figure2(4)) == f"{tmp_path}/results/figures/figure2_AU4.png"
    assert rundir.heatmap_grid("cv") == "heatmaps_cv.png"
    assert (rundir.TRAINING_CURVES, rundir.MU_DISTRIBUTIONS) == ("training_curves.png", "mu_distributions.png")
    assert (run.report, run.explain_image, run.logs, run.lock) == tuple(
        f"{tmp_path}/{name}" for name in ("report.html", "explain_image", "logs", ".lock"))
    with pytest.raises(ValueError):
        rundir.figure2(11)


def test_folds_lists_the_fold_directories_in_order(tmp_path):
    run = rundir.RunDir(str(tmp_path))
    assert run.folds() == []
    for name in ("fold_10", "fold_02", "other"):
        os.makedirs(os.path.join(run.checkpoints, name))
    assert [f.name for f in run.folds()] == ["fold_02", "fold_10"]


def test_the_html_report_and_the_lrp_package_import_without_matplotlib():
    code = ("import sys; import aujax.html_report, aujax.lrp, aujax.rundir; "
            "assert 'matplotlib' not in sys.modules, sorted(m for m in sys.modules if 'matplotlib' in m)[:3]")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
