"""A Sacred Experiment that records into the project's stores and refuses bad config before a run starts."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable

from sacred import SETTINGS
from sacred.utils import ConfigAddedError, apply_backspaces_and_linefeeds, iterate_flattened

from experiments import distributed
from experiments.config_input import (
    ConfigInputError,
    check_command_line,
    check_sections,
    check_value,
    read_data_file,
)
from experiments.loop import Terminated
from experiments.membership import check_membership, label_run, sweep_option
from experiments.resume import ResumePoint, load_resume_point, resumed_config
from experiments.sacred_private import PlainExperiment, RecordedRun, run_id
from experiments.signals import interrupts_handled
from experiments.sources import record_sources
from experiments.strict_config import (
    ConfigurationError,
    check_named_configs,
    check_updates,
    drop_docstrings,
    inside_free_form,
    keys_set_by,
    unknown_key_message,
)
from experiments.trial import Pruned, trial_option
from ingredients.checkout import CHECKOUT_ROOT
from ingredients.imports import FROM_RECORD
from ingredients.processes import this_process
from ingredients.schema import INSPECTION_COMMANDS, check_storable
from observers.attach import choose_store, store_option
from observers.exit_codes import ExitCode
from observers.files import StoreWriteError
from observers.location import MONGO_URL_VARIABLE, StoreLocation
from observers.store import RecordError

# "sys" capture keeps the real terminal visible to tqdm (fd capture hides it behind a pipe).
SETTINGS.CAPTURE_MODE = "sys"


class CurrentStderrHandler(logging.StreamHandler):
    """Logs to whatever sys.stderr is at the moment, so Sacred's "sys" capture records log lines."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def make_logger() -> logging.Logger:
    handler = CurrentStderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s - %(name)s - %(message)s"))
    # Sacred takes a named config's docstring for a new key and warns about it on every run.
    handler.addFilter(lambda record: 'new config entry: "__doc__"' not in record.getMessage())
    logger = logging.getLogger("reprolab")
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def say_once(line: str) -> None:
    """Print a refusal on stderr, once per torchrun job (rank 0 says it for every rank)."""
    if distributed.job().is_main:
        print(line, file=sys.stderr)


