"""The file store's index is only a cache: every answer equals reading the records themselves,
whatever happened to the index (deleted, damaged, planted, stale) or to the store since."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from experiments.cli import main as reprolab
from ingredients.processes import this_process
from observers import index as run_index
from observers.index import INDEX, read_index
from observers.store import SUMMARY_CACHE, FileRunStore
from observers.tables import load_runs, runs_page

START = "2026-03-01T10:00:{:02d}.000000+00:00"


def write_run(root: Path, run_id: int, status: str = "COMPLETED", **config) -> Path:
    """A run folder as the file store leaves it (run.json, config.json, sealed metrics.json; a
    running run has its metrics in the journal), with values of every kind a config holds."""
    folder = root / str(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    run = {
        "status": status,
        "experiment": {"name": "train", "repositories": [{"commit": "c0ffee", "dirty": False}]},
        "host": {"hostname": f"node{run_id % 3}"},
        "start_time": START.format(run_id % 60),
        "stop_time": None if status == "RUNNING" else START.format((run_id + 5) % 60),
        "heartbeat": START.format((run_id + 5) % 60),
        "result": None if status == "RUNNING" else run_id / 100,
        "meta": {"sweep": {"id": f"s{run_id % 2}", "index": run_id // 2}},
    }
    if status == "RUNNING":  # still going: its process is this test's (observers/liveness.py)
        run["meta"]["process"] = this_process()
    values = {
        "lr": [0.1, 0.01, 0.001][run_id % 3],
        "seed": run_id,
        "tag": None if run_id % 4 == 0 else f"t{run_id % 4}",
        "model": {"hidden": [64, run_id % 5], "name": ["mlp", "cnn"][run_id % 2], "kwargs": {}},
        "flag": run_id % 2 == 0,
        **({"extra": run_id} if run_id % 5 == 0 else {}),
        **config,
    }
    metrics = {
        "val_accuracy": {
            "steps": [1, 2],
            "values": [run_id / 1000, run_id / 500],
            "timestamps": [START.format(1), START.format(2)],
        }
    }
    (folder / "run.json").write_text(json.dumps(run))
    (folder / "config.json").write_text(json.dumps(values))
    if status == "RUNNING":
        (folder / "metrics.jsonl").write_text(
            json.dumps({"name": "val_accuracy", **metrics["val_accuracy"]}) + "\n"
        )
    else:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.fixture(autouse=True, params=["whole", "by-column"])
def reading(request, monkeypatch):
    """Every test twice: the index file read whole (a small store's) and column by column, and
    pages by record batch (a big store's)."""
    if request.param == "by-column":
        monkeypatch.setattr(run_index, "WHOLE_FILE", 0)


@pytest.fixture
def store(tmp_path) -> Path:
    root = tmp_path / "runs"
    for run_id in range(1, 13):
        write_run(
            root,
            run_id,
            status="RUNNING" if run_id == 7 else ["COMPLETED", "FAILED"][run_id % 5 == 1],
        )
    (root / "9" / "config.json").write_text('{"lr": 0.1, "bad": {"py/reduce": [1]}}')  # refused
    (root / "10" / "run.json").write_text("{not json")  # damaged
    return root


def records(root: Path, **filters) -> pd.DataFrame:
    """load_runs read from the records alone (no index, no cache)."""
    return load_runs(FileRunStore(root, cache=False), **filters)


def same(root: Path, **filters) -> pd.DataFrame:
    """load_runs through the index, checked equal to reading the records."""
    runs = load_runs(root, **filters)
    pd.testing.assert_frame_equal(runs, records(root, **filters), check_exact=True)
    return runs


def indexed_ids(root: Path) -> list[int]:
    return read_index(root)["run_id"].to_pylist()


def test_the_index_gives_what_the_records_give_and_holds_only_finished_runs(store):
    same(store)
    assert (store / INDEX).is_file()
    assert indexed_ids(store) == [1, 2, 3, 4, 5, 6, 8, 9, 11, 12]  # not running 7, damaged 10
    runs = same(store)  # warm
    assert runs.loc[7, "status"] == "RUNNING" and runs.loc[10, "status"] == "DAMAGED"
    assert "py/reduce" in runs.loc[9, "note"]
    assert runs.loc[3, "config.model.hidden"] == (64, 3)


@pytest.mark.parametrize(
    "filters",
    [
        {"status": "COMPLETED"},
        {"status": ["FAILED", "RUNNING"]},
        {"sweep": "s1"},
        {"lr": 0.01},
        {"model.name": "cnn", "flag": False},
        {"model__hidden": [64, 2]},
        {"tag": None},
        {"experiment": "train", "status": "COMPLETED", "sweep": "s0"},
        {"lr": 5.0},
    ],
)
def test_filters_equal_pandas_filtering_of_the_whole_table(store, filters):
    load_runs(store)  # warm index
    runs = same(store, **filters)
    whole = records(store)
    keep = pd.Series(True, index=whole.index)
    for key, value in filters.items():
        column = {"status": "status", "sweep": "sweep", "experiment": "experiment"}.get(key)
        if column:
            keep &= whole[column].isin([value] if isinstance(value, str) else value)
        else:
            value = tuple(value) if isinstance(value, list) else value
            column = "config." + key.replace("__", ".")
            if value is None:  # pandas reads None as missing: runs with a config that has it
                keep &= whole[column].isna() & whole["config.seed"].notna()
            else:
                keep &= (
                    whole[column] == value
                    if not isinstance(value, tuple)
                    else whole[column].map(lambda v, value=value: v == value)
                )
    assert list(runs.index) == list(whole.index[keep])


def test_an_unknown_config_key_is_still_one_error(store):
    load_runs(store)
    with pytest.raises(ValueError, match="unknown config key 'nope'"):
        load_runs(store, nope=1)


def test_deleting_the_index_changes_no_answer(store):
    first = same(store)
    (store / INDEX).unlink()
    pd.testing.assert_frame_equal(same(store), first)
    assert (store / INDEX).is_file()


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_bytes(os.urandom(3000)),
        lambda path: path.write_bytes(path.read_bytes()[:-100]),  # cut short
        lambda path: path.write_text(""),
        lambda path: _write(path, pa.table({"run_id": [1], "status": ["COMPLETED"]})),
        lambda path: _replace_cells(path, '{"py/reduce": ["os.system", ["touch PWNED"]]}'),
        lambda path: _replace_cells(path, '[1, {"py/object": "x"}]'),
        lambda path: _replace_cells(path, "not json"),
        lambda path: _replace_cells(path, "1, 2"),
        lambda path: _set_status(path, "RUNNING"),
    ],
    ids=[
        "garbage",
        "cut",
        "empty",
        "schema",
        "py-key",
        "py-key-in-list",
        "bad-json",
        "two",
        "running",
    ],
)
def test_a_damaged_or_planted_index_is_rebuilt(store, damage, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    truth = same(store)
    damage(store / INDEX)
    pd.testing.assert_frame_equal(same(store), truth)
    assert read_index(store) is not None  # rewritten whole
    assert not (tmp_path / "PWNED").exists()
    pd.testing.assert_frame_equal(same(store, lr=0.1), records(store, lr=0.1))


def _write(path: Path, table: pa.Table) -> None:
    with pa.ipc.new_file(path, table.schema) as writer:
        writer.write_table(table)


def _replace_cells(path: Path, text: str) -> None:
    """Every config.lr cell set to text, the schema left valid."""
    table = read_index(path.parent.parent)
    column = table.column_names.index("config.lr")
    table = table.set_column(column, "config.lr", pa.array([text] * len(table), pa.string()))
    _write(path, table)


def _set_status(path: Path, status: str) -> None:
    table = read_index(path.parent.parent)
    column = table.column_names.index("status")
    _write(path, table.set_column(column, "status", pa.array([status] * len(table))))


def test_a_planted_lock_file_is_never_followed(store, tmp_path):
    """The index's lock file is a link out of the store (a copied store's): no file is created
    through it, and every answer is the same (the index is a cache that may go unwritten)."""
    truth = same(store)
    (store / INDEX).unlink()
    (store / run_index.LOCK).unlink()
    outside = tmp_path / "MARKER"
    (store / run_index.LOCK).symlink_to(outside)
    pd.testing.assert_frame_equal(same(store), truth)
    assert not outside.exists()


def test_a_finished_run_edited_in_place_is_read_again(store):
    load_runs(store)
    config = store / "3" / "config.json"
    before = config.stat()
    text = config.read_text()
    edited = text.replace('"lr": 0.1', '"lr": 0.2')
    assert edited != text and len(edited) == len(text)
    config.write_text(edited)  # same size, the mtime set back: only ctime tells
    os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns))
    runs = same(store)
    assert runs.loc[3, "config.lr"] == 0.2
    assert read_index(store)["config.lr"].to_pylist()[2] == "0.2"


