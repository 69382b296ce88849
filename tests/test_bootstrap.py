"""Bootstrap intervals over subjects: they hold the estimate, shrink with more subjects, follow the seed."""

import numpy as np
import pytest

from aujax.analysis import bootstrap

AUS = (4, 6, 25)


def _predictions(subjects: int, per_subject: int, seed: int = 0):
    """Labels, noisy predictions (n, 3) and subject ids of `subjects` subjects, each with its own accuracy."""
    rng = np.random.default_rng(seed)
    subject = np.repeat([f"S{k:03d}" for k in range(subjects)], per_subject)
    labels = rng.uniform(size=(len(subject), len(AUS))) < 0.4
    flip = rng.uniform(0.05, 0.4, subjects)[np.repeat(np.arange(subjects), per_subject)]
    predictions = labels ^ (rng.uniform(size=labels.shape) < flip[:, None])
    return labels.astype(np.uint8), predictions.astype(np.uint8), subject


def _point_f1(labels, predictions):
    labels, predictions = labels.astype(bool), predictions.astype(bool)
    return 2 * (labels & predictions).sum(0) / (labels.sum(0) + predictions.sum(0))


def test_f1_intervals_hold_the_estimate_and_shrink_with_more_subjects():
    widths = []
    for subjects in (8, 80):
        labels, predictions, subject = _predictions(subjects, 20)
        low, high = bootstrap.f1_intervals(labels, predictions, subject, samples=400, seed=0)
        point = _point_f1(labels, predictions)
        assert np.all((low <= point) & (point <= high))
        widths.append(np.mean(high - low))
    assert widths[1] < 0.6 * widths[0]


def test_intervals_are_reproducible_from_the_seed():
    labels, predictions, subject = _predictions(10, 15)
    first = bootstrap.f1_intervals(labels, predictions, subject, samples=200, seed=3)
    again = bootstrap.f1_intervals(labels, predictions, subject, samples=200, seed=3)
    other = bootstrap.f1_intervals(labels, predictions, subject, samples=200, seed=4)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_subjects_not_images_are_resampled():
    # two subjects, one always right and one always wrong: a sample holds each subject's images together
    subject = np.repeat(["A", "B"], 50)
    _, weights = bootstrap.subject_weights(subject, 1000, seed=0)
    assert weights.shape == (1000, 2) and np.all(weights.sum(axis=1) == 2)
    values = np.r_[np.ones(50), np.zeros(50)][:, None]
    low, high = bootstrap.mean_intervals(values, np.ones((100, 1), bool), subject, 1000, seed=0)
    assert (low[0], high[0]) == (0.0, 1.0)  # samples of A twice or B twice; an image bootstrap would give ~0.4-0.6


def test_mean_intervals_hold_the_mean_and_shrink():
    rng = np.random.default_rng(1)
    widths = []
    for subjects in (6, 60):
        subject = np.repeat(np.arange(subjects), 10)
        mu = np.clip(rng.normal(0.3, 0.1, subjects)[subject][:, None] + rng.normal(0, 0.05, (len(subject), 2)), 0, 1)
        used = rng.uniform(size=mu.shape) < 0.7
        low, high = bootstrap.mean_intervals(mu, used, subject, 500, seed=0)
        mean = np.array([mu[used[:, a], a].mean() for a in range(2)])
        assert np.all((low <= mean) & (mean <= high))
        widths.append(np.mean(high - low))
    assert widths[1] < 0.6 * widths[0]


def test_undefined_statistics_give_nan_intervals():
    labels = np.zeros((20, 2), np.uint8)
    labels[:3, 0] = 1
    subject = np.repeat(["A", "B", "C", "D"], 5)
    low, high = bootstrap.f1_intervals(labels, labels, subject, 100, seed=0, min_support=5)
    assert np.all(np.isnan(low)) and np.all(np.isnan(high))
    low, _ = bootstrap.mean_intervals(np.ones((20, 2)), np.zeros((20, 2), bool), subject, 100, seed=0)
    assert np.all(np.isnan(low))
    one = np.full(20, "A")  # one subject resampled is always itself: no interval
    low, _ = bootstrap.mean_intervals(np.ones((20, 2)), np.ones((20, 2), bool), one, 100, seed=0)
    assert np.all(np.isnan(low))
    low, _ = bootstrap.f1_intervals(np.ones((20, 2)), np.ones((20, 2)), one, 100, seed=0)
    assert np.all(np.isnan(low))
    with pytest.raises(ValueError, match="bootstrap"):
        bootstrap.subject_weights(subject, 0, seed=0)


def test_paired_difference_sees_a_small_consistent_difference():
    rng = np.random.default_rng(2)
    subject = np.repeat(np.arange(20), 10)
    mu_a = np.clip(rng.normal(0.3, 0.15, (200, 2)), 0, 1)
    mu_b = mu_a.copy()
    mu_b[:, 0] += 0.01  # composite b a little higher on every image for AU 0, the same for AU 1
    used = np.ones((200, 2), bool)
    difference = bootstrap.paired_difference(mu_a, mu_b, used, used, subject, 500, seed=0)
    np.testing.assert_allclose(difference.difference, [-0.01, 0.0], atol=1e-12)
    assert difference.real.tolist() == [True, False]
    # unpaired, the two means' intervals overlap: the difference is far smaller than either's uncertainty
    low_a, high_a = bootstrap.mean_intervals(mu_a, used, subject, 500, seed=0)
    assert high_a[0] - low_a[0] > 3 * 0.01
    np.testing.assert_array_equal(difference.n, [200, 200])
