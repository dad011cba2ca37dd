"""Sweeps: many recorded runs of one experiment from one declaration, run here or on Slurm.

`reprolab sweep` (observers/cli.py parses the arguments) lands in `sweep_command`. A sweep
declares configs (experiments/sweep_declare.py), checks every one before anything starts, records
itself in the store (declaration, configs, engine and job ids, code version), then starts one
run per config, each with `--sweep ID:INDEX` so it records which sweep and config it is.
Which runs are done is read back from the store, never kept elsewhere: `--resume` skips completed
configs, continues interrupted ones from their checkpoint (`with resume=RUN`) and reruns failed
ones; `--status` shows each config's latest run and, for Slurm, its task's state.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import runpy
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from experiments.membership import CHECKING_ELSEWHERE_VARIABLE
from experiments.sweep_declare import (
    SEED_LIMIT,
    Declaration,
    config_words,
    describe,
    expand,
    from_file,
    from_words,
    inline_config_files,
    varied_keys,
)
from ingredients.scratch import running
from observers.attach import MONGO_URL_VARIABLE, default_store, is_mongo_url
from observers.files import STALE_HEARTBEAT, record_time, utc_text
from observers.provenance import RUN_ID_FILE_VARIABLE, git
from observers.rerun import INSTALLED_ROOT, checkout_file
from observers.store import RecordError, open_store
from observers.sweep_records import SWEEPS, sweep_records

STOP_WAIT_S = 120  # how long a stopped run may take to record its interruption before it is killed


# --------------------------------------------------------------------------- the sweep's record


class SweepBook:
    """A store's sweep records (observers.sweep_records: a file store's .reprolab/sweeps/<id>.json
    or MongoDB's `sweeps`), and where a sweep keeps its run logs and Slurm's files."""

    def __init__(self, location: str):
        self.location = location
        self.mongo = is_mongo_url(location)
        self.records = sweep_records(location)

    def save(self, record: dict) -> None:
        self.records.save(record)

    def load(self, sweep_id: str) -> dict:
        record = self.records.find(sweep_id)
        if record is None:
            raise RecordError(f"no sweep '{sweep_id}' in {self.printable()}")
        check_shape(record, sweep_id)
        return record

    def exists(self, sweep_id: str) -> bool:
        return self.records.find(sweep_id) is not None

    def delete(self, sweep_id: str) -> None:
        self.records.delete(sweep_id)

    def work_dir(self, sweep_id: str) -> Path:
        """Where a sweep keeps run logs and Slurm's files: beside the runs, or ./.reprolab."""
        base = SWEEPS if self.mongo else self.records.folder
        return (base / sweep_id).resolve()

    def printable(self) -> str:
        from observers.credentials import redact

        return redact(self.location)


# What each field of a sweep record must be: read back, a record is data someone else may have
# written, so a wrong shape is one sentence naming the field, never a traceback further on.
RECORD_FIELDS = {
    "id": str,
    "experiment": str,
    "named_configs": list,
    "configs": list,
    "attempts": list,
}
ATTEMPT_FIELDS = {
    "engine": str,
    "indices": list,
    "task_ids": dict,
    "job_id": str,
    "options": dict,
    "folder": str,
    "parallel": int,
    "threads": int,
    "host": str,
}


def check_shape(record: dict, sweep_id: str) -> None:
    """RecordError naming the sweep and the first field of the wrong shape."""

    def wrong(field: str, what: str) -> RecordError:
        return RecordError(f"sweep {sweep_id}'s record is damaged: {field} must be {what}")

    for field, kind in RECORD_FIELDS.items():
        if not isinstance(record.get(field), kind):
            raise wrong(field, f"a {kind.__name__}")
    if not all(isinstance(name, str) for name in record["named_configs"]):
        raise wrong("named_configs", "a list of names")
    if not record["configs"] or not all(isinstance(c, dict) for c in record["configs"]):
        raise wrong("configs", "a non-empty list of tables")
    for number, attempt in enumerate(record["attempts"]):
        if not isinstance(attempt, dict):
            raise wrong(f"attempts[{number}]", "a table")
        for field, kind in ATTEMPT_FIELDS.items():
            value = attempt.get(field)
            if (field == "engine" or value is not None) and (
                not isinstance(value, kind) or isinstance(value, bool)
            ):
                raise wrong(f"attempts[{number}].{field}", f"a {kind.__name__}")
        tasks = attempt.get("task_ids") or {}
        if not all(key.isdigit() and isinstance(task, str) for key, task in tasks.items()):
            raise wrong(f"attempts[{number}].task_ids", "a table of config index to task id")


