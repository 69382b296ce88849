"""Tests of the TFDS builders and the preprocess stage, on tiny trees in each real layout built in tmp_path.

Frames are the astronaut photo (tests/data/astronaut.png, a real face, public domain); most builds crop around
the trees' own landmarks (landmarks="dataset"); the Actor Study build runs MediaPipe on the bad-input cases.
"""

import csv
import functools
import logging
import math
import os
import re

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets", reason="the builders need tensorflow-datasets")
from PIL import Image  # noqa: E402

from aujax import facs  # noqa: E402
from aujax.data import builders, faces, layouts, preprocess  # noqa: E402
from tests.support import write_video  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data")


def at(records, au: int) -> int:
    """The column of AU `au` in `records`' labels and intensity."""
    return records.au_ids.index(au)

SIDE = 160  # frame side in pixels: small for speed, large enough for MediaPipe


@functools.lru_cache(maxsize=None)
def astronaut() -> Image.Image:
    """The astronaut's head and shoulders, SIDE x SIDE RGB."""
    return Image.open(os.path.join(DATA, "astronaut.png")).convert("RGB").crop((100, 0, 356, 256)).resize((SIDE, SIDE))


def save(image: Image.Image, path, **kwargs) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, **kwargs)
    return str(path)


def write(path, text: str | bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(text, bytes) else "w") as f:
        f.write(text)
    return str(path)


def face_points(n: int = 68) -> np.ndarray:
    """n (x, y) points on an ellipse over the astronaut's face in a SIDE x SIDE frame."""
    angle = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([80 + 28 * np.cos(angle), 75 + 36 * np.sin(angle)], axis=1).astype(np.float32)


def points_text(points: np.ndarray) -> str:
    return "".join(f"   {x:.7e}   {y:.7e}\n" for x, y in points)


def facs_text(*codes, columns: int = 2) -> str:
    return "".join("   ".join(f"{v:.7e}" for v in (au, intensity, 0, 0)[:columns]) + "\n" for au, intensity in codes)


