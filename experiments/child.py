"""One child run, as every launcher (rerun, local sweeps, Slurm sweeps, printed commands) starts it.

A `ChildRun` turns the experiment file, the store, the config words, the sweep membership and
the thread count into argv and environment in this one place: a MongoDB URL travels in the
environment (never argv, which `ps` and job scripts show), a folder store as `-R PATH`.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ingredients.checkout import CHECKOUT_ROOT, in_run_store
from ingredients.seeding import THREADS_VARIABLE
from observers.location import StoreLocation
from observers.provenance import RUN_ID_FILE_VARIABLE
from observers.records import RecordError


@dataclass(frozen=True)
class ChildRun:
    """What a launcher starts: `[*launcher, experiment, -R store, --sweep ID:INDEX [--trial], with,
    *words]`."""

    experiment: Path
    store: StoreLocation
    words: tuple[str, ...]  # after `with`: named configs, key=value updates, a config file
    sweep: tuple[str, int] | None = None  # (sweep id, config index)
    threads: int | None = None  # torch's intra-op threads (and OpenMP's, MKL's)
    run_id_file: Path | None = None  # where the child writes the id of the run it records
    launcher: tuple[str, ...] = (sys.executable,)  # python, or torchrun for a distributed run
    extra_env: Mapping[str, str] = field(default_factory=dict)
    trial: bool = False  # the run is trial number `sweep[1]` of the search `sweep[0]`

    def script_argv(self) -> list[str]:
        """The experiment's own command line (argv[0] is the experiment file)."""
        argv = [str(self.experiment), *self.store.child_argv()]
        if self.sweep is not None:
            argv += ["--sweep", f"{self.sweep[0]}:{self.sweep[1]}"]
            argv += ["--trial"] if self.trial else []
        return [*argv, "with", *self.words] if self.words else argv

    def argv(self) -> list[str]:
        return [*self.launcher, *self.script_argv()]

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The child's environment: `base` (default os.environ) plus the store, threads and
        run-id file."""
        env = {**(os.environ if base is None else base), **self.store.child_env()}
        if self.threads is not None:
            threads = str(self.threads)
            env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
            env[THREADS_VARIABLE] = threads
        if self.run_id_file is not None:
            env[RUN_ID_FILE_VARIABLE] = str(self.run_id_file)
        return {**env, **self.extra_env}


def checkout_file(
    name: object, owner: str, store_root: str | os.PathLike | None, hint: str
) -> Path:
    """The Python file a record names, relative to this checkout: refused (RecordError, one
    sentence: `owner` names whose file it is, `hint` what to do instead) when it leads out of the
    checkout, into a run store, or is not a .py file there. Shared by rerun and sweep --resume."""
    if not isinstance(name, str) or not name:
        raise RecordError(f"{owner} {name!r} is not a file name, so nothing was run")
    path = (CHECKOUT_ROOT / name).resolve()
    if Path(name).is_absolute() or not path.is_relative_to(CHECKOUT_ROOT):
        raise RecordError(
            f"{owner} {name!r} lies outside the checkout {CHECKOUT_ROOT}, so it "
            f"was not run ({hint})"
        )
    if in_run_store(path, store_root, CHECKOUT_ROOT):
        raise RecordError(
            f"{owner} {name!r} lies inside a run store, so it was not run "
            "(only the checkout's own code is run)"
        )
    if path.suffix != ".py" or not path.is_file():
        raise RecordError(
            f"{owner} {name} is not a Python file in the checkout {CHECKOUT_ROOT} ({hint})"
        )
    if not defines_experiment(path):
        raise RecordError(
            f"{owner} {name} is a file of the checkout that defines no experiment (no "
            "module-level Experiment and no automain or run_commandline), so it was not run"
        )
    return path


MAX_THREADS = 256  # torch threads one run is given (Arrow and OpenMP refuse many thousands)
PROCESSES_PER_CORE = 4  # runs or ranks a launcher starts at once here: more only wait for a core


def process_bound() -> int:
    """The most processes one launcher starts at once on this machine."""
    return PROCESSES_PER_CORE * (os.cpu_count() or 1)


def wait_passing_on_stops(process: subprocess.Popen) -> int:
    """Wait for a child run, passing a SIGTERM sent to this launcher on to it (Ctrl-C reaches
    the whole process group already): a killed launcher left the run, or torchrun and its
    ranks, running with no one to wait for them."""
    previous = signal.signal(signal.SIGTERM, lambda *_: process.send_signal(signal.SIGTERM))
    try:
        while True:
            try:
                return process.wait()
            except KeyboardInterrupt:  # the child got Ctrl-C too: let it record its interruption
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)


EXPERIMENT_CLASSES = frozenset({"Experiment", "ReproExperiment"})
MAX_EXPERIMENT_BYTES = 4 * 2**20  # an experiment file is source code, not data


def defines_experiment(path: Path) -> bool:
    """Whether a Python file defines a Sacred experiment, read with `ast` (never imported): a
    module-level `NAME = Experiment(...)` or `ReproExperiment(...)` (or NAME imported from a
    checkout module that assigns it so), and `@NAME.automain` or a module-level
    `NAME.run_commandline()` (also under `if __name__ == "__main__":`)."""
    tree = _parsed(path)
    if tree is None:
        return False
    names = _experiment_names(tree)
    for node in _top_level(tree.body):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            module = _parsed(CHECKOUT_ROOT / (node.module.replace(".", "/") + ".py"))
            defined = _experiment_names(module) if module is not None else set()
            names |= {a.asname or a.name for a in node.names if a.name in defined}
    return any(_runs(node, names) for node in _top_level(tree.body))


def _parsed(path: Path) -> ast.Module | None:
    """A Python file's syntax tree (never run), or None: missing, too large, not Python."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_EXPERIMENT_BYTES:
            return None
        return ast.parse(path.read_bytes(), str(path))
    except (OSError, SyntaxError, ValueError):
        return None


def _experiment_names(tree: ast.Module) -> set[str]:
    """Names a module binds at its top level to `Experiment(...)` or `ReproExperiment(...)`."""
    return {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign) and _experiment_call(node.value)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def _experiment_call(value: ast.expr) -> bool:
    """Whether an expression is a call of Experiment or ReproExperiment (plain or dotted name)."""
    if not isinstance(value, ast.Call):
        return False
    called = value.func
    name = called.id if isinstance(called, ast.Name) else getattr(called, "attr", None)
    return name in EXPERIMENT_CLASSES


def _top_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """Module-level statements, those under a top-level `if` (the __main__ guard) included."""
    found = []
    for node in body:
        found.append(node)
        if isinstance(node, ast.If):
            found += _top_level(node.body) + _top_level(node.orelse)
    return found


def _runs(node: ast.stmt, names: set[str]) -> bool:
    """Whether a statement is `@NAME.automain` on a function or `NAME.run_commandline(...)`."""

    def on_experiment(expr: ast.expr, attr: str) -> bool:
        return (
            isinstance(expr, ast.Attribute)
            and expr.attr == attr
            and isinstance(expr.value, ast.Name)
            and expr.value.id in names
        )

    if isinstance(node, ast.FunctionDef):
        return any(on_experiment(d, "automain") for d in node.decorator_list)
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and on_experiment(node.value.func, "run_commandline")
    )
