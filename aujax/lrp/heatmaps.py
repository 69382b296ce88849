"""Heatmap images in the LRP colour convention (numpy and matplotlib only, no jax).

Red is positive relevance (evidence for the AU), blue negative (evidence against), white zero. Each heatmap is
scaled symmetrically by its own max |R|, so colours compare within a heatmap, not across heatmaps.
"""

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.image
import numpy as np
from matplotlib.figure import Figure

from aujax import facs

COLORMAP = "bwr"  # blue - white - red


def normalize_heatmap(heatmap: np.ndarray) -> np.ndarray:
    """(h, w) relevance -> (h, w) in [-1, 1], divided by max |R| (all zeros stay zeros)."""
    heatmap = np.asarray(heatmap, np.float64)
    scale = np.abs(heatmap).max(initial=0.0)
    return heatmap / scale if scale > 0 else np.zeros_like(heatmap)


def heatmap_rgb(heatmap: np.ndarray) -> np.ndarray:
    """(h, w) relevance -> (h, w, 3) float in [0, 1]: red positive, blue negative, white zero."""
    colormap = matplotlib.colormaps[COLORMAP]
    return colormap((normalize_heatmap(heatmap) + 1.0) / 2.0)[..., :3]


def blend_heatmap(image: np.ndarray, heatmap: np.ndarray, strength: float = 0.9) -> np.ndarray:
    """The heatmap over a greyscale copy of `image` (h, w, 3) in [0, 1] -> (h, w, 3) in [0, 1].

    Each pixel takes the heatmap colour with weight strength * |R| / max |R|, so neutral areas show the face.
    """
    grey = np.repeat(np.asarray(image, np.float64).mean(axis=-1, keepdims=True), 3, axis=-1)
    weight = strength * np.abs(normalize_heatmap(heatmap))[..., None]
    return np.clip((1.0 - weight) * grey + weight * heatmap_rgb(heatmap), 0.0, 1.0)


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def save_heatmap_png(path, heatmap: np.ndarray, image: np.ndarray | None = None) -> Path:
    """Write one heatmap (h, w) as a PNG, over `image` (h, w, 3) in [0, 1] when given; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = heatmap_rgb(heatmap) if image is None else blend_heatmap(image, heatmap)
    matplotlib.image.imsave(path, to_uint8(rgb))
    return path


def heatmap_grid_figure(heatmaps: np.ndarray, images: np.ndarray | None = None,
                        column_titles: Sequence[str] | None = None, *, au_ids: Sequence[int],
                        cell_inches: float = 1.4) -> Figure:
    """A grid with one row per AU (labelled 'AU4 brow lowerer', ...) and one column per image.

    heatmaps: (len(au_ids), n, h, w) pixel relevance; images: (n, h, w, 3) in [0, 1] to blend under the
    heatmaps (None: heatmaps alone); column_titles: n strings (e.g. subject or label).
    """
    heatmaps = np.asarray(heatmaps)
    rows, columns = heatmaps.shape[:2]
    if rows != len(au_ids):
        raise ValueError(f"heatmaps have {rows} AU rows but au_ids lists {len(au_ids)} AUs")
    if column_titles is not None and len(column_titles) != columns:
        raise ValueError(f"{len(column_titles)} column titles for {columns} images")
    figure = Figure(figsize=(cell_inches * columns + 1.6, cell_inches * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for row, au in enumerate(au_ids):
        for column in range(columns):
            ax = axes[row, column]
            heatmap = heatmaps[row, column]
            ax.imshow(heatmap_rgb(heatmap) if images is None else blend_heatmap(images[column], heatmap))
            ax.set_xticks([])
            ax.set_yticks([])
            if column == 0:
                ax.set_ylabel(facs.au_label(au), fontsize=8)
            if row == 0 and column_titles is not None:
                ax.set_title(column_titles[column], fontsize=8)
    return figure


def save_heatmap_grid(path, heatmaps: np.ndarray, images: np.ndarray | None = None,
                      column_titles: Sequence[str] | None = None, dpi: int = 120, *, au_ids: Sequence[int]) -> Path:
    """`heatmap_grid_figure` written as a PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    heatmap_grid_figure(heatmaps, images, column_titles, au_ids=au_ids).savefig(path, dpi=dpi)
    return path
