"""`reprolab rerun RUN`: run a recorded run again with its config, say what changed, verify the result.

The rerun is the recorded main file run as a subprocess with the recorded config (seed included)
as `with config.json`, recorded into the same store, with info `rerun_of` naming the original.
Before it starts, every difference between then and now (source hashes, git, packages, data,
torch/CUDA, threads, device) is printed; --strict refuses to run when there is any.
A record is compared, never followed: a plain rerun runs the experiment file of this checkout
that the record names (one that defines an experiment, checked without importing it), and the
user's own code outside the checkout is found the way the user's Python finds it now (working
directory, PYTHONPATH, installed packages) and compared with the recorded copies by hash
(experiments/outside_code.py). --from-recorded-sources runs the store's copies instead, written
to a fresh temporary folder and listed first. The record's import paths may name only the user's
own code, not installed code, unless --trust-import-paths says so.
The rerun uses the recorded intra-op thread count.
--verify compares every metric value bit for bit and the final model's hash; exit 0 only on a
complete match.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from experiments.child import (
    PROCESSES_PER_CORE,
    ChildRun,
    checkout_file,
    process_bound,
    wait_passing_on_stops,
)
from experiments.outside_code import outside_differences
from experiments.trial import PRUNED_AT_VARIABLE
from ingredients.checkout import CHECKOUT_ROOT, resolve_path
from ingredients.imports import FROM_RECORD_VARIABLE
from ingredients.schema import TEXT, is_int, shown
from observers.exit_codes import ExitCode
from observers.location import StoreLocation
from observers.provenance import (
    RERUN_OF_VARIABLE,
    Difference,
    data_differences,
    environment_differences,
    snapshot,
    source_differences,
    torch_state,
)
from observers.records import dig, is_run_id
from observers.store import RecordError, RunStore, resolve_run
from observers.verify import compare_rerun


@dataclass
class Original:
    """What the store recorded about the run to repeat."""

    store: RunStore
    run_id: int
    run: dict
    config: dict
    info: dict
    sources: dict[str, bytes]
    metrics: dict | None  # only read for --verify

    @property
    def mainfile(self) -> str:
        return self.run["experiment"]["mainfile"]


@dataclass
class CodeTree:
    """Where the rerun's code lives and the directory it runs in."""

    root: Path
    cwd: Path
    recorded: bool  # the store's copies of the sources, not a working tree
    outside: list[Path] = field(default_factory=list)  # recorded code from outside the checkout


# --------------------------------------------------------------------------- reading


def read_original(store: RunStore, run_id: int, verify: bool) -> Original:
    """Read every record the rerun needs before anything runs; a gap is one RecordError."""
    run = store.run(run_id)
    experiment = run.get("experiment") if isinstance(run, dict) else None
    if not isinstance(experiment, dict) or not isinstance(experiment.get("mainfile"), str):
        raise RecordError(f"run {run_id}'s run.json does not name the experiment's main file")
    if run.get("status") == "PRUNED":  # a search's trial: repeated up to the epoch it stopped
        return read_pruned(store, run_id, run, verify)
    if run.get("status") != "COMPLETED":  # its record is partial; `with resume=ID` continues it
        raise RecordError(
            f"run {run_id} has status {run.get('status')}, not COMPLETED, so there "
            f"is no finished run to repeat (continue it with resume={run_id})"
        )
    return with_verification(
        Original(
            store,
            run_id,
            run,
            store.config(run_id),
            store.info(run_id),
            store.sources(run_id),
            None,
        ),
        verify,
    )


def read_pruned(store: RunStore, run_id: int, run: dict, verify: bool) -> Original:
    """A pruned trial as an original: its rerun stops after the same epoch (pruned_at)."""
    original = Original(
        store, run_id, run, store.config(run_id), store.info(run_id), store.sources(run_id), None
    )
    epoch = (original.info.get("pruned") or {}).get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
        raise RecordError(f"run {run_id} is PRUNED but its info does not say after which epoch")
    return with_verification(original, verify)


def with_verification(original: Original, verify: bool) -> Original:
    """The original, checked to have a seed, its resume pinned to this store, with its metrics
    read for --verify (RecordError if it has nothing to compare)."""
    store, run_id = original.store, original.run_id
    if original.config.get("seed") is None:  # Sacred would draw a new one: another run
        raise RecordError(
            f"run {run_id}'s config.json records no seed, so a rerun would draw a new one "
            "and could not repeat the run; nothing was run"
        )
    original.config = resume_in_store(original)
    if verify:
        if not original.info.get("final_model_sha256"):
            raise RecordError(
                f"run {run_id} recorded no final_model_sha256 in its info, "
                "so --verify has nothing to compare the final model against"
            )
        original.metrics = store.metrics(run_id)
        if not original.metrics:
            raise RecordError(
                f"run {run_id} recorded no metrics, so --verify has nothing to compare"
            )
    return original


