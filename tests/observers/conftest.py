"""A real MongoDB wire-protocol server for tests: nx-27017 (SQLite underneath, no auth), run as a
subprocess on 127.0.0.1. Closer to a real server than mongomock: real sockets, real pymongo
errors when it is killed, and its data survive a restart from the same directory."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import free_port

PING_TRIES = 40  # each waits up to PING_WAIT_MS for the server: 20 s at most in all
PING_WAIT_MS = 500


class NxServer:
    """nx-27017 on one port and data directory; started, killed and started again by tests."""

    def __init__(self, directory: Path):
        self.directory, self.port = directory, free_port()
        self.url = f"mongodb://127.0.0.1:{self.port}/sacred"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the server and return once it answers a ping; RuntimeError if it does not."""
        command = [
            sys.executable,
            "-c",
            "from nx_27017.nx_27017 import main; main()",
            "--data-dir",
            str(self.directory / "data"),
            "--host",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--log-file",
            str(self.directory / "nx.log"),
            "--pid-file",
            str(self.directory / "nx.pid"),
        ]
        log = open(self.directory / "output.txt", "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.wait_for_ping()

    def wait_for_ping(self) -> None:
        import pymongo
        from pymongo.errors import PyMongoError

        client = pymongo.MongoClient(self.url, serverSelectionTimeoutMS=PING_WAIT_MS)
        try:
            for _ in range(PING_TRIES):
                if self.process.poll() is not None:
                    break
                try:
                    client.admin.command("ping")
                    return
                except PyMongoError:
                    continue  # the selection timeout is the wait between tries
        finally:
            client.close()
        self.stop()
        output = (self.directory / "output.txt").read_text(errors="replace")[-1000:]
        raise RuntimeError(f"nx-27017 did not answer a ping on port {self.port}: {output}")

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would end it."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


@pytest.fixture
def nx_server(tmp_path_factory):
    """A started nx-27017 server; skipped (with the reason) only where it cannot start."""
    pytest.importorskip("nx_27017", reason="nx-27017 is not installed (pip install -e '.[dev]')")
    server = NxServer(tmp_path_factory.mktemp("nx-27017"))
    try:
        server.start()
    except RuntimeError as error:
        pytest.skip(str(error))
    yield server
    server.stop()