def read_report(path) -> dict[str, dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(preprocess.REPORT_COLUMNS)
    return {row["source"]: row for row in rows}


def build(dataset, manual_dir, tmp_path, **options):
    report_path = tmp_path / "results" / "preprocess_report.csv"
    report = preprocess.preprocess(dataset, str(manual_dir) if manual_dir else None, str(tmp_path / "data"),
                                   str(report_path), **options)
    return report, read_report(report_path)


# --- CK+ ----------------------------------------------------------------------------------------------------------

def ck_tree(root, facs_codes=((4, 3), (25, 0), (12, 2))):
    """S005/001: 4 frames coded at the last; S010/001: 2 frames coded AU12 only; S011/001: 1 frame, no FACS;
    a FACS file with no image (S012)."""
    for subject, frames in (("S005", 4), ("S010", 2), ("S011", 1)):
        for i in range(1, frames + 1):
            stem = f"{subject}_001_{i:08d}"
            save(astronaut(), root / f"cohn-kanade-images/{subject}/001/{stem}.png")
            write(root / f"Landmarks/{subject}/001/{stem}_landmarks.txt", points_text(face_points() + i))
    write(root / "FACS/S005/001/S005_001_00000004_facs.txt", facs_text(*facs_codes) + "AU4 strong\n")
    write(root / "FACS/S010/001/S010_001_00000002_facs.txt", facs_text((12, 3)))
    write(root / "FACS/S012/001/S012_001_00000003_facs.txt", facs_text((4, 1)))
    return root


def test_ck_plus_builds_labelled_crops_and_reports_every_file(tmp_path):
    root = ck_tree(tmp_path / "ck")
    report, rows = build("ck_plus", root, tmp_path, landmarks="dataset", label_frames="last_fraction:0.5")
    loaded = preprocess.load_records("ck_plus", str(tmp_path / "data"), landmarks="dataset",
                                     label_frames="last_fraction:0.5")
    kept = [f"cohn-kanade-images/S005/001/S005_001_0000000{i}.png" for i in (3, 4)]
    assert loaded.name == "ck_plus" and loaded.source.tolist() == kept and loaded.subject.tolist() == ["S005"] * 2
    assert loaded.au_ids == tuple(sorted(facs.PAIN_AUS + (12,)))  # every AU coded, AU12 too
    expected_labels = [1 if au in (4, 25) else 0 for au in facs.PAIN_AUS]
    assert loaded.with_aus(facs.PAIN_AUS).labels.tolist() == [expected_labels] * 2
    assert loaded.labels[:, at(loaded, 12)].tolist() == [1, 1]
    assert loaded.intensity[:, at(loaded, 4)].tolist() == [3.0, 3.0]
    assert loaded.intensity[:, at(loaded, 25)].tolist() == [0.0, 0.0]
    # the crops are exactly faces.crop_around_landmarks of the frames around their own landmarks
    image = faces.read_image(str(root / kept[0]))
    crop, crop_landmarks = faces.crop_around_landmarks(image, face_points() + 3, 0.25)
    np.testing.assert_array_equal(loaded.image[0], crop)
    np.testing.assert_allclose(loaded.landmarks[0], crop_landmarks, atol=1e-4)
    assert np.all((loaded.landmarks >= 0) & (loaded.landmarks < facs.IMAGE_SIZE))

    assert report.num_examples == 2 and report.other_aus == {12: 2}
    assert {s: rows[s]["status"] for s in kept} == {s: "ok" for s in kept}
    assert rows["cohn-kanade-images/S005/001/S005_001_00000001.png"]["reason"] == "unlabelled_frame"
    assert rows["cohn-kanade-images/S010/001/S010_001_00000002.png"]["reason"] == "no_pain_au"
    assert rows["cohn-kanade-images/S011/001/S011_001_00000001.png"]["reason"] == "no_facs"
    assert rows["FACS/S012/001/S012_001_00000003_facs.txt"]["reason"] == "facs_without_image"
    malformed = rows["FACS/S005/001/S005_001_00000004_facs.txt"]
    assert malformed["status"] == "warning" and "line 4" in malformed["message"]
    assert len(rows) == 7 + 2  # every image, and the two label files with problems

    builder = builders.make_builder("ck_plus", str(tmp_path / "data"), landmarks="dataset",
                                    label_frames="last_fraction:0.5")
    peaks = {example["source"].decode(): example["peak"] for example in builder.as_data_source(split="train")}
    assert peaks == {kept[0]: False, kept[1]: True}


def test_ck_plus_options_build_side_by_side_and_a_rebuild_replaces(tmp_path):
    root = ck_tree(tmp_path / "ck")
    build("ck_plus", root, tmp_path, landmarks="dataset", label_frames="peak")
    build("ck_plus", root, tmp_path, landmarks="dataset", label_frames="all", pain_only=False)
    data_dir = str(tmp_path / "data")
    assert len(preprocess.load_records("ck_plus", data_dir, landmarks="dataset", label_frames="peak")) == 1
    every = preprocess.load_records("ck_plus", data_dir, landmarks="dataset", label_frames="all", pain_only=False)
    assert len(every) == 3 + 1  # S005 frames 2-4 and S010 frame 2: all but each sequence's first
    s010 = every.subject == "S010"
    assert every.with_aus(facs.PAIN_AUS).labels[s010].sum() == 0 and every.labels[s010, at(every, 12)].tolist() == [1]
    with pytest.raises(ValueError, match=r"not built .* built there: \['dataset.all.margin0.25.all', "
                                         r"'dataset.pain.margin0.25.peak'\]"):
        preprocess.load_records("ck_plus", data_dir)

    write(root / "FACS/S005/001/S005_001_00000004_facs.txt", facs_text((6, 2)))
    build("ck_plus", root, tmp_path, landmarks="dataset", label_frames="peak")
    rebuilt = preprocess.load_records("ck_plus", data_dir, landmarks="dataset", label_frames="peak")
    assert rebuilt.au_ids == facs.PAIN_AUS and rebuilt.labels.tolist() == [[1 if au == 6 else 0 for au in facs.PAIN_AUS]]


def test_missing_or_wrongly_laid_out_manual_dir_shows_the_expected_tree(tmp_path):
    with pytest.raises(layouts.LayoutError, match="does not exist") as error:
        build("ck_plus", tmp_path / "nowhere", tmp_path)
    assert layouts.EXPECTED_TREES["ck_plus"] in str(error.value)
    save(astronaut(), tmp_path / "flat" / "S005_001_00000001.png")
    with pytest.raises(layouts.LayoutError, match="lacks cohn-kanade-images, FACS") as error:
        build("ck_plus", tmp_path / "flat", tmp_path)
    assert "It holds: S005_001_00000001.png" in str(error.value)
    with pytest.raises(layouts.LayoutError, match="lacks Images, Frame_Labels/FACS, Frame_Labels/PSPI"):
        build("unbc_mcmaster", tmp_path / "flat", tmp_path)


# --- UNBC-McMaster ------------------------------------------------------------------------------------------------

def test_unbc_keeps_pspi_and_completes_the_66_aam_points(tmp_path):
    root, seq = tmp_path / "unbc", "042-ll042/ll042t1aaaff"
    codes = {1: ((4, 2), (6, 3), (43, 1)), 2: (), 3: ((10, 1),)}
    for i, frame_codes in codes.items():
        stem = f"ll042t1aaaff{i:03d}"
        save(astronaut(), root / f"Images/{seq}/{stem}.png")
        write(root / f"Frame_Labels/FACS/{seq}/{stem}_facs.txt", facs_text(*frame_codes, columns=4))
        write(root / f"Frame_Labels/PSPI/{seq}/{stem}_facs.txt", f"   {5.0 * (i == 1) + (i == 3):.7e}\n")
        write(root / f"AAM_landmarks/{seq}/{stem}_aam.txt", points_text(face_points(66)))
    report, rows = build("unbc_mcmaster", root, tmp_path, landmarks="dataset")
    loaded = preprocess.load_records("unbc_mcmaster", str(tmp_path / "data"))  # its only build
    assert loaded.source.tolist() == [f"Images/{seq}/ll042t1aaaff00{i}.png" for i in (1, 3)]
    assert loaded.subject.tolist() == ["042-ll042"] * 2
    assert loaded.au_ids == tuple(sorted(facs.PAIN_AUS + (43,)))
    assert loaded.with_aus(facs.PAIN_AUS).labels[0].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert loaded.labels[1, at(loaded, 10)] == 1 and loaded.labels[0, at(loaded, 43)] == 1
    np.testing.assert_allclose(loaded.landmarks[:, 60], loaded.landmarks[:, 48])
    np.testing.assert_allclose(loaded.landmarks[:, 64], loaded.landmarks[:, 54])
    assert rows[f"Images/{seq}/ll042t1aaaff002.png"]["reason"] == "no_pain_au"
    source = builders.make_builder("unbc_mcmaster", str(tmp_path / "data"), landmarks="dataset").as_data_source(
            split="train")
    assert sorted(float(example["pspi"]) for example in source) == [1.0, 5.0]
    assert report.other_aus == {43: 1}


def test_preprocessing_logs_its_cropping_progress_with_rate(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="absl")
    build("ck_plus", ck_tree(tmp_path / "ck"), tmp_path, landmarks="dataset")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("preprocess ck_plus: cropping")]
    assert len(lines) == 1 and re.fullmatch(r"preprocess ck_plus: cropping: 2/2 faces \(100%\), [\d.]+ faces/s, "
                                             r"done in \d+s", lines[0]), lines


