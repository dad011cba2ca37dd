"""Checkpoints: everything needed to continue bit-exactly, and nothing unsafe ever loads."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import experiments.checkpoint as checkpoint_module
from experiments.checkpoint import (
    CheckpointError,
    CheckpointMismatch,
    check_fit,
    checkpoint_from_bytes,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    state_hash,
    training_state,
)
from experiments.loop import Terminated
from experiments.signals import interrupts_handled
from ingredients.model import SmallCNN, mlp
from ingredients.optimizer import LRFactor


def build(schedule: str, epochs: int = 4, steps_per_epoch: int = 3):
    """A small model with Adam, a schedule and a loader generator, all freshly seeded."""
    torch.manual_seed(0)
    net = mlp((8,), 3, hidden=(16,), dropout=0.5)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    total = epochs * steps_per_epoch
    if schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=total)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            opt, LRFactor(schedule, total, 2, steps_per_epoch, 1, 0.5)
        )
    return net, opt, scheduler, torch.Generator().manual_seed(1)


def train_steps(net, opt, scheduler, generator, steps: int) -> list[float]:
    """A few optimizer steps drawing from every RNG the training uses; the values drawn."""
    drawn = []
    for _ in range(steps):
        order = torch.randperm(32, generator=generator)
        x = torch.randn(32, 8)[order]  # global torch RNG; dropout draws from it too
        loss = torch.nn.functional.cross_entropy(net(x), torch.arange(32) % 3)
        loss.backward()
        opt.step()
        opt.zero_grad()
        scheduler.step()
        drawn += [random.random(), float(np.random.rand()), opt.param_groups[0]["lr"]]
    return drawn


NO_BEST = {"value": None, "epoch": 0, "stale": 0}


def state_of(net, opt, scheduler, generator, *, epoch, step, config, best=NO_BEST) -> dict:
    """training_state of the models these tests build (no AMP scaler)."""
    return training_state(
        model=net,
        optimizer=opt,
        scheduler=scheduler,
        scaler=None,
        epoch=epoch,
        step=step,
        generator=generator,
        best=best,
        config=config,
    )


@pytest.mark.parametrize("schedule", ["none", "step", "cosine", "onecycle"])
def test_restored_state_continues_bit_exactly(tmp_path, schedule):
    random.seed(2)
    np.random.seed(3)
    net, opt, scheduler, generator = build(schedule)
    train_steps(net, opt, scheduler, generator, 4)
    state = state_of(
        net,
        opt,
        scheduler,
        generator,
        epoch=1,
        step=4,
        config={"seed": 3, "optimizer": {"betas": (0.9, 0.99)}},
        best={"value": 0.5, "epoch": 1, "stale": 0},
    )
    digest = save_checkpoint(tmp_path / "last.pt", state)
    straight = train_steps(net, opt, scheduler, generator, 5)

    random.seed(99)  # everything the checkpoint holds must be restored, not left as it is
    np.random.seed(99)
    torch.manual_seed(99)
    net2, opt2, scheduler2, generator2 = build(schedule)
    loaded = load_checkpoint(tmp_path / "last.pt", digest)
    epoch, step, best = restore_training_state(
        loaded,
        model=net2,
        optimizer=opt2,
        scheduler=scheduler2,
        scaler=None,
        generator=generator2,
        same_schedule=True,
    )
    resumed = train_steps(net2, opt2, scheduler2, generator2, 5)

    assert (epoch, step, best) == (1, 4, {"value": 0.5, "epoch": 1, "stale": 0})
    assert loaded["config"] == {"seed": 3, "optimizer": {"betas": [0.9, 0.99]}}
    assert resumed == straight
    assert state_hash(net2) == state_hash(net)


def test_a_checkpoint_that_no_longer_fits_the_model_is_one_sentence():
    net, opt, scheduler, generator = build("none")
    state = state_of(net, opt, scheduler, generator, epoch=1, step=0, config={})
    wider = mlp((8,), 3, hidden=(24,), dropout=0.5)  # the model's code changed since
    with pytest.raises(CheckpointMismatch) as refused:
        restore_training_state(
            state,
            model=wider,
            optimizer=torch.optim.Adam(wider.parameters()),
            scheduler=scheduler,
            scaler=None,
            generator=generator,
            same_schedule=True,
        )
    message = str(refused.value)
    assert message.startswith(
        "resume: the checkpoint does not fit the model, optimizer or "
        "schedule its config builds now (has their code changed?): "
    )
    assert "size mismatch for 1.weight" in message and "\n" not in message


def test_a_longer_schedule_is_advanced_to_the_checkpoint_step(tmp_path):
    net, opt, scheduler, generator = build("step", epochs=2)
    train_steps(net, opt, scheduler, generator, 6)
    state = state_of(net, opt, scheduler, generator, epoch=2, step=6, config={})
    save_checkpoint(tmp_path / "last.pt", state)
    longer_net, longer_opt, longer, longer_generator = build("step", epochs=5)
    restore_training_state(
        load_checkpoint(tmp_path / "last.pt"),
        model=longer_net,
        optimizer=longer_opt,
        scheduler=longer,
        scaler=None,
        generator=longer_generator,
        same_schedule=False,
    )
    reference = build("step", epochs=5)[2]
    for _ in range(6):
        reference.optimizer.step()
        reference.step()
    assert longer.last_epoch == 6 and longer.lr_lambdas[0].total == 15
    assert longer_opt.param_groups[0]["lr"] == reference.get_last_lr()[0] == 0.01 * 0.5**2


def test_state_hash_sees_one_bit_and_handles_0_d_tensors():
    torch.manual_seed(0)
    cnn = SmallCNN((1, 8, 8), 10)  # BatchNorm's num_batches_tracked is a 0-d tensor
    before = state_hash(cnn)
    assert state_hash(cnn) == before
    with torch.no_grad():
        weight = cnn.head[2].weight
        weight.view(-1).view(torch.int32)[0] ^= 1  # flip the lowest bit of one float
    assert state_hash(cnn) != before


@pytest.fixture
def checkpoint_file(tmp_path) -> tuple[Path, str]:
    net, opt, scheduler, generator = build("cosine")
    state = state_of(net, opt, scheduler, generator, epoch=1, step=3, config={"seed": 1})
    path = tmp_path / "last.pt"
    return path, save_checkpoint(path, state)


def test_tampered_checkpoint_is_refused(checkpoint_file):
    path, digest = checkpoint_file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the SHA-256 recorded"):
        load_checkpoint(path, digest)


def test_truncated_checkpoint_is_one_sentence(checkpoint_file):
    path, _ = checkpoint_file
    path.write_bytes(path.read_bytes()[:1000])
    truncated_digest = hashlib.sha256(path.read_bytes()).hexdigest()  # even if the record agrees
    with pytest.raises(CheckpointError, match=r"is damaged or not a torch checkpoint$"):
        load_checkpoint(path, truncated_digest)


@pytest.mark.parametrize("content", [b"epoch,loss\n1,0.5\n", b""])
def test_a_file_that_is_no_torch_file_is_refused(tmp_path, content):
    path = tmp_path / "notes.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="is damaged or not a torch checkpoint"):
        load_checkpoint(path)


def test_a_torch_file_that_is_no_checkpoint_is_refused(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match="is not a reprolab checkpoint"):
        load_checkpoint(tmp_path / "weights.pt")


class Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "raw pickle"])
def test_malicious_pickle_runs_no_code(tmp_path, writer):
    marker = tmp_path / "owned"
    path = tmp_path / "last.pt"
    payload = {"format": "reprolab-checkpoint/1", "model": Payload(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, hashlib.sha256(path.read_bytes()).hexdigest())
    assert not marker.exists()
    message = str(error.value)
    assert message == (
        f"checkpoint {path} holds objects other than tensors and plain values, "
        "so it was not loaded (a checkpoint must load with weights_only=True)"
    )


def test_checkpoint_bytes_load_on_the_cpu(checkpoint_file):
    path, digest = checkpoint_file
    state = torch.load(io.BytesIO(path.read_bytes()), weights_only=True)
    assert state["format"] == "reprolab-checkpoint/1"
    assert all(t.device.type == "cpu" for t in load_checkpoint(path, digest)["model"].values())


class FakeRun:
    """The three things CheckpointRecorder uses of a Sacred run."""

    def __init__(self):
        self.info, self.artifacts, self.heartbeats = {}, {}, []
        self.written_before = {}  # name: the info written out when the file was replaced
        self.sidecars = {}  # name: each content its sidecar was given, in order

    def add_artifact(self, path: str, name: str) -> None:
        if name.endswith(".sha256"):  # a checkpoint's sidecar: what it said when the file came
            self.sidecars.setdefault(name.removesuffix(".sha256"), []).append(
                json.loads(Path(path).read_text())
            )
        else:
            self.written_before[name] = self.heartbeats[-1][name]
        self.artifacts[name] = Path(path).read_bytes()

    def _emit_heartbeat(self) -> None:
        self.heartbeats.append({name: dict(r) for name, r in self.info["checkpoints"].items()})


@pytest.mark.parametrize(
    "signum, stop", [(signal.SIGTERM, Terminated), (signal.SIGINT, KeyboardInterrupt)]
)
def test_a_stop_request_waits_until_the_checkpoint_and_its_hash_are_recorded(
    monkeypatch, signum, stop
):
    def signal_then_save(path, state):
        os.kill(os.getpid(), signum)  # arrives in the middle of writing the checkpoint
        return save_checkpoint(path, state)

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", signal_then_save)
    run = FakeRun()
    recorder = checkpoint_module.CheckpointRecorder(run)
    with interrupts_handled(), pytest.raises(stop):
        recorder.save("last.pt", {"epoch": 2, "step": 6, "weights": torch.ones(3)})
    assert run.info["checkpoints"]["last.pt"]["epoch"] == 2
    assert (
        run.info["checkpoints"]["last.pt"]["sha256"]
        == hashlib.sha256(run.artifacts["last.pt"]).hexdigest()
    )
    assert run.heartbeats[-1] == run.info["checkpoints"]  # written out before the stop
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers are put back


def test_each_save_is_attached_and_written_out_at_once_leaving_no_temp_files(monkeypatch, tmp_path):
    monkeypatch.setattr(checkpoint_module.tempfile, "tempdir", str(tmp_path))
    run = FakeRun()
    carried = {"best.pt": (b"best bytes", {"sha256": "b" * 64, "epoch": 1, "step": 3})}
    recorder = checkpoint_module.CheckpointRecorder(run, carried=carried)
    assert run.artifacts["best.pt"] == b"best bytes" and set(run.artifacts) == {
        "best.pt",
        "best.pt.sha256",
    }
    assert run.heartbeats[-1]["best.pt"] == {**carried["best.pt"][1], "size": 10}
    replaced = None
    for epoch in (2, 3):
        recorder.save("last.pt", {"epoch": epoch, "step": 3 * epoch, "weights": torch.ones(3)})
        digest = hashlib.sha256(run.artifacts["last.pt"]).hexdigest()
        assert run.heartbeats[-1]["last.pt"] == {
            "sha256": digest,
            "epoch": epoch,
            "step": 3 * epoch,
            "size": len(run.artifacts["last.pt"]),
        }
        # before the file was replaced, the info and the sidecar vouched for the new hash and
        # the one it replaces; after it, the sidecar vouches for the new hash alone
        assert run.written_before["last.pt"] == {
            **run.heartbeats[-1]["last.pt"],
            "replaces": replaced,
        }
        assert run.sidecars["last.pt"][-2:] == [
            run.written_before["last.pt"],
            run.heartbeats[-1]["last.pt"],
        ]
        replaced = run.heartbeats[-1]["last.pt"]
    assert run.info["checkpoints"]["best.pt"]["sha256"] == "b" * 64
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_a_checkpoint_file_gets_the_mode_the_umask_allows(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "last.pt", {"epoch": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "last.pt").stat().st_mode & 0o777 == mode
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


# --------------------------------------------------------------------------- foreign fields


def real_state() -> dict:
    """A checkpoint as training writes it, loaded back as a resume loads it."""
    net, opt, scheduler, generator = build("step")
    train_steps(net, opt, scheduler, generator, 3)
    state = state_of(
        net,
        opt,
        scheduler,
        generator,
        epoch=1,
        step=3,
        config={"seed": 1, "epochs": 4},
        best={"value": 0.5, "epoch": 1, "stale": 0},
    )
    return as_loaded(state)


def as_loaded(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save({"format": checkpoint_module.FORMAT, **state}, buffer)
    return torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)


SOURCE = "run 1's checkpoint last.pt"
PATHS = [  # every field a resume reads, and parts of each
    *[(key,) for key in checkpoint_module.REQUIRED],
    ("model", "1.weight"),
    ("optimizer", "state"),
    ("optimizer", "state", 0, "exp_avg"),
    ("optimizer", "state", 0, "step"),
    ("optimizer", "param_groups"),
    ("optimizer", "param_groups", 0, "lr"),
    ("optimizer", "param_groups", 0, "betas"),
    ("scheduler", "last_epoch"),
    ("scheduler", "base_lrs"),
    ("scheduler", "lr_lambdas", 0, "gamma"),
    ("rng", "python"),
    ("rng", "python", "state"),
    ("rng", "numpy", "keys"),
    ("rng", "numpy", "pos"),
    ("rng", "torch"),
    ("rng", "loader"),
    ("best", "value"),
    ("best", "epoch"),
    ("best", "stale"),
]
TENSORS = st.builds(
    lambda shape, dtype: torch.zeros(shape, dtype=dtype),
    st.lists(st.integers(0, 3), max_size=3).map(tuple),
    st.sampled_from([torch.float32, torch.uint8, torch.int64]),
)
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(),
    st.text(max_size=4),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    TENSORS,
)


def resumes(state: dict) -> None:
    """What a resumed run does with the state: restore it into what its config builds, train a
    step, carry on the best tracker and log the epoch and step."""
    from experiments.train import Best

    net, opt, scheduler, generator = build("step")
    epoch, step, best = restore_training_state(
        state,
        model=net,
        optimizer=opt,
        scheduler=scheduler,
        scaler=None,
        generator=generator,
        same_schedule=True,
    )
    train_steps(net, opt, scheduler, generator, 1)
    tracker = Best("max")
    tracker.load_state_dict(best)
    tracker.update(0.5, epoch + 1)
    assert f"{epoch:d} {step:d}" and epoch >= 1 and step >= 0


@pytest.mark.parametrize(
    ("ranks", "named"),
    [
        ({"python": 1}, "its rng_ranks is not"),  # not a list of states
        ("both", "its rng_ranks[1].python is not"),  # the second rank's python state
    ],
)
def test_a_torchrun_checkpoints_rank_rng_states_are_each_checked(ranks, named):
    state = real_state()
    good = state["rng"]
    ranks = [good, {**good, "python": 1}] if ranks == "both" else ranks
    for value, refused in ((ranks, True), ([good, good], False)):
        data = io.BytesIO()
        torch.save({**state, "rng_ranks": value}, data)
        if refused:
            with pytest.raises(
                CheckpointError, match=re.escape(f"{SOURCE} is not usable: {named}")
            ):
                checkpoint_from_bytes(data.getvalue(), None, SOURCE)
        else:
            assert checkpoint_from_bytes(data.getvalue(), None, SOURCE)["rng_ranks"][1]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), action=st.sampled_from(["set", "delete", "add"]), value=VALUES)
def test_a_checkpoint_with_foreign_fields_is_refused_naming_the_field_or_resumes(
    path, action, value
):
    state = real_state()
    *parents, last = path
    holder = state
    for key in parents:
        holder = holder[key]
    if action == "set":
        holder[last] = value
    elif action == "delete":
        del holder[last]
    elif isinstance(holder[last], dict):
        holder[last]["extra"] = value
    data = io.BytesIO()
    torch.save(state, data)
    rngs = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        loaded = checkpoint_from_bytes(data.getvalue(), None, SOURCE)
        net, opt, scheduler, _ = build("step")
        check_fit(loaded, net, opt, scheduler, True, SOURCE)
    except CheckpointError as error:
        message = str(error)
        assert message.startswith(SOURCE) and "\n" not in message and len(message) < 600
        assert path[0] in message, message
        return
    finally:
        random.setstate(rngs[0])
        np.random.set_state(rngs[1])
        torch.set_rng_state(rngs[2])
    resumes(loaded)  # accepted: then it really is usable


def test_each_field_of_a_real_checkpoint_passes_and_a_wrong_type_is_named():
    state = real_state()
    net, opt, scheduler, _ = build("step")
    check_fit(
        checkpoint_from_bytes(as_loaded_bytes(state), None, SOURCE),
        *build("step")[:3],
        True,
        SOURCE,
    )
    before = as_loaded_bytes(state)
    check_fit(state, net, opt, scheduler, True, SOURCE)
    assert as_loaded_bytes(state) == before  # checked, never moved (a resume restores it next)
    for key, value, said in [
        ("epoch", "2", "its epoch is '2', not an integer >= 1"),
        ("epoch", -3, "its epoch is -3, not an integer >= 1"),
        ("step", "x", "its step is 'x', not an integer >= 0"),
        ("best", {}, "its best is {}, not a dict with 'value'"),
        ("rng", {}, "its rng.python is not an RNG state that can be restored"),
    ]:
        with pytest.raises(CheckpointError) as error:
            checkpoint_from_bytes(as_loaded_bytes({**state, key: value}), None, SOURCE)
        assert str(error.value).startswith(f"{SOURCE} is not usable: {said}")


def as_loaded_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()