def new_sweep_id(book: SweepBook) -> str:
    """A short id no sweep in this store has yet: the date and four random hex digits."""
    while True:
        sweep_id = f"{dt.datetime.now():%Y%m%d}-{secrets.token_hex(2)}"
        if not book.exists(sweep_id):
            return sweep_id


def code_version() -> dict:
    commit = git(INSTALLED_ROOT, "rev-parse", "HEAD")
    status = git(INSTALLED_ROOT, "status", "--porcelain", "--untracked-files=no")
    return {
        "commit": commit.strip() if commit else None,
        "dirty": bool(status.strip()) if status is not None else None,
    }


# --------------------------------------------------------------------------- checking configs


def load_experiment(path: str):
    """The Sacred experiment defined by a file, loaded without running it."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"experiment file {path} not found")
    from sacred import Experiment

    namespace = runpy.run_path(str(file), run_name="reprolab_sweep_check")
    found = [value for value in namespace.values() if isinstance(value, Experiment)]
    if not found:
        raise ValueError(f"{path} defines no Sacred experiment")
    return found[0]


def validate(
    experiment: str, named_configs: list[str], configs: list[dict], elsewhere: bool = False
) -> None:
    """Build every config's run without starting it, so a bad one is refused before any run
    starts: one sentence naming the config and the key. Nothing is recorded (no observer).
    `elsewhere`: the runs start on other machines (Slurm), whose GPUs this one cannot see."""
    ex = load_experiment(experiment)
    varied = varied_keys(configs)
    checked: set[str] = set()  # configs already built, but for their seed
    with (
        mock.patch.dict(os.environ, {CHECKING_ELSEWHERE_VARIABLE: "1" if elsewhere else "0"}),
        sources_gathered_once(),
    ):
        for index, config in enumerate(checking(configs)):
            shared = json.dumps({**config, "seed": None}, sort_keys=True, default=repr)
            if shared in checked and plain_seed(config.get("seed")):
                continue  # a seed changes no other value: only that it is a valid seed counts
            checked.add(shared)
            try:
                ex._create_run(
                    config_updates=dict(config),
                    named_configs=list(named_configs),
                    options={"--unobserved": True},
                )
            except ValueError as error:  # ConfigurationError: one sentence naming the key
                label = describe(config, varied) or describe(config)
                raise ValueError(f"config {index} ({label}): {error}") from None
            finally:
                ex.current_run = None


def plain_seed(seed) -> bool:
    """Whether a seed is one Sacred takes as is: an integer in [0, 2**31)."""
    return seed is None or (type(seed) is int and 0 <= seed < SEED_LIMIT)


@contextlib.contextmanager
def sources_gathered_once():
    """While configs are only checked, the user's sources (a scan of every imported module and
    three git calls) are gathered for the first run and reused: no checked run is recorded."""
    import experiments.base as base

    with mock.patch.object(base, "own_sources", functools.cache(base.own_sources)):
        yield


def checking(configs: list[dict]):
    """The configs, behind a progress bar when there are many and stderr is a terminal."""
    if len(configs) < 100 or not sys.stderr.isatty():
        return configs
    from tqdm import tqdm

    return tqdm(configs, desc="checking configs", unit="config", delay=0.5)


# --------------------------------------------------------------------------- reading runs back


@dataclass
class Attempt:
    """One recorded run of a sweep's config."""

    run_id: int
    index: int
    status: str
    checkpoint: bool  # its last.pt is recorded, so it can be continued
    heartbeat: str | None = None  # run.json's last heartbeat (ISO text or a datetime)

    def beating(self) -> bool:
        """RUNNING with a heartbeat in the last two minutes: its process is probably alive."""
        if self.status != "RUNNING":
            return False
        try:
            beat = record_time(self.heartbeat)
        except (TypeError, ValueError):
            return False
        return beat is not None and dt.datetime.now(dt.UTC) - beat < STALE_HEARTBEAT


