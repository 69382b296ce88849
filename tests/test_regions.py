"""AU regions on real landmarks: the astronaut photo's 68 points in its 112x112 crop (tests/data)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aujax import facs, regions

LANDMARKS_CSV = os.path.join(os.path.dirname(__file__), "data", "astronaut_landmarks68.csv")
SIZE = facs.IMAGE_SIZE
ALL = facs.KNOWN_AUS


@pytest.fixture(scope="module")
def landmarks() -> np.ndarray:
    """(1, 68, 2) float32: FaceCropper's landmarks of tests/data/astronaut.png (test_faces checks they
    still come out so)."""
    return np.loadtxt(LANDMARKS_CSV, delimiter=",", skiprows=1, dtype=np.float32)[None]


def _mask(masks, au: int) -> np.ndarray:
    return np.asarray(masks)[0, facs.au_column(au, ALL)]


def _covers(mask: np.ndarray, points: np.ndarray) -> bool:
    columns, rows = np.floor(points).astype(int).T
    return bool(np.all(mask[rows, columns]))


def _centroid(mask: np.ndarray) -> np.ndarray:
    rows, columns = np.nonzero(mask)
    return np.array([columns.mean() + 0.5, rows.mean() + 0.5])


@pytest.mark.parametrize("shape", regions.SHAPES)
def test_masks_lie_where_their_aus_show(landmarks, shape):
    lm = landmarks[0]
    masks = regions.au_region_masks(landmarks, aus=ALL, shape=shape)
    eyes_y = lm[36:48, 1]
    au4 = _mask(masks, 4)
    assert _centroid(au4)[1] < eyes_y.mean() and _covers(au4, lm[[19, 21, 22, 24]]), "AU4 on the brows"
    au6 = _mask(masks, 6)
    rows, columns = np.nonzero(au6)
    assert rows.min() + 0.5 > eyes_y.max() and _centroid(au6)[1] < lm[51, 1], "AU6 between eyes and mouth"
    assert not au6[:, int(lm[51, 0])].any(), "AU6 leaves the face's midline"
    assert (columns < lm[31, 0]).any() and (columns > lm[35, 0]).any(), "AU6 on both cheeks, beside the nose"
    au7 = _mask(masks, 7)
    assert _covers(au7, lm[[37, 38, 40, 41, 43, 44, 46, 47]]), "AU7 on the eyelids"
    au9 = _mask(masks, 9)
    assert _covers(au9, lm[[29, 30, 31, 35]]) and not au9[:, : int(lm[36, 0])].any(), "AU9 on the nose"
    assert _centroid(au9)[1] < lm[33, 1], "AU9 above the nostrils"
    au10 = _mask(masks, 10)
    assert _covers(au10, lm[[50, 51, 52, 33]]) and not _covers(au10, lm[[57]]), "AU10 on the upper lip"
    for au in (25, 26, 27):
        assert _covers(_mask(masks, au), lm[[51, 57, 62, 66]]), f"AU{au} on the lips"
    assert _centroid(_mask(masks, 26))[1] > _centroid(_mask(masks, 25))[1], "AU26 reaches below the lips"
    assert _covers(_mask(masks, 27), lm[[48, 54, 8]]), "AU27 covers the mouth and the jaw down to the chin"
    brows_y = lm[17:27, 1]
    for au in (1, 2):
        assert _centroid(_mask(masks, au))[1] < brows_y.mean(), f"AU{au} above the brows"
    assert _covers(_mask(masks, 1), lm[[21, 22]]) and not _mask(masks, 1)[:, : int(lm[18, 0])].any(), "AU1 inner"
    assert _covers(_mask(masks, 2), lm[[17, 18, 25, 26]]) and not _mask(masks, 2)[:, int(lm[27, 0])].any(), \
        "AU2 on the outer brows, not between them"
    for au in (5, 43):
        assert _covers(_mask(masks, au), lm[[37, 38, 43, 44]]), f"AU{au} on the upper lids"
    assert _covers(_mask(masks, 43), lm[36:48]), "AU43 on the whole eyes"
    for au in (12, 14, 15, 20):
        corners = _mask(masks, au)
        assert _covers(corners, lm[[48, 54]]) and not corners[:, int(lm[51, 0])].any(), f"AU{au} on the lip corners"
    for au in (23, 24):
        assert _covers(_mask(masks, au), lm[[50, 51, 52, 56, 57, 58]]), f"AU{au} on the lips"
    au17 = _mask(masks, 17)
    assert _centroid(au17)[1] > lm[57, 1] and _covers(au17, lm[[57]]) and not _covers(au17, lm[[51]]), "AU17 chin"
    for au in ALL:
        mask = _mask(masks, au)
        face = lm[:, 0].min() <= _centroid(mask)[0] <= lm[:, 0].max() and lm[19, 1] - 30 < _centroid(mask)[1] < lm[8, 1]
        assert face, f"AU{au}'s region lies inside the face"


@pytest.mark.parametrize("shape", regions.SHAPES)
def test_masks_scale_with_the_face(landmarks, shape):
    half = regions.au_region_masks(landmarks * 0.5, aus=ALL, shape=shape)
    full = regions.au_region_masks(landmarks, aus=ALL, shape=shape)
    ratio = np.asarray(full).sum(axis=(2, 3)) / np.asarray(half).sum(axis=(2, 3))
    np.testing.assert_allclose(ratio, 4.0, rtol=0.2)


def test_boxes_scale_with_the_ruler(landmarks):
    boxes = np.asarray(regions.au_region_boxes(landmarks, aus=ALL))
    doubled = np.asarray(regions.au_region_boxes(landmarks * 2, aus=ALL, size=2 * SIZE))
    np.testing.assert_allclose(doubled, 2 * boxes, rtol=1e-5, atol=1e-4)
    ruler = float(regions.face_ruler(landmarks)[0])
    np.testing.assert_allclose(ruler, np.linalg.norm(landmarks[0, 42] - landmarks[0, 39]), rtol=1e-6)
    au6 = boxes[0, facs.au_column(6, ALL), 0]
    np.testing.assert_allclose(au6[2] - au6[0], 2 * 0.6 * ruler, rtol=1e-5)  # width from the table


@pytest.mark.parametrize("aus", [facs.PAIN_AUS, ALL, (12, 4)])
def test_shapes_dtypes_and_spare_slots(landmarks, aus):
    batch = np.concatenate([landmarks, landmarks + 3.0])
    boxes = regions.au_region_boxes(batch, aus=aus)
    assert boxes.shape == (2, len(aus), regions.MAX_BOXES, 4) and boxes.dtype == jnp.float32
    for a, au in enumerate(aus):
        specs = regions.AU_REGIONS[au].boxes
        assert np.all(np.asarray(boxes[:, a, len(specs):]) == 0), "spare slots are empty"
        assert np.all(np.asarray(boxes[:, a, : len(specs), 2:] > boxes[:, a, : len(specs), :2]))
    for shape in regions.SHAPES:
        masks = regions.au_region_masks(batch, aus=aus, shape=shape)
        assert masks.shape == (2, len(aus), SIZE, SIZE) and masks.dtype == jnp.bool_
        every = np.asarray(regions.au_region_masks(batch, aus=ALL, shape=shape))
        np.testing.assert_array_equal(np.asarray(masks), every[:, [ALL.index(au) for au in aus]])
    polygons = regions.au_region_polygons(batch, aus=aus)
    assert polygons.shape == (2, len(aus), regions.MAX_BOXES, 4, 2)
    with pytest.raises(ValueError, match="shape"):
        regions.au_region_masks(batch, aus=aus, shape="ellipse")
    with pytest.raises(ValueError, match=r"\(n, 68, 2\)"):
        regions.au_region_masks(batch[0], aus=aus)


def test_an_au_without_a_region_is_refused_naming_it(landmarks):
    with pytest.raises(ValueError, match="no AU region for AU11: regions exist for AUs 1, 2, 4"):
        regions.au_region_masks(landmarks, aus=(4, 11))


def test_boxes_are_clipped_to_the_image(landmarks):
    shifted = landmarks - landmarks[0, 30] + (5.0, 100.0)  # nose tip near the bottom-left corner
    boxes = np.asarray(regions.au_region_boxes(shifted, aus=ALL))
    assert boxes.min() >= 0 and boxes.max() <= SIZE
    assert (boxes[..., 0] == 0).any() and (boxes[..., 3] == SIZE).any(), "some boxes were cut at the edges"
    far = regions.au_region_masks(landmarks + 500.0, aus=ALL)
    assert not np.asarray(far).any(), "a face off the image has empty masks"


def test_polygons_turn_with_the_head(landmarks):
    centre = landmarks[0].mean(axis=0)
    angle = np.deg2rad(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], np.float32)
    turned = (landmarks - centre) @ rotation.T + centre
    level = np.asarray(regions.au_region_polygons(landmarks, aus=ALL))
    expected = (level - centre) @ rotation.T + centre
    used = np.array([[k < len(regions.AU_REGIONS[au].boxes) for k in range(regions.MAX_BOXES)] for au in ALL])
    np.testing.assert_allclose(np.asarray(regions.au_region_polygons(turned, aus=ALL))[0][used], expected[0][used],
                               atol=1e-3)
    boxes = regions.au_region_masks(landmarks, aus=ALL, shape="box")
    polygons = regions.au_region_masks(landmarks, aus=ALL, shape="polygon")
    overlap = np.asarray(boxes & polygons).sum() / np.asarray(boxes | polygons).sum()
    assert overlap > 0.9, "on a near-level face, polygons are almost the boxes"


@pytest.mark.slow  # > 5 s on 2 cores (polygon)
@pytest.mark.parametrize("shape", regions.SHAPES)
def test_jit_and_vmap_match_eager(landmarks, shape):
    batch = np.concatenate([landmarks, landmarks * 0.8 + 5.0, landmarks + (10.0, -4.0)])
    with jax.disable_jit():
        eager = np.asarray(regions.au_region_masks(batch, aus=ALL, shape=shape))
    jitted = regions.au_region_masks(batch, aus=ALL, shape=shape)
    mapped = jax.vmap(lambda one: regions.au_region_masks(one[None], aus=ALL, shape=shape)[0])(batch)
    np.testing.assert_array_equal(np.asarray(jitted), eager)
    np.testing.assert_array_equal(np.asarray(mapped), eager)
    assert eager.any(axis=(2, 3)).all(), "every AU has a region on every face"


def test_region_table_lists_every_box_with_its_source_and_is_the_one_in_the_docs():
    table = regions.region_table_markdown()
    assert len(table.splitlines()) == 2 + sum(len(region.boxes) for region in regions.AU_REGIONS.values())
    for au, region in regions.AU_REGIONS.items():
        assert f"| AU{au} " in table and f"| {region.source}: " in table and region.source in facs.REGION_SOURCES
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "verification.md"), encoding="utf-8") as f:
        assert table in f.read(), "docs/verification.md holds regions.region_table_markdown() as it is"
