"""Issue 19: Ctrl-C or SIGTERM while train.py is still importing (torch takes a second or more)
is one line and a non-zero exit, with no traceback and no run folder."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TRAIN = Path(__file__).resolve().parents[2] / "experiments" / "train.py"


def catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler of its own for signum (its SigCgt mask)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_importing_is_one_line(tmp_path, signum):
    child = subprocess.Popen(
        [sys.executable, str(TRAIN), "-F", str(tmp_path / "runs"), "with", "epochs=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 60
    while not catches(child.pid, signal.SIGTERM):  # SIGTERM is caught from the first line on
        assert time.monotonic() < deadline and child.poll() is None
        time.sleep(0.005)
    child.send_signal(signum)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 128 + signum, err
    assert err == "interrupted while starting; nothing was recorded\n", err
    assert not (tmp_path / "runs").exists()
