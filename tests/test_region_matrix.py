"""The relevance-region matrix: shares of positive relevance per region, rest of the face and background."""

import os

import jax
import numpy as np
import pytest
from scipy import spatial

from aujax import facs, regions
from aujax.analysis import region_matrix

LANDMARKS_CSV = os.path.join(os.path.dirname(__file__), "data", "astronaut_landmarks68.csv")
SIZE = facs.IMAGE_SIZE
AUS = facs.PAIN_AUS


@pytest.fixture(scope="module")
def faces():
    """Landmarks (3, 68, 2) of the astronaut crop, shifted and shrunk; their region masks and face hulls."""
    base = np.loadtxt(LANDMARKS_CSV, delimiter=",", skiprows=1, dtype=np.float32)
    landmarks = np.stack([base, base * 0.8 + 10.0, base + np.float32([4.0, -3.0])])
    return (landmarks, np.asarray(regions.au_region_masks(landmarks, aus=AUS)),
            np.asarray(region_matrix.face_hull_masks(landmarks, SIZE)))


def test_face_hull_is_the_convex_hull_of_the_landmarks(faces):
    landmarks, _, face = faces
    centres = np.stack(np.meshgrid(np.arange(SIZE) + 0.5, np.arange(SIZE) + 0.5), axis=-1).reshape(-1, 2)
    for points, mask in zip(landmarks, face):
        hull = spatial.Delaunay(points[spatial.ConvexHull(points).vertices])
        expected = (hull.find_simplex(centres) >= 0).reshape(SIZE, SIZE)
        assert np.mean(mask != expected) < 2e-3  # pixel centres on the hull's lines may fall either way
        assert 0.15 < mask.mean() < 0.9


def test_rows_sum_to_one_with_rest_and_background(faces):
    landmarks, masks, face = faces
    rng = np.random.default_rng(0)
    heatmaps = rng.normal(size=(len(AUS), len(landmarks), SIZE, SIZE)).astype(np.float32)
    shares = region_matrix.region_shares(heatmaps, masks, face)
    assert np.all(shares.defined)
    complementary = shares.shares[..., -3:]  # any region, rest of the face, background
    np.testing.assert_allclose(np.sum(complementary, axis=-1), 1.0, rtol=1e-5)
    positive = np.maximum(heatmaps, 0)
    for a in range(len(AUS)):  # each region column is μ of that region
        mu = np.sum(positive[a] * masks[:, a], axis=(1, 2)) / np.sum(positive[a], axis=(1, 2))
        np.testing.assert_allclose(shares.shares[:, a, a], mu, rtol=1e-5)
    # the mouth regions overlap, so the region columns count some pixels twice
    assert np.all(np.sum(shares.shares[..., :len(AUS)], axis=-1) > shares.shares[..., len(AUS)])


