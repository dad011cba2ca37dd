"""The benchmark scripts run end to end (smallest sizes) and print their tables; no timing asserted."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.benchmark]

SMOKE_RUNS = {
    "images.py": (
        ["--quick", "--images", "256"],
        ["ours/hand", "peak RSS", "per image (worker)"],
    ),
    "loader.py": (
        ["--quick", "--rows", "20000", "--repeats", "1"],
        [
            "file -> first batch",
            "(c) index_select",
            "of (c) limit",
            "files above data.in_memory_mb",
        ],
    ),
    "recording.py": (
        ["--quick", "--runs", "1"],
        ["(d) cost of logging", "(e) observer time per heartbeat", "(f) end to end"],
    ),
    "startup.py": (
        ["--quick", "--rounds", "1"],
        ["(g, h) start-up", "print_config / import torch"],
    ),
    "trial_start.py": (
        ["--quick"],
        ["run asked for -> first training step", "warm / fresh", "warm, median"],
    ),
    "search_efficiency.py": (
        ["--quick"],
        ["epochs to reach", "TPE + Hyperband", "of grid"],
    ),
    "store_scale.py": (
        [
            "--quick",
            "--sizes",
            "250",
            "--repeats",
            "1",
            "--configs",
            "20",
            "--mongo-runs",
            "30",
            "--mlflow-runs",
            "10",
        ],
        [
            "store scale: file store",
            "first call after 100 new runs",
            "MongoDB on nx-27017",
            "MLflow",
        ],
    ),
    "train.py": (
        ["--quick", "--repeats", "1"],
        ["our loop against a bare PyTorch loop", "cost of options"],
    ),
}


@pytest.mark.parametrize("script", sorted(SMOKE_RUNS))
def test_benchmark_prints_its_tables(repo_root, script):
    arguments, titles = SMOKE_RUNS[script]
    result = subprocess.run(
        [sys.executable, str(repo_root / "benchmarks" / script), *arguments],
        capture_output=True,
        text=True,
        cwd=repo_root,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for title in titles:
        assert title in result.stdout, result.stdout


@pytest.mark.distributed
def test_ddp_benchmark_measures_both_world_sizes(repo_root):
    """Both torchrun jobs (1 and 2 processes) end on their own, each within --timeout, and print
    a positive samples/s; a job hanging at exit would fail this instead of stalling the suite."""
    result = subprocess.run(
        [sys.executable, str(repo_root / "benchmarks" / "ddp.py"), "--quick", "--timeout", "90"],
        capture_output=True,
        text=True,
        cwd=repo_root,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for setup in ("1 process, 1 thread", "2 processes (gloo), 1 thread each"):
        found = re.search(rf"^\s*{re.escape(setup)}\s+([\d,]+)\s", result.stdout, re.MULTILINE)
        assert found, f"no row for {setup!r} in:\n{result.stdout}"
        assert int(found.group(1).replace(",", "")) > 0
