"""Tests for experiments/benchmark.py on the CPU, run as its users run it (`python -m experiments.benchmark`): a part
runs in its own process and lands in the table; a failed part is named with its error and the figures it did not
give are marked n/a; unknown parts are refused. (Speed itself is never asserted: that is the benchmark's job, on a
GPU.)"""

import json
import subprocess
import sys

import pytest

from tests.support import REPO


def _benchmark(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.benchmark", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def test_unknown_part_is_refused_by_name(tmp_path):
    refused = _benchmark(f"--out={tmp_path}", "--parts=train_jax,warp_drive")
    assert refused.returncode == 2, refused.stderr
    assert "--parts: unknown warp_drive; expected some of train_jax," in refused.stderr
    assert not (tmp_path / "benchmark.json").exists()


@pytest.mark.slow  # trains a few steps in a second process
def test_a_part_runs_in_its_own_process_and_lands_in_the_table_and_a_failed_part_is_named(tmp_path):
    completed = _benchmark(f"--out={tmp_path}", "--parts=train_jax,protocol", "--widths=tiny", "--batch_size=8",
                           "--train_images=32", "--steps=2", "--repeats=2", "--protocol_config=no/such_config.py")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    with open(tmp_path / "benchmark.json") as f:
        results = json.load(f)
    figures = results["train_jax"]
    assert figures["images_per_s"] > 0 and figures["parameters"] > 0
    assert results["device"] == figures["device"]
    table = (tmp_path / "benchmark.md").read_text()
    assert table in completed.stdout and table.startswith(f"Device: {figures['device']}")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert f"| {figures['images_per_s']:,.0f} |" in rows["training images/s, aujax (batch 8, fp32, input pipeline "
                                                        "included)"]
    peak = figures["peak_bytes"]  # None where the device keeps no memory statistics (XLA's CPU)
    assert ("| n/a |" if peak is None else f"| {peak / 2 ** 30:.2f} GiB |") in rows["peak device memory, aujax training"]
    assert "| n/a / n/a |" in rows["Zennit EpsilonPlusFlat images/s, all 8 AUs / one AU"]  # a part not run
    assert "error" in results["protocol"]
    failed = f"- part `protocol` failed: {results['protocol']['error']}"
    assert failed in table and failed.startswith("- part `protocol` failed: exit 1; ") and "FileNotFoundError" in failed
