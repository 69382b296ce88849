"""The report's figures: written as PNGs, and showing what they claim (regions where `aujax.regions` puts them,
heatmaps in the LRP colours, the values given)."""

import numpy as np
import pytest
from matplotlib.patches import Rectangle
from PIL import Image

from aujax import facs, figures, files, regions, rundir
from aujax.data import synthetic
from aujax.lrp import heatmaps as lrp_heatmaps


@pytest.fixture(scope="module")
def faces():
    """Four synthetic faces with their landmarks."""
    return synthetic.generate(1, 4, seed=3)


def _check_png(path, min_width: int, min_height: int) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        pixels = np.asarray(image.convert("RGB"))
    assert width >= min_width and height >= min_height, (width, height)
    assert pixels.std() > 10, "the PNG is blank"
    return width, height


def _axes_titled(figure, title: str):
    matches = [ax for ax in figure.axes if ax.get_title() == title]
    assert len(matches) == 1, f"{len(matches)} axes titled {title!r}"
    return matches[0]


def _drawn_boxes(ax) -> np.ndarray:
    """(m, 4) (x0, y0, x1, y1) of the region rectangles drawn in `ax`, sorted."""
    boxes = [(p.get_x(), p.get_y(), p.get_x() + p.get_width(), p.get_y() + p.get_height())
             for p in ax.patches if isinstance(p, Rectangle) and p.get_label() == figures.REGION_LABEL
             and p.get_visible()]
    return np.array(sorted(boxes), np.float64).reshape(-1, 4)


def _expected_boxes(boxes: np.ndarray) -> np.ndarray:
    """The non-empty (K, 4) boxes of one AU, sorted like `_drawn_boxes`."""
    used = [tuple(b) for b in boxes.astype(np.float64) if b[2] > b[0] and b[3] > b[1]]
    return np.array(sorted(used), np.float64).reshape(-1, 4)


@pytest.mark.slow  # > 5 s on 2 cores
@pytest.mark.parametrize("aus", [facs.PAIN_AUS, facs.KNOWN_AUS])
def test_figure1_draws_each_aus_region_from_regions_and_numbers_the_landmarks(faces, tmp_path, aus):
    image, landmarks = faces.image[0], faces.landmarks[0]
    figure = figures.figure1_regions_figure(image, landmarks, aus)
    boxes = np.asarray(regions.au_region_boxes(landmarks[None], aus=aus))[0]
    assert len(figure.axes) == 1 + len(aus), "the face and one panel per AU of the set"
    for a, au in enumerate(aus):
        ax = _axes_titled(figure, f"AU{au} {facs.AU_NAMES[au]}")
        expected = _expected_boxes(boxes[a])
        assert len(expected) >= 1
        np.testing.assert_allclose(_drawn_boxes(ax), expected, atol=1e-4, err_msg=f"AU{au}")
        # Pixel (row i, column j) spans x in [j, j+1): the image must sit where regions.py puts pixels.
        assert ax.images[0].get_extent() == [0, facs.IMAGE_SIZE, facs.IMAGE_SIZE, 0]
        np.testing.assert_array_equal(ax.images[0].get_array(), image)
    face_ax = _axes_titled(figure, "68 landmarks (iBUG order, 0-based ids)")
    np.testing.assert_allclose(face_ax.collections[0].get_offsets(), landmarks, atol=1e-4)
    ids = {int(t.get_text()): t.get_position() for t in face_ax.texts}
    assert sorted(ids) == list(range(facs.NUM_LANDMARKS))
    gaps = np.array([ids[i] for i in range(facs.NUM_LANDMARKS)]) - landmarks
    assert np.all(np.abs(gaps) < 1.0), "each id is written next to its own landmark"

    path = figures.figure1_regions(image, landmarks, aus, tmp_path / "figures" / rundir.FIGURE1)
    width, height = _check_png(path, 1800, 700)
    assert width > 2 * height


def test_figure2_sorts_by_mu_and_shows_lrp_heatmaps_over_the_faces_with_the_region(faces, tmp_path):
    au, k = 25, len(faces)
    rng = np.random.default_rng(0)
    relevance = rng.normal(size=(k, facs.IMAGE_SIZE, facs.IMAGE_SIZE))
    relevance[:, 80, 50] = 40.0  # one strongly positive pixel per heatmap
    mu = np.array([0.7, np.nan, 0.1, 0.4])
    figure = figures.figure2_panel_figure(au, faces.image, relevance, faces.landmarks, mu)
    rows = np.array(figure.axes[: 2 * k]).reshape(2, k)
    assert [ax.get_title() for ax in rows[0]] == ["μ = 0.100", "μ = 0.400", "μ = 0.700", "μ = n/a"]
    boxes = np.asarray(regions.au_region_boxes(faces.landmarks, aus=(4, au)))[:, 1]
    for position, i in enumerate([2, 3, 0, 1]):
        np.testing.assert_array_equal(rows[0, position].images[0].get_array(), faces.image[i])
        shown = np.asarray(rows[1, position].images[0].get_array())
        np.testing.assert_allclose(shown, lrp_heatmaps.blend_heatmap(faces.image[i] / 255.0, relevance[i]))
        red, green, blue = shown[80, 50]
        assert red > 0.8 and blue < 0.3 and green < 0.3, "positive relevance is red"
        np.testing.assert_allclose(_drawn_boxes(rows[1, position]), _expected_boxes(boxes[i]), atol=1e-4)
        assert len(_drawn_boxes(rows[0, position])) == 0, "the face row shows the face alone"
    assert "AU25 lips part" in figure.get_suptitle()

    path = figures.figure2_panel(au, faces.image, relevance, faces.landmarks, mu,
                                 tmp_path / rundir.figure2(au))
    assert path.name == "figure2_AU25.png"
    _check_png(path, 600, 400)


