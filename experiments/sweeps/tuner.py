"""A search's trials: asked from the Optuna study, run as sweep runs, told back when they end.

A search is a sweep whose configs are chosen as it goes. Its record (sweeps/record.py) keeps
the declaration (`extra.search`) and one config: the fixed values every trial shares. Each
trial is one recorded run started as a sweep run (`record.child`: `--sweep ID:NUMBER --trial`);
its config is the fixed values plus the trial's parameters, which the study holds. A worker asks
the study for a trial, runs it, and tells the study how it ended: COMPLETED with the best value
the run reported, PRUNED, or FAILED; an interrupted run's trial stays RUNNING for --resume to
continue from its checkpoint. The budget is exact with any number of workers: trial numbers are
handed out by the study one by one, and a trial numbered past the budget is told FAIL at once
without running (marked `over_budget`), so only trials 0..N-1 ever run. A trial proposing a
completed trial's parameters is answered from it (marked `same_as`) and not run: every trial
shares one config and seed, so it would be the same run again.

Trials are run by the local engine (sweeps/local.py): `LocalSearch` is `LocalSweep` with the
study as its job source and its teller, so trials start in warm workers where sweep runs do.
A Slurm array task (`search_worker`) is one slot of the same engine, with its own warm server
on its node. A trial left over by a stopped search is claimed before it is continued
(sweeps/claiming.py), by the resuming launcher or on the node, so two resumes at once continue
it once; its run inherits the claim's lock as a sweep run does.
"""

from __future__ import annotations

import math
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from experiments.child import ChildRun
from experiments.sweeps.attempts import CONTINUABLE, Attempt, sweep_attempts
from experiments.sweeps.claiming import ClaimingSweep, claim_jobs
from experiments.sweeps.declare import config_words, describe
from experiments.sweeps.local import STOP_SIGNALS, Running
from experiments.sweeps.record import Job, SweepBook, SweepRecord, refuse_chosen_run
from experiments.sweeps.slurm import submit_array
from experiments.sweeps.space import Search
from observers.exit_codes import ExitCode
from observers.location import StoreLocation
from observers.records import RecordError
from observers.studies import STORAGE_VARIABLE, open_study

OVER_BUDGET = "over_budget"  # user attribute of a trial numbered past the budget (never run)
SAME_AS = "same_as"  # user attribute of a trial answered from an earlier one's (never run)
ENDED = ("COMPLETED", "PRUNED", "FAILED", "DAMAGED")  # a run status that ends its trial