def test_new_vanished_and_replaced_runs_are_seen(store):
    load_runs(store)
    write_run(store, 13)
    shutil.rmtree(store / "2")
    shutil.rmtree(store / "4")
    write_run(store, 4, lr=0.5)  # the same id, another folder
    runs = same(store)
    assert 2 not in runs.index and 13 in runs.index and runs.loc[4, "config.lr"] == 0.5
    assert 2 not in indexed_ids(store) and 13 in indexed_ids(store)


def test_running_runs_are_read_live_until_they_finish(store):
    assert same(store).loc[7, "val_accuracy.max"] == pytest.approx(7 / 500)
    with open(store / "7" / "metrics.jsonl", "a") as f:
        f.write(
            json.dumps(
                {
                    "name": "val_accuracy",
                    "steps": [3],
                    "values": [0.9],
                    "timestamps": [START.format(3)],
                }
            )
            + "\n"
        )
    assert same(store).loc[7, "val_accuracy.max"] == 0.9
    assert 7 not in indexed_ids(store)
    (store / "7" / "metrics.jsonl").unlink()
    write_run(store, 7)
    assert same(store).loc[7, "status"] == "COMPLETED" and 7 in indexed_ids(store)


def listed(lines: list[str]) -> list[int]:
    """The run ids of ls's table rows."""
    return [int(line.split()[0]) for line in lines if line.split()[0].isdigit()]


