"""SpRAy strategies: spectral clustering of heatmaps, the number of clusters from the eigengap."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.sparse import csgraph

from aujax.analysis import strategies

SETTINGS = dict(max_clusters=6, neighbours=8, seed=0, min_images=10)


def _two_patterns(count_a: int, count_b: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(m, 28, 28) noisy heatmaps of two patterns (brows; a corner mark) with random scales, and which is which."""
    rng = np.random.default_rng(seed)
    brows, corner = np.zeros((28, 28)), np.zeros((28, 28))
    brows[6:9, 5:23] = 1.0
    corner[1:4, 1:4] = 1.0
    truth = np.r_[np.zeros(count_a, int), np.ones(count_b, int)]
    rng.shuffle(truth)
    base = np.where(truth[:, None, None] == 0, brows, corner + 0.3 * brows)
    heatmaps = rng.uniform(0.5, 5.0, (len(truth), 1, 1)) * (base + 0.15 * rng.normal(size=base.shape))
    return heatmaps.astype(np.float32), truth


def test_two_known_patterns_give_two_clusters_assigned_correctly():
    heatmaps, truth = _two_patterns(40, 25)
    found = strategies.cluster_heatmaps(heatmaps, **SETTINGS)
    assert found.count == 2
    # the larger pattern is cluster 0, and every image is in its pattern's cluster
    np.testing.assert_array_equal(found.labels, truth)
    assert found.eigenvalues[1] < 1e-6 < found.eigenvalues[2]  # two components: two zero eigenvalues


def test_one_pattern_gives_one_cluster():
    rng = np.random.default_rng(3)
    heatmaps = np.ones((30, 8, 8)) + 0.05 * rng.normal(size=(30, 8, 8))
    assert strategies.cluster_heatmaps(heatmaps, **SETTINGS).count == 1


def test_three_patterns_and_few_images():
    rng = np.random.default_rng(1)
    patterns = np.eye(3)[:, :, None] * np.ones((3, 3, 4))  # three rows of a 3x4 map
    truth = np.repeat([0, 1, 2], [20, 15, 10])
    heatmaps = patterns[truth] + 0.05 * rng.normal(size=(len(truth), 3, 4))
    found = strategies.cluster_heatmaps(heatmaps, **SETTINGS)
    assert found.count == 3
    np.testing.assert_array_equal(found.labels, truth)
    few = strategies.cluster_heatmaps(heatmaps[:5], **SETTINGS)
    assert few.count == 1 and np.all(few.labels == 0)


def test_eigengap_count():
    assert strategies.eigengap_count(np.array([0.0, 0.0, 0.1, 0.9, 1.0]), 4) == 3
    assert strategies.eigengap_count(np.array([0.0, 0.0, 0.1, 0.9, 1.0]), 2) == 2
    assert strategies.eigengap_count(np.array([0.0, 0.5, 0.6, 0.7]), 3) == 1
    assert strategies.eigengap_count(np.array([0.0]), 4) == 1


def test_downsample_sums_blocks():
    heatmaps = jnp.arange(2 * 8 * 8, dtype=jnp.float32).reshape(2, 1, 8, 8)
    small = np.asarray(strategies.downsample(heatmaps, 2))
    assert small.shape == (2, 1, 2, 2)
    np.testing.assert_allclose(small[0, 0, 0, 0], np.asarray(heatmaps)[0, 0, :4, :4].sum())
    np.testing.assert_allclose(small.sum(axis=(-2, -1)), np.asarray(heatmaps).sum(axis=(-2, -1)))
    with pytest.raises(ValueError, match="multiple"):
        strategies.downsample(heatmaps, 3)


def test_role_strategies_and_their_record():
    heatmaps, truth = _two_patterns(30, 20, seed=2)
    n = len(truth)
    per_au = np.stack([heatmaps, heatmaps[::-1]])  # (2 AUs, n, 28, 28)
    used = np.ones((n, 2), bool)
    used[:5, 1] = False
    mu = np.stack([truth * 0.5 + 0.1, np.full(n, 0.3)], axis=1)
    found = strategies.role_strategies(per_au, used, mu, (4, 25), **SETTINGS)
    assert [s.au for s in found] == [4, 25]
    np.testing.assert_allclose(found[0].mu, [0.1, 0.6])
    assert found[0].mean_heatmaps.shape == (2, 28, 28)
    np.testing.assert_array_equal(found[0].members(1), np.flatnonzero(truth == 1))
    sources = np.array([f"img{i}" for i in range(n)])
    record = strategies.strategies_record("cv", "paper", sources, found)
    assert record["role"] == "cv" and record["composite"] == "paper"
    au4 = record["aus"]["AU4"]
    assert au4["clusters"] == [{"id": 0, "size": 30, "mu": pytest.approx(0.1)},
                               {"id": 1, "size": 20, "mu": pytest.approx(0.6)}]
    assert au4["images"][0] == {"source": "img0", "cluster": int(truth[0])}
    assert len(record["aus"]["AU25"]["images"]) == n - 5


def test_many_images_take_the_sparse_eigensolver_and_agree_with_the_dense_one():
    heatmaps, truth = _two_patterns(300, 200, seed=4)
    weights = strategies.affinity(strategies.features(heatmaps), 8)
    dense = np.linalg.eigvalsh(csgraph.laplacian(weights.toarray(), normed=True))[:7]
    np.testing.assert_allclose(strategies.laplacian_eigenvalues(weights, 7), dense, atol=1e-6)
    found = strategies.cluster_heatmaps(heatmaps, **SETTINGS)
    assert found.count == 2
    np.testing.assert_array_equal(found.labels, truth)
