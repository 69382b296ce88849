"""Tests for aujax.localisation: hand-computed answers, undefined pairs, shape contract, chunking, Quantus."""

import jax
import numpy as np
import pytest

from aujax import facs
from aujax import localisation
from tests.support import float32_ratio_rtol

# A 4x4 heatmap whose region is the top-left 2x2 block (M = 4 of P = 16 pixels).
HEATMAP = np.array([
        [4.0, 3.0, 0.0, 0.0],
        [1.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, -1.0, 0.0],
        [0.0, 0.0, 1.0, 2.0],
], np.float32)
REGION = np.zeros((4, 4), bool)
REGION[:2, :2] = True


def score_one(heatmap, region, top_k=None):
    """Scores of a single (H, W) heatmap and region: ({name: value}, {name: defined})."""
    scores = localisation.localisation_metrics(heatmap[None, None], region[None, None], top_k=top_k)
    return ({name: float(value[0, 0]) for name, value in scores.values.items()},
            {name: bool(defined[0, 0]) for name, defined in scores.defined.items()})


def random_pairs(rng, num_aus, n, height, width, offset=0.0):
    """Gaussian heatmaps (au, n, H, W) + offset and random rectangular regions (n, au, H, W), 0 < M < P."""
    heatmaps = (rng.normal(size=(num_aus, n, height, width)) + offset).astype(np.float32)
    masks = np.zeros((n, num_aus, height, width), bool)
    for i in range(n):
        for a in range(num_aus):
            top, left = rng.integers(0, height - 1), rng.integers(0, width - 1)
            bottom, right = rng.integers(top + 1, height + 1), rng.integers(left + 1, width + 1)
            masks[i, a, top:bottom, left:right] = True
    return heatmaps, masks


def test_hand_made_heatmap_gives_reasoned_values():
    scores, defined = score_one(HEATMAP, REGION, top_k=5)
    # Positive relevance: 4+3+1+1 inside, +1+2 outside = 12 in all.
    assert scores["mu"] == pytest.approx(9 / 12)
    assert scores["mu_weighted"] == pytest.approx(9 / 12 * 16 / 4)
    # Signed: the -1 outside lowers the total to 11.
    assert scores["mass_accuracy"] == pytest.approx(9 / 11)
    # Top 4 = 4, 3, 2 and one of three tied 1s (two of them inside): 2 + 2/3 hits of 4.
    assert scores["rank_accuracy"] == pytest.approx((2 + 2 / 3) / 4)
    assert scores["pointing_game"] == pytest.approx(1.0)
    # Top 5 = 4, 3, 2 and two of the three tied 1s: 2 + 2 * 2/3 hits of 5.
    assert scores["top_k_intersection"] == pytest.approx((2 + 2 * 2 / 3) / 5)
    # Region pixels outrank the 12 outside ones (nine 0s, one -1, one 1, one 2): 4 and 3 beat all 12, each 1 beats
    # ten and ties one (10.5): U = 12 + 12 + 10.5 + 10.5 = 45 of 4 * 12 pairs.
    assert scores["roc_auc"] == pytest.approx(45 / 48)
    assert all(defined.values())


@pytest.mark.slow  # compiles the metrics for many shapes: > 5 s on 2 cores
def test_top_k_without_ties_and_default_k():
    assert score_one(HEATMAP, REGION, top_k=2)[0]["top_k_intersection"] == pytest.approx(1.0)  # 4 and 3
    assert score_one(HEATMAP, REGION, top_k=3)[0]["top_k_intersection"] == pytest.approx(2 / 3)  # 4, 3, 2
    assert localisation.default_top_k(224, 224) == 1000
    assert localisation.default_top_k(facs.IMAGE_SIZE, facs.IMAGE_SIZE) == 250
    assert localisation.default_top_k(4, 4) == 1


def test_pointing_game_splits_a_tied_maximum():
    heatmap = np.zeros((4, 4), np.float32)
    heatmap[0, 0] = heatmap[3, 3] = heatmap[3, 2] = 5.0  # one maximum inside the region, two outside
    assert score_one(heatmap, REGION)[0]["pointing_game"] == pytest.approx(1 / 3)
    heatmap[3, 3] = 6.0
    assert score_one(heatmap, REGION)[0]["pointing_game"] == 0.0


