"""The reproduction record: what a run ran with, recorded when it starts and compared on rerun.

A run's info gets `provenance` (python, platform, every installed package with its version, the
git commit and, when the work tree is dirty, the diff itself as the artifact git.diff). The
data fingerprint, determinism switches, torch/CUDA/cuDNN versions, threads and device are
recorded by the experiment beside it. `differences` compares all of that, then against now.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ingredients.checkout import looks_like_store
from observers.records import RecordError, read_regular

RERUN_OF_VARIABLE = "REPROLAB_RERUN_OF"  # JSON {"run_id", "store", ...}: set by `reprolab rerun`
RUN_ID_FILE_VARIABLE = "REPROLAB_RUN_ID_FILE"  # where a rerun's child writes its new run id
DIFF_ARTIFACT = "git.diff"


@dataclass(frozen=True)
class Difference:
    """One thing that is not the same now as when the run was recorded."""

    what: str
    then: object
    now: object

    def __str__(self) -> str:
        return f"{self.what}: {self.then} then, {self.now} now"


# --------------------------------------------------------------------------- recording


def installed_packages() -> dict[str, str]:
    """Every installed distribution (the one import would find first) with its version."""
    packages: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name, version = name_and_version(dist)
        name = name.lower().replace("_", "-")
        if name and name not in packages:
            packages[name] = version
    return dict(sorted(packages.items()))


def name_and_version(dist: importlib.metadata.Distribution) -> tuple[str, str]:
    """A distribution's Name and Version from its metadata's first header lines: `dist.metadata`
    parses every header of every package with the email parser (over 1 s for 300 packages on a
    busy machine, paid by every run's start)."""
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the headers end at the first blank line
        key, _, value = line.partition(":")
        if key in ("Name", "Version"):
            fields.setdefault(key, value.strip())
    return fields.get("Name", ""), fields.get("Version", "")


def git(root: Path, *args: str) -> str | None:
    """Output of a read-only git command in root as text, or None when git or the repository is absent."""
    output = git_bytes(root, *args)
    return output.decode("utf-8", "replace") if output is not None else None


def git_bytes(root: Path, *args: str) -> bytes | None:
    """Raw output of a read-only git command in root, or None when git or the repository is absent."""
    try:
        result = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            timeout=30,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},  # never touch the index
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def git_state(root: Path) -> tuple[dict, bytes]:
    """The commit, whether tracked files differ from it, and that diff (raw bytes, b'' when clean)."""
    commit = git(root, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "diff_sha256": None, "untracked": []}, b""
    diff = git_bytes(root, "diff", "HEAD", "--binary") or b""  # bytes: a diff need not be UTF-8
    untracked = outside_stores(
        root, (git(root, "ls-files", "--others", "--exclude-standard") or "").split()
    )
    return {
        "commit": commit.strip(),
        "dirty": bool(diff),
        "diff_sha256": hashlib.sha256(diff).hexdigest() if diff else None,
        "untracked": untracked,
    }, diff


def outside_stores(root: Path, files: list[str]) -> list[str]:
    """The untracked files that are not inside a run store: a store in the checkout holds the
    project's output, not its code, and would otherwise be listed in every later run."""
    verdicts: dict[str, bool] = {}

    def in_store(file: str) -> bool:
        parents = Path(file).parts[:-1]
        for depth in range(1, len(parents) + 1):
            folder = "/".join(parents[:depth])
            if folder not in verdicts:
                verdicts[folder] = looks_like_store(root / folder)
            if verdicts[folder]:
                return True
        return False

    return [file for file in files if not in_store(file)]


def snapshot(root: Path) -> tuple[dict, bytes]:
    """The environment as it is now, plus the git diff's bytes."""
    git_record, diff = git_state(root)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": installed_packages(),
        "git": git_record,
    }, diff


def record_provenance(run) -> None:
    """Record the environment in the run's info and the git diff as an artifact (at run start)."""
    record, diff = snapshot(Path(run.experiment_info["base_dir"]))
    run.info["provenance"] = record
    if diff:
        with tempfile.TemporaryDirectory(prefix="reprolab-") as tmp:
            path = Path(tmp) / DIFF_ARTIFACT
            path.write_bytes(diff)
            run.add_artifact(str(path), name=DIFF_ARTIFACT)
    if os.environ.get(RERUN_OF_VARIABLE):
        run.info["rerun_of"] = json.loads(os.environ[RERUN_OF_VARIABLE])
    if os.environ.get(RUN_ID_FILE_VARIABLE) and run._id is not None:
        Path(os.environ[RUN_ID_FILE_VARIABLE]).write_text(str(run._id))


