"""Tests of aujax.data.records: image columns that are read by row (memory-mapped records directories, `LazyImages`,
concatenations of them), so that a process reads only the images it asks for; saving records directories atomically,
and the .npz files of before still read."""

import dataclasses
import json
import os
import re

import numpy as np
import pytest

from aujax import facs
from aujax.data import records
from tests.support import patch_records


class CountingReader:
    """A `LazyImages` reader over in-memory images that records every call's rows."""

    def __init__(self, images: np.ndarray):
        self.images, self.calls = images, []

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.calls.append(rows.tolist())
        return self.images[rows]


def lazy_copy(faces: records.FaceRecords) -> tuple[records.FaceRecords, CountingReader]:
    reader = CountingReader(faces.image)
    return records.FaceRecords(records.LazyImages(len(faces), reader), faces.landmarks, faces.labels, faces.intensity,
                               faces.subject, faces.source, faces.name, au_ids=faces.au_ids), reader


@pytest.mark.parametrize("index", [3, slice(2, 7), slice(None, None, -2), np.array([4, 0, 4, 9]),
                                   np.arange(10) % 3 == 0, np.array([], int)])
def test_lazy_images_index_like_the_array_and_read_each_row_once(index):
    faces = patch_records(2, 5, seed=0, prefix="A")
    lazy, reader = lazy_copy(faces)
    np.testing.assert_array_equal(lazy.image[index], faces.image[index])
    wanted = np.unique(np.arange(10)[index])
    assert reader.calls == ([wanted.tolist()] if len(wanted) else [])


def test_lazy_images_become_arrays_on_demand_and_a_selection_reads_only_its_rows_when_they_are_indexed(tmp_path):
    faces = patch_records(2, 5, seed=0, prefix="A")
    lazy, reader = lazy_copy(faces)
    assert lazy.image.shape == faces.image.shape and lazy.image.dtype == np.uint8 and len(lazy.image) == 10
    selected = lazy.select(np.array([7, 2, 9]))
    assert reader.calls == [] and len(selected.image) == 3
    np.testing.assert_array_equal(selected.image[[1, 0]], faces.image[[2, 7]])
    assert reader.calls == [[2, 7]]
    np.testing.assert_array_equal(selected.labels, faces.labels[[7, 2, 9]])
    np.testing.assert_array_equal(lazy.select(np.arange(10) >= 8).image[:], faces.image[8:])
    np.testing.assert_array_equal(np.asarray(lazy.image), faces.image)
    lazy.save(str(tmp_path / "saved.npz"))
    np.testing.assert_array_equal(records.load(str(tmp_path / "saved.npz")).image, faces.image)


def test_concatenation_of_lazy_parts_reads_each_part_only_for_its_rows():
    first, second = patch_records(2, 3, seed=0, prefix="A"), patch_records(1, 4, seed=1, prefix="B")
    lazy_first, first_reader = lazy_copy(first)
    lazy_second, second_reader = lazy_copy(second)
    both = records.concatenate([lazy_first, lazy_second], "both")
    eager = records.concatenate([first, second], "both")
    assert isinstance(eager.image, np.ndarray) and isinstance(both.image, records.LazyImages)
    np.testing.assert_array_equal(both.image[[8, 1, 6]], eager.image[[8, 1, 6]])
    assert first_reader.calls == [[1]] and second_reader.calls == [[0, 2]]
    np.testing.assert_array_equal(both.labels, eager.labels)
    np.testing.assert_array_equal(both.image[5:7], eager.image[5:7])


def test_load_maps_the_images_of_a_records_directory_and_reads_npz_files_whole(tmp_path):
    faces = patch_records(3, 4, seed=2, prefix="A")
    faces.save(str(tmp_path / "plain.records"))
    mapped = records.load(str(tmp_path / "plain.records"))
    assert isinstance(mapped.image, np.memmap)
    np.testing.assert_array_equal(mapped.image[[11, 0, 5]], faces.image[[11, 0, 5]])
    np.testing.assert_array_equal(mapped.landmarks, faces.landmarks)

    faces.save(str(tmp_path / "plain.npz"))
    assert os.path.isfile(tmp_path / "plain.npz")
    legacy = records.load(str(tmp_path / "plain.npz"))
    assert type(legacy.image) is np.ndarray
    np.testing.assert_array_equal(legacy.image, faces.image)
    arrays = {"name": np.array(faces.name), "image": faces.image, "landmarks": faces.landmarks,
              "labels": faces.labels, "intensity": faces.intensity, "subject": faces.subject, "source": faces.source}
    np.savez_compressed(tmp_path / "compressed.npz", **arrays)
    compressed = records.load(str(tmp_path / "compressed.npz"))
    assert type(compressed.image) is np.ndarray
    np.testing.assert_array_equal(compressed.image, faces.image)
    assert compressed.au_ids == facs.PAIN_AUS, "a .npz without au_ids holds the pain AUs"


