"""The ls, show, compare and export commands, run as `reprolab ...` on real training runs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from experiments.cli import main
from ingredients.processes import this_process
from observers import load_runs, plot_metric
from observers.filestore import write_json_atomic
from observers.plots import abbreviate, best_so_far, plot_search
from observers.report import latest_runs, write_table
from observers.store import FileRunStore

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def store(small_store_of) -> Path:
    """debug (1 epoch of 5 batches, lr 0.01, adam) and sgd (2 epochs, lr 0.05), from conftest."""
    return small_store_of(["debug", "sgd"])


@pytest.fixture(scope="module")
def ids(store) -> dict[str, int]:
    reader = FileRunStore(store)
    return {"sgd" if reader.config(i)["lr"] == 0.05 else "debug": i for i in reader.run_ids()}


def reprolab(capsys, *argv) -> tuple[int, list[str], str]:
    """Exit code, stdout lines and stderr of `reprolab argv...`; every line fits 80 columns."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), "\n".join(
        line for line in lines if len(line) > 80
    )
    return code, lines, err


def cells(lines: list[str], first: str) -> list[str]:
    """The whitespace-separated cells of the table line that starts with `first`."""
    return next(line.split() for line in lines if line.split()[:1] == [first])


@pytest.fixture
def copied(store, tmp_path) -> Path:
    root = tmp_path / "runs"
    shutil.copytree(store, root)
    return root


def clone_run(root: Path, source: int, target: int, **config) -> None:
    """A copy of a run whose config differs by the given dotted keys."""
    shutil.copytree(root / str(source), root / str(target))
    path = root / str(target) / "config.json"
    recorded = json.loads(path.read_text())
    for key, value in config.items():
        *parents, leaf = key.split("__")
        node = recorded
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    write_json_atomic(path, recorded)


# --------------------------------------------------------------------------- ls


def test_ls_lists_runs_with_the_config_that_varies(store, ids, capsys):
    code, lines, _ = reprolab(capsys, "ls", "--store", store)
    runs = load_runs(store)

    assert code == 0
    assert lines[0].split() == [
        "id",
        "status",
        "started",
        "took",
        "epochs",
        "lr",
        "opt.name",
        "val_acc.max",
    ]
    sgd = cells(lines, str(ids["sgd"]))
    assert sgd[1] == "COMPLETED" and sgd[-4:] == [
        "2",
        "0.05",
        "sgd",
        f"{runs.loc[ids['sgd'], 'result']:.4g}",
    ]
    assert cells(lines, str(ids["debug"]))[-4:-1] == ["1", "0.01", "adam"]
    assert lines[-1].startswith("also varying: seed")


def test_ls_filters_by_status_and_count(store, ids, capsys):
    assert reprolab(capsys, "ls", "--store", store, "--last", "1")[1][1].split()[0] == str(
        max(ids.values())
    )
    assert len(reprolab(capsys, "ls", "--store", store, "--status", "completed")[1]) == 1 + 2 + 1
    code, lines, _ = reprolab(capsys, "ls", "--store", store, "--status", "FAILED")
    assert code == 0 and lines == [f"no FAILED runs in {store}"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (("--status", "COMPLETD"), "unknown status 'COMPLETD' (one of QUEUED, RUNNING, COMPLETED"),
        (("--last", "0"), "--last must be 1 or more, not 0"),
    ],
)
def test_ls_refuses_bad_options_in_one_sentence(store, capsys, argv, message):
    code, lines, err = reprolab(capsys, "ls", "--store", store, *argv)
    assert code == 2 and lines == [] and err.startswith(f"reprolab: error: {message}")
    assert err.count("\n") == 1


def test_ls_of_a_missing_store_names_it(tmp_path, capsys):
    code, _, err = reprolab(capsys, "ls", "--store", tmp_path / "nowhere")
    assert code == 2 and f"no run store at {tmp_path / 'nowhere'}" in err