class Tuner:
    """One search's study, and the trials it asks, runs and tells."""

    def __init__(
        self,
        record: SweepRecord,
        location: StoreLocation,
        storage_url: str | None,
        new: bool = False,
    ):
        """The search's study, created when `new` (refused if its storage holds one of that name:
        another store's search with the same id), else loaded (refused if it is missing)."""
        self.record, self.location, self.storage_url = record, location, storage_url
        try:
            self.search = Search.parse(record.extra.get("search"))
        except ValueError as error:
            raise RecordError(f"search {record.id}'s record is damaged: {error}") from None
        refuse_chosen_run(record, 0, record.configs[0])
        self.study = open_study(
            location,
            record.id,
            storage_url,
            new,
            sampler=self.search.make_sampler(),
            pruner=self.search.make_pruner(),
            **({"direction": self.search.direction} if new else {}),
        )
        self.distributions = self.search.distributions()

    # ---------------------------------------------------------------- trials

    def trial(self, number: int):
        """The study's trial `number` as it stands now (a FrozenTrial)."""
        return self.study.get_trials(deepcopy=False)[number]

    def live_trial(self, number: int):
        """Trial `number` as an Optuna Trial, to report to, mark or tell."""
        from optuna.trial import Trial

        return Trial(self.study, self.trial(number)._trial_id)

    def job(
        self, number: int, params: dict, resumes: int | None = None, after: int | None = None
    ) -> Job:
        """What to start for trial `number`: its config, or the continuation of run `resumes`;
        `after`: the trial's latest run when the job was planned (its claim's name)."""
        if resumes is not None:
            return Job(number, [f"resume={resumes}"], resumes=resumes, after=after)
        unknown = sorted(set(params) - set(self.search.space))
        if unknown:  # the study is data: it adds no key the search did not declare
            raise RecordError(
                f"search {self.record.id}'s trial {number} sets {unknown[0]}, which its "
                "space does not declare; nothing was run"
            )
        config = {**self.record.configs[0], **params}
        return Job(number, self.record.named_configs + config_words(config), after=after)

    def ask(self, say=lambda line: None) -> Job | None:
        """A new trial's job, or None once the budget is spent. A trial that proposes a completed
        trial's parameters is answered from it and never run (`answer_from`), and the next one is
        asked: `say` gets a line for each."""
        while len(self.study.get_trials(deepcopy=False)) < self.search.trials:
            trial = self.study.ask(self.distributions)
            if trial.number >= self.search.trials:  # another worker took the last one first
                self.over_budget(trial.number)
                return None
            if not self.answered(trial, say):
                return self.job(trial.number, trial.params)
        return None

    def over_budget(self, number: int) -> None:
        """Mark trial `number`, past the budget, as never run (FAIL); once, whoever marks it."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        try:
            self.live_trial(number).set_user_attr(OVER_BUDGET, True)
        except UpdateFinishedTrialError:
            return  # marked by another process
        self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)

    def answered(self, trial, say) -> bool:
        """Whether `trial` (an Optuna Trial, not run yet) was answered now from a completed trial
        with its parameters (`say` gets the line). Also asked of a trial a stopped search left
        asked, once it is claimed: never of one a live worker is starting."""
        earlier = completed_with(self.study, trial.params)
        if earlier is None or self.trial(trial.number).state.is_finished():
            return False
        answer_from(self.study, trial, earlier)
        say(f"trial {trial.number}: {answer_line(self.trial(trial.number), self.search.metric)}")
        return True

    def left_over_answered(self, job: Job, say) -> bool:
        """`answered` for a left-over trial's job that would start it again (not continue a run)."""
        if job.resumes is not None:
            return False
        return self.answered(self.live_trial(job.index), say)

    def tell(self, number: int, status: str) -> str:
        """Tell the study how trial `number`'s latest run ended; the word to print."""
        from optuna.trial import TrialState

        trial = self.trial(number)
        if trial.state.is_finished():
            return trial.state.name
        if status == "RUNNING" or status in CONTINUABLE:  # RUNNING: its process was killed
            return f"{status} (continue it with --resume)"
        if status == "PRUNED":
            told = self.told(number, TrialState.PRUNED)
            return told or f"PRUNED after epoch {max(trial.intermediate_values, default=0)}"
        values = [v for v in trial.intermediate_values.values() if math.isfinite(v)]
        if status != "COMPLETED" or not values:
            told = self.told(number, TrialState.FAIL)
            return told or (status if status != "COMPLETED" else "FAILED (no metric reported)")
        best = max(values) if self.search.direction == "maximize" else min(values)
        told = self.told(number, TrialState.COMPLETE, best)
        return told or f"COMPLETED {self.search.metric}={best:.4g}"

    def told(self, number: int, state, value: float | None = None) -> str | None:
        """Tell trial `number` it ended in `state`: None, or the state another process (a resume,
        a worker) told it first, which stands."""
        self.study.tell(number, value, state=state, skip_if_finished=True)
        now = self.trial(number)
        ours = now.state == state and (value is None or now.value == value)
        return None if ours else now.state.name

    def child(self, job: Job, **options):
        """The trial's run as the sweep machinery starts it."""
        env = {STORAGE_VARIABLE: self.storage_url} if self.storage_url else {}
        return self.record.child(job, self.location, trial=True, extra_env=env, **options)

    def describe(self, job: Job) -> str:
        if job.resumes is not None:
            return f"continuing run {job.resumes}"
        return describe(self.trial(job.index).params)

    # ---------------------------------------------------------------- resuming

    def unfinished(self, busy: bool = False) -> tuple[list[Job], list[str]]:
        """Jobs for trials left RUNNING by a stopped search (continued from their checkpoint,
        or started again with the same parameters; each to be claimed after its latest run), and
        a line for each; trials whose run ended while nobody listened are told now."""
        from optuna.trial import TrialState

        attempts = sweep_attempts(self.location, self.record.id)
        jobs, notes = [], []
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number >= self.search.trials:  # its worker stopped before marking it
                self.over_budget(trial.number)
                continue
            runs = attempts.get(trial.number) or []
            latest: Attempt | None = runs[-1] if runs else None
            after = latest.run_id if latest is not None else None
            if latest is not None and latest.status in ENDED:
                notes.append(f"trial {trial.number}: {self.tell(trial.number, latest.status)}")
            elif latest is not None and (busy or latest.beating()):
                notes.append(f"trial {trial.number}: run {latest.run_id} is still going")
            elif latest is not None and latest.status in CONTINUABLE and latest.checkpoint:
                notes.append(f"trial {trial.number}: continuing run {latest.run_id}")
                jobs.append(self.job(trial.number, trial.params, latest.run_id, after))
            else:
                notes.append(f"trial {trial.number}: starting it again")
                jobs.append(self.job(trial.number, trial.params, after=after))
        return jobs, notes

    def summary(self, attempts: dict[int, list[Attempt]] | None = None) -> str:
        """One line: trials by state (with `attempts`, a RUNNING trial whose latest run was
        stopped or killed is counted stopped), and the best one."""
        counts: dict[str, int] = {}
        trials = self.study.get_trials(deepcopy=False)
        for trial in trials:
            if trial.user_attrs.get(OVER_BUDGET):
                continue
            state = trial_state(trial, (attempts or {}).get(trial.number)).lower()
            counts[state] = counts.get(state, 0) + 1
        line = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        copies = sum(SAME_AS in t.user_attrs for t in trials)
        line += f" ({copies} answered by an earlier trial, not run)" if copies else ""
        try:
            best = self.study.best_trial
        except ValueError:
            return f"search {self.record.id}: {line}; no trial completed"
        return (
            f"search {self.record.id}: {line}; best trial {best.number}: "
            f"{self.search.metric}={best.value:.4g} ({describe(best.params)})"
        )


