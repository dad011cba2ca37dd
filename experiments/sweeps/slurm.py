"""A sweep on Slurm: one job array submitted through submitit, one config per task.

Each task runs the experiment in its own process on the node, recording into the sweep's store
(a file store on a shared file system, or MongoDB through REPROLAB_MONGO_URL, which sbatch
passes on from the submitting shell). Slurm's warning before a kill (submitit asks for USR2 a
while before the time limit; USR1 if given with --signal) and its SIGTERM both end the run as
INTERRUPTED with its last checkpoint, which `reprolab sweep --resume` continues.
"""

from __future__ import annotations

import os
import re
import runpy
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from experiments.sweeps.attempts import sweep_attempts
from experiments.sweeps.claiming import claim_jobs
from experiments.sweeps.options import SlurmArgs
from experiments.sweeps.record import Job, SweepRecord
from observers.exit_codes import ExitCode
from observers.location import StoreLocation
from observers.store import RecordError

TIME = re.compile(r"^(?:(?P<days>\d+)-)?(?:(?P<h>\d+):)?(?P<m>\d+)(?::(?P<s>\d+))?$")
ENDED = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "PREEMPTED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
)
SACCT_TIMEOUT_S = 30
SLURM_WORD = re.compile(r"[A-Za-z0-9_.,:+-]*")  # a partition or memory size: no space, no newline
GPU_OPTIONS = ("gres", "gpus", "gpus-per-node", "gpus-per-task")  # sbatch's ways to ask for GPUs
NAMED_OPTIONS = {"time": "time", "cpus-per-task": "cpus", "partition": "partition", "mem": "mem"}
RESERVED_OPTIONS = (  # what submitit and the sweep set themselves: the task array, one process
    # per task (two would run the config twice), the USR2 ahead of the time limit that ends a run
    # INTERRUPTED, the log paths --wait names, the environment that carries the store
    "array",
    "nodes",
    "ntasks",
    "ntasks-per-node",
    "signal",
    "output",
    "error",
    "job-name",
    "open-mode",
    "wrap",
    "parsable",
    "export",
)


@dataclass
class SlurmOptions:
    """The sbatch options a sweep asks for; `extra` holds any other sbatch option."""

    partition: str | None = None
    time_min: int = 60
    cpus: int = 1
    gpus: int | None = None
    mem: str | None = None
    max_parallel: int | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: SlurmArgs, previous: dict | None = None) -> SlurmOptions:
        """The options given; those not given are the previous submission's (on --resume),
        except its extra sbatch options, which are given again or not at all."""
        before = cls.recorded(previous) if previous else cls()
        extra = {}
        for item in args.sbatch:
            key, equals, value = item.partition("=")
            key = key.strip().lstrip("-")
            if not key:
                raise ValueError(
                    f"--sbatch '{item}': give an sbatch option as KEY=VALUE, e.g. account=proj"
                )
            refuse_reserved(key)
            extra[key] = value if equals else True
        asked = [key for key in extra if key.replace("_", "-") in GPU_OPTIONS]
        if args.gpus is not None and asked:
            raise ValueError(f"--gpus and --sbatch {asked[0]}=... both ask for GPUs; give one")
        for name, value in (
            ("cpus", args.cpus),
            ("gpus", args.gpus),
            ("max-parallel", args.max_parallel),
        ):
            if value is not None and value < (0 if name == "gpus" else 1):
                raise ValueError(
                    f"--{name} must be {'0' if name == 'gpus' else '1'} or more, not {value}"
                )

        def given(value, old):
            return old if value is None else value

        return cls(
            partition=given(args.partition, before.partition),
            time_min=minutes(args.time) if args.time else before.time_min,
            cpus=given(args.cpus, before.cpus),
            gpus=given(args.gpus, before.gpus),
            mem=given(args.mem, before.mem),
            max_parallel=given(args.max_parallel, before.max_parallel),
            extra=extra,
        )

    @classmethod
    def recorded(cls, previous: dict) -> SlurmOptions:
        """A previous submission's options read back from the sweep's record, which someone else
        may have written: only fields of the right kind, text that cannot add a line to the job
        script, and no extra sbatch options (an --export or --chdir from a record could make the
        node run code): RecordError naming the field."""
        kinds = {
            "partition": str,
            "time_min": int,
            "cpus": int,
            "gpus": int,
            "mem": str,
            "max_parallel": int,
            "extra": dict,
        }
        for name, value in previous.items():
            kind = kinds.get(name)
            optional = name in ("partition", "gpus", "mem", "max_parallel")
            if (
                kind is None
                or (value is None and not optional)
                or (value is not None and (not isinstance(value, kind) or isinstance(value, bool)))
            ):
                raise RecordError(
                    f"the sweep's recorded Slurm option {name!r} is not one it records"
                )
            if kind is str and value is not None and not SLURM_WORD.fullmatch(value):
                raise RecordError(
                    f"the sweep's recorded Slurm option {name}={value!r} is not a "
                    "plain word, so it was not passed to sbatch"
                )
        return cls(**{name: value for name, value in previous.items() if name != "extra"})

    def record(self) -> dict:
        return asdict(self)


