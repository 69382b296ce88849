"""Tests of the MediaPipe-blendshape baseline: blendshapes in FaceRecords, in the TFDS builds, and as a row of
Tables 1 and 2 beside the ResNet."""

import dataclasses
import json
import logging
import os
import shutil

import numpy as np
import pytest
from ml_collections import config_dict

from aujax import distributed, facs, metrics, pipeline, protocol
from aujax.data import blendshapes, records
from tests.support import patch_records

DATA = os.path.join(os.path.dirname(__file__), "data")
AU = {au: i for i, au in enumerate(facs.PAIN_AUS)}
COLUMN = {name: i for i, name in enumerate(blendshapes.BLENDSHAPE_NAMES)}


def with_blendshapes(faces: records.FaceRecords, seed: int) -> records.FaceRecords:
    scores = np.random.default_rng(seed).random((len(faces), blendshapes.NUM_BLENDSHAPES)).astype(np.float32)
    return dataclasses.replace(faces, blendshapes=scores)


# --- FaceRecords --------------------------------------------------------------------------------------------------

def test_records_check_the_shape_and_dtype_of_blendshapes():
    faces = patch_records(2, 3, seed=0, prefix="A")
    assert faces.blendshapes is None
    assert with_blendshapes(faces, 1).blendshapes.shape == (6, 52)
    with pytest.raises(ValueError, match=r"'patches': blendshapes has shape \(6, 51\), expected \(6, 52\)"):
        dataclasses.replace(faces, blendshapes=np.zeros((6, 51), np.float32))
    with pytest.raises(ValueError, match=r"blendshapes has shape \(5, 52\)"):
        dataclasses.replace(faces, blendshapes=np.zeros((5, 52), np.float32))
    with pytest.raises(ValueError, match="blendshapes has dtype float64, expected float32"):
        dataclasses.replace(faces, blendshapes=np.zeros((6, 52)))


def test_select_and_concatenate_keep_blendshapes_only_when_every_part_has_them():
    plain = patch_records(2, 3, seed=0, prefix="A")
    scored = with_blendshapes(patch_records(2, 2, seed=1, prefix="B"), 2)
    index = np.array([3, 0])
    np.testing.assert_array_equal(scored.select(index).blendshapes, scored.blendshapes[index])
    np.testing.assert_array_equal(scored.select(scored.subject == "B001").blendshapes, scored.blendshapes[2:])
    assert plain.select(index).blendshapes is None

    both = records.concatenate([scored, with_blendshapes(plain, 3)], "both")
    np.testing.assert_array_equal(both.blendshapes[:4], scored.blendshapes)
    np.testing.assert_array_equal(both.blendshapes[4:], with_blendshapes(plain, 3).blendshapes)
    mixed = records.concatenate([scored, plain], "mixed")
    assert mixed.blendshapes is None and len(mixed) == 10


def test_save_and_load_round_trip_with_and_without_blendshapes(tmp_path):
    scored = with_blendshapes(patch_records(2, 3, seed=0, prefix="A"), 1)
    plain = patch_records(2, 3, seed=0, prefix="A")
    for faces, stem in ((scored, "scored"), (plain, "plain")):
        path = str(tmp_path / f"{stem}.npz")
        faces.save(path)
        loaded = records.load(path)
        for field in ("image", "landmarks", "labels", "intensity", "subject", "source"):
            np.testing.assert_array_equal(getattr(loaded, field), getattr(faces, field))
        with np.load(path, allow_pickle=False) as data:
            assert ("blendshapes" in data.files) == (faces.blendshapes is not None)
    np.testing.assert_array_equal(records.load(str(tmp_path / "scored.npz")).blendshapes, scored.blendshapes)
    assert records.load(str(tmp_path / "plain.npz")).blendshapes is None


# --- the baseline rows --------------------------------------------------------------------------------------------

