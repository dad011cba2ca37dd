"""Tests of the data ingredient on real files: the bundled digits and small tables in tmp_path."""

import gc
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
import pytest
import torch
from pyarrow import feather
from sacred import Experiment

import ingredients.batches as batches_module
import ingredients.data as data_module
from ingredients.checkout import CHECKOUT_ROOT as REPO_ROOT
from ingredients.columnar import RowFile
from ingredients.data import (
    data,
    describe,
    load_splits,
    make_loader,
    row_major_table,
)

SPLIT_KEYS = (
    "path",
    "format",
    "target",
    "features",
    "shape",
    "standardize",
    "val_fraction",
    "split_seed",
    "in_memory_mb",
)
LOADER_KEYS = ("batch_size", "shuffle", "drop_last", "num_workers", "pin_memory")
DEFAULTS = dict(data.configurations[0]())
DIGITS = REPO_ROOT / "data" / "digits.parquet"


def load(**overrides):
    """load_splits with the config defaults, every argument passed explicitly (no Sacred run)."""
    return load_splits(**{k: overrides.get(k, DEFAULTS[k]) for k in SPLIT_KEYS})


def loader(dataset, train=True, generator=None, **overrides):
    """make_loader with the config defaults (pin_memory off), every argument passed explicitly."""
    options = {k: {**DEFAULTS, "pin_memory": False, **overrides}[k] for k in LOADER_KEYS}
    return make_loader(dataset, train, **options, generator=generator)


def batches(batch_loader):
    """One epoch of batches as a list of (features, targets)."""
    return [(x.clone(), y.clone()) for x, y in batch_loader]


def whole(dataset):
    """Every sample of a dataset, gathered in order."""
    return dataset[torch.arange(len(dataset))]


@pytest.fixture(scope="module")
def digits_table():
    return pq.read_table(DIGITS)


@pytest.fixture
def ids_file(tmp_path):
    """A 103-row Parquet file whose first feature is the row number, to track samples."""
    n = 103
    rng = np.random.default_rng(7)
    table = pa.table(
        {
            "row": np.arange(n, dtype=np.float64),
            "noise": rng.normal(size=n).astype(np.float32),
            "label": rng.integers(0, 3, size=n),
        }
    )
    path = tmp_path / "ids.parquet"
    pq.write_table(table, path)
    return path


@pytest.fixture
def ids_ipc(ids_file, tmp_path):
    """The same rows as an uncompressed Arrow IPC file: with in_memory_mb=0 it is read per batch
    from disk (a row-major copy), where num_workers starts worker processes."""
    path = tmp_path / "ids.arrow"
    with pa_ipc.new_file(path, pq.read_schema(ids_file)) as writer:
        writer.write_table(pq.read_table(ids_file))
    return path


def epoch_rows(batch_loader):
    """Row numbers (from the 'row' feature) of every sample of one epoch, in order."""
    return torch.cat([x[:, 0] for x, _ in batch_loader]).long()


def test_bundled_digits_load():
    splits = load()
    assert len(splits.train) + len(splits.val) == 1797
    assert len(splits.val) == round(1797 * 0.2)
    assert splits.input_shape == (64,) and splits.num_classes == 10
    x, y = whole(splits.train)
    assert (
        x.dtype == torch.float32 and x.shape == (len(splits.train), 64) and y.dtype == torch.int64
    )
    assert splits.fingerprint["rows"] == 1797 and splits.fingerprint["columns"][-1] == "label"
    assert splits.fingerprint["format"] == "parquet"


def test_every_config_key_has_a_comment():
    summary = data.configurations[0]()
    assert set(summary) >= set(SPLIT_KEYS + LOADER_KEYS)
    assert all(summary.docs.get(key) for key in summary), summary.docs