def test_ls_pages_big_stores_like_git_log(tmp_path, capsys):
    root = tmp_path / "runs"
    for run_id in range(1, 26):
        write_run(root, run_id)
    assert reprolab(["ls", "--store", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert listed(lines) == list(range(6, 26))
    assert lines[-1] == "... 5 earlier runs; --all lists every run"
    assert reprolab(["ls", "--store", str(root), "--all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert listed(lines) == list(range(1, 26)) and "earlier runs" not in lines[-1]
    assert reprolab(["ls", "--store", str(root), "--sweep", "s1", "--status", "COMPLETED"]) == 0
    assert listed(capsys.readouterr().out.splitlines()) == list(range(1, 26, 2))
    assert reprolab(["ls", "--store", str(root), "--last", "3"]) == 0
    assert listed(capsys.readouterr().out.splitlines()) == [23, 24, 25]


def test_ls_of_a_small_store_is_unchanged(store, capsys):
    shutil.rmtree(store / "12")
    assert reprolab(["ls", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "earlier runs" not in out
    assert reprolab(["ls", "--store", str(store), "--all"]) == 0
    assert capsys.readouterr().out == out


def test_a_page_reads_only_the_runs_it_shows(store, monkeypatch):
    load_runs(store)
    read = []
    original = run_index._read_rows
    monkeypatch.setattr(
        run_index, "_read_rows", lambda s, ids, n: read.extend(ids) or original(s, ids, n)
    )
    (store / "1" / "config.json").write_text('{"lr": 7}')  # stale, but not on the page
    runs, total = runs_page(store, 2, status="COMPLETED")
    assert list(runs.index) == [9, 12] and total == 7  # 1, 6, 11 failed; 7 runs; 10 damaged
    assert read == [7, 10]  # the running and the damaged run, always read


def spy_on_reads(monkeypatch) -> list[list[int]]:
    """The run ids of each read of records into rows, in order."""
    reads: list[list[int]] = []
    original = run_index._read_rows

    def read_rows(store, run_ids, *args):
        reads.append(list(run_ids))
        return original(store, run_ids, *args)

    monkeypatch.setattr(run_index, "_read_rows", read_rows)
    return reads


@pytest.mark.parametrize("filters", [{}, {"status": "COMPLETED"}, {"sweep": "s1"}])
def test_runs_the_index_lacks_are_indexed_a_chunk_at_a_time(store, monkeypatch, filters):
    """A first call on a big store holds one chunk's rows at once, not every run's, and answers
    as the records do; the running and damaged runs are read after, as always."""
    for run_id in range(13, 30):
        write_run(store, run_id)
    monkeypatch.setattr(run_index, "CATCH_UP", 4)
    reads = spy_on_reads(monkeypatch)
    same(store, **filters)
    assert [len(ids) for ids in reads] == [4, 4, 4, 4, 4, 4, 4, 1, 0]  # none read twice
    assert [i for ids in reads for i in ids] == list(range(1, 30))
    assert indexed_ids(store) == [i for i in range(1, 30) if i not in (7, 10)]
    reads.clear()
    same(store, **filters)
    assert reads == [[7, 10]]


def test_many_runs_the_index_cannot_hold_are_read_once_a_call_and_never_written(store, monkeypatch):
    for run_id in range(13, 21):
        write_run(store, run_id, status="RUNNING")
    same(store)
    monkeypatch.setattr(run_index, "CATCH_UP", 4)
    reads, writes = spy_on_reads(monkeypatch), []
    write_index = run_index.write_index
    monkeypatch.setattr(
        run_index, "write_index", lambda *a, **k: writes.append(a) or write_index(*a, **k)
    )
    same(store)
    assert [i for ids in reads for i in ids] == [7, 10, *range(13, 21)] and writes == []


def test_a_catch_up_that_cannot_write_leaves_the_rest_to_be_read_as_before(store, monkeypatch):
    """Another writer holding the lock after the first chunk: the answer is still the records'."""
    monkeypatch.setattr(run_index, "CATCH_UP", 4)
    original, writes = run_index.write_index, []

    def write_once(*args, **kwargs):
        writes.append(args)
        return len(writes) == 1 and original(*args, **kwargs)

    monkeypatch.setattr(run_index, "write_index", write_once)
    reads = spy_on_reads(monkeypatch)
    same(store)
    assert reads == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]  # 5-8 refused, then kept
    assert indexed_ids(store)[:4] == [1, 2, 3, 4]


def test_a_call_for_some_runs_reads_only_those(store, monkeypatch):
    monkeypatch.setattr(run_index, "CATCH_UP", 1)
    reads = spy_on_reads(monkeypatch)
    load_runs(store, run_ids=[3, 4])
    assert reads == [[3, 4]]


def test_small_stores_keep_their_metric_summary_cache(store):
    load_runs(store)
    assert set(json.loads((store / SUMMARY_CACHE).read_text())) >= {"1", "2"}


def _writer(root: str, ids: list[int], barrier) -> None:
    """A process that adds runs to the index once the other one has read it too."""
    original = run_index.write_index

    def write_after_both_read(*args, **kwargs):
        barrier.wait(timeout=60)
        original(*args, **kwargs)

    run_index.write_index = write_after_both_read
    load_runs(root, run_ids=ids)


def test_two_processes_updating_the_index_at_once_lose_nothing(store):
    load_runs(store, run_ids=[1, 2])
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    writers = [
        context.Process(target=_writer, args=(str(store), ids, barrier))
        for ids in ([3, 4, 5], [6, 8])
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    assert indexed_ids(store) == [1, 2, 3, 4, 5, 6, 8]
    same(store)


def test_a_read_only_store_is_read_without_an_index(store):
    os.chmod(store, 0o555)
    try:
        if os.access(store, os.W_OK):
            pytest.skip("running as root: nothing is read-only")
        same(store)
        assert not (store / INDEX).exists()
    finally:
        os.chmod(store, 0o755)


def test_the_index_has_a_type_for_every_record_column():
    """A column load_runs gives but the index cannot hold would break every listing."""
    from observers.index import RECORD_TYPES
    from observers.tables import RECORD_COLUMNS

    assert set(RECORD_TYPES) == set(RECORD_COLUMNS)


def test_pages_read_from_an_index_of_many_record_batches(store, monkeypatch):
    """A page, a filter and the whole table give the records' answer when the index file holds
    its rows in several record batches (pages then read only the batches holding their rows)."""
    monkeypatch.setattr(run_index, "BATCH_ROWS", 3)
    (store / "4" / "config.json").write_text('{"lr": 0.5}')
    same(store)
    index = run_index.IndexFile.open(store)
    assert index is not None and index.column("run_id").num_chunks == 4  # 10 rows, 3 a batch
    index.close()
    whole = records(store)
    for last in (1, 2, 5):
        runs, total = runs_page(store, last)
        shown = records(store, run_ids=whole.index[-last:])
        pd.testing.assert_frame_equal(runs, shown, check_exact=True)
        assert total == len(whole)
    runs, total = runs_page(store, 3, status="COMPLETED")
    completed = whole.index[whole.status == "COMPLETED"]
    pd.testing.assert_frame_equal(runs, records(store, run_ids=completed[-3:]), check_exact=True)
    assert total == len(completed)
    assert list(same(store, run_ids=[12, 1, 5]).index) == [12, 1, 5]
    assert list(same(store, lr=0.5).index) == [4]


def test_a_page_of_a_big_index_reads_its_batches_not_the_whole_file(store, monkeypatch):
    monkeypatch.setattr(run_index, "WHOLE_FILE", 0)
    monkeypatch.setattr(run_index, "BATCH_ROWS", 2)
    same(store)

    def whole_file(self):
        raise AssertionError("the whole index was read")

    monkeypatch.setattr(run_index.IndexFile, "table", whole_file)
    runs, total = runs_page(store, 2, status="COMPLETED")
    assert list(runs.index) == [9, 12] and total == 7
    assert list(same(store, sweep="s1", run_ids=[3, 5, 4]).index) == [3, 5]


def test_runs_added_one_by_one_stay_small_batches_until_the_file_is_compacted(store, monkeypatch):
    monkeypatch.setattr(run_index, "BATCH_ROWS", 4)
    monkeypatch.setattr(run_index, "MORE_BATCHES", 2)
    same(store)
    batches = []
    for run_id in range(13, 20):
        write_run(store, run_id)
        same(store)
        index = run_index.IndexFile.open(store)
        batches.append(index.column("run_id").num_chunks)
        assert index.numbers("run_id").tolist() == indexed_ids(store)
        index.close()
    assert indexed_ids(store) == [1, 2, 3, 4, 5, 6, 8, 9, 11, 12, *range(13, 20)]
    assert max(batches) <= 17 // 4 + 2 + 1 and batches != sorted(batches)  # appended, compacted


@pytest.mark.parametrize("holding", [False, True])
def test_a_folder_in_place_of_the_index_is_noted_and_read_without(store, holding, capsys):
    truth = records(store)
    (store / INDEX).mkdir(parents=True)
    if holding:
        (store / INDEX / "a file").write_text("someone's")
    assert reprolab(["ls", "--store", str(store)]) == 0
    note = capsys.readouterr().err
    opened = len(os.listdir("/proc/self/fd"))
    pd.testing.assert_frame_equal(load_runs(store), truth)
    assert len(os.listdir("/proc/self/fd")) == opened  # no descriptor left open
    if holding:  # someone's folder stays; runs are read without the index
        assert f"{store / INDEX} is a folder, not the index file, so runs were read" in note
        assert (store / INDEX / "a file").is_file()
    else:  # an empty one goes, and the index is rebuilt
        assert f"{store / INDEX} was an empty folder, not the index file" in note
        assert {1, 2, 8, 12} <= set(indexed_ids(store))
