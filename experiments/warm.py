"""Warm workers: runs forked from a process that has imported torch, Sacred and the experiment.

A fresh process spends seconds importing torch and building the experiment before its first
training step. A `WarmPool` starts one server (this file run as a script) that loads the
experiment file once, imports what a run's first step would (torch._dynamo, pyarrow.parquet;
optuna for a search's trials), never runs anything, then forks one child per run. The child
becomes what a fresh `python EXPERIMENT ARGS` would be: its own session (a launcher kills it with
its whole session), the run's log as stdout and stderr, the run's environment, working folder,
argv and thread count, the experiment file as `__main__` (so the recorded sources are a fresh
run's), RNGs reseeded from the OS; then it runs the experiment's command line and exits through
Python's normal shutdown.
The server never runs an experiment, so no run's state (config caches, resolved import paths,
data caches, drawn seeds) can reach another run.

Used where it is safe and the same: Linux (fork), and an experiment file whose
`if __name__ == "__main__":` block is exactly `<experiment>.run_commandline()`. Elsewhere
launchers start fresh processes and say why; `REPROLAB_WARM_WORKERS=0` turns it off.
"""

from __future__ import annotations

import ast
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

SWITCH_VARIABLE = "REPROLAB_WARM_WORKERS"  # 0: every run starts a fresh process
READY_TIMEOUT_S = 600  # the server's imports on a busy machine; then fresh processes
POLL_S = 0.05  # how often the server looks for ended children (their exit reaches the launcher)
CLOSE_WAIT_S = 10
TRIALS = "--trials"  # the server's option: its runs are a search's trials


# ------------------------------------------------------------------------------ eligibility


def entry_point(path: Path) -> tuple[str | None, str]:
    """(name of the experiment the file's `if __name__ == "__main__":` block runs, "") when that
    block is exactly `NAME.run_commandline()`; else (None, why not), in a few words. An earlier
    main block that only installs signal handlers for the start-up (experiments/train.py's) is
    left out: a warm run has started by the time it could be signalled."""
    try:
        tree = ast.parse(path.read_text(), str(path))
    except (OSError, SyntaxError, ValueError) as error:
        return None, f"{path.name} could not be read ({type(error).__name__})"
    for node in tree.body:
        if isinstance(node, ast.If) and is_main_guard(node.test) and not starts_quietly(node):
            body = node.body
            call = body[0].value if len(body) == 1 and isinstance(body[0], ast.Expr) else None
            if (
                not node.orelse
                and isinstance(call, ast.Call)
                and not call.args
                and not call.keywords
                and isinstance(call.func, ast.Attribute)
                and call.func.attr == "run_commandline"
                and isinstance(call.func.value, ast.Name)
            ):
                return call.func.value.id, ""
            return None, f"{path.name} does more than ex.run_commandline() as a script"
    return None, f'{path.name} has no `if __name__ == "__main__":` block'


def starts_quietly(block: ast.If) -> bool:
    """Whether a main block only imports, defines functions and installs signal handlers."""

    def installs_handler(statement: ast.stmt) -> bool:
        return (
            isinstance(statement, ast.Expr)
            and isinstance(statement.value, ast.Call)
            and ast.unparse(statement.value.func) == "signal.signal"
        )

    return not block.orelse and all(
        isinstance(statement, ast.Import | ast.ImportFrom | ast.FunctionDef)
        or installs_handler(statement)
        or (
            isinstance(statement, ast.For)
            and not statement.orelse
            and all(installs_handler(inner) for inner in statement.body)
        )
        for statement in block.body
    )