def sweep_attempts(location: str, sweep_id: str) -> dict[int, list[Attempt]]:
    """Every run of the sweep in the store, by config index, oldest first."""
    store = open_store(location)
    attempts: dict[int, list[Attempt]] = {}
    for run_id in store.run_ids():
        try:
            run = store.run(run_id)
        except RecordError:
            continue  # starting right now, or damaged: not a finished attempt either way
        member = (run.get("meta") or {}).get("sweep")
        if not isinstance(member, dict) or member.get("id") != sweep_id:
            continue
        index = member.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            continue  # damaged: not an attempt at any config
        try:
            checkpoint = "last.pt" in (store.info(run_id).get("checkpoints") or {})
        except RecordError:
            checkpoint = False
        status = run.get("status")
        attempts.setdefault(index, []).append(
            Attempt(
                run_id,
                index,
                status if isinstance(status, str) else "DAMAGED",
                checkpoint,
                run.get("heartbeat"),
            )
        )
    return attempts


@dataclass
class Job:
    """What to start for one config: fresh, or continuing an interrupted run."""

    index: int
    words: list[str]  # after `with`
    resumes: int | None = None


def jobs_to_do(
    record: dict, attempts: dict[int, list[Attempt]], busy: set[int]
) -> tuple[list[Job], list[str]]:
    """Jobs for every config not yet completed, and a line per config left alone or continued."""
    jobs, notes = [], []
    for index, config in enumerate(record["configs"]):
        latest = (attempts.get(index) or [None])[-1]
        fresh = Job(index, record["named_configs"] + config_words(config))
        if latest is None:
            jobs.append(fresh)
        elif latest.status == "COMPLETED":
            continue
        elif index in busy or latest.beating():
            notes.append(
                f"config {index}: run {latest.run_id} is still {latest.status}; left alone"
            )
        elif latest.status in ("INTERRUPTED", "RUNNING", "TIMEOUT") and latest.checkpoint:
            notes.append(f"config {index}: continuing run {latest.run_id} from its checkpoint")
            jobs.append(Job(index, [f"resume={latest.run_id}"], resumes=latest.run_id))
        else:
            notes.append(
                f"config {index}: run {latest.run_id} was {latest.status}; running it again"
            )
            jobs.append(fresh)
    return jobs, notes


# --------------------------------------------------------------------------- commands


def run_argv(record: dict, job: Job, store_arg: str | None) -> list[str]:
    """train.py's arguments for a job; a MongoDB store travels in the environment, not argv."""
    argv = [str(experiment_file(record, store_arg))]
    if store_arg:
        argv += ["-R", store_arg]
    return argv + ["--sweep", f"{record['id']}:{job.index}", "with", *job.words]


def experiment_file(record: dict, store_root: str | None) -> Path:
    """The sweep's experiment in this checkout: the record names it relative to the checkout and
    cannot choose a file elsewhere or in a run store (RecordError, one sentence)."""
    return checkout_file(
        record["experiment"],
        f"sweep {record['id']}'s experiment",
        store_root,
        "a sweep runs only an experiment file of this checkout",
    )


def check_named_configs(record: dict, experiment: Path) -> None:
    """A record's named configs may only be the experiment's registered ones, never a file for
    Sacred to load (it reads pickles): RecordError naming the sweep and the name."""
    if not record["named_configs"]:
        return
    registered = {name for name, _ in load_experiment(str(experiment)).gather_named_configs()}
    for name in record["named_configs"]:
        if name not in registered:
            raise RecordError(
                f"sweep {record['id']}'s named config {name!r} is not one of "
                f"{experiment.name}'s named configs, so nothing was run"
            )


def store_argument(location: str) -> str | None:
    """What goes after -R: the file store's absolute path; None for MongoDB (set in the
    environment as REPROLAB_MONGO_URL, so a password never shows in ps or a job script)."""
    return None if is_mongo_url(location) else str(Path(location).resolve())


# --------------------------------------------------------------------------- running locally


@dataclass
class Running:
    job: Job
    process: subprocess.Popen
    log: Path
    id_file: Path


