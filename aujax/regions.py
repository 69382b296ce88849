"""AU regions from 68 landmarks: where on the face each AU shows (the paper's Figure 1 boxes), for every AU of
`facs.KNOWN_AUS`; the functions take the AU set (`aus`, a tuple) and return its regions in its order.

Each AU's region is a union of up to `MAX_BOXES` rectangles. A rectangle is centred on the mean of a few
iBUG-68 landmarks, moved by an offset, and sized, both in *rulers*: the distance between the inner eye
corners (points 39 and 42), so regions scale with the face. EAC-Net (Li et al., 2017) introduced AU centres as
landmarks moved by fractions of this ruler. The centres of AU1, 2, 4, 6, 7, 9, 12, 14, 15, 17, 23 and 24 are those
of JAA-Net (Shao et al., 2018; `AURegion.source`); JAA-Net also centres AU10 on the inner upper lip and AU25 / AU26 on
the lips' and half a ruler below the lower lip's middle, but these three keep the boxes aujax had before other AUs,
so that the pain set's μ stays as it was. The other centres, the AU4 glabella box, the AU7 offset and all sizes are
ours. `AU_REGIONS` is the single source: μ, the Figure 1 drawing and the region
table of docs/verification.md (`region_table_markdown`) all read it.

Coordinates are continuous pixels, x right and y down: pixel (row i, column j) covers x in [j, j+1),
y in [i, i+1), and belongs to a region when its centre (j + 0.5, i + 0.5) does.

shape="box": axis-aligned rectangles in the image (the paper's boxes).
shape="polygon": the same rectangles in the face's own frame, turned with the head's roll (the line
through the two eye centres), as 4-corner polygons; equal to the boxes when the eyes are level.

Everything here is jax.numpy, vmappable, and the public functions are jitted (`aus`, `size` and `shape` static).
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


@dataclasses.dataclass(frozen=True)
class AURegion:
    """One AU's region: its boxes, where their centres come from (a key of `facs.REGION_SOURCES`) and why."""
    boxes: tuple[RegionBox, ...]
    source: str
    note: str


_EYE_R, _EYE_L = (36, 37, 38, 39, 40, 41), (42, 43, 44, 45, 46, 47)
AU_REGIONS: dict[int, AURegion] = {
        1: AURegion(_pair(21, 22, (0.0, -0.5), (0.5, 0.55)), "JAA-Net",
                    "inner brow ends, half a ruler up: the raised inner brows and the forehead above them"),
        2: AURegion(_pair(18, 25, (0.0, -1 / 3), (0.55, 0.5)), "JAA-Net",
                    "outer brows, a third of a ruler up: the raised outer brows"),
        4: AURegion((*_pair(19, 24, (0.0, 1 / 3), (0.6, 0.45)), RegionBox((21, 22), (0.0, 1 / 3), (0.5, 0.45))),
                    "JAA-Net", "brow centres, a third of a ruler down; the glabella box between the brows is ours"),
        5: AURegion((RegionBox((37, 38), (0.0, 0.0), (0.55, 0.35)), RegionBox((43, 44), (0.0, 0.0), (0.55, 0.35))),
                    "ours", "the upper lids: the widened eye opening"),
        6: AURegion(_pair(41, 46, (0.0, 1.0), (0.6, 0.5)), "JAA-Net", "a ruler below the lower lids, on the cheeks"),
        7: AURegion(_pair(38, 43, (0.0, 0.1), (0.6, 0.4)), "JAA-Net",
                    "the upper lids (moved down a tenth of a ruler, ours), reaching over both lids"),
        9: AURegion(_pair(32, 34, (0.0, -0.5), (0.4, 0.5)), "JAA-Net",
                    "half a ruler above the nostril sides, on the sides of the nose"),
        10: AURegion(_pair(50, 52, (0.0, -0.1), (0.5, 0.4)), "ours",
                     "the upper lip and the skin above it, either side of the philtrum"),
        12: AURegion(_pair(48, 54, (0.0, 0.0), (0.45, 0.45)), "JAA-Net", "the lip corners, pulled up and out"),
        14: AURegion(_pair(48, 54, (0.0, 0.0), (0.45, 0.45)), "JAA-Net", "the lip corners, where the dimples form"),
        15: AURegion(_pair(48, 54, (0.0, 0.0), (0.45, 0.45)), "JAA-Net", "the lip corners, pulled down"),
        17: AURegion(_pair(56, 58, (0.0, 0.5), (0.6, 0.5)), "JAA-Net",
                     "half a ruler below the lower lip: the chin boss pushed up"),
        20: AURegion(_pair(48, 54, (0.0, 0.0), (0.6, 0.4)), "ours", "the lip corners, stretched sideways"),
        23: AURegion(_pair(51, 57, (0.0, 0.0), (0.8, 0.35)), "JAA-Net", "the upper and lower lip centres"),
        24: AURegion(_pair(51, 57, (0.0, 0.0), (0.8, 0.35)), "JAA-Net", "the upper and lower lip centres"),
        25: AURegion((RegionBox((62, 66), (0.0, 0.0), (1.1, 0.6)),), "ours",
                     "the lips, centred between the inner-lip midpoints"),
        26: AURegion((RegionBox((62, 66), (0.0, 0.5), (1.1, 0.9)),), "ours",
                     "the lips and below them, centred half a ruler under the mouth's centre"),
        27: AURegion((RegionBox((51, 8), (0.0, 0.0), (1.4, 1.2)),), "ours",
                     "the mouth and the jaw under it, centred between upper lip and chin"),
        43: AURegion((RegionBox(_EYE_R, (0.0, 0.0), (0.6, 0.4)), RegionBox(_EYE_L, (0.0, 0.0), (0.6, 0.4))), "ours",
                     "the eyes (centred on all six points of each): the closed lids"),
}
assert set(AU_REGIONS) == set(facs.KNOWN_AUS)
MAX_BOXES = max(len(region.boxes) for region in AU_REGIONS.values())


