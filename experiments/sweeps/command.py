"""`reprolab sweep`: many recorded runs of one experiment from one declaration, here or on Slurm.

A sweep declares configs (sweeps/declare.py), checks every one before anything starts, records
itself in the store (sweeps/record.py: declaration, configs, engine and job ids, code version),
then starts one run per config on its engine (sweeps/local.py, sweeps/slurm.py, or printed
commands), each with `--sweep ID:INDEX` so it records which sweep and config it is. Which runs
are done is read back from the store (sweeps/attempts.py), never kept elsewhere: `--resume` skips
completed configs, continues interrupted ones from their checkpoint (`with resume=RUN`) and reruns
failed ones; `--status` shows each config's latest run and, for Slurm, its task's state.
"""

from __future__ import annotations

import json
import os
import runpy
import secrets
import shlex
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from experiments.child import checkout_file
from experiments.membership import checked_for_elsewhere
from experiments.sacred_private import create_unstarted_run
from experiments.sources import gathered_once
from experiments.sweeps.attempts import jobs_to_do, sweep_attempts
from experiments.sweeps.claiming import ClaimingSweep, claim_jobs
from experiments.sweeps.declare import (
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
from experiments.sweeps.options import SweepOptions
from experiments.sweeps.record import (
    Job,
    SweepBook,
    SweepRecord,
    code_version,
    local_attempt,
    new_attempt,
    now,
    refuse_chosen_run,
)
from experiments.sweeps.slurm import SlurmOptions, check_devices, submit, task_states, wait
from ingredients.checkout import CHECKOUT_ROOT
from ingredients.progress import progress
from ingredients.scratch import running
from observers.credentials import redact_argv
from observers.exit_codes import ExitCode
from observers.location import StoreLocation
from observers.store import RecordError

# --------------------------------------------------------------------------- the command


def sweep_command(options: SweepOptions) -> int:
    """`reprolab sweep`: declare, check, record and run a sweep; or resume, or show its status."""
    if options.status:
        return status_command(options.status, options.store)
    if options.resume:
        return resume_sweep(options)
    declaration = declaration_from(list(options.words), options.file)
    experiment = relative_experiment(declaration.experiment, options.store)  # before it loads
    options = options.with_engine()
    seed = secrets.randbelow(SEED_LIMIT)
    configs, dropped = expand(declaration, seed)
    validate(declaration.experiment, declaration.named_configs, configs, options.runs_elsewhere)
    if options.on == "slurm" and not options.print_commands:  # its options, before anything is said
        check_devices(configs, SlurmOptions.from_args(options.slurm))
    if options.dry_run:
        print_configs(configs, dropped, declaration)
        return ExitCode.OK
    if options.on == "slurm" and not options.print_commands:
        require_sbatch()
    book = SweepBook(options.store)
    record = SweepRecord(
        id=book.new_id(),
        experiment=experiment,
        named_configs=declaration.named_configs,
        configs=configs,
        extra={
            "created": now(),
            "declaration": declaration.record(),
            "default_seed": seed,
            "duplicates_dropped": dropped,
            "code": code_version(),
            "store": str(options.store),
        },
    )
    book.save(record)  # before it says "recorded": the save may fail (a full store)
    print(
        f"sweep {record.id}: {len(configs)} configs"
        + (f" ({dropped} duplicates run once)" if dropped else "")
        + f", {recorded_where(options)}",
        file=sys.stderr,
    )
    jobs = [record.fresh_job(index) for index in range(len(configs))]
    return launch(options, record, book, jobs)


def recorded_where(options: SweepOptions) -> str:
    """Where a new sweep or search is recorded: on Slurm, only once sbatch takes its array
    (a refusal takes the record back)."""
    if options.on == "slurm" and not options.print_commands:
        return f"recorded in {options.store} once Slurm takes its job array"
    return f"recorded in {options.store}"


def declaration_from(
    words: list[str], file: str | None, search_options: bool = False
) -> Declaration:
    """The experiment file, an optional sweep file and `with` words, in that order (a search's
    options given, it need not declare a list: sweeps/search.py checks its space)."""
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
    searched = declaration.search is not None or declaration.space  # sweeps/search.py's
    if not declaration.grid and not declaration.random and not searched and not search_options:
        raise ValueError(
            "the sweep declares nothing to vary: give a list, e.g. 'lr=[0.1, 0.01]', "
            "or a sweep file with grid or random"
        )
    return declaration


def relative_experiment(path: str, store: StoreLocation) -> str:
    """The experiment's path relative to this checkout, as the record keeps it (--resume runs
    that file of whichever checkout it runs from). One inside a run store, or one that defines
    no experiment, is refused here, before anything of it is loaded (also under --dry-run)."""
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(CHECKOUT_ROOT):
        raise ValueError(
            f"experiment {path} is not in the checkout {CHECKOUT_ROOT}: a sweep runs an "
            "experiment file of the checkout, so that --resume runs the same one"
        )
    relative = resolved.relative_to(CHECKOUT_ROOT).as_posix()
    store_root = None if store.is_mongo else store.path
    checkout_file(relative, "the sweep's experiment", store_root, "give an experiment file")
    return relative


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
    experiment: str,
    named_configs: list[str],
    configs: list[dict],
    elsewhere: bool = False,
    metric: str | None = None,
) -> None:
    """Build every config's run without starting it, so a bad one is refused before any run
    starts: one sentence naming the config and the key. Nothing is recorded (no observer).
    Configs that differ only in a plain seed are built once (a seed changes no other value).
    `elsewhere`: the runs start on other machines (Slurm), whose GPUs this one cannot see.
    `metric`: a search's, refused where the experiment says its runs do not log it."""
    ex = load_experiment(experiment)
    varied = varied_keys(configs)
    checked: set[str] = set()  # configs already built, but for their seed
    with checked_for_elsewhere(elsewhere), gathered_once():
        checking = progress(configs, len(configs) >= 100, "checking configs", "config")
        for index, config in enumerate(checking):
            shared = json.dumps({**config, "seed": None}, sort_keys=True, default=repr)
            if shared in checked and plain_seed(config.get("seed")):
                continue
            checked.add(shared)
            label = describe(config, varied) or describe(config)
            try:
                run = create_unstarted_run(ex, dict(config), list(named_configs))
            except ValueError as error:  # ConfigurationError: one sentence naming the key
                raise ValueError(f"config {index} ({label}): {error}") from None
            logged = getattr(ex, "epoch_metrics", None)
            if metric is not None and logged is not None and metric not in logged(run.config):
                raise ValueError(
                    f"search.metric {metric!r} is not one that config {index} ({label}) logs "
                    f"each epoch ({', '.join(logged(run.config))})"
                )


