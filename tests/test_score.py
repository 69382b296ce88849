"""--mode=score: heatmaps made elsewhere scored with aujax's AU regions (aujax.score)."""

import csv
import os

import numpy as np
import pytest

from aujax import facs, regions, score
from aujax.data.records import FaceRecords
from tests.support import config_with

LANDMARKS = np.loadtxt(os.path.join(os.path.dirname(__file__), "data", "astronaut_landmarks68.csv"), delimiter=",",
                       skiprows=1).astype(np.float32)
AUS = facs.PAIN_AUS
SHIFTS = ((0, 0), (14, -6), (-12, 8))  # three faces at different places in the crop


def _records() -> FaceRecords:
    n = len(SHIFTS)
    landmarks = np.stack([LANDMARKS + shift for shift in SHIFTS]).astype(np.float32)
    return FaceRecords(np.zeros((n, 112, 112, 3), np.uint8), landmarks, np.ones((n, len(AUS)), np.uint8),
                       np.zeros((n, len(AUS)), np.float32), np.array(["a", "b", "c"]),
                       np.array([f"face{i}" for i in range(n)]), "faces", au_ids=AUS)


def _masks(records, size: int = 112) -> np.ndarray:
    """(n, A, size, size) float32 region masks of the records' landmarks at `size` pixels."""
    return np.asarray(regions.au_region_masks(records.landmarks * (size / 112), aus=AUS, size=size), np.float32)


def _mu(heatmaps, records) -> np.ndarray:
    cfg = config_with(**{"explain.metrics": ("mu",)}).explain
    scores = score.score_heatmaps(score.resample(heatmaps), records, cfg)
    assert scores.defined["mu"].all()
    return scores.values["mu"]


def test_a_heatmap_equal_to_the_region_mask_gives_mu_1_and_zero_inside_gives_mu_0():
    records = _records()
    masks = _masks(records)
    np.testing.assert_allclose(_mu(masks, records), 1.0, atol=1e-6)
    np.testing.assert_allclose(_mu(1.0 - masks, records), 0.0, atol=1e-6)


def test_shuffled_rows_change_the_result():
    records = _records()
    masks = _masks(records)
    shuffled = _mu(masks[[1, 2, 0]], records)
    assert shuffled.max() < 1.0 - 1e-3 and shuffled.mean() < 0.9


@pytest.mark.parametrize("size", [224, 56, 300])
def test_resampling_keeps_a_mask_heatmaps_mu_at_1_within_interpolation_error(size):
    from scipy import ndimage

    records = _records()
    heatmaps = _masks(records, size)
    mu = _mu(heatmaps, records)
    # what falls outside is only the relevance on a ring just outside each region: as wide as a heatmap pixel where
    # the heatmap is coarser than the crop (its region's edges fall between our pixels), plus one interpolated pixel
    width = 1 + int(np.ceil(112 / size)) if size < 112 else 1
    resampled, masks = score.resample(heatmaps), _masks(records).astype(bool)
    ring = np.stack([[ndimage.binary_dilation(m, np.ones((3, 3)), iterations=width) & ~m for m in face]
                     for face in masks])
    on_ring = (resampled * ring).sum(axis=(2, 3)) / resampled.sum(axis=(2, 3))
    assert np.all(1.0 - mu <= on_ring + 1e-4), (1.0 - mu - on_ring).max()
    assert mu.min() > 0.8 and mu.max() <= 1.0 + 1e-6


def test_one_au_heatmaps_need_one_au_and_a_count_mismatch_is_refused_naming_both(tmp_path):
    records = _records()
    np.save(tmp_path / "one.npy", _masks(records)[:, 0])
    assert score.load_heatmaps(str(tmp_path / "one.npy"), 1).shape == (3, 1, 112, 112)
    with pytest.raises(ValueError, match=r"\(n, h, w\) for one AU or \(n, 8, h, w\)"):
        score.load_heatmaps(str(tmp_path / "one.npy"), 8)
    records.save(str(tmp_path / "faces.npz"))
    np.savez(tmp_path / "two.npz", heatmaps=_masks(records)[:2])
    with pytest.raises(ValueError, match="holds 2 heatmaps but --data=.*faces.npz holds 3 images"):
        score.score(config_with(), str(tmp_path / "wd"), str(tmp_path / "two.npz"), str(tmp_path / "faces.npz"))


