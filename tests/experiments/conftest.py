"""Fixtures of the experiments' tests."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

# An experiment file that is train.py, except that (with STOP_FIFO set) the first run to finish
# epoch 1 says READY into the FIFO and waits for a signal: a sweep is stopped at a known point,
# without sleeping. It imports train.py's experiment and runs it, so that a sweep (which runs only
# files that define an experiment, read with ast) accepts it.
STOPPER = """
import os, signal
import experiments.loop as loop

evaluate, calls = loop.evaluate, []


def evaluate_then_wait(*args, **kwargs):
    result = evaluate(*args, **kwargs)
    calls.append(1)
    if len(calls) == 2 and os.environ.get("STOP_FIFO"):  # epoch 1 is done and checkpointed
        try:
            os.close(os.open(os.environ["STOP_FIFO"] + ".taken", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return result  # another run stopped already
        with open(os.environ["STOP_FIFO"], "w") as fifo:
            fifo.write("READY\\n")
        while True:
            signal.pause()  # until the signal's handler raises
    return result


if __name__ == "__main__":
    loop.evaluate = evaluate_then_wait  # before train.py imports it
from experiments.train import ex  # noqa: E402

if __name__ == "__main__":
    ex.run_commandline()
"""


@pytest.fixture(scope="session")
def sweep_stopper():
    """write(folder): the STOPPER experiment file written into folder; its path."""

    def write(folder: Path) -> Path:
        path = folder / "stopper.py"
        path.write_text(STOPPER)
        return path

    return write


@pytest.fixture
def checkout_folder():
    """A temporary folder inside the checkout: a sweep's experiment must be a file of it."""
    folder = Path(tempfile.mkdtemp(dir=REPO_ROOT, prefix=".test-sweep-"))
    yield folder
    shutil.rmtree(folder)