def test_ls_names_a_few_skipped_entries_and_counts_the_rest(copied, capsys):
    """2,000 odd names in a store gave 2,000 unordered note lines on every ls."""
    for number in range(1, 26):
        (copied / f"0{number}").mkdir()
    code, _, err = reprolab(capsys, "ls", "--store", copied)
    notes = err.splitlines()
    assert code == 0 and len(notes) == 11, err
    assert notes[0].startswith(f"reprolab: note: skipped {copied / '010'}: not a run id")
    assert notes == sorted(notes[:10]) + ["reprolab: note: 15 more entries skipped, as those above"]


def test_ls_fits_many_varying_keys_into_80_columns(copied, ids, capsys):
    base = ids["sgd"]
    clone_run(
        copied,
        base,
        11,
        data__path="data/a_long_name_for_a_dataset_file.parquet",
        model__name="cnn",
        data__batch_size=128,
    )
    clone_run(copied, base, 12, optimizer__weight_decay=0.0001, seeding__deterministic=False)
    code, lines, _ = reprolab(capsys, "ls", "--store", copied)

    assert code == 0 and len(lines) >= 1 + 4 + 1
    shown = lines[0].split()[4:-1]
    left_out = re.split(r",\s+", " ".join(lines[5:]).removeprefix("also varying: "))
    varying = [
        "epochs",
        "lr",
        "data.batch_size",
        "data.path",
        "model.name",
        "optimizer.name",
        "optimizer.weight_decay",
        "seeding.deterministic",
        "seed",
    ]
    assert shown == [
        abbreviate(key) if len(key) > 8 else key for key in varying if key not in left_out
    ]
    assert shown[:2] == ["epochs", "lr"] and left_out[-1] == "seed" and len(shown) >= 3


def test_ls_marks_damaged_and_unfinished_runs(copied, ids, capsys):
    (copied / str(ids["debug"]) / "metrics.json").write_text("{")
    run = json.loads((copied / str(ids["sgd"]) / "run.json").read_text())
    write_json_atomic(
        copied / str(ids["sgd"]) / "run.json",
        {**run, "status": "RUNNING", "stop_time": None, "meta": {"process": this_process()}},
    )
    (copied / "7").mkdir()
    code, lines, _ = reprolab(capsys, "ls", "--store", copied)

    assert code == 0
    assert cells(lines, str(ids["debug"]))[1] == "COMPLETED*" and cells(lines, "7")[1] == "DAMAGED*"
    assert cells(lines, str(ids["sgd"]))[1] == "RUNNING"
    assert f"* run {ids['debug']}: metrics.json is damaged (" in "\n".join(lines)
    assert "* run 7: run.json is missing" in lines


def test_ls_reads_mongodb_like_the_file_store(store, capsys, monkeypatch):
    mongomock = pytest.importorskip("mongomock")
    pytest.importorskip("mongomock.gridfs").enable_gridfs_integration()

    mongo, sync = pytest.importorskip("observers.mongo"), pytest.importorskip("observers.sync")
    client = mongomock.MongoClient()
    monkeypatch.setattr(mongo, "make_client", lambda url, **options: client)
    url = "mongodb://reader:s3cret@localhost:27017/report"
    sync.sync_store(store, url, echo=lambda line: None)

    assert reprolab(capsys, "ls", "--store", url)[1] == reprolab(capsys, "ls", "--store", store)[1]
    code, lines, _ = reprolab(capsys, "show", "1", "--store", url)
    assert code == 0 and "s3cret" not in "\n".join(lines)


# --------------------------------------------------------------------------- show


def test_show_summarises_a_run(store, ids, capsys, repo_root):
    run_id = ids["sgd"]
    code, lines, _ = reprolab(capsys, "show", run_id, "--store", store)
    text = "\n".join(lines)
    info = FileRunStore(store).info(run_id)
    runs = load_runs(store)

    assert code == 0 and lines[0] == f"run {run_id}  train  COMPLETED"
    assert cells(lines, "seed")[1] == str(FileRunStore(store).config(run_id)["seed"])
    assert cells(lines, "device") == ["device", "cpu"]
    assert cells(lines, "git")[1] == runs.loc[run_id, "git_commit"][:12]
    assert "command     train with epochs=2 limit_batches=5 lr=0.05 optimizer.name=sgd" in text
    assert f"1,797 rows  sha256 {info['data']['fingerprint']['sha256'][:12]}" in text
    assert cells(lines, "lr") == ["lr", "0.05"] and cells(lines, "optimizer.name")[1] == "sgd"
    assert cells(lines, "val_accuracy")[1:] == [
        f"{runs.loc[run_id, f'val_accuracy.{stat}']:.4g}" for stat in ("last", "min", "max")
    ]
    last = cells(lines, "last.pt")
    assert last[1:4] == [
        f"{(store / str(run_id) / 'last.pt').stat().st_size / 1024:.1f}",
        "KiB",
        "epoch",
    ]
    assert last[-1] == info["checkpoints"]["last.pt"]["sha256"][:12]