@pytest.mark.slow  # figures and the report
def test_score_writes_table3_figures_and_the_report(tmp_path, capsys):
    records = _records()
    records.save(str(tmp_path / "faces.npz"))
    np.save(tmp_path / "maps.npy", _masks(records, 224))
    predictions = np.ones((3, len(AUS)), np.float32)
    predictions[:, 0] = 0.2  # AU4 predicted absent: μ counts no pair of it
    np.save(tmp_path / "predictions.npy", predictions)
    workdir = tmp_path / "wd"
    score.score(config_with(), str(workdir), str(tmp_path / "maps.npy"), str(tmp_path / "faces.npz"),
                predictions=str(tmp_path / "predictions.npy"))
    with open(workdir / "results" / "table3_mu.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert "Table 3" in capsys.readouterr().out and (workdir / "report.html").is_file()
    assert {"figure1_regions.png", "heatmaps_score.png", "mu_distributions.png"} <= set(
            os.listdir(workdir / "results" / "figures"))
    mu, n = ({row["metric"]: row for row in rows}[m] for m in ("mu", "n"))
    assert mu["method"] == "faces external" and mu["AU4"] == "" and n["AU4"] == "0"  # AU4: predicted absent
    assert all(float(mu[f"AU{au}"]) > 0.9 and n[f"AU{au}"] == "3" for au in AUS[1:])


@pytest.mark.slow  # explains a tiny model twice
def test_heatmaps_saved_by_a_dataset_run_score_back_to_the_same_mu(tmp_path):
    from aujax import checkpoints, distributed, explain, lrp, pipeline, protocol, rundir
    from tests.support import TINY_WIDTHS, patch_records

    config = config_with(**{"model.widths": ",".join(map(str, TINY_WIDTHS)), "explain.metrics": ("mu",),
                            "explain.batch_size": 4, "explain.composite": "gradient_x_input",
                            "explain.save_heatmaps": True})
    reference = os.path.join(os.path.dirname(__file__), "data", "resnet18_reference", "checkpoint")
    variables = checkpoints.restore_variables(protocol.create_model(config), reference, distributed.make_mesh())
    canonical = lrp.canonize(variables)
    records = patch_records(2, 3, seed=1, prefix="A", name="patches")
    explained = explain.explain_roles(canonical, {"cv": records}, config.explain, 0.5)
    run = rundir.RunDir(str(tmp_path))
    (path,) = pipeline.save_heatmaps(run, canonical, explained, config.explain)
    with np.load(path) as saved:
        assert saved["heatmaps"].dtype == np.float16 and saved["heatmaps"].shape == (6, len(AUS), 112, 112)
        assert saved["source"].tolist() == records.source.tolist() and saved["au_ids"].tolist() == list(AUS)
        rescored = score.score_heatmaps(saved["heatmaps"].astype(np.float32), records, config.explain)
    original = explained.main["cv"].scores
    np.testing.assert_array_equal(rescored.defined["mu"], original.defined["mu"])
    np.testing.assert_allclose(rescored.values["mu"], original.values["mu"], atol=5e-3)  # float16 heatmaps


def test_a_folder_of_face_crops_gets_its_landmarks_from_mediapipe_in_the_112_frame(tmp_path):
    pytest.importorskip("mediapipe", reason="mediapipe is not installed: a folder of images needs it")
    from PIL import Image

    from aujax import pipeline

    folder = tmp_path / "crops"
    folder.mkdir()
    photo = Image.open(os.path.join(os.path.dirname(__file__), "data", "astronaut.png")).convert("RGB")
    photo.crop((120, 20, 320, 260)).save(folder / "a.png")  # 200 x 240: not square
    records, labelled = score.load_data(str(folder), AUS)
    assert records.image.shape == (1, 112, 112, 3) and records.source.tolist() == ["a.png"] and not labelled
    landmarks = records.landmarks[0]
    assert landmarks.min() >= 0 and landmarks.max() < 112 and np.ptp(landmarks[:, 0]) > 40
    labels, predictions, selected = score.selection(records.labels.shape, None, None, 0.5)
    assert selected.all()  # no labels, no predictions: every pair counts
    labels = np.zeros((1, len(AUS)), np.uint8)
    labels[0, 2] = 1
    assert score.selection((1, len(AUS)), labels, np.full((1, len(AUS)), 0.9), 0.5)[2].tolist() == [labels[0].tolist()]
    with pytest.raises(ValueError, match="--mode=score needs --heatmaps"):
        pipeline.run("score", config_with(), str(tmp_path / "wd"), score_inputs={"heatmaps": None, "data": None})
