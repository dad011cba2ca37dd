"""A run store is data: whoever can write one cannot make reprolab run code, and odd entries in a
store never keep the rest of it from being listed."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mongomock
import pytest
import torch
from mongomock.gridfs import enable_gridfs_integration

import experiments.child as child_module
import observers.mongo as om
from experiments.cli import main as reprolab
from observers.mongo_store import MongoRunStore
from observers.records import ObjectEncoding, loads_plain
from observers.store import SUMMARY_CACHE, RecordError
from observers.tables import load_runs
from tests.helpers import REPO_ROOT, run_reprolab, sweep_record_file

enable_gridfs_integration()  # mongomock's databases accepted by gridfs, as in test_mongo


def payload(marker: Path) -> dict:
    """What Sacred's JSON codec decodes into `Path(marker).touch()`."""
    path = {"py/reduce": [{"py/type": "pathlib.PosixPath"}, {"py/tuple": [str(marker)]}]}
    return {"py/reduce": [{"py/function": "pathlib.Path.touch"}, {"py/tuple": [path]}]}


@pytest.fixture(scope="module")
def recorded(trained_store) -> Path:
    """A store with one real, completed run (with checkpoints) to tamper with."""
    return trained_store("untrusted_store", [("epochs=2", "limit_batches=3", "progress=False")])