def test_show_takes_a_run_directory(store, ids, capsys):
    code, lines, _ = reprolab(capsys, "show", store / str(ids["debug"]))
    assert code == 0 and lines[0] == f"run {ids['debug']}  train  COMPLETED"


def test_show_of_a_running_run_whose_data_is_still_being_hashed(copied, ids, capsys):
    info_path = copied / str(ids["sgd"]) / "info.json"
    info = json.loads(info_path.read_text())
    info["data"]["fingerprint"]["sha256"] = None  # what a run records until the hash is done
    write_json_atomic(info_path, info)
    code, lines, _ = reprolab(capsys, "show", ids["sgd"], "--store", copied)
    assert code == 0 and "1,797 rows  sha256 not recorded" in "\n".join(lines)


def test_show_of_a_rerun_names_the_run_it_repeated(copied, ids, capsys):
    info_path = copied / str(ids["sgd"]) / "info.json"
    info = json.loads(info_path.read_text())
    info["rerun_of"] = {"run_id": 1, "store": str(copied), "from_recorded_sources": True}
    write_json_atomic(info_path, info)
    code, lines, _ = reprolab(capsys, "show", ids["sgd"], "--store", copied)
    assert code == 0 and "  rerun of    run 1, from its recorded sources" in lines


def test_show_of_an_unknown_run_names_it(store, capsys):
    code, lines, err = reprolab(capsys, "show", "99", "--store", store)
    assert code == 2 and lines == [] and err == f"reprolab: error: no run 99 in {store}\n"


def test_show_tells_what_cannot_be_read(copied, ids, capsys):
    run_dir = copied / str(ids["sgd"])
    (run_dir / "info.json").write_text('{"device": ')
    (run_dir / "config.json").unlink()
    code, lines, _ = reprolab(capsys, "show", ids["sgd"], "--store", copied)

    assert (
        code == 0
        and "config: unreadable" in lines
        and "metrics" in lines[lines.index("config: unreadable") + 1]
    )
    assert lines[-2] == "note: config.json is missing"
    assert lines[-1].startswith("note: info.json is damaged (")


# --------------------------------------------------------------------------- compare


def test_compare_shows_differing_config_and_the_metric(store, ids, capsys):
    debug, sgd = ids["debug"], ids["sgd"]
    code, lines, _ = reprolab(capsys, "compare", debug, sgd, "--store", store)
    runs = load_runs(store)

    assert code == 0 and lines[0].split() == ["run", str(debug), str(sgd)]
    assert [line.split()[0] for line in lines[1:]] == [
        "status",
        "epochs",
        "lr",
        "optimizer.name",
        "seed",  # equal keys left out, seed last
        "val_accuracy.last",
        "val_accuracy.min",
        "val_accuracy.max",
        "result",
    ]
    assert cells(lines, "lr")[1:] == ["0.01", "0.05"] and cells(lines, "optimizer.name")[1:] == [
        "adam",
        "sgd",
    ]
    assert cells(lines, "epochs")[1:] == ["1", "2"]
    assert cells(lines, "val_accuracy.max")[1:] == [
        f"{runs.loc[i, 'val_accuracy.max']:.4g}" for i in (debug, sgd)
    ]
    code, lines, _ = reprolab(
        capsys, "compare", debug, sgd, "--store", store, "--metric", "val_loss"
    )
    assert "val_loss.min" in [
        line.split()[0] for line in lines
    ] and "val_accuracy.max" not in "\n".join(lines)


