"""FileRunStore: reading runs the project's FileStore writes, and its cached metric summaries."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import observers.store
from observers.filestore import JOURNAL, FileStore
from observers.store import (
    SUMMARY_CACHE,
    FileRunStore,
    RecordError,
    open_store,
    resolve_run,
    summarize_metrics,
)
from tests.helpers import START, start_observer
from tests.helpers import metric_points as points


def start_run(root: Path, config: dict) -> FileStore:
    """A run started by the project's FileStore observer, as Sacred drives it."""
    return start_observer(FileStore(root), root, config)


@pytest.fixture
def store(tmp_path) -> Path:
    """Run 1 completed (two heartbeats of metrics, sealed); run 2 in progress (journal only)."""
    done = start_run(tmp_path, {"lr": 0.1})
    done.log_metrics(points("loss", range(1, 4), 0.5), {})
    done.log_metrics({**points("loss", range(4, 6), 0.25), **points("acc", range(1, 6), 0.1)}, {})
    done.completed_event(START + dt.timedelta(minutes=1), 0.5)
    live = start_run(tmp_path, {"lr": 0.2})
    live.log_metrics(points("loss", range(1, 3), 1.0), {})
    return tmp_path


def test_the_file_store_layout_is_read_back(store):
    reader = FileRunStore(store)
    assert reader.run_ids() == [1, 2]
    assert (store / "1" / "metrics.json").is_file() and (store / "2" / JOURNAL).is_file()
    assert reader.metrics(1)["loss"]["values"] == [0.5, 1.0, 1.5, 1.0, 1.25]
    assert reader.metrics(2)["loss"]["steps"] == [1, 2]
    assert reader.run(1)["status"] == "COMPLETED" and reader.config(2) == {"lr": 0.2}
    assert reader.info(1) == {}


def test_metric_summaries_give_last_min_max_of_sealed_and_live_runs(store):
    summaries = FileRunStore(store).metric_summaries([1, 2])
    assert summaries[1]["loss"] == {
        "last": 1.25,
        "min": 0.5,
        "max": 1.5,
        "count": 5,
        "last_step": 5,
    }
    assert summaries[1]["acc"]["max"] == pytest.approx(0.5)
    assert summaries[2] == {
        "loss": {"last": 2.0, "min": 1.0, "max": 2.0, "count": 2, "last_step": 2}
    }


def test_sealed_summaries_are_cached_and_not_parsed_again(store, monkeypatch):
    reader = FileRunStore(store)
    first = reader.metric_summaries([1, 2])
    cached = json.loads((store / SUMMARY_CACHE).read_text())
    assert list(cached) == ["1"]  # the run in progress is not cached: its journal still grows

    def no_parsing(*args, **kwargs):
        raise AssertionError("metrics.json parsed although its summary is cached")

    monkeypatch.setattr(observers.store.FileRunStore, "_json", no_parsing)
    assert FileRunStore(store).metric_summaries([1]) == {1: first[1]}


def test_a_changed_metrics_file_is_summarised_again(store):
    reader = FileRunStore(store)
    reader.metric_summaries([1])
    metrics = reader.metrics(1)
    metrics["loss"]["values"][-1] = 9.0
    (store / "1" / "metrics.json").write_text(json.dumps(metrics, indent=3))
    assert reader.metric_summaries([1])[1]["loss"]["max"] == 9.0


def test_a_damaged_cache_is_rebuilt(store):
    (store / SUMMARY_CACHE).parent.mkdir()
    (store / SUMMARY_CACHE).write_text('{"1": {"key": ')
    assert FileRunStore(store).metric_summaries([1])[1]["loss"]["last"] == 1.25
    assert list(json.loads((store / SUMMARY_CACHE).read_text())) == ["1"]


def test_without_cache_nothing_is_written(store):
    FileRunStore(store, cache=False).metric_summaries([1, 2])
    assert not (store / SUMMARY_CACHE.parent).exists()


def test_one_damaged_run_does_not_spoil_the_others(store):
    (store / "1" / "metrics.json").write_text('{"loss": {"steps": [1, 2')
    summaries = FileRunStore(store).metric_summaries([1, 2])
    assert isinstance(summaries[1], RecordError) and "metrics.json is damaged" in str(summaries[1])
    assert summaries[2]["loss"]["count"] == 2


def test_metrics_of_the_wrong_shape_are_reported_not_raised(store):
    (store / "1" / "metrics.json").write_text('["loss", 1, 2]')
    summaries = FileRunStore(store).metric_summaries([1, 2])
    assert "run 1: metrics not in Sacred's shape" in str(summaries[1])
    assert summaries[2]["loss"]["count"] == 2


def test_a_run_folder_without_run_json_is_told_apart_from_no_run(store):
    (store / "3").mkdir()
    reader = FileRunStore(store)
    with pytest.raises(RecordError, match=r"run 3: .*/3/run.json is missing"):
        reader.run(3)
    with pytest.raises(RecordError, match="no run 4 in"):
        reader.config(4)
    assert isinstance(reader.metric_summaries([3])[3], RecordError)


def test_summaries_skip_nan_and_values_that_are_not_numbers():
    metrics = {
        "loss": {
            "steps": [1, 2, 3, 4],
            "values": [2.0, float("nan"), "oops", 1.0],
            "timestamps": ["t"] * 4,
        },
        "empty": {"steps": [], "values": [], "timestamps": []},
    }
    summary = summarize_metrics(metrics)
    assert summary["loss"] == {"last": 1.0, "min": 1.0, "max": 2.0, "count": 4, "last_step": 4}
    assert math.isnan(summary["empty"]["last"]) and summary["empty"]["last_step"] is None