def resume_in_store(original: Original) -> dict:
    """The config with its recorded `resume` pinned to a run id of the store being rerun: a path
    counts only when it names a run folder directly in that store (taken from the current
    directory), so a record cannot make the rerun read a checkpoint from anywhere else."""
    value = original.config.get("resume")
    if value is None or is_int(value) or (isinstance(value, str) and is_run_id(value)):
        return original.config  # an id: the child looks it up in this same store
    root = getattr(original.store, "root", None)
    try:
        path = Path(value).resolve() if isinstance(value, str) and root is not None else None
    except (OSError, ValueError):  # a name no folder can hold
        path = None
    if path is None or path.parent != Path(root).resolve() or not is_run_id(path.name):
        raise RecordError(
            f"run {original.run_id}'s config.json sets resume to {shown(value)}, which is not "
            f"a run of the store {original.store.location} being rerun, so it was not followed"
        )
    return {**original.config, "resume": int(path.name)}


def store_target(ref: str, store: str | None) -> StoreLocation:
    """The store the rerun records into: the original's (a run directory's parent, or the store)."""
    if not is_run_id(ref):
        return StoreLocation(str(Path(ref).resolve().parent))
    return StoreLocation.parse(store).resolved()


# --------------------------------------------------------------------------- the code to run


def data_path(original: Original) -> str | None:
    """The recorded data.path when it is text (any other value is the config check's to refuse
    when the rerun starts, in one sentence)."""
    data = original.config.get("data")
    path = data.get("path") if isinstance(data, dict) else None
    return path if TEXT.accepts(path) else None


