"""The run record: `workdir/config.json` keeps a run's settings and a fingerprint of each role's data; later modes
refuse other data; a refused or failed first attempt leaves no settings behind; explained photos of the same name
never share a directory.

One tiny run (module fixture, in process): 2 cv subjects of 4 images, 16 train-role images, 1 epoch of batch 8.
"""

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import types

import numpy as np
import pytest
from PIL import Image

from aujax import pipeline
from aujax.data import fingerprint, records
from aujax.configs import default
from tests.support import REPO, TINY_WIDTHS, patch_records

ROLES = {"train": (2, 8, "C"), "cv": (2, 4, "A"), "cross": (1, 4, "U")}  # subjects, images each, subject prefix


def tiny_config(data: dict):
    config = default.get_config()
    config.model.widths = ",".join(map(str, TINY_WIDTHS))
    config.train.epochs = 1
    config.train.batch_size = 8
    config.protocol.min_support = 1
    for role, path in data.items():
        config.data[role] = str(path)
    return config


def role_records(role: str, seed: int, per_subject: int | None = None) -> records.FaceRecords:
    subjects, images, prefix = ROLES[role]
    return patch_records(subjects, per_subject or images, seed=seed, prefix=prefix)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("run_record")
    data = {role: root / f"{role}.npz" for role in ROLES}
    for seed, (role, path) in enumerate(data.items()):
        role_records(role, seed).save(str(path))
    workdir = root / "run"
    pipeline.run("train", tiny_config(data), str(workdir))
    return types.SimpleNamespace(root=root, data=data, workdir=workdir)


@contextlib.contextmanager
def replaced(path, new_records: records.FaceRecords):
    """`path` holds `new_records` inside the block, its own records again after it."""
    original = f"{path}.original.npz"
    shutil.copyfile(path, original)
    new_records.save(str(path))
    try:
        yield
    finally:
        os.replace(original, path)


def read_record(workdir) -> dict:
    return json.loads((workdir / "config.json").read_text())


def copy_without_fingerprints(workdir, copy):
    """`copy` of the trained `workdir` as an older aujax left it: config.json without data fingerprints."""
    shutil.copytree(workdir, copy)
    settings = {k: v for k, v in read_record(copy).items() if k != "fingerprints"}
    (copy / "config.json").write_text(json.dumps(settings))
    return copy


@pytest.mark.slow  # `trained`: a tiny run trains
def test_a_run_records_a_fingerprint_of_each_roles_data(trained):
    saved = read_record(trained.workdir)["fingerprints"]
    assert set(saved) == set(ROLES)
    for role, path in trained.data.items():
        assert saved[role] == fingerprint.fingerprint(records.load(str(path)))
    assert saved["cv"]["count"] == 8 and saved["cv"]["name"] == "patches"


@pytest.mark.slow  # `trained`: a tiny run trains
def test_train_mode_leaves_a_report_of_what_the_workdir_holds(trained):
    report = (trained.workdir / "report.html").read_text()
    assert "Table 1" in report and "No figures in" in report


@pytest.mark.slow  # `trained`: a tiny run trains
def test_later_modes_refuse_a_cv_role_of_other_faces_and_labels_and_leave_the_tables(trained):
    table1 = (trained.workdir / "results" / "table1_f1.json").read_text()
    with replaced(trained.data["cv"], role_records("cv", seed=99)):  # same path, subjects, sources and size
        for mode in ("evaluate", "explain", "train"):
            with pytest.raises(ValueError) as refused:
                pipeline.run(mode, tiny_config(trained.data), str(trained.workdir))
            message = str(refused.value)
            assert message.startswith("the cv role's labels, intensity, landmarks, images differ from those the run "
                                      f"in --workdir={trained.workdir} was trained and evaluated on"), (mode, message)
            assert "config.json" in message and "\n" not in message
    assert (trained.workdir / "results" / "table1_f1.json").read_text() == table1


@pytest.mark.slow  # `trained`: a tiny run trains
def test_images_changed_in_the_sample_are_told(trained):
    cross = records.load(str(trained.data["cross"]))
    other_images = dataclasses.replace(cross, image=255 - np.asarray(cross.image))
    with replaced(trained.data["cross"], other_images):
        with pytest.raises(ValueError, match=r"^the cross role's images differ"):
            pipeline.run("evaluate", tiny_config(trained.data), str(trained.workdir))


def test_fingerprints_do_not_depend_on_how_the_records_are_held_and_read_a_sample_of_images(tmp_path):
    held = patch_records(3, 30, seed=5, prefix="S")
    held.save(str(tmp_path / "mapped.npz"))
    np.savez_compressed(tmp_path / "compressed.npz", name=np.array(held.name),
                        **{f: getattr(held, f) for f in ("image", "landmarks", "labels", "intensity", "subject",
                                                         "source")})
    read_rows = []

    def read(rows):
        read_rows.extend(rows)
        return held.image[rows]

    lazy = dataclasses.replace(held, image=records.LazyImages(len(held), read))
    prints = [fingerprint.fingerprint(r) for r in (held, records.load(str(tmp_path / "mapped.npz")),
                                                   records.load(str(tmp_path / "compressed.npz")), lazy)]
    assert all(p == prints[0] for p in prints)
    assert len(read_rows) == fingerprint.SAMPLE_SIZE == len(set(read_rows)) and {0, 89} <= set(read_rows)
    relabelled = dataclasses.replace(held, labels=1 - held.labels)
    assert fingerprint.differences(prints[0], fingerprint.fingerprint(relabelled)) == ["labels"]