class ReproExperiment(PlainExperiment):
    """Experiment with the project's defaults: sources from the whole repository, the default
    store, progress bars filtered from captured output, and strict config keys."""

    # The metrics a run logs each epoch, given its config: a search's metric is checked against
    # them before any trial starts (None: the experiment does not say; its trials check it).
    epoch_metrics: Callable[[dict], tuple[str, ...]] | None = None

    def __init__(self, name: str, ingredients=(), caller_globals: dict | None = None):
        # The caller's globals name the main file (Sacred would scan every loaded module for
        # them). Sources and their git state are gathered once, when a run is created.
        super().__init__(
            name,
            ingredients,
            str(CHECKOUT_ROOT),
            caller_globals or sys._getframe(1).f_globals,
            [store_option, sweep_option, trial_option],
        )
        self.option_hook(choose_store)
        self.captured_out_filter = apply_backspaces_and_linefeeds
        self.logger = make_logger()
        self._from_commandline = False

    def run_commandline(self, argv=None):
        self._from_commandline = True
        own_argv = argv is None
        argv = sys.argv if argv is None else argv
        try:
            check_command_line(list(argv))  # before Sacred parses a value or opens a file
            check_updates(argv)
        except (ConfigurationError, ConfigInputError) as error:
            say_once(f"error: {error}")
            sys.exit(ExitCode.USAGE)
        try:
            return super().run_commandline(argv)
        finally:  # the run is recorded and said: a late signal must not add a traceback
            self._from_commandline = False
            if own_argv:  # the process's own command line: it only exits from here
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_IGN)

    def run(self, *args, **kwargs):
        level = self.logger.level  # Sacred's --loglevel sets it for good; it is for this run only
        try:
            with interrupts_handled():
                return super().run(*args, **kwargs)
        except ConfigurationError as error:
            if not self._from_commandline:
                raise
            say_once(f"error: {error}")
            sys.exit(ExitCode.USAGE)
        except StoreWriteError as error:
            if not self._from_commandline:
                raise
            print(f"error: {self._store_failure_message(error)}", file=sys.stderr)
            sys.exit(ExitCode.FAILED)
        except Pruned as pruned:  # a search's trial stopped by its pruner: an expected end
            if not self._from_commandline:
                raise
            number = None if self.current_run is None else run_id(self.current_run)
            print(f"run {number} {pruned}: recorded as PRUNED", file=sys.stderr)
            sys.exit(ExitCode.OK)
        except KeyboardInterrupt as stop:  # Terminated (SIGTERM) too
            if not self._from_commandline:
                raise
            print(self._interrupted_message(), file=sys.stderr)
            sys.exit(ExitCode.TERMINATED if isinstance(stop, Terminated) else ExitCode.INTERRUPTED)
        finally:
            self.logger.setLevel(level)

    def get_experiment_info(self):
        info = super().get_experiment_info()
        unique = {tuple(sorted(r.items())): r for r in info.get("repositories") or []}
        info["repositories"] = list(unique.values())  # Sacred lists the repository once per file
        return info

    def build_run(self, command_name, config_updates, named_configs, info, meta_info, options):
        """Build the run; any config problem becomes one ConfigurationError, before observers start."""
        command_name = command_name or self.default_command
        self.resume_point: ResumePoint | None = None
        FROM_RECORD.clear()  # set again by _resume for this run
        try:
            check_named_configs(self, named_configs)
            for key, value in (config_updates or {}).items():  # before Sacred walks them
                check_storable(str(key), value)
                check_value(str(key), value)  # object encodings, sizes, passwords
            check_sections(config_updates, {ing.path for ing, _ in self.traverse_ingredients()})
            config_updates = self._job_seed(command_name, config_updates, named_configs)
            run = self.sacred_run(
                command_name, config_updates, named_configs, info, meta_info, options
            )
            if run.config.get("resume") is not None:  # given directly or in a config file
                config_updates = self._resume(
                    command_name, config_updates or {}, named_configs, options, requested=run.config
                )
                run = self.sacred_run(
                    command_name, config_updates, named_configs, info, meta_info, options
                )
            check_membership(run)
        except ConfigAddedError as error:
            raise ConfigurationError(
                unknown_key_message(self, next(iter(error.__conflicting_configs__)))
            ) from None
        except (ValueError, FileNotFoundError, RecordError) as error:
            raise ConfigurationError(str(error)) from None
        added = sorted(k for k in run.config_modifications.added if not k.endswith("__doc__"))
        if added:
            added = [k for k in added if not inside_free_form(run, k)]
        if added:  # Sacred only warns about a new key that some captured function could take
            self.current_run = None
            raise ConfigurationError(unknown_key_message(self, added[0]))
        drop_docstrings(run.config)  # a named config's docstring is no setting
        record_sources(self, run)
        run.meta_info["process"] = this_process()  # readers tell a dead run by it (liveness.py)
        run.__class__ = RecordedRun  # Sacred builds a plain Run; this one never loses a record
        distributed.prepare_run(run)  # under torchrun only rank 0 records the run
        label_run(run.meta_info)  # notes and tags Omniboard shows: sweep, study, torchrun
        if self.resume_point is not None:
            run.info["resumed_from"] = self.resume_point.record()
        return run

    def _job_seed(self, command_name, config_updates, named_configs) -> dict | None:
        """Under torchrun with no seed given, the seed rank 0 drew for the whole job (Sacred
        would draw one per rank, and the ranks would shuffle differently)."""
        if not distributed.job().distributed or command_name in INSPECTION_COMMANDS:
            return config_updates
        decided = {"seed", "resume"}  # given, or a resumed run's checkpoint holds it
        files = [read_data_file(name) for name in named_configs if os.path.isfile(name)]
        if any(decided & set(c) for c in [config_updates or {}, *files] if isinstance(c, dict)):
            return config_updates
        return {**(config_updates or {}), "seed": distributed.share_seed()}

    def _resume(
        self, command_name: str, config_updates: dict, named_configs, options, requested: dict
    ) -> dict:
        """Load the checkpoint named by `resume` and return the config that continues it."""
        chosen = {**self.get_default_options(), **(options or {})}
        choose_store(chosen)
        try:
            self.resume_point = load_resume_point(requested["resume"], chosen.get("--store"))
        except (RecordError, ValueError) as error:
            raise ConfigurationError(f"resume: {error}") from None
        touched = {key for key, _ in iterate_flattened(config_updates)}
        touched |= keys_set_by(self, named_configs, command_name)
        config = resumed_config(self.resume_point, requested, touched)
        FROM_RECORD.update(
            {  # the checkpoint chose these: installed code only if the user says so
                key: f"name it yourself to run it: with resume={requested['resume']} {key}={value}"
                for key, value in iterate_flattened(config)
                if key not in touched
            }
        )
        return config

    def _interrupted_message(self) -> str:
        """One line: which run stopped, its last checkpoint, and how to continue it."""
        run = self.current_run
        if not distributed.job().is_main:
            return f"rank {distributed.job().rank} stopped; rank 0 records the run"
        number = None if run is None else run_id(run)
        if run is None or run.status != "INTERRUPTED" or number is None:
            return "interrupted before the run started; nothing was recorded"
        last = (run.info.get("checkpoints") or {}).get("last.pt")
        if last is None:
            return f"run {number} interrupted before it finished an epoch; no checkpoint to resume"
        given = run.meta_info.get("options", {}).get("--store")
        store = StoreLocation.parse(given)
        # the same default applies again when the command is typed as printed
        from_default = store.is_default or (
            store.is_mongo and bool(os.environ.get(MONGO_URL_VARIABLE))
        )
        where = (
            "" if from_default else (" -R <your MongoDB URL>" if store.is_mongo else f" -R {store}")
        )
        return (
            f"run {number} interrupted after epoch {last['epoch']}; continue it with: "
            f"{distributed.relaunch_prefix(sys.argv[0])}{where} with resume={number}"
        )

    def _store_failure_message(self, error: StoreWriteError) -> str:
        """One sentence: the first write that failed, and what became of the run's record."""
        run = self.current_run
        first = getattr(run, "store_failure", None) or error
        number = None if run is None else run_id(run)
        if run is None or number is None:
            return f"{first}; the run could not start"
        if run.status_failure is not None:
            return (
                f"{first}; run {number} stopped, and its status could not be written either "
                f"({run.status_failure.cause}), so its record still says RUNNING"
            )
        return f"{first}; run {number} stopped and is recorded as FAILED"
