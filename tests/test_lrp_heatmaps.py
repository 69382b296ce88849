"""Heatmap drawing: the LRP colour convention, blending, PNGs and the AU x image grid."""

import matplotlib.image
import numpy as np
import pytest

from aujax import facs
from aujax.lrp import heatmaps


def test_colours_red_positive_blue_negative_white_zero_symmetric_per_heatmap():
    relevance = np.array([[2.0, -2.0, 0.0, 1.0]])
    rgb = heatmaps.heatmap_rgb(relevance)
    assert rgb.shape == (1, 4, 3) and rgb.min() >= 0 and rgb.max() <= 1
    red, blue, white, light_red = rgb[0]
    assert red[0] > 0.9 and red[2] < 0.1
    assert blue[2] > 0.9 and blue[0] < 0.1
    np.testing.assert_allclose(white, 1.0, atol=0.01)
    assert light_red[0] > light_red[2] > red[2]  # half the maximum: paler red
    np.testing.assert_allclose(red, blue[::-1], atol=0.01)  # symmetric about 0
    np.testing.assert_allclose(heatmaps.heatmap_rgb(relevance * 1e-6), rgb)  # scaled by its own max |R|
    np.testing.assert_allclose(heatmaps.heatmap_rgb(np.zeros((2, 2))), 1.0, atol=0.01)  # no division by zero


def test_blend_shows_the_face_where_relevance_is_zero():
    image = np.random.default_rng(0).uniform(0, 1, (4, 4, 3))
    relevance = np.zeros((4, 4))
    relevance[0, 0] = 3.0
    blended = heatmaps.blend_heatmap(image, relevance)
    grey = image.mean(-1)
    np.testing.assert_allclose(blended[1:, :, 0], grey[1:], atol=1e-12)
    assert blended[0, 0, 0] > blended[0, 0, 2]  # the relevant pixel turns red


def test_png_and_grid_are_written_with_au_labels(tmp_path):
    rng = np.random.default_rng(1)
    relevance = rng.normal(size=(len(facs.PAIN_AUS), 3, 16, 16))
    images = rng.uniform(0, 1, (3, 16, 16, 3))
    path = heatmaps.save_heatmap_png(tmp_path / "one" / "heatmap.png", relevance[0, 0], images[0])
    assert matplotlib.image.imread(path).shape[:2] == (16, 16)

    figure = heatmaps.heatmap_grid_figure(relevance, images, column_titles=["a", "b", "c"], au_ids=facs.PAIN_AUS)
    axes = figure.get_axes()
    assert len(axes) == len(facs.PAIN_AUS) * 3
    labels = [ax.get_ylabel() for ax in axes if ax.get_ylabel()]
    assert labels == [f"AU{au} {facs.AU_NAMES[au]}" for au in facs.PAIN_AUS]
    assert labels[0] == "AU4 brow lowerer"
    grid = heatmaps.save_heatmap_grid(tmp_path / "grid.png", relevance, au_ids=facs.PAIN_AUS)
    assert matplotlib.image.imread(grid).ndim == 3
    with pytest.raises(ValueError, match="AU rows"):
        heatmaps.heatmap_grid_figure(relevance[:3], au_ids=facs.PAIN_AUS)
