"""Shared test helpers: tiny models and small learnable face records."""

import os
import subprocess
import sys

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


def run_python(code: str, env_extra: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (for XLA flags that must be set before jax is imported)."""
    env = {**os.environ, "PYTHONPATH": REPO, **(env_extra or {})}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode:
        pytest.fail(f"subprocess failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result