def test_figure2_rejects_bad_inputs_by_name(faces, tmp_path):
    relevance = np.zeros((len(faces), facs.IMAGE_SIZE, facs.IMAGE_SIZE))
    with pytest.raises(ValueError, match="heatmaps must have shape"):
        figures.figure2_panel(4, faces.image, relevance[:2], faces.landmarks, np.zeros(len(faces)), tmp_path / "x")
    with pytest.raises(ValueError, match="mu must have shape"):
        figures.figure2_panel(4, faces.image, relevance, faces.landmarks, np.zeros(2), tmp_path / "x")
    with pytest.raises(ValueError, match="no AU region for AU11"):
        figures.figure2_panel(11, faces.image, relevance, faces.landmarks, np.zeros(len(faces)), tmp_path / "x")


def _history(losses, f1s):
    return [{"epoch": e + 1, "step": 10 * (e + 1), "loss": loss, "held_out_mean_f1": f1, "images_per_second": 50.0}
            for e, (loss, f1) in enumerate(zip(losses, f1s))]


def test_training_curves_plot_loss_and_f1_per_epoch_one_line_per_fold(tmp_path):
    histories = {"fold_00: S001": _history([1.0, 0.6, 0.4], [None, 0.5, 0.6]),
                 "fold_01: S002": _history([0.9, 0.5], [0.3, 0.45])}
    figure = figures.training_curves_figure(histories)
    loss_ax, f1_ax = figure.axes[:2]
    for ax, key in ((loss_ax, "loss"), (f1_ax, "held_out_mean_f1")):
        assert [line.get_label() for line in ax.lines] == list(histories)
        for line, history in zip(ax.lines, histories.values()):
            np.testing.assert_array_equal(line.get_xdata(), [h["epoch"] for h in history])
            expected = [np.nan if h[key] is None else h[key] for h in history]
            np.testing.assert_array_equal(line.get_ydata(), expected)
    assert [t.get_text() for t in f1_ax.get_legend().get_texts()] == list(histories)
    _check_png(figures.training_curves(histories, tmp_path / rundir.TRAINING_CURVES), 800, 300)


def test_read_fold_histories_names_finished_folds_by_subject(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    files.write_json(str(checkpoints / "fold_00" / "result.json"),
                     {"subject": "S001", "history": _history([1.0], [0.5])})
    files.write_json(str(checkpoints / "fold_01" / "history.json"), _history([0.8, 0.7], [0.2, 0.3]))
    (checkpoints / "fold_02").mkdir()
    histories = figures.read_fold_histories(str(tmp_path))
    assert list(histories) == ["fold_00: S001", "fold_01"]
    assert [h["loss"] for h in histories["fold_01"]] == [0.8, 0.7]
    assert figures.read_fold_histories(str(tmp_path / "nothing")) == {}


def test_mu_distributions_show_every_finite_value_and_its_count(tmp_path):
    mu_by_dataset = {"CK+": {"AU4": np.array([0.2, 0.5, 0.9]), "AU25": np.array([0.4, np.nan])},
                     "UNBC": {"AU4": np.array([0.1]), "AU25": np.array([])}}
    figure = figures.mu_distributions_figure(mu_by_dataset)
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["AU4", "AU25"]
    assert sorted(t.get_text() for t in ax.texts) == ["n=0", "n=1", "n=1", "n=3"]
    points = np.sort(np.concatenate([c.get_offsets()[:, 1] for c in ax.collections]))
    np.testing.assert_allclose(points, [0.1, 0.2, 0.4, 0.5, 0.9])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["CK+", "UNBC"]
    _check_png(figures.mu_distributions(mu_by_dataset, tmp_path / rundir.MU_DISTRIBUTIONS), 600, 300)


def test_mu_by_au_keeps_the_selected_pairs_per_au():
    mu = np.arange(16, dtype=np.float32).reshape(2, 8) / 16
    keep = np.zeros((2, 8), bool)
    keep[1, 0] = keep[:, 7] = True
    by_au = figures.mu_by_au(mu, keep, facs.PAIN_AUS)
    assert list(by_au) == [f"AU{a}" for a in facs.PAIN_AUS]
    np.testing.assert_array_equal(by_au["AU4"], [mu[1, 0]])
    np.testing.assert_array_equal(by_au["AU27"], mu[:, 7])
    assert by_au["AU6"].size == 0