@contextmanager
def code_tree(original: Original, from_recorded_sources: bool) -> Iterator[CodeTree]:
    """The checkout this reprolab runs from, or (--from-recorded-sources, and only then) the
    recorded sources materialised in a temporary directory, listed before anything runs."""
    if not from_recorded_sources:
        mainfile = checkout_mainfile(original)
        print(
            f"running {mainfile}, the checkout's experiment file that run {original.run_id} names"
        )
        yield CodeTree(CHECKOUT_ROOT, Path.cwd(), recorded=False)
        return
    if original.mainfile not in original.sources:
        raise RecordError(
            f"run {original.run_id}'s main file {original.mainfile} is not among "
            "its recorded sources"
        )
    with tempfile.TemporaryDirectory(prefix="reprolab-rerun-") as tmp:
        root = Path(tmp).resolve()
        outside = materialise_outside(original, root / "_outside")
        for name, data in original.sources.items():
            if Path(name).is_absolute():  # from outside the checkout: written above
                continue
            path = (root / name).resolve()
            if not path.is_relative_to(root):
                raise RecordError(
                    f"run {original.run_id}'s recorded source {name!r} lies outside the source tree"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        link_data_file(original, root)
        list_recorded_sources(original)
        yield CodeTree(root, root, recorded=True, outside=outside)


def outside_roots(original: Original) -> list[str]:
    """The folders the run imported its own code outside the checkout from (its info's
    outside_code.roots): only the layout of --from-recorded-sources' temporary folder, never
    searched or read."""
    outside = original.info.get("outside_code")
    roots = (outside.get("roots") if isinstance(outside, dict) else None) or []
    if not isinstance(roots, list) or not all(
        isinstance(r, str) and os.path.isabs(r) for r in roots
    ):
        raise RecordError(
            f"run {original.run_id}'s info outside_code.roots is not a list of absolute paths"
        )
    return roots


def materialise_outside(original: Original, under: Path) -> list[Path]:
    """Write the recorded sources from outside the checkout (recorded by absolute path) below
    `under`, one folder per folder they were imported from, laid out as they were imported;
    return those folders, which go first on the rerun's PYTHONPATH."""
    roots, folders = outside_roots(original), []
    for name, data in sorted(original.sources.items()):
        if not Path(name).is_absolute():
            continue
        homes = [r for r in roots if Path(name).is_relative_to(r)]
        if not homes:
            raise RecordError(
                f"run {original.run_id}'s recorded source {name} lies in none of the "
                "folders its info says it imported code from"
            )
        home = max(homes, key=len)
        folder = (under / str(roots.index(home))).resolve()
        path = (folder / Path(name).relative_to(home)).resolve()
        if not path.is_relative_to(folder):
            raise RecordError(
                f"run {original.run_id}'s recorded source {name!r} lies outside "
                f"the folder {home} it was imported from"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        folders += [folder] if folder not in folders else []
    return folders


def checkout_mainfile(original: Original) -> Path:
    """The run's main file in this checkout (CHECKOUT_ROOT). The record only names it: run.json's
    base_dir is ignored, and a name that leads out of the checkout or into a run store inside it
    is refused, so a record can never choose a file to execute."""
    return checkout_file(
        original.mainfile,
        f"run {original.run_id}'s main file",
        getattr(original.store, "root", None),
        "--from-recorded-sources runs the stored copies",
    )


def list_recorded_sources(original: Original) -> None:
    """Say which stored files --from-recorded-sources is about to run, before running them."""
    print(
        f"--from-recorded-sources: running these {len(original.sources)} files stored with run "
        f"{original.run_id} in {original.store.location}:"
    )
    for name in sorted(original.sources):
        print(f"  {name}")


def link_data_file(original: Original, root: Path) -> None:
    """Make a relative data path found in the materialised tree: a link to the recorded file."""
    path = data_path(original)
    if not path or Path(path).expanduser().is_absolute():
        return
    recorded_path = dig(original.info, "data", "fingerprint", "path")
    recorded = Path(recorded_path if isinstance(recorded_path, str) else "")
    usable = recorded.is_file() or (recorded != Path() and recorded.is_dir())  # shards: a folder
    target = recorded if usable else resolve_path(path, root=CHECKOUT_ROOT)
    if target.exists():
        link = root / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)


# --------------------------------------------------------------------------- then against now


def differences(original: Original, tree: CodeTree) -> list[Difference]:
    """Everything that differs between the recorded run and the rerun about to start."""
    found = []
    if not tree.recorded:
        found += source_differences(original.sources, tree.root)
        found += outside_differences(original.sources, original.info, tree.cwd)
    now, _ = snapshot(tree.root)
    device = original.config.get("device", "auto")
    torch_now = torch_state(str(device))
    if (threads := recorded_threads(original)) is not None:  # the rerun sets the count of then
        torch_now["num_threads"] = threads
    found += environment_differences(original.info, now, torch_now, compare_git=not tree.recorded)
    path = data_path(original)
    if path is not None:
        fingerprint = dig(original.info, "data", "fingerprint")
        fingerprint = fingerprint if isinstance(fingerprint, dict) else None
        try:
            path_now = resolve_path(path, tree.cwd, tree.root)
        except OSError:  # a name too long: not found (the run's own check says why)
            path_now = None
        found += data_differences(fingerprint, path_now)
    return found


def recorded_threads(original: Original) -> int | None:
    """The intra-op thread count the run recorded, which its rerun uses again."""
    threads = dig(original.info, "determinism", "num_threads")
    return (
        threads
        if isinstance(threads, int) and not isinstance(threads, bool) and threads > 0
        else None
    )


def report_differences(original: Original, tree: CodeTree, found: list[Difference]) -> None:
    code = (
        f"its {len(original.sources)} recorded source files"
        if tree.recorded
        else f"the code in {tree.root}"
    )
    print(
        f"rerun of run {original.run_id} ({original.store.location}): {original.mainfile} from "
        f"{code}, seed {original.config.get('seed')}"
    )
    outside = sorted(name for name in original.sources if Path(name).is_absolute())
    if outside:
        where = "recorded copies of " if tree.recorded else ""
        print(f"code outside the checkout: {where}{', '.join(outside)}")
    if not found:
        print("then vs now: no differences (sources, git, packages, data, torch/CUDA, device)")
        return
    print(f"then vs now: {len(found)} difference{'s' if len(found) != 1 else ''}")
    for difference in found:
        print(f"  {difference}")


# --------------------------------------------------------------------------- running


def launcher(original: Original, world_size: int | None) -> list[str]:
    """How the rerun starts: python, or torchrun (on this machine, with the recorded world size
    unless another is asked for) for a run recorded under torchrun."""
    recorded = dig(original.info, "distributed", "world_size")
    if recorded is not None and (type(recorded) is not int or recorded < 1):
        raise RecordError(f"run {original.run_id}'s info distributed.world_size is not a count")
    if recorded is None and world_size is None:
        return [sys.executable]
    if world_size is not None and world_size < 1:
        raise ValueError(f"--world-size must be a positive integer, got {world_size}")
    processes = world_size or recorded
    if processes > process_bound():  # a record's count decides no more processes than this
        raise ValueError(
            f"run {original.run_id} would start {processes} processes here, more than the "
            f"{process_bound()} this machine's {os.cpu_count()} cores hold "
            f"({PROCESSES_PER_CORE} a core); rerun it on a larger machine"
        )
    if recorded is not None and processes != recorded:
        print(
            f"world size {processes} asked for, run {original.run_id} ran with {recorded}: "
            "the sample order and reductions differ, so the values are not expected to match"
        )
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
    ]


