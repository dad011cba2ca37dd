"""Decoding: encoded images (PNG, JPEG, WebP) into uint8 batches, a whole batch at a time in the
loader's worker processes (kornia_rs for 8-bit PNG, simplejpeg for JPEG, Pillow for the rest);
the float conversion and augmentation happen on the run's device (ingredients/augment.py).
"""

from __future__ import annotations

import functools
import io
import math

import numpy as np
import torch
from sacred.utils import SacredError

from ingredients.image_sources import Blobs, Column, Where, fail


class BadImage(ValueError, SacredError):
    """An image that cannot be decoded: one sentence naming the file, row and column, which ends
    a started run as FAILED without a traceback (a SacredError, like OneSentenceError).

    Raised in a loader worker, torch re-raises it in the run's process with the worker's
    traceback as the message; the sentence is recovered from its last line."""

    def __init__(self, message: str):
        if message.startswith("Caught "):
            last = message.strip().splitlines()[-1]
            message = last.split(f"{type(self).__name__}: ", 1)[-1]
        SacredError.__init__(self, message, print_traceback=False)


def _pillow():
    from PIL import Image

    return Image


MODES = {1: "L", 3: "RGB"}


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@functools.cache
def _simplejpeg():
    """simplejpeg when installed (JPEG only, 4-9x Pillow's rate on small images), else None."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


@functools.cache
def _kornia_png():
    """kornia_rs's 8-bit PNG decoder (kornia's own dependency: 4-8x Pillow's rate on small
    images, its per-image Python overhead being most of Pillow's time), else None."""
    try:
        import kornia_rs
    except ImportError:
        return None
    return kornia_rs


def decoder() -> str:
    """Which decoders this process uses (recorded: they must be the same on a rerun)."""
    fast, png = _simplejpeg(), _kornia_png()
    jpeg = f"simplejpeg {fast.__version__}" if fast else "Pillow"
    png_name = f"kornia_rs {png.__version__}" if png else "Pillow"
    return f"JPEG: {jpeg}, PNG: {png_name}, else Pillow {_pillow().__version__}"


def _fast_jpeg(blob, mode: str, size: tuple[int, int]) -> np.ndarray | None:
    """A JPEG of the right size decoded by simplejpeg, else None (Pillow takes it)."""
    fast = _simplejpeg()
    if fast is None or blob[:2] != b"\xff\xd8":
        return None
    try:
        pixels = fast.decode_jpeg(blob, colorspace="RGB" if mode == "RGB" else "GRAY")
    except ValueError:  # CMYK, damaged...: Pillow decides
        return None
    if pixels.shape[:2] != size:
        return None
    return pixels if mode == "RGB" else pixels[:, :, 0]


def _fast_png(blob, mode: str, size: tuple[int, int]) -> np.ndarray | None:
    """An 8-bit RGB (or grey, for mode L) PNG of the right size decoded by kornia_rs, else None:
    Pillow takes palettes, alpha, 16 bits, other sizes and damaged files (kornia_rs refuses them)."""
    fast = _kornia_png()
    if fast is None or blob[:8] != PNG_MAGIC:
        return None
    try:
        pixels = fast.io.decode_image_png_u8(bytes(blob), size, "rgb" if mode == "RGB" else "mono")
    except Exception:  # kornia_rs raises a bare Exception for every refusal
        return None
    return pixels if mode == "RGB" else pixels[:, :, 0]


def decode_one(blob, mode: str, size: tuple[int, int]) -> np.ndarray:
    """One image as uint8 (H, W) or (H, W, 3) in `mode`, resized to `size` (H, W) if needed."""
    pixels = _fast_png(blob, mode, size)
    if pixels is None:
        pixels = _fast_jpeg(blob, mode, size)
    if pixels is not None:
        return pixels
    Image = _pillow()
    with Image.open(io.BytesIO(blob)) as image:
        if image.format == "JPEG" and image.mode != mode:
            image.draft(mode, (size[1], size[0]))  # decode straight to grey/RGB (no re-encoding)
        if image.mode != mode:
            image = image.convert(mode)
        if image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.BILINEAR)
        return np.asarray(image)


def _batch_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor; in a loader worker, in shared memory from the start, so
    handing it to the run's process does not copy it there (as torch's default collate does)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


class ImageDataset(torch.utils.data.Dataset):
    """A split of image rows; `dataset[indices]` decodes a whole uint8 (N, C, H, W) batch."""

    def __init__(
        self,
        images: Blobs | np.ndarray,
        targets: torch.Tensor,
        rows: np.ndarray,
        sample_shape: tuple[int, int, int],
        where: Where,
    ) -> None:
        self.images = images  # Blobs of encoded images, or an (n, C*H*W) uint8 pixel matrix
        self.targets, self.rows, self.sample_shape, self.where = targets, rows, sample_shape, where

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def in_memory(self) -> bool:
        """Raw pixels are gathered in this process; encoded images are decoded in workers."""
        return isinstance(self.images, np.ndarray)

    def __getitem__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        rows = self.rows[idx]
        y = torch.from_numpy(np.take(self.targets.numpy(), idx))
        if isinstance(self.images, np.ndarray):
            x = np.take(self.images, rows, axis=0)
            return torch.from_numpy(x).reshape(-1, *self.sample_shape), y
        return self.decode(rows), y

    def decode(self, rows: np.ndarray) -> torch.Tensor:
        """Decode the images of `rows` into one uint8 (N, C, H, W) tensor: RGB images into an
        (N, H, W, 3) array first, then one transposing copy for the whole batch."""
        assert isinstance(self.images, Blobs)  # pixel matrices are gathered, not decoded
        c, h, w = self.sample_shape
        out = _batch_tensor((len(rows), c, h, w))
        pixels = (
            out.numpy().reshape(len(rows), h, w)
            if c == 1
            else np.empty((len(rows), h, w, 3), np.uint8)
        )
        mode = MODES[c]
        for i, row in enumerate(rows.tolist()):
            try:
                pixels[i] = decode_one(self.images.get(row), mode, (h, w))
            except Exception as error:  # Pillow raises OSError, ValueError, SyntaxError...
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise BadImage(
                    f"data: {self.where.name(row)} is not an image Pillow can decode "
                    f"as {mode} ({reason})"
                ) from None
        if c == 3:
            np.copyto(out.numpy(), pixels.transpose(0, 3, 1, 2))
        return out


def detect_shape(first, column: Column, cfg: dict) -> tuple[int, int, int]:
    """(channels, height, width): config keys first, else the first image (or a square list)."""
    if column.kind == "pixels":
        size = len(first)
        if cfg.get("shape"):
            shape = tuple(int(s) for s in cfg["shape"])
        elif math.isqrt(size) ** 2 == size:
            shape = (1, math.isqrt(size), math.isqrt(size))
        else:
            fail(f"data.shape: {size} pixels per row is not a square image; set data.shape")
        if len(shape) != 3 or math.prod(shape) != size:
            fail(f"data.shape {list(shape)} does not hold the {size} pixels of each row")
        return shape
    try:
        Image = _pillow()
        with Image.open(io.BytesIO(first)) as image:
            width, height = image.size
            found = 1 if image.mode in ("1", "L", "I", "I;16", "F") else 3
    except Exception as error:
        fail(f"data: the first image of column {column.name!r} is not an image ({error})")
    channels = cfg.get("channels") or found
    h, w = cfg.get("image_size") or (height, width)
    return (int(channels), int(h), int(w))
