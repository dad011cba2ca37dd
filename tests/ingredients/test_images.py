"""Image data: detection, the Hugging Face layout, shards, split rules, one-sentence errors,
batch decoding, seeded augmentation and `reprolab pack`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import ingredients.image_sources as image_sources
from ingredients.augment import Augmenter
from ingredients.data import Splits, make_loader
from ingredients.image_decoding import BadImage
from ingredients.image_sources import fingerprint_source
from ingredients.images import image_source, load_image_splits
from ingredients.model import REGISTRY
from ingredients.pack import pack

REPO_ROOT = Path(__file__).resolve().parents[2]
NAMES = ["cat", "dog", "eel"]


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def pictures(n: int, seed: int = 0, rgb: bool = False) -> tuple[list[np.ndarray], list[int]]:
    """n small images whose bright bar's row tells the class."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        label = i % 3
        a = rng.integers(0, 60, (12, 12, 3) if rgb else (12, 12), dtype=np.uint8)
        a[1 + label * 4 : 3 + label * 4] = 230
        images.append(a)
        labels.append(label)
    return images, labels


def config(path, **overrides) -> dict:
    """The data config as Sacred would give it (defaults plus overrides)."""
    return {
        "path": str(path),
        "format": "auto",
        "target": "label",
        "features": None,
        "shape": None,
        "standardize": True,
        "val_fraction": 0.25,
        "split_seed": 0,
        "in_memory_mb": 1024,
        "image_column": None,
        "channels": None,
        "image_size": None,
        "split_column": None,
        "val_path": None,
        "test_path": None,
        "augment": [],
        "mean": None,
        "std": None,
        **overrides,
    }


def load(path, **overrides) -> Splits:
    cfg = config(path, **overrides)
    return load_image_splits(cfg, image_source(cfg), Splits)


@pytest.fixture
def hf_file(tmp_path) -> Path:
    """Hugging Face layout: struct {bytes, path} images and string labels."""
    images, labels = pictures(24)
    path = tmp_path / "hf.parquet"
    column = [{"bytes": encode(a), "path": f"{i}.png"} for i, a in enumerate(images)]
    pq.write_table(pa.table({"img": column, "label": [NAMES[y] for y in labels]}), path)
    return path


def test_hf_layout_and_string_labels_are_found_and_decoded(hf_file):
    splits = load(hf_file)
    info = splits.images.record()
    assert info["column"] == "img" and info["storage"] == "hf"
    assert info["classes"] == NAMES and info["channels"] == 1 and info["size"] == [12, 12]
    assert splits.input_shape == (1, 12, 12) and splits.num_classes == 3
    x, y = splits.train[np.arange(len(splits.train))]
    assert x.dtype == torch.uint8 and x.shape == (18, 1, 12, 12)
    # the decoded pixels are the original ones, and each label is the bar's class
    images, labels = pictures(24)
    rows = splits.train.rows
    assert np.array_equal(x[:, 0].numpy(), np.stack([images[r] for r in rows]))
    assert y.tolist() == [labels[r] for r in rows]
    assert len(splits.val) == 6 and splits.test is None


@pytest.mark.parametrize("layout", ["ipc file", "ipc stream"])
def test_arrow_ipc_files_and_streams_read_as_parquet_does(tmp_path, layout):
    images, labels = pictures(24)
    table = pa.table({"label": [NAMES[y] for y in labels], "image": [encode(a) for a in images]})
    path = tmp_path / "images.arrow"
    opener = pa.ipc.new_file if layout == "ipc file" else pa.ipc.new_stream
    with opener(path, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=5):
            writer.write_batch(batch)
    pq.write_table(table, tmp_path / "images.parquet")
    # a budget below the bytes: the images go to the scratch file
    arrow, parquet = load(path, in_memory_mb=1e-4), load(tmp_path / "images.parquet")
    assert arrow.train.images.path is not None and arrow.images.classes == NAMES
    x, y = arrow.train[np.arange(len(arrow.train))]
    x2, y2 = parquet.train[np.arange(len(parquet.train))]
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_a_pass_over_the_labels_of_an_arrow_file_skips_the_image_bytes(tmp_path, monkeypatch):
    """Reading the label column of an Arrow IPC file reads a small part of it, not every record
    batch whole (a stream, having no footer, is read through)."""
    path = tmp_path / "images.arrow"
    table = pa.table({"image": [bytes(20_000)] * 50, "label": list(range(50))})
    with pa.ipc.new_file(path, table.schema) as writer:
        writer.write_table(table, max_chunksize=10)
    read = []

    class Counting(io.FileIO):
        def read(self, size=-1):
            data = super().read(size)
            read.append(len(data))
            return data

        def readinto(self, buffer):
            count = super().readinto(buffer)
            read.append(count or 0)
            return count

    monkeypatch.setattr(
        image_sources.pa, "OSFile", lambda name: pa.PythonFile(Counting(name), mode="r")
    )
    labels = [b.column("label") for b in image_sources.record_batches(path, ["label"])]
    assert pa.chunked_array(labels).to_pylist() == list(range(50))
    assert sum(read) < path.stat().st_size / 4