@pytest.mark.slow  # `trained`: a tiny run trains
def test_an_old_workdir_without_fingerprints_gets_them_recorded(trained, tmp_path, caplog):
    workdir = copy_without_fingerprints(trained.workdir, tmp_path / "old")
    with caplog.at_level(logging.INFO, logger="absl"):
        pipeline.run("evaluate", tiny_config(trained.data), str(workdir))
    assert "has no data fingerprints" in caplog.text
    assert read_record(workdir) == read_record(trained.workdir)


@pytest.mark.slow  # `trained`: a tiny run trains
def test_how_often_the_loss_is_logged_is_not_a_setting_of_the_run(trained, tmp_path):
    """A field that changes how a run is watched, not what it computes, is neither recorded nor compared: a workdir
    recorded before `train.log_every_steps` existed (or with another value) still resumes."""
    workdir = tmp_path / "run"
    shutil.copytree(trained.workdir, workdir)
    assert "log_every_steps" not in read_record(workdir)["train"]
    config = tiny_config(trained.data)
    config.train.log_every_steps = 3
    pipeline.run("train", config, str(workdir))
    assert read_record(workdir) == read_record(trained.workdir)


@pytest.mark.slow  # `trained`: a tiny run trains
def test_a_finished_fold_that_held_out_other_images_is_refused(trained, tmp_path):
    """An old workdir (no fingerprints) whose cv role grew: the saved held-out predictions no longer fit."""
    workdir = copy_without_fingerprints(trained.workdir, tmp_path / "old")
    old = read_record(workdir)
    with replaced(trained.data["cv"], role_records("cv", seed=1, per_subject=6)):
        with pytest.raises(ValueError, match="held out 4 images of subject A000; this fold holds out 6 of subject "
                                             "A000: the data differ"):
            pipeline.run("evaluate", tiny_config(trained.data), str(workdir))
    assert read_record(workdir) == old


def test_every_fold_is_checked_for_one_batch_before_anything_is_written(tmp_path):
    data = {"train": tmp_path / "train.npz", "cv": tmp_path / "cv.npz", "cross": tmp_path / "cross.npz"}
    patch_records(1, 8, seed=0, prefix="C").save(str(data["train"]))
    small, large = patch_records(1, 4, seed=1, prefix="A"), patch_records(1, 12, seed=2, prefix="B")
    records.concatenate([small, large], name="cv").save(str(data["cv"]))
    patch_records(1, 4, seed=3, prefix="U").save(str(data["cross"]))
    config = tiny_config(data)
    config.train.batch_size = 16  # fold A000 trains on 8 + 12 images, fold B000 on 8 + 4
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"holding out B000 \(12 training images\) have fewer training images than "
                                         "one batch of 16; lower --batch_size"):
        pipeline.run("train", config, str(workdir))
    assert os.listdir(workdir) == []
    pipeline.prepare_workdir(str(workdir), tiny_config(data))  # the lower batch size is welcome


def test_a_negative_seed_is_refused_before_anything_runs():
    config = tiny_config({})
    config.seed = -1
    with pytest.raises(ValueError, match="--seed=-1 must be a non-negative integer"):
        pipeline.check_settings(config)


@pytest.mark.slow  # `trained`: a tiny run trains
def test_settings_of_an_attempt_that_never_trained_are_not_held_against_the_next(trained, tmp_path):
    workdir = tmp_path / "failed"
    (workdir / "checkpoints" / "fold_00" / "latest").mkdir(parents=True)  # what a first epoch that failed leaves
    (workdir / "checkpoints" / "fold_00" / "best").mkdir()
    (workdir / "config.json").write_text(json.dumps({**read_record(trained.workdir), "seed": 5}))
    pipeline.prepare_workdir(str(workdir), tiny_config(trained.data))
    (workdir / "checkpoints" / "fold_00" / "latest" / "2").mkdir()  # a checkpoint: now the workdir holds a run
    with pytest.raises(ValueError, match=r"holds a run with other settings \(seed differ"):
        pipeline.prepare_workdir(str(workdir), tiny_config(trained.data))


@pytest.mark.slow  # `trained`: a tiny run trains
def test_explained_photos_of_the_same_name_keep_apart_and_a_rerun_says_it_replaces(trained, tmp_path, capsys):
    astronaut = Image.open(os.path.join(REPO, "tests", "data", "astronaut.png"))
    photos = [tmp_path / "a" / "photo.png", tmp_path / "b" / "photo.png"]
    for photo, image in zip(photos, (astronaut, astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT))):
        photo.parent.mkdir()
        image.save(photo)
    outputs = []
    for photo in (*photos, photos[0]):
        pipeline.run("explain_image", tiny_config(trained.data), str(trained.workdir), image=str(photo))
        outputs.append(capsys.readouterr().out)
    root = trained.workdir / "explain_image"
    names = sorted(os.listdir(root))
    assert len(names) == 2 and names[0] == "photo" and names[1].startswith("photo-")
    assert [json.loads((root / n / "result.json").read_text())["image"] for n in names] == [str(p) for p in photos]
    assert "Replacing" not in outputs[0] + outputs[1]
    assert f"Replacing the earlier result of {photos[0]} in {root / 'photo'}" in outputs[2]