@functools.lru_cache(maxsize=None)
def _table_arrays(aus: tuple[int, ...]):
    """Static arrays of the regions of `aus` (A AUs): landmark weights (A, K, 68) that average each box's landmarks,
    offsets (A, K, 2), half sizes (A, K, 2), and which of the K slots are used (A, K)."""
    missing = [au for au in aus if au not in AU_REGIONS]
    if missing:
        raise ValueError(f"no AU region for AU{missing[0]}: regions exist for AUs "
                         f"{', '.join(map(str, AU_REGIONS))}")
    weights = np.zeros((len(aus), MAX_BOXES, facs.NUM_LANDMARKS), np.float32)
    offsets = np.zeros((len(aus), MAX_BOXES, 2), np.float32)
    half_sizes = np.zeros((len(aus), MAX_BOXES, 2), np.float32)
    used = np.zeros((len(aus), MAX_BOXES), bool)
    for a, au in enumerate(aus):
        for k, box in enumerate(AU_REGIONS[au].boxes):
            weights[a, k, list(box.landmarks)] = 1.0 / len(box.landmarks)
            offsets[a, k], half_sizes[a, k], used[a, k] = box.offset, box.half_size, True
    return weights, offsets, half_sizes, used


def _check_landmarks(landmarks) -> jnp.ndarray:
    landmarks = jnp.asarray(landmarks, jnp.float32)
    if landmarks.ndim != 3 or landmarks.shape[1:] != (facs.NUM_LANDMARKS, 2):
        raise ValueError(f"landmarks must have shape (n, {facs.NUM_LANDMARKS}, 2), got {landmarks.shape}")
    return landmarks


def face_ruler(landmarks: jnp.ndarray) -> jnp.ndarray:
    """Inner-eye-corner distance, (n,) pixels, of landmarks (n, 68, 2)."""
    first, second = RULER_LANDMARKS
    return jnp.linalg.norm(landmarks[:, second] - landmarks[:, first], axis=-1)


def _centres(landmarks: jnp.ndarray, weights: np.ndarray) -> jnp.ndarray:
    """(n, A, K, 2) mean of each box's landmarks."""
    return jnp.einsum("akl,nlc->nakc", weights, landmarks)