def test_roc_auc_extremes_and_constant_ranks():
    inside_only = np.where(REGION, 1.0, 0.0).astype(np.float32)
    assert score_one(inside_only, REGION)[0]["roc_auc"] == pytest.approx(1.0)
    assert score_one(1.0 - inside_only, REGION)[0]["roc_auc"] == pytest.approx(0.0)
    assert score_one(np.ones((4, 4), np.float32), REGION)[0]["roc_auc"] == pytest.approx(0.5)


@pytest.mark.parametrize("heatmap, region, reason", [
        (np.zeros((4, 4), np.float32), REGION, "no relevance"),
        (-np.abs(HEATMAP) - 1.0, REGION, "only negative relevance"),
        (HEATMAP, np.zeros((4, 4), bool), "empty region"),
        (HEATMAP, np.ones((4, 4), bool), "region covers the image"),
        (np.where(REGION, np.nan, HEATMAP).astype(np.float32), REGION, "NaN relevance"),
])
def test_undefined_pairs_are_flagged_and_zero(heatmap, region, reason):
    values, defined = score_one(heatmap, region)
    for name in localisation.METRIC_NAMES:
        assert not defined[name], f"{name} defined despite {reason}"
        assert values[name] == 0.0, f"{name} = {values[name]} despite {reason}"


def test_mass_accuracy_needs_a_positive_signed_total():
    heatmap = HEATMAP.copy()
    heatmap[2, 2] = -20.0  # signed total 12 - 20 < 0 while positive relevance remains
    values, defined = score_one(heatmap, REGION)
    assert (values["mass_accuracy"], defined["mass_accuracy"]) == (0.0, False)
    assert (values["mu"], defined["mu"]) == (pytest.approx(9 / 12), True)


@pytest.mark.slow  # compiles the metrics for many shapes: > 5 s on 2 cores
def test_shape_contract_and_axis_order():
    rng = np.random.default_rng(0)
    heatmaps, masks = random_pairs(rng, num_aus=len(facs.PAIN_AUS), n=3, height=6, width=5)
    scores = localisation.localisation_metrics(heatmaps, masks, top_k=4)
    assert set(scores.values) == set(scores.defined) == set(localisation.METRIC_NAMES)
    for name in localisation.METRIC_NAMES:
        assert scores.values[name].shape == scores.defined[name].shape == (3, len(facs.PAIN_AUS))
        assert scores.values[name].dtype == np.float32 and scores.defined[name].dtype == bool
    for i, a in [(0, 0), (2, 5), (1, 7)]:  # heatmaps index (au, image), masks (image, au), results (image, au)
        single = localisation.localisation_metrics(heatmaps[a:a + 1, i:i + 1], masks[i:i + 1, a:a + 1], top_k=4)
        for name in localisation.METRIC_NAMES:
            assert scores.values[name][i, a] == pytest.approx(float(single.values[name][0, 0]),
                                                              rel=float32_ratio_rtol(6 * 5))


@pytest.mark.slow  # compiles the metrics for many shapes: > 5 s on 2 cores
def test_jit_equals_eager():
    rng = np.random.default_rng(1)
    heatmaps, masks = random_pairs(rng, num_aus=2, n=3, height=5, width=6)
    heatmaps[0, 1] = 0.0  # one undefined pair
    jitted = localisation.localisation_metrics(heatmaps, masks, top_k=3)
    with jax.disable_jit():
        eager = localisation.localisation_metrics(heatmaps, masks, top_k=3)
    for name in localisation.METRIC_NAMES:
        np.testing.assert_allclose(jitted.values[name], eager.values[name], rtol=float32_ratio_rtol(5 * 6))
        np.testing.assert_array_equal(jitted.defined[name], eager.defined[name])


