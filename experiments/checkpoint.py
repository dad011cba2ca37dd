"""Checkpoints that hold everything needed to continue bit-exactly, loaded safely.

A checkpoint is a torch.save'd dict of tensors and plain values only, so it loads with
weights_only=True (no pickle code runs). Its SHA-256 is recorded in the run's info when it
is saved and checked before it is used.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import numbers
import os
import pickle
import random
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from experiments.checkpoint_sidecar import SIDECAR, sidecar_text
from experiments.loop import OneSentenceError
from experiments.sacred_private import emit_heartbeat
from experiments.signals import INTERRUPTS
from ingredients.schema import Rule, integer, is_int, is_number, mapping, nullable, shown
from ingredients.scratch import sweep_orphans, writer_tag
from ingredients.seeding import rng_state, set_rng_state
from observers.files import replacing

FORMAT = "reprolab-checkpoint/1"
REQUIRED = ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "rng", "best", "config")


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, tampered with or not a checkpoint."""


class CheckpointMismatch(OneSentenceError):
    """A checkpoint's states do not fit what its config builds now (the model's code changed)."""


def state_hash(model: torch.nn.Module) -> str:
    """SHA-256 over the model's state dict (names, dtypes, shapes, bytes): equal iff bit-identical."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        flat = tensor.reshape(-1)  # 0-d tensors (BatchNorm's counter) cannot be viewed as bytes
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def plain(config) -> dict:
    """The config as plain JSON types (Sacred's read-only dicts would not load with weights_only)."""
    return json.loads(json.dumps(config))


# --------------------------------------------------------------------------- files


def save_checkpoint(path: str | os.PathLike, state: dict) -> str:
    """Write the state atomically and return its SHA-256."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    with replacing(path, "wb") as f:
        f.write(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def checkpoint_from_bytes(
    data: bytes, expected_sha256: str | None, source: str, map_location="cpu"
) -> dict:
    """Check the bytes against the recorded hash, then load them with weights_only=True.

    Any problem is one CheckpointError sentence naming `source`; no pickled code ever runs."""
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise CheckpointError(
            f"{source} does not match the SHA-256 recorded when it was saved; "
            "it was changed or damaged, so it was not loaded"
        )
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles: the error says it all
            warnings.simplefilter("ignore")
            state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{source} holds objects other than tensors and plain values, so it was not loaded "
            "(a checkpoint must load with weights_only=True)"
        ) from None
    except Exception:  # truncated zip, foreign format, bad header: never show a pickle traceback
        raise CheckpointError(f"{source} is damaged or not a torch checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{source} is not a reprolab checkpoint")
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise CheckpointError(f"{source} is incomplete: it has no {', '.join(missing)}")
    check_fields(state, source)
    return state


# What each field must hold for a resume to use it: a hash that verifies proves the file was not
# damaged, not that reprolab wrote it (a store is data), so the fields are checked before use.
FIELDS = {
    "model": Rule(
        lambda v: (
            isinstance(v, dict)
            and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items())
        ),
        "a dict of named tensors",
    ),
    "optimizer": Rule(
        lambda v: (
            isinstance(v, dict)
            and isinstance(v.get("param_groups"), list)
            and all(
                isinstance(g, dict) and isinstance(g.get("params"), list) for g in v["param_groups"]
            )
            and isinstance(v.get("state"), dict)
            and all(
                isinstance(s, dict)
                and all(
                    x is None or isinstance(x, torch.Tensor) or is_number(x) for x in s.values()
                )
                for s in v["state"].values()
            )
        ),
        "an optimizer's state (param_groups, and tensors or numbers per parameter)",
    ),
    "scheduler": Rule(
        lambda v: isinstance(v, dict) and is_int(v.get("last_epoch")) and v["last_epoch"] >= 0,
        "a schedule's state with a last_epoch >= 0",
    ),
    "scaler": Rule(
        lambda v: (
            v is None
            or (
                isinstance(v, dict)
                and all(isinstance(k, str) and is_number(x) for k, x in v.items())
            )
        ),
        "None or a grad scaler's state (numbers by name)",
    ),
    "epoch": integer(1),
    "step": integer(0),
    "best": mapping(
        {
            "value": nullable(Rule(lambda v: is_number(v) or isinstance(v, float), "a number")),
            "epoch": integer(0),
            "stale": integer(0),
        },
        required=("value", "epoch", "stale"),
    ),
    "config": mapping(),
}
# Each RNG state restored into a throwaway generator: exactly what set_rng_state accepts, with no
# effect on this process's own RNGs (and CUDA is not started).
RNG_RESTORES = {
    "python": lambda s: random.Random().setstate((s["version"], tuple(s["state"]), s["gauss"])),
    "numpy": lambda s: np.random.RandomState().set_state(
        (s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["gauss"])
    ),
    "torch": lambda s: torch.Generator().set_state(s),
    "loader": lambda s: torch.Generator().set_state(s),
}


def check_fields(state: dict, source: str) -> None:
    """Refuse, in one CheckpointError naming `source` and the field, a checkpoint whose fields a
    resume could not use (wrong types, shapes or keys)."""
    for key, rule in FIELDS.items():
        if not rule.accepts(state[key]):
            raise CheckpointError(
                f"{source} is not usable: its {key} is {described(state[key])}, "
                f"not {rule.expected}, so it was not loaded"
            )
    fields = [("rng", state["rng"])]
    ranks = state.get("rng_ranks", [])  # torchrun: every rank's RNG states
    if isinstance(ranks, list):
        fields += [(f"rng_ranks[{i}]", r) for i, r in enumerate(ranks)]
    else:
        fields.append(("rng_ranks", None))  # not a list: refused whole
    for name, rng in fields:
        bad = unusable_rng(rng)
        if bad is not None:
            raise CheckpointError(
                f"{source} is not usable: its {name}{bad} is not an RNG state that can be "
                "restored, so it was not loaded"
            )


def unusable_rng(rng) -> str | None:
    """The part of an rng_state dict that cannot be restored ('' for the whole), or None."""
    if not isinstance(rng, dict):
        return ""
    for name, restore in RNG_RESTORES.items():
        try:
            restore(rng[name])
        except Exception:  # any shape or type the restore rejects
            return f".{name}"
    cuda = rng.get("cuda", [])
    if not isinstance(cuda, list) or not all(
        isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda
    ):
        return ".cuda"
    return None


def described(value) -> str:
    """A field's value in one short line (a tensor by its dtype and shape)."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return " ".join(shown(value).split())


def check_fit(state: dict, model, optimizer, scheduler, same_schedule: bool, source: str) -> None:
    """Restore the checkpoint's model, optimizer and schedule into ones freshly built from its
    config and take one dry step (before any run exists): a checkpoint that would fail once
    training resumed is one CheckpointError naming `source` and the field."""
    state = copy.deepcopy(state)  # loaded states share its tensors, and the dry step moves them
    groups, schedule = group_kinds(optimizer), kinds(scheduler.state_dict())
    with refusing(source, "model"):
        model.load_state_dict(state["model"])
    with refusing(source, "optimizer"):
        optimizer.load_state_dict(state["optimizer"])
    # load_state_dict takes any value; the optimizer's step would not
    if group_kinds(optimizer) != groups:
        raise CheckpointError(
            f"{source} is not usable: its optimizer's param_groups differ in kind from those its config builds"
        )
    if same_schedule and kinds(state["scheduler"]) != schedule:
        raise CheckpointError(
            f"{source} is not usable: its scheduler differs in kind from the one its config builds"
        )
    for param, values in optimizer.state.items():  # load_state_dict takes any shape too
        for key, value in values.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                raise CheckpointError(
                    f"{source} is not usable: its optimizer's {key} is {described(value)}, "
                    f"not of its parameter's shape {tuple(param.shape)}"
                )
    with refusing(source, "optimizer"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for param in model.parameters():
            param.grad = torch.zeros_like(param)
        optimizer.step()
    if same_schedule:
        with refusing(source, "scheduler"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scheduler.load_state_dict(state["scheduler"])
            scheduler.step()


@contextmanager
def refusing(source: str, field: str):
    """Any error restoring or stepping `field` as one CheckpointError sentence naming it."""
    try:
        yield
    except Exception as error:  # a foreign state can fail anywhere inside torch
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise CheckpointError(
            f"{source} is not usable: its {field} does not fit what its config builds ({reason})"
        ) from None


def group_kinds(optimizer) -> list:
    """The kinds of an optimizer's param_groups settings (its parameters left out)."""
    return kinds([{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups])


def kinds(value):
    """A value's structure with numbers as "number" (1 and 1.0 alike): what a state must share
    with a freshly built one."""
    if isinstance(value, dict):
        return {k: kinds(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [kinds(v) for v in value]
    if value is None or isinstance(value, bool):
        return "None" if value is None else "bool"
    return "number" if isinstance(value, numbers.Real) else type(value).__name__


def load_checkpoint(
    path: str | os.PathLike, expected_sha256: str | None = None, map_location="cpu"
) -> dict:
    """Load a checkpoint file after checking its hash; any problem is one CheckpointError sentence."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return checkpoint_from_bytes(
        path.read_bytes(), expected_sha256, f"checkpoint {path}", map_location
    )


# --------------------------------------------------------------------------- training state


def training_state(
    *,
    model,
    optimizer,
    scheduler,
    scaler,
    epoch: int,
    step: int,
    generator: torch.Generator,
    best: dict,
    config,
) -> dict:
    """Everything needed to continue bit-exactly after `epoch`, as tensors and plain values."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "step": step,
        "rng": rng_state(generator),  # python, numpy, torch CPU and CUDA, the loader's generator
        "best": best,
        "config": plain(config),
    }


def restore_training_state(
    state: dict,
    *,
    model,
    optimizer,
    scheduler,
    scaler,
    generator: torch.Generator,
    same_schedule: bool,
) -> tuple[int, int, dict]:
    """Put model, optimizer, schedule, scaler and every RNG where the checkpoint left them.

    With `same_schedule` False (more epochs than the checkpoint's run planned) the schedule is
    the one built for the new length, advanced to the checkpoint's step. Returns epoch, step
    and the best-tracker state."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if same_schedule:
            scheduler.load_state_dict(state["scheduler"])
        else:
            advance(scheduler, state["scheduler"]["last_epoch"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as error:
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise CheckpointMismatch(
            f"resume: the checkpoint does not fit the model, optimizer or "
            f"schedule its config builds now (has their code changed?): "
            f"{reason}"
        ) from None
    set_rng_state(state["rng"], generator)  # last: nothing may draw from an RNG after this
    return state["epoch"], state["step"], state["best"]


def advance(scheduler, steps: int) -> None:
    """Step a freshly built schedule to `steps`, setting the optimizer's lr as training would have."""
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
        warnings.simplefilter("ignore")
        for _ in range(steps - scheduler.last_epoch):
            scheduler.step()


LAST, BEST = "last.pt", "best.pt"
SCRATCH = "reprolab-checkpoint-{tag}-*"  # a checkpoint's scratch folder in $TMPDIR


class CheckpointRecorder:
    """Saves each checkpoint straight into the run's store and records its SHA-256 in the info.

    Each save is two-phase, so that a kill at any moment leaves a checkpoint that verifies: the
    info first vouches for the new hash beside the hash of the file in place ("replaces"), then
    the file is renamed into place (the store replaces the same name), then the info keeps the new
    hash only. The scratch copy lives in a temporary folder ($TMPDIR) only while it is added;
    those of killed runs are swept."""

    def __init__(self, run, carried: dict[str, tuple[bytes, dict]] | None = None):
        self.run = run
        sweep_orphans(tempfile.gettempdir(), SCRATCH)
        run.info["checkpoints"] = {}
        self.enabled = not getattr(run, "unobserved", False)  # under torchrun rank 0 alone writes
        for name, (data, record) in (carried or {}).items():
            with self._scratch(name) as path:
                path.write_bytes(data)
                self._attach(name, path, {k: v for k, v in record.items() if k != "replaces"})

    def save(self, name: str, state: dict) -> None:
        """Write one checkpoint; an interrupt waits until the file and its hash are both recorded."""
        if not self.enabled:
            return
        with INTERRUPTS.deferred(), self._scratch(name) as path:
            digest = save_checkpoint(path, state)
            self._attach(
                name, path, {"sha256": digest, "epoch": state["epoch"], "step": state["step"]}
            )

    @staticmethod
    @contextmanager
    def _scratch(name: str):
        with tempfile.TemporaryDirectory(prefix=SCRATCH.split("{")[0] + writer_tag() + "-") as tmp:
            yield Path(tmp) / name

    def _attach(self, name: str, path: Path, record: dict) -> None:
        """Vouch for the new hash (and the old) in the info and the sidecar, copy the file in,
        then keep the new hash only (sidecar first: it alone makes the file usable)."""
        if not self.enabled:
            return
        record = {**record, "size": path.stat().st_size}  # a file of another size is not read
        swapping = {**record, "replaces": self.run.info["checkpoints"].get(name)}
        self._record(name, swapping)
        self._sidecar(name, path, swapping)
        self.run.add_artifact(str(path), name=name)
        self._sidecar(name, path, record)
        self._record(name, record)

    def _sidecar(self, name: str, path: Path, record: dict) -> None:
        """The checkpoint's own record, copied in atomically beside it."""
        side = path.with_name(name + SIDECAR)
        side.write_text(sidecar_text(record))
        self.run.add_artifact(str(side), name=name + SIDECAR)

    def _record(self, name: str, record: dict) -> None:
        """Set the record and write the info out now (a heartbeat; otherwise every 10 s). The
        checkpoints dict is replaced whole: Sacred's heartbeat thread may be reading the old one."""
        self.run.info["checkpoints"] = {**self.run.info["checkpoints"], name: record}
        emit_heartbeat(self.run)