def twelve_aus(faces: records.FaceRecords) -> records.FaceRecords:
    """`faces` with the labels of the DISFA set: its pain-set columns where they share an AU, the others made up."""
    aus = facs.AU_SETS["disfa"]
    rng = np.random.default_rng(0)
    labels = (rng.random((len(faces), len(aus))) < 0.4).astype(np.uint8)
    for j, au in enumerate(aus):
        if au in faces.au_ids:
            labels[:, j] = faces.labels[:, faces.au_ids.index(au)]
    return dataclasses.replace(faces, labels=labels, intensity=(2.0 * labels).astype(np.float32), au_ids=aus)


@pytest.mark.parametrize("suffix", [".records", ".npz"])
def test_au_ids_are_saved_loaded_and_a_set_is_selected_in_its_order(tmp_path, suffix):
    faces = twelve_aus(patch_records(2, 3, seed=1, prefix="A", name="toy"))
    faces.save(str(tmp_path / f"toy{suffix}"))
    loaded = records.load(str(tmp_path / f"toy{suffix}"))
    assert loaded.au_ids == facs.AU_SETS["disfa"]
    np.testing.assert_array_equal(loaded.labels, faces.labels)
    if suffix == ".records":
        with open(tmp_path / "toy.records" / "records.json") as f:
            assert json.load(f)["au_ids"] == list(facs.AU_SETS["disfa"])
    chosen = loaded.with_aus((26, 1, 12))
    assert chosen.au_ids == (26, 1, 12) and chosen.labels.shape == (6, 3) and len(chosen) == len(loaded)
    for j, au in enumerate(chosen.au_ids):
        np.testing.assert_array_equal(chosen.labels[:, j], faces.labels[:, faces.au_ids.index(au)])
        np.testing.assert_array_equal(chosen.intensity[:, j], faces.intensity[:, faces.au_ids.index(au)])
    assert chosen.select(np.array([4, 1])).au_ids == (26, 1, 12)
    assert loaded.with_aus(loaded.au_ids) is loaded
    with pytest.raises(ValueError, match=r"^dataset 'toy' does not code AU7 \(it codes AUs 1, 2, 4, 5"):
        loaded.with_aus((4, 7))


def test_records_written_before_au_ids_hold_the_pain_aus(tmp_path):
    faces = patch_records(2, 2, seed=0, prefix="A")
    faces.save(str(tmp_path / "old.records"))
    meta_path = tmp_path / "old.records" / "records.json"
    meta = json.loads(meta_path.read_text())
    del meta["au_ids"]
    meta_path.write_text(json.dumps(meta))
    old = records.load(str(tmp_path / "old.records"))
    assert old.au_ids == facs.PAIN_AUS
    assert old.with_aus((25, 4)).labels.tolist() == faces.labels[:, [5, 0]].tolist()
    with pytest.raises(ValueError, match="does not code AU1 "):
        old.with_aus(facs.AU_SETS["bp4d"])


def test_au_columns_must_match_au_ids_and_parts_of_other_sets_are_not_joined(tmp_path):
    faces = patch_records(2, 2, seed=0, prefix="A", name="pain")
    with pytest.raises(ValueError, match=r"labels has shape \(4, 8\), expected \(4, 3\)"):
        dataclasses.replace(faces, au_ids=(1, 2, 4))
    with pytest.raises(ValueError, match="au_ids must be distinct"):
        dataclasses.replace(faces, au_ids=(4, 4, 7, 9, 10, 25, 26, 27))
    other = twelve_aus(dataclasses.replace(faces, name="disfa"))
    with pytest.raises(ValueError, match="cannot join 'disfa'.*to 'pain'.*with_aus"):
        records.concatenate([faces, other], "both")
    joined = records.concatenate([faces.with_aus((4, 25)), other.with_aus((4, 25))], "both")
    assert joined.au_ids == (4, 25) and len(joined) == 8
    bad = dataclasses.replace(other, labels=np.where(np.arange(12) == 8, 2, other.labels).astype(np.uint8))
    bad.save(str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match=r"labels: row 0 .* \(AU17\)"):
        records.load(str(tmp_path / "bad.npz"))