def plain_seed(seed: object) -> bool:
    """Whether a seed is one Sacred takes as it is: an integer in [0, 2**31)."""
    return seed is None or (type(seed) is int and 0 <= seed < SEED_LIMIT)


def check_named_configs(record: SweepRecord, experiment: Path) -> None:
    """A record's named configs may only be the experiment's registered ones, never a file for
    Sacred to load (it reads pickles): RecordError naming the sweep and the name."""
    if not record.named_configs:
        return
    registered = {name for name, _ in load_experiment(str(experiment)).gather_named_configs()}
    for name in record.named_configs:
        if name not in registered:
            raise RecordError(
                f"sweep {record.id}'s named config {name!r} is not one of "
                f"{experiment.name}'s named configs, so nothing was run"
            )


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


# --------------------------------------------------------------------------- launching


def launch(options: SweepOptions, record: SweepRecord, book: SweepBook, jobs: list[Job]) -> int:
    """Start jobs on the chosen engine, recording the attempt in the sweep's record first."""
    if options.print_commands:
        return launch_commands(options, record, book, jobs)
    if options.on == "slurm":
        return launch_slurm(options, record, book, jobs)
    return launch_local(options, record, book, jobs)


def launch_commands(
    options: SweepOptions, record: SweepRecord, book: SweepBook, jobs: list[Job]
) -> int:
    """Record the attempt, then print one shell command per config, for any scheduler."""
    book.change_attempt(record, None, new_attempt("commands", indices=[j.index for j in jobs]))
    if options.store.is_mongo:
        print("# each command reads the store from REPROLAB_MONGO_URL; set it where they run")
    for job in jobs:
        print(shlex.join(redact_argv(["python", *record.child(job, options.store).script_argv()])))
    return ExitCode.OK


