"""The blendshape -> AU baseline on hand-made blendshape vectors and on a real photo."""

import os

import numpy as np
import pytest

from aujax import facs
from aujax.data import blendshapes as bs

ASTRONAUT = os.path.join(os.path.dirname(__file__), "data", "astronaut.png")

# (blendshapes set to the value, AU expected to fire, its threshold): the module's rules, written out.
SINGLE_CUES = [
        (("browDownLeft",), 4, bs.BROW_DOWN_THRESHOLD),
        (("browDownRight",), 4, bs.BROW_DOWN_THRESHOLD),
        (("cheekSquintLeft",), 6, bs.CHEEK_SQUINT_THRESHOLD),
        (("cheekSquintRight",), 6, bs.CHEEK_SQUINT_THRESHOLD),
        (("eyeSquintLeft",), 7, bs.EYE_SQUINT_THRESHOLD),
        (("eyeSquintRight",), 7, bs.EYE_SQUINT_THRESHOLD),
        (("noseSneerLeft",), 9, bs.NOSE_SNEER_THRESHOLD),
        (("noseSneerRight",), 9, bs.NOSE_SNEER_THRESHOLD),
        (("mouthUpperUpLeft",), 10, bs.UPPER_LIP_UP_THRESHOLD),
        (("mouthUpperUpRight",), 10, bs.UPPER_LIP_UP_THRESHOLD),
        (("mouthLowerDownLeft",), 25, bs.LIPS_APART_THRESHOLD),
        (("mouthLowerDownRight",), 25, bs.LIPS_APART_THRESHOLD),
        (("jawOpen",), 25, bs.LIPS_APART_THRESHOLD),
        (("jawOpen",), 26, bs.JAW_DROP_THRESHOLD),
        (("jawOpen",), 27, bs.MOUTH_STRETCH_THRESHOLD),
]


# cues that also part the lips by design (AU25) or drive the other jaw AUs
ALSO_FIRES = {"jawOpen": {25, 26, 27}, "mouthUpperUpLeft": {25}, "mouthUpperUpRight": {25}}


def _vector(values: dict) -> np.ndarray:
    vector = np.zeros((1, bs.NUM_BLENDSHAPES), np.float32)
    for name, value in values.items():
        vector[0, bs.BLENDSHAPE_NAMES.index(name)] = value
    return vector


def _fires(values: dict, au: int) -> bool:
    return bool(bs.blendshape_au_labels(_vector(values))[0, facs.au_column(au, facs.PAIN_AUS)])


@pytest.mark.parametrize("names, au, threshold", SINGLE_CUES)
def test_each_cue_fires_its_au_at_the_threshold_not_below(names, au, threshold):
    assert _fires({name: threshold for name in names}, au)
    assert not _fires({name: np.nextafter(np.float32(threshold), np.float32(0)) for name in names}, au)


def test_a_cue_fires_only_its_own_aus():
    for names, au, threshold in SINGLE_CUES:
        labels = bs.blendshape_au_labels(_vector({name: threshold for name in names}))[0]
        fired = {a for a, on in zip(facs.PAIN_AUS, labels) if on}
        assert au in fired and fired <= {au} | ALSO_FIRES.get(names[0], set()), (names, fired)


def test_jaw_drop_and_mouth_stretch_exclude_each_other():
    def jaw(value):
        labels = bs.blendshape_au_labels(_vector({"jawOpen": value}))[0]
        return labels[facs.au_column(26, facs.PAIN_AUS)], labels[facs.au_column(27, facs.PAIN_AUS)]

    assert jaw(bs.JAW_DROP_THRESHOLD) == (1, 0)
    assert jaw(bs.MOUTH_STRETCH_THRESHOLD) == (0, 1)
    assert jaw(1.0) == (0, 1)


def test_closed_lips_with_an_open_jaw_do_not_part():
    closed = {"jawOpen": 0.5, "mouthClose": 0.5}
    assert not _fires(closed, 25) and _fires(closed, 26)
    assert _fires({"jawOpen": 0.5, "mouthClose": 0.5 - 1.25 * bs.LIPS_APART_THRESHOLD}, 25)


def test_neutral_face_fires_nothing_and_shapes_are_checked():
    neutral = _vector({"_neutral": 1.0})
    assert bs.blendshape_au_labels(neutral).tolist() == [[0] * len(facs.PAIN_AUS)]
    batch = np.random.default_rng(0).uniform(0, 1, (5, bs.NUM_BLENDSHAPES)).astype(np.float32)
    labels, scores = bs.blendshape_au_labels(batch), bs.blendshape_au_scores(batch)
    assert labels.shape == scores.shape == (5, len(facs.PAIN_AUS))
    assert labels.dtype == np.uint8 and scores.dtype == np.float32
    assert np.all((scores >= 0) & (scores <= 1))
    with pytest.raises(ValueError, match=r"\(n, 52\)"):
        bs.blendshape_au_labels(batch[:, :51])


@pytest.mark.slow  # MediaPipe on a real photo
def test_real_smiling_face():
    """The astronaut smiles broadly with parted lips and no frown: MediaPipe scores her lips apart
    (AU25) and no brow lowering (AU4), nose wrinkling (AU9) or jaw drop (AU26/27)."""
    pytest.importorskip("mediapipe", reason="mediapipe is not installed: the real-photo check needs it")
    from aujax.data import faces

    with faces.FaceCropper() as cropper:
        crop = cropper.crop_file(ASTRONAUT)
    labels = dict(zip(facs.PAIN_AUS, bs.blendshape_au_labels(crop.blendshapes[None])[0]))
    scores = dict(zip(facs.PAIN_AUS, bs.blendshape_au_scores(crop.blendshapes[None])[0]))
    print("astronaut blendshape AUs:", {au: int(v) for au, v in labels.items()},
          "scores:", {au: round(float(s), 3) for au, s in scores.items()})
    assert labels[25] == 1
    assert labels[4] == labels[9] == labels[26] == labels[27] == 0
    smile = crop.blendshapes[[bs.BLENDSHAPE_NAMES.index(n) for n in ("mouthSmileLeft", "mouthSmileRight")]]
    assert smile.min() > 0.5, "MediaPipe sees the smile"
