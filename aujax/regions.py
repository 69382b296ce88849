"""AU regions from 68 landmarks: where on the face each of the 8 AUs shows (the paper's Figure 1 boxes).

Each AU's region is a union of up to `MAX_BOXES` rectangles. A rectangle is centred on the mean of a few
iBUG-68 landmarks, moved by an offset, and sized, both in *rulers*: the distance between the inner eye
corners (points 39 and 42), so regions scale with the face. The centres of AU4, 6, 7 and 9 are those of
EAC-Net (Li et al., 2017) and JAA-Net (Shao et al., 2018); the other centres, the AU4 glabella box and all
sizes are ours. `AU_REGIONS` is the single source: μ, the
Figure 1 drawing and the README table (`region_table_markdown`) all read it.

Coordinates are continuous pixels, x right and y down: pixel (row i, column j) covers x in [j, j+1),
y in [i, i+1), and belongs to a region when its centre (j + 0.5, i + 0.5) does.

shape="box": axis-aligned rectangles in the image (the paper's boxes).
shape="polygon": the same rectangles in the face's own frame, turned with the head's roll (the line
through the two eye centres), as 4-corner polygons; equal to the boxes when the eyes are level.

Everything here is jax.numpy, vmappable, and the public functions are jitted (`size` and `shape` static).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from aujax import facs

RULER_LANDMARKS = (39, 42)  # inner eye corners
RIGHT_EYE = tuple(range(36, 42))  # image-left eye
LEFT_EYE = tuple(range(42, 48))  # image-right eye
SHAPES = ("box", "polygon")


@dataclasses.dataclass(frozen=True)
class RegionBox:
    """A rectangle centred on the mean of `landmarks` moved by `offset` (dx, dy), with half extents
    `half_size` (half-width, half-height); offset and half_size in rulers, +y downwards."""
    landmarks: tuple[int, ...]
    offset: tuple[float, float]
    half_size: tuple[float, float]


def _pair(left: int, right: int, offset: tuple[float, float], half_size: tuple[float, float]):
    return RegionBox((left,), offset, half_size), RegionBox((right,), offset, half_size)


# One tuple of boxes per AU, in facs.AU_IDS order.
AU_REGIONS: tuple[tuple[RegionBox, ...], ...] = (
        # AU4 brow lowerer: brow centres moved down a third of a ruler, and the glabella between the brows.
        (*_pair(19, 24, (0.0, 1 / 3), (0.6, 0.45)), RegionBox((21, 22), (0.0, 1 / 3), (0.5, 0.45))),
        # AU6 cheek raiser: a ruler below the lower lids, on the cheeks.
        _pair(41, 46, (0.0, 1.0), (0.6, 0.5)),
        # AU7 lid tightener: on the upper lids, reaching over both lids.
        _pair(38, 43, (0.0, 0.1), (0.6, 0.4)),
        # AU9 nose wrinkler: half a ruler above the nostril sides, on the sides of the nose.
        _pair(32, 34, (0.0, -0.5), (0.4, 0.5)),
        # AU10 upper lip raiser: the upper lip and the skin above it, either side of the philtrum.
        _pair(50, 52, (0.0, -0.1), (0.5, 0.4)),
        # AU25 lips part: the lips, centred between the inner-lip midpoints.
        (RegionBox((62, 66), (0.0, 0.0), (1.1, 0.6)),),
        # AU26 jaw drop: the lips and below them, centred half a ruler under the mouth's centre.
        (RegionBox((62, 66), (0.0, 0.5), (1.1, 0.9)),),
        # AU27 mouth stretch: the mouth and the jaw under it, centred between upper lip and chin.
        (RegionBox((51, 8), (0.0, 0.0), (1.4, 1.2)),),
)
MAX_BOXES = max(len(boxes) for boxes in AU_REGIONS)


def _table_arrays():
    """Static arrays from AU_REGIONS: landmark weights (8, K, 68) that average each box's landmarks,
    offsets (8, K, 2), half sizes (8, K, 2), and which of the K slots are used (8, K)."""
    weights = np.zeros((facs.NUM_AUS, MAX_BOXES, facs.NUM_LANDMARKS), np.float32)
    offsets = np.zeros((facs.NUM_AUS, MAX_BOXES, 2), np.float32)
    half_sizes = np.zeros((facs.NUM_AUS, MAX_BOXES, 2), np.float32)
    used = np.zeros((facs.NUM_AUS, MAX_BOXES), bool)
    for a, boxes in enumerate(AU_REGIONS):
        for k, box in enumerate(boxes):
            weights[a, k, list(box.landmarks)] = 1.0 / len(box.landmarks)
            offsets[a, k], half_sizes[a, k], used[a, k] = box.offset, box.half_size, True
    return weights, offsets, half_sizes, used


_WEIGHTS, _OFFSETS, _HALF_SIZES, _USED = _table_arrays()


def _check_landmarks(landmarks) -> jnp.ndarray:
    landmarks = jnp.asarray(landmarks, jnp.float32)
    if landmarks.ndim != 3 or landmarks.shape[1:] != (facs.NUM_LANDMARKS, 2):
        raise ValueError(f"landmarks must have shape (n, {facs.NUM_LANDMARKS}, 2), got {landmarks.shape}")
    return landmarks


def face_ruler(landmarks: jnp.ndarray) -> jnp.ndarray:
    """Inner-eye-corner distance, (n,) pixels, of landmarks (n, 68, 2)."""
    first, second = RULER_LANDMARKS
    return jnp.linalg.norm(landmarks[:, second] - landmarks[:, first], axis=-1)


def _centres(landmarks: jnp.ndarray) -> jnp.ndarray:
    """(n, 8, K, 2) mean of each box's landmarks."""
    return jnp.einsum("akl,nlc->nakc", _WEIGHTS, landmarks)


