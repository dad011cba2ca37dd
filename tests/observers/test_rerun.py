"""`reprolab rerun`: what changed since, --strict, --verify bit for bit, --from-recorded-sources,
the reproduction record, and bad input that changes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments.cli import main as reprolab
from experiments.rerun import read_original, verify
from observers.store import FileRunStore
from observers.verify import same_bits
from tests.helpers import REPO_ROOT, run_reprolab

# One thread for every process here: faster on a busy 2-core machine, and a thread count that
# differs between the original and the rerun would be (rightly) reported as a difference.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
SEED_LINE = '    _run.info["determinism"] = seed_everything(job.seed(seed))\n'


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, Path]:
    """A copy of the repository (no git work tree) and a store with one run recorded from it."""
    root = tmp_path_factory.mktemp("project")
    for name in ("experiments", "ingredients", "observers", "data"):
        shutil.copytree(REPO_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    store = root / "store"
    result = subprocess.run(
        [
            sys.executable,
            str(root / "experiments" / "train.py"),
            "-R",
            str(store),
            "with",
            "seed=4",
            "epochs=2",
            "limit_batches=10",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **ONE_THREAD, "PYTHONPATH": str(root)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root, store


def rerun(store: Path, *flags: str, cwd: Path) -> subprocess.CompletedProcess:
    """`reprolab rerun 1 --store STORE FLAGS` as a user runs it; started in the project copy
    (cwd), the reprolab of that checkout runs, and a plain rerun runs that checkout's code."""
    return run_reprolab("rerun", "1", "--store", str(store), *flags, cwd=cwd, env=ONE_THREAD)


def new_run(result: subprocess.CompletedProcess, store: Path) -> Path:
    found = re.search(r"rerun of run 1 recorded as run (\d+)", result.stdout)
    assert found, result.stdout + result.stderr[-3000:]
    return store / found.group(1)


def test_the_run_records_what_a_reproduction_needs(project, load):
    root, store = project
    info = load(store / "1" / "info.json")
    provenance = info["provenance"]
    assert provenance["packages"]["torch"] == torch.__version__
    assert provenance["packages"]["sacred"] == "0.8.7"
    assert provenance["python"] == ".".join(map(str, sys.version_info[:3]))
    assert provenance["git"]["commit"] is None  # the copy is no git work tree
    assert info["determinism"]["torch_version"] == torch.__version__
    assert info["data"]["fingerprint"]["path"] == str(root / "data" / "digits.parquet")
    sources = {name for name, _ in load(store / "1" / "run.json")["experiment"]["sources"]}
    assert {
        "experiments/train.py",
        "experiments/resume.py",
        "ingredients/data.py",
        "observers/provenance.py",
        "observers/attach.py",
    } <= sources


def git(root: Path, *args: str) -> bytes:
    command = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", "-C", str(root)]
    return subprocess.run([*command, *args], check=True, capture_output=True).stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_a_dirty_work_tree_records_its_commit_and_the_exact_diff_bytes(tmp_path, load):
    root = tmp_path / "checkout"
    for name in ("experiments", "ingredients", "observers", "data"):
        shutil.copytree(REPO_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "notes.txt").write_bytes(b"plain\n")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "start")
    train_py = root / "experiments" / "train.py"
    train_py.write_text(train_py.read_text() + "# an uncommitted edit\n")
    (root / "notes.txt").write_bytes(b"caf\xe9 \xff not UTF-8\n")  # a lossy decode would show
    store = tmp_path / "store"
    result = subprocess.run(
        [sys.executable, str(train_py), "-R", str(store), "with", "debug", "progress=False"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **ONE_THREAD, "PYTHONPATH": str(root)},
    )
    assert result.returncode == 0, result.stderr[-3000:]

    recorded = load(store / "1" / "info.json")["provenance"]["git"]
    assert recorded["commit"] == git(root, "rev-parse", "HEAD").decode().strip()
    assert recorded["dirty"] is True
    expected = git(root, "diff", "HEAD", "--binary")
    assert b"caf\xe9 \xff" in expected and b"+# an uncommitted edit" in expected
    assert "git.diff" in load(store / "1" / "run.json")["artifacts"]
    assert (store / "1" / "git.diff").read_bytes() == expected
    assert recorded["diff_sha256"] == hashlib.sha256(expected).hexdigest()