def test_runs_are_named_by_id_or_folder(store, monkeypatch):
    monkeypatch.delenv("REPROLAB_MONGO_URL", raising=False)
    reader, run_id = resolve_run(str(store / "2"))
    assert run_id == 2 and reader.config(run_id) == {"lr": 0.2}
    assert resolve_run("1", str(store))[1] == 1
    with pytest.raises(RecordError, match="no run 7 in"):
        resolve_run("7", str(store))
    monkeypatch.chdir(store.parent)
    with pytest.raises(RecordError, match="no run store at runs"):
        open_store()


@pytest.mark.parametrize("name", ["config.json", "run.json", "info.json", "metrics.json"])
def test_a_record_file_that_is_a_link_is_damaged_never_read(store, tmp_path_factory, capsys, name):
    outside = tmp_path_factory.mktemp("outside") / "secret.json"
    outside.write_text('{"secret": "outside the store"}')
    (store / "1" / name).unlink(missing_ok=True)
    (store / "1" / name).symlink_to(outside)
    from experiments.cli import main as reprolab

    reprolab(["show", "1", "--store", str(store)])
    shown = capsys.readouterr().out
    assert "outside the store" not in shown
    assert f"{name} is a link, so it was not read" in shown
    reader = FileRunStore(store)
    read = {"config.json": reader.config, "run.json": reader.run, "info.json": reader.info}
    with pytest.raises(RecordError, match=f"{name} is a link"):
        read.get(name, reader.metrics)(1)


def test_a_journal_that_is_a_link_is_not_read(store, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "journal"
    outside.write_text('{"name": "leak", "steps": [1], "values": [1.0], "timestamps": ["x"]}\n')
    (store / "2" / JOURNAL).unlink()
    (store / "2" / JOURNAL).symlink_to(outside)
    with pytest.raises(RecordError, match="is a link"):
        FileRunStore(store).metrics(2)


@pytest.mark.parametrize(
    ("name", "limit"),
    [
        ("info.json", "RUN_FILE_BYTES"),
        ("config.json", "RUN_FILE_BYTES"),
        ("metrics.json", "RUN_FILE_BYTES"),
    ],
)
def test_a_record_file_over_its_bound_is_damaged_unread(store, monkeypatch, name, limit):
    import observers.records

    bound = getattr(observers.records, limit)
    with open(store / "1" / name, "ab") as f:  # sparse: no disk or time spent
        f.truncate(bound + 1)
    sizes = []  # of every file opened for reading
    real_fdopen = os.fdopen
    monkeypatch.setattr(
        os,
        "fdopen",
        lambda fd, *a, **k: sizes.append(os.fstat(fd).st_size) or real_fdopen(fd, *a, **k),
    )
    from observers.tables import load_runs

    if name == "info.json":  # a table reads no info
        with pytest.raises(RecordError, match=f"{name} holds {bound + 1:,} bytes"):
            FileRunStore(store).info(1)
        return
    row = load_runs(store).loc[1]
    assert f"{name} holds {bound + 1:,} bytes, over the {bound:,}" in row["note"]
    assert max(sizes) <= bound  # refused from fstat, never read
    assert list(load_runs(store).index) == [1, 2]


def test_a_metric_value_too_large_for_a_float_reads_as_missing(store):
    from observers.tables import load_metrics, load_runs

    metrics = json.loads((store / "1" / "metrics.json").read_text())
    metrics["loss"]["values"][1] = 10**400  # valid JSON; float() of it raises OverflowError
    (store / "1" / "metrics.json").write_text(json.dumps(metrics))
    runs = load_runs(store)
    assert list(runs.index) == [1, 2]
    assert runs.loc[1, ["loss.last", "loss.min", "loss.max"]].tolist() == [1.25, 0.5, 1.5]
    values = load_metrics(store, [1], ["loss"])["value"].tolist()
    assert math.isnan(values[1]) and values[2:] == [1.5, 1.0, 1.25]


@given(
    st.lists(
        st.one_of(
            st.integers(),
            st.integers(min_value=2**1024),
            st.floats(),
            st.text(max_size=3),
            st.none(),
        )
    )
)
def test_summaries_of_any_json_values_are_floats(values):
    summary = summarize_metrics({"m": {"steps": [], "values": values, "timestamps": []}})["m"]
    assert all(type(summary[k]) is float for k in ("last", "min", "max"))


@pytest.mark.parametrize("bad", ["007", True, 1e3, 1.0, "../x", "", " 1", "²", -1, 2**63, None])
def test_the_python_api_refuses_what_is_no_run_id_naming_it(store, bad):
    from observers.tables import compare, load_metrics, load_runs

    for call in (load_runs, load_metrics):
        with pytest.raises(ValueError, match=rf"^{re.escape(repr(bad))} is not a run id"):
            call(store, run_ids=[1, bad])
    with pytest.raises(ValueError, match="is not a run id"):
        compare(store, [1, bad])


def test_the_python_api_takes_integers_and_digits(store):
    import numpy as np

    from observers.tables import load_runs

    assert list(load_runs(store, run_ids=["2", np.int64(1)]).index) == [2, 1]