def trial_state(trial, runs: list[Attempt] | None) -> str:
    """A trial's state as shown: Optuna's, but STOPPED for a RUNNING trial whose latest run was
    stopped or killed (--resume continues it)."""
    running = trial.state.name == "RUNNING"
    if running and runs and not runs[-1].beating() and runs[-1].status not in ENDED:
        return "STOPPED"
    return trial.state.name


def completed_with(study, params: dict):
    """The first completed trial that ran with these parameters (not one answered), or None."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return next((t for t in done if t.params == params and SAME_AS not in t.user_attrs), None)


def answer_from(study, trial, earlier) -> None:
    """Tell `trial` (an Optuna Trial) the value of `earlier`, a completed trial with the same
    parameters, without running it: every trial of a search shares one config and seed, so the
    same parameters make the same run, bit for bit. Samplers propose a completed config again
    (TPE often does in a discrete space); Optuna's FAQ answers such a trial from the earlier one.
    A pruned config is run again: in another bracket, or against other trials, the same run could
    go on. A trial answered meanwhile by another process keeps its answer."""
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        trial.set_user_attr(SAME_AS, earlier.number)
        study.tell(trial, earlier.value, skip_if_finished=True)
    except UpdateFinishedTrialError:
        pass


def answer_line(trial, metric: str) -> str:
    """What a trial answered from an earlier one came to, in the words of a run's end."""
    return (
        f"COMPLETED {metric}={trial.value:.4g}, as trial {trial.user_attrs[SAME_AS]} "
        "(the same parameters: not run again)"
    )


# --------------------------------------------------------------------------- workers


def run_status(location: StoreLocation, item: Running) -> tuple[str, str]:
    """How a trial's run ended, from its record (its id from the run-id file): (status, run)."""
    from observers.store import open_store

    if not item.id_file.is_file():
        return "FAILED", "?"
    run_id = item.id_file.read_text().strip()
    try:
        status = open_store(location).run(int(run_id)).get("status")
    except (RecordError, ValueError):
        return "FAILED", run_id
    return (status if isinstance(status, str) else "DAMAGED"), run_id