def test_bad_shapes_and_top_k_are_rejected():
    heatmaps = np.zeros((8, 2, 4, 4), np.float32)
    with pytest.raises(ValueError, match="do not match"):
        localisation.localisation_metrics(heatmaps, np.zeros((8, 2, 4, 4), bool))  # (au, n) instead of (n, au)
    with pytest.raises(ValueError, match="top_k=17"):
        localisation.localisation_metrics(heatmaps, np.zeros((2, 8, 4, 4), bool), top_k=17)


@pytest.mark.slow  # compiles the metrics for many shapes: > 5 s on 2 cores
@pytest.mark.parametrize("n, chunk_size", [(7, 3), (4, 4), (2, 16), (0, 3)])
def test_chunked_driver_equals_one_shot(n, chunk_size):
    rng = np.random.default_rng(2)
    heatmaps, masks = random_pairs(rng, num_aus=3, n=max(n, 1), height=5, width=4)
    heatmaps, masks = heatmaps[:, :n], masks[:n]
    chunked = localisation.localisation_metrics_chunked(heatmaps, masks, chunk_size=chunk_size, top_k=2)
    one_shot = localisation.localisation_metrics(heatmaps, masks, top_k=2)
    for name in localisation.METRIC_NAMES:
        assert isinstance(chunked.values[name], np.ndarray) and chunked.values[name].shape == (n, 3)
        np.testing.assert_array_equal(chunked.values[name], np.asarray(one_shot.values[name]))
        np.testing.assert_array_equal(chunked.defined[name], np.asarray(one_shot.defined[name]))


def test_summary_excludes_undefined_and_unselected_pairs():
    values = np.array([[0.2, 0.5, 99.0], [0.4, 0.5, 0.0], [99.0, 0.0, 0.0]], np.float32)
    selected = np.array([[True, True, True], [True, False, True], [False, False, False]])
    defined = np.array([[True, True, False], [True, True, False], [True, False, False]])
    mean_au, single_au, undefined_au = localisation.summarise_per_au(values, selected, defined, au_ids=(4, 6, 7))
    assert (mean_au.au, mean_au.n, mean_au.n_excluded, mean_au.reason) == (4, 2, 0, None)
    assert mean_au.mean == pytest.approx(0.3) and mean_au.std == pytest.approx(0.1)
    assert (single_au.mean, single_au.std, single_au.n) == (pytest.approx(0.5), 0.0, 1)
    assert (undefined_au.mean, undefined_au.std, undefined_au.n, undefined_au.n_excluded) == (None, None, 0, 2)
    assert undefined_au.reason == "all 2 selected pairs undefined"
    nobody = localisation.summarise_per_au(values, np.zeros_like(selected), defined, au_ids=(4, 6, 7))
    assert {summary.reason for summary in nobody} == {"no selected pairs"}


def test_summary_rejects_nan_in_used_pairs_and_bad_shapes():
    values = np.array([[np.nan, 1.0]], np.float32)
    with pytest.raises(ValueError, match="NaN"):
        localisation.summarise_per_au(values, np.ones((1, 2), bool), np.ones((1, 2), bool), au_ids=(4, 6))
    localisation.summarise_per_au(values, np.ones((1, 2), bool), np.array([[False, True]]), au_ids=(4, 6))
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        localisation.summarise_per_au(values, np.ones((1, 2), bool), np.ones((1, 2), bool), au_ids=(4, 6, 7))


@pytest.mark.slow  # compiles the metrics for many shapes: > 5 s on 2 cores
def test_selection_keeps_only_correctly_predicted_aus():
    labels = np.array([[1, 1, 0, 0], [1, 0, 1, 1]])
    predictions = np.array([[1, 0, 1, 0], [1, 1, 1, 0]])
    selected = localisation.correct_positives(labels, predictions)
    np.testing.assert_array_equal(selected, [[True, False, False, False], [True, False, True, False]])
    heatmaps = np.stack([np.stack([HEATMAP, HEATMAP])] * 4)  # every pair has μ = 3/4 ...
    heatmaps[:, 0, 3, 3] = 11.0  # ... except image 0, where μ = 9 / 21
    masks = np.broadcast_to(REGION, (2, 4, 4, 4))
    scores = localisation.localisation_metrics(heatmaps, masks)
    au4, au6, au7, au9 = localisation.summarise_scores(scores, selected, au_ids=(4, 6, 7, 9))["mu"]
    assert (au4.n, au4.mean) == (2, pytest.approx((9 / 21 + 3 / 4) / 2))
    assert (au7.n, au7.mean) == (1, pytest.approx(3 / 4))
    assert au6.n == au9.n == 0 and au6.reason == au9.reason == "no selected pairs"
    with pytest.raises(ValueError, match="labels"):
        localisation.correct_positives(labels, predictions[:, :3])