def run_again(
    original: Original,
    tree: CodeTree,
    target: StoreLocation,
    world_size: int | None = None,
    trust_import_paths: bool = False,
) -> tuple[int, int | None]:
    """Run the main file with the recorded config; return its exit code and the new run's id."""
    with tempfile.TemporaryDirectory(prefix="reprolab-rerun-") as tmp:
        config_file, id_file = Path(tmp) / "config.json", Path(tmp) / "run_id"
        config_file.write_text(json.dumps(original.config))
        python_path = [*map(str, tree.outside), str(tree.root), os.environ.get("PYTHONPATH")]
        env = {
            "PYTHONPATH": os.pathsep.join(filter(None, python_path)),
            RERUN_OF_VARIABLE: json.dumps(
                {
                    "run_id": original.run_id,
                    "store": original.store.location,
                    "from_recorded_sources": tree.recorded,
                }
            ),
        }
        pruned = original.info.get("pruned") if original.run.get("status") == "PRUNED" else None
        if pruned:  # the pruner's decision replayed: stop after the same epoch, as PRUNED
            env[PRUNED_AT_VARIABLE] = str(pruned["epoch"])
        if not trust_import_paths:
            env[FROM_RECORD_VARIABLE] = "rerun it with --trust-import-paths to run it"
        child = ChildRun(
            experiment=tree.root / original.mainfile,
            store=target,
            words=(str(config_file),),
            threads=recorded_threads(original),
            run_id_file=id_file,
            launcher=tuple(launcher(original, world_size)),
            extra_env=env,
        )
        sys.stdout.flush()
        process = subprocess.Popen(child.argv(), cwd=tree.cwd, env=child.env())
        code = wait_passing_on_stops(process)
        return code, int(id_file.read_text()) if id_file.is_file() else None


# --------------------------------------------------------------------------- the command


def rerun_command(args) -> int:
    """`reprolab rerun RUN [--store S] [--verify] [--strict] [--from-recorded-sources]`."""
    store, run_id = resolve_run(args.run, args.store)
    original = read_original(store, run_id, args.verify)
    target = store_target(args.run, args.store)
    with code_tree(original, args.from_recorded_sources) as tree:
        found = differences(original, tree)
        report_differences(original, tree, found)
        if args.strict and found:
            raise ValueError(
                f"--strict: not rerunning run {run_id} because {len(found)} thing"
                f"{'s differ' if len(found) != 1 else ' differs'} between then and now "
                f"({', '.join(d.what for d in found[:5])}{', ...' if len(found) > 5 else ''})"
            )
        code, new_id = run_again(
            original,
            tree,
            target,
            getattr(args, "world_size", None),
            getattr(args, "trust_import_paths", False),
        )
    if code != ExitCode.OK:
        where = f"; it is recorded as run {new_id}" if new_id is not None else ""
        print(
            f"reprolab: error: the rerun of run {run_id} exited with code {code}{where}",
            file=sys.stderr,
        )
        return ExitCode.FAILED
    if new_id is None:
        print(
            f"reprolab: error: cannot tell which run in {store.location} the rerun recorded",
            file=sys.stderr,
        )
        return ExitCode.FAILED
    print(f"rerun of run {run_id} recorded as run {new_id} in {store.location}")
    return verify(original, new_id) if args.verify else ExitCode.OK


def verify(original: Original, new_id: int) -> ExitCode:
    """Compare the rerun with the original value by value; print the verdict; OK only if equal."""
    matched = compare_rerun(
        original.store, original.run_id, original.metrics or {}, original.info, new_id
    )
    return ExitCode.OK if matched else ExitCode.FAILED
