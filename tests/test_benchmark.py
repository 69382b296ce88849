"""Tests for experiments/benchmark.py on the CPU: a part runs in its own process and lands in the table; a failed
part is named with its error; unknown parts are refused. (Speed itself is never asserted: that is the benchmark's
job, on a GPU.)"""

import json
import os
import subprocess
import sys

import pytest

from experiments import benchmark

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_table_names_failed_parts_and_marks_missing_figures():
    args = benchmark.parse_args(["--parts=train_jax,lrp_zennit"])
    results = {"device": "Test GPU", "train_jax": {"images_per_s": 1234.4, "peak_bytes": 2 ** 31},
               "lrp_zennit": {"error": "exit 1; ModuleNotFoundError: No module named 'zennit'"}}
    table = benchmark.markdown_table(results, args)
    assert table.startswith("Device: Test GPU")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert "| 1,234 |" in rows["training images/s, aujax (batch 256, fp32, input pipeline included)"]
    assert "| 2.00 GiB |" in rows["peak device memory, aujax training"]
    assert "| n/a / n/a |" in rows["Zennit EpsilonPlusFlat images/s, all 8 AUs / one AU"]
    assert "- part `lrp_zennit` failed: exit 1; ModuleNotFoundError: No module named 'zennit'" in table


def test_unknown_part_is_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--parts=train_jax,warp_drive"])
    assert "unknown warp_drive" in capsys.readouterr().err


def test_a_part_runs_in_its_own_process_and_lands_in_the_table(tmp_path):
    command = [sys.executable, "-m", "experiments.benchmark", f"--out={tmp_path}", "--parts=train_jax",
               "--widths=tiny", "--batch_size=8", "--train_images=32", "--steps=2", "--repeats=2"]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    with open(tmp_path / "benchmark.json") as f:
        results = json.load(f)
    figures = results["train_jax"]
    assert figures["images_per_s"] > 0 and figures["parameters"] > 0
    assert results["device"] == figures["device"]
    assert f"| {figures['images_per_s']:,.0f} |" in completed.stdout
    assert (tmp_path / "benchmark.md").read_text() in completed.stdout
