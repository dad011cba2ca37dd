"""A Sacred Experiment that records into the project's stores and refuses bad config before a run starts."""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import signal
import sys
from pathlib import Path

from sacred import SETTINGS, Experiment
from sacred.arg_parser import _convert_value
from sacred.config.config_files import HANDLER_BY_EXT, load_config_file
from sacred.config.utils import undogmatize
from sacred.dependencies import gather_sources_and_dependencies
from sacred.initialize import create_run
from sacred.utils import ConfigAddedError, apply_backspaces_and_linefeeds, iterate_flattened

from experiments.membership import sweep_option
from experiments.resume import (
    RecordedRun,
    ResumePoint,
    Terminated,
    interrupts_handled,
    load_resume_point,
    resumed_config,
)
from ingredients import check_storable, shown
from observers.attach import (
    DEFAULT_STORE,
    MONGO_URL_VARIABLE,
    choose_store,
    is_mongo_url,
    store_option,
)
from observers.files import StoreWriteError
from observers.store import RecordError

REPO_ROOT = Path(__file__).resolve().parents[1]

# "sys" capture keeps the real terminal visible to tqdm (fd capture hides it behind a pipe).
SETTINGS.CAPTURE_MODE = "sys"


def repository_modules() -> list[str]:
    """Files of every imported module that lives in this repository (Sacred only sees direct imports)."""
    files = {getattr(module, "__file__", None) for module in list(sys.modules.values())}
    return sorted(f for f in files if f and f.endswith(".py") and os.path.isabs(f) and is_own_code(f))


# Installed packages live under these, also in a virtualenv inside the repository (venv/, env/).
INSTALLED_PARTS = frozenset({".venv", "site-packages", "dist-packages"})


def is_own_code(file: str) -> bool:
    """Whether a file is part of this repository and not an installed package inside it."""
    path = Path(file).resolve()
    return path.is_relative_to(REPO_ROOT) and not INSTALLED_PARTS & set(path.relative_to(REPO_ROOT).parts)


def closest_key(key: str, known: list[str]) -> str | None:
    """The known key a typo most likely meant, judged on the whole key and on its last part."""

    def score(candidate: str) -> float:
        whole = difflib.SequenceMatcher(None, key, candidate).ratio()
        leaf = difflib.SequenceMatcher(None, key.split(".")[-1], candidate.split(".")[-1]).ratio()
        return max(whole, leaf - 0.05)

    best = max(known, key=score, default=None)
    return best if best is not None and score(best) >= 0.6 else None


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


class ConfigurationError(ValueError):
    """A user's config cannot run; raised before anything is recorded."""


def check_updates(argv: list[str]) -> None:
    """Refuse, naming the key, a `with key=value` whose value Sacred cannot turn into a config
    value (complex numbers, bytes and sets are not JSON): Sacred fails there with a traceback."""
    if "with" not in argv:
        return
    for update in argv[argv.index("with") + 1:]:
        key, sep, value = update.partition("=")
        if not sep:
            continue
        try:
            _convert_value(value.strip())
        except Exception:  # Sacred's own conversion: TypeError, ValueError, RecursionError
            raise ConfigurationError(
                f"{key.strip()} cannot be stored in a run's record (use numbers, strings, "
                f"true/false, None, lists and dicts), got {shown(value.strip())}") from None