def test_formats_give_identical_tensors(tmp_path, digits_table):
    pq.write_table(digits_table, tmp_path / "d.parquet")
    feather.write_feather(digits_table, tmp_path / "d.feather")  # lz4-compressed Feather v2
    with pa_ipc.new_file(
        tmp_path / "d.arrow", digits_table.schema
    ) as writer:  # uncompressed, several batches
        writer.write_table(digits_table, max_chunksize=500)
    pa_csv.write_csv(digits_table, tmp_path / "d.csv")
    results = [
        load(path=str(tmp_path / name), shape=[1, 8, 8])
        for name in ("d.parquet", "d.feather", "d.arrow", "d.csv")
    ]
    reference = results[0]
    for other in results[1:]:
        for split in ("train", "val"):
            (xa, ya), (xb, yb) = whole(getattr(reference, split)), whole(getattr(other, split))
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert other.standardization == reference.standardization
    assert [r.fingerprint["format"] for r in results] == ["parquet", "ipc", "ipc", "csv"]


@pytest.mark.parametrize("in_memory_mb, num_workers", [(1024, 0), (0, 0), (0, 2)])
def test_each_training_sample_once_per_epoch(ids_ipc, in_memory_mb, num_workers):
    splits = load(path=str(ids_ipc), standardize=False, in_memory_mb=in_memory_mb)
    assert splits.train.in_memory == bool(in_memory_mb)
    generator = torch.Generator().manual_seed(0)
    train = loader(splits.train, generator=generator, batch_size=10, num_workers=num_workers)
    assert len(train) == 9  # 82 training rows
    first, second = epoch_rows(train), epoch_rows(train)
    expected = torch.from_numpy(splits.train.rows)
    assert torch.equal(first.sort().values, expected) and torch.equal(
        second.sort().values, expected
    )
    assert not torch.equal(first, second)  # reshuffled every epoch
    dropping = loader(
        splits.train, generator=generator, batch_size=10, drop_last=True, num_workers=num_workers
    )
    sizes = [len(y) for _, y in dropping]
    assert len(dropping) == 8 and sizes == [10] * 8
    val = loader(splits.val, train=False, batch_size=10, drop_last=True, num_workers=num_workers)
    assert len(val) == 3 and torch.equal(
        epoch_rows(val), torch.from_numpy(splits.val.rows)
    )  # in order, all


def test_generator_seed_decides_the_batches(ids_ipc):
    splits = load(path=str(ids_ipc), in_memory_mb=0)  # file-backed, so workers really start

    def run(seed, num_workers=0, epochs=2):
        g = torch.Generator().manual_seed(seed)
        batch_loader = loader(splits.train, generator=g, batch_size=16, num_workers=num_workers)
        return [batches(batch_loader) for _ in range(epochs)]

    def same(a, b):
        return all(
            torch.equal(xa, xb) and torch.equal(ya, yb)
            for ea, eb in zip(a, b)
            for (xa, ya), (xb, yb) in zip(ea, eb)
        )

    assert same(run(1), run(1))
    assert not same(run(1), run(2))
    assert same(run(1), run(1, num_workers=2))  # worker count does not change the order


def test_generator_state_resumes_the_next_epoch(ids_file):
    splits = load(path=str(ids_file))
    g = torch.Generator().manual_seed(3)
    batch_loader = loader(splits.train, generator=g, batch_size=16)
    batches(batch_loader)
    state = g.get_state()
    expected = batches(batch_loader)
    resumed = loader(splits.train, generator=torch.Generator().manual_seed(99), batch_size=16)
    resumed.sampler.generator.set_state(state)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(expected, batches(resumed)))


def test_split_is_seeded_disjoint_and_complete():
    a, b, c = load(split_seed=0), load(split_seed=0), load(split_seed=1)
    assert np.array_equal(a.val.rows, b.val.rows) and a.split == b.split
    assert not np.array_equal(a.val.rows, c.val.rows)
    assert a.split["val_rows_sha256"] != c.split["val_rows_sha256"]
    assert not set(a.train.rows) & set(a.val.rows)
    assert np.array_equal(np.sort(np.concatenate([a.train.rows, a.val.rows])), np.arange(1797))