def test_an_image_source_is_described_once_while_its_shards_are_unchanged(hf_file, monkeypatch):
    """A run checks its config several times; the labels are read again only when a shard
    changed (its size or modification time)."""
    from ingredients.images import describe_images

    reads, read = [], image_sources.record_batches

    def counting(file, columns):
        reads.append(columns)
        return read(file, columns)

    monkeypatch.setattr("ingredients.images.record_batches", counting)
    cfg = config(hf_file)
    first = describe_images(cfg, image_source(cfg))
    assert describe_images(cfg, image_source(cfg)) == first and len(reads) == 2  # labels, image
    os.utime(hf_file, ns=(0, 0))
    assert describe_images(cfg, image_source(cfg)) == first and len(reads) == 4
    assert describe_images({**cfg, "channels": 3}, image_source(cfg))[1][0] == 3


@pytest.mark.parametrize("num_workers", [0, 1])
def test_rgb_images_of_any_aspect_decode_to_their_pixels_in_channel_first_batches(
    tmp_path, num_workers
):
    """Non-square RGB images (10 rows, 14 columns) through the batch decode and, with a worker,
    the shared-memory hand-over: every batch equals the original pixels moved to (N, C, H, W),
    a short batch among full ones included."""
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (10, 14, 3), dtype=np.uint8) for _ in range(23)]
    path = tmp_path / "rgb.parquet"
    pq.write_table(
        pa.table({"image": [encode(a) for a in images], "label": [0, 1] * 11 + [0]}), path
    )
    train = load(path, val_fraction=0.2).train
    loader = make_loader(train, False, 5, False, False, num_workers, False)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [5, 5, 5, 3]  # 18 training rows, in order
    x = torch.cat([x for x, _ in batches])
    expected = np.stack([images[r] for r in train.rows]).transpose(0, 3, 1, 2)
    assert x.shape == (18, 3, 10, 14) and np.array_equal(x.numpy(), expected)


READ_PEAK = """
import sys
import pyarrow as pa
from ingredients.image_sources import Column, read_source

source = read_source(sys.argv[1], "data.path", Column("image", "binary"), "label", None, 2**20)
assert source.images.path is not None  # above the budget: in the scratch file
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(int(status["VmHWM"].split()[0]) / 1024, pa.default_memory_pool().max_memory() / 2**20)
"""


