"""Data stage: face records from the synthetic generator, real datasets and manifests."""

import os


def available_cores() -> int:
    """CPU cores this process may use (the default worker count of the data stage's process pools)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