# --- DISFA and BP4D (MediaPipe crops) -----------------------------------------------------------------------------

def test_disfa_builds_the_labelled_frames_of_its_videos_with_intensities(tmp_path):
    root = tmp_path / "disfa"
    face = np.asarray(astronaut())
    write_video(root / "Videos_LeftCamera/LeftVideoSN001_comp.avi", [face, np.roll(face, 3, axis=1),
                                                                     np.full_like(face, 128)])
    for au in facs.AU_SETS["disfa"]:  # frame 4 is labelled but the video has 3 frames
        values = {12: "0 3 1 5", 25: "2 0 0 0"}.get(au, "0 0 0 0").split()
        write(root / f"ActionUnit_Labels/SN001/SN001_au{au}.txt",
              "".join(f"{frame},{v}\n" for frame, v in enumerate(values, start=1)))
    report, rows = build("disfa", root, tmp_path)
    loaded = preprocess.load_records("disfa", str(tmp_path / "data"))
    video = "Videos_LeftCamera/LeftVideoSN001_comp.avi"
    assert loaded.au_ids == facs.AU_SETS["disfa"] and loaded.source.tolist() == [f"{video}#0000{i}" for i in (1, 2)]
    assert loaded.labels[:, at(loaded, 12)].tolist() == [0, 1] and loaded.labels[:, at(loaded, 25)].tolist() == [1, 0]
    assert loaded.intensity[:, at(loaded, 12)].tolist() == [0.0, 3.0] and loaded.blendshapes is not None
    assert rows[f"{video}#00003"]["reason"] == "no_face"
    assert rows[f"{video}#00004"]["reason"] == "unreadable" and "ends after 3 frames" in rows[f"{video}#00004"]["message"]
    assert report.au_ids == facs.AU_SETS["disfa"] and "AU columns stored: 1, 2, 4, 5, 6, 9, 12" in report.summary()
    np.testing.assert_allclose(np.asarray(loaded.image[1], float).mean(), np.asarray(loaded.image[0], float).mean(),
                               atol=3)  # the same face, moved: a real crop of each frame
    lenient = builders.make_config("disfa", positive_intensity=1)
    assert lenient.name != builders.make_config("disfa").name and lenient.name.endswith("pos1")