def test_standardization_uses_training_statistics_only(digits_table):
    splits = load()
    raw = np.stack(
        [digits_table.column(f"pixel_{i}").to_numpy() for i in range(64)], axis=1
    ).astype(np.float64)
    train_raw = raw[splits.train.rows]
    np.testing.assert_allclose(splits.standardization["mean"], train_raw.mean(axis=0), rtol=1e-9)
    std = train_raw.std(axis=0)
    np.testing.assert_allclose(
        splits.standardization["std"], np.where(std > 0, std, 1.0), rtol=1e-9
    )
    x_train, _ = whole(splits.train)
    np.testing.assert_allclose(x_train.mean(0).numpy(), 0, atol=1e-5)
    varying = std > 0
    np.testing.assert_allclose(x_train.std(0, unbiased=False).numpy()[varying], 1, atol=1e-4)
    assert not np.allclose(
        raw[splits.val.rows].mean(axis=0), train_raw.mean(axis=0)
    )  # val is not the source
    assert all(type(v) is float for v in splits.standardization["mean"])
    assert load(standardize=False).standardization is None


def test_reshape_to_image():
    flat, image = load(), load(shape=[1, 8, 8])
    assert image.input_shape == (1, 8, 8)
    x_image, _ = image.train[[0, 5, 9]]
    assert x_image.shape == (3, 1, 8, 8)
    assert torch.equal(x_image.reshape(3, 64), flat.train[[0, 5, 9]][0])


def test_the_hash_runs_alongside_and_refuses_a_file_changed_meanwhile(tmp_path, monkeypatch):
    path = tmp_path / "d.parquet"
    path.write_bytes(DIGITS.read_bytes())
    release, hashing = threading.Event(), data_module.fingerprint_file

    def slow_then_changed(file):
        release.wait()
        value = hashing(file)
        os.utime(file, ns=(0, 0))  # as if the file were replaced while it was read
        return value

    monkeypatch.setattr(data_module, "fingerprint_file", slow_then_changed)
    splits = load(path=str(path))
    pending = splits.fingerprint_after(0)  # the splits are usable before the hash is done
    assert pending["sha256"] is None and pending["size"] == path.stat().st_size
    release.set()
    with pytest.raises(ValueError, match=f"data.path: {path} changed while it was read"):
        splits.fingerprint_after(None)


def test_fingerprint_matches_hashlib():
    fingerprint = load().fingerprint
    assert fingerprint["path"] == str(DIGITS.resolve())
    assert fingerprint["size"] == DIGITS.stat().st_size
    assert fingerprint["sha256"] == hashlib.sha256(DIGITS.read_bytes()).hexdigest()


@pytest.mark.parametrize("standardize", [True, False])
def test_ipc_read_from_disk_matches_in_memory(tmp_path, digits_table, standardize):
    table = digits_table.set_column(
        0, "pixel_0", pa.array(np.arange(1797, dtype=np.int32))
    )  # an int column
    path = tmp_path / "big.arrow"
    with pa_ipc.new_file(path, table.schema) as writer:
        writer.write_table(table, max_chunksize=300)
    options = {"path": str(path), "shape": [1, 8, 8], "standardize": standardize}
    from_disk, in_memory = load(**options, in_memory_mb=0), load(**options)
    assert not from_disk.train.in_memory and in_memory.train.in_memory
    assert from_disk.standardization == in_memory.standardization
    for num_workers in (0, 2):
        runs = [
            batches(
                loader(
                    s.train,
                    generator=torch.Generator().manual_seed(5),
                    batch_size=64,
                    num_workers=num_workers,
                )
            )
            for s in (from_disk, in_memory)
        ]
        assert len(runs[0]) == 23
        for (xa, ya), (xb, yb) in zip(*runs):
            assert xa.shape == (len(ya), 1, 8, 8) and torch.equal(xa, xb) and torch.equal(ya, yb)
    assert all(torch.equal(a, b) for a, b in zip(whole(from_disk.val), whole(in_memory.val)))


