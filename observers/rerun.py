"""`reprolab rerun RUN`: run a recorded run again with its config, say what changed, verify the result.

The rerun is the recorded main file run as a subprocess with the recorded config (seed included)
as `with config.json`, recorded into the same store, with info `rerun_of` naming the original.
Before it starts, every difference between then and now (source hashes, git, packages, data,
torch/CUDA, threads, device) is printed; --strict refuses to run when there is any.
A plain rerun runs the main file of this checkout only (never a file the record points at);
--from-recorded-sources runs the store's copies of the sources instead, listing them first.
The user's own code from outside the checkout is found again in the folders the run recorded
(searched for import paths after everything else, where no other user can write) or, with
--from-recorded-sources, its recorded copies are put first on PYTHONPATH. The record's import
paths may name only such own code, not installed code, unless --trust-import-paths says so.
The rerun uses the recorded intra-op thread count.
--verify compares every metric value bit for bit and the final model's hash; exit 0 only on a
complete match.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ingredients.data import resolve_path
from ingredients.imports import (
    FROM_RECORD_VARIABLE,
    ROOTS_VARIABLE,
    looks_like_store,
    owned_folder,
    run_store_around,
)
from ingredients.seeding import THREADS_VARIABLE
from observers.attach import MONGO_URL_VARIABLE, default_store, is_mongo_url
from observers.provenance import (
    RERUN_OF_VARIABLE,
    RUN_ID_FILE_VARIABLE,
    Difference,
    data_differences,
    environment_differences,
    short,
    snapshot,
    source_differences,
    torch_state,
)
from observers.records import is_run_id
from observers.store import RecordError, RunStore, resolve_run

INSTALLED_ROOT = Path(__file__).resolve().parents[1]  # the repository this reprolab runs from


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
    if run.get("status") != "COMPLETED":  # its record is partial; `with resume=ID` continues it
        raise RecordError(
            f"run {run_id} has status {run.get('status')}, not COMPLETED, so there "
            f"is no finished run to repeat (continue it with resume={run_id})"
        )
    original = Original(
        store, run_id, run, store.config(run_id), store.info(run_id), store.sources(run_id), None
    )
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


def store_target(ref: str, store: str | None) -> str:
    """The store the rerun records into: the original's (a run directory's parent, or the store)."""
    if not is_run_id(ref):
        return str(Path(ref).resolve().parent)
    location = store or default_store()
    return location if is_mongo_url(location) else str(Path(location).resolve())


# --------------------------------------------------------------------------- the code to run


def data_path(original: Original) -> str | None:
    data = original.config.get("data")
    return data.get("path") if isinstance(data, dict) else None


@contextmanager
def code_tree(original: Original, from_recorded_sources: bool) -> Iterator[CodeTree]:
    """The checkout this reprolab runs from, or (--from-recorded-sources, and only then) the
    recorded sources materialised in a temporary directory, listed before anything runs."""
    if not from_recorded_sources:
        checkout_mainfile(original)
        yield CodeTree(INSTALLED_ROOT, Path.cwd(), recorded=False)
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
    """The folders the run imported its own code outside the checkout from (recorded in its info
    as outside_code.roots); one that lies inside a run store is refused, never searched."""
    roots = ((original.info.get("outside_code") or {}).get("roots")) or []
    if not isinstance(roots, list) or not all(
        isinstance(r, str) and os.path.isabs(r) for r in roots
    ):
        raise RecordError(
            f"run {original.run_id}'s info outside_code.roots is not a list of absolute paths"
        )
    for folder in roots:
        store = run_store_around(folder)
        if store is not None:
            raise RecordError(
                f"run {original.run_id} imported code from {folder}, inside the run "
                f"store {store}; code kept in a run store is never run"
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
    """The run's main file in this checkout (INSTALLED_ROOT). The record only names it: run.json's
    base_dir is ignored, and a name that leads out of the checkout or into a run store inside it
    is refused, so a record can never choose a file to execute."""
    return checkout_file(
        original.mainfile,
        f"run {original.run_id}'s main file",
        getattr(original.store, "root", None),
        "--from-recorded-sources runs the stored copies",
    )


def checkout_file(name, owner: str, store_root: str | os.PathLike | None, hint: str) -> Path:
    """The Python file a record names, relative to this checkout: refused (RecordError, one
    sentence: `owner` names whose file it is, `hint` what to do instead) when it leads out of the
    checkout, into a run store, or is not a .py file there. Shared by rerun and sweep --resume."""
    if not isinstance(name, str) or not name:
        raise RecordError(f"{owner} {name!r} is not a file name, so nothing was run")
    path = (INSTALLED_ROOT / name).resolve()
    if Path(name).is_absolute() or not path.is_relative_to(INSTALLED_ROOT):
        raise RecordError(
            f"{owner} {name!r} lies outside the checkout {INSTALLED_ROOT}, so it "
            f"was not run ({hint})"
        )
    if in_run_store(path, store_root):
        raise RecordError(
            f"{owner} {name!r} lies inside a run store, so it was not run "
            "(only the checkout's own code is run)"
        )
    if path.suffix != ".py" or not path.is_file():
        raise RecordError(
            f"{owner} {name} is not a Python file in the checkout {INSTALLED_ROOT} ({hint})"
        )
    return path


def in_run_store(path: Path, store_root: str | os.PathLike | None) -> bool:
    """Whether path lies in the store being read (a file store's root) or in any folder that
    looks like a run store or a run (holds _sources/, .reprolab/ or run.json) between it and the
    checkout's root."""
    if store_root is not None and path.is_relative_to(Path(store_root).resolve()):
        return True
    for folder in path.parents:
        if folder == INSTALLED_ROOT or not folder.is_relative_to(INSTALLED_ROOT):
            return False
        if looks_like_store(folder):
            return True
    return False


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
    recorded = Path(((original.info.get("data") or {}).get("fingerprint") or {}).get("path") or "")
    usable = recorded.is_file() or (recorded != Path() and recorded.is_dir())  # shards: a folder
    target = recorded if usable else resolve_path(path, root=INSTALLED_ROOT)
    if target.exists():
        link = root / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)