def minutes(text: str) -> int:
    """Slurm's time formats (MM, HH:MM:SS, D-HH:MM...) in whole minutes, at least 1."""
    match = TIME.match(str(text).strip())
    if not match:
        raise ValueError(f"--time '{text}' is not a Slurm time (minutes, HH:MM:SS or D-HH:MM:SS)")
    days, hours, mins, secs = (int(match[g] or 0) for g in ("days", "h", "m", "s"))
    if match["h"] is None and match["s"] is not None:  # MM:SS
        hours, mins, secs = 0, mins, secs
    return max(1, days * 1440 + hours * 60 + mins + (secs + 59) // 60)


@dataclass
class Task:
    """One config's run, as the node runs it (no password: MongoDB comes from the environment).
    The task claims its config when it starts, as a local launcher does before it starts a run:
    a config submitted twice (a resume while the first task still waited in the queue) runs once."""

    argv: list[str]
    threads: int
    cwd: str
    sweep: str
    index: int
    after: int | None  # the config's latest run when the task was submitted
    store: str | None  # the file store's folder; None: MongoDB, from the environment


def slurm_task(task: Task) -> int:
    """What submitit runs on a node: run_task, whose failure is the task's (a task that returned
    its run's exit code as a value ended COMPLETED in Slurm, sacct and --wait's count)."""
    code = run_task(task)
    if code != ExitCode.OK:
        raise SystemExit(code)  # not an Exception: submitit lets it end the process with it
    return code


def run_task(task: Task) -> int:
    """On the node: claim the config, then run the experiment in this process (the claim's
    holder); its exit code (0: completed, or left to the launcher that holds the config)."""
    os.chdir(task.cwd)
    if not claim_task(task):
        return ExitCode.OK
    import torch

    torch.set_num_threads(task.threads)
    stop = lambda signum, frame: os.kill(os.getpid(), signal.SIGTERM)  # noqa: E731
    for name in ("SIGUSR1", "SIGUSR2"):  # Slurm's warning before the kill: stop as SIGTERM does
        signal.signal(getattr(signal, name), stop)
    sys.argv = list(task.argv)
    try:
        runpy.run_path(task.argv[0], run_name="__main__")
    except SystemExit as exit_:
        if isinstance(exit_.code, int):
            return exit_.code
        return ExitCode.OK if exit_.code is None else ExitCode.FAILED
    return ExitCode.OK


def refuse_reserved(key: str) -> None:
    """An --sbatch option the sweep sets itself, or has an option of its own for, is refused."""
    name = key.replace("_", "-")
    if name in NAMED_OPTIONS:
        raise ValueError(f"--sbatch {key}=...: give it as --{NAMED_OPTIONS[name]}")
    if name in RESERVED_OPTIONS:
        raise ValueError(f"--sbatch {key}=...: the sweep sets sbatch's --{name} itself")


def claim_task(task: Task) -> bool:
    """Whether this task may run its config: claimed here, and not run since it was submitted."""
    location = StoreLocation.parse(task.store)  # None: REPROLAB_MONGO_URL, as the run reads it
    job = Job(task.index, [], after=task.after)
    claimed, _ = claim_jobs(location, task.sweep, [job])
    return bool(claimed)


def executor_parameters(sweep_id: str, options: SlurmOptions) -> dict:
    """submitit's SlurmExecutor parameters: each array task is one run with the options' CPUs and
    GPUs. GPUs are asked as gres gpu:N, which every Slurm with GPUs knows; Slurm then sets the
    task's CUDA_VISIBLE_DEVICES, so the run's device=auto (cuda:0) is the task's first GPU."""
    parameters = {
        "job_name": f"sweep-{sweep_id}",
        "time": options.time_min,
        "cpus_per_task": options.cpus,
        "additional_parameters": dict(options.extra),
    }
    if options.partition:
        parameters["partition"] = options.partition
    if options.gpus:
        parameters["gres"] = f"gpu:{options.gpus}"
    if options.mem:
        parameters["mem"] = options.mem
    if options.max_parallel:
        parameters["array_parallelism"] = options.max_parallel
    return parameters


def check_devices(configs: list[dict], options: SlurmOptions) -> None:
    """A config that names a CUDA device needs that many GPUs per task: refused before submitting."""
    for index, config in enumerate(configs):
        device = str(config.get("device", ""))
        if not device.startswith("cuda"):
            continue
        wanted = int(device.partition(":")[2] or 0) + 1
        if (options.gpus or 0) < wanted:
            raise ValueError(
                f"config {index} (device={device}) needs {wanted} GPU(s) per task: "
                f"add --gpus {wanted}"
            )


def submit(
    record: SweepRecord,
    jobs: list[Job],
    location: StoreLocation,
    options: SlurmOptions,
    folder: Path,
) -> dict[int, str]:
    """Submit one job array; {config index: Slurm task id}."""
    tasks = [task_of(record, job, location, options.cpus) for job in jobs]
    submitted = submit_array(record.id, location, options, folder, slurm_task, tasks)
    return {job.index: handle.job_id for job, handle in zip(jobs, submitted)}


def task_of(record: SweepRecord, job: Job, location: StoreLocation, cpus: int) -> Task:
    """The task that runs one job on a node, recording into location."""
    return Task(
        record.child(job, location).script_argv(),
        cpus,
        os.getcwd(),
        record.id,
        job.index,
        job.after,
        None if location.is_mongo else str(location.path),
    )


def submit_array(
    sweep_id: str, location: StoreLocation, options: SlurmOptions, folder: Path, function, tasks
) -> list:
    """One job array of function over tasks, through submitit; sbatch's refusal is one sentence.
    The store travels in the environment sbatch passes on, never in a job script."""
    import submitit

    os.environ.update(location.child_env())
    executor = submitit.SlurmExecutor(folder=str(folder))
    executor.update_parameters(**executor_parameters(sweep_id, options))
    try:
        return executor.map_array(function, tasks)
    except Exception as error:  # noqa: BLE001 - sbatch's refusal, in one sentence
        message = str(error).strip().splitlines()
        raise ValueError(
            f"Slurm refused the job array: {message[-1] if message else error}"
        ) from None


def task_states(attempt: dict) -> dict[int, str]:
    """{config index: Slurm state} of an attempt's tasks, from sacct; {} when Slurm cannot say."""
    job_id = attempt.get("job_id")
    if not job_id:
        return {}
    try:
        result = subprocess.run(
            ["sacct", "-j", str(job_id), "-n", "-P", "-X", "-o", "JobID,State"],
            capture_output=True,
            text=True,
            timeout=SACCT_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    by_task = {}
    for line in result.stdout.splitlines():
        task, _, state = line.partition("|")
        state = state.split()[0] if state.strip() else "UNKNOWN"  # "CANCELLED by 0"
        for task_id in expand_array(task):
            by_task[task_id] = state
    return {
        int(index): by_task[task]
        for index, task in (attempt.get("task_ids") or {}).items()
        if task in by_task
    }


def expand_array(task: str) -> list[str]:
    """'12_[0-2,5%2]' -> 12_0 12_1 12_2 12_5; '12_3' stays as it is."""
    match = re.match(r"^(\d+)_\[([^\]]*)\]$", task)
    if not match:
        return [task]
    ids = []
    for part in match[2].split("%")[0].split(","):
        low, _, high = part.partition("-")
        ids += [f"{match[1]}_{i}" for i in range(int(low), int(high or low) + 1)]
    return ids


def follow(
    attempt: dict, progress: Callable[[dict[int, str]], None] | None = None, poll_s: float = 1.0
) -> dict[int, str]:
    """Poll sacct (the only way to know) until every task of a submission has ended, giving
    progress each answer; {index: state} at the end."""
    indices = [int(i) for i in attempt["task_ids"]]
    while True:
        states = task_states(attempt)
        if progress is not None:
            progress(states)
        if all(states.get(i) in ENDED for i in indices):
            return states
        time.sleep(poll_s)


def wait(record: SweepRecord, location: StoreLocation, attempt: dict, poll_s: float = 1.0) -> int:
    """Follow the array until every task has ended, printing progress; 0 when all completed."""
    indices = [int(i) for i in attempt["task_ids"]]
    said: list[str] = []

    def progress(states: dict[int, str]) -> None:
        ended = [i for i in indices if states.get(i) in ENDED]
        running = sum(states.get(i) == "RUNNING" for i in indices)
        failed = sum(states.get(i) not in (None, "COMPLETED") for i in ended)
        line = (
            f"sweep {record.id}: {len(ended) - failed} done, {running} running, "
            f"{failed} failed, {len(indices) - len(ended) - running} left"
        )
        if line not in said[-1:]:
            print(line, file=sys.stderr, flush=True)
            said.append(line)

    states = follow(attempt, progress, poll_s)
    attempts = sweep_attempts(location, record.id)
    incomplete = [
        i for i in indices if not attempts.get(i) or attempts[i][-1].status != "COMPLETED"
    ]
    task_ids = {int(index): task for index, task in attempt["task_ids"].items()}
    for index in incomplete:
        runs = attempts.get(index) or []
        what = f"run {runs[-1].run_id} {runs[-1].status}" if runs else "no run recorded"
        log = Path(attempt["folder"]) / f"{task_ids[index]}_0_log.err"
        print(f"config {index}: {what} (Slurm: {states.get(index)}; log: {log})", file=sys.stderr)
    return ExitCode.FAILED if incomplete else ExitCode.OK