def write_ipc(path, table, chunk_rows=None):
    """An uncompressed Arrow IPC file of the table, in record batches of chunk_rows rows."""
    with pa_ipc.new_file(path, table.schema) as writer:
        writer.write_table(table, max_chunksize=chunk_rows)
    return path


def same_epochs(a, b, num_workers=0, batch_size=64):
    """Both datasets give identical shuffled batches (same generator seed), and identical val."""
    runs = [
        batches(
            loader(
                s.train,
                generator=torch.Generator().manual_seed(5),
                batch_size=batch_size,
                num_workers=num_workers,
            )
        )
        for s in (a, b)
    ]
    assert len(runs[0]) == len(runs[1]) > 1
    for (xa, ya), (xb, yb) in zip(*runs):
        assert xa.shape == xb.shape and torch.equal(xa, xb) and torch.equal(ya, yb)
    assert all(torch.equal(p, q) for p, q in zip(whole(a.val), whole(b.val)))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_row_major_file_is_read_per_row_and_matches_the_columns(
    tmp_path, digits_table, num_workers
):
    packed = row_major_table(digits_table, "label")
    assert packed.schema.names == ["features", "label"]
    assert packed.schema.field("features").type == pa.list_(pa.float32(), 64)
    path = write_ipc(tmp_path / "rows.arrow", packed, chunk_rows=500)
    reference = load(shape=[1, 8, 8])  # the bundled Parquet, one column per pixel
    in_memory = load(path=str(path), shape=[1, 8, 8])
    from_file = load(path=str(path), shape=[1, 8, 8], in_memory_mb=0)
    assert in_memory.train.in_memory and isinstance(from_file.train.features, RowFile)
    assert from_file.standardization == in_memory.standardization == reference.standardization
    assert from_file.fingerprint["columns"] == ["features", "label"]
    same_epochs(reference, from_file, num_workers)
    same_epochs(in_memory, from_file, num_workers)


def spilled_copy(splits):
    """The row-major copy a split's features are read from, checked to be a scratch file."""
    copy = splits.train.features.path
    assert (
        isinstance(splits.train.features, RowFile) and splits.val.features is splits.train.features
    )
    assert copy.parent == Path(tempfile.gettempdir()) and copy.name.startswith("reprolab-rows-")
    return copy


@pytest.mark.parametrize("chunk_rows", [256, None])  # None: one record batch, copied in slices
def test_column_per_feature_ipc_above_the_budget_is_read_from_a_row_major_copy(
    tmp_path, digits_table, monkeypatch, chunk_rows
):
    monkeypatch.setattr(data_module, "SPILL_ROWS", 500)
    path = write_ipc(tmp_path / "wide.arrow", digits_table, chunk_rows=chunk_rows)
    spilled, in_memory = load(path=str(path), in_memory_mb=0), load(path=str(path))
    copy = spilled_copy(spilled)
    assert copy.stat().st_size == 1797 * 64 * 4  # float32, row after row
    first_row = np.stack([digits_table.column(i)[0].as_py() for i in range(64)])
    assert np.array_equal(np.fromfile(copy, dtype=np.float32, count=64), first_row)
    assert spilled.standardization == in_memory.standardization and in_memory.train.in_memory
    same_epochs(spilled, in_memory, num_workers=2)
    gc.collect()  # the worker processes are gone: the copy stays while the splits live
    assert copy.exists()
    del spilled
    gc.collect()
    assert not copy.exists()


