"""`reprolab sweep`'s command line in typed form, parsed and checked once."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, replace

from experiments.child import MAX_THREADS, PROCESSES_PER_CORE, process_bound
from observers.location import StoreLocation

ENGINES = ("local", "slurm")
SLURM_ONLY = ("partition", "time", "cpus", "gpus", "mem", "max_parallel")


@dataclass(frozen=True)
class SlurmArgs:
    """The Slurm options as given (None: not given; on --resume, the last submission's)."""

    partition: str | None = None
    time: str | None = None
    cpus: int | None = None
    gpus: int | None = None
    mem: str | None = None
    max_parallel: int | None = None
    sbatch: tuple[str, ...] = ()
    wait: bool = False

    def given(self) -> list[str]:
        names = [name for name in SLURM_ONLY if getattr(self, name) is not None]
        return names + (["sbatch"] if self.sbatch else [])


@dataclass(frozen=True)
class SearchArgs:
    """A search's options as given (None: not given; the sweep file's or the record's then)."""

    trials: int | None = None
    metric: str | None = None
    direction: str | None = None
    sampler: str | None = None
    sampler_seed: int | None = None
    pruner: str | None = None
    pruner_options: tuple[str, ...] = ()
    storage: str | None = None  # --study-storage: an Optuna database URL

    def given(self) -> bool:
        """Whether any search option was given (then the sweep is a search)."""
        return bool(self.given_flags())

    def given_flags(self) -> list[str]:
        """The search options given, as typed (--study-storage aside: also given on --resume
        and --status, to reach the study)."""
        return [
            "--pruner-option" if name == "pruner_options" else f"--{name.replace('_', '-')}"
            for name, value in vars(self).items()
            if name != "storage" and value not in (None, ())
        ]


@dataclass(frozen=True)
class SweepOptions:
    """What the user asked `reprolab sweep` for; engine options None where not given."""

    store: StoreLocation
    words: tuple[str, ...] = ()
    file: str | None = None
    dry_run: bool = False
    print_commands: bool = False
    resume: str | None = None
    status: str | None = None
    on: str | None = None
    parallel: int | None = None
    threads: int | None = None
    slurm: SlurmArgs = field(default_factory=SlurmArgs)
    search: SearchArgs = field(default_factory=SearchArgs)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SweepOptions:
        slurm = SlurmArgs(
            args.partition,
            args.time,
            args.cpus,
            args.gpus,
            args.mem,
            args.max_parallel,
            tuple(args.sbatch or ()),
            args.wait,
        )
        search = SearchArgs(
            getattr(args, "trials", None),
            getattr(args, "metric", None),
            getattr(args, "direction", None),
            getattr(args, "sampler", None),
            getattr(args, "sampler_seed", None),
            getattr(args, "pruner", None),
            tuple(getattr(args, "pruner_option", None) or ()),
            getattr(args, "study_storage", None),
        )
        return cls(
            StoreLocation.parse(args.store),
            tuple(args.words or ()),
            args.file,
            args.dry_run,
            args.print_commands,
            args.resume,
            args.status,
            args.on,
            args.parallel,
            args.threads,
            slurm,
            search,
        )

    def with_engine(self, on: str | None = None, parallel=None, threads=None) -> SweepOptions:
        """These options with engine settings filled in where the user gave none (--resume:
        as the sweep ran last), then checked: ValueError naming the option."""
        chosen = replace(
            self,
            on=self.on or on or "local",
            parallel=self.parallel if self.parallel is not None else (parallel or 1),
            threads=self.threads if self.threads is not None else threads,
        )
        chosen.check()
        return chosen

    def check_recorded(self) -> None:
        """--resume and --status take the sweep's declaration from its record: ValueError naming
        the first option given that would declare or change it (it would be ignored)."""
        flag = "--resume" if self.resume else "--status"
        declaring = [
            ("an experiment, a sweep file or config values", bool(self.words or self.file)),
            ("--dry-run", self.dry_run),
        ]
        given = [name for name, on in declaring if on] + self.search.given_flags()
        if given:
            raise ValueError(
                f"{flag} takes the sweep as it was recorded, so {given[0]} cannot be given "
                "with it; leave it out"
            )
        if self.status is not None:
            self.refuse_running_options()

    def refuse_running_options(self) -> None:
        """--status only reads: an option that would start or place runs is refused by name."""
        running = [
            ("--resume", self.resume is not None),
            ("--print-commands", self.print_commands),
            ("--on", self.on is not None),
            ("--parallel", self.parallel is not None),
            ("--threads", self.threads is not None),
            ("--wait", self.slurm.wait),
            *((f"--{name.replace('_', '-')}", True) for name in self.slurm.given()),
        ]
        given = [name for name, on in running if on]
        if given:
            raise ValueError(
                f"--status only reads the sweep, so {given[0]} cannot be given with it"
            )

    def check(self) -> None:
        if self.parallel is not None and self.parallel < 1:
            raise ValueError(f"--parallel must be 1 or more, not {self.parallel}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be 1 or more, not {self.threads}")
        if self.threads is not None and self.threads > MAX_THREADS:
            raise ValueError(
                f"--threads {self.threads} is more than the {MAX_THREADS} one run takes"
            )
        if self.parallel is not None and self.parallel > process_bound() and self.on != "slurm":
            raise ValueError(
                f"--parallel {self.parallel} is more than the {process_bound()} runs this "
                f"machine's {os.cpu_count()} cores can hold at once ({PROCESSES_PER_CORE} a core)"
            )
        if self.on == "slurm":
            return
        given = self.slurm.given()
        if "gpus" in given:  # a local sweep hands out no GPUs: its runs all see this machine's
            raise ValueError(
                "--gpus is a Slurm option: a local sweep's runs share the GPUs this "
                "machine shows (device=auto takes the first), so add --on slurm or "
                "leave --gpus out"
            )
        if given:
            raise ValueError(f"--{given[0].replace('_', '-')} is a Slurm option; add --on slurm")

    def local_threads(self) -> int:
        """Torch threads per local run: as given, else the cores shared among parallel runs."""
        return self.threads or max(1, (os.cpu_count() or 1) // (self.parallel or 1))

    @property
    def runs_elsewhere(self) -> bool:
        """Whether the runs start on other machines (Slurm nodes, printed commands)."""
        return self.on == "slurm" or self.print_commands
