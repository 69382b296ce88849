"""End to end through the command line: --mode=all on a tiny synthetic run, then explaining one photo."""

import csv
import json
import os
import shutil

import pytest

from aujax import pipeline
from tests.support import REPO, _assert_clean_error, _main, config_with

TINY_RUN = [
    "--width=4,8,8,8", "--epochs=1", "--batch_size=8",
    "--config.synthetic.train.num_subjects=4", "--config.synthetic.train.images_per_subject=8",
    "--config.synthetic.cv.num_subjects=2", "--config.synthetic.cv.images_per_subject=8",
    "--config.synthetic.cross.num_subjects=2", "--config.synthetic.cross.images_per_subject=8",
    "--config.explain.max_images=8", "--config.explain.compare=('gradient_x_input',)",
    "--config.explain.grid_images=3", "--config.protocol.min_support=1",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    result = _main(f"--workdir={workdir}", "--mode=all", *TINY_RUN)
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir, result


@pytest.mark.slow  # the command line trains and explains a tiny run
def test_mode_all_writes_tables_figures_and_report(trained_run):
    workdir, result = trained_run
    results = workdir / "results"
    for stem in ("table1_f1", "table2_cross_f1", "table3_mu", "table3_all_metrics", "table_mu_f1"):
        assert (results / f"{stem}.csv").is_file() and (results / f"{stem}.json").is_file(), stem
    with open(results / "table3_mu.csv") as f:
        methods = {row["method"] for row in csv.DictReader(f)}
    assert {"synthetic_cv paper", "synthetic_cv gradient_x_input", "synthetic_cross paper"} <= methods
    figures = set(os.listdir(results / "figures"))
    assert {"figure1_regions.png", "training_curves.png", "mu_distributions.png", "heatmaps_cv.png"} <= figures
    assert (results / "mu_per_subject.csv").is_file()
    report = (workdir / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= len(figures)
    for title in ("Table 1", "Table 2", "Table 3"):
        assert title in result.stdout and title in report
    summary = json.loads((results / "summary.json").read_text())
    assert summary["best_fold_subject"] in {"A000", "A001"}


@pytest.mark.slow  # the command line trains and explains a tiny run
def test_explain_image_on_the_astronaut(trained_run):
    workdir, _ = trained_run
    result = _main(f"--workdir={workdir}", "--mode=explain_image", f"--image={REPO}/tests/data/astronaut.png")
    assert result.returncode == 0, result.stderr[-5000:]
    out = workdir / "explain_image" / "astronaut"
    explained = json.loads((out / "result.json").read_text())
    assert explained["faces_found"] == 1
    assert set(explained["aus"]) == {"AU4", "AU6", "AU7", "AU9", "AU10", "AU25", "AU26", "AU27"}
    assert all(0.0 <= a["probability"] <= 1.0 for a in explained["aus"].values())
    assert all(a["mu"] is None or 0.0 <= a["mu"] <= 1.0 for a in explained["aus"].values())
    assert (out / "face_crop.png").is_file() and (out / "heatmaps.png").is_file()
    assert "AU4 brow lowerer" in result.stdout


@pytest.mark.slow  # the command line trains and explains a tiny run
def test_explain_image_bad_inputs(trained_run, tmp_path):
    workdir, _ = trained_run
    photo = f"--image={REPO}/tests/data/astronaut.png"
    _assert_clean_error(_main(f"--workdir={tmp_path}/empty", "--mode=explain_image", photo),
                        "holds no trained run", "--checkpoint")
    _assert_clean_error(_main(f"--workdir={workdir}", "--mode=explain_image", f"--image={REPO}/tests/data/coffee.png"),
                        "coffee.png", "no face")
    other = tmp_path / "other"
    shutil.copytree(workdir / "checkpoints" / "fold_00" / "latest", other)
    _assert_clean_error(_main(f"--workdir={tmp_path}/fresh", "--mode=explain_image", photo, f"--checkpoint={other}",
                              "--width=8,8,8,8"), "model of other settings", "--width")


def test_explain_without_a_trained_run(tmp_path):
    config = config_with(**{"synthetic.train.num_subjects": 4, "synthetic.train.images_per_subject": 8,
                            "synthetic.cv.num_subjects": 2, "synthetic.cv.images_per_subject": 8,
                            "synthetic.cross.num_subjects": 2, "synthetic.cross.images_per_subject": 8})
    with pytest.raises(FileNotFoundError, match="have not finished; run --mode=train"):
        pipeline.run("explain", config, str(tmp_path))


@pytest.mark.slow  # the command line trains and explains a tiny run
def test_relevance_budget_of_a_trained_run(trained_run):
    import subprocess
    import sys

    workdir, _ = trained_run
    command = [sys.executable, "-m", "experiments.relevance_budget", f"--workdir={workdir}", "--images=4"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    budget = json.loads((workdir / "results" / "relevance_budget_paper.json").read_text())
    shares = budget["shares"]
    assert {"stem_conv", "max_pool", "stage1_block1/conv1", "stage4_block2/add", "head", "total"} <= set(shares)
    for key in ("dropped_share", "absorbed_share"):
        assert shares["total"][key] == pytest.approx(sum(s[key] for name, s in shares.items() if name != "total"))
        assert all(s[key] >= 0 for s in shares.values())
    assert budget["images"] == 4 and "| head |" in result.stdout


@pytest.mark.slow  # the command line trains and explains a tiny run
def test_explain_with_mu_alone_on_4_devices_gives_the_mu_of_one_device_and_skips_the_other_metrics(trained_run,
                                                                                                  tmp_path):
    """The run was trained and explained on 1 device; explained again split over 4, with μ alone."""
    workdir, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("results", "report.html"))
    result = _main(f"--workdir={copy}", "--mode=explain", *TINY_RUN, "--config.explain.metrics=('mu',)",
                   env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert result.returncode == 0, result.stderr[-5000:]
    results = copy / "results"
    assert (results / "table3_mu.csv").is_file() and (results / "table_mu_f1.csv").is_file()
    assert not (results / "table3_all_metrics.csv").exists()
    assert "Table 3" in result.stdout
    assert "synthetic_cv: process 0 read 8 of 8 images" in result.stderr
    one, eight = (json.loads((run / "results" / "table3_mu.json").read_text())["rows"] for run in (workdir, copy))
    assert [r["method"] for r in one] == [r["method"] for r in eight]
    for a, b in zip(one, eight):
        for au, scores in a["scores"].items():
            assert scores["n"] == b["scores"][au]["n"], (a["method"], au)
            if scores["mu"] is None:
                assert b["scores"][au]["mu"] is None
            else:
                # float32 rounding of other per-device batch shapes, magnified by LRP's z+ and epsilon denominators
                # of weakly active units: |delta mu| <= 1.2e-5 on 1, 2, 4 and 8 devices here; a mixed-up image, AU
                # or row moves a mean over <= 8 pairs by ~1e-3 or more (the mu differ by more between AUs)
                assert b["scores"][au]["mu"] == pytest.approx(scores["mu"], rel=0, abs=1e-4), (a["method"], au)
