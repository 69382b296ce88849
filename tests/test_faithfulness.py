"""Faithfulness: region perturbation and pixel flipping on a model whose AU logits are fixed linear functions of the
pixels of their own regions."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from aujax import distributed, facs, regions
from aujax.analysis import faithfulness, region_matrix
from aujax.data.records import FaceRecords

LANDMARKS_CSV = os.path.join(os.path.dirname(__file__), "data", "astronaut_landmarks68.csv")
SIZE = facs.IMAGE_SIZE
AUS = (4, 25)  # brows and lips: regions far apart
CENTRE = 0.5


@pytest.fixture(scope="module")
def face():
    """Two faces with the astronaut's landmarks (2, 68, 2), their masks (2, A, H, W), face hulls, and a linear model:
    AU a's logit = Σ_{i ∈ region a} w_i · (x_i − 0.5), with w (A, H, W, 3) zero outside the region."""
    landmarks = np.repeat(np.loadtxt(LANDMARKS_CSV, delimiter=",", skiprows=1, dtype=np.float32)[None], 2, axis=0)
    masks = np.asarray(regions.au_region_masks(landmarks, aus=AUS))
    hull = np.asarray(region_matrix.face_hull_masks(landmarks, SIZE))
    rng = np.random.default_rng(0)
    weights = (rng.normal(size=(len(AUS), SIZE, SIZE, 3)) * masks[0][..., None]).astype(np.float32)
    return landmarks, masks, hull, weights


def _linear_logits(weights):
    return lambda images: jnp.einsum("nhwc,ahwc->na", images - CENTRE, weights)


def _images(n: int, seed: int = 1) -> np.ndarray:
    """(n, H, W, 3) float32 with mean colour exactly 0.5 per image and channel: the "mean" fill is the model's zero."""
    x = np.random.default_rng(seed).uniform(size=(n, SIZE, SIZE, 3))
    return (x - x.mean(axis=(1, 2), keepdims=True) + CENTRE).astype(np.float32)


def _relevance(images, weights) -> np.ndarray:
    """(1, A, n, H, W): the linear model's exact pixel relevance w_i · (x_i − 0.5), summed over colour."""
    return np.einsum("nhwc,ahwc->anhw", images - CENTRE, weights)[None]


def _run(images, masks, hull, weights, key=0, steps=5, max_fraction=0.2):
    fn = jax.jit(lambda *a: faithfulness.perturbation_logits(_linear_logits(weights), *a, steps=steps,
                                                             max_fraction=max_fraction, fill="mean"))
    return jax.device_get(fn(images, masks, hull, _relevance(images, weights), jax.random.PRNGKey(key)))


def test_filling_the_own_region_removes_the_logit_and_a_random_region_or_the_background_does_not(face):
    _, masks, hull, weights = face
    images = _images(2)
    out = _run(images, masks, hull, weights)
    own, random, background = out.regions
    assert np.all(np.abs(out.logits) > 0.1)
    np.testing.assert_allclose(own, 0.0, atol=1e-4)  # the whole logit is gone
    np.testing.assert_allclose(random, out.logits, rtol=1e-5, atol=1e-4)  # untouched
    np.testing.assert_allclose(background, out.logits, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out.random_area, 1.0)


def test_random_regions_lie_on_the_face_outside_the_own_region_with_its_area(face):
    _, masks, hull, _ = face
    masks = np.asarray(regions.au_region_masks(face[0], aus=(4, 6, 9, 10, 25)))
    moved = np.asarray(faithfulness.random_regions(masks, hull, jax.random.PRNGKey(3)))
    assert moved.shape == masks.shape
    assert not np.any(moved & masks)
    assert not np.any(moved & ~hull[:, None])
    area, own_area = moved.sum(axis=(2, 3)), masks.sum(axis=(2, 3))
    np.testing.assert_array_equal(area, own_area)
    again = np.asarray(faithfulness.random_regions(masks, hull, jax.random.PRNGKey(3)))
    np.testing.assert_array_equal(moved, again)
    assert not np.array_equal(moved, np.asarray(faithfulness.random_regions(masks, hull, jax.random.PRNGKey(4))))


