"""Warm workers: a sweep's runs forked from a server that loaded torch and the experiment once are
the runs a fresh process would record (same sources, config and model, bit for bit), carry
nothing from the run before them, stop on Ctrl-C and resume, and die with their whole session."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from experiments.warm import SWITCH_VARIABLE, WarmPool, entry_point, unavailable

REPO_ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 600  # every wait on a process here is bounded

USER_MODELS = """
from torch import nn


def wide(input_shape, num_outputs):
    \"\"\"A linear model on the 64 inputs of the bundled data.\"\"\"
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_outputs))
"""


def sweep(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "experiments.cli", "sweep", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=WAIT_S,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_warm_runs_record_what_a_fresh_run_does_and_rerun_bit_exactly(tmp_path):
    """Two configs in one pool, one after the other: the first names a user's model by import
    path; the second (the MLP) must carry none of it, and its rerun in a fresh process matches
    bit for bit with the same sources, config and host."""
    store = tmp_path / "runs"
    (tmp_path / "user_models.py").write_text(USER_MODELS)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    result = sweep(
        "--store",
        str(store),
        "--threads",
        "1",
        "with",
        "model.name=['user_models:wide', 'mlp']",
        "seed=5",
        "epochs=1",
        "limit_batches=3",
        env={"PYTHONPATH": path},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "runs start in warm workers" in result.stderr
    first, second = (read(store / str(i) / "info.json") for i in (1, 2))
    assert first["import_paths"]["model.name"]["import_path"] == "user_models:wide"
    assert "import_paths" not in second and "outside_code" not in second  # nothing carried over
    sources = [name for name, _ in read(store / "2" / "run.json")["experiment"]["sources"]]
    assert not any("user_models" in name or "warm" in name for name in sources)

    rerun = subprocess.run(
        [sys.executable, "-m", "experiments.cli", "rerun", "2", "--verify", "--store", str(store)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=WAIT_S,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    warm, fresh = read(store / "2" / "run.json"), read(store / "3" / "run.json")
    assert warm["experiment"] == fresh["experiment"]  # sources, dependencies, repositories
    assert warm["host"] == fresh["host"]
    assert read(store / "2" / "config.json") == read(store / "3" / "config.json")
    assert second["final_model_sha256"] == read(store / "3" / "info.json")["final_model_sha256"]
    assert second["determinism"] == read(store / "3" / "info.json")["determinism"]


# train.py, except that (with STOP_FIFO set) the first run to finish epoch 1 says READY into the
# FIFO and waits for a signal. Patched at import, not in the main block, so warm workers run it.
WARM_STOPPER = """
import os, signal
import experiments.loop as loop

evaluate, calls = loop.evaluate, []


def evaluate_then_wait(*args, **kwargs):
    result = evaluate(*args, **kwargs)
    calls.append(1)
    if len(calls) == 2 and os.environ.get("STOP_FIFO"):  # epoch 1 is done and checkpointed
        with open(os.environ["STOP_FIFO"], "w") as fifo:
            fifo.write("READY\\n")
        while True:
            signal.pause()  # until the signal's handler raises
    return result


loop.evaluate = evaluate_then_wait
from experiments.train import ex  # noqa: E402  (after the patch: train.py binds evaluate)

if __name__ == "__main__":
    ex.run_commandline()
"""


def test_ctrl_c_interrupts_warm_runs_and_resume_continues_them_bit_exactly(
    tmp_path, train, checkout_folder
):
    store, fifo = tmp_path / "runs", tmp_path / "ready"
    os.mkfifo(fifo)
    stopper = checkout_folder / "warm_stopper.py"
    stopper.write_text(WARM_STOPPER)
    config = ("seed=3", "limit_batches=5", "epochs=2")
    first = subprocess.Popen(
        [sys.executable, "-m", "experiments.cli", "sweep", str(stopper), "--store", str(store)]
        + ["--threads", "1", "with", "lr=[0.1, 0.05]", *config],
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "STOP_FIFO": str(fifo)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.append(fifo.read_text()), daemon=True)
    reader.start()
    reader.join(WAIT_S)
    if said != ["READY\n"]:
        first.kill()
        with open(fifo, "w"):  # let the reader thread finish
            pass
        raise AssertionError(f"no run reached the end of epoch 1: {first.communicate()[1]}")
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=WAIT_S)
    assert first.returncode == 130, stderr
    assert "runs start in warm workers" in stderr
    name = (store / ".reprolab" / "sweeps").glob("*.json").__next__().stem
    assert read(store / "1" / "run.json")["status"] == "INTERRUPTED"
    assert not (store / "2").exists()  # config 1 never started

    resumed = sweep("--resume", name, "--store", str(store))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "config 0: continuing run 1 from its checkpoint" in resumed.stderr
    assert "runs start in warm workers" in resumed.stderr
    info = read(store / "2" / "info.json")
    assert info["resumed_from"]["run_id"] == 1
    straight = tmp_path / "straight"
    train(straight, "lr=0.1", *config, env={"OMP_NUM_THREADS": "1"})
    expected = read(straight / "1" / "info.json")["final_model_sha256"]
    assert info["final_model_sha256"] == expected  # continued bit-exactly, warm against fresh


# Not an experiment, but what a warm child runs: it ignores Ctrl-C and starts a process of its
# own session; both hold the FIFO open, so its end of file says both are gone.
STUBBORN = """
import os, signal, subprocess, sys