@pytest.fixture
def store(recorded, tmp_path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(recorded, copy)
    return copy


def edit(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def one_sentence(capsys, *argv: str) -> str:
    """`reprolab ARGV` in-process: exit 2 and exactly one line on stderr."""
    assert reprolab(list(argv)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reprolab: error: "), lines
    return lines[0]


# --------------------------------------------------------------------------- records are data


@pytest.mark.parametrize(
    "record, key", [("config.json", "lr"), ("info.json", "device"), ("run.json", "meta")]
)
def test_object_encoding_in_a_record_is_refused_and_never_runs(
    store, tmp_path, capsys, record, key
):
    marker = tmp_path / "MARKER"
    edit(store / "1" / record, lambda r: r.__setitem__(key, payload(marker)))
    message = one_sentence(capsys, "rerun", "1", "--store", str(store))
    assert f"run 1: {store / '1' / record} holds the object-encoding key 'py/" in message
    assert reprolab(["ls", "--store", str(store)]) == 0  # the store is still listed
    if record != "info.json":  # ls reads no info; the run is listed with the refusal as its note
        assert "holds the object-encoding key 'py/" in load_runs(store).loc[1, "note"]
    assert not marker.exists()


def test_keys_that_only_decode_to_object_encoding_are_refused_too():
    for text in (
        '{"a": {"\\u0070y/object": "os.system"}}',
        '{"py\\/function": 1}',
        '{"json://{\\"py/reduce\\": 1}": 2}',
    ):
        with pytest.raises(ObjectEncoding):
            loads_plain(text)
    assert loads_plain('{"note": "py/reduce is only text here"}') == {
        "note": "py/reduce is only text here"
    }


def test_object_encoding_in_a_mongodb_document_is_refused(monkeypatch, tmp_path):
    client = mongomock.MongoClient()
    client["sacred"]["runs"].insert_one(
        {"_id": 1, "status": "COMPLETED", "config": {"lr": payload(tmp_path / "MARKER")}}
    )
    monkeypatch.setattr(om, "make_client", lambda url, **options: client)
    store = MongoRunStore("mongodb://127.0.0.1:27017/sacred")
    with pytest.raises(
        RecordError, match="run 1: the config in .* holds the object-encoding key 'py/"
    ):
        store.config(1)
    assert not (tmp_path / "MARKER").exists()


def test_a_record_cannot_choose_the_file_a_plain_rerun_executes(store, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    (store / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")

    def point_into_store(run):
        run["experiment"].update(base_dir=str(store), mainfile="evil.py")

    edit(store / "1" / "run.json", point_into_store)
    message = one_sentence(capsys, "rerun", "1", "--store", str(store))
    assert message.endswith(
        "main file evil.py is not a Python file in the checkout "
        f"{child_module.CHECKOUT_ROOT} (--from-recorded-sources runs the "
        "stored copies)"
    )

    edit(
        store / "1" / "run.json",
        lambda run: run["experiment"].update(
            mainfile=os.path.relpath(store / "evil.py", child_module.CHECKOUT_ROOT)
        ),
    )
    message = one_sentence(capsys, "rerun", "1", "--store", str(store))
    assert "lies outside the checkout" in message
    assert not marker.exists()


def test_a_main_file_in_a_store_inside_the_checkout_is_refused(
    store, tmp_path, capsys, monkeypatch
):
    checkout = tmp_path / "checkout"
    (checkout / "experiments").mkdir(parents=True)
    inner = checkout / "runs"
    shutil.copytree(store, inner)
    marker = tmp_path / "MARKER"
    (inner / "_sources" / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    edit(
        inner / "1" / "run.json",
        lambda run: run["experiment"].update(mainfile="runs/_sources/evil.py"),
    )
    monkeypatch.setattr(child_module, "CHECKOUT_ROOT", checkout.resolve())
    message = one_sentence(capsys, "rerun", "1", "--store", str(inner))
    assert "main file 'runs/_sources/evil.py' lies inside a run store, so it was not run" in message
    assert not marker.exists()


def forge_checkpoint_config(store: Path, change) -> subprocess.CompletedProcess:
    """Change the config inside run 1's last.pt (and its recorded hash, which the writer of a
    store can update too), then resume it; the finished resume."""
    checkpoint = store / "1" / "last.pt"
    state = torch.load(checkpoint, weights_only=True)
    change(state["config"])
    buffer = io.BytesIO()
    torch.save(state, buffer)
    checkpoint.write_bytes(buffer.getvalue())
    edit(
        store / "1" / "info.json",
        lambda info: info["checkpoints"]["last.pt"].update(
            sha256=hashlib.sha256(buffer.getvalue()).hexdigest(),
            size=len(buffer.getvalue()),  # (else refused unread by its size)
        ),
    )
    return subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "experiments" / "train.py"),
            "-R",
            str(store),
            "with",
            "resume=1",
            "epochs=3",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=600,
    )


def test_a_checkpoint_whose_config_is_not_plain_data_is_not_resumed(store, tmp_path):
    marker = tmp_path / "MARKER"
    result = forge_checkpoint_config(store, lambda config: config.update(lr=payload(marker)))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: resume: run 1's checkpoint last.pt: its config holds the object-encoding key "
        "'py/reduce', which could run code when read back, so it was refused (records are read "
        "as plain data only)"
    )
    assert sorted(p.name for p in store.iterdir() if not p.name.startswith(".")) == [
        "1",
        "_sources",
    ]
    assert not marker.exists()


def hub_in_store(store: Path, marker: Path) -> dict:
    """A model section naming torch.hub:load on a hub folder planted in the store: importing its
    hubconf.py would touch the marker."""
    hub = store / "1" / "hub"
    hub.mkdir()
    (hub / "hubconf.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    return {
        "name": "torch.hub:load",
        "kwargs": {"repo_or_dir": str(hub), "source": "local", "model": "m", "trust_repo": True},
    }


@pytest.mark.slow
def test_a_record_cannot_name_installed_code_for_a_rerun_to_run(store, tmp_path):
    marker = tmp_path / "MARKER"
    model = hub_in_store(store, marker)
    edit(store / "1" / "config.json", lambda config: config["model"].update(model))
    result = run_reprolab("rerun", "1", "--store", str(store))
    assert result.returncode == 1
    assert "error: model.name: the record names 'torch.hub:load', installed code (" in result.stderr
    assert "a record does not choose what runs; rerun it with --trust-import-paths to run it" in (
        result.stderr
    )
    assert not marker.exists() and not (store / "2").exists()


@pytest.mark.slow
def test_a_checkpoint_cannot_name_installed_code_for_a_resume_to_run(store, tmp_path):
    marker = tmp_path / "MARKER"
    result = forge_checkpoint_config(
        store, lambda config: config["model"].update(hub_in_store(store, marker))
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "a record does not choose what runs; name it yourself to run it: with resume=1 "
            "model.name=torch.hub:load"
        )
    )
    assert not marker.exists() and not (store / "2").exists()


@pytest.mark.parametrize("reach", ["own folder", "/proc/self/cwd", "dangling store markers"])
def test_a_recorded_code_folder_is_never_searched(store, tmp_path, reach):
    """Replaces "a recorded code folder others can write to is not searched": no folder a record
    names is searched, whoever owns it and however the path reaches it (the user's own 0o700
    folder; a path through /proc/self/cwd; a store whose _sources and .reprolab are dangling
    links, so it no longer looks like a store)."""
    marker, planted = tmp_path / "MARKER", tmp_path / "planted"
    planted.mkdir(mode=0o700)
    (planted / "plantedmod.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\ndef make(**kwargs): pass\n"
    )
    root, cwd = str(planted), REPO_ROOT
    if reach == "/proc/self/cwd":
        root, cwd = "/proc/self/cwd/planted", tmp_path
    if reach == "dangling store markers":
        shutil.move(planted / "plantedmod.py", store / "1" / "plantedmod.py")
        root = str(store / "1")
        for name in ("_sources", ".reprolab"):
            shutil.rmtree(store / name, ignore_errors=True)
            (store / name).symlink_to(tmp_path / "nowhere")
    edit(store / "1" / "config.json", lambda config: config["model"].update(name="plantedmod:make"))
    edit(
        store / "1" / "info.json",
        lambda info: info.update(
            outside_code={"roots": [root], "modules": {"plantedmod": f"{root}/plantedmod.py"}}
        ),
    )
    result = subprocess.run(
        [sys.executable, "-m", "experiments.cli", "rerun", "1", "--store", str(store)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=600,
    )
    assert result.returncode in (1, 2), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    if result.returncode == 1:  # it started, and the import path was not found
        assert "model.name: cannot import 'plantedmod:make': no module 'plantedmod'" in (
            result.stderr
        )
    assert "searched again" not in result.stdout
    assert not marker.exists()


def test_a_main_file_that_defines_no_experiment_is_not_run(store, capsys):
    """A record naming another Python file of the checkout (the data preparation script) as its
    main file: refused without importing it, and a plain rerun says which file it runs."""
    edit(
        store / "1" / "run.json",
        lambda run: run["experiment"].update(mainfile="data/make_digits.py"),
    )
    digits = REPO_ROOT / "data" / "digits.parquet"
    before = digits.stat().st_mtime_ns
    message = one_sentence(capsys, "rerun", "1", "--store", str(store))
    assert message.endswith(
        "run 1's main file data/make_digits.py is a file of the checkout that defines no "
        "experiment (no module-level Experiment and no automain or run_commandline), so it "
        "was not run"
    )
    assert digits.stat().st_mtime_ns == before
    edit(
        store / "1" / "run.json",
        lambda run: run["experiment"].update(mainfile="experiments/train.py"),
    )
    assert reprolab(["rerun", "1", "--store", str(store), "--world-size", "0"]) == 2
    assert (
        f"running {REPO_ROOT / 'experiments' / 'train.py'}, the checkout's experiment file that "
        "run 1 names"
    ) in capsys.readouterr().out


# --------------------------------------------------------------------------- odd entries


def test_a_damaged_store_still_lists_every_good_run(store, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(store, other)
    shutil.copytree(store / "1", store / "2")
    for odd in ("³", "٣", "007"):
        shutil.copytree(store / "1", store / odd)
    (store / "5").symlink_to(other / "1")

    def wrong_types(run):
        run.update(host="a string", experiment=["a", "list"], start_time=5)

    edit(store / "2" / "run.json", wrong_types)

    true_max = load_runs(store).loc[1, "val_accuracy.max"]  # writes the summary cache
    metrics = store / "1" / "metrics.json"
    before = metrics.stat()
    text = metrics.read_text()
    old = repr(float(true_max))
    false_text = text.replace(old, old[:-1] + ("1" if old[-1] != "1" else "2"))
    assert false_text != text and len(false_text) == len(text)
    metrics.write_text(false_text)  # same size, and the mtime set back: only ctime tells
    os.utime(metrics, ns=(before.st_atime_ns, before.st_mtime_ns))
    cache = json.loads((store / SUMMARY_CACHE).read_text())
    cache["2"] = {"key": "garbage", "summary": [1, 2]}
    cache["3"] = "not an entry"
    (store / SUMMARY_CACHE).write_text(json.dumps(cache))

    assert reprolab(["ls", "--store", str(store)]) == 0
    out, err = capsys.readouterr()
    listed = [line.split()[0] for line in out.splitlines()[1:] if line.split()[0].isdigit()]
    assert listed == ["1", "2"]
    assert "run 2: run.json: experiment, host, start_time of an unexpected type" in out
    for odd in ("³", "٣", "007"):
        assert f"reprolab: note: skipped {store / odd}: not a run id" in err
    assert (
        f"reprolab: note: skipped {store / '5'}: a link to {(other / '1').resolve()}, outside the store"
        in err
    )

    runs = load_runs(store)
    assert list(runs.index) == [1, 2]
    assert runs.loc[1, "val_accuracy.max"] == max(json.loads(false_text)["val_accuracy"]["values"])
    assert runs.loc[1, "val_accuracy.max"] != true_max  # the cache entry was rebuilt, not believed
    for argv in (
        ["show", "2"],
        ["compare", "1", "2"],
        ["export", "--to", str(tmp_path / "runs.csv")],
    ):
        assert reprolab([*argv, "--store", str(store)]) == 0, argv
    assert "host        unreadable" in capsys.readouterr().out


def test_a_fifo_or_a_device_in_place_of_a_record_is_noted_not_read(store, capsys):
    """Opening a FIFO waits for a writer and /dev/zero never ends: either would hang `ls`."""
    for run_id in ("7", "8", "9"):
        (store / run_id).mkdir()
    os.mkfifo(store / "7" / "run.json")
    (store / "8" / "run.json").symlink_to("/dev/zero")
    for name in ("run.json", "config.json"):
        shutil.copy(store / "1" / name, store / "9" / name)
    os.mkfifo(store / "9" / "metrics.json")
    assert reprolab(["ls", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    for run_id, name in (("7", "run.json"), ("9", "metrics.json")):
        assert f"* run {run_id}: {name} is not a regular file, so it was not read" in out
    assert "* run 8: run.json is a link, so it was not read" in out  # never followed
    assert load_runs(store).loc[1, "status"] == "COMPLETED"


# --------------------------------------------------------------------------- sweep records are data


@pytest.fixture
def sweep_record(tmp_path, capsys) -> tuple[Path, Path]:
    """A file store holding one sweep's record (--print-commands: recorded, nothing run)."""
    store = tmp_path / "sweep_store"
    assert (
        reprolab(
            [
                "sweep",
                str(REPO_ROOT / "experiments" / "train.py"),
                "--store",
                str(store),
                "--print-commands",
                "with",
                "lr=[0.1, 0.01]",
                "epochs=1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    record = sweep_record_file(store)
    return store, record


def evil_file(folder: Path, marker: Path, name: str = "evil.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    return folder / name


def test_a_sweep_record_cannot_choose_the_file_resume_runs(sweep_record, tmp_path, capsys):
    store, record = sweep_record
    marker = tmp_path / "ran"
    evil = evil_file(store / "1", marker)
    for named in (str(evil), os.path.relpath(evil, REPO_ROOT)):
        edit(record, lambda r, named=named: r.update(experiment=named))
        message = one_sentence(
            capsys, "sweep", "--resume", record.stem, "--store", str(store), "--print-commands"
        )
        assert f"sweep {record.stem}'s experiment {named!r} lies outside the checkout" in message
    # a stale absolute path from an older record is never what runs: the checkout's file is
    edit(record, lambda r: r.update(experiment="experiments/train.py", experiment_path=str(evil)))
    assert (
        reprolab(["sweep", "--resume", record.stem, "--store", str(store), "--print-commands"]) == 0
    )
    commands = capsys.readouterr().out.splitlines()
    assert commands[0].split()[1] == str(REPO_ROOT / "experiments" / "train.py")
    assert not marker.exists()


def test_a_sweep_record_cannot_name_a_checkout_file_that_is_no_experiment(sweep_record, capsys):
    store, record = sweep_record
    edit(record, lambda r: r.update(experiment="data/make_digits.py"))
    message = one_sentence(capsys, "sweep", "--resume", record.stem, "--store", str(store))
    assert message.endswith(
        f"sweep {record.stem}'s experiment data/make_digits.py is a file of the checkout that "
        "defines no experiment (no module-level Experiment and no automain or run_commandline), "
        "so it was not run"
    )


def test_a_sweep_records_config_cannot_choose_a_run_to_continue(sweep_record, capsys):
    store, record = sweep_record
    edit(record, lambda r: r["configs"][1].update(resume=1))
    message = one_sentence(
        capsys, "sweep", "--resume", record.stem, "--store", str(store), "--print-commands"
    )
    assert message == (
        f"reprolab: error: sweep {record.stem}'s config 1 sets resume=1, which chooses a run to "
        "continue; a sweep's configs describe new runs, so nothing was run"
    )
    assert len(json.loads(record.read_text())["attempts"]) == 1  # nothing recorded


def test_a_sweep_files_experiment_inside_a_run_store_is_refused_even_dry(tmp_path, capsys):
    """Refused before anything of the file is loaded, --dry-run included."""
    inside = Path(tempfile.mkdtemp(dir=REPO_ROOT, prefix=".test-store-"))
    try:
        marker = tmp_path / "ran"
        evil = evil_file(inside / "_sources", marker)
        (inside / "_sources" / "evil.py").write_text(
            evil.read_text() + "from sacred import Experiment\nex = Experiment('x')\n"
            "if __name__ == '__main__':\n    ex.run_commandline()\n"
        )
        sweep_file = tmp_path / "sweep.yaml"
        sweep_file.write_text(
            f"experiment: {evil.relative_to(REPO_ROOT).as_posix()}\ngrid:\n  lr: [0.1, 0.01]\n"
        )
        message = one_sentence(capsys, "sweep", "--file", str(sweep_file), "--dry-run")
        assert "lies inside a run store, so it was not run" in message
        message = one_sentence(capsys, "sweep", str(evil), "--dry-run", "with", "lr=[0.1, 0.2]")
        assert "lies inside a run store, so it was not run" in message
        assert not marker.exists()
    finally:
        shutil.rmtree(inside)


def test_a_sweep_record_in_a_store_inside_the_checkout_cannot_run_its_file(
    sweep_record, tmp_path, capsys
):
    store, record = sweep_record
    inside = Path(tempfile.mkdtemp(dir=REPO_ROOT, prefix=".test-store-"))
    try:
        marker = tmp_path / "ran"
        evil = evil_file(inside / "_sources", marker)
        edit(record, lambda r: r.update(experiment=evil.relative_to(REPO_ROOT).as_posix()))
        message = one_sentence(capsys, "sweep", "--resume", record.stem, "--store", str(store))
        assert "lies inside a run store, so it was not run" in message and not marker.exists()
    finally:
        shutil.rmtree(inside)


def test_object_encoding_in_a_sweep_record_is_refused(sweep_record, tmp_path, capsys, monkeypatch):
    store, record = sweep_record
    marker = tmp_path / "ran"
    edit(record, lambda r: r["configs"][0].update(lr=payload(marker)))
    for command in ("--status", "--resume"):
        message = one_sentence(capsys, "sweep", command, record.stem, "--store", str(store))
        assert "holds the object-encoding key 'py/" in message
    # MongoDB's sweeps collection is read as plain data too
    client = mongomock.MongoClient()
    monkeypatch.setattr(om, "make_client", lambda url, **options: client)
    hostile = json.loads(record.read_text(), object_pairs_hook=dict)
    client["sacred"]["sweeps"].insert_one({"_id": hostile["id"], **hostile})
    message = one_sentence(
        capsys, "sweep", "--resume", hostile["id"], "--store", "mongodb://db.example:27017/sacred"
    )
    assert "holds the object-encoding key 'py/" in message and not marker.exists()


def test_a_sweep_config_key_sacred_would_misread_is_refused(sweep_record, tmp_path, capsys):
    """A key that is no dotted name could smuggle a second value past `key=value`."""
    store, record = sweep_record
    edit(record, lambda r: r["configs"][0].update({"seed={'a': 1}#": 1}))
    message = one_sentence(capsys, "sweep", "--resume", record.stem, "--store", str(store))
    assert "config 0: config key \"seed={'a': 1}#\" is not a dotted name" in message


class Touch:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_sweep_records_named_configs_are_names_never_files(sweep_record, tmp_path, capsys):
    store, record = sweep_record
    marker = tmp_path / "ran"
    (store / "1").mkdir()
    pickled = store / "1" / "cfg.pickle"
    pickled.write_bytes(pickle.dumps(Touch(marker), protocol=4))  # pickle.load touches marker
    for name in (str(pickled), os.path.relpath(pickled), "cfg.pickle"):
        edit(record, lambda r, name=name: r.update(named_configs=[name]))
        message = one_sentence(capsys, "sweep", "--resume", record.stem, "--store", str(store))
        assert f"named config {name!r} is not one of train.py's named configs" in message
    assert (
        not marker.exists() and len(json.loads(record.read_text())["attempts"]) == 1
    )  # nothing recorded


def test_a_config_file_on_the_command_line_is_recorded_as_its_values(tmp_path, capsys):
    store = tmp_path / "sweep_store"
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"optimizer": {"name": "adam"}, "epochs": 3}))
    assert (
        reprolab(
            [
                "sweep",
                str(REPO_ROOT / "experiments" / "train.py"),
                "--store",
                str(store),
                "--print-commands",
                "with",
                str(config),
                "lr=[0.1, 0.01]",
                "epochs=1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    path = sweep_record_file(store)
    record = json.loads(path.read_text())
    assert record["named_configs"] == [] and str(config) not in path.read_text()
    assert [(c["optimizer.name"], c["epochs"]) for c in record["configs"]] == [("adam", 1)] * 2


@pytest.mark.parametrize(
    "record, field",
    [
        ({"id": "s1"}, "experiment must be a str"),
        (
            {
                "id": "s1",
                "experiment": "experiments/train.py",
                "named_configs": [],
                "configs": [{}],
                "attempts": [{"engine": "slurm", "task_ids": {"x": 1}}],
            },
            "attempts[0].task_ids must be",
        ),
    ],
)
def test_a_sweep_record_of_the_wrong_shape_is_one_sentence(tmp_path, capsys, record, field):
    sweeps = tmp_path / "store" / ".reprolab" / "sweeps"
    sweeps.mkdir(parents=True)
    (sweeps / "s1.json").write_text(json.dumps(record))
    for command in ("--status", "--resume"):
        message = one_sentence(capsys, "sweep", command, "s1", "--store", str(tmp_path / "store"))
        assert f"sweep s1's record is damaged: {field}" in message


def test_a_sweep_record_that_is_not_plain_data_is_not_saved(tmp_path):
    from observers.sweep_records import FileSweepRecords

    with pytest.raises(ValueError, match="sweep s1's record holds a value that is not plain data"):
        FileSweepRecords(tmp_path).save({"id": "s1", "value": object()})
    assert not list(tmp_path.rglob("*.json"))


def test_recorded_slurm_options_cannot_add_to_the_job_script():
    from experiments.sweeps.slurm import SlurmOptions

    with pytest.raises(RecordError, match=r"partition='p\\ntouch /tmp/x' is not a plain word"):
        SlurmOptions.recorded({"partition": "p\ntouch /tmp/x"})
    options = SlurmOptions.recorded(
        {"partition": "gpu", "cpus": 2, "extra": {"export": "LD_PRELOAD=x"}}
    )
    assert options.partition == "gpu" and options.cpus == 2 and options.extra == {}
