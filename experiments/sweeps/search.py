"""`reprolab sweep` for a search: declared like a sweep, recorded like one, run as its trials.

A sweep is a search when it declares a searched key (`'lr=loguniform(1e-4, 1e-1)'`, or a
`search:` block in the sweep file) or a search option (`--trials`, `--pruner`...). Everything is
checked before anything starts (sweeps/space.py for the declaration; the experiment builds the
fixed values with each key's extreme values); then the sweep record is saved with the search in
it, the Optuna study created in the store, and the trials run (sweeps/tuner.py): here with
`--parallel N` workers, or on Slurm as a job array of N workers. `--resume` and `--status` of a
search record come here too; a plain sweep's go on to sweeps/command.py.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

from experiments.sweeps.claiming import claim_jobs
from experiments.sweeps.command import (
    ArrayWords,
    busy_indices,
    check_named_configs,
    declaration_from,
    recorded_where,
    relative_experiment,
    require_sbatch,
    submit_recorded,
    sweep_command,
    validate,
)
from experiments.sweeps.declare import SEED_LIMIT, Declaration, config_words, describe
from experiments.sweeps.options import SearchArgs, SweepOptions
from experiments.sweeps.record import (
    Job,
    SweepBook,
    SweepRecord,
    code_version,
    local_attempt,
    now,
)
from experiments.sweeps.slurm import SlurmOptions, check_devices, follow
from experiments.sweeps.space import Search
from experiments.sweeps.tuner import (
    OVER_BUDGET,
    SAME_AS,
    LocalSearch,
    Tuner,
    submit_workers,
    trial_state,
    worker_tasks,
)
from observers.exit_codes import ExitCode
from observers.location import StoreLocation
from observers.records import RecordError


def sweep_or_search(options: SweepOptions) -> int:
    """`reprolab sweep`: a search when it declares one, else a sweep (sweeps/command.py)."""
    known = options.status or options.resume
    if known:
        options.check_recorded()
        record = SweepBook(options.store).load(known)
        if "search" not in record.extra:
            return sweep_command(options)
        if options.status:
            return search_status(record, options.store)
        return resume_search(options, record)
    declaration = declaration_from(list(options.words), options.file, options.search.given())
    if declaration.search is None and not declaration.space and not options.search.given():
        return sweep_command(options)
    return new_search(options, declaration)


# --------------------------------------------------------------------------- declaring


def search_from(declaration: Declaration, given: SearchArgs) -> Search:
    """The search declared by the file's block, the searched words (a list is categorical) and
    the options, checked: ValueError, one sentence naming the key."""
    if declaration.random:
        raise ValueError("a search chooses its own configs: put random's values under search.space")
    search = Search.from_block(declaration.search or {})
    grid = {key: {"choices": values} for key, values in declaration.grid.items()}
    search.space = {**search.space, **grid, **declaration.space}
    both = sorted(set(search.space) & set(declaration.fixed))
    if both:
        raise ValueError(f"{both[0]} is both fixed and searched; give it once")
    search = search.with_options(
        trials=given.trials,
        metric=given.metric,
        direction=given.direction,
        sampler=given.sampler,
        sampler_seed=given.sampler_seed,
        pruner=given.pruner,
        pruner_options=given.pruner_options,
        storage=given.storage,
    )
    return search.check_declared()


def extreme_configs(base: dict, search: Search) -> list[dict]:
    """The fixed values with every key's first value, then each key's other extremes: the
    configs checked before a search starts (a value the experiment refuses is found here)."""
    first = {
        key: spec["choices"][0] if "choices" in spec else spec["low"]
        for key, spec in search.space.items()
    }
    configs = [{**base, **first}]
    for key, spec in search.space.items():
        for value in spec["choices"][1:] if "choices" in spec else [spec["high"]]:
            configs.append({**base, **first, key: value})
    return configs


def new_search(options: SweepOptions, declaration: Declaration) -> int:
    """Check the search, record it, create its study, and run its trials."""
    search = search_from(declaration, options.search)
    experiment = relative_experiment(declaration.experiment, options.store)  # before it loads
    options = options.with_engine()
    refuse_printing(options)
    base = {**declaration.fixed}
    if "seed" not in search.space:  # one seed for all trials, drawn unless fixed
        base.setdefault("seed", secrets.randbelow(SEED_LIMIT))
    default_seed = base.get("seed")
    configs = extreme_configs(base, search)
    validate(
        declaration.experiment,
        declaration.named_configs,
        configs,
        options.runs_elsewhere,
        search.metric,
    )
    if options.on == "slurm":
        check_devices(configs, SlurmOptions.from_args(options.slurm))
    if options.dry_run:
        print_search(search, base, declaration)
        return ExitCode.OK
    if options.on == "slurm":
        require_sbatch()  # before the search and its study are recorded
    book = SweepBook(options.store)
    record = SweepRecord(
        id=book.new_id(),
        experiment=experiment,
        named_configs=declaration.named_configs,
        configs=[base],
        extra={
            "created": now(),
            "declaration": declaration.record(),
            "search": search.record(),
            "default_seed": default_seed,
            "code": code_version(),
            "store": str(options.store),
        },
    )
    book.save(record)
    try:
        tuner = Tuner(record, options.store, search.storage, new=True)
    except BaseException:  # no study (its storage refused, or holds that id): no record either
        book.delete(record.id)
        raise
    print(
        f"search {record.id}: {search.trials} trials of {', '.join(search.space)}, "
        f"{search.sampler['name']} sampler, {search.pruner['name']} pruner, "
        f"{search.direction} {search.metric}; {recorded_where(options)}",
        file=sys.stderr,
    )
    return launch_search(options, tuner, book, [])


def refuse_printing(options: SweepOptions) -> None:
    if options.print_commands:
        raise ValueError(
            "a search chooses each trial from the ones before it, so it has no commands to "
            "print; run it here (--parallel N) or with --on slurm"
        )


def print_search(search: Search, base: dict, declaration: Declaration) -> None:
    """What --dry-run shows of a search: the space, the budget and the fixed values."""
    for key, spec in search.space.items():
        if "choices" in spec:
            print(f"  {key}: one of {spec['choices']}")
        else:
            scale = " (log)" if spec["log"] else ""
            step = f" step {spec['step']}" if "step" in spec else ""
            print(f"  {key}: {spec['type']} from {spec['low']} to {spec['high']}{scale}{step}")
    named = " ".join(declaration.named_configs)
    print(
        f"{search.trials} trials of {declaration.experiment}, {search.direction} "
        f"{search.metric}; sampler {search.sampler}, pruner {search.pruner}"
        + (f"; named configs: {named}" if named else "")
        + f"; the same in all: {describe(base)}"
    )


# --------------------------------------------------------------------------- launching


def launch_search(options: SweepOptions, tuner: Tuner, book: SweepBook, first: list[Job]) -> int:
    """Run the search's workers on the chosen engine, recording the attempt first."""
    if options.on == "slurm":
        return launch_workers(options, tuner, book, first)
    threads = options.local_threads()
    record = tuner.record
    first, names = claim_jobs(options.store, record.id, first, label="trial")
    book.change_attempt(
        record, None, local_attempt(options.parallel, threads, [job.index for job in first])
    )
    runner = LocalSearch(tuner, book, options.parallel or 1, threads, names)
    code = runner.run(first, len(record.attempts))
    if code == ExitCode.OK:
        print(
            f"search {record.id}: rank the trials with: reprolab compare --sweep "
            f"{record.id}{options.store.option_text()}",
            file=sys.stderr,
        )
    return code