def test_without_overlaps_region_columns_rest_and_background_sum_to_one(faces):
    landmarks, masks, face = faces
    heatmaps = np.random.default_rng(1).uniform(size=(2, len(landmarks), SIZE, SIZE)).astype(np.float32)
    brows, lips = facs.au_column(4, AUS), facs.au_column(25, AUS)
    pair = masks[:, [brows, lips]]
    assert not np.any(pair[:, 0] & pair[:, 1])
    shares = region_matrix.region_shares(heatmaps, pair, face)
    np.testing.assert_allclose(np.sum(shares.shares[..., [0, 1, 3, 4]], axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(shares.shares[..., 2], np.sum(shares.shares[..., :2], axis=-1), rtol=1e-5)


@pytest.mark.parametrize("au", AUS)
def test_a_heatmap_equal_to_a_region_puts_all_its_relevance_in_that_column(faces, au):
    landmarks, masks, face = faces
    b = facs.au_column(au, AUS)
    heatmaps = np.repeat(masks[None, :, b].astype(np.float32), len(AUS), axis=0)  # every AU explained by region b
    shares = region_matrix.region_shares(heatmaps, masks, face)
    np.testing.assert_allclose(shares.shares[..., b], 1.0, rtol=1e-6)
    np.testing.assert_allclose(shares.shares[..., len(AUS)], 1.0, rtol=1e-6)  # any region
    np.testing.assert_allclose(shares.shares[..., -2:], 0.0, atol=1e-7)  # rest, background
    # outside its own region AU b's relevance is nowhere; every other AU finds all of it in region b
    np.testing.assert_allclose(shares.outside_own[:, b], 0.0, atol=1e-7)
    others = [a for a in range(len(AUS)) if a != b]
    np.testing.assert_allclose(shares.outside_own[:, others, b], 1.0 - shares.shares[:, others][..., others, ]
                               .diagonal(axis1=1, axis2=2), rtol=1e-5)


def test_a_face_without_relevance_in_regions_goes_to_rest_and_background(faces):
    landmarks, masks, face = faces
    union = np.any(masks, axis=1)
    rest = (face & ~union).astype(np.float32)
    background = (~face & ~union).astype(np.float32)
    heatmaps = np.stack([np.broadcast_to(rest, rest.shape), 3 * background - rest])  # AU 0: rest, AU 1: background
    shares = region_matrix.region_shares(heatmaps, masks[:, :2], face)
    np.testing.assert_allclose(shares.shares[:, 0, -2:], [[1.0, 0.0]] * len(landmarks), atol=1e-6)
    np.testing.assert_allclose(shares.shares[:, 1, -2:], [[0.0, 1.0]] * len(landmarks), atol=1e-6)


def test_undefined_pairs_and_the_summary():
    heatmaps = np.zeros((2, 3, 4, 4), np.float32)
    heatmaps[0, 0, 0, 0] = 1.0  # AU a, image 0: all in region a
    heatmaps[0, 1, 3, 3] = 2.0  # AU a, image 1: all in region b
    heatmaps[1, 2, 0, 0] = -1.0  # AU b, image 2: no positive relevance
    heatmaps[1, 1, 3, 3] = np.nan
    masks = np.zeros((3, 2, 4, 4), bool)
    masks[:, 0, :2, :2] = True
    masks[:, 1, 2:, 2:] = True
    shares = region_matrix.region_shares(heatmaps, masks, np.ones((3, 4, 4), bool))
    np.testing.assert_array_equal(shares.defined, [[True, False], [True, False], [False, False]])
    summary = region_matrix.summarise(shares, np.ones((3, 2), bool), aus=(1, 2))
    np.testing.assert_array_equal(summary.n, [2, 0])
    np.testing.assert_allclose(summary.matrix[0], [0.5, 0.5, 1.0, 0.0, 0.0])
    assert np.all(np.isnan(summary.matrix[1]))
    assert region_matrix.columns((1, 2)) == ("AU1", "AU2", "any region", "rest of the face", "background")
    assert region_matrix.shortcuts(summary) == []
    summary = region_matrix.summarise(shares, [[False, True], [True, True], [True, True]], aus=(1, 2))
    assert region_matrix.shortcuts(summary) == [region_matrix.Shortcut(1, 2, 0.0, 1.0)]


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="region masks"):
        region_matrix.region_shares(np.zeros((2, 3, 4, 4)), np.zeros((3, 3, 4, 4), bool), np.zeros((3, 4, 4), bool))


@pytest.mark.slow  # compiles the explain stage for two composites (~10-25 s on 2 cores)
def test_the_explain_stage_scores_the_regions_and_the_report_writes_every_analysis(tmp_path):
    """Through the explain stage (a tiny random model): its region shares and small heatmaps are those of its
    heatmaps; the analyses land in relevance_regions.csv|json, mu_differences.csv|json, strategies_cv.json, their
    figures and the report."""
    from aujax import explain, files, html_report, lrp, report, rundir
    from aujax import model as model_lib
    from aujax.analysis import figures as analysis_figures, strategies, verify
    from aujax.configs import default
    from tests.support import TINY_WIDTHS, patch_records

    config = default.get_config()
    cfg = config.explain
    cfg.compare, cfg.metrics, cfg.max_images, cfg.batch_size = ("gradient_x_input",), ("mu",), 12, 4
    config.analysis.min_images, config.analysis.bootstrap_samples = 4, 50
    variables = model_lib.init_variables(model_lib.create_model(TINY_WIDTHS), jax.random.key(0))
    canonical = lrp.canonize(variables)
    roles = {"cv": patch_records(3, 4, seed=0, prefix="A", name="cv")}
    explained = explain.explain_roles(canonical, roles, cfg, threshold=0.3, strategy_size=28)
    result, aus = explained.main["cv"], roles["cv"].au_ids
    heatmaps = explain.pixel_heatmaps_of(canonical, result.records.image, cfg)
    expected = region_matrix.region_shares(
            heatmaps, regions.au_region_masks(result.records.landmarks, aus=aus),
            region_matrix.face_hull_masks(result.records.landmarks, SIZE))
    np.testing.assert_allclose(result.shares.shares, expected.shares, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.small_heatmaps, strategies.downsample(heatmaps, 28), rtol=1e-4, atol=1e-6)
    assert explained.results["gradient_x_input", "cv"].small_heatmaps is None
    assert result.used.any()

    analysis = verify.analyse(explained, config.analysis, seed=0, aus=aus)
    run = rundir.RunDir(str(tmp_path))
    text = report.write_analysis(run, explained, analysis)
    assert "Paired bootstrap of μ" in text and "Likely co-occurrence shortcuts" in text
    record = files.read_json(run.result(rundir.strategies("cv")))
    assert set(record) == {"role", "composite", "aus"} and (record["role"], record["composite"]) == ("cv", "paper")
    for au, entry in record["aus"].items():
        column = aus.index(int(au[2:]))
        assert sorted(i["source"] for i in entry["images"]) == sorted(result.records.source[result.used[:, column]])
        assert sum(c["size"] for c in entry["clusters"]) == len(entry["images"])
    matrix = files.read_json(run.result(rundir.RELEVANCE_REGIONS + ".json"))
    assert len(matrix["rows"]) == 2 * len(aus) and "overlap" in matrix["definition"]
    cv_paper = [r for r in matrix["rows"] if r["composite"] == "paper"]
    for row, mu in zip(cv_paper, result.summaries["mu"]):
        assert row["n"] == mu.n and (mu.mean is None or row["shares"][row["au"]] == pytest.approx(mu.mean, abs=1e-5))
    assert (tmp_path / "results" / f"{rundir.MU_DIFFERENCES}.csv").is_file()
    analysis_figures.write_figures(run, explained, analysis)
    for name in (rundir.RELEVANCE_REGIONS_FIGURE, rundir.strategies_figure("cv")):
        assert (tmp_path / "results" / "figures" / name).is_file()
    page = html_report.render_report(str(tmp_path))
    assert "Verification beyond μ" in page and "Strategies of the cv role" in page
