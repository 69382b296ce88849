"""Tests for experiments/benchmark.py on the CPU, run as its users run it (`python -m experiments.benchmark`): a part
runs in its own process and lands in the table; a failed part is named with its error and the figures it did not
give are marked n/a; unknown parts are refused. (Speed itself is never asserted: that is the benchmark's job, on a
GPU.)"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.support import REPO


def _benchmark(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.benchmark", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=None if env is None else {**os.environ, **env})


def test_unknown_part_is_refused_by_name(tmp_path):
    refused = _benchmark(f"--out={tmp_path}", "--parts=train_jax,warp_drive")
    assert refused.returncode == 2, refused.stderr
    assert "--parts: unknown warp_drive; expected some of train_jax," in refused.stderr
    assert not (tmp_path / "benchmark.json").exists()


def test_unknown_model_is_refused_by_name(tmp_path):
    refused = _benchmark(f"--out={tmp_path}", "--parts=lrp_jax", "--model=resnet34")
    assert refused.returncode == 2, refused.stderr
    assert "--model=resnet34: expected one of resnet18, resnet50" in refused.stderr


@pytest.mark.slow  # a full-width ResNet-50 exported, compiled and explained by aujax, then by Zennit (35 s)
def test_resnet50_is_one_network_explained_by_aujax_and_zennit_side_by_side(tmp_path):
    # One torch thread: two spinning OpenMP threads on a loaded 2-core machine slow torch 20-fold.
    completed = _benchmark(f"--out={tmp_path}", "--parts=lrp_jax,lrp_zennit", "--model=resnet50", "--batch_size=1",
                           "--steps=1", "--repeats=1", env={"OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stdout + completed.stderr
    with open(tmp_path / "benchmark.json") as f:
        results = json.load(f)
    ours, zennit = results["lrp_jax"], results["lrp_zennit"]
    assert ours["model"] == zennit["model"] == "resnet50"
    assert set(ours) >= {"lrp_paper_all_default"} and "gxi_all_default" not in ours  # LRP only at this size
    assert ours["logits_relative_difference_to_torch"] <= 1e-4
    logits, reference = (np.asarray(part["probe_logits"]) for part in (ours, zennit))
    assert logits.shape == (2, 8)
    difference = np.abs(logits - reference).max() / np.abs(reference).max()
    assert difference <= 1e-4
    rate, zennit_rate = ours["lrp_paper_all_default"]["images_per_s"], zennit["zennit_all"]["images_per_s"]
    assert rate > 0 and zennit_rate > 0 and zennit["zennit_one"]["images_per_s"] > 0
    table = (tmp_path / "benchmark.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert f"| {rate / zennit_rate:.2f}x |" in rows["aujax LRP / Zennit, all 8 AUs"]
    assert f"| resnet50; {difference:.1e} |" in rows["network of the LRP parts (`--model`); aujax vs Zennit's "
                                                     "logits, max relative difference"]


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
    network_row = rows["network of the LRP parts (`--model`); aujax vs Zennit's logits, max relative difference"]
    assert "| resnet18; different random weights |" in network_row  # the default
    assert "error" in results["protocol"]
    failed = f"- part `protocol` failed: {results['protocol']['error']}"
    assert failed in table and failed.startswith("- part `protocol` failed: exit 1; ") and "FileNotFoundError" in failed