def test_bp4d_builds_the_coded_frames_with_every_coded_au(tmp_path):
    root = tmp_path / "bp4d"
    save(astronaut(), root / "2D+3D/F001/T1/0001.jpg")
    save(astronaut().transpose(Image.Transpose.FLIP_LEFT_RIGHT), root / "2D+3D/F001/T1/0002.jpg")
    write(root / "AUCoding/AU_OCC/F001_T1.csv", "0,1,2,12,99\n1,0,1,1,9\n2,1,0,0,9\n")
    report, rows = build("bp4d", root, tmp_path, workers=1)
    loaded = preprocess.load_records("bp4d", str(tmp_path / "data"))
    assert loaded.au_ids == (1, 2, 12) and loaded.labels.tolist() == [[0, 1, 1], [1, 0, 0]]
    assert loaded.subject.tolist() == ["F001", "F001"] and report.num_examples == 2
    with pytest.raises(ValueError, match="landmarks='dataset': this dataset's landmarks are not read"):
        builders.make_config("bp4d", landmarks="dataset")
    assert builders.make_config("bp4d", aus="AU12,1").aus == (1, 12)


@pytest.mark.parametrize("dataset, lacks", [("disfa", "lacks ActionUnit_Labels, Videos_LeftCamera"),
                                            ("bp4d", "lacks AUCoding/AU_OCC, 2D+3D")])
def test_a_frame_dataset_in_another_layout_is_refused_with_its_expected_tree(tmp_path, dataset, lacks):
    save(astronaut(), tmp_path / "flat" / "SN001_0001.png")
    with pytest.raises(layouts.LayoutError, match=re.escape(lacks)) as error:
        build(dataset, tmp_path / "flat", tmp_path)
    assert layouts.EXPECTED_TREES[dataset] in str(error.value) and "It holds: SN001_0001.png" in str(error.value)


# --- Actor Study manifest, MediaPipe and bad input ----------------------------------------------------------------

