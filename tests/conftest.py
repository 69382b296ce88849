"""Shared test helpers: tiny models and small learnable face records."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from aujax import facs
from aujax.data.records import FaceRecords

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_WIDTHS = (4, 8, 8, 8)


def patch_records(num_subjects: int, per_subject: int, seed: int, prefix: str, name: str = "patches") -> FaceRecords:
    """Records whose AU a is a bright patch at a fixed place: easy to learn, so tests of the machinery stay fast."""
    rng = np.random.default_rng(seed)
    n = num_subjects * per_subject
    labels = (rng.random((n, facs.NUM_AUS)) < 0.35).astype(np.uint8)
    labels[labels.sum(1) == 0, rng.integers(0, facs.NUM_AUS)] = 1
    image = rng.integers(0, 60, (n, facs.IMAGE_SIZE, facs.IMAGE_SIZE, 3)).astype(np.uint8)
    for a in range(facs.NUM_AUS):
        row, col = divmod(a, 4)
        image[labels[:, a] == 1, 10 + row * 50: 40 + row * 50, 5 + col * 27: 25 + col * 27] += 150
    landmarks = rng.uniform(0, facs.IMAGE_SIZE, (n, facs.NUM_LANDMARKS, 2)).astype(np.float32)
    subject = np.array([f"{prefix}{i // per_subject:03d}" for i in range(n)])
    return FaceRecords(image, landmarks, labels, labels.astype(np.float32), subject,
                       np.array([f"{name}:{i}" for i in range(n)]), name)


# Tolerances for numbers computed by two different programs or layouts (1 vs N devices, 1 vs 2 processes, other
# batch sizes): each says what error it allows for, and why a real defect would exceed it by far.

# Parameters, batch statistics and momentum after a few train steps on two layouts, per leaf in L2 relative to the
# leaf (`tree_relative_difference`): reordered float32 sums moved them by <= 1.0e-5 here (BN-bias gradients are sums
# that cancel, which magnifies their rounding); one image swapped in one batch moves them by >= 3e-2.
CROSS_LAYOUT_REL = 1e-3


def tree_relative_difference(a, b) -> float:
    """The largest ||a_leaf - b_leaf||_2 / ||a_leaf||_2 over the leaves of two pytrees of the same structure."""
    worst = 0.0
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        worst = max(worst, float(np.linalg.norm(x - y) / max(np.linalg.norm(x), np.finfo(np.float32).tiny)))
    return worst


def float32_ratio_rtol(terms: int) -> float:
    """Worst-case relative error of a ratio of two float32 sums of `terms` terms each, when two programs add them in
    different orders (2 (terms - 1) eps for the two sums): the bound for localisation metrics (μ and kin) computed
    batched against single, jitted against eager, chunked against whole. A wrong pixel, mask or AU moves such a ratio
    by about 1 / terms or more, far beyond it."""
    return 2 * terms * float(np.finfo(np.float32).eps)


def run_python(code: str, env_extra: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (for XLA flags that must be set before jax is imported)."""
    env = {**os.environ, "PYTHONPATH": REPO, **(env_extra or {})}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode:
        pytest.fail(f"subprocess failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result