def test_per_subject_summaries_group_rows():
    values = np.array([[0.2], [0.4], [0.9]], np.float32)
    selected = defined = np.ones((3, 1), bool)
    per_subject = localisation.summarise_per_subject(values, selected, defined, np.array(["s2", "s1", "s2"]),
                                                     au_ids=(4,))
    assert list(per_subject) == ["s1", "s2"]
    assert (per_subject["s1"][0].n, per_subject["s1"][0].mean) == (1, pytest.approx(0.4))
    assert (per_subject["s2"][0].n, per_subject["s2"][0].mean) == (2, pytest.approx(0.55))
    with pytest.raises(ValueError, match="subjects"):
        localisation.summarise_per_subject(values, selected, defined, np.array(["s1", "s2"]), au_ids=(4,))


@pytest.mark.slow  # compiles the metrics for many shapes: > 5 s on 2 cores
def test_a_selection_of_metrics_computes_those_alone_with_the_same_values():
    rng = np.random.default_rng(3)
    heatmaps = rng.standard_normal((8, 3, 6, 6)).astype(np.float32)
    masks = rng.random((3, 8, 6, 6)) < 0.4
    everything = localisation.localisation_metrics(heatmaps, masks, top_k=4)
    for names in (("mu",), ("roc_auc", "mu")):
        chosen = localisation.localisation_metrics(heatmaps, masks, top_k=4, names=names)
        assert set(chosen.values) == set(chosen.defined) == set(names)
        for name in names:
            np.testing.assert_array_equal(chosen.values[name], everything.values[name])
            np.testing.assert_array_equal(chosen.defined[name], everything.defined[name])
    chunked = localisation.localisation_metrics_chunked(heatmaps, masks, chunk_size=2, top_k=4, names=("mu",))
    assert set(chunked.values) == {"mu"}
    np.testing.assert_allclose(chunked.values["mu"], everything.values["mu"], rtol=float32_ratio_rtol(6 * 6))
    with pytest.raises(ValueError, match="'accuracy'"):
        localisation.localisation_metrics(heatmaps, masks, names=("mu", "accuracy"))


def reference_rank_scores(heatmap, region, top_k):
    """Rank metrics of one pair by brute force in float64: the module docstring's formulas, ties as expectations."""
    relevance, inside = heatmap.reshape(-1).astype(np.float64), region.reshape(-1)

    def hits(k):
        threshold = np.sort(relevance)[relevance.size - k]
        above, tied = relevance > threshold, relevance == threshold
        return (above & inside).sum() + (k - above.sum()) * (tied & inside).sum() / tied.sum()

    wins = relevance[inside][:, None] - relevance[~inside][None, :]
    n_inside = inside.sum()
    return {"rank_accuracy": hits(n_inside) / n_inside, "pointing_game": hits(1),
            "top_k_intersection": hits(top_k) / top_k, "roc_auc": ((wins > 0) + (wins == 0) / 2).mean()}


def assert_rank_scores_match_reference(heatmaps, masks, top_k):
    scores = localisation.localisation_metrics(heatmaps, masks, top_k=top_k)
    for i in range(masks.shape[0]):
        for a in range(masks.shape[1]):
            expected = reference_rank_scores(heatmaps[a, i], masks[i, a], top_k)
            for name, value in expected.items():
                assert scores.defined[name][i, a]
                assert float(scores.values[name][i, a]) == pytest.approx(value, rel=1e-6, abs=1e-7), (name, i, a)