def read_peak(path: Path) -> tuple[float, float]:
    """(peak RSS, pyarrow's peak allocation) in MB of a process reading `path` with a 1 MB budget."""
    result = subprocess.run(
        [sys.executable, "-c", READ_PEAK, str(path)],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    rss, pool = map(float, result.stdout.split())
    return rss, pool


@pytest.mark.slow
def test_shards_stream_with_flat_peak_memory(tmp_path):
    """Images of 0.5-4.5 kB (as JPEGs vary), 9 MB and 4x that, read with a 1 MB budget: peak RSS
    grows by less than 4 MB (mimalloc kept freed read buffers: +8.5 MB here, +28 MB on the
    benchmark's JPEGs), and a 36 MB row group is read a few MB at a time (pyarrow.dataset's
    scanner held it whole)."""
    rng = np.random.default_rng(0)
    blobs = [rng.bytes(int(k)) for k in rng.integers(500, 4500, 16000)]
    table = pa.table({"image": pa.array(blobs, pa.binary()), "label": np.arange(16000) % 3})
    small, large, one = (tmp_path / f"{name}.parquet" for name in ("small", "large", "one"))
    pq.write_table(table.slice(0, 4000), small, compression="none", row_group_size=1024)
    pq.write_table(table, large, compression="none", row_group_size=1024)
    pq.write_table(table, one, compression="none", row_group_size=16000)
    (small_rss, _), (large_rss, _), (_, one_pool) = map(read_peak, (small, large, one))
    assert large_rss - small_rss < 4, (small_rss, large_rss)
    assert one_pool < 12, one_pool


def test_shards_in_a_folder_read_as_one_file_and_are_fingerprinted_per_shard(tmp_path):
    images, labels = pictures(30, rgb=True)
    folder = tmp_path / "shards"
    folder.mkdir()
    for k in range(3):
        part = slice(10 * k, 10 * k + 10)
        table = pa.table(
            {"image": [encode(a, "JPEG") for a in images[part]], "label": labels[part]}
        )
        pq.write_table(table, folder / f"part-{k}.parquet")
    whole = tmp_path / "whole.parquet"
    pq.write_table(pa.table({"image": [encode(a, "JPEG") for a in images], "label": labels}), whole)
    a, b = load(folder), load(whole)
    assert a.input_shape == (3, 12, 12)
    assert torch.equal(a.train[np.arange(20)][0], b.train[np.arange(20)][0])
    assert a.split == b.split
    print_ = fingerprint_source(folder)
    assert len(print_["shards"]) == 3 and print_["sha256"]
    assert load(tmp_path / "shards" / "part-*.parquet").file["rows"] == 30  # a glob too


def test_split_column_and_separate_test_file(tmp_path):
    images, labels = pictures(30)
    splits_of = ["train"] * 20 + ["validation"] * 6 + ["test"] * 4
    path = tmp_path / "split.parquet"
    pq.write_table(
        pa.table({"image": [encode(a) for a in images], "label": labels, "part": splits_of}), path
    )
    splits = load(path, split_column="part")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (20, 6, 4)
    assert splits.val.rows.tolist() == list(range(20, 26))
    other = tmp_path / "test.parquet"
    pq.write_table(pa.table({"image": [encode(a) for a in images[:5]], "label": labels[:5]}), other)
    given = load(path, split_column="part", test_path=str(other))
    assert len(given.test) == 5  # an explicit test file wins over the column's test rows
    drawn = load(path, val_fraction=0.5, split_seed=3)
    assert len(drawn.val) == 15 and drawn.split["split_seed"] == 3


def test_a_truncated_image_stops_with_one_sentence_naming_file_row_and_column(tmp_path):
    images, labels = pictures(6)
    blobs = [encode(a) for a in images]
    blobs[4] = blobs[4][:40]  # truncated PNG
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"image": blobs, "label": labels}), path)
    splits = load(path, val_fraction=0.5, standardize=False)
    with pytest.raises(BadImage) as caught:
        splits.train.decode(np.arange(6))
    message = str(caught.value)
    assert f"row 4 of column 'image' in {path}" in message and "\n" not in message
    assert caught.value.print_traceback is False  # a started run ends FAILED with the sentence
    with pytest.raises(BadImage, match="row 4 of column 'image'"):
        load(path, val_fraction=0.5, split_seed=0)  # row 4 is a training row: statistics


def test_a_wrong_image_column_is_one_sentence(hf_file):
    with pytest.raises(ValueError, match=r"data.image_column: column 'label' in .* holds string"):
        image_source(config(hf_file, image_column="label"))
    with pytest.raises(ValueError, match="data.image_column: column 'nope' is not in"):
        image_source(config(hf_file, image_column="nope"))


def test_raw_uint8_pixels_stay_uint8(tmp_path):
    images, labels = pictures(12)
    flat = pa.FixedSizeListArray.from_arrays(pa.array(np.stack(images).reshape(-1)), 144)
    path = tmp_path / "pixels.arrow"
    with pa.ipc.new_file(path, pa.schema([("px", flat.type), ("label", pa.int64())])) as w:
        w.write_table(pa.table({"px": flat, "label": labels}))
    splits = load(path)
    assert splits.images.kind == "pixels" and splits.train.images.dtype == np.uint8
    x, _ = splits.train[np.arange(3)]
    assert x.dtype == torch.uint8 and x.shape == (3, 1, 12, 12)


def test_above_the_budget_images_are_read_from_a_scratch_file(hf_file):
    small, big = load(hf_file, in_memory_mb=0), load(hf_file)
    assert small.train.images.buffer is None and small.train.images.path
    assert torch.equal(small.train[np.arange(5)][0], big.train[np.arange(5)][0])