def test_aopc_of_the_true_relevance_beats_random_order(face):
    _, masks, hull, weights = face
    images = _images(2, seed=2)
    out = _run(images, masks, hull, weights, steps=6, max_fraction=0.1)
    morf, random = faithfulness.aopc(out.curves[0]), faithfulness.aopc(out.random_curve)
    assert np.all(morf > random + 0.1 * np.abs(out.logits))
    # Most relevant first: the k patches of largest relevance hold more of a linear logit than any other k patches.
    assert np.all(out.curves[0] <= out.random_curve + 1e-4)
    np.testing.assert_allclose(out.curves[0, 0], out.logits)
    # A heatmap of the wrong sign ranks the evidence last: worse than random.
    flipped = jax.device_get(jax.jit(lambda *a: faithfulness.perturbation_logits(
            _linear_logits(weights), *a, steps=6, max_fraction=0.1, fill="mean"))(
            images, masks, hull, -_relevance(images, weights), jax.random.PRNGKey(0)))
    assert np.all(faithfulness.aopc(flipped.curves[0]) < random)


def test_flip_counts_and_aopc_by_hand():
    np.testing.assert_array_equal(faithfulness.flip_counts(100, 4, 0.2), [0, 5, 10, 15, 20])
    curve = np.array([3.0, 2.0, 0.0])[:, None, None]
    np.testing.assert_allclose(faithfulness.aopc(curve), [[(0 + 1 + 3) / 3]])


def test_blur_fill_is_a_gaussian_blur_and_mean_fill_the_mean_colour():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(2, SIZE, SIZE, 3)).astype(np.float32)
    blurred = np.asarray(faithfulness.fill_images(images, "blur"))
    reference = ndimage.gaussian_filter(images, sigma=(0, faithfulness.BLUR_SIGMA, faithfulness.BLUR_SIGMA, 0),
                                        mode="constant", truncate=3.0)
    inner = slice(13, -13)  # beyond 3σ from the border, where the border weights are not renormalised
    np.testing.assert_allclose(blurred[:, inner, inner], reference[:, inner, inner], atol=2e-5)
    constant = np.full((1, SIZE, SIZE, 3), 0.3, np.float32)
    np.testing.assert_allclose(faithfulness.fill_images(constant, "blur"), constant, atol=1e-6)
    mean = np.asarray(faithfulness.fill_images(images, "mean"))
    np.testing.assert_allclose(mean[:, 5, 7], images.mean(axis=(1, 2)), rtol=1e-5)  # float32 sums
    with pytest.raises(ValueError, match="fill='noise'"):
        faithfulness.fill_images(images, "noise")