def launch_slurm(
    options: SweepOptions, record: SweepRecord, book: SweepBook, jobs: list[Job]
) -> int:
    """Submit one job array of the jobs (submit_recorded), then follow it with --wait."""

    def check(slurm: SlurmOptions) -> None:
        check_devices([record.configs[job.index] for job in jobs], slurm)

    attempt = submit_recorded(
        options,
        record,
        book,
        lambda slurm, folder: submit(record, jobs, options.store, slurm, folder),
        ArrayWords("sweep", f"{len(jobs)} tasks", "(nothing submitted or recorded)"),
        check,
        indices=[job.index for job in jobs],
    )
    return wait(record, options.store, attempt) if options.slurm.wait else ExitCode.OK


@dataclass(frozen=True)
class ArrayWords:
    """What a launcher says of its job array: `noun` ID: submitted ... (`tasks`), and what a
    refusal adds (`refused`)."""

    noun: str
    tasks: str
    refused: str


def submit_recorded(
    options: SweepOptions,
    record: SweepRecord,
    book: SweepBook,
    submit_to: Callable[[SlurmOptions, Path], dict[int, str]],
    words: ArrayWords,
    check: Callable[[SlurmOptions], None] = lambda slurm: None,
    **fields,
) -> dict:
    """Submit one job array (a sweep's configs or a search's workers: submit_to(options, folder)
    gives {index: task id}), recorded before it is submitted (a crash in between leaves a record
    to --resume); a submission sbatch refuses is taken back. The submission as recorded."""
    require_sbatch()  # a resume on a machine without Slurm: nothing recorded
    previous = record.last_attempt("slurm").get("options")
    slurm = SlurmOptions.from_args(options.slurm, previous=previous)
    if previous and previous.get("extra") and not options.slurm.sbatch:
        print(
            "the previous submission's --sbatch options are not taken from the record; give "
            "them again if they are still wanted",
            file=sys.stderr,
        )
    check(slurm)
    folder = book.slurm_folder(record.id)
    attempt = new_attempt("slurm", folder=str(folder), options=slurm.record(), **fields)
    book.change_attempt(record, None, attempt)
    try:
        submitted = submit_to(slurm, folder)
    except ValueError as error:  # sbatch refused it: nothing was submitted, nothing stays recorded
        forget_attempt(record, attempt, book)
        raise ValueError(f"{error} {words.refused}") from None
    attempt = submitted_attempt(record, attempt, submitted, book)
    print(
        f"{words.noun} {record.id}: submitted job array {attempt['job_id']} ({words.tasks}); "
        f"follow it with: reprolab sweep --status {record.id}{options.store.option_text()}",
        file=sys.stderr,
    )
    return attempt


def launch_local(
    options: SweepOptions, record: SweepRecord, book: SweepBook, jobs: list[Job]
) -> int:
    """Run the jobs here, --parallel at a time, each with its share of the cores; each config is
    claimed first (sweeps/claiming.py), so no other launcher starts it too."""
    threads = options.local_threads()
    jobs, names = claim_jobs(options.store, record.id, jobs)
    if not jobs:
        print(
            f"sweep {record.id}: nothing started: every config left to run is held by another "
            f"launcher; run reprolab sweep --resume {record.id}{options.store.option_text()} "
            "again once it has ended",
            file=sys.stderr,
        )
        return ExitCode.FAILED
    book.change_attempt(
        record, None, local_attempt(options.parallel, threads, [job.index for job in jobs])
    )
    runner = ClaimingSweep(record, book, options.store, options.parallel or 1, threads)
    code = runner.hold(names).run(jobs, len(record.attempts))
    if code == ExitCode.OK:
        print(
            f"sweep {record.id}: all {len(jobs)} runs completed; rank them with: reprolab "
            f"compare --sweep {record.id}{options.store.option_text()}",
            file=sys.stderr,
        )
    return code


def require_sbatch() -> None:
    """Refuse a Slurm launch where there is no Slurm, before any submission is recorded."""
    if shutil.which("sbatch") is None:
        raise ValueError(
            "--on slurm: there is no sbatch on PATH (Slurm is not installed here), so nothing "
            "was submitted or recorded"
        )


def submitted_attempt(
    record: SweepRecord, attempt: dict, submitted: dict[int, str], book: SweepBook
) -> dict:
    """The Slurm submission with its task and job ids, saved in place of the one without."""
    task_ids = {str(i): task for i, task in submitted.items()}  # BSON: text keys
    done = {
        **attempt,
        "task_ids": task_ids,
        "job_id": next(iter(task_ids.values()), "").split("_")[0],
    }
    book.change_attempt(record, attempt, done)
    return done


