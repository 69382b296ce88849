"""The strategies a model uses for one AU (SpRAy: Lapuschkin et al. 2019, "Unmasking Clever Hans predictors and
assessing what machines really learn"): the heatmaps of its correctly predicted images, downsampled and clustered by
spectral clustering, the number of clusters read from the eigengap (`results/strategies_<role>.json`).

Features: each pixel heatmap is summed over blocks to `size` x `size` (`downsample`, on the device in the explain
stage; 112x112 -> 28x28 by default) and scaled to unit L2 norm, so that images are compared by where their relevance
lies, not by how much there is. Affinity W: the symmetrised k-nearest-neighbour graph of the features (Euclidean;
w_ij = 1 where i is among j's k nearest or j among i's, else 0). Number of clusters: with λ₁ ≤ λ₂ ≤ … the eigenvalues
of W's normalised Laplacian L = I − D^{-½} W D^{-½}, k = argmax_{1 ≤ k ≤ k_max} (λ_{k+1} − λ_k): a graph of k weakly
joined groups has k eigenvalues near 0 and a gap after them. Clustering: scikit-learn's `SpectralClustering` on W,
seeded. Cluster ids are ordered by size, largest first (0).
"""

import dataclasses
import warnings

import jax.numpy as jnp
import numpy as np
from scipy import sparse
from scipy.sparse import csgraph, linalg as sparse_linalg
from sklearn import cluster, neighbors

_DENSE_UP_TO = 400  # images: up to this many, the Laplacian's eigenvalues are computed densely (exact, fast enough)


