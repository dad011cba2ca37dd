"""Checkpoints that hold everything needed to continue bit-exactly, loaded safely.

A checkpoint is a torch.save'd dict of tensors and plain values only, so it loads with
weights_only=True (no pickle code runs). Its SHA-256 is recorded in the run's info when it
is saved and checked before it is used.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import torch

FORMAT = "reprolab-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, tampered with or not a checkpoint."""


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def state_hash(model: torch.nn.Module) -> str:
    """SHA-256 over the model's state dict (names, dtypes, shapes, bytes): equal iff bit-identical."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_checkpoint(path: str | os.PathLike, state: dict) -> str:
    """Write the state atomically and return its SHA-256."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(buffer.getvalue())
    os.replace(tmp, path)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def load_checkpoint(
    path: str | os.PathLike, expected_sha256: str | None = None, map_location="cpu"
) -> dict:
    """Load a checkpoint after checking its hash; any problem is one CheckpointError sentence."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise CheckpointError(
            f"checkpoint {path} does not match the SHA-256 recorded when it was saved; "
            "it was changed or damaged"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated, foreign or malicious files all end here
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({reason})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a reprolab checkpoint")
    return state
