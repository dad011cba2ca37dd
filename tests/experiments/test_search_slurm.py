"""A search on the local one-node Slurm cluster (scripts/slurm-local.sh): a job array of two
workers that take trials from the study until the budget is spent; skipped, with the reason,
where Slurm is absent and cannot be started."""

from __future__ import annotations

import json
from pathlib import Path

import optuna

from observers import load_runs
from observers.location import StoreLocation
from observers.studies import study_storage
from tests.experiments.test_sweep_slurm import reprolab, slurm  # noqa: F401 - the fixture

TINY = ("epochs=2", "limit_batches=2", "seed=0", "progress=False")


def test_search_workers_run_as_one_job_array_within_the_budget(slurm, tmp_path):  # noqa: F811
    store = tmp_path / "runs"
    reprolab(
        "sweep",
        "--store",
        str(store),
        "--on",
        "slurm",
        "--parallel",
        "2",
        "--cpus",
        "1",
        "--time",
        "10",
        "--sbatch",
        "comment=reprolab-search-test",
        "--wait",
        "with",
        "lr=loguniform(1e-3, 1e-1)",
        *TINY,
        "--trials",
        "5",
        "--sampler",
        "random",
        "--sampler-seed",
        "0",
    )
    (path,) = (Path(store) / ".reprolab" / "sweeps").glob("*.json")
    record = json.loads(path.read_text())
    (attempt,) = record["attempts"]
    assert attempt["engine"] == "slurm" and attempt["parallel"] == 2
    assert attempt["options"]["extra"] == {"comment": "reprolab-search-test"}
    assert sorted(attempt["task_ids"].values()) == [f"{attempt['job_id']}_{i}" for i in range(2)]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = study_storage(StoreLocation.parse(str(store)), record["id"])
    trials = optuna.load_study(study_name=record["id"], storage=storage).get_trials()
    counted = [t for t in trials if not t.user_attrs.get("over_budget")]
    assert sorted(t.number for t in counted) == list(range(5))  # exactly the budget
    assert all(t.state.name == "COMPLETE" for t in counted)
    runs = load_runs(store, sweep=record["id"])
    assert sorted(runs.trial) == list(range(5)) and set(runs.status) == {"COMPLETED"}