def test_a_records_directory_round_trips_lazy_images_written_and_read_by_row(tmp_path, monkeypatch):
    faces = dataclasses.replace(patch_records(2, 5, seed=3, prefix="A", name="cv set"),
                                blendshapes=np.linspace(0, 1, 10 * 52, dtype=np.float32).reshape(10, 52))
    lazy, reader = lazy_copy(faces)
    lazy = dataclasses.replace(lazy, blendshapes=faces.blendshapes)
    monkeypatch.setattr(records, "_WRITE_ROWS", 4)
    lazy.save(str(tmp_path / "cv.records"))
    assert reader.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert sorted(os.listdir(tmp_path)) == ["cv.records"]
    assert json.loads((tmp_path / "cv.records" / "records.json").read_text()) == {
            "format": "aujax-face-records", "version": 1, "name": "cv set", "count": 10, "au_ids": list(facs.PAIN_AUS)}

    loaded = records.load(str(tmp_path / "cv.records"))
    assert isinstance(loaded.image, np.memmap) and loaded.name == "cv set"
    for field in ("image", "landmarks", "labels", "intensity", "subject", "source", "blendshapes"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(faces, field), err_msg=field)
    selected = loaded.select(np.array([9, 2]))
    assert isinstance(selected.image, records.LazyImages)
    np.testing.assert_array_equal(selected.image[:], faces.image[[9, 2]])


def test_saving_over_records_replaces_them_and_a_failed_save_leaves_no_partial_directory(tmp_path):
    path = tmp_path / "cv.records"
    patch_records(1, 3, seed=0, prefix="A").save(str(path))
    newer = patch_records(2, 2, seed=1, prefix="B")
    newer.save(str(path))
    assert sorted(os.listdir(tmp_path)) == ["cv.records"] and (path / "records.json").is_file()
    np.testing.assert_array_equal(records.load(str(path)).subject, newer.subject)

    def fail_after_two_rows(rows):
        if rows[-1] >= 2:
            raise OSError("read failed")
        return newer.image[rows]

    failing = dataclasses.replace(newer, image=records.LazyImages(len(newer), fail_after_two_rows))
    for target in (path, tmp_path / "new.records"):
        with pytest.raises(OSError, match="read failed"):
            failing.save(str(target))
    assert sorted(os.listdir(tmp_path)) == ["cv.records"]
    np.testing.assert_array_equal(records.load(str(path)).image, newer.image)


def test_save_refuses_to_replace_what_is_not_a_records_directory(tmp_path):
    faces = patch_records(1, 2, seed=0, prefix="A")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "me.jpg").write_bytes(b"jpeg")
    (tmp_path / "notes.records").write_text("mine")
    for target in ("photos", "notes.records"):
        with pytest.raises(ValueError, match=rf"{target}: exists and is not an aujax face-records directory"):
            faces.save(str(tmp_path / target))
    assert (tmp_path / "photos" / "me.jpg").read_bytes() == b"jpeg"
    assert (tmp_path / "notes.records").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["notes.records", "photos"]


def test_a_file_that_is_not_records_is_named_in_the_error(tmp_path):
    damaged = tmp_path / "damaged.npz"
    faces = patch_records(1, 2, seed=0, prefix="A")
    faces.save(str(damaged))
    damaged.write_bytes(damaged.read_bytes()[:2000])
    with pytest.raises(ValueError, match=r"damaged\.npz: not an aujax face-records file"):
        records.load(str(damaged))
    (tmp_path / "text.npz").write_text("no zip")
    with pytest.raises(ValueError, match=r"text\.npz: not an aujax face-records file"):
        records.load(str(tmp_path / "text.npz"))


def test_a_directory_that_is_not_records_is_named_in_the_error(tmp_path):
    faces = patch_records(1, 4, seed=0, prefix="A")
    (tmp_path / "photos").mkdir()
    with pytest.raises(ValueError, match=r"photos: not an aujax face-records directory \(no records\.json\)"):
        records.load(str(tmp_path / "photos"))
    broken = {"garbled": ("records.json", lambda d: (d / "records.json").write_text("{not json")),
              "foreign": ("records.json", lambda d: (d / "records.json").write_text('{"format": "other"}')),
              "truncated": ("image.npy", lambda d: os.truncate(d / "image.npy", 5000)),
              "nolabels": ("labels.npy", lambda d: (d / "labels.npy").unlink()),
              "badheader": ("landmarks.npy", lambda d: (d / "landmarks.npy").write_bytes(b"not a .npy file"))}
    for name, (file, damage) in broken.items():
        faces.save(str(tmp_path / name))
        damage(tmp_path / name)
        with pytest.raises(ValueError,
                           match=rf"{name}: not an aujax face-records directory \(.*{re.escape(file)}"):
            records.load(str(tmp_path / name))
    faces.save(str(tmp_path / "future"))
    (tmp_path / "future" / "records.json").write_text(
            json.dumps({"format": "aujax-face-records", "version": 2, "name": "x", "count": 4}))
    with pytest.raises(ValueError, match=r"future: records format version 2; this aujax reads version 1"):
        records.load(str(tmp_path / "future"))
