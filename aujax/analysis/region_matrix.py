"""Where each AU's relevance goes: the share of its positive relevance in every AU's region, in the rest of the face
and in the background (`results/relevance_regions.csv|json`).

For one image and explained AU a, with r⁺ = max(r, 0) the positive part of a's pixel heatmap, G_b the region of AU b
(`aujax.regions.au_region_masks`), U = ∪_b G_b their union and F the face (pixel centres inside the convex hull of the
68 landmarks, `face_hull_masks`):

    region b            Σ_{i∈G_b} r⁺_i / Σ_i r⁺_i          (b = a: μ)
    any region          Σ_{i∈U} r⁺_i / Σ_i r⁺_i
    rest of the face    Σ_{i∈F∖U} r⁺_i / Σ_i r⁺_i
    background          Σ_{i∉F∪U} r⁺_i / Σ_i r⁺_i          (a region reaching past the hull is a region, not background)

Overlaps: regions share pixels (AU25, AU26 and AU27 all cover the lips), and each region column counts every pixel of
its region, so a pixel in two regions counts once in each. Hence `any region` + `rest of the face` + `background` = 1
exactly, while the region columns + rest + background sum to 1 only where no two regions overlap (more otherwise).

Shortcuts: `outside own region` is Σ_{i∈G_b∖G_a} r⁺_i / Σ_i r⁺_i, the share of a's relevance in b's region but not in
a's own. AU a is flagged (`shortcuts`) when some other region holds more of its relevance there than a's own region
holds (outside own region of b > μ): it is likely read from where a co-occurring AU shows (AU4 from the open mouth).
Counting the part outside a's region keeps nested or overlapping regions (AU25 inside AU27's box) from flagging
themselves.

Rows average the per-image shares over the pairs μ counts (correctly predicted, μ defined: `explain.RoleResult.used`),
so a row's diagonal is Table 3's μ and its three complementary columns still sum to 1.
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ANY_REGION = "any region"
REST_OF_FACE = "rest of the face"
BACKGROUND = "background"
DEFINITION = ("share of an AU's positive relevance (max(R, 0) summed over the pixels) in each AU's region; 'any "
              "region' in their union, 'rest of the face' inside the convex hull of the 68 landmarks but in no region, "
              "'background' in neither; regions overlap and each counts all its pixels, so any region + rest of the "
              "face + background = 1 and the region columns may sum to more than 'any region'; rows average the pairs "
              "μ counts (correctly predicted, μ defined; the diagonal is Table 3's μ); 'outside own region' "
              "counts only the pixels outside the row AU's own region; an AU is flagged as a likely shortcut when "
              "another region holds more of its relevance outside its own region than its own region holds (μ)")
_HULL_TOLERANCE = 1e-3  # px²: landmarks within this of a hull line count as on it


def columns(aus) -> tuple[str, ...]:
    """Column names of the matrix for regions of `aus`: ('AU4', ..., 'any region', 'rest of the face', 'background')."""
    return (*(f"AU{au}" for au in aus), ANY_REGION, REST_OF_FACE, BACKGROUND)


def _cross(edge, offset):
    return edge[..., 0] * offset[..., 1] - edge[..., 1] * offset[..., 0]


def _hull_edges(points):
    """(L, 2) points -> (L, 2, 2) lines (start, end): for each point that is a corner of the convex hull, the hull edge
    leaving it (every other point on its non-negative side); for the others a zero-length edge, which excludes nothing."""
    edge = points[None, :, :] - points[:, None, :]  # (i, j): from point i to point j
    offset = points[None, None, :, :] - points[:, None, None, :]  # (i, j, k): from point i to point k
    side = _cross(edge[:, :, None, :], offset)  # (i, j, k)
    length = jnp.linalg.norm(edge, axis=-1)
    is_edge = jnp.all(side >= -_HULL_TOLERANCE * jnp.maximum(length, 1.0)[:, :, None], axis=-1) & (length > 1e-6)
    successor = jnp.where(jnp.any(is_edge, axis=1), jnp.argmax(is_edge, axis=1), jnp.arange(points.shape[0]))
    return jnp.stack([points, points[successor]], axis=1)


@functools.partial(jax.jit, static_argnames="size")
def face_hull_masks(landmarks, size: int) -> jax.Array:
    """Pixels whose centre (j + 0.5, i + 0.5) lies inside or on the convex hull of each face's landmarks.

    landmarks: (n, L, 2) (x, y) crop pixels (L = 68). Returns bool (n, size, size).
    """
    lines = jax.vmap(_hull_edges)(jnp.asarray(landmarks, jnp.float32))  # (n, L, 2, 2)
    coords = jnp.arange(size, dtype=jnp.float32) + 0.5
    pixels = jnp.stack(jnp.meshgrid(coords, coords), axis=-1)  # (size, size, 2) as (x, y), row-major
    start, end = lines[:, :, None, None, 0], lines[:, :, None, None, 1]  # (n, L, 1, 1, 2)
    side = _cross(end - start, pixels[None, None] - start)  # (n, L, size, size)
    return jnp.all(side >= 0, axis=1)


class RegionShares(NamedTuple):
    """Per (image, explained AU): `shares` float32 (n, A, R + 3), the columns of `columns` (0 where undefined);
    `outside_own` float32 (n, A, R), the share in each region outside the AU's own region; `defined` bool (n, A),
    whether the heatmap is finite with positive relevance."""

    shares: jax.Array
    outside_own: jax.Array
    defined: jax.Array


@jax.jit
def region_shares(heatmaps, region_masks, face) -> RegionShares:
    """The region matrix's entries for every image and explained AU (jitted; einsums over images and AUs).

    heatmaps: (A, n, H, W) float pixel relevance of the A explained AUs; region_masks: (n, A, H, W) bool, the regions
    of the same AUs in the same order (so that AU a's own region is region a); face: (n, H, W) bool, `face_hull_masks`.
    """
    num_aus, n, height, width = heatmaps.shape
    if tuple(region_masks.shape) != (n, num_aus, height, width) or tuple(face.shape) != (n, height, width):
        raise ValueError(f"region masks {tuple(region_masks.shape)} and face {tuple(face.shape)} must be "
                         f"{(n, num_aus, height, width)} and {(n, height, width)} for heatmaps {tuple(heatmaps.shape)}")
    relevance = heatmaps.astype(jnp.float32).reshape(num_aus, n, height * width)
    finite = jnp.all(jnp.isfinite(relevance), axis=-1)  # (A, n)
    positive = jnp.maximum(jnp.where(finite[..., None], relevance, 0.0), 0.0)
    masks = region_masks.reshape(n, num_aus, height * width).astype(jnp.float32)
    union = jnp.max(masks, axis=1)  # (n, P)
    inside_face = face.reshape(n, height * width).astype(jnp.float32)
    rest = inside_face * (1.0 - union)
    background = (1.0 - inside_face) * (1.0 - union)
    parts = jnp.concatenate([masks, union[:, None], rest[:, None], background[:, None]], axis=1)  # (n, R + 3, P)
    mass = jnp.einsum("anp,nrp->nar", positive, parts)
    outside = jnp.einsum("anp,nrp->nar", positive * (1.0 - masks.transpose(1, 0, 2)), masks)
    total = jnp.sum(positive, axis=-1).T  # (n, A)
    defined = finite.T & (total > 0)
    scale = jnp.where(defined, 1.0 / jnp.where(total > 0, total, 1.0), 0.0)[..., None]
    return RegionShares(mass * scale, outside * scale, defined)


@dataclasses.dataclass(frozen=True)
class RegionMatrix:
    """One dataset's matrix under one composite: `matrix` (A, R + 3) mean shares per explained AU (rows, NaN where
    `n` is 0) over `columns(aus)`; `outside_own` (A, R); `n` (A,) the pairs averaged."""

    aus: tuple[int, ...]
    matrix: np.ndarray
    outside_own: np.ndarray
    n: np.ndarray


def summarise(shares: RegionShares, selected, aus) -> RegionMatrix:
    """Average `shares` (numpy) over the `selected` (n, A) bool pairs that are defined, per explained AU (the explain
    stage selects the pairs μ counts)."""
    used = np.asarray(selected, bool) & np.asarray(shares.defined, bool)
    n = used.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = lambda values: (np.einsum("na,nar->ar", used, np.asarray(values, np.float64))
                               / np.where(n > 0, n, np.nan)[:, None])
        return RegionMatrix(tuple(aus), mean(shares.shares), mean(shares.outside_own), n)


@dataclasses.dataclass(frozen=True)
class Shortcut:
    """AU `au`'s relevance lies more in `other`'s region (outside its own: `other_share`) than in its own (`mu`)."""

    au: int
    other: int
    mu: float
    other_share: float


def shortcuts(matrix: RegionMatrix) -> list[Shortcut]:
    """The AUs whose relevance falls more in another AU's region than in their own, each with the region holding most."""
    found = []
    for a, au in enumerate(matrix.aus):
        if matrix.n[a] == 0:
            continue
        others = np.where(np.arange(len(matrix.aus)) == a, -np.inf, matrix.outside_own[a])
        b = int(np.argmax(others))
        if others[b] > matrix.matrix[a, a]:
            found.append(Shortcut(au, matrix.aus[b], float(matrix.matrix[a, a]), float(others[b])))
    return found