def is_main_guard(test: ast.expr) -> bool:
    """`__name__ == "__main__"` (either way round)."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    texts = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return isinstance(test.ops[0], ast.Eq) and len(names) == 1 and len(texts) == 1


def unavailable(experiment: Path) -> tuple[str | None, str]:
    """(experiment name, "") when runs of this file can start warm here, else (None, why not)."""
    if os.environ.get(SWITCH_VARIABLE, "1").strip().lower() in ("0", "false", "no", "off"):
        return None, f"{SWITCH_VARIABLE}=0"
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return None, f"no safe fork on {sys.platform}"
    return entry_point(experiment)


# ------------------------------------------------------------------------------ the launcher's side


class WarmPoolGone(RuntimeError):
    """The server ended or refused a run; the launcher starts fresh processes from now on."""


class WarmProcess:
    """A run forked by the server, with the parts of `subprocess.Popen` a launcher uses."""

    def __init__(self, pool: WarmPool, pid: int):
        self.pool, self.pid = pool, pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.pool.collect(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"run {self.pid}", timeout or 0)
            self.pool.collect(0.2 if left is None else min(left, 0.2))
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:  # never a signal to a pid that may have been reused
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass


class WarmPool:
    """The launcher's handle on one server: starts runs in it and learns how they ended."""

    def __init__(self, server: subprocess.Popen, experiment: Path, log: Path):
        self.server, self.experiment, self.log = server, experiment, log
        self.buffer = b""
        self.ready = False
        self.started: list[int] = []
        self.running: dict[int, WarmProcess] = {}
        self.problem: str | None = None
        assert server.stdout is not None
        os.set_blocking(server.stdout.fileno(), False)

    @classmethod
    def open(
        cls, experiment: Path, env: dict[str, str], log: Path, trials: bool = False
    ) -> WarmPool:
        """Start the server for experiment, with the environment its runs share (threads, store);
        its own messages go to log. For a search's `trials` it also imports optuna (a trial opens
        its study before its first step). It is ready once `wait_ready` says so."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            server = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    str(experiment),
                    *([TRIALS] if trials else []),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=out,
                env=env,
                start_new_session=True,  # a terminal's Ctrl-C reaches the launcher, not the server
            )
        return cls(server, experiment, log)

    def wait_ready(
        self, stop: Callable[[], bool] = lambda: False, timeout: float = READY_TIMEOUT_S
    ) -> None:
        """Block until the server has loaded everything (WarmPoolGone if it failed or `stop()`)."""
        deadline = time.monotonic() + timeout
        while not self.ready:
            why = self.problem or ("stopped before the warm workers were ready" if stop() else None)
            if why is None and time.monotonic() > deadline:
                why = f"the warm workers were not ready within {timeout:.0f} s"
            if why is not None:
                self.close()
                raise WarmPoolGone(why)
            self.collect(0.2)

    def start(
        self, argv: list[str], env: dict[str, str], log: Path, threads: int | None
    ) -> WarmProcess:
        """Fork one run: argv is the experiment's own command line (argv[0] its file)."""
        if self.problem is not None:
            raise WarmPoolGone(self.problem)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_bytes(b"")  # as a fresh run's log, even if the fork fails
        request = {"argv": argv, "env": env, "log": str(log), "cwd": os.getcwd()}
        request["threads"] = threads
        try:
            assert self.server.stdin is not None
            self.server.stdin.write(json.dumps(request).encode() + b"\n")
            self.server.stdin.flush()
        except OSError:
            self.gone("the warm-worker server ended")
        while not self.started:
            if self.problem is not None:
                raise WarmPoolGone(self.problem)
            self.collect(0.2)
        process = WarmProcess(self, self.started.pop(0))
        self.running[process.pid] = process
        return process

    def collect(self, timeout: float) -> None:
        """Read what the server said within timeout: readiness, started runs, ended runs."""
        out = self.server.stdout
        assert out is not None
        if self.problem is None:
            readable, _, _ = select.select([out], [], [], timeout)
            chunk = os.read(out.fileno(), 65536) if readable else None
            if chunk == b"":
                self.gone("the warm-worker server ended")
            elif chunk:
                self.buffer += chunk
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.heard(line.decode(errors="replace").split())
        if self.problem is not None:
            self.orphans()

    def heard(self, words: list[str]) -> None:
        if words == ["ready"]:
            self.ready = True
        elif words[:1] == ["started"]:
            self.started.append(int(words[1]))
        elif words[:1] == ["exited"]:
            process = self.running.pop(int(words[1]), None)
            if process is not None:
                process.returncode = int(words[2])
        elif words[:1] == ["refused"]:
            self.gone(" ".join(words[1:]))

    def gone(self, why: str) -> None:
        self.problem = self.problem or f"{why} (see {self.log})"

    def orphans(self) -> None:
        """Runs of a server that ended: alive until their pid is gone; how they ended is not
        known here (their records say it), so they count as failed."""
        for pid, process in list(self.running.items()):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                process.returncode = 1
                del self.running[pid]

    def close(self) -> None:
        """End the server (its runs, if any, go on in their own sessions)."""
        if self.server.stdin is not None and not self.server.stdin.closed:
            try:
                self.server.stdin.close()
            except OSError:
                pass
        try:
            self.server.wait(timeout=CLOSE_WAIT_S)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()
        if self.server.stdout is not None:
            self.server.stdout.close()