@pytest.mark.slow
def test_unchanged_code_reruns_bit_for_bit_even_when_strict(project, tmp_path, load):
    root, store = project
    result = rerun(store, "--strict", "--verify", cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "then vs now: no differences" in result.stdout
    assert "verify: all 8 values of 4 metrics matched bit for bit" in result.stdout
    assert "verify: final model state identical" in result.stdout
    again = new_run(result, store)
    assert load(again / "config.json") == load(store / "1" / "config.json")
    assert load(again / "info.json")["rerun_of"] == {
        "run_id": 1,
        "store": str(store),
        "from_recorded_sources": False,
    }


@pytest.mark.slow
def test_an_edited_source_is_refused_by_strict_caught_by_verify_undone_by_recorded_sources(
    project, tmp_path, load, tree_hash
):
    root, store = project
    train_py = root / "experiments" / "train.py"
    original = train_py.read_text()
    assert SEED_LINE in original
    train_py.write_text(
        original.replace(SEED_LINE, SEED_LINE + "    torch.manual_seed(seed + 1)\n")
    )
    try:
        before = tree_hash(store)
        strict = rerun(store, "--strict", cwd=root)
        assert strict.returncode == 2 and tree_hash(store) == before
        assert strict.stderr.strip() == (
            "reprolab: error: --strict: not rerunning run 1 because 1 thing differs between then "
            "and now (source experiments/train.py)"
        )

        changed = rerun(store, "--verify", cwd=root)
        assert changed.returncode == 1
        assert re.search(
            r"source experiments/train.py: sha256 \w+ then, sha256 \w+ now", changed.stdout
        )
        assert re.search(
            r"val_loss: first differs at step 1 \([\d.e-]+ then, [\d.e-]+ now\); "
            r"largest absolute difference [\d.e-]+",
            changed.stdout,
        )
        assert "verify: final model state differs" in changed.stdout
        assert "MISMATCH" in changed.stdout

        recorded = rerun(store, "--from-recorded-sources", "--verify", cwd=root)
        assert recorded.returncode == 0, recorded.stdout + recorded.stderr[-3000:]
        count = len(load(store / "1" / "run.json")["experiment"]["sources"])
        listing = (
            f"--from-recorded-sources: running these {count} files stored with run 1 in "
            f"{store}:\n  experiments/__init__.py\n"
        )
        assert recorded.stdout.startswith(listing)  # listed before anything runs
        assert f"experiments/train.py from its {count} recorded source files" in recorded.stdout
        assert "then vs now: no differences" in recorded.stdout
        assert "matched bit for bit" in recorded.stdout
        again = new_run(recorded, store)
        assert load(again / "info.json")["rerun_of"]["from_recorded_sources"] is True
        sources = dict(load(again / "run.json")["experiment"]["sources"])
        assert (
            sources["experiments/train.py"]
            == dict(load(store / "1" / "run.json")["experiment"]["sources"])["experiments/train.py"]
        )
    finally:
        train_py.write_text(original)


def test_verify_names_the_first_differing_step_and_the_largest_difference(project, capsys):
    _, store = project
    reader = FileRunStore(store)
    original = read_original(reader, 1, verify=True)
    values = original.metrics["val_loss"]["values"]
    values[1] += 0.25  # as if the original had recorded another value at step 2
    assert verify(original, 1) == 1
    out = capsys.readouterr().out
    assert (
        f"val_loss: first differs at step 2 ({values[1]!r} then, {values[1] - 0.25!r} now); "
        "largest absolute difference 0.25"
    ) in out
    assert "verify: 1 of 4 metrics differ" in out and "final model state identical" in out
    values[1] -= 0.25
    assert verify(original, 1) == 0
    assert "verify: all 8 values of 4 metrics matched bit for bit" in capsys.readouterr().out


def test_bit_equality_is_strict():
    assert same_bits(0.1 + 0.2, 0.30000000000000004) and not same_bits(0.1 + 0.2, 0.3)
    assert same_bits(float("nan"), float("nan")) and not same_bits(0.0, -0.0)
    assert same_bits(3, 3) and not same_bits(1.0, "1.0")


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def scratch(project, tmp_path) -> Path:
    """A copy of the project's store to damage."""
    _, store = project
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    return copy


def refused(capsys, *argv: str) -> str:
    """Run `reprolab ARGV` in-process; it must fail with one line on stderr and print nothing."""
    assert reprolab(list(argv)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reprolab: error: ") and not captured.out
    return lines[0].removeprefix("reprolab: error: ")


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("unknown id", "no run 9 in {store}"),
        ("not a run", "{store}/_sources is not a run directory (no run.json in a numbered folder)"),
        (
            "interrupted",
            "run 1 has status INTERRUPTED, not COMPLETED, so there is no finished run "
            "to repeat (continue it with resume=1)",
        ),
        ("no config", "run 1: {store}/1/config.json is missing"),
        ("damaged run.json", "run 1: {store}/1/run.json is damaged"),
        (
            "no info",
            "run 1 recorded no final_model_sha256 in its info, so --verify has nothing to "
            "compare the final model against",
        ),
        ("no source copy", "run 1: recorded source experiments/train.py is missing"),
    ],
)
def test_bad_input_is_one_sentence_and_changes_nothing(
    scratch, capsys, load, tree_hash, damage, expected
):
    run = scratch / "1"
    ref = ["9"] if damage == "unknown id" else ["1"]
    if damage == "not a run":
        ref = [str(scratch / "_sources")]
    elif damage == "interrupted":
        edit_json(run / "run.json", status="INTERRUPTED")
    elif damage == "no config":
        (run / "config.json").unlink()
    elif damage == "damaged run.json":
        (run / "run.json").write_text('{"status": "COMPL')
    elif damage == "no info":
        (run / "info.json").unlink()
    elif damage == "no source copy":
        stored = dict(load(run / "run.json")["experiment"]["sources"])["experiments/train.py"]
        (scratch / stored).unlink()
    before = tree_hash(scratch)
    message = refused(capsys, "rerun", *ref, "--store", str(scratch), "--verify")
    assert message.startswith(expected.format(store=scratch))
    assert tree_hash(scratch) == before