class ReproExperiment(Experiment):
    """Experiment with the project's defaults: sources from the whole repository, the default
    store, progress bars filtered from captured output, and strict config keys."""

    def __init__(self, name: str, ingredients=()):
        super().__init__(
            name,
            ingredients=list(ingredients),
            base_dir=str(REPO_ROOT),
            additional_cli_options=[store_option, sweep_option],
        )
        # Sacred takes the main file from its caller's globals, which would be this module.
        caller = inspect.stack()[1][0].f_globals
        self.doc = caller.get("__doc__", "")
        self.mainfile, self.sources, self.dependencies = gather_sources_and_dependencies(
            caller, True, self.base_dir
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
            check_updates(argv)
        except ConfigurationError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        try:
            return super().run_commandline(argv)
        finally:  # the run is recorded and said: a late signal must not add a traceback
            self._from_commandline = False
            if own_argv:  # the process's own command line: it only exits from here
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_IGN)

    def run(self, *args, **kwargs):
        try:
            with interrupts_handled():
                return super().run(*args, **kwargs)
        except ConfigurationError as error:
            if not self._from_commandline:
                raise
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        except StoreWriteError as error:
            if not self._from_commandline:
                raise
            print(f"error: {self._store_failure_message(error)}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt as stop:  # Terminated (SIGTERM) too
            if not self._from_commandline:
                raise
            print(self._interrupted_message(), file=sys.stderr)
            sys.exit(143 if isinstance(stop, Terminated) else 130)  # 128 + signal number

    def get_experiment_info(self):
        info = super().get_experiment_info()
        unique = {tuple(sorted(r.items())): r for r in info.get("repositories") or []}
        info["repositories"] = list(unique.values())  # Sacred lists the repository once per file
        return info

    def _create_run(self, command_name=None, config_updates=None, named_configs=(), info=None,
                    meta_info=None, options=None):
        """Build the run; any config problem becomes one ConfigurationError, before observers start."""
        command_name = command_name or self.default_command
        self.resume_point: ResumePoint | None = None
        try:
            self._check_named_configs(named_configs)
            for key, value in (config_updates or {}).items():  # before Sacred walks them
                check_storable(str(key), value)
            run = super()._create_run(command_name, config_updates, named_configs, info,
                                      meta_info, options)
            if run.config.get("resume") is not None:  # given directly or in a config file
                config_updates = self._resume(command_name, config_updates or {}, named_configs,
                                              options, requested=run.config)
                run = super()._create_run(command_name, config_updates, named_configs, info,
                                          meta_info, options)
        except ConfigAddedError as error:
            raise ConfigurationError(self._unknown_key_message(next(iter(error.__conflicting_configs__)))) from None
        except (ValueError, FileNotFoundError, RecordError) as error:
            raise ConfigurationError(str(error)) from None
        added = sorted(k for k in run.config_modifications.added if not k.endswith("__doc__"))
        if added:
            added = [k for k in added if not self._inside_free_form(k)]
        if added:  # Sacred only warns about a new key that some captured function could take
            self.current_run = None
            raise ConfigurationError(self._unknown_key_message(added[0]))
        self._record_sources(run)
        run.__class__ = RecordedRun  # Sacred builds a plain Run; this one never loses a record
        if self.resume_point is not None:
            run.info["resumed_from"] = self.resume_point.record()
        return run

    def _record_sources(self, run) -> None:
        """Every repository module imported by now, the run's setup included (Sacred only sees
        the experiment's direct imports), becomes one of the run's sources."""
        def gathered() -> set:
            return set().union(*(ingredient.sources for ingredient, _ in self.traverse_ingredients()))

        known = {source.filename for source in gathered()}
        for path in repository_modules():
            if os.path.realpath(path) not in known:  # Source.create asks git per file: new ones only
                self.add_source_file(path)
        sources = gathered()
        run.experiment_info["sources"] = [s.to_json(self.base_dir) for s in sorted(sources)]

    def _resume(self, command_name: str, config_updates: dict, named_configs, options,
                requested: dict) -> dict:
        """Load the checkpoint named by `resume` and return the config that continues it."""
        chosen = {**self.get_default_options(), **(options or {})}
        choose_store(chosen)
        try:
            self.resume_point = load_resume_point(requested["resume"], chosen.get("--store"))
        except (RecordError, ValueError) as error:
            raise ConfigurationError(f"resume: {error}") from None
        touched = {key for key, _ in iterate_flattened(config_updates)}
        touched |= self._keys_set_by(named_configs, command_name)
        return resumed_config(self.resume_point, requested, touched)

    def _keys_set_by(self, named_configs, command_name: str) -> set[str]:
        """Config keys that named configs (or config files given to `with`) set."""
        keys: set[str] = set()
        default = None
        for name in named_configs:
            if os.path.isfile(name):
                keys |= {key for key, _ in iterate_flattened(load_config_file(name))}
                continue
            default = default or dict(iterate_flattened(undogmatize(self._default_config())))
            named = dict(iterate_flattened(create_run(self, command_name, {}, [name]).config))
            keys |= {key for key, value in named.items() if default.get(key) != value}
        return {key for key in keys if key != "seed" and not key.endswith("__doc__")}

    def _interrupted_message(self) -> str:
        """One line: which run stopped, its last checkpoint, and how to continue it."""
        run = self.current_run
        if run is None or run.status != "INTERRUPTED" or run._id is None:
            return "interrupted before the run started; nothing was recorded"
        last = (run.info.get("checkpoints") or {}).get("last.pt")
        if last is None or run._id is None:
            return f"run {run._id} interrupted before it finished an epoch; no checkpoint to resume"
        store = run.meta_info.get("options", {}).get("--store")
        from_default = store in (None, DEFAULT_STORE) or (  # the same default applies again
            is_mongo_url(store) and bool(os.environ.get(MONGO_URL_VARIABLE)))
        if from_default:
            where = ""
        elif is_mongo_url(store):  # the printable URL hides the password, so it would not connect
            where = " -R <your MongoDB URL>"
        else:
            where = f" -R {store}"
        return (f"run {run._id} interrupted after epoch {last['epoch']}; continue it with: "
                f"python {sys.argv[0]}{where} with resume={run._id}")

    def _store_failure_message(self, error: StoreWriteError) -> str:
        """One sentence: the first write that failed, and what became of the run's record."""
        run = self.current_run
        first = getattr(run, "store_failure", None) or error
        if run is None or run._id is None:
            return f"{first}; the run could not start"
        if run.status_failure is not None:
            return (f"{first}; run {run._id} stopped, and its status could not be written either "
                    f"({run.status_failure.cause}), so its record still says RUNNING")
        return f"{first}; run {run._id} stopped and is recorded as FAILED"

    def _inside_free_form(self, key: str) -> bool:
        """Whether a key lies inside a config dict that is empty by default (model.kwargs): its
        keys are the user's to choose, and its ingredient's schema checks them."""
        empty = {k for k, v in iterate_flattened(undogmatize(self._default_config())) if v == {}}
        return any(key.startswith(prefix + ".") for prefix in empty)

    def _check_named_configs(self, names) -> None:
        """A named config that does not exist, or a config file that is absent or cannot be
        read, is one sentence (Sacred gives a traceback)."""
        available = None
        for name in names:
            if os.path.isfile(name):
                try:
                    load_config_file(name)
                except Exception as error:  # any parser's error: JSON, YAML, pickle
                    reason = (str(error).strip() or type(error).__name__).splitlines()[0]
                    raise ConfigurationError(f"config file {name}: cannot read it ({reason})") from None
                continue
            if os.path.splitext(name)[1] in HANDLER_BY_EXT or os.sep in name:
                raise ConfigurationError(f"config file not found: {name}")
            available = available or [n for n, _ in self.gather_named_configs()]
            if name not in available:
                raise ConfigurationError(
                    f"unknown named config '{name}' (named configs: {', '.join(available)}; a config "
                    f"file needs one of the extensions {', '.join(sorted(HANDLER_BY_EXT))})")

    def _unknown_key_message(self, key: str) -> str:
        if key in {ingredient.path for ingredient, _ in self.traverse_ingredients()}:
            return f"{key} is a group of settings: set its keys, e.g. {key}.<key>=... (see print_config)"
        known = [k for k, _ in iterate_flattened(undogmatize(self._default_config()))]
        close = closest_key(key, known)
        hint = f"; did you mean '{close}'?" if close else ""
        return f"unknown config key '{key}'{hint} (see print_config for every key)"

    def _default_config(self) -> dict:
        return create_run(self, self.default_command, {}).config