class Stubborn:
    def run_commandline(self):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        alive = os.open(os.environ["ALIVE_FIFO"], os.O_WRONLY)
        code = "import time; time.sleep(600)"
        subprocess.Popen([sys.executable, "-c", code], pass_fds=[alive])
        os.write(alive, b"r")
        signal.pause()


ex = Stubborn()

if __name__ == "__main__":
    ex.run_commandline()
"""


def test_a_warm_run_is_stopped_with_its_whole_session(tmp_path, monkeypatch):
    import experiments.sweeps.local as local
    from experiments.sweeps.record import Job, SweepBook, SweepRecord
    from observers.location import StoreLocation

    experiment, fifo = tmp_path / "stubborn.py", tmp_path / "alive"
    experiment.write_text(STUBBORN)
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    ours = os.open(fifo, os.O_WRONLY)  # until the child holds it: no end of file before
    env = {**os.environ, "ALIVE_FIFO": str(fifo)}
    pool = WarmPool.open(experiment, env, tmp_path / "warm.log")
    try:
        pool.wait_ready(timeout=WAIT_S)
        process = pool.start([str(experiment)], env, tmp_path / "run.log", 1)
        assert select.select([reader], [], [], WAIT_S)[0] and os.read(reader, 1) == b"r"
        os.close(ours)
        monkeypatch.setattr(local, "STOP_WAIT_S", 0)
        store = StoreLocation(str(tmp_path))
        runner = local.LocalSweep(
            SweepRecord("s1", "x.py", [], [{}]), SweepBook(store), store, 1, 1
        )
        running = local.Running(Job(0, []), process, tmp_path / "run.log", tmp_path / "id")
        runner.stop([running])  # SIGINT is ignored: after the wait, the session is killed
        assert process.returncode == -signal.SIGKILL and runner.interrupted == 1
        assert select.select([reader], [], [], 30)[0] and os.read(reader, 1) == b""  # both gone
    finally:
        os.close(reader)
        pool.close()


# What a warm child runs, stopped (by its own hand) while Python's at-fork hooks still run: the
# moment a launcher's Ctrl-C meets a run just forked. It must not be lost there.
BORN_STOPPED = """
import os, signal

os.register_at_fork(after_in_child=lambda: os.kill(os.getpid(), signal.SIGINT))


class Run:
    def run_commandline(self):
        with open(os.environ["RAN_FILE"], "w") as ran:
            ran.write("the stop was lost")


ex = Run()

if __name__ == "__main__":
    ex.run_commandline()
"""


def test_a_stop_sent_as_a_warm_run_is_forked_stops_it(tmp_path):
    experiment, ran = tmp_path / "born_stopped.py", tmp_path / "ran"
    experiment.write_text(BORN_STOPPED)
    env = {**os.environ, "RAN_FILE": str(ran)}
    pool = WarmPool.open(experiment, env, tmp_path / "warm.log")
    try:
        pool.wait_ready(timeout=WAIT_S)
        process = pool.start([str(experiment)], env, tmp_path / "run.log", 1)
        assert process.wait(timeout=WAIT_S) == -signal.SIGINT
        assert not ran.exists()
        assert "KeyboardInterrupt" in (tmp_path / "run.log").read_text()
    finally:
        pool.close()


MAIN_BLOCKS = {
    'if __name__ == "__main__":\n    ex.run_commandline()\n': "ex",
    "if '__main__' == __name__:\n    experiment.run_commandline()\n": "experiment",
    'if __name__ == "__main__":\n    ex.run_commandline(["x"])\n': None,
    'if __name__ == "__main__":\n    patch()\n    ex.run_commandline()\n': None,
    "ex = 1\n": None,
    # a start-up block that only installs signal handlers is left out (train.py has one)
    'if __name__ == "__main__":\n    import signal\n    for s in (2, 15):\n'
    "        signal.signal(s, print)\n"
    'if __name__ == "__main__":\n    ex.run_commandline()\n': "ex",
    'if __name__ == "__main__":\n    import os\n    os.chdir("/")\n'
    'if __name__ == "__main__":\n    ex.run_commandline()\n': None,
}


@pytest.mark.parametrize("block", sorted(MAIN_BLOCKS))
def test_only_a_plain_main_block_runs_warm(tmp_path, block, monkeypatch):
    """A child runs `ex.run_commandline()`: a file whose script does more starts fresh."""
    file = tmp_path / "exp.py"
    file.write_text("ex = experiment = None\n" + block)
    name, why = entry_point(file)
    assert name == MAIN_BLOCKS[block] and bool(why) == (name is None)
    monkeypatch.setenv(SWITCH_VARIABLE, "0")
    assert unavailable(file) == (None, f"{SWITCH_VARIABLE}=0")
    assert entry_point(REPO_ROOT / "experiments" / "train.py") == ("ex", "")