def torch_state(device: str) -> dict:
    """torch/CUDA/cuDNN versions, threads and the device `device` (a config value) picks now."""
    import torch

    from ingredients.seeding import torch_build

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        picked = str(torch.device(device))
    except RuntimeError:
        picked = device
    return {**torch_build(), "device": picked}


# --------------------------------------------------------------------------- comparing


def short(digest: str | None) -> str:
    return digest[:12] if digest else "none"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checkout_file_hash(root: Path, name: str) -> str | None:
    """SHA-256 of the regular file `name` inside root, or None (missing, outside root, not a file)."""
    path = root / name
    try:
        if not path.resolve().is_relative_to(root.resolve()):
            return None
        return sha256(read_regular(path))
    except (OSError, ValueError, RecordError):  # ValueError: a NUL byte in a recorded name
        return None


def source_differences(recorded: dict[str, bytes], root: Path) -> list[Difference]:
    """Recorded source files of the checkout whose bytes differ from (or are missing in) the tree
    at root. A name is only compared inside root (never followed out of it by `..` or a link, and
    only a regular file is read); sources recorded by absolute path, from outside the checkout,
    are compared by the module Python finds now (experiments/outside_code.py)."""
    found = []
    for name, data in sorted(recorded.items()):
        if Path(name).is_absolute():
            continue
        now = checkout_file_hash(root, name)
        if now != sha256(data):
            found.append(
                Difference(
                    f"source {name}",
                    f"sha256 {short(sha256(data))}",
                    f"sha256 {short(now)}" if now else "missing",
                )
            )
    return found


def data_differences(fingerprint: dict | None, path_now: Path | None) -> list[Difference]:
    """The data file's SHA-256 then against the file the rerun will read (a recorded one that is
    not text is as good as none: records are untrusted data)."""
    then = (fingerprint or {}).get("sha256")
    if not isinstance(then, str) or not then:
        return [Difference("data file", "not recorded", str(path_now))]
    if path_now is None or not path_now.exists():  # a file, or a folder of shards
        return [Difference("data file", fingerprint.get("path"), "not found")]
    from ingredients.data import fingerprint_file

    now = fingerprint_file(path_now)["sha256"]
    if now != then:
        return [
            Difference(f"data file {path_now}", f"sha256 {short(then)}", f"sha256 {short(now)}")
        ]
    return []


def _object(value) -> dict:
    """A record's value when it is an object, else {} (records are untrusted data)."""
    return value if isinstance(value, dict) else {}


def package_differences(then: dict[str, str], now: dict[str, str]) -> list[Difference]:
    """Packages added, removed or at another version."""
    return [
        Difference(f"package {name}", then.get(name, "absent"), now.get(name, "absent"))
        for name in sorted(set(then) | set(now))
        if then.get(name) != now.get(name)
    ]


def environment_differences(
    info: dict, now: dict, torch_now: dict, compare_git: bool = True
) -> list[Difference]:
    """Python, packages, git, torch/CUDA/cuDNN, threads and device: recorded info against now."""
    then = _object(info.get("provenance"))  # a record of another shape counts as not recorded
    if not then:
        return [Difference("environment (packages, git, python)", "not recorded", "unknown")]
    packages = {str(k): v for k, v in _object(then.get("packages")).items()}
    found = package_differences(packages, now["packages"])
    if then.get("python") != now["python"]:
        found.append(Difference("python", then.get("python"), now["python"]))
    if compare_git:
        git_then, git_now = _object(then.get("git")), now["git"]
        if git_then.get("commit") != git_now["commit"]:
            found.append(
                Difference("git commit", short(git_then.get("commit")), short(git_now["commit"]))
            )
        if git_then.get("diff_sha256") != git_now["diff_sha256"]:
            found.append(
                Difference(
                    "git work-tree diff",
                    f"sha256 {short(git_then.get('diff_sha256'))}",
                    f"sha256 {short(git_now['diff_sha256'])}",
                )
            )
    determinism = {**_object(info.get("determinism")), "device": info.get("device")}
    for key in ("torch_version", "cuda_version", "cudnn_version", "num_threads", "device"):
        if determinism.get(key) != torch_now[key]:
            found.append(Difference(key.replace("_", " "), determinism.get(key), torch_now[key]))
    return found