def test_augmentation_is_seeded_and_validation_is_deterministic():
    steps = [
        {"name": "crop", "padding": 2},
        {"name": "flip"},
        {"name": "affine", "degrees": 10},
        {"name": "color_jitter"},
        {"name": "resized_crop", "scale": [0.5, 1.0]},
    ]
    augment = Augmenter(steps, {"mean": [0.5] * 3, "std": [0.25] * 3}, 3)
    x = torch.randint(0, 256, (8, 3, 12, 12), dtype=torch.uint8)
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    c = augment(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    plain = augment(x, None)
    assert torch.equal(plain, (x.float() / 255 - 0.5) / 0.25)
    with pytest.raises(ValueError, match=r"data.augment\[0\]: unknown step 'blur'"):
        Augmenter([{"name": "blur"}], None, 3)


def test_resnet18_takes_input_shape_and_outputs():
    net = REGISTRY["resnet18"]((3, 32, 32), 7, width=8)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    assert net.stem[0].kernel_size == (3, 3)


def test_pack_writes_shards_with_a_manifest_and_resumes(tmp_path):
    images, labels = pictures(9)
    folder = tmp_path / "folder"
    for i, (a, y) in enumerate(zip(images, labels)):
        (folder / NAMES[y]).mkdir(parents=True, exist_ok=True)
        (folder / NAMES[y] / f"{i}.png").write_bytes(encode(a))
    out = tmp_path / "packed"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.cli",
            "pack",
            str(folder),
            str(out),
            "--shard-size",
            "4",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "packed 9 images of 3 classes into 3 shards" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    table = pq.read_table(out / "shard-00000.parquet")
    first = table.column("path")[0].as_py()
    assert table.column("image")[0].as_py() == (folder / first).read_bytes()  # not re-encoded
    # interrupted: one shard lost; packing again rewrites only it, to the same bytes
    (out / "shard-00001.parquet").unlink()
    again = pack(folder, out, shard_size=4, progress=False)
    assert again == manifest
    splits = load(out, val_fraction=0.34)
    assert splits.images.classes == NAMES and splits.file["rows"] == 9
    assert fingerprint_source(out)["manifest"] == str(out / "manifest.json")
    with pytest.raises(ValueError, match="holds a pack of other files or shard size"):
        pack(folder, out, shard_size=5, progress=False)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpeg_decoded_by_simplejpeg_has_pillows_pixels(mode):
    from ingredients.image_decoding import _fast_jpeg, _simplejpeg, decode_one

    if _simplejpeg() is None:
        pytest.skip("simplejpeg is not installed: Pillow decodes every JPEG")
    images, _ = pictures(6, rgb=True)
    for pixels in images:
        blob = encode(pixels, "JPEG")
        fast = _fast_jpeg(blob, mode, (12, 12))
        with Image.open(io.BytesIO(blob)) as image:
            if mode == "L":
                image.draft("L", (12, 12))
            slow = np.asarray(image.convert(mode))
        assert fast is not None and np.array_equal(fast, slow)
        assert np.array_equal(decode_one(blob, mode, (12, 12)), slow)


def png_kinds(pixels: np.ndarray) -> dict[str, bytes]:
    """One RGB image as PNGs of the kinds a folder may hold: those kornia_rs decodes and those
    it refuses (Pillow decodes them)."""
    rgb = Image.fromarray(pixels)
    kinds = {"RGB": rgb, "L": rgb.convert("L"), "RGBA": rgb.convert("RGBA"), "P": rgb.quantize(8)}
    kinds["I;16"] = Image.fromarray(pixels[:, :, 0].astype(np.uint16) * 257)
    kinds["other size"] = rgb.resize((10, 14))
    found = {}
    for name, image in kinds.items():
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        found[name] = buffer.getvalue()
    return found


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_png_decoded_by_kornia_rs_has_pillows_pixels(mode):
    from ingredients.image_decoding import _fast_png, _kornia_png, decode_one

    if _kornia_png() is None:
        pytest.skip("kornia_rs is not installed: Pillow decodes every PNG")
    images, _ = pictures(4, rgb=True)
    fast_ones = {"RGB": {"RGB"}, "L": {"L"}}[mode]
    for pixels in images:
        for kind, blob in png_kinds(pixels).items():
            with Image.open(io.BytesIO(blob)) as image:
                image = image.convert(mode) if image.mode != mode else image
                if image.size != (12, 12):
                    image = image.resize((12, 12), Image.BILINEAR)
                slow = np.asarray(image)
            fast = _fast_png(blob, mode, (12, 12))
            assert (fast is not None) == (kind in fast_ones), kind
            if fast is not None:
                assert np.array_equal(fast, slow), kind
            assert np.array_equal(decode_one(blob, mode, (12, 12)), slow), kind


def test_a_damaged_png_is_left_to_pillow():
    from ingredients.image_decoding import _fast_png

    images, _ = pictures(1, rgb=True)
    blob = encode(images[0])
    assert _fast_png(blob[:40], "RGB", (12, 12)) is None
    flipped = blob[:-20] + bytes([blob[-20] ^ 1]) + blob[-19:]  # a CRC that does not match
    assert _fast_png(flipped, "RGB", (12, 12)) is None


def test_sliced_binary_and_struct_chunks_pack_the_right_bytes():
    from ingredients.image_sources import BlobWriter

    values = pa.array([b"ab", b"cde", b"f", b"ghij"], pa.binary())
    struct = pa.StructArray.from_arrays([values, pa.array(list("wxyz"))], ["bytes", "path"])
    for budget in (1e9, 0):  # in memory, and in a scratch file
        writer = BlobWriter(budget)
        writer.add(values.cast(pa.large_binary()).slice(1, 2))
        writer.add(struct.slice(2).field("bytes"))
        blobs = writer.finish()
        assert [bytes(blobs.get(i)) for i in range(len(blobs))] == [b"cde", b"f", b"f", b"ghij"]