class LocalSearch(ClaimingSweep):
    """A search's worker on the local engine: N trials at a time, each free slot taking the
    left-over trials it is given (claimed: `names`, their runs inherit the claim's lock), then
    asking the study for the next one until the budget is spent, each trial a sweep run (warm
    where it can be) whose end is told to the study. Stop signals stop the running trials as
    INTERRUPTED (with their last checkpoint), to be continued by --resume. One slot and a
    sampler seed ask the same trials."""

    noun, label = "search", "trial"  # logs/trial-N-ATTEMPT.log and .run_id
    trials = True  # the warm workers import optuna: a trial opens its study before its first step

    def __init__(
        self,
        tuner: Tuner,
        book: SweepBook,
        parallel: int,
        threads: int | None,
        names: dict[int, str] | None = None,
        signals: tuple[int, ...] = STOP_SIGNALS,
    ):
        super().__init__(tuner.record, book, tuner.location, parallel, threads, signals)
        self.tuner = tuner
        self.hold(names or {})

    def run(self, jobs: list[Job], attempt: int) -> int:
        code = super().run(jobs, attempt)
        if code != ExitCode.INTERRUPTED:
            self.say(self.tuner.summary().split(": ", 1)[1])
        return code

    def next_job(self) -> Job | None:
        """A left-over trial (claimed already; answered instead where a completed trial had its
        parameters), else a new one, claimed as it is asked."""
        while (job := super().next_job()) is not None:
            if not self.tuner.left_over_answered(job, self.say):
                return job
        while (asked := self.tuner.ask(self.say)) is not None:
            if self.claim(asked):
                return asked
            self.say(f"trial {asked.index}: being started by another launcher; left alone")
        return None

    def child(self, job: Job, id_file: Path | None) -> ChildRun:
        return self.tuner.child(job, threads=self.threads, run_id_file=id_file)

    def not_started(self) -> int:
        """Left-over trials not started, and the trials of the budget not asked yet."""
        trials = self.tuner.study.get_trials(deepcopy=False)
        asked = sum(not trial.user_attrs.get(OVER_BUDGET) for trial in trials)
        return len(self.pending) + max(0, self.tuner.search.trials - asked)

    def started(self, item: Running) -> None:
        self.say(f"trial {item.job.index} started: {self.tuner.describe(item.job)}")

    def progress(self) -> None:
        pass  # each trial's start and end is said instead

    def finish(self, item: Running) -> None:
        super().finish(item)
        status, run_id = run_status(self.location, item)
        self.say(
            f"trial {item.job.index} (run {run_id}): {self.tuner.tell(item.job.index, status)}"
        )


@dataclass
class WorkerTask:
    """One Slurm array task: a worker of the search (no password: MongoDB and a study storage
    URL come from the environment sbatch passes on)."""

    sweep_id: str
    store: str | None  # a folder store's path; None: $REPROLAB_MONGO_URL
    cwd: str
    threads: int
    first: list[tuple[int, int | None, int | None]]  # left over for it: (trial, run to
    # continue or None, the trial's latest run when submitted: the claim's name)


SLURM_STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)  # Slurm's warning, its end


def search_worker(task: WorkerTask) -> int:
    """On a node: one slot of the local engine, as `LocalSearch` runs it here: this worker's
    left-over trials, then new ones until the budget is spent, each in a warm worker on the node
    where it can be. Slurm's warning and SIGTERM stop the running trial as INTERRUPTED, for
    --resume. Its logs are logs/trial-N-(1000 + array task).log, its warm server's
    logs/warm-(1000 + array task).log."""
    os.chdir(task.cwd)
    location = StoreLocation.parse(task.store)
    book = SweepBook(location)
    tuner = Tuner(book.load(task.sweep_id), location, os.environ.get(STORAGE_VARIABLE))
    first = [tuner.job(n, tuner.trial(n).params, run, after) for n, run, after in task.first]
    first, names = claim_jobs(location, task.sweep_id, first, label="trial")
    worker = LocalSearch(tuner, book, 1, task.threads, names, signals=SLURM_STOP_SIGNALS)
    return worker.run(first, 1000 + int(os.environ.get("SLURM_ARRAY_TASK_ID", "0")))


def submit_workers(tuner: Tuner, location: StoreLocation, options, folder: Path, tasks) -> dict:
    """Submit one job array of search workers; {worker index: Slurm task id}."""
    if tuner.storage_url:  # sbatch passes the environment on, never a script
        os.environ[STORAGE_VARIABLE] = tuner.storage_url
    submitted = submit_array(tuner.record.id, location, options, folder, search_worker, tasks)
    return {index: handle.job_id for index, handle in enumerate(submitted)}


def worker_tasks(
    tuner: Tuner, location: StoreLocation, workers: int, threads: int, first: list[Job]
) -> list[WorkerTask]:
    """One task per worker; the left-over trials dealt out in turn."""
    store = None if location.is_mongo else str(location.path)
    return [
        WorkerTask(
            tuner.record.id,
            store,
            os.getcwd(),
            threads,
            [(job.index, job.resumes, job.after) for job in first[index::workers]],
        )
        for index in range(workers)
    ]