def launch_workers(options: SweepOptions, tuner: Tuner, book: SweepBook, first: list[Job]) -> int:
    """Submit a job array of --parallel workers (submit_recorded), then follow it with --wait."""
    workers, store = options.parallel or 1, options.store

    def submit_to(slurm: SlurmOptions, folder: Path) -> dict[int, str]:
        tasks = worker_tasks(tuner, store, workers, slurm.cpus, first)
        return submit_workers(tuner, store, slurm, folder, tasks)

    attempt = submit_recorded(
        options,
        tuner.record,
        book,
        submit_to,
        ArrayWords("search", f"{workers} workers", "(nothing submitted)"),
        parallel=workers,
        indices=[job.index for job in first],
    )
    if not options.slurm.wait:
        return ExitCode.OK
    states = follow(attempt)
    print(tuner.summary(), file=sys.stderr)
    done = all(state == "COMPLETED" for state in states.values())
    return ExitCode.OK if done else ExitCode.FAILED


# --------------------------------------------------------------------------- resuming


def storage_url(options: SweepOptions, record: SweepRecord) -> str | None:
    """The study's database URL: as given again, or as recorded when it had no password."""
    recorded = (record.extra.get("search") or {}).get("storage")
    if options.search.storage:
        return options.search.storage
    if isinstance(recorded, str) and "***" in recorded:
        raise ValueError(
            f"search {record.id}'s study is in {recorded}; give --study-storage with its "
            "password again"
        )
    return recorded if isinstance(recorded, str) else None