def downsample(heatmaps, size: int):
    """(..., H, W) pixel heatmaps -> (..., size, size) sums over (H/size) x (W/size) blocks; H and W multiples of
    `size` (jax.numpy, for the explain stage's jitted function)."""
    *lead, height, width = heatmaps.shape
    if height % size or width % size:
        raise ValueError(f"strategy heatmaps of {size}x{size}: {height}x{width} heatmaps are not a multiple of it")
    blocks = heatmaps.reshape(*lead, size, height // size, size, width // size)
    return jnp.sum(blocks, axis=(-3, -1))


def features(heatmaps: np.ndarray) -> np.ndarray:
    """(m, h, w) heatmaps -> (m, h·w) float64 rows of unit L2 norm (all-zero rows stay zero)."""
    flat = np.asarray(heatmaps, np.float64).reshape(len(heatmaps), -1)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return flat / np.where(norms > 0, norms, 1.0)


def affinity(points: np.ndarray, neighbours: int) -> sparse.csr_matrix:
    """(m, d) -> sparse (m, m) float64 symmetrised k-nearest-neighbour connectivity (zero diagonal), k capped at
    m − 1."""
    k = min(neighbours, len(points) - 1)
    graph = neighbors.kneighbors_graph(points, k, mode="connectivity", include_self=False)
    return graph.maximum(graph.T).tocsr()


def laplacian_eigenvalues(weights, count: int) -> np.ndarray:
    """The `count` smallest eigenvalues, ascending, of the normalised Laplacian of the sparse (m, m) symmetric
    affinity `weights`: all of them densely for up to `_DENSE_UP_TO` images, else by ARPACK as 1 − the largest
    eigenvalues of D^{-½} W D^{-½}."""
    laplacian = csgraph.laplacian(weights, normed=True)
    if weights.shape[0] <= _DENSE_UP_TO or count >= weights.shape[0] - 1:
        return np.linalg.eigvalsh(laplacian.toarray())[:count]
    adjacency = sparse.identity(weights.shape[0], format="csr") - laplacian
    largest = sparse_linalg.eigsh(adjacency, k=count, which="LA", return_eigenvectors=False,
                                  v0=np.ones(weights.shape[0]))
    return np.sort(1.0 - largest)


def eigengap_count(eigenvalues: np.ndarray, max_clusters: int) -> int:
    """k in [1, max_clusters] (capped at m − 1) maximising λ_{k+1} − λ_k of ascending `eigenvalues` (at least
    min(max_clusters + 1, m) of the smallest)."""
    top = min(max_clusters, len(eigenvalues) - 1)
    if top < 1:
        return 1
    return int(np.argmax(np.diff(eigenvalues[: top + 1]))) + 1


@dataclasses.dataclass(frozen=True)
class Clustering:
    """One AU's strategies: `labels` (m,) cluster id per image (0 the largest cluster), `count` clusters,
    `eigenvalues` (min(max_clusters + 1, m),) the smallest Laplacian eigenvalues the count was read from (empty
    for fewer than `min_images` images)."""

    labels: np.ndarray
    count: int
    eigenvalues: np.ndarray


def cluster_heatmaps(heatmaps: np.ndarray, max_clusters: int, neighbours: int, seed: int,
                     min_images: int) -> Clustering:
    """Spectral clustering of (m, h, w) heatmaps (module docstring); fewer than `min_images` images form one
    cluster."""
    m = len(heatmaps)
    if m < max(min_images, 3):
        return Clustering(np.zeros(m, np.int64), 1 if m else 0, np.zeros(0))
    weights = affinity(features(heatmaps), neighbours)
    eigenvalues = laplacian_eigenvalues(weights, min(max_clusters + 1, m))
    count = eigengap_count(eigenvalues, max_clusters)
    if count == 1:
        labels = np.zeros(m, np.int64)
    else:
        with warnings.catch_warnings():  # groups with no edge between them are what this looks for
            warnings.filterwarnings("ignore", message="Graph is not fully connected")
            labels = cluster.SpectralClustering(count, affinity="precomputed", random_state=seed,
                                                assign_labels="cluster_qr").fit_predict(weights)
    return Clustering(_by_size(labels), count, eigenvalues)


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Cluster ids renumbered by size, largest first (ties: the lower old id first); empty ids dropped."""
    ids, sizes = np.unique(labels, return_counts=True)  # ids ascending
    rank = np.empty(len(ids), np.int64)
    rank[np.lexsort((ids, -sizes))] = np.arange(len(ids))
    return rank[np.searchsorted(ids, labels)]


@dataclasses.dataclass(frozen=True)
class AUStrategies:
    """One AU's clusters over a role's images: `index` (m,) the clustered images (rows of the role's records),
    `clustering` of them, `mean_heatmaps` (count, h, w) each cluster's mean of the unit-norm heatmaps, `mu` (count,)
    each cluster's mean μ."""

    au: int
    index: np.ndarray
    clustering: Clustering
    mean_heatmaps: np.ndarray
    mu: np.ndarray

    def members(self, cluster_id: int) -> np.ndarray:
        """Rows of the role's records in cluster `cluster_id`."""
        return self.index[self.clustering.labels == cluster_id]


def role_strategies(heatmaps: np.ndarray, used: np.ndarray, mu: np.ndarray, aus, max_clusters: int, neighbours: int,
                    seed: int, min_images: int) -> list[AUStrategies]:
    """Strategies of every AU of `aus` with at least one used image.

    heatmaps: (A, n, h, w) downsampled heatmaps (`downsample`); used: (n, A) bool, the pairs to cluster (correctly
    predicted, μ defined); mu: (n, A) μ.
    """
    found = []
    for a, au in enumerate(aus):
        index = np.flatnonzero(used[:, a])
        if not len(index):
            continue
        clustering = cluster_heatmaps(heatmaps[a, index], max_clusters, neighbours, seed, min_images)
        unit = features(heatmaps[a, index]).reshape(len(index), *heatmaps.shape[2:])
        ids = range(clustering.count)
        found.append(AUStrategies(
                au, index, clustering, np.stack([unit[clustering.labels == c].mean(axis=0) for c in ids]),
                np.array([mu[index[clustering.labels == c], a].mean() for c in ids], np.float64)))
    return found


def strategies_record(role: str, composite: str, sources: np.ndarray, strategies: list[AUStrategies]) -> dict:
    """The `results/strategies_<role>.json` form: {"role", "composite", "aus": {"AU4": {"clusters": [{"id", "size",
    "mu"}], "images": [{"source", "cluster"}]}}}; `sources` (n,) str of the role's records."""
    return {"role": role, "composite": composite, "aus": {
            f"AU{s.au}": {
                    "clusters": [{"id": c, "size": int(np.sum(s.clustering.labels == c)), "mu": float(s.mu[c])}
                                 for c in range(s.clustering.count)],
                    "images": [{"source": str(sources[i]), "cluster": int(label)}
                               for i, label in zip(s.index, s.clustering.labels)],
            } for s in strategies}}