def test_batched_over_the_mesh_equals_one_call_and_summarises_the_selected_pairs(face):
    landmarks, masks, hull, weights = face
    n = 3
    images_uint8 = np.random.default_rng(5).integers(0, 256, (n, SIZE, SIZE, 3)).astype(np.uint8)
    landmarks = np.repeat(landmarks[:1], n, axis=0)
    labels = np.ones((n, len(AUS)), np.uint8)
    records = FaceRecords(images_uint8, landmarks, labels, labels.astype(np.float32), np.array(["s"] * n),
                          np.array([f"f:{i}" for i in range(n)]), "faces", au_ids=AUS)
    selected = np.array([[True, False], [True, True], [False, True]])
    mesh = distributed.make_mesh()
    logits_fn = _linear_logits(weights)
    result = faithfulness.faithfulness(
            lambda w, x: _linear_logits(w)(x), weights,
            lambda x: jnp.einsum("nhwc,ahwc->anhw", x - CENTRE, weights)[None], records, selected, AUS,
            steps=4, max_fraction=0.1, fill="blur", batch_size=2 * jax.device_count(), mesh=mesh,
            key=jax.random.PRNGKey(0), composites=("true",))
    images = images_uint8.astype(np.float32) / 255
    whole = jax.device_get(jax.jit(lambda *a: faithfulness.perturbation_logits(
            logits_fn, *a, steps=4, max_fraction=0.1, fill="blur"))(
            images, masks[:1].repeat(n, 0), hull[:1].repeat(n, 0), _relevance(images, weights),
            jax.random.PRNGKey(9)))
    np.testing.assert_allclose(result.logits, whole.logits, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(result.drops["own"], whole.logits - whole.regions[0], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(result.drops["background"], whole.logits - whole.regions[2], rtol=1e-4, atol=1e-3)
    # Ties (pixels without relevance) are broken at random, but they change no logit of this model.
    np.testing.assert_allclose(result.curves["true"], whole.curves[0], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(result.fractions, np.array([0, 5, 10, 15, 20]) / 196)  # of 14 x 14 patches
    per_au = result.mean_per_au(result.drops["own"])
    np.testing.assert_allclose(per_au, [result.drops["own"][:2, 0].mean(), result.drops["own"][1:, 1].mean()],
                               rtol=1e-6)
    rows = faithfulness.table_rows(result)
    assert [r["method"] for r in rows][:5] == ["faces logit drop, own region", "faces logit drop, random region",
                                                "faces logit drop, background", "faces random region area / own",
                                                "faces n (correctly predicted)"]
    assert rows[4]["scores"]["AU4"]["value"] == 2
    summary = faithfulness.summary(result)
    assert summary["n_pairs"] == 4 and len(summary["mean_curves"]["true"]) == 5
    assert summary["beats_random_order"] == {"true": True}


def test_model_checks_are_written_drawn_and_reported(tmp_path):
    """The writers at the edge: both tables (CSV + JSON), both figures, the report's verdicts."""
    from aujax import html_report, report, rundir
    from aujax.analysis import faithfulness_figures, model_checks, sanity

    rng = np.random.default_rng(0)
    n, steps = 3, 2
    logits = rng.normal(size=(n, len(AUS)))
    curve = np.stack([logits, logits - 1.0, logits - 2.0])  # AOPC 1 against random order's 0
    faith = faithfulness.Faithfulness(
            "faces", AUS, "blur", logits, {name: rng.normal(size=(n, len(AUS))) for name in faithfulness.REGION_SETS},
            np.ones((n, len(AUS))), np.array([0.0, 0.1, 0.2]), {"paper": curve, "all_z": curve[::-1]},
            np.repeat(logits[None], steps + 1, axis=0), np.ones((n, len(AUS)), bool))
    values = {m: {"paper": np.full((2, n, len(AUS)), 0.1), "all_z": np.full((2, n, len(AUS)), 0.9)}
              for m in sanity.METRICS}
    defined = {m: {c: np.ones((2, n, len(AUS)), bool) for c in ("paper", "all_z")} for m in sanity.METRICS}
    checks = model_checks.ModelChecks(
            {"cv": faith}, {"cv": sanity.SanityResult("faces", AUS, ("paper", "all_z"), ("head", "stem"), values,
                                                      defined)}, 0.5, {"faithfulness": 1.0, "sanity": 2.0})
    run = rundir.RunDir(str(tmp_path))
    printed = report.write_model_checks(run, checks)
    assert "faces AOPC, paper" in printed and "flagged (>= 0.5): all_z" in printed
    saved = json.loads((tmp_path / "results" / "faithfulness.json").read_text())
    assert saved["datasets"][0]["aopc"] == {"paper": 1.0, "all_z": -1.0, faithfulness.RANDOM_ORDER: 0.0}
    assert saved["datasets"][0]["beats_random_order"] == {"paper": True, "all_z": False}
    assert json.loads((tmp_path / "results" / "sanity_randomisation.json").read_text())["datasets"][0]["flagged"] \
        == ["all_z"]
    assert (tmp_path / "results" / "sanity_randomisation.csv").read_text().count("randomised down to") == 8  # 2 x 2 x 2
    faithfulness_figures.write_model_checks(run, checks)
    assert os.path.getsize(run.figure(rundir.FAITHFULNESS_FIGURE)) > 0 and os.path.getsize(
            run.figure(rundir.SANITY_FIGURE)) > 0
    section = html_report.model_checks_section(str(tmp_path))
    assert "ranked first by <b>paper</b>" in section and "no better than random order: all_z" in section
    assert "<b>all_z</b> barely change" in section
    groups = html_report.group_figures([rundir.FAITHFULNESS_FIGURE, rundir.SANITY_FIGURE])
    assert list(groups) == ["Faithfulness", "Sanity check: cascading randomisation"]
    assert html_report.model_checks_section(str(tmp_path / "elsewhere")) == ""