# --------------------------------------------------------------------------- then against now


def differences(original: Original, tree: CodeTree) -> list[Difference]:
    """Everything that differs between the recorded run and the rerun about to start."""
    found = [] if tree.recorded else source_differences(original.sources, tree.root)
    now, _ = snapshot(tree.root)
    device = original.config.get("device", "auto")
    torch_now = torch_state(str(device))
    if (threads := recorded_threads(original)) is not None:  # the rerun sets the count of then
        torch_now["num_threads"] = threads
    found += environment_differences(original.info, now, torch_now, compare_git=not tree.recorded)
    path = data_path(original)
    if path is not None:
        fingerprint = (original.info.get("data") or {}).get("fingerprint")
        found += data_differences(fingerprint, resolve_path(path, tree.cwd, tree.root))
    return found


def recorded_threads(original: Original) -> int | None:
    """The intra-op thread count the run recorded, which its rerun uses again."""
    threads = (original.info.get("determinism") or {}).get("num_threads")
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
    recorded = (original.info.get("distributed") or {}).get("world_size")
    if recorded is None and world_size is None:
        return [sys.executable]
    if world_size is not None and world_size < 1:
        raise ValueError(f"--world-size must be a positive integer, got {world_size}")
    processes = world_size or recorded
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


def searched_roots(original: Original, tree: CodeTree) -> list[str]:
    """The recorded folders of the run's own code that a plain rerun searches for its import
    paths, said before it runs; one that another user could write to is not searched."""
    if tree.recorded:
        return []  # the recorded copies go first on PYTHONPATH instead
    roots = outside_roots(original)
    for root in roots:
        print(
            f"own code outside the checkout: {root} "
            + (
                "searched again for the run's import paths"
                if owned_folder(root)
                else "not searched: it is not yours alone (another user could write there)"
            )
        )
    return [root for root in roots if owned_folder(root)]


