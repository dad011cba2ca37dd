"""Every use of Sacred's private API, in this one module (Sacred 0.8.7; `<0.9` is pinned).

What reprolab needs that Sacred offers no public way to do: a Run whose record is never silently
incomplete (its `_emit_*`, `_safe_call`, `_final_call` and heartbeat hooks), an Experiment built
without `inspect.stack()` (the constructor re-done with the caller's globals) and checked before
its observers start (`_create_run`), and Sacred's own parser for `with key=value` words
(`sacred.arg_parser._convert_value`). tests/experiments/test_sacred_private.py fails, naming
the hook, when an installed Sacred no longer has one of HOOKS. (Ingredient modules pass their
globals as `Ingredient(..., _caller_globals=globals())` for the same start-up reason; floor 1
cannot import this module, so the test checks that keyword too.)
"""

from __future__ import annotations

import datetime
import threading
import traceback

from sacred import Experiment
from sacred.arg_parser import _convert_value
from sacred.commands import print_config, print_dependencies, print_named_configs, save_config
from sacred.experiment import gather_command_line_options
from sacred.ingredient import Ingredient
from sacred.run import Run

from experiments.signals import INTERRUPTS
from observers.files import StoreWriteError

# The private names this module overrides or calls, by the Sacred class (or module) that has them.
HOOKS = {
    Run: (
        "_emit_heartbeat",
        "_stop_heartbeat",
        "_emit_started",
        "_safe_call",
        "_final_call",
        "_warn_about_failed_observers",
        "_emit_completed",
        "_emit_interrupted",
        "_emit_failed",
        "_stop_time",
        "_heartbeat",
        "_failed_observers",
        "_id",
    ),
    Experiment: ("_create_run",),
}


def convert_value(text: str):
    """A `with key=value` word's value as Sacred would parse it."""
    return _convert_value(text)


def run_id(run: Run) -> int | None:
    """The id a store gave the run (None before it started or when unobserved)."""
    return run._id


def emit_heartbeat(run: Run) -> None:
    """Write the run's info and new metrics out now (otherwise every 10 s)."""
    run._emit_heartbeat()


def create_unstarted_run(ex: Experiment, config_updates: dict, named_configs: list[str]) -> Run:
    """Build a run of ex with its config checked, recording nothing and starting nothing."""
    try:
        return ex._create_run(
            config_updates=config_updates,
            named_configs=named_configs,
            options={"--unobserved": True},
        )
    finally:
        ex.current_run = None


class PlainExperiment(Experiment):
    """Sacred's Experiment built from the caller's globals (Sacred 0.8.7's constructor calls
    inspect.stack(), which scans every loaded module: half a second with torch loaded), whose
    run creation goes through `build_run`, the public seam subclasses override."""

    def __init__(self, name: str, ingredients, base_dir: str, caller_globals: dict, cli_options):
        self.additional_host_info = []
        self.additional_cli_options = list(cli_options)
        self.all_cli_options = gather_command_line_options() + self.additional_cli_options
        Ingredient.__init__(
            self,
            path=name,
            ingredients=list(ingredients),
            base_dir=base_dir,
            _caller_globals=caller_globals,
            save_git_info=False,
        )
        self.default_command = None
        for command in (print_config, print_dependencies, save_config, print_named_configs(self)):
            self.command(command, unobserved=True)
        self.observers, self.current_run, self.option_hooks = [], None, []

    def _create_run(
        self,
        command_name=None,
        config_updates=None,
        named_configs=(),
        info=None,
        meta_info=None,
        options=None,
    ):
        return self.build_run(command_name, config_updates, named_configs, info, meta_info, options)

    def build_run(self, command_name, config_updates, named_configs, info, meta_info, options):
        """Build a run (Sacred's own way); subclasses check and extend it."""
        return self.sacred_run(
            command_name, config_updates, named_configs, info, meta_info, options
        )

    def sacred_run(self, command_name, config_updates, named_configs, info, meta_info, options):
        return super()._create_run(
            command_name, config_updates, named_configs, info, meta_info, options
        )


class RecordedRun(Run):
    """Sacred's Run, where the record is never silently incomplete and a signal always ends the
    run as INTERRUPTED: the first write of the record that fails (Sacred would only warn) stops
    the run as FAILED; observers reach their servers before the start (a signal stops that),
    the start itself is not cut by a signal, and a signal during the end is ignored."""

    store_failure: StoreWriteError | None = None  # the first write that failed
    status_failure: StoreWriteError | None = None  # the final status could not be written
    _thread: threading.Thread | None = None
    # Sacred's heartbeat thread, its final beat and a checkpoint's beat would otherwise drain the
    # metrics queue at once and append their halves to the journal in either order.
    _beating = threading.RLock()

    def _emit_heartbeat(self):
        with self._beating:
            super()._emit_heartbeat()

    def _stop_heartbeat(self):
        super()._stop_heartbeat()  # waits 2 s for the thread's final beat, which may append the
        if self._heartbeat is not None:  # last metrics: the end must not seal the record before
            self._heartbeat.join()

    def _emit_started(self):
        self._thread, self.start_time = threading.current_thread(), datetime.datetime.utcnow()
        for observer in self.observers:  # may take seconds (a server away): a signal stops it
            getattr(observer, "connect", lambda: None)()
        with INTERRUPTS.deferred():
            try:
                super()._emit_started()
            except StoreWriteError as error:
                self.store_failure = error
                raise

    def _safe_call(self, obs, method, **kwargs):
        if obs in self._failed_observers:
            return
        try:
            getattr(obs, method)(**kwargs)
        except StoreWriteError as error:
            self._failed_observers.append(obs)
            self._stop(error)
        except Exception as error:  # as Sacred does: a warning, the observer is left out after
            self._failed_observers.append(obs)
            self.run_logger.warning("An error occurred in the '%s' observer: %s", obs, error)

    def _stop(self, error: StoreWriteError) -> None:
        """End the run with the first failed write: here at once, from another thread soon."""
        self.store_failure = self.store_failure or error
        if threading.current_thread() is (self._thread or threading.main_thread()):
            raise self.store_failure
        INTERRUPTS.stop_with(self.store_failure)

    def _final_call(self, observer, method, **kwargs):
        try:
            getattr(observer, method)(**kwargs)
        except StoreWriteError as error:
            self.status_failure = error
        except Exception:
            self.run_logger.error(traceback.format_exc())

    def _warn_about_failed_observers(self):
        if self.store_failure is None:  # else its one sentence says it all
            super()._warn_about_failed_observers()

    def _emit_completed(self, result):
        """COMPLETED only when every write, the last heartbeat's too, went through."""
        if self.store_failure is None:
            with INTERRUPTS.closed():
                super()._emit_completed(result)
            self.store_failure = self.status_failure
        if self.store_failure is not None:
            raise self.store_failure  # Sacred then records the run as FAILED

    def _emit_interrupted(self, status):
        self.status_failure = None
        with INTERRUPTS.closed():
            super()._emit_interrupted(status)

    def _emit_failed(self, exc_type, exc_value, trace):
        """Sacred's, without its "Failed after" line when a write failed (its sentence says it)."""
        self.status_failure = None
        with INTERRUPTS.closed():
            self.status = "FAILED"
            elapsed_time = self._stop_time()
            if self.store_failure is None:
                self.run_logger.error("Failed after %s!", elapsed_time)
            self.fail_trace = traceback.format_exception(exc_type, exc_value, trace)
            for observer in self.observers:
                self._final_call(
                    observer, "failed_event", fail_time=self.stop_time, fail_trace=self.fail_trace
                )