def test_compare_draws_the_curves_into_a_png(store, ids, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plot = Path("cmp.png")
    code, lines, _ = reprolab(
        capsys, "compare", ids["debug"], ids["sgd"], "--store", store, "--plot", plot
    )

    assert (
        code == 0
        and lines[-1] == f"wrote {plot} (val_accuracy of runs {ids['debug']}, {ids['sgd']})"
    )
    data = (tmp_path / plot).read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000
    assert [p.name for p in tmp_path.iterdir()] == ["cmp.png"]  # no temporary file left


def test_compare_of_runs_without_metrics_shows_their_configs(copied, ids, capsys):
    """No metric asked for and none recorded: the configs are still compared; asked for, or
    plotted, the refusal names the damage that hid it."""
    clone_run(copied, ids["sgd"], 11, lr=0.5)
    clone_run(copied, ids["sgd"], 12, lr=0.7)
    for run in (11, 12):
        (copied / str(run) / "metrics.json").write_text("[1, 2]")
    code, lines, err = reprolab(capsys, "compare", "11", "12", "--store", copied)
    assert code == 0, err
    assert cells(lines, "lr")[-2:] == ["0.5", "0.7"]
    assert [line for line in lines if line.startswith("* run 11: ")]  # the damage, noted
    code, _, err = reprolab(capsys, "compare", "11", "12", "--store", copied, "--plot", "x.png")
    assert code == 2 and "(recorded: none; run 11: metrics not in Sacred" in err, err


def test_compare_plot_notes_a_run_left_out_and_draws_the_others(
    copied, ids, capsys, tmp_path, monkeypatch
):
    """A run whose metrics are damaged is a note on stderr, not Python's warning with its
    source line, and the written plot names only the runs it holds."""
    clone_run(copied, ids["sgd"], 11, lr=0.5)
    (copied / "11" / "metrics.json").write_text("[1, 2]")
    monkeypatch.chdir(tmp_path)
    plot = Path("cmp.png")
    code, lines, err = reprolab(
        capsys, "compare", ids["sgd"], "11", "--store", copied, "--plot", plot
    )
    assert code == 0, err
    assert err.startswith("reprolab: note: run 11 left out: metrics not in") and "warn" not in err
    assert lines[-1] == f"wrote {plot} (val_accuracy of runs {ids['sgd']})"


def test_plot_metric_labels_curves_by_run_and_differing_config(store, ids):
    figure = plot_metric(store, [ids["debug"], ids["sgd"]], "val_loss")
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    axes = figure.axes[0]

    assert legend[0].startswith(f"run {ids['debug']}: epochs=1, lr=0.01, opt.name=adam, seed=")
    assert legend[1].startswith(f"run {ids['sgd']}: epochs=2, lr=0.05, opt.name=sgd, seed=")
    assert [len(line.get_xdata()) for line in axes.get_lines()] == [1, 2]
    assert axes.get_ylabel() == "val_loss" and axes.get_xlabel() == "epoch"  # as the runs recorded


@pytest.mark.parametrize(
    "argv, message",
    [
        (("1",), "compare needs two or more runs (for one run: reprolab show 1)"),
        (("1", "x"), "'x' is not a run id"),
        (
            ("1", "2", "--metric", "accuracy"),
            "no run of 1, 2 recorded the metric 'accuracy' (recorded: lr, ",
        ),
        (("1", "2", "--plot", "cmp.jpg"), "plot file 'cmp.jpg' must end in .png"),
        (("1", "42"), "no run 42 in"),
    ],
)
def test_compare_refuses_bad_arguments_in_one_sentence(
    store, capsys, argv, message, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    code, _, err = reprolab(capsys, "compare", *argv, "--store", store)
    assert code == 2 and err.startswith(f"reprolab: error: {message}") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_compare_of_many_runs_wraps_into_blocks(copied, ids, capsys):
    for target in range(11, 17):
        clone_run(copied, ids["sgd"], target, lr=target / 1000)
    code, lines, _ = reprolab(capsys, "compare", *range(11, 17), ids["debug"], "--store", copied)
    assert code == 0 and "" in lines  # a blank line between blocks
    headers = [line.split() for line in lines if line.startswith("run ")]
    assert len(headers) >= 2 and sum(len(h) - 1 for h in headers) == 7


# --------------------------------------------------------------------------- export


def test_export_parquet_round_trips(store, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = Path("runs.parquet")
    code, lines, _ = reprolab(capsys, "export", "--store", store, "--to", target)
    runs, back = load_runs(store), pd.read_parquet(target)

    assert code == 0 and lines == [f"wrote 2 runs x {len(runs.columns)} columns to {target}"]
    assert list(back.columns) == list(runs.columns) and list(back.index) == list(runs.index)
    scalar = [c for c in runs.columns if runs[c].map(lambda v: not isinstance(v, tuple)).all()]
    pd.testing.assert_frame_equal(back[scalar], runs[scalar], check_dtype=False)
    assert (
        back["start_time"].dtype == "datetime64[us, UTC]"
        and back["duration"].dtype == "timedelta64[us]"
    )
    assert [list(v) for v in back["config.model.hidden"]] == [[128, 64], [128, 64]]


def test_export_csv_round_trips(store, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = Path("runs.csv")
    assert reprolab(capsys, "export", "--store", store, "--to", target)[0] == 0
    runs = load_runs(store)
    back = pd.read_csv(
        target, index_col="run_id", parse_dates=["start_time", "stop_time", "heartbeat"]
    )

    assert list(back.columns) == list(runs.columns) and list(back.index) == list(runs.index)
    numbers = runs.select_dtypes(["int64", "float64"]).columns
    pd.testing.assert_frame_equal(back[numbers], runs[numbers], check_dtype=False)
    assert (back["start_time"] == runs["start_time"]).all()
    assert (pd.to_timedelta(back["duration"]) == runs["duration"]).all()
    assert (back["config.optimizer.name"] == runs["config.optimizer.name"]).all()


@pytest.mark.parametrize(
    "name, message",
    [
        ("runs.txt", "--to: '{target}' must end in .parquet or .csv"),
        ("missing/runs.csv", "--to: directory {parent} does not exist"),
    ],
)
def test_export_refuses_a_bad_target(store, capsys, tmp_path, name, message):
    target = tmp_path / name
    code, _, err = reprolab(capsys, "export", "--store", store, "--to", target)
    assert (
        code == 2
        and err == f"reprolab: error: {message.format(target=target, parent=target.parent)}\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_export_keeps_a_column_of_mixed_types_as_text(tmp_path):
    runs = pd.DataFrame(
        {"config.device": [0, "cuda:1"], "val_loss.min": [0.5, 0.25]},
        index=pd.Index([1, 2], name="run_id"),
    )
    write_table(runs, str(tmp_path / "mixed.parquet"), ".parquet")
    back = pd.read_parquet(tmp_path / "mixed.parquet")
    assert back["config.device"].tolist() == ["0", "cuda:1"] and back["val_loss.min"].tolist() == [
        0.5,
        0.25,
    ]


def test_long_data_paths_keep_their_file_name_in_ls_and_show(store, ids, capsys, tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    folder = "/home/someone/projects/" + "deeper/" * 8
    for run_id, name in ((1, "digits_a.parquet"), (2, "digits_b.parquet")):
        shutil.copytree(store / str(ids["sgd"]), root / str(run_id))
        for part, node in (("config.json", ("data",)), ("info.json", ("data", "fingerprint"))):
            record = json.loads((root / str(run_id) / part).read_text())
            leaf = record
            for key in node:
                leaf = leaf[key]
            leaf["path"] = folder + name
            write_json_atomic(root / str(run_id) / part, record)

    _, lines, _ = reprolab(capsys, "ls", "--store", root)
    cells = [line.split()[-2] for line in lines[1:3]]  # data.path, the one config key that varies
    assert [cell[0] + cell[-16:] for cell in cells] == ["…digits_a.parquet", "…digits_b.parquet"]
    _, lines, _ = reprolab(capsys, "show", "2", "--store", root)
    data = [line for line in lines if line.split()[:1] in (["data"], ["data.path"])]
    assert len(data) == 2 and all(line.endswith("/deeper/digits_b.parquet") for line in data)


def test_ls_of_an_empty_store_imports_neither_torch_nor_pandas(tmp_path, repo_root):
    probe = (
        "import sys; from experiments.cli import main; main(['ls', '--store', sys.argv[1]]); "
        "print(sorted({'torch', 'pandas', 'matplotlib'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=repo_root,
        timeout=120,
    )
    assert result.stdout.splitlines() == [f"no runs in {tmp_path}", "[]"], result.stderr


def sweep_frame(resumes: list, best: list[float], configs: list[int | None]) -> pd.DataFrame:
    """load_runs' columns of a sweep's runs 1..n: config index (Int64: a record without one
    reads as NA), `resume=` and a metric's max."""
    return pd.DataFrame(
        {
            "sweep_index": pd.array(configs, dtype="Int64"),
            "config.resume": resumes,
            "val_accuracy.max": best,
        },
        index=pd.Index(range(1, len(configs) + 1), name="run_id"),
    )


def test_a_continued_run_ranks_by_every_epoch_of_its_config():
    """Run 3 continues run 2, which continued run 1, whose epochs held config 0's best; run 4
    (config 1) names a run of config 0 and run 5 itself: neither counts another's epochs."""
    runs = sweep_frame([None, 1.0, 2.0, 1.0, 5.0], [0.9, 0.5, 0.6, 0.3, 0.4], [0, 0, 0, 1, 2])
    runs["config.clip.max"] = [(1,), (1,), [2], 3, 4]  # a config key, not a metric's summary
    latest = latest_runs(runs)
    assert list(latest.index) == [3, 4, 5]
    assert latest["val_accuracy.max"].tolist() == [0.9, 0.3, 0.4]
    assert latest["config.clip.max"].tolist() == [[2], 3, 4]
    assert runs["val_accuracy.max"].tolist() == [0.9, 0.5, 0.6, 0.3, 0.4]  # the input kept


links = st.one_of(
    st.none(),
    st.integers(-2, 12),
    st.integers(),
    st.just(10**400),  # JSON keeps a whole number of any size
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(max_size=3),
)


configs = st.one_of(st.none(), st.integers(0, 2))


@given(st.lists(st.tuples(links, st.floats(0, 1), configs), min_size=1, max_size=10))
def test_any_resume_links_leave_each_configs_latest_run_within_its_configs_values(rows):
    """Whatever a store's `resume` cells and sweep indices hold (loops, other configs, ids not
    listed, huge numbers, text, none), each config's latest run is shown, no better than its
    config's best and no worse than itself; a run without a config index counts only itself."""
    resumes, best, indices = (list(column) for column in zip(*rows, strict=True))
    runs = sweep_frame(resumes, best, indices)
    latest = latest_runs(runs)
    groups = {c: [i + 1 for i, d in enumerate(indices) if d == c] for c in set(indices)}
    assert list(latest.index) == sorted(max(ids) for ids in groups.values())
    for run_id, row in latest.iterrows():
        peers = groups[indices[run_id - 1]] if indices[run_id - 1] is not None else [run_id]
        value, own = row["val_accuracy.max"], runs.at[run_id, "val_accuracy.max"]
        assert own <= value <= runs.loc[peers, "val_accuracy.max"].max()


def test_the_best_so_far_line_counts_completed_trials_and_reaches_the_last_trial(tmp_path):
    runs = pd.DataFrame(
        {
            "trial": [3, 0, 1, 2, 4],
            "status": ["COMPLETED", "COMPLETED", "PRUNED", "COMPLETED", "PRUNED"],
            "v": [0.7, 0.5, 0.9, 0.4, 0.95],  # a pruned trial's value is no best
        }
    )
    assert best_so_far(runs, "v", maximize=True) == ([0, 2, 3, 4], [0.5, 0.5, 0.7, 0.7])
    assert best_so_far(runs, "v", maximize=False) == ([0, 2, 3, 4], [0.5, 0.4, 0.4, 0.4])
    assert best_so_far(runs[runs.status == "PRUNED"], "v", maximize=True) == ([], [])
    lost = runs.assign(trial=pd.array([3, 0, None, 2, 4], dtype="Int64"), status="COMPLETED")
    assert best_so_far(lost, "v", maximize=True) == ([0, 2, 3, 4], [0.5, 0.5, 0.7, 0.95])
    plot_search(runs.rename(columns={"v": "v.max"}), "v.max", {"lr": 1.0}, tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes().startswith(b"\x89PNG")