def test_parquet_and_compressed_ipc_above_the_budget_are_read_from_a_row_major_copy(
    tmp_path, digits_table
):
    feather.write_feather(digits_table, tmp_path / "d.feather", chunksize=500)  # lz4
    pq.write_table(digits_table, tmp_path / "d.parquet", row_group_size=400)
    for name in ("d.feather", "d.parquet"):
        spilled = load(path=str(tmp_path / name), in_memory_mb=0)
        assert spilled_copy(spilled).stat().st_size == 1797 * 64 * 4
        assert spilled.fingerprint["rows"] == 1797
        same_epochs(spilled, load())


def test_copies_left_by_killed_processes_are_swept(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )  # a pid no longer running
    stale = tmp_path / f"reprolab-rows-{gone.stdout.strip()}-abc.f32"
    live = tmp_path / f"reprolab-rows-{os.getppid()}-def.f32"  # pytest's parent still runs
    other = tmp_path / "unrelated.f32"
    for path in (stale, live, other):
        path.write_bytes(b"x")
    spilled = load(in_memory_mb=0)
    assert not stale.exists() and live.exists() and other.exists()
    assert spilled_copy(spilled).name.startswith(f"reprolab-rows-{os.getpid()}-")


def test_missing_values_are_refused_when_spilling(tmp_path, digits_table):
    pixels = digits_table.column("pixel_5").to_pylist()
    pixels[1500] = None
    table = digits_table.set_column(5, "pixel_5", pa.array(pixels, pa.float64()))
    pq.write_table(table, tmp_path / "holes.parquet", row_group_size=400)
    with pytest.raises(ValueError, match="data: column 'pixel_5' has 1 missing values"):
        load(path=str(tmp_path / "holes.parquet"), in_memory_mb=0)


def test_a_copy_that_cannot_be_written_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))
    with pytest.raises(ValueError, match="data.in_memory_mb: cannot write the row-major copy"):
        load(in_memory_mb=0)


def test_list_and_plain_feature_columns_mix(tmp_path, digits_table):
    pixels = np.stack([digits_table.column(i).to_numpy() for i in range(64)], axis=1)
    table = pa.table(
        {
            "first": pa.FixedSizeListArray.from_arrays(pa.array(pixels[:, :10].ravel()), 10),
            "middle": pixels[:, 10].astype(np.int16),
            "rest": pa.FixedSizeListArray.from_arrays(pa.array(pixels[:, 11:].ravel()), 53),
            "label": digits_table.column("label"),
        }
    )
    path = write_ipc(tmp_path / "mixed.arrow", table, chunk_rows=700)
    reference = load()
    for in_memory_mb in (1024, 0):
        mixed = load(path=str(path), in_memory_mb=in_memory_mb)
        assert mixed.input_shape == (64,) and mixed.train.in_memory == bool(in_memory_mb)
        assert mixed.standardization == reference.standardization
        same_epochs(reference, mixed)


def test_a_row_major_file_cut_short_is_named(tmp_path, digits_table):
    path = write_ipc(tmp_path / "rows.arrow", row_major_table(digits_table, "label"))
    splits = load(path=str(path), in_memory_mb=0)
    with open(path, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(OSError, match=f"data.path: {path} ended early"):
        splits.train[torch.arange(len(splits.train))]


def test_groups_of_batches_are_split_back_into_the_same_batches(ids_file, monkeypatch):
    splits = load(path=str(ids_file))

    def epoch(group_bytes):
        monkeypatch.setattr(batches_module, "GROUP_BYTES", group_bytes)
        batch_loader = loader(
            splits.train, generator=torch.Generator().manual_seed(2), batch_size=8
        )
        return batch_loader.group, batches(batch_loader)

    (one, single), (many, grouped) = epoch(1), epoch(10**6)
    assert one == 1 and many > len(single)  # one gather per batch, against one for the epoch
    assert [len(y) for _, y in grouped] == [8] * 10 + [2]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(single, grouped))