@functools.partial(jax.jit, static_argnames=("aus", "size"))
def au_region_boxes(landmarks, *, aus: tuple[int, ...], size: int = facs.IMAGE_SIZE) -> jnp.ndarray:
    """Axis-aligned AU boxes.

    landmarks: (n, 68, 2) (x, y) crop pixels, iBUG-68 order; aus: the AU set (A AUs, a tuple).
    Returns float32 (n, A, K, 4) (x0, y0, x1, y1) pixels in `aus` order, clipped to [0, size]; K = MAX_BOXES, AUs
    with fewer boxes have empty ones (all zeros) in the spare slots.
    """
    weights, offsets, half_sizes, used = _table_arrays(aus)
    landmarks = _check_landmarks(landmarks)
    ruler = face_ruler(landmarks)[:, None, None, None]
    centres = _centres(landmarks, weights) + offsets * ruler
    half_sizes = half_sizes * ruler
    boxes = jnp.clip(jnp.concatenate([centres - half_sizes, centres + half_sizes], axis=-1), 0.0, size)
    return jnp.where(used[None, :, :, None], boxes, 0.0)


@functools.partial(jax.jit, static_argnames="aus")
def au_region_polygons(landmarks, *, aus: tuple[int, ...]) -> jnp.ndarray:
    """The AU rectangles in the face's frame (turned with the eye line), as corners.

    landmarks: (n, 68, 2) (x, y) crop pixels; aus: the AU set (A AUs). Returns float32 (n, A, K, 4, 2): corners in
    order top-left, top-right, bottom-right, bottom-left of the face frame; spare slots all zeros. Not clipped.
    """
    weights, offsets, half_sizes, used = _table_arrays(aus)
    landmarks = _check_landmarks(landmarks)
    ruler = face_ruler(landmarks)[:, None, None, None]
    eye_line = landmarks[:, list(LEFT_EYE)].mean(axis=1) - landmarks[:, list(RIGHT_EYE)].mean(axis=1)
    across = eye_line / jnp.maximum(jnp.linalg.norm(eye_line, axis=-1, keepdims=True), 1e-6)  # (n, 2)
    down = jnp.stack([-across[:, 1], across[:, 0]], axis=-1)
    frame = jnp.stack([across, down], axis=-2)  # (n, 2, 2): rows are the face's x and y axes in the image
    centres = _centres(landmarks, weights) + jnp.einsum("akc,ncd->nakd", offsets, frame) * ruler
    signs = jnp.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], jnp.float32)
    corners_in_face = signs * (half_sizes * ruler)[:, :, :, None]  # (n, A, K, 4, 2)
    corners = centres[:, :, :, None] + jnp.einsum("nakvc,ncd->nakvd", corners_in_face, frame)
    return jnp.where(used[None, :, :, None, None], corners, 0.0)


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


@functools.partial(jax.jit, static_argnames=("aus", "size", "shape"))
def au_region_masks(landmarks, *, aus: tuple[int, ...], size: int = facs.IMAGE_SIZE, shape: str = "box") -> jnp.ndarray:
    """AU regions as pixel masks.

    landmarks: (n, 68, 2) (x, y) pixels in a size x size crop, iBUG-68 order; aus: the AU set (A AUs, a tuple).
    shape: "box" (axis-aligned, `au_region_boxes`) or "polygon" (turned with the face, `au_region_polygons`).
    Returns bool (n, A, size, size) in `aus` order.
    """
    if shape == "box":
        masks = _box_masks(au_region_boxes(landmarks, aus=aus, size=size), size)
    elif shape == "polygon":
        masks = _polygon_masks(au_region_polygons(landmarks, aus=aus), size)
    else:
        raise ValueError(f"shape={shape!r}: expected one of {SHAPES}")
    return jnp.any(masks & _table_arrays(aus)[3][None, :, :, None, None], axis=2)


def region_table_markdown() -> str:
    """AU_REGIONS as a markdown table (docs/verification.md), one row per box, with each centre's source."""
    rows = ["| AU | box centre: mean of landmarks | offset (dx, dy), rulers | half size (w, h), rulers | centre from |",
            "| --- | --- | --- | --- | --- |"]
    for au, region in AU_REGIONS.items():
        for k, box in enumerate(region.boxes):
            rows.append(f"| {facs.au_label(au)} | {', '.join(map(str, box.landmarks))} "
                        f"| ({box.offset[0]:+.2f}, {box.offset[1]:+.2f}) "
                        f"| ({box.half_size[0]:.2f}, {box.half_size[1]:.2f}) "
                        f"| {f'{region.source}: {region.note}' if k == 0 else ''} |")
    return "\n".join(rows)
