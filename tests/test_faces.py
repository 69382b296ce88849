"""Face preprocessing on real photos (tests/data, see its README) and on broken files made in tmp_path."""

import hashlib
import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from aujax import facs
from aujax.data import faces

pytest.importorskip("mediapipe", reason="mediapipe is not installed: face preprocessing needs it")

DATA = os.path.join(os.path.dirname(__file__), "data")
ASTRONAUT = os.path.join(DATA, "astronaut.png")
CAT = os.path.join(DATA, "chelsea.png")
COFFEE = os.path.join(DATA, "coffee.png")


@pytest.fixture(scope="module")
def cropper():
    with faces.FaceCropper() as cropper:
        yield cropper


@pytest.fixture(scope="module")
def astronaut(cropper):
    return cropper.crop_file(ASTRONAUT)


def _save(image: np.ndarray, path, **kwargs) -> str:
    Image.fromarray(image).save(path, **kwargs)
    return str(path)


def _reason(cropper, path) -> str:
    with pytest.raises(faces.FaceError) as caught:
        cropper.crop_file(str(path))
    assert str(path) in str(caught.value), "the error must name the file"
    return caught.value.reason


def test_vendored_model_matches_its_hash():
    with open(faces.MODEL_PATH, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == faces.MODEL_SHA256
    notice = os.path.join(os.path.dirname(faces.MODEL_PATH), "NOTICE")
    with open(notice) as f:
        assert "Apache License" in f.read()


def test_crop_of_a_real_face_has_the_contract_shapes(astronaut):
    assert astronaut.image.shape == (facs.IMAGE_SIZE, facs.IMAGE_SIZE, 3) and astronaut.image.dtype == np.uint8
    assert astronaut.landmarks.shape == (facs.NUM_LANDMARKS, 2) and astronaut.landmarks.dtype == np.float32
    assert astronaut.blendshapes.shape == (52,) and astronaut.blendshapes.dtype == np.float32
    assert astronaut.num_faces == 1
    assert np.all((astronaut.blendshapes >= 0) & (astronaut.blendshapes <= 1)) and astronaut.blendshapes.max() > 0.5
    # margin 0.25: the landmarks' larger extent is 1 / 1.5 of the crop, centred
    extent = astronaut.landmarks.max(axis=0) - astronaut.landmarks.min(axis=0)
    assert extent.max() == pytest.approx(facs.IMAGE_SIZE / 1.5, rel=0.03)
    centre = (astronaut.landmarks.max(axis=0) + astronaut.landmarks.min(axis=0)) / 2
    np.testing.assert_allclose(centre, facs.IMAGE_SIZE / 2, atol=2.0)


def test_mesh_to_ibug68_geometry(astronaut):
    lm = astronaut.landmarks
    x, y = lm[:, 0], lm[:, 1]
    # the contour runs along the jaw from left to right: clockwise about the nose tip, x increasing
    # (points 0 and 1 lie almost one above the other, as in iBUG, so they may tie within half a pixel)
    angles = np.unwrap(np.arctan2(y[0:17] - y[30], x[0:17] - x[30]))
    assert np.all(np.diff(angles) < 0), "jaw contour ordered along the jaw"
    assert np.all(np.diff(x[0:17]) > -0.5) and np.all(np.diff(x[1:16]) > 0), "x increases from 0 to 16"
    assert np.argmax(y[0:17]) == 8, "point 8 is the chin, the lowest jaw point"
    brows, eyes = np.r_[17:27], np.r_[36:48]
    assert y[brows].mean() < y[eyes].min(), "brows above the eyes"
    assert x[36] < x[39] < x[42] < x[45], "eye corners: outer left, inner left, inner right, outer right"
    assert x[48] < x[54] and x[60] < x[64], "mouth corners left to right"
    assert y[37:39].mean() < y[40:42].mean() and y[43:45].mean() < y[46:48].mean(), "upper lids above lower"
    assert y[51] < y[62] < y[66] < y[57], "outer upper lip, inner upper, inner lower, outer lower"
    assert y[eyes].mean() < y[30] < y[48:68].min(), "nose tip between eyes and mouth"
    assert y[27] < y[28] < y[29] < y[30] < y[33], "nose bridge runs down to the tip, then the subnasale"
    assert np.all(np.diff(x[31:36]) > 0) and np.all(np.diff(x[17:22]) > 0) and np.all(np.diff(x[22:27]) > 0)
    assert x[0] < x[36] and x[45] < x[16], "jaw ends outside the eyes"
    assert np.all((x >= x[0:17].min()) & (x <= x[0:17].max())), "all points between the jaw's sides"
    assert np.all((y >= y[brows].min()) & (y <= y[8])), "all points between the brows' top and the chin"
    assert np.all((lm >= 0) & (lm < facs.IMAGE_SIZE)), "all points inside the crop"


def test_landmark_fixture_of_test_regions_is_what_the_cropper_gives(astronaut):
    fixture = np.loadtxt(os.path.join(DATA, "astronaut_landmarks68.csv"), delimiter=",", skiprows=1)
    np.testing.assert_allclose(fixture, astronaut.landmarks, atol=0.5)


def test_box_maps_crop_landmarks_back_to_the_source(astronaut):
    x0, y0, side = astronaut.box
    source_landmarks = astronaut.landmarks * (side / facs.IMAGE_SIZE) + (x0, y0)
    image = faces.read_image(ASTRONAUT)
    crop, landmarks = faces.crop_around_landmarks(image, source_landmarks)
    np.testing.assert_allclose(landmarks, astronaut.landmarks, atol=0.05)
    np.testing.assert_array_equal(crop, astronaut.image)


def test_no_face_in_real_photos_of_a_cat_and_a_cup(cropper):
    assert _reason(cropper, CAT) == "no_face"
    assert _reason(cropper, COFFEE) == "no_face"


def test_broken_files_give_a_named_reason(cropper, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    png = open(ASTRONAUT, "rb").read()
    truncated_png = tmp_path / "truncated.png"
    truncated_png.write_bytes(png[: len(png) // 2])
    jpeg = io.BytesIO()
    Image.open(ASTRONAUT).save(jpeg, "JPEG")
    truncated_jpeg = tmp_path / "truncated.jpg"
    truncated_jpeg.write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    tiny = _save(np.full((20, 20, 3), 128, np.uint8), tmp_path / "tiny.png")
    assert _reason(cropper, empty) == "empty_file"
    assert _reason(cropper, text) == "unreadable"
    assert _reason(cropper, truncated_png) == "unreadable"
    assert _reason(cropper, truncated_jpeg) == "unreadable"
    assert _reason(cropper, tmp_path / "missing.png") == "unreadable"
    assert _reason(cropper, tiny) == "too_small"


def test_huge_image_is_rejected_before_decoding(cropper, tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("1", (10000, 10000)).save(huge)  # 12 kB on disk, 300 MB as RGB
    assert _reason(cropper, huge) == "too_large"


def test_grayscale_rgba_and_16bit_become_rgb8(cropper, tmp_path):
    import cv2

    rgb = faces.read_image(ASTRONAUT)
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    gray16 = gray.astype(np.uint16) * 257
    paths = {
            "gray": _save(gray, tmp_path / "gray.png"),
            "rgba": _save(rgba, tmp_path / "rgba.png"),
            "gray16": _save(gray16, tmp_path / "gray16.png"),
            "rgb16": str(tmp_path / "rgb16.png"),
    }
    cv2.imwrite(paths["rgb16"], rgb[..., ::-1].astype(np.uint16) * 257)
    for kind, path in paths.items():
        image = faces.read_image(path)
        assert image.dtype == np.uint8 and image.shape == rgb.shape, kind
        expected = np.repeat(gray[..., None], 3, axis=2) if kind.startswith("gray") else rgb
        np.testing.assert_array_equal(image, expected, err_msg=kind)
        assert cropper.crop_file(path).num_faces == 1, kind


def test_transparent_pixels_are_composited_over_white(tmp_path):
    rgba = np.zeros((40, 40, 4), np.uint8)  # black, fully transparent
    assert np.all(faces.read_image(_save(rgba, tmp_path / "clear.png")) == 255)


def _two_faces(tmp_path, big_on_left: bool) -> str:
    """The astronaut's face twice side by side, one of them shrunk to 80 %."""
    face = Image.open(ASTRONAUT).convert("RGB").crop((130, 20, 330, 260))
    small = face.resize((160, 192))
    canvas = Image.new("RGB", (420, 260), (200, 200, 200))
    canvas.paste(face if big_on_left else small, (0, 10))
    canvas.paste(small if big_on_left else face, (210, 10))
    return _save(np.asarray(canvas), tmp_path / f"two_faces_{big_on_left}.png")


@pytest.mark.parametrize("big_on_left", [True, False])
def test_several_faces_largest_by_default(cropper, tmp_path, big_on_left):
    path = _two_faces(tmp_path, big_on_left)
    largest = cropper.crop_file(path)
    assert largest.num_faces == 2
    assert (largest.box[0] + largest.box[2] / 2 < 210) == big_on_left, "the larger face is chosen"
    with faces.FaceCropper(face_choice="first") as first_cropper:
        first = first_cropper.crop_file(path)
    assert first.num_faces == 2
    is_small_face = first.box[2] == pytest.approx(0.8 * largest.box[2], rel=0.1)
    assert first.box == largest.box or is_small_face, "'first' takes one of the two faces"


def test_face_choice_between_meshes():
    small = np.random.default_rng(0).uniform(0, 50, (478, 2))
    big = small * 2 + 100
    assert faces.choose_face([small, big], "largest") == 1
    assert faces.choose_face([small, big], "first") == 0
    assert faces.choose_face([big, small], "largest") == 0


def test_crop_leaving_the_image_repeats_the_border():
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :32] = 200  # left half bright
    landmarks = np.stack(np.meshgrid(np.linspace(0, 40, 17), np.linspace(0, 40, 4)), -1).reshape(-1, 2)[:68]
    crop, crop_landmarks = faces.crop_around_landmarks(image, landmarks, margin=0.25)
    assert crop.shape == (112, 112, 3)
    assert np.all(crop[:, :20] == 200), "off the left edge: the bright border column repeated, not zeros"
    np.testing.assert_allclose(crop_landmarks[0], ((0 - (-10)) * 112 / 60, (0 - (-10)) * 112 / 60), atol=1e-4)


def test_bad_landmarks_are_rejected():
    image = np.zeros((64, 64, 3), np.uint8)
    nan = np.full((68, 2), np.nan)
    point = np.full((68, 2), 30.0)
    far_away = np.random.default_rng(0).uniform(1000, 1100, (68, 2))
    for landmarks in (nan, point, far_away, np.zeros((5, 2))):
        with pytest.raises(faces.FaceError, match="frame_7.png") as caught:
            faces.crop_around_landmarks(image, landmarks, source="frame_7.png")
        assert caught.value.reason == "bad_landmarks"


def test_damaged_vendored_model_is_refused_and_other_models_warned(tmp_path, monkeypatch, caplog):
    damaged = tmp_path / "face_landmarker.task"
    model = open(faces.MODEL_PATH, "rb").read()
    damaged.write_bytes(model[:-1] + bytes([model[-1] ^ 1]))
    monkeypatch.setattr(faces, "MODEL_PATH", str(damaged))
    with pytest.raises(ValueError, match="face_landmarker.task.*SHA-256"):
        faces.load_model_bundle()
    with pytest.raises(ValueError, match="face_choice"):
        faces.FaceCropper(face_choice="smallest")
    with caplog.at_level("WARNING"):
        assert faces.load_model_bundle(str(damaged)) == damaged.read_bytes()
    assert f"{damaged}: not the vendored face_landmarker.task" in caplog.text


def test_face_error_survives_the_trip_between_processes():
    import pickle  # multiprocessing sends results this way

    error = pickle.loads(pickle.dumps(faces.FaceError("a.png", "no_face", "no face found")))
    assert (error.source, error.reason, str(error)) == ("a.png", "no_face", "a.png: no face found [no_face]")


def test_crop_files_in_this_process(astronaut):
    [(path, result)] = faces.crop_files([ASTRONAUT], workers=1)
    assert path == ASTRONAUT and result.box == astronaut.box


@pytest.mark.slow  # two cropping processes
def test_crop_files_in_order_over_two_processes(tmp_path, astronaut):
    shutil.copy(ASTRONAUT, tmp_path / "face.png")
    (tmp_path / "empty.png").write_bytes(b"")
    paths = [str(tmp_path / "face.png"), CAT, str(tmp_path / "empty.png")] * 3
    results = list(faces.crop_files(paths, workers=2, chunk_size=2))
    assert [path for path, _ in results] == paths
    for path, result in results:
        if path.endswith("face.png"):
            np.testing.assert_array_equal(result.image, astronaut.image)
            np.testing.assert_allclose(result.landmarks, astronaut.landmarks, atol=1e-3)
        else:
            assert isinstance(result, faces.FaceError)
            assert result.reason == ("no_face" if path == CAT else "empty_file")