def hand_made_faces() -> records.FaceRecords:
    """Six faces whose blendshapes fire AU4 on faces 0, 1, 4, AU26 on 0, 3 and AU27 on 1, 5 (thresholds 0.3 for
    browDown, [0.25, 0.6) for AU26 and 0.6 for AU27 on jawOpen); labels chosen for known F1."""
    n = 6
    scores = np.zeros((n, blendshapes.NUM_BLENDSHAPES), np.float32)
    scores[:, COLUMN["browDownRight"]] = [0.9, 0.9, 0.0, 0.0, 0.35, 0.1]
    scores[:, COLUMN["jawOpen"]] = [0.3, 0.7, 0.0, 0.5, 0.0, 0.9]
    scores[:, COLUMN["mouthClose"]] = scores[:, COLUMN["jawOpen"]]  # lips together: AU25 fires nowhere
    labels = np.zeros((n, len(facs.PAIN_AUS)), np.uint8)
    labels[:, AU[4]] = [1, 0, 1, 0, 1, 0]   # predicted 0, 1, 4: TP 2, 3 predicted, 3 positive
    labels[:, AU[26]] = [1, 0, 0, 1, 0, 0]  # predicted 0, 3: perfect
    labels[:, AU[27]] = [0, 1, 0, 0, 0, 0]  # one positive: under min_support 2
    labels[:, AU[25]] = [1, 1, 0, 0, 0, 0]  # never predicted
    return records.FaceRecords(
        image=np.zeros((n, facs.IMAGE_SIZE, facs.IMAGE_SIZE, 3), np.uint8),
        landmarks=np.zeros((n, facs.NUM_LANDMARKS, 2), np.float32), labels=labels,
        intensity=labels.astype(np.float32), subject=np.array(["S1", "S1", "S2", "S2", "S3", "S3"]),
        source=np.array([f"hand:{i}" for i in range(n)]), name="hand", blendshapes=scores)


def test_baseline_row_scores_the_blendshape_decisions_against_the_labels():
    (row,) = protocol.baseline_rows(hand_made_faces(), min_support=2, table="Table 1")
    assert row["method"] == "MediaPipe blendshapes"
    scores = row["scores"]
    assert scores["AU4"]["f1"] == pytest.approx(2 / 3) and scores["AU4"]["precision"] == pytest.approx(2 / 3)
    assert scores["AU26"]["f1"] == 1.0 and scores["AU26"]["support"] == 2
    assert scores["AU27"]["f1"] is None and "only 1 positive" in scores["AU27"]["reason"]
    assert scores["AU25"]["f1"] == 0.0 and scores["AU25"]["recall"] == 0.0


def test_no_baseline_row_without_blendshapes_and_one_log_line_says_why(caplog):
    caplog.set_level(logging.INFO)
    faces = dataclasses.replace(hand_made_faces(), blendshapes=None)
    assert protocol.baseline_rows(faces, min_support=1, table="Table 2") == []
    lines = [r.getMessage() for r in caplog.records if "blendshapes" in r.getMessage()]
    assert len(lines) == 1 and "hand has no MediaPipe blendshapes" in lines[0] and "Table 2" in lines[0]


class _RandomNetwork:
    """Stands in for the best fold's ResNet in `evaluate` (these tests are about the rows beside it): seeded random
    probabilities, no compilation."""

    def __init__(self):
        self.mesh = distributed.make_mesh()

    def predict(self, variables, data, index: np.ndarray) -> np.ndarray:
        return np.random.default_rng(len(index)).random((len(index), len(facs.PAIN_AUS)))


def _outcome(roles: dict, max_folds: int) -> protocol.LosoOutcome:
    """The outcome of a run whose folds predicted random held-out probabilities."""
    resident, folds = protocol.build_folds(roles["train"], roles["cv"], max_folds)
    results = [protocol.FoldResult(f.name, f.test_index, _RandomNetwork().predict(None, None, f.test_index), [])
               for f in folds]
    pooled, fold_mean, per_fold = protocol.loso_scores(results, resident.labels, 0.5, 1, resident.au_ids)
    return protocol.LosoOutcome(resident, results, pooled, fold_mean, per_fold, protocol.best_fold(per_fold),
                                _RandomNetwork(), variables={})


def _table_rows(workdir, stem: str) -> dict:
    with open(os.path.join(workdir, "results", f"{stem}.json")) as f:
        return {row["method"]: row["scores"] for row in json.load(f)["rows"]}