def bad_images(root) -> dict[str, str]:
    """image path (relative to root) -> the report status:reason expected for it."""
    face = astronaut()
    png = save(face, root / "bad/full.png")
    with open(png, "rb") as f:
        png_bytes = f.read()
    jpeg = save(face, root / "bad/full.jpg", quality=90)
    with open(jpeg, "rb") as f:
        jpeg_bytes = f.read()
    gray16 = (np.asarray(face.convert("L"), np.uint16) * 257).astype(np.uint16)
    two = Image.new("RGB", (2 * SIDE, SIDE))
    two.paste(face, (0, 0))
    two.paste(face, (SIDE, 0))
    write(root / "bad/zero.png", b"")
    write(root / "bad/truncated.png", png_bytes[:len(png_bytes) // 2])
    write(root / "bad/truncated.jpg", jpeg_bytes[:len(jpeg_bytes) // 2])
    write(root / "bad/text.png", "this is not an image\n")
    save(face.convert("RGBA"), root / "bad/rgba.png")
    save(Image.fromarray(gray16), root / "bad/gray16.png")
    save(face.convert("L"), root / "bad/gray8.png")
    save(Image.new("1", (10000, 10000)), root / "bad/huge.png")
    save(face.resize((20, 20)), root / "bad/tiny.png")
    save(Image.open(os.path.join(DATA, "chelsea.png")).convert("RGB").resize((225, 150)), root / "bad/cat.png")
    save(two, root / "bad/two_faces.png")
    return {
            "bad/zero.png": "skipped:empty_file", "bad/truncated.png": "skipped:unreadable",
            "bad/truncated.jpg": "skipped:unreadable", "bad/text.png": "skipped:unreadable",
            "bad/rgba.png": "ok:", "bad/gray16.png": "ok:", "bad/gray8.png": "ok:",
            "bad/huge.png": "skipped:too_large", "bad/tiny.png": "skipped:too_small", "bad/cat.png": "skipped:no_face",
            "bad/two_faces.png": "ok:several_faces",
    }


@pytest.mark.slow  # MediaPipe crops
def test_actor_study_with_mediapipe_reports_bad_input_and_excludes_participant_16(tmp_path):
    root = tmp_path / "actors"
    expected = bad_images(root)
    save(astronaut(), root / "p16/a.png")
    save(astronaut(), tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", root / "link.png")
    lines = ["image,subject,AU4,AU6,AU7,AU9,AU10,AU25,AU26,AU27"]
    lines += [f"{path},1,1,0,0,0,0,1,0,0" for path in expected]
    lines += ["p16/a.png,16,1,0,0,0,0,0,0,0", "../outside.png,2,1,0,0,0,0,0,0,0",
              f"{tmp_path / 'outside.png'},2,1,0,0,0,0,0,0,0", "link.png,2,1,0,0,0,0,0,0,0"]
    write(root / "manifest.csv", "\n".join(lines) + "\n")

    report, rows = build("actor_study", root, tmp_path, workers=1)
    assert {path: f"{rows[path]['status']}:{rows[path]['reason']}" for path in expected} == expected
    for path in expected:
        assert path in rows[path]["message"] or expected[path] == "ok:"
    assert rows["p16/a.png"]["status"] == "filtered" and rows["p16/a.png"]["reason"] == "excluded_subject"
    for line in (14, 15, 16):
        assert rows[f"manifest.csv:{line}"]["reason"] == "path_outside_root"
    assert "outside the data root" in rows["manifest.csv:16"]["message"]
    assert "faces kept                  4  (several_faces: 1)" in report.summary()
    assert "images read                 5" in report.summary()  # 4 faces and the cat

    loaded = preprocess.load_records("actor_study", str(tmp_path / "data"))
    assert loaded.name == "actor_study" and len(loaded) == 4 and set(loaded.subject) == {"1"}
    assert loaded.labels[:, [at(loaded, 4), at(loaded, 25)]].all() and loaded.labels.sum() == 8
    assert np.all((loaded.landmarks >= 0) & (loaded.landmarks < facs.IMAGE_SIZE))
    assert np.asarray(loaded.image).std() > 10  # real crops, not blank


def test_manifest_with_no_usable_face_fails_after_writing_its_report(tmp_path):
    save(astronaut().resize((20, 20)), tmp_path / "m/tiny.png")
    header = "image,subject,AU4," + ",".join(f"x{i},y{i}" for i in range(68))
    write(tmp_path / "m/manifest.csv", f"{header}\ntiny.png,1,1," + ",".join(["5"] * 136) + "\n")
    with pytest.raises(preprocess.PreprocessError, match="no face kept .* see .*preprocess_report.csv"):
        build("manifest", tmp_path / "m", tmp_path, landmarks="dataset")
    rows = read_report(tmp_path / "results/preprocess_report.csv")
    assert rows["tiny.png"]["reason"] == "too_small" and "tiny.png" in rows["tiny.png"]["message"]


def one_face_manifest(image: str) -> str:
    """A manifest listing `image` (subject 1, AU4 at intensity 3) with the astronaut's `face_points`."""
    header = "image,subject,AU4," + ",".join(f"x{i},y{i}" for i in range(68))
    return f"{header}\n{image},1,3," + ",".join(f"{v:.2f}" for v in face_points().ravel()) + "\n"


def test_a_latin1_manifest_builds_with_the_encoding_option_and_is_refused_without_it(tmp_path):
    save(astronaut(), tmp_path / "m/J\u00fcrgen.png")
    write(tmp_path / "m/manifest.csv", one_face_manifest("J\u00fcrgen.png").encode("latin-1"))
    with pytest.raises(ValueError, match=r"manifest\.csv: line 2: not utf-8 text .*encoding=latin-1"):
        build("manifest", tmp_path / "m", tmp_path, landmarks="dataset")
    report, rows = build("manifest", tmp_path / "m", tmp_path, landmarks="dataset", encoding="latin-1")
    assert rows["J\u00fcrgen.png"]["status"] == "ok" and report.num_examples == 1
    assert report.config_name == builders.make_config("manifest", landmarks="dataset").name  # a build-only option
    loaded = preprocess.load_records("manifest", str(tmp_path / "data"), landmarks="dataset")
    assert loaded.source.tolist() == ["J\u00fcrgen.png"] and loaded.intensity[0, at(loaded, 4)] == 3.0
    with pytest.raises(ValueError, match="encoding='klingon': not a text encoding"):
        builders.make_config("manifest", encoding="klingon")


def test_a_built_dataset_holding_a_label_that_is_not_0_or_1_is_refused_when_read(tmp_path, monkeypatch):
    save(astronaut(), tmp_path / "m/a.png")
    write(tmp_path / "m/manifest.csv", one_face_manifest("a.png"))
    monkeypatch.setattr(layouts.FaceFile, "labels", lambda face, au_ids: np.full(len(au_ids), 2, np.uint8))
    build("manifest", tmp_path / "m", tmp_path, landmarks="dataset")
    with pytest.raises(ValueError, match=r"^manifest \(.*/manifest/.*\): labels: row 0 \(source a\.png\) holds 2 "
                                         r"\(AU4\); labels must be 0 or 1$"):
        preprocess.load_records("manifest", str(tmp_path / "data"))


def test_options_are_checked_before_anything_is_built(tmp_path):
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['landmark'\]; options are .*'label_frames'"):
        builders.make_builder("ck_plus", str(tmp_path), landmark="dataset")
    with pytest.raises(ValueError, match="landmarks='dlib'"):
        builders.make_builder("unbc_mcmaster", str(tmp_path), landmarks="dlib")
    with pytest.raises(ValueError, match="label_frames='most'"):
        builders.make_builder("ck_plus", str(tmp_path), label_frames="most")
    with pytest.raises(ValueError, match="unknown dataset 'ckplus'"):
        builders.make_builder("ckplus", str(tmp_path))
    assert builders.make_config("actor_study").exclude_subjects == ("16",)
    assert builders.make_config("manifest", exclude_subjects="3, 16").name.endswith("excl_16_3")


@pytest.mark.parametrize("dataset, option, value, expected", [
        ("actor_study", "pain_only", "no", "True or False"), ("ck_plus", "margin", "wide", "float"),
        ("ck_plus", "label_frames", 5, "str"), ("synthetic_faces", "num_subjects", "x", "int"),
        ("unbc_mcmaster", "workers", 1.5, "int or None"), ("manifest", "margin", True, "float")])
def test_an_option_of_the_wrong_type_is_refused_naming_it(tmp_path, dataset, option, value, expected):
    with pytest.raises(ValueError, match=rf"^{dataset}: {option}={value!r}: expected {expected}$"):
        builders.make_config(dataset, **{option: value})


def test_options_as_the_command_line_gives_them_are_taken():
    assert builders.make_config("actor_study", exclude_subjects=16).exclude_subjects == ("16",)
    assert builders.make_config("ck_plus", margin=1).margin == 1
    assert builders.make_config("unbc_mcmaster", workers=None).workers is None


# --- registered with TFDS -----------------------------------------------------------------------------------------

DOCUMENTED_VARIANTS = {  # the first: the default config
        "ck_plus": ({}, {"landmarks": "dataset"}, {"label_frames": "all"}),
        "unbc_mcmaster": ({}, {"landmarks": "dataset"}),
        "disfa": ({}, {"positive_intensity": 1.0}, {"frame_step": 5}),
        "bp4d": ({}, {"aus": facs.AU_SETS["bp4d"]}),
        "manifest": ({}, {"landmarks": "dataset"}),
        "actor_study": ({}, {"landmarks": "dataset"}),
        "synthetic_faces": ({},),
}


@pytest.mark.parametrize("dataset", sorted(DOCUMENTED_VARIANTS))
def test_tfds_finds_each_builder_with_its_documented_variants(tmp_path, dataset):
    import tensorflow_datasets as tfds

    builder = tfds.builder(dataset, data_dir=str(tmp_path))  # registered by importing aujax.data.builders
    expected = [builders.make_config(dataset, **options).name for options in DOCUMENTED_VARIANTS[dataset]]
    assert type(builder) is builders.BUILDERS[dataset] and list(builder.builder_configs) == expected
    assert builder.builder_config.name == expected[0] and str(builder.info.file_format) == "FileFormat.ARRAY_RECORD"
    named = tfds.builder(f"{dataset}/{expected[-1]}", data_dir=str(tmp_path))
    assert named.builder_config is builder.builder_configs[expected[-1]]
    assert dataset in tfds.list_builders(with_community_datasets=False)


def test_real_dataset_builders_cite_their_paper_and_show_their_layout():
    for builder_class in (builders.CkPlus, builders.UnbcMcmaster, builders.Disfa, builders.Bp4d):
        assert builder_class.HOMEPAGE.startswith("http") and "@" in builder_class.CITATION
    assert "Lucey" in builders.CkPlus.CITATION and "UNBC-McMaster" in builders.UnbcMcmaster.CITATION
    assert "Mavadati" in builders.Disfa.CITATION and "BP4D-Spontaneous" in builders.Bp4d.CITATION
    assert "@inproceedings{" in builders.ActorStudy.CITATION
    for dataset in ("ck_plus", "unbc_mcmaster", "disfa", "bp4d", "manifest", "actor_study"):
        layout = "manifest" if dataset == "actor_study" else dataset
        assert layouts.EXPECTED_TREES[layout] in builders.BUILDERS[dataset].MANUAL_DOWNLOAD_INSTRUCTIONS


def test_a_build_through_tfds_lands_where_training_reads_it(tmp_path):
    import tensorflow_datasets as tfds

    root = ck_tree(tmp_path / "ck")
    config = builders.make_config("ck_plus", landmarks="dataset").name
    builder = tfds.builder(f"ck_plus/{config}", data_dir=str(tmp_path / "tfds"))  # as `tfds build` does
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
    through_tfds = preprocess.load_records("ck_plus", str(tmp_path / "tfds"), landmarks="dataset")
    build("ck_plus", root, tmp_path, landmarks="dataset")
    through_preprocess = preprocess.load_records("ck_plus", str(tmp_path / "data"), landmarks="dataset")
    assert len(through_tfds) == 2
    for field in ("image", "landmarks", "labels", "source"):
        np.testing.assert_array_equal(getattr(through_tfds, field), getattr(through_preprocess, field))

    wrong = tfds.builder("ck_plus", data_dir=str(tmp_path / "wrong"))
    with pytest.raises(layouts.LayoutError, match="lacks cohn-kanade-images, FACS"):
        wrong.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path)))


def test_a_build_option_keeps_the_registered_config_of_the_same_name(tmp_path):
    builder = builders.make_builder("actor_study", str(tmp_path), workers=1)
    assert builder.builder_config is builders.ActorStudy.builder_configs[builders.make_config("actor_study").name]
    assert builder.build_options == {"workers": 1, "encoding": "utf-8"}


# --- synthetic ----------------------------------------------------------------------------------------------------

def test_synthetic_faces_builder_holds_what_the_generator_makes(tmp_path):
    synthetic = pytest.importorskip("aujax.data.synthetic", reason="aujax.data.synthetic is not there yet")
    options = dict(num_subjects=2, images_per_subject=3, domain="posed", seed=5, subject_prefix="A")
    report, rows = build("synthetic_faces", None, tmp_path, **options)
    loaded = preprocess.load_records("synthetic_faces", str(tmp_path / "data"), **options)
    generated = synthetic.generate(**options)
    order = np.argsort(generated.source)
    assert report.num_examples == len(generated) == len(loaded) == 6 and set(rows) == set(generated.source)
    for field in ("image", "landmarks", "labels", "intensity", "subject", "source"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(generated, field)[order])
    assert math.isfinite(loaded.landmarks.sum()) and set(loaded.subject) == {"A000", "A001"}