@pytest.mark.slow  # compiles the metrics for many shapes: > 5 s on 2 cores
@pytest.mark.parametrize("values", [(-1.0, 0.0, 1.0, 2.0), (0.0, 3.0), (-0.0, 0.0, 1.0)])
def test_many_ties_match_brute_force(values):
    rng = np.random.default_rng(7)
    heatmaps = rng.choice(np.array(values, np.float32), size=(2, 5, 6, 7))
    heatmaps[:, :, 0, 0] = 3.0  # every pair has positive relevance
    masks = rng.random((5, 2, 6, 7)) < rng.uniform(0.05, 0.8, size=(5, 2, 1, 1))
    masks[..., 0, 1], masks[..., 0, 2] = True, False  # 0 < M < P
    for top_k in (1, 5, 41):  # 41 of 42 pixels: k larger than every region here but the largest
        assert_rank_scores_match_reference(heatmaps, masks, top_k)


def test_constant_heatmaps_score_the_region_share():
    masks = np.zeros((1, 2, 4, 4), bool)
    masks[0, 0, :1] = True  # M = 4
    masks[0, 1, :3] = True  # M = 12, larger than k
    scores, _ = localisation.localisation_metrics(np.full((2, 1, 4, 4), 0.5, np.float32), masks, top_k=6)
    for name in ("rank_accuracy", "pointing_game", "top_k_intersection"):
        np.testing.assert_allclose(scores[name][0], [4 / 16, 12 / 16], rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(scores["roc_auc"][0], [0.5, 0.5], rtol=1e-6)


@pytest.mark.slow  # compiles the metrics for many shapes: > 5 s on 2 cores
def test_heatmaps_too_wide_to_pack_use_the_two_operand_sort_with_the_same_results():
    rng = np.random.default_rng(8)
    heatmaps, masks = random_pairs(rng, num_aus=2, n=3, height=6, width=5)
    wide = heatmaps.copy()
    wide[1, 2] *= np.float32(10.0) ** rng.integers(-30, 30, size=(6, 5))  # 1e-30 to 1e30 on both sides of zero
    keys = localisation._ordered_keys(jax.numpy.asarray(wide.reshape(2 * 3, 30)))
    assert not localisation._compressed_keys(keys[5])[1] and localisation._compressed_keys(keys[0])[1]
    assert_rank_scores_match_reference(wide, masks, top_k=4)
    packed = localisation.localisation_metrics(heatmaps, masks, top_k=4)
    two_operands = localisation.localisation_metrics(wide, masks, top_k=4)
    for name in localisation.RANK_METRICS:  # the pairs that both batches share score the same under either sort
        np.testing.assert_array_equal(np.asarray(packed.values[name])[:2], np.asarray(two_operands.values[name])[:2])


def test_pairs_per_second_is_positive():
    heatmaps, masks = random_pairs(np.random.default_rng(3), num_aus=2, n=2, height=4, width=4)
    assert localisation.pairs_per_second(heatmaps, masks, repeats=2) > 0


# --- Agreement with Quantus (test-only dependency; see tests/requirements.txt) ---------------------------------

@pytest.fixture(scope="module")
def quantus():
    return pytest.importorskip(
            "quantus", reason="quantus is not installed: pip install pandas scikit-image scikit-learn cachetools && "
                              "pip install --no-deps quantus==0.6.0")


def quantus_scores(quantus, metric, heatmaps, masks):
    """Quantus' scores for our pairs, flattened in (n, au) order; no abs, no normalisation."""
    num_aus, n, height, width = heatmaps.shape
    attributions = heatmaps.transpose(1, 0, 2, 3).reshape(n * num_aus, 1, height, width)
    segmentations = masks.reshape(n * num_aus, 1, height, width).astype(np.float32)
    scores = metric(model=None, x_batch=np.zeros_like(attributions), y_batch=np.zeros(n * num_aus, int),
                    a_batch=attributions, s_batch=segmentations, channel_first=True)
    return np.asarray(scores, np.float64)


@pytest.mark.slow  # a reference library (Quantus)
def test_metrics_agree_with_quantus(quantus):
    rng = np.random.default_rng(4)
    heatmaps, masks = random_pairs(rng, num_aus=3, n=8, height=10, width=12, offset=0.3)
    top_k = 15
    ours = localisation.localisation_metrics(heatmaps, masks, top_k=top_k)
    ours = {name: np.asarray(ours.values[name]).reshape(-1) for name in localisation.METRIC_NAMES} | {
            "mass_defined": np.asarray(ours.defined["mass_accuracy"]).reshape(-1)}
    options = {"abs": False, "normalise": False, "disable_warnings": True}
    references = {
            # Quantus divides by (total + 1e-9); negligible at these magnitudes.
            "mu": quantus.AttributionLocalisation(positive_attributions=True, weighted=False, **options),
            "rank_accuracy": quantus.RelevanceRankAccuracy(**options),
            "pointing_game": quantus.PointingGame(**options),
            "top_k_intersection": quantus.TopKIntersection(k=top_k, **options),
            "roc_auc": quantus.AUC(**options),
    }
    for name, metric in references.items():
        np.testing.assert_allclose(ours[name], quantus_scores(quantus, metric, heatmaps, masks), rtol=1e-5,
                                   atol=1e-6, err_msg=name)
    # Quantus returns a ratio for every pair; ours leaves signed totals <= 0 undefined, so compare where defined.
    mass = quantus_scores(quantus, quantus.RelevanceMassAccuracy(**options), heatmaps, masks)
    assert ours["mass_defined"].sum() >= 20
    np.testing.assert_allclose(ours["mass_accuracy"][ours["mass_defined"]], mass[ours["mass_defined"]], rtol=1e-4)


@pytest.mark.slow  # a reference library (Quantus)
def test_weighted_mu_follows_kohlbrenner_not_quantus(quantus):
    # Quantus 0.6.0 AttributionLocalisation(weighted=True) multiplies μ by `size_bbox / x_batch[2:].size`: region
    # size over the size of the *batch minus its first two samples*, i.e. neither the image size nor the inverse
    # weighting its docstring cites (Kohlbrenner et al. 2020: μ_w = μ · S_image / S_region). We follow the paper.
    rng = np.random.default_rng(5)
    heatmaps, masks = random_pairs(rng, num_aus=2, n=4, height=9, width=7)
    scores = localisation.localisation_metrics(heatmaps, masks)
    options = {"abs": False, "normalise": False, "disable_warnings": True, "positive_attributions": True}
    mu = quantus_scores(quantus, quantus.AttributionLocalisation(weighted=False, **options), heatmaps, masks)
    region_pixels = masks.reshape(4 * 2, -1).sum(-1)
    np.testing.assert_allclose(np.asarray(scores.values["mu_weighted"]).reshape(-1), mu * 9 * 7 / region_pixels,
                               rtol=1e-5)


@pytest.mark.slow  # a reference library (Quantus)
def test_ties_agree_with_quantus_where_it_is_tie_free(quantus):
    # Integer heatmaps: many ties. Quantus' AUC (sklearn's ROC curve, trapezoids) counts ties as 1/2 like ours.
    # Rank accuracy, top-k and the pointing game are not compared here: Quantus breaks ties by np.argsort order
    # (rank, top-k) or counts any tied maximum in the region as a hit (pointing game); ours take the expectation
    # over tie orders, checked by hand in the tests above.
    rng = np.random.default_rng(6)
    heatmaps, masks = random_pairs(rng, num_aus=2, n=6, height=8, width=8)
    heatmaps = np.round(heatmaps * 1.5).astype(np.float32)
    scores = localisation.localisation_metrics(heatmaps, masks)
    assert np.asarray(scores.defined["roc_auc"]).all()
    auc = quantus_scores(quantus, quantus.AUC(abs=False, normalise=False, disable_warnings=True), heatmaps, masks)
    np.testing.assert_allclose(np.asarray(scores.values["roc_auc"]).reshape(-1), auc, rtol=1e-5, atol=1e-6)