def forget_attempt(record: SweepRecord, attempt: dict, book: SweepBook) -> None:
    """Take back a submission Slurm refused: its files, and the sweep's record if it is new."""
    shutil.rmtree(attempt["folder"], ignore_errors=True)
    book.change_attempt(record, attempt, None)
    if not record.attempts:
        book.delete(record.id)
        shutil.rmtree(book.work_dir(record.id), ignore_errors=True)


# --------------------------------------------------------------------------- resuming


def resume_sweep(options: SweepOptions) -> int:
    """Start what a sweep still lacks: fresh runs for missing or failed configs, continued runs
    for interrupted ones; completed configs and those still running on Slurm are left alone."""
    book = SweepBook(options.store)
    record = book.load(options.resume or "")
    check_named_configs(record, record.experiment_file(options.store))
    for index, config in enumerate(record.configs):
        refuse_chosen_run(record, index, config)
        try:
            config_words(config)  # plain values only, before any run starts
        except ValueError as error:
            raise RecordError(f"sweep {record.id}'s config {index}: {error}") from None
    engines = [a["engine"] for a in record.attempts if a["engine"] in ("local", "slurm")]
    local = record.last_attempt("local")  # the same threads again: bit-exact continuation
    options = options.with_engine(
        on=engines[-1] if engines else "local",
        parallel=local.get("parallel", 1),
        threads=local.get("threads"),
    )
    busy = busy_indices(record)
    attempts = sweep_attempts(options.store, record.id)
    jobs, notes = jobs_to_do(record, attempts, busy)
    for note in notes:
        print(note, file=sys.stderr)
    if not jobs:
        return nothing_to_start(record, attempts)
    print(
        f"sweep {record.id}: {len(jobs)} of {len(record.configs)} configs to run",
        file=sys.stderr,
    )
    return launch(options, record, book, jobs)


def nothing_to_start(record: SweepRecord, attempts: dict) -> int:
    """Exit OK only when every config is completed; else say how many are not, exit FAILED."""
    open_configs = [
        index
        for index in range(len(record.configs))
        if not attempts.get(index) or attempts[index][-1].status != "COMPLETED"
    ]
    if not open_configs:
        print(
            f"sweep {record.id}: nothing to do ({len(record.configs)} configs completed)",
            file=sys.stderr,
        )
        return ExitCode.OK
    print(
        f"sweep {record.id}: nothing started, but {len(open_configs)} of {len(record.configs)} "
        f"configs are not completed (still running elsewhere: config "
        f"{', '.join(map(str, open_configs[:10]))}{', ...' if len(open_configs) > 10 else ''})",
        file=sys.stderr,
    )
    return ExitCode.FAILED


def busy_indices(record: SweepRecord) -> set[int]:
    """Configs whose run may still be going: a live local sweep, or Slurm tasks not yet ended."""
    attempt = (record.attempts or [None])[-1]
    if not attempt:
        return set()
    if attempt["engine"] == "local":
        if attempt.get("host") == socket.gethostname() and pid_alive(attempt.get("pid")):
            raise ValueError(f"sweep {record.id} is still running here (process {attempt['pid']})")
        return set()
    if attempt["engine"] == "slurm":
        states = task_states(attempt)
        return {i for i, state in states.items() if state in ("PENDING", "RUNNING", "REQUEUED")}
    return set()


def pid_alive(pid: object) -> bool:
    """Whether a recorded process id (any value a record holds) is another live process."""
    return type(pid) is int and pid > 0 and pid != os.getpid() and running(pid)


# --------------------------------------------------------------------------- status


def status_command(sweep_id: str, location: StoreLocation) -> int:
    """Each config's latest run and its state in the store and, for a Slurm sweep, in Slurm."""
    book = SweepBook(location)
    record = book.load(sweep_id)
    attempts = sweep_attempts(location, sweep_id)
    slurm: dict[int, str] = {}
    last = (record.attempts or [None])[-1]
    if last and last["engine"] == "slurm":
        slurm = task_states(last)
    varied = varied_keys(record.configs)
    counts: dict[str, int] = {}
    print(
        f"sweep {sweep_id}: {record.experiment}, {len(record.configs)} configs, {record.engines()}"
    )
    header = (
        f"{'config':>6}  {'runs':<10}  {'status':<11}"
        + ("  slurm      " if slurm else "  ")
        + "values"
    )
    print(header)
    for index, config in enumerate(record.configs):
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
    return ExitCode.OK
