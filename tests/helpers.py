"""Plain helpers shared by the test modules: the checkout root, train.py and the `reprolab` command
run as a user runs them, a free loopback port, reading records back. Import them with
`from tests.helpers import ...`; fixtures stay in the conftest.py files."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from observers.files import KILL_AT_STEP_VARIABLE, WRITE_LOG_VARIABLE

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN = REPO_ROOT / "experiments" / "train.py"
CLI_MODULE = "experiments.cli"  # what the `reprolab` console script runs
START = dt.datetime(2026, 3, 1, 12, 0, 0)  # the start time of the runs tests drive by hand


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def read_json(path: Path):
    """The parsed JSON file at path."""
    with open(path) as f:
        return json.load(f)


def hash_tree(root: Path) -> str:
    """One hash over every file's path and bytes under root."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def run_train(
    store: Path,
    *updates: str,
    flags: tuple[str, ...] = (),
    env: dict | None = None,
    cwd: Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run experiments/train.py as a user would, recording into store."""
    command = [sys.executable, str(TRAIN), *flags, "-R", str(store)]
    if updates:
        command += ["with", *updates]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=cwd or REPO_ROOT,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def reprolab_command(*args: str) -> list[str]:
    """The argv of `reprolab ARGS` run by this interpreter (for Popen)."""
    return [sys.executable, "-m", CLI_MODULE, *args]


def run_reprolab(
    *args: str,
    cwd: Path = REPO_ROOT,
    env: dict | None = None,
    timeout: float = 600,
    check: bool = False,
) -> subprocess.CompletedProcess:
    """`reprolab ARGS` in a child process, output captured; env is added to this process's own.
    Started in another checkout (cwd), that checkout's reprolab runs. With check, a non-zero
    exit fails the test with the end of its stderr."""
    result = subprocess.run(
        reprolab_command(*args),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"reprolab {args[0]} failed ({result.returncode}):\n{result.stderr[-3000:]}"
        )
    return result


TORCHRUN_TIMEOUT = 300  # seconds any one torchrun job may take on a loaded machine


def torchrun_command(*args: str) -> list[str]:
    """torchrun as a module of this Python (the console script may belong to another)."""
    return [sys.executable, "-m", "torch.distributed.run", *args]


def run_torchrun(
    store: Path, *updates: str, nproc: int = 2, env: dict | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """experiments/train.py under torchrun (standalone, CPU, gloo), recording into store."""
    command = torchrun_command(
        "--standalone", f"--nproc_per_node={nproc}", str(TRAIN), "-R", str(store), "with", *updates
    )
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        timeout=TORCHRUN_TIMEOUT,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"torchrun failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def logging_steps(log: Path) -> dict:
    """The environment that makes a process log its durable steps to log (read by durable_steps)."""
    return {WRITE_LOG_VARIABLE: str(log)}


def killing_at(step: int, pattern: str = "") -> dict:
    """The environment that makes a process SIGKILL itself at its step-th durable step, or with
    a pattern (a regular expression) at the step-th of the steps whose description matches it."""
    return {KILL_AT_STEP_VARIABLE: f"{step}:{pattern}" if pattern else str(step)}


def durable_steps(log: Path) -> list[str]:
    """What each durable step of an uninterrupted process wrote, in order (step i at index i-1):
    the kill points of a kill-anywhere test, so a write added to the code is covered unasked."""
    lines = log.read_text().splitlines() if log.is_file() else []
    return [line.split(" ", 2)[2] for line in lines]


def metric_points(name: str, steps: range, scale: float) -> dict:
    """New points of one metric (scale * step, a second apart from START), as Sacred hands them
    to an observer's log_metrics."""
    return {
        name: {
            "steps": list(steps),
            "values": [scale * s for s in steps],
            "timestamps": [START + dt.timedelta(seconds=s) for s in steps],
        }
    }


def sweep_record_file(store: Path) -> Path:
    """The one sweep record in a file store (unpacking fails if there is none or several)."""
    (path,) = (store / ".reprolab" / "sweeps").glob("*.json")
    return path


def start_observer(observer, root: Path, config: dict):
    """observer after the started_event Sacred sends it for a run of train.py begun at START."""
    ex_info = {
        "name": "train",
        "base_dir": str(root),
        "sources": [],
        "dependencies": [],
        "repositories": [],
        "mainfile": "train.py",
    }
    observer.started_event(ex_info, "train", {"hostname": "testhost"}, START, config, {}, None)
    return observer


def stop_when_ready(fifo: Path, process: subprocess.Popen, timeout: float = 600) -> None:
    """Wait (bounded) for READY in the FIFO, then Ctrl-C the sweep as a user would."""
    said = []
    reader = threading.Thread(target=lambda: said.append(fifo.read_text()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not said:
        process.kill()
        with open(fifo, "w"):  # let the reader thread finish
            pass
        raise AssertionError("no run of the sweep reached the end of epoch 1")
    process.send_signal(signal.SIGINT)


class RunByRun:
    """A store seen through the RunStore protocol alone: each run read by itself from its record
    (no index, no summary cache, no bulk read), the answer the faster paths must equal."""

    def __init__(self, store):
        self.store, self.location = store, store.location

    def __getattr__(self, name):
        if name in ("run_ids", "run", "config", "info", "metrics"):
            return getattr(self.store, name)
        raise AttributeError(name)