@functools.partial(jax.jit, static_argnames="size")
def au_region_boxes(landmarks, size: int = facs.IMAGE_SIZE) -> jnp.ndarray:
    """Axis-aligned AU boxes.

    landmarks: (n, 68, 2) (x, y) crop pixels, iBUG-68 order.
    Returns float32 (n, 8, K, 4) (x0, y0, x1, y1) pixels, clipped to [0, size]; K = MAX_BOXES, AUs with
    fewer boxes have empty ones (all zeros) in the spare slots.
    """
    landmarks = _check_landmarks(landmarks)
    ruler = face_ruler(landmarks)[:, None, None, None]
    centres = _centres(landmarks) + _OFFSETS * ruler
    half_sizes = _HALF_SIZES * ruler
    boxes = jnp.clip(jnp.concatenate([centres - half_sizes, centres + half_sizes], axis=-1), 0.0, size)
    return jnp.where(_USED[None, :, :, None], boxes, 0.0)


@jax.jit
def au_region_polygons(landmarks) -> jnp.ndarray:
    """The AU rectangles in the face's frame (turned with the eye line), as corners.

    landmarks: (n, 68, 2) (x, y) crop pixels. Returns float32 (n, 8, K, 4, 2): corners in order
    top-left, top-right, bottom-right, bottom-left of the face frame; spare slots all zeros. Not clipped.
    """
    landmarks = _check_landmarks(landmarks)
    ruler = face_ruler(landmarks)[:, None, None, None]
    eye_line = landmarks[:, list(LEFT_EYE)].mean(axis=1) - landmarks[:, list(RIGHT_EYE)].mean(axis=1)
    across = eye_line / jnp.maximum(jnp.linalg.norm(eye_line, axis=-1, keepdims=True), 1e-6)  # (n, 2)
    down = jnp.stack([-across[:, 1], across[:, 0]], axis=-1)
    frame = jnp.stack([across, down], axis=-2)  # (n, 2, 2): rows are the face's x and y axes in the image
    centres = _centres(landmarks) + jnp.einsum("akc,ncd->nakd", _OFFSETS, frame) * ruler
    signs = jnp.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], jnp.float32)
    corners_in_face = signs * (_HALF_SIZES * ruler)[:, :, :, None]  # (n, 8, K, 4, 2)
    corners = centres[:, :, :, None] + jnp.einsum("nakvc,ncd->nakvd", corners_in_face, frame)
    return jnp.where(_USED[None, :, :, None, None], corners, 0.0)


def _pixel_centres(size: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    coords = jnp.arange(size, dtype=jnp.float32) + 0.5
    return coords[None, :], coords[:, None]  # x (1, size), y (size, 1)


def _box_masks(boxes: jnp.ndarray, size: int) -> jnp.ndarray:
    """(..., 4) boxes -> (..., size, size) bool."""
    x, y = _pixel_centres(size)
    x0, y0, x1, y1 = (boxes[..., i, None, None] for i in range(4))
    return (x >= x0) & (x < x1) & (y >= y0) & (y < y1)


def _polygon_masks(corners: jnp.ndarray, size: int) -> jnp.ndarray:
    """(..., 4, 2) convex quadrilaterals -> (..., size, size) bool: pixel centres on the inner side of all
    four edges (either winding)."""
    x, y = _pixel_centres(size)
    following = jnp.roll(corners, -1, axis=-2)
    start = corners[..., :, None, None, :]
    edge = following[..., :, None, None, :] - start
    cross = edge[..., 0] * (y - start[..., 1]) - edge[..., 1] * (x - start[..., 0])  # (..., 4, size, size)
    area = jnp.abs(jnp.sum(corners[..., 0] * following[..., 1] - following[..., 0] * corners[..., 1], axis=-1))
    inside = jnp.all(cross >= 0, axis=-3) | jnp.all(cross <= 0, axis=-3)
    return inside & (area > 0)[..., None, None]


@functools.partial(jax.jit, static_argnames=("size", "shape"))
def au_region_masks(landmarks, size: int = facs.IMAGE_SIZE, shape: str = "box") -> jnp.ndarray:
    """AU regions as pixel masks.

    landmarks: (n, 68, 2) (x, y) pixels in a size x size crop, iBUG-68 order.
    shape: "box" (axis-aligned, `au_region_boxes`) or "polygon" (turned with the face, `au_region_polygons`).
    Returns bool (n, 8, size, size) in facs.AU_IDS order.
    """
    if shape == "box":
        masks = _box_masks(au_region_boxes(landmarks, size), size)
    elif shape == "polygon":
        masks = _polygon_masks(au_region_polygons(landmarks), size)
    else:
        raise ValueError(f"shape={shape!r}: expected one of {SHAPES}")
    return jnp.any(masks & _USED[None, :, :, None, None], axis=2)


def region_table_markdown() -> str:
    """AU_REGIONS as a markdown table (for the README)."""
    rows = ["| AU | box centre: mean of landmarks | offset (dx, dy), rulers | half size (w, h), rulers |",
            "| --- | --- | --- | --- |"]
    for au, boxes in zip(facs.AU_IDS, AU_REGIONS):
        for box in boxes:
            rows.append(f"| AU{au} {facs.AU_NAMES[au]} | {', '.join(map(str, box.landmarks))} "
                        f"| ({box.offset[0]:+.2f}, {box.offset[1]:+.2f}) "
                        f"| ({box.half_size[0]:.2f}, {box.half_size[1]:.2f}) |")
    return "\n".join(rows)
