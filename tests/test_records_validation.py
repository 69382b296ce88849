"""Tests of what reading face records refuses: values outside the records contract (labels not 0/1, intensities
outside the FACS range, non-finite numbers), empty files, files of no records and members that are not plain arrays
(in .npz files and records directories), roles that name missing records. Every error names the file or directory (or
the role's flag), the column and, for values, the first bad row."""

import numpy as np
import pytest

from aujax.data import blendshapes, records, sources
from tests.support import patch_records

AU9 = 3  # AU9's column in facs.PAIN_AUS order (records without au_ids)


def columns(faces: records.FaceRecords) -> dict[str, np.ndarray]:
    """The members `FaceRecords.save` writes, as plain arrays to change before writing them."""
    return {"name": np.array(faces.name), "image": faces.image, "landmarks": faces.landmarks,
            "labels": faces.labels.copy(), "intensity": faces.intensity.copy(), "subject": faces.subject,
            "source": faces.source}


def write(path, arrays: dict[str, np.ndarray]) -> str:
    np.savez(path, **arrays)
    return str(path)


def with_blendshapes(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {**arrays, "blendshapes": np.full((len(arrays["image"]), blendshapes.NUM_BLENDSHAPES), 0.5, np.float32)}


def test_a_label_that_is_not_0_or_1_is_refused_naming_the_file_column_first_row_and_au(tmp_path):
    arrays = columns(patch_records(2, 10, seed=0, prefix="A"))
    arrays["labels"][[17, 19], AU9] = 2
    path = write(tmp_path / "cv.npz", arrays)
    with pytest.raises(ValueError, match=r"cv\.npz: labels: row 17 \(source patches:17\) holds 2 \(AU9\); "
                                         r"labels must be 0 or 1"):
        records.load(path)


@pytest.mark.parametrize("column, value, entry, rule", [
        ("intensity", 7.0, r"AU9", r"intensities must be finite and in \[0, 5\]"),
        ("intensity", -1.0, r"AU9", r"intensities must be finite and in \[0, 5\]"),
        ("intensity", np.nan, r"AU9", r"intensities must be finite"),
        ("landmarks", np.nan, r"point 3 y", r"landmarks must be finite"),
        ("landmarks", -np.inf, r"point 3 y", r"landmarks must be finite"),
        ("blendshapes", np.nan, r"noseSneerLeft", r"blendshapes must be finite"),
])
def test_values_outside_the_contract_are_refused_naming_the_file_column_and_first_row(tmp_path, column, value, entry,
                                                                                      rule):
    arrays = with_blendshapes(columns(patch_records(2, 5, seed=1, prefix="A")))
    entry_index = {"intensity": (AU9,), "landmarks": (3, 1),
                   "blendshapes": (blendshapes.BLENDSHAPE_NAMES.index("noseSneerLeft"),)}[column]
    arrays[column] = arrays[column].copy()
    arrays[column][(6,) + entry_index] = value
    path = write(tmp_path / "records.npz", arrays)
    with pytest.raises(ValueError, match=rf"records\.npz: {column}: row 6 \(source patches:6\) holds \S+ "
                                         rf"\({entry}\); {rule}"):
        records.load(path)


def test_an_empty_file_is_refused_naming_it_and_the_role(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.npz: empty file \(0 bytes\)"):
        records.load(str(path))
    with pytest.raises(ValueError, match=rf"--cv_data={path}: empty file"):
        sources.load_role("cv", str(path), config=None)


def test_a_file_of_no_records_is_refused_naming_it_and_the_role(tmp_path):
    faces = patch_records(1, 2, seed=0, prefix="A")
    path = write(tmp_path / "none.npz", columns(faces.select(np.zeros(2, bool))))
    with pytest.raises(ValueError, match=r"none\.npz: holds no records"):
        records.load(path)
    with pytest.raises(ValueError, match=rf"^--cross_data={path}: holds no records$"):
        sources.load_role("cross", path, config=None)


@pytest.mark.parametrize("member", ["image", "subject", "labels"])
def test_an_object_member_is_refused_by_its_header_before_anything_is_mapped(tmp_path, monkeypatch, member):
    arrays = columns(patch_records(1, 2, seed=0, prefix="A"))
    arrays[member] = arrays[member].astype(object)
    path = write(tmp_path / "objects.npz", arrays)
    monkeypatch.setattr(np, "memmap", None)  # mapping anything would fail with a TypeError
    with pytest.raises(ValueError, match=rf"objects\.npz: {member} .*\bobject\b"):
        records.load(path)


def test_a_member_of_the_wrong_shape_is_named(tmp_path):
    arrays = columns(patch_records(1, 3, seed=0, prefix="A"))
    arrays["landmarks"] = arrays["landmarks"][:, :66]
    with pytest.raises(ValueError, match=r"short\.npz: landmarks has shape \(3, 66, 2\), expected \(3, 68, 2\)"):
        records.load(write(tmp_path / "short.npz", arrays))
    del arrays["labels"]
    with pytest.raises(ValueError, match=r"nolabels\.npz: not an aujax face-records file \(no labels member"):
        records.load(write(tmp_path / "nolabels.npz", arrays))


def test_records_within_the_contract_load_with_their_blendshapes(tmp_path):
    faces = patch_records(2, 3, seed=4, prefix="A")
    arrays = with_blendshapes(columns(faces))
    arrays["intensity"][:, AU9] = 5.0
    loaded = records.load(write(tmp_path / "good.npz", arrays))
    np.testing.assert_array_equal(loaded.intensity, arrays["intensity"])
    np.testing.assert_array_equal(loaded.blendshapes, arrays["blendshapes"])
    np.testing.assert_array_equal(loaded.image[[4, 1]], faces.image[[4, 1]])


@pytest.mark.parametrize("column", ["image", "subject", "labels"])
def test_an_object_column_of_a_records_directory_is_refused_by_its_header_before_anything_is_read(tmp_path,
                                                                                                 monkeypatch, column):
    faces = patch_records(1, 2, seed=0, prefix="A")
    path = tmp_path / "objects.records"
    faces.save(str(path))
    np.save(path / f"{column}.npy", getattr(faces, column).astype(object), allow_pickle=True)
    monkeypatch.setattr(np, "load", None)  # reading any column would fail with a TypeError
    with pytest.raises(ValueError, match=rf"objects\.records: {column} .*\bobject\b"):
        records.load(str(path))


def test_a_role_reads_a_records_directory_and_names_one_that_is_missing_or_not_records(tmp_path):
    faces = patch_records(2, 3, seed=0, prefix="A")
    faces.save(str(tmp_path / "cv.records"))
    loaded = sources.load_role("cv", str(tmp_path / "cv.records"), config=None)
    assert isinstance(loaded.image, np.memmap)
    np.testing.assert_array_equal(loaded.image[[5, 0]], faces.image[[5, 0]])
    missing = tmp_path / "gone.records"
    with pytest.raises(ValueError, match=rf"^--cv_data={missing}: no such file or directory$"):
        sources.load_role("cv", str(missing), config=None)
    with pytest.raises(ValueError, match=rf"^--cross_data={tmp_path}: not an aujax face-records directory "
                                         r"\(no records\.json\)$"):
        sources.load_role("cross", str(tmp_path), config=None)