def run_again(
    original: Original,
    tree: CodeTree,
    target: str,
    world_size: int | None = None,
    trust_import_paths: bool = False,
) -> tuple[int, int | None]:
    """Run the main file with the recorded config; return its exit code and the new run's id."""
    with tempfile.TemporaryDirectory(prefix="reprolab-rerun-") as tmp:
        config_file, id_file = Path(tmp) / "config.json", Path(tmp) / "run_id"
        config_file.write_text(json.dumps(original.config))
        python_path = [*map(str, tree.outside), str(tree.root), os.environ.get("PYTHONPATH")]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, python_path)),
            # searched for import paths after everything else: found again, never shadowing
            ROOTS_VARIABLE: os.pathsep.join(searched_roots(original, tree)),
            RERUN_OF_VARIABLE: json.dumps(
                {
                    "run_id": original.run_id,
                    "store": original.store.location,
                    "from_recorded_sources": tree.recorded,
                }
            ),
            RUN_ID_FILE_VARIABLE: str(id_file),
        }
        if not trust_import_paths:
            env[FROM_RECORD_VARIABLE] = "rerun it with --trust-import-paths to run it"
        if (threads := recorded_threads(original)) is not None:
            env[THREADS_VARIABLE] = str(threads)
        command = [*launcher(original, world_size), str(tree.root / original.mainfile)]
        if is_mongo_url(target):
            env[MONGO_URL_VARIABLE] = target  # in the environment, not in argv where ps shows it
        else:
            command += ["-R", target]
        sys.stdout.flush()
        child = subprocess.Popen([*command, "with", str(config_file)], cwd=tree.cwd, env=env)
        try:
            code = child.wait()
        except KeyboardInterrupt:  # the child got Ctrl-C too: let it record its interruption
            code = child.wait()
        return code, int(id_file.read_text()) if id_file.is_file() else None


# --------------------------------------------------------------------------- verifying


def same_bits(a, b) -> bool:
    """Equal to the last bit (NaN equals NaN, 0.0 differs from -0.0)."""
    if isinstance(a, float) or isinstance(b, float):
        try:
            return struct.pack("<d", a) == struct.pack("<d", b)
        except (struct.error, TypeError):
            return False
    return a == b


def metric_mismatch(name: str, then: dict, now: dict | None) -> str | None:
    """Where one metric's series first differs and by how much at most, or None if identical."""
    if now is None:
        return f"{name}: {len(then['values'])} values then, missing in the rerun"
    pairs_then = list(zip(then["steps"], then["values"]))
    pairs_now = list(zip(now["steps"], now["values"]))
    first = next(
        (
            i
            for i, (a, b) in enumerate(zip(pairs_then, pairs_now))
            if a[0] != b[0] or not same_bits(a[1], b[1])
        ),
        None,
    )
    if first is None and len(pairs_then) == len(pairs_now):
        return None
    gaps = [
        abs(a[1] - b[1])
        for a, b in zip(pairs_then, pairs_now)
        if a[0] == b[0] and isinstance(a[1], (int, float)) and isinstance(b[1], (int, float))
    ]
    largest = f"; largest absolute difference {max(gaps):.6g}" if gaps else ""
    if first is None:
        return (
            f"{name}: {len(pairs_then)} values then, {len(pairs_now)} now "
            f"(identical where both have one){largest}"
        )
    (step, value_then), (_, value_now) = pairs_then[first], pairs_now[first]
    return f"{name}: first differs at step {step} ({value_then!r} then, {value_now!r} now){largest}"


def verify(original: Original, new_id: int) -> int:
    """Compare the rerun with the original value by value; print the verdict; 0 only if equal."""
    store = original.store
    then, now = original.metrics or {}, store.metrics(new_id)
    lines = [
        line for name in sorted(then) if (line := metric_mismatch(name, then[name], now.get(name)))
    ]
    lines += [f"{name}: only in the rerun" for name in sorted(set(now) - set(then))]
    model_then = original.info["final_model_sha256"]
    model_now = store.info(new_id).get("final_model_sha256")
    count = sum(len(series["values"]) for series in then.values())
    if not lines:
        print(f"verify: all {count} values of {len(then)} metrics matched bit for bit")
    else:
        print(f"verify: {len(lines)} of {len(set(then) | set(now))} metrics differ")
        for line in lines:
            print(f"  {line}")
    if model_then == model_now:
        print(f"verify: final model state identical (sha256 {short(model_then)})")
    else:
        print(
            f"verify: final model state differs (sha256 {short(model_then)} then, "
            f"{short(model_now)} now)"
        )
    matched = not lines and model_then == model_now
    print(
        f"verify: {'exact match' if matched else 'MISMATCH'} between run {original.run_id} "
        f"and its rerun, run {new_id}"
    )
    return 0 if matched else 1


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
    if code != 0:
        where = f"; it is recorded as run {new_id}" if new_id is not None else ""
        print(
            f"reprolab: error: the rerun of run {run_id} exited with code {code}{where}",
            file=sys.stderr,
        )
        return 1
    if new_id is None:
        print(
            f"reprolab: error: cannot tell which run in {store.location} the rerun recorded",
            file=sys.stderr,
        )
        return 1
    print(f"rerun of run {run_id} recorded as run {new_id} in {store.location}")
    return verify(original, new_id) if args.verify else 0