def test_in_memory_batches_skip_worker_processes(ids_file):
    splits = load(path=str(ids_file))
    assert loader(splits.train, generator=torch.Generator(), num_workers=2).workers is None


def test_constant_feature_gets_unit_std(tmp_path):
    path = tmp_path / "constant.csv"
    path.write_text("a,b,label\n" + "".join(f"0.1,{i},{i % 2}\n" for i in range(20)))
    splits = load(path=str(path))
    assert splits.standardization["std"][0] == 1.0
    assert torch.allclose(whole(splits.train)[0][:, 0], torch.tensor(0.0), atol=1e-6)


def test_float_target_gives_float_tensor(tmp_path):
    path = tmp_path / "regression.csv"
    path.write_text("a,b,y\n1,2,0.5\n3,4,1.5\n5,6,2.5\n7,8,3.5\n9,10,4.5\n")
    splits = load(path=str(path), target="y")
    assert splits.num_classes == 1 and whole(splits.train)[1].dtype == torch.float32


def test_runs_inside_a_sacred_experiment(ids_file):
    ex = Experiment("data_test", ingredients=[data])

    @ex.main
    def main():
        splits = load_splits()
        return len(make_loader(splits.train, True)), splits.fingerprint["rows"]

    run = ex.run(
        config_updates={"data": {"path": str(ids_file), "batch_size": 20, "pin_memory": False}},
        options={"--loglevel": "ERROR", "--capture": "no"},
    )
    assert run.result == (5, 103)


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "broken.parquet").write_text("not parquet\n")
    (tmp_path / "text.csv").write_text("name,x,label\nab,1,0\ncd,2,1\nef,3,0\n")
    (tmp_path / "negative.csv").write_text("x,label\n1,-1\n2,0\n3,1\n")
    return tmp_path


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            {"path": "missing.parquet"},
            "data.path: file not found: missing.parquet (looked in",
        ),
        ({"path": "{tmp}/broken.parquet"}, "data.path: cannot read"),
        ({"path": "{tmp}/notes.txt"}, "data.format: cannot tell the format of"),
        ({"format": "xlsx"}, "data.format must be auto, parquet, ipc (feather, arrow) or csv"),
        ({"target": "lbl"}, "data.target: column 'lbl' is not in"),
        ({"features": ["pixel_0", "nope"]}, "data.features: column 'nope' is not in"),
        (
            {"features": ["pixel_0", "label"]},
            "data.features must not contain the target column 'label'",
        ),
        ({"features": []}, "data.features must be None or a non-empty list"),
        ({"path": "{tmp}/text.csv"}, "data.features: column 'name' in"),
        ({"path": "{tmp}/negative.csv"}, "data.target: column 'label'"),
        ({"val_fraction": 1.5}, "data.val_fraction must be a number in (0, 1), got 1.5"),
        ({"val_fraction": 0}, "data.val_fraction must be a number in (0, 1), got 0"),
        (
            {"val_fraction": 1e-6},
            "data.val_fraction 1e-06 leaves an empty train or validation split",
        ),
        (
            {"shape": [1, 8, 9]},
            "data.shape [1, 8, 9] holds 72 values but there are 64 feature values per row",
        ),
        ({"shape": [0, 64]}, "data.shape must be None or a non-empty list of positive integers"),
        ({"split_seed": "zero"}, "data.split_seed must be an integer >= 0, got 'zero'"),
        ({"in_memory_mb": -1}, "data.in_memory_mb must be a non-negative number"),
    ],
)
def test_bad_split_config_raises_one_clear_sentence(bad_files, overrides, expected):
    overrides = {
        k: v.format(tmp=bad_files) if isinstance(v, str) else v for k, v in overrides.items()
    }
    with pytest.raises(ValueError) as error:
        load(**overrides)
    message = str(error.value)
    assert message.startswith(expected) and "\n" not in message