def test_evaluate_puts_the_baseline_beside_the_resnet_on_the_same_images(tmp_path, capsys):
    config = config_dict.ConfigDict({"seed": 0, "model": {"threshold": 0.5}, "protocol": {"min_support": 1},
                                     "analysis": {"bootstrap_samples": 50, "confidence": 0.95}})
    roles = {"train": patch_records(2, 3, seed=0, prefix="C", name="ck"),
             "cv": with_blendshapes(patch_records(3, 4, seed=1, prefix="A", name="actors"), 2),
             "cross": with_blendshapes(patch_records(2, 5, seed=3, prefix="U", name="unbc"), 4)}
    outcome = _outcome(roles, max_folds=2)  # subjects A000 and A001: the pooled row scores their 8 cv images
    pipeline.evaluate(config, str(tmp_path / "run"), roles, outcome)
    table1, table2 = _table_rows(tmp_path / "run", "table1_f1"), _table_rows(tmp_path / "run", "table2_cross_f1")
    assert list(table1) == ["ResNet-18 pooled", "ResNet-18 fold mean", "MediaPipe blendshapes"]
    held_out = roles["cv"].select(np.isin(roles["cv"].subject, ["A000", "A001"]))
    assert table1["MediaPipe blendshapes"] == metrics_of(held_out)
    assert table1["MediaPipe blendshapes"]["AU4"]["n"] == table1["ResNet-18 pooled"]["AU4"]["n"] == 8
    assert list(table2) == ["ResNet-18", "MediaPipe blendshapes"]
    assert table2["MediaPipe blendshapes"] == metrics_of(roles["cross"])
    assert "MediaPipe blendshapes" in capsys.readouterr().out

    roles["cross"] = dataclasses.replace(roles["cross"], blendshapes=None)
    pipeline.evaluate(config, str(tmp_path / "plain"), roles, outcome)
    assert list(_table_rows(tmp_path / "plain", "table2_cross_f1")) == ["ResNet-18"]
    printed = capsys.readouterr().out
    # Table 1's f1, ci_low, ci_high, precision, recall and support lines only
    assert printed.count("MediaPipe blendshapes") == 6


def metrics_of(faces: records.FaceRecords) -> dict:
    """The baseline's scores, with the intervals `pipeline.evaluate` draws for the config above."""
    return metrics.per_au_scores(faces.labels, blendshapes.blendshape_au_labels(faces.blendshapes), 1,
                                 au_ids=faces.au_ids, subjects=faces.subject, bootstrap=metrics.Bootstrap(50, 0, 0.95))


# --- the builders -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def astronaut_tree(tmp_path_factory):
    """(manifest root, {image: FaceCrop from FaceCropper}): the astronaut photo and its mirror image (subjects 1, 2,
    AU25), listed with the landmarks FaceCropper found (source pixels), so the tree builds with either landmarks."""
    pytest.importorskip("tensorflow_datasets", reason="the builders need tensorflow-datasets")
    pytest.importorskip("mediapipe", reason="MediaPipe landmarks need mediapipe")
    from PIL import Image, ImageOps

    from aujax.data import faces

    root = tmp_path_factory.mktemp("tree")
    shutil.copy(os.path.join(DATA, "astronaut.png"), root / "a.png")
    ImageOps.mirror(Image.open(root / "a.png")).save(root / "b.png")
    with faces.FaceCropper(margin=0.25) as cropper:
        crops = {name: cropper.crop_file(str(root / name)) for name in ("a.png", "b.png")}
    lines = ["image,subject,AU25," + ",".join(f"x{i},y{i}" for i in range(facs.NUM_LANDMARKS))]
    for subject, (name, crop) in enumerate(crops.items(), start=1):
        x0, y0, side = crop.box
        source_points = crop.landmarks * (side / facs.IMAGE_SIZE) + (x0, y0)
        lines.append(f"{name},{subject},1," + ",".join(f"{v:.3f}" for v in source_points.ravel()))
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return str(root), crops


def build_and_load(root: str, data_dir, **options) -> records.FaceRecords:
    from aujax.data import preprocess

    preprocess.preprocess("manifest", root, str(data_dir), str(data_dir / "report.csv"), workers=1, **options)
    return preprocess.load_records("manifest", str(data_dir), **options)


@pytest.mark.slow  # MediaPipe builds a dataset
def test_mediapipe_build_stores_the_blendshapes_face_cropper_gives(astronaut_tree, tmp_path):
    root, crops = astronaut_tree
    loaded = build_and_load(root, tmp_path / "data", landmarks="mediapipe")
    assert loaded.source.tolist() == ["a.png", "b.png"]
    expected = np.stack([crops["a.png"].blendshapes, crops["b.png"].blendshapes])
    assert loaded.blendshapes.dtype == np.float32 and loaded.blendshapes.max() > 0.1  # real scores, not zeros
    assert not np.allclose(expected[0], expected[1], atol=1e-3)  # the mirror swaps left and right: order matters
    np.testing.assert_allclose(loaded.blendshapes, expected, atol=1e-6)


def test_builds_without_mediapipe_blendshapes_load_none(astronaut_tree, tmp_path, monkeypatch):
    root, _ = astronaut_tree
    from_dataset = build_and_load(root, tmp_path / "dataset", landmarks="dataset")
    assert len(from_dataset) == 2 and from_dataset.blendshapes is None
    # a MediaPipe build made before the feature existed: the same build without the feature
    from aujax.data import builders

    monkeypatch.setattr(builders.FaceConfig, "has_blendshapes", property(lambda config: False))
    older = build_and_load(root, tmp_path / "older", landmarks="mediapipe")
    assert len(older) == 2 and older.blendshapes is None and np.asarray(older.image).std() > 10