# ------------------------------------------------------------------------------ the server's side
# Run as a script, so that sys.path is what `python EXPERIMENT` gives and this module is not
# among the run's sources (the experiment file takes `__main__`'s place in each child).


def load(experiment: str):
    """The experiment file executed once as a module, under a name that skips its main block."""
    import importlib.util

    sys.path[0] = os.path.dirname(experiment)  # as `python EXPERIMENT` sets it
    spec = importlib.util.spec_from_file_location("__mp_main__", experiment)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {experiment}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["__mp_main__"] = module
    spec.loader.exec_module(module)
    return module


def preload(trials: bool) -> None:
    """Import what a run would import at its first data read and optimizer step, and a trial
    when it opens its study. After the experiment, so Sacred's dependency discovery (at import)
    sees what a fresh run's does."""
    if trials:
        try:
            import optuna  # noqa: F401
        except ImportError:
            pass
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        pass
    try:
        import torch._dynamo  # noqa: F401  (torch.optim imports it, and sympy, at the first step)
    except ImportError:
        pass


# Signals held from before a fork until the child has a fresh process's handlers: a stop sent to
# a child as it is born would otherwise land in Python's at-fork hooks, which swallow it.
HELD_OVER_FORK = {signal.SIGINT, signal.SIGTERM}


def say(text: str) -> None:
    os.write(1, text.encode() + b"\n")


def serve(experiment: str, trials: bool) -> None:
    """Load the experiment, say ready, then fork a run per request line until stdin ends."""
    name, why = entry_point(Path(experiment))
    module = load(experiment)
    preload(trials)
    import threading

    if name is None or not hasattr(module.__dict__.get(name), "run_commandline"):
        say(f"refused {why or 'no experiment named in the main block'}")
        return
    if threading.active_count() != 1:  # forking a process with threads can deadlock the child
        say("refused the experiment started threads when it was imported")
        return
    say("ready")
    buffer = b""
    while True:
        reap()
        readable, _, _ = select.select([0], [], [], POLL_S)
        if not readable:
            continue
        chunk = os.read(0, 65536)
        if not chunk:
            return  # the launcher is gone or done
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            request = json.loads(line)
            sys.stdout.flush()
            sys.stderr.flush()
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_OVER_FORK)
            pid = os.fork()
            if pid == 0:
                become(request, module, name, mask)  # never returns here: the child exits
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            say(f"started {pid}")


def reap() -> None:
    """Tell the launcher how each ended child ended, as Popen.returncode would."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        say(f"exited {pid} {os.waitstatus_to_exitcode(status)}")


def become(request: dict, module, name: str, mask: set) -> None:
    """In the forked child: turn into the fresh process the run would have had, and run it;
    `mask`: the signal mask the server had before the fork. The end is `SystemExit` (or the
    run's own exception) unwinding to the interpreter, so Python's shutdown (non-daemon threads,
    atexit) is a fresh process's."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as Python starts
    for signum in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a stop sent meanwhile arrives now
    fresh_numerics(request.get("threads"))  # its threads start with a fresh process's mask
    sys.argv = list(request["argv"])
    module.__name__ = "__main__"
    sys.modules["__main__"] = module  # this file leaves the modules a run records
    del sys.modules["__mp_main__"]
    getattr(module, name).run_commandline()
    raise SystemExit(0)


def fresh_numerics(threads: int | None) -> None:
    """Thread count set before any parallel op (the server never ran one), and the RNGs a
    fresh process would seed from the OS (python's is reseeded at fork already)."""
    import random

    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()
    torch = sys.modules.get("torch")
    if torch is not None and threads:
        torch.set_num_threads(int(threads))


if __name__ == "__main__":
    serve(sys.argv[1], TRIALS in sys.argv[2:])