def test_a_missing_file_names_each_folder_looked_in_once(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    with pytest.raises(ValueError) as from_checkout:
        load(path="missing.parquet")
    assert str(from_checkout.value) == (
        f"data.path: file not found: missing.parquet (looked in {REPO_ROOT})"
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as from_elsewhere:
        load(path="missing.parquet")
    assert f"(looked in {tmp_path.resolve()} and {REPO_ROOT})" in str(from_elsewhere.value)
    with pytest.raises(ValueError) as absolute:
        load(path=str(tmp_path / "missing.parquet"))
    assert str(absolute.value) == f"data.path: file not found: {tmp_path / 'missing.parquet'}"


def test_long_column_lists_are_abbreviated():
    with pytest.raises(
        ValueError,
        match=r"columns: pixel_0, pixel_1, pixel_2, pixel_3, \.\.\., pixel_63, label; 65",
    ):
        load(target="lbl")


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"batch_size": 0}, "data.batch_size must be a positive integer, got 0"),
        ({"batch_size": 2.5}, "data.batch_size must be a positive integer, got 2.5"),
        ({"num_workers": -1}, "data.num_workers must be an integer in [0, "),
        ({"shuffle": "yes"}, "data.shuffle must be true or false"),
        (
            {"batch_size": 1000, "drop_last": True},
            "data.batch_size 1000 exceeds the 82 training samples",
        ),
    ],
)
def test_bad_loader_config_raises_one_clear_sentence(ids_file, overrides, expected):
    splits = load(path=str(ids_file))
    with pytest.raises(ValueError) as error:
        loader(splits.train, generator=torch.Generator().manual_seed(0), **overrides)
    assert str(error.value).startswith(expected) and "\n" not in str(error.value)


def test_digits_script_is_deterministic(tmp_path):
    pytest.importorskip("sklearn")
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_digits", REPO_ROOT / "data" / "make_digits.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(Path(tmp_path / "digits.parquet"))
    assert pq.read_table(tmp_path / "digits.parquet").equals(pq.read_table(DIGITS))


def _with_holes(table: pa.Table, column: str, rows: list[int]) -> pa.Table:
    values = table.column(column).to_pylist()
    for row in rows:
        values[row] = None
    index = table.schema.get_field_index(column)
    return table.set_column(index, column, pa.array(values, table.schema.field(column).type))


@pytest.mark.parametrize("layout", ["parquet", "parquet_no_statistics", "ipc", "csv"])
@pytest.mark.parametrize("column", ["pixel_9", "label"])
def test_missing_values_are_found_before_loading_in_every_format(
    tmp_path, digits_table, layout, column
):
    table = _with_holes(digits_table, column, [3, 70])
    path = tmp_path / f"holes.{layout.split('_')[0]}"
    if layout == "parquet":
        pq.write_table(table, path)
    elif layout == "parquet_no_statistics":
        pq.write_table(table, path, write_statistics=False)
    elif layout == "ipc":
        feather.write_feather(table, path, compression="uncompressed")
    else:
        pa_csv.write_csv(table, path)
    with pytest.raises(ValueError) as error:
        describe({**DEFAULTS, "path": str(path)})
    assert str(error.value) == (
        f"data: column {column!r} has 2 missing values; fill or drop them first"
    )


def test_describe_counts_rows_and_classes_and_refuses_an_empty_split(tmp_path, digits_table):
    contents = describe({**DEFAULTS, "path": str(DIGITS)})
    assert contents == (1797, (64,), True, 10, (0, 9))
    path = tmp_path / "float.ipc"
    feather.write_feather(
        digits_table.set_column(
            64, "label", pa.array(digits_table.column("label").to_numpy().astype("float32"))
        ),
        path,
    )
    assert describe({**DEFAULTS, "path": str(path)})[2:] == (False, 1, (0.0, 9.0))
    with pytest.raises(ValueError, match="^data.val_fraction 0.0002 leaves an empty train"):
        describe({**DEFAULTS, "val_fraction": 0.0002})