class LocalSweep:
    """Runs jobs N at a time, each its own process and session (Ctrl-C reaches only us; we
    pass it on once), with its own torch thread count."""

    def __init__(self, record: dict, book: SweepBook, location: str, parallel: int, threads: int):
        self.record, self.book, self.location = record, book, location
        self.parallel, self.threads = parallel, threads
        self.logs = book.work_dir(record["id"]) / "logs"
        self.done = self.failed = self.interrupted = 0
        self.failures: list[str] = []

    def environment(self) -> dict:
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(self.threads),
            "MKL_NUM_THREADS": str(self.threads),
        }
        if is_mongo_url(self.location):
            env[MONGO_URL_VARIABLE] = self.location
        return env

    def start(self, job: Job, attempt: int) -> Running:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"config-{job.index}-{attempt}.log"
        id_file = self.logs / f"config-{job.index}-{attempt}.run_id"
        argv = run_argv(self.record, job, store_argument(self.location))
        env = {**self.environment(), RUN_ID_FILE_VARIABLE: str(id_file)}
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        return Running(job, process, log, id_file)

    def run(self, jobs: list[Job], attempt: int) -> int:
        """Run every job; 0 when all completed, 1 when some failed, 130 when stopped. Ctrl-C and
        SIGTERM only set a flag (no exception can land between starting a run and holding it)."""
        pending, running = list(jobs), []
        stopping = []
        previous = {
            signum: signal.signal(signum, lambda *_: stopping.append(True))
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self.progress(pending, running)
            while (pending or running) and not stopping:
                while pending and len(running) < self.parallel and not stopping:
                    running.append(self.start(pending.pop(0), attempt))
                    self.progress(pending, running)
                finished = [r for r in running if r.process.poll() is not None]
                for item in finished:
                    running.remove(item)
                    self.finish(item)
                if finished:
                    self.progress(pending, running)
                elif not stopping:
                    time.sleep(0.2)
            if stopping:
                self.stop(running)
                print(
                    f"sweep {self.record['id']} stopped: {self.interrupted} run(s) interrupted, "
                    f"{len(pending)} not started; continue it with: "
                    f"{resume_command(self.record['id'], self.location)}",
                    file=sys.stderr,
                )
                return 130
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        for line in self.failures:
            print(line, file=sys.stderr)
        return 1 if self.failed or self.interrupted else 0

    def finish(self, item: Running) -> None:
        code = item.process.returncode
        run_id = item.id_file.read_text().strip() if item.id_file.is_file() else "?"
        if code == 0:
            self.done += 1
        elif code in (130, 143, -2, -9, -15):
            self.interrupted += 1
        else:
            self.failed += 1
            self.failures.append(
                f"config {item.job.index} (run {run_id}) failed: "
                f"{last_error(item.log)} (log: {item.log})"
            )

    def stop(self, running: list[Running]) -> None:
        """Ask every running run to stop (it records INTERRUPTED and its checkpoint), then wait;
        one that outlasts STOP_WAIT_S is killed with its whole session. Each is counted by how it
        ended: one that completed or failed just before the stop is not called interrupted."""
        for item in running:
            if item.process.poll() is None:
                item.process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + STOP_WAIT_S
        for item in running:
            try:
                item.process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_session(item.process)
            self.finish(item)

    def progress(self, pending: list, running: list) -> None:
        print(
            f"sweep {self.record['id']}: {self.done} done, {len(running)} running, "
            f"{self.failed} failed, {len(pending)} left",
            file=sys.stderr,
            flush=True,
        )


def kill_session(process: subprocess.Popen) -> None:
    """Kill a run and every process of its session (it was started as a session's leader)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def last_error(log: Path) -> str:
    """The last line of a run's output that says what went wrong (its exception, usually)."""
    try:
        lines = [
            line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()
        ]
    except OSError:
        return "no output"
    errors = [
        line
        for line in lines
        if line.startswith(("error:", "ERROR"))
        or (":" in line and line.split(":", 1)[0].endswith(("Error", "Exception")))
    ]
    return (errors or lines or ["no output"])[-1]


def resume_command(sweep_id: str, location: str) -> str:
    return f"reprolab sweep --resume {sweep_id}{store_option(location)}"


def store_option(location: str) -> str:
    """' --store LOCATION' for a printed command, '' for the default store (a password never)."""
    if location == default_store():
        return ""
    return (
        " --store <your MongoDB URL>"
        if is_mongo_url(location)
        else f" --store {shlex.quote(location)}"
    )


# --------------------------------------------------------------------------- the command


def sweep_command(args) -> int:
    """`reprolab sweep`: declare, check, record and run a sweep; or resume, or show its status."""
    location = str(args.store or default_store())
    if args.status:
        return status_command(args.status, location)
    if args.resume:
        return resume_sweep(args, location)
    declaration = declaration_from(args.words, args.file)
    experiment = relative_experiment(declaration.experiment)  # before any of its code runs
    check_engine_options(args)
    seed = secrets.randbelow(2**31)
    configs, dropped = expand(declaration, seed)
    validate(
        declaration.experiment,
        declaration.named_configs,
        configs,
        elsewhere=args.on == "slurm" or args.print_commands,
    )
    if args.on == "slurm" and not args.print_commands:  # its options, before anything is said
        from experiments.sweep_slurm import SlurmOptions, check_devices

        check_devices(configs, SlurmOptions.from_args(args))
    if args.dry_run:
        print_configs(configs, dropped, declaration)
        return 0
    book = SweepBook(location)
    record = {
        "id": new_sweep_id(book),
        "experiment": experiment,
        "created": now(),
        "declaration": declaration.record(),
        "named_configs": declaration.named_configs,
        "configs": configs,
        "default_seed": seed,
        "duplicates_dropped": dropped,
        "code": code_version(),
        "store": book.printable(),
        "attempts": [],
    }
    jobs = [Job(i, declaration.named_configs + config_words(c)) for i, c in enumerate(configs)]
    print(
        f"sweep {record['id']}: {len(configs)} configs"
        + (f" ({dropped} duplicates run once)" if dropped else "")
        + f", recorded in {book.printable()}",
        file=sys.stderr,
    )
    return launch(args, record, book, location, jobs)


def declaration_from(words: list[str], file: str | None) -> Declaration:
    """The experiment file, an optional sweep file and `with` words, in that order."""
    words = list(words or [])
    experiment = None
    if words and words[0].endswith(".py"):
        experiment = words.pop(0)
    if words and words[0].lower().endswith((".yaml", ".yml", ".json")):
        file = file or words.pop(0)
    if words and words[0] == "with":
        words.pop(0)
    elif words:
        raise ValueError(
            f"'{words[0]}': give config values after 'with', e.g. "
            "reprolab sweep experiments/train.py with 'lr=[0.1, 0.01]'"
        )
    declaration = from_file(file) if file else Declaration()
    declaration = from_words(words, declaration)
    declaration.experiment = experiment or declaration.experiment
    inline_config_files(declaration)
    if not declaration.grid and not declaration.random:
        raise ValueError(
            "the sweep declares nothing to vary: give a list, e.g. 'lr=[0.1, 0.01]', "
            "or a sweep file with grid or random"
        )
    return declaration


def relative_experiment(path: str) -> str:
    """The experiment's path relative to this checkout, as the record keeps it (--resume runs
    that file of whichever checkout it runs from)."""
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(INSTALLED_ROOT):
        raise ValueError(
            f"experiment {path} is not in the checkout {INSTALLED_ROOT}: a sweep runs an "
            "experiment file of the checkout, so that --resume runs the same one"
        )
    return resolved.relative_to(INSTALLED_ROOT).as_posix()


def check_engine_options(args) -> None:
    args.on = args.on or "local"
    args.parallel = 1 if args.parallel is None else args.parallel
    if args.parallel < 1:
        raise ValueError(f"--parallel must be 1 or more, not {args.parallel}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be 1 or more, not {args.threads}")
    if args.on != "slurm":
        given = [
            name
            for name in ("partition", "time", "cpus", "gpus", "mem", "max_parallel")
            if getattr(args, name) is not None
        ] + (["sbatch"] if args.sbatch else [])
        if "gpus" in given:  # a local sweep hands out no GPUs: its runs all see this machine's
            raise ValueError(
                "--gpus is a Slurm option: a local sweep's runs share the GPUs this "
                "machine shows (device=auto takes the first), so add --on slurm or "
                "leave --gpus out"
            )
        if given:
            raise ValueError(f"--{given[0].replace('_', '-')} is a Slurm option; add --on slurm")


def print_configs(configs: list[dict], dropped: int, declaration: Declaration) -> None:
    varied = varied_keys(configs)
    for index, config in enumerate(configs):
        print(f"{index:>4}  {describe(config, varied) or describe(config)}")
    fixed = {k: v for k, v in configs[0].items() if k not in varied}
    named = " ".join(declaration.named_configs)
    print(
        f"{len(configs)} configs of {declaration.experiment}"
        + (f" ({dropped} duplicates dropped)" if dropped else "")
        + (f"; named configs: {named}" if named else "")
        + (f"; the same in all: {describe(fixed)}" if fixed else "")
    )


def launch(args, record: dict, book: SweepBook, location: str, jobs: list[Job]) -> int:
    """Start jobs on the chosen engine, recording the attempt in the sweep's record first."""
    if args.print_commands:
        record["attempts"].append(
            {"engine": "commands", "started": now(), "indices": [j.index for j in jobs]}
        )
        book.save(record)
        print_commands(record, jobs, location)
        return 0
    if args.on == "slurm":
        from experiments.sweep_slurm import SlurmOptions, check_devices, submit

        previous = last_attempt(record, "slurm").get("options")
        options = SlurmOptions.from_args(args, previous=previous)
        if previous and previous.get("extra") and not args.sbatch:
            print(
                "the previous submission's --sbatch options are not taken from the record; give "
                "them again if they are still wanted",
                file=sys.stderr,
            )
        check_devices([record["configs"][job.index] for job in jobs], options)
        folder = book.work_dir(record["id"]) / f"slurm-{len(record['attempts'])}"
        attempt = {
            "engine": "slurm",
            "started": now(),
            "folder": str(folder),
            "options": options.record(),
            "indices": [j.index for j in jobs],
        }
        record["attempts"].append(attempt)
        book.save(
            record
        )  # recorded before submitting: a crash in between leaves a record to --resume
        try:
            submitted = submit(record, jobs, location, options, folder)
        except (
            ValueError
        ) as error:  # sbatch refused it: nothing was submitted, nothing stays recorded
            forget_attempt(record, attempt, book)
            raise ValueError(f"{error} (nothing submitted or recorded)") from None
        attempt["task_ids"] = {
            str(index): task for index, task in submitted.items()
        }  # BSON: text keys
        attempt["job_id"] = next(iter(attempt["task_ids"].values()), "").split("_")[0]
        book.save(record)
        print(
            f"sweep {record['id']}: submitted job array {attempt['job_id']} "
            f"({len(jobs)} tasks); follow it with: reprolab sweep --status {record['id']}"
            + store_option(location),
            file=sys.stderr,
        )
        if args.wait:
            from experiments.sweep_slurm import wait

            return wait(record, location, attempt)
        return 0
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.parallel)
    record["attempts"].append(
        {
            "engine": "local",
            "started": now(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "parallel": args.parallel,
            "threads": threads,
            "indices": [j.index for j in jobs],
        }
    )
    book.save(record)
    runner = LocalSweep(record, book, location, args.parallel, threads)
    code = runner.run(jobs, len(record["attempts"]))
    if code == 0:
        print(
            f"sweep {record['id']}: all {len(jobs)} runs completed; rank them with: reprolab compare "
            f"--sweep {record['id']}{store_option(location)}",
            file=sys.stderr,
        )
    return code


def forget_attempt(record: dict, attempt: dict, book: SweepBook) -> None:
    """Take back a submission Slurm refused: its files, and the sweep's record if it is new."""
    shutil.rmtree(attempt["folder"], ignore_errors=True)
    record["attempts"].remove(attempt)
    if record["attempts"]:
        book.save(record)
    else:
        book.delete(record["id"])
        shutil.rmtree(book.work_dir(record["id"]), ignore_errors=True)


def now() -> str:
    return utc_text(dt.datetime.now(dt.UTC))


def print_commands(record: dict, jobs: list[Job], location: str) -> None:
    """One shell command per config, for any scheduler; they record into the same sweep."""
    store = store_argument(location)
    if store is None:
        print("# each command reads the store from REPROLAB_MONGO_URL; set it where they run")
    for job in jobs:
        print(shlex.join(["python", *run_argv(record, job, store)]))


def resume_sweep(args, location: str) -> int:
    """Start what a sweep still lacks: fresh runs for missing or failed configs, continued runs
    for interrupted ones; completed configs and those still running on Slurm are left alone."""
    book = SweepBook(location)
    record = book.load(args.resume)
    check_named_configs(record, experiment_file(record, store_argument(location)))
    for index, config in enumerate(record["configs"]):
        try:
            config_words(config)  # plain values only, before any run starts
        except ValueError as error:
            raise RecordError(f"sweep {record['id']}'s config {index}: {error}") from None
    engines = [a["engine"] for a in record.get("attempts", []) if a["engine"] in ("local", "slurm")]
    args.on = args.on or (engines[-1] if engines else "local")
    local = last_attempt(record, "local")  # the same threads again: bit-exact continuation
    args.parallel = args.parallel if args.parallel is not None else local.get("parallel", 1)
    args.threads = args.threads or local.get("threads")
    check_engine_options(args)
    busy = busy_indices(record)
    jobs, notes = jobs_to_do(record, sweep_attempts(location, record["id"]), busy)
    for note in notes:
        print(note, file=sys.stderr)
    if not jobs:
        print(
            f"sweep {record['id']}: nothing to do ({len(record['configs']) - len(busy)} configs "
            f"completed{f', {len(busy)} still running' if busy else ''})",
            file=sys.stderr,
        )
        return 0
    print(
        f"sweep {record['id']}: {len(jobs)} of {len(record['configs'])} configs to run",
        file=sys.stderr,
    )
    return launch(args, record, book, location, jobs)


def last_attempt(record: dict, engine: str) -> dict:
    """The sweep's latest attempt on this engine, or {}."""
    return next((a for a in reversed(record.get("attempts") or []) if a["engine"] == engine), {})


def busy_indices(record: dict) -> set[int]:
    """Configs whose run may still be going: a live local sweep, or Slurm tasks not yet ended."""
    attempt = (record.get("attempts") or [None])[-1]
    if not attempt:
        return set()
    if attempt["engine"] == "local":
        if attempt.get("host") == socket.gethostname() and pid_alive(attempt.get("pid")):
            raise ValueError(
                f"sweep {record['id']} is still running here (process {attempt['pid']})"
            )
        return set()
    if attempt["engine"] == "slurm":
        from experiments.sweep_slurm import task_states

        states = task_states(attempt)
        return {
            index for index, state in states.items() if state in ("PENDING", "RUNNING", "REQUEUED")
        }
    return set()


def pid_alive(pid) -> bool:
    """Whether a recorded process id (any value a record holds) is another live process."""
    return type(pid) is int and pid > 0 and pid != os.getpid() and running(pid)


def status_command(sweep_id: str, location: str) -> int:
    """Each config's latest run and its state in the store and, for a Slurm sweep, in Slurm."""
    book = SweepBook(location)
    record = book.load(sweep_id)
    attempts = sweep_attempts(location, sweep_id)
    slurm: dict[int, str] = {}
    last = (record.get("attempts") or [None])[-1]
    if last and last["engine"] == "slurm":
        from experiments.sweep_slurm import task_states

        slurm = task_states(last)
    varied = varied_keys(record["configs"])
    counts: dict[str, int] = {}
    print(
        f"sweep {sweep_id}: {record['experiment']}, {len(record['configs'])} configs, "
        f"{', '.join(a['engine'] for a in record.get('attempts', [])) or 'not started'}"
    )
    header = (
        f"{'config':>6}  {'runs':<10}  {'status':<11}"
        + ("  slurm      " if slurm else "  ")
        + "values"
    )
    print(header)
    for index, config in enumerate(record["configs"]):
        runs = attempts.get(index) or []
        status = runs[-1].status if runs else "-"
        state = slurm.get(index, "-") if slurm else ""
        shown = (
            state if status == "-" and state not in ("", "-") else status
        )  # no run yet: Slurm's word
        counts[shown] = counts.get(shown, 0) + 1
        ids = ",".join(str(r.run_id) for r in runs) or "-"
        line = f"{index:>6}  {ids:<10}  {shown:<11}" + (f"  {state:<11}" if slurm else "  ")
        print((line + describe(config, varied))[:100])
    print(
        ", ".join(
            f"{n} {status.lower() if status != '-' else 'not started'}"
            for status, n in sorted(counts.items())
        )
    )
    return 0
