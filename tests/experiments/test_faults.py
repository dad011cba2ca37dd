"""Faults a run must survive: a store that fills up or turns read-only mid-run, a SIGKILL at the
moment a checkpoint appears, Ctrl-C or SIGTERM while MongoDB is being reached.

A full or read-only store is a small tmpfs mounted by the test (root only, else skipped); a
wrapper around train.py fills it, or remounts it read-only, once a given epoch is evaluated.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading

import pytest

from experiments.checkpoint import LAST, checkpoint_from_bytes
from experiments.resume import verified_checkpoint
from ingredients.scratch import HOST
from observers.store import FileRunStore
from tests.helpers import REPO_ROOT, TRAIN

QUICK = ("epochs=4", "limit_batches=3", "progress=False")
ENV = {"OMP_NUM_THREADS": "1"}

# Runs train.py; once epoch FAULT_AFTER_EPOCH is evaluated, fills the store's file system (leaving
# FAULT_LEAVE bytes) or remounts it read-only. "beat" mode: heartbeats every 50 ms and, after
# filling, waits (at most 60 s) for the heartbeat thread's failure to stop the main thread.
FAULTY = """
import os, runpy, subprocess, sys, threading, time
import sacred
import experiments.loop as loop

mode, mount = os.environ["FAULT_MODE"], os.environ["FAULT_MOUNT"]
after, calls, evaluate = int(os.environ["FAULT_AFTER_EPOCH"]), [], loop.evaluate
if mode == "beat":
    sacred.SETTINGS.DEFAULT_BEAT_INTERVAL = 0.05

def fill(path, leave):
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    f.write(bytes(size))
            except OSError:
                pass
        f.truncate(max(0, f.tell() - leave))

def evaluate_then_fault(*args, **kwargs):
    result = evaluate(*args, **kwargs)
    calls.append(1)
    if len(calls) == after + 1:
        if mode == "readonly":
            subprocess.run(["mount", "-o", "remount,ro", mount], check=True)
        else:
            fill(os.path.join(mount, "filler"), int(os.environ.get("FAULT_LEAVE", "0")))
        if mode == "beat":
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                threading.Event().wait(0.05)
            print("NOT STOPPED", flush=True)
    return result

loop.evaluate = evaluate_then_fault
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs at tmp_path/disk, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode, leave, cause, status",
    [
        ("fill", 100_000, "No space left on device", "FAILED"),  # the checkpoint does not fit
        ("readonly", 0, "Read-only file system", "RUNNING"),
        ("beat", 0, "No space left on device", "RUNNING"),  # found by Sacred's heartbeat thread
    ],
)
def test_a_store_that_fills_or_turns_read_only_ends_the_run_in_one_sentence(
    small_disk, tmp_path, mode, leave, cause, status
):
    faulty = tmp_path / "faulty.py"
    faulty.write_text(FAULTY)
    store = small_disk / "runs"
    result = subprocess.run(
        [sys.executable, str(faulty), str(TRAIN), "-R", str(store), "with", *QUICK],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
        env={
            **os.environ,
            **ENV,
            "FAULT_MODE": mode,
            "FAULT_MOUNT": str(small_disk),
            "FAULT_AFTER_EPOCH": "2",
            "FAULT_LEAVE": str(leave),
        },
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "NOT STOPPED" not in result.stdout  # the failure stopped the run, not the deadline
    errors = error_lines(result.stderr)
    assert len(errors) == 1 and errors == result.stderr.strip().splitlines()[-1:]
    assert errors[0].startswith(f"error: could not write {store / '1'}/") and cause in errors[0]
    if status == "FAILED":
        assert errors[0].endswith("run 1 stopped and is recorded as FAILED")
    else:
        assert "its status could not be written either" in errors[0]
    assert "Traceback" not in result.stderr and "Completed" not in result.stderr
    assert "epoch 4:" not in result.stderr  # it stopped at the first failed write
    assert not [p for p in small_disk.rglob("*") if p.name.endswith(".tmp")]
    # everything recorded before is intact: the record reads back and its checkpoint verifies
    reader = FileRunStore(store)
    assert reader.run(1)["status"] == status
    assert all(len(series["steps"]) >= 2 for series in reader.metrics(1).values())
    data, record = verified_checkpoint(reader, 1, LAST, reader.info(1)["checkpoints"])
    assert checkpoint_from_bytes(data, record["sha256"], "last.pt")["epoch"] >= 2


def test_a_store_that_cannot_be_made_is_one_sentence_and_no_run(tmp_path, capsys):
    from experiments.train import ex

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as stop:
        ex.run_commandline(
            ["train.py", "-R", str(blocker / "runs"), "with", "debug", "progress=False"]
        )
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        err[-1]
        == f"error: could not write {blocker / 'runs'}: Not a directory; the run could not start"
    )
    assert not any("Traceback" in line or "Failed after" in line for line in err)