def resume_search(options: SweepOptions, record: SweepRecord) -> int:
    """Continue a stopped search: trials its stop interrupted continue from their checkpoint,
    then new trials until the budget is spent; finished and pruned trials are kept."""
    refuse_printing(options)
    check_named_configs(record, record.experiment_file(options.store))
    try:
        config_words(record.configs[0])  # plain values only, before any run starts
    except ValueError as error:
        raise RecordError(f"search {record.id}'s fixed values: {error}") from None
    if busy_indices(record):
        raise ValueError(f"search {record.id} still has workers on Slurm; let them end first")
    engines = [a["engine"] for a in record.attempts if a["engine"] in ("local", "slurm")]
    last = record.last_attempt(engines[-1]) if engines else {}
    options = options.with_engine(
        on=engines[-1] if engines else "local",
        parallel=last.get("parallel", 1),
        threads=record.last_attempt("local").get("threads"),
    )
    tuner = Tuner(record, options.store, storage_url(options, record))
    first, notes = tuner.unfinished()
    for note in notes:
        print(note, file=sys.stderr)
    counted = [
        t for t in tuner.study.get_trials(deepcopy=False) if not t.user_attrs.get(OVER_BUDGET)
    ]
    if not first and len(counted) >= tuner.search.trials:
        print(f"{tuner.summary()}; nothing to do", file=sys.stderr)
        return ExitCode.OK
    left = tuner.search.trials - len(counted)
    print(
        f"search {record.id}: {len(first)} trial(s) to continue, {left} new",
        file=sys.stderr,
    )
    return launch_search(options, tuner, SweepBook(options.store), first)


# --------------------------------------------------------------------------- status


def search_status(record: SweepRecord, location: StoreLocation) -> int:
    """Each trial: its state in the study, its runs and their status, its value and parameters."""
    from experiments.sweeps.attempts import sweep_attempts

    tuner = Tuner(record, location, storage_url(SweepOptions(location), record))
    attempts = sweep_attempts(location, record.id)
    search = tuner.search
    print(
        f"search {record.id}: {record.experiment}, {search.trials} trials, {search.direction} "
        f"{search.metric}, {record.engines()}"
    )
    print(f"{'trial':>5}  {'state':<8}  {'runs':<10}  {'run':<11}  {'value':<26}  parameters")
    for trial in tuner.study.get_trials(deepcopy=False):
        if trial.user_attrs.get(OVER_BUDGET):
            continue
        runs = attempts.get(trial.number) or []
        ids = ",".join(str(r.run_id) for r in runs) or copied_from(trial)
        status = runs[-1].status if runs else "-"
        state = trial_state(trial, runs)
        line = f"{trial.number:>5}  {state:<8}  {ids:<10}  {status:<11}  "
        line += f"{trial_value(trial):<26}  "
        print((line + describe(trial.params))[:120])
    print(tuner.summary(attempts))
    return ExitCode.OK


def copied_from(trial) -> str:
    """'as 4' for a trial answered from trial 4 (it has no run of its own), else '-'."""
    return f"as {trial.user_attrs[SAME_AS]}" if SAME_AS in trial.user_attrs else "-"


def trial_value(trial) -> str:
    """A finished trial's value as the study holds it: a completed trial's best reported value;
    a pruned trial's value at pruning (Optuna keeps its last reported one), said so."""
    from optuna.trial import TrialState

    if trial.value is None:
        return "-"
    if trial.state == TrialState.PRUNED and trial.last_step is not None:
        return f"{trial.value:.4g} pruned at epoch {trial.last_step}"
    return f"{trial.value:.4g}"