def dead_pid() -> int:
    """The id of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


@pytest.mark.slow
def test_a_run_killed_as_its_checkpoint_appears_resumes_and_its_leftovers_are_swept(tmp_path, load):
    store, tmpdir = tmp_path / "store", tmp_path / "tmpdir"
    tmpdir.mkdir()
    # torch puts its inductor cache under TMPDIR unless told (an earlier test's import of it in
    # this process tells it, so this test passed in the suite and failed alone): not ours
    inductor = str(tmp_path / "inductor")
    env = {**os.environ, **ENV, "TMPDIR": str(tmpdir), "TORCHINDUCTOR_CACHE_DIR": inductor}
    process = subprocess.Popen(
        [sys.executable, str(TRAIN), "-R", str(store), "with", *QUICK],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
        env=env,
    )
    last, seen = store / "1" / LAST, []

    def kill_when_epoch_2_appears():  # a new last.pt is a new inode (renamed into place)
        while process.poll() is None:
            try:
                inode = os.stat(last).st_ino
            except FileNotFoundError:
                continue
            if inode not in seen:
                seen.append(inode)
            if len(seen) == 2:
                process.kill()
                return

    watcher = threading.Thread(target=kill_when_epoch_2_appears)
    watcher.start()
    process.stderr.read()
    process.wait(timeout=300)
    watcher.join()
    assert process.returncode == -signal.SIGKILL and len(seen) == 2
    # orphans as a killed run leaves them, and one of a live process that must stay
    pid, alive = dead_pid(), f"{os.getpid()}@{HOST}"
    orphans = [
        store / "1" / f".last.pt.ab12.{pid}@{HOST}.tmp",
        tmpdir / f"reprolab-checkpoint-{pid}@{HOST}-x1y2" / LAST,
    ]
    kept = [store / "1" / f".best.pt.cd34.{alive}.tmp"]
    for path in orphans + kept:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"partial")

    resumed = subprocess.run(
        [sys.executable, str(TRAIN), "-R", str(store), "with", "resume=1", "progress=False"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = load(store / "2" / "info.json")
    assert record["resumed_from"]["epoch"] == 2
    assert record["resumed_from"]["sha256"] == hashlib.sha256(last.read_bytes()).hexdigest()
    assert load(store / "2" / "run.json")["status"] == "COMPLETED"
    assert not any(path.exists() for path in orphans) and all(path.exists() for path in kept)
    assert list(tmpdir.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_while_mongodb_is_reached_interrupts_the_run_in_one_line(tmp_path, signum, code):
    url = "mongodb://reprolab:pw-hidden@127.0.0.1:1/sacred?serverSelectionTimeoutMS=60000"
    process = subprocess.Popen(
        [sys.executable, str(TRAIN), "with", "debug", "progress=False"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={
            **os.environ,
            **ENV,
            "REPROLAB_MONGO_URL": url,
            "REPROLAB_FALLBACK_DIR": str(tmp_path / "fallback"),
        },
    )
    lines = []
    for line in process.stderr:  # the closed port is retried for 60 s: the signal comes first
        lines.append(line)
        if "reaching MongoDB at" in line:
            process.send_signal(signum)
            break
    lines += process.stderr.readlines()
    process.wait(timeout=120)
    stderr = "".join(lines)
    assert process.returncode == code, stderr[-3000:]
    assert lines[-1].strip() == "interrupted before the run started; nothing was recorded"
    assert "Traceback" not in stderr and "unreachable" not in stderr
    assert "pw-hidden" not in stderr and not (tmp_path / "fallback").exists()


STOPPABLE_CHILD = """
import signal, sys
signal.signal(signal.SIGTERM, lambda *_: (print("stopped", flush=True), sys.exit(143)))
print("ready", flush=True)
signal.pause()
"""
LAUNCHER = f"""
import subprocess, sys
from experiments.child import wait_passing_on_stops
child = subprocess.Popen([sys.executable, "-c", {STOPPABLE_CHILD!r}])
sys.exit(wait_passing_on_stops(child))
"""


def test_a_launcher_stopped_by_sigterm_stops_its_run_and_waits_for_it():
    """`timeout 60 reprolab rerun` left the run (or torchrun and its ranks) running after the
    launcher was gone; the run now gets the SIGTERM, records its stop, and gives its exit code."""
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    assert launcher.stdout.readline() == "ready\n"
    launcher.send_signal(signal.SIGTERM)
    out, _ = launcher.communicate(timeout=60)
    assert out == "stopped\n" and launcher.returncode == 143
