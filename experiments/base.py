"""A Sacred Experiment that records into the project's stores and refuses bad config before a run starts."""

from __future__ import annotations

import difflib
import functools
import logging
import os
import signal
import sys
from pathlib import Path

from sacred import SETTINGS, Experiment
from sacred.arg_parser import _convert_value
from sacred.commands import print_config, print_dependencies, print_named_configs, save_config
from sacred.config.config_files import HANDLER_BY_EXT, load_config_file
from sacred.config.utils import undogmatize
from sacred.dependencies import Source, get_digest
from sacred.experiment import gather_command_line_options
from sacred.ingredient import Ingredient
from sacred.initialize import create_run
from sacred.utils import (
    ConfigAddedError,
    apply_backspaces_and_linefeeds,
    get_by_dotted_path,
    iterate_flattened,
)

from experiments import distributed
from experiments.config_input import (
    ConfigInputError,
    check_command_line,
    check_sections,
    check_value,
    read_data_file,
)
from experiments.membership import sweep_option
from experiments.resume import (
    RecordedRun,
    ResumePoint,
    Terminated,
    interrupts_handled,
    load_resume_point,
    resumed_config,
)
from ingredients import INSPECTION_COMMANDS, check_storable, shown
from ingredients.imports import FROM_RECORD, RESOLVED, installed_locations
from observers.attach import (
    DEFAULT_STORE,
    MONGO_URL_VARIABLE,
    choose_store,
    is_mongo_url,
    store_option,
)
from observers.files import StoreWriteError
from observers.provenance import git
from observers.store import RecordError

REPO_ROOT = Path(__file__).resolve().parents[1]

# "sys" capture keeps the real terminal visible to tqdm (fd capture hides it behind a pipe).
SETTINGS.CAPTURE_MODE = "sys"


# Installed packages live under these, also in a virtualenv inside the repository (venv/, env/).
INSTALLED_PARTS = frozenset({".venv", "site-packages", "dist-packages"})


def is_own_code(file: str) -> bool:
    """Whether a file is part of this repository and not an installed package inside it."""
    path = Path(file).resolve()
    return path.is_relative_to(REPO_ROOT) and not INSTALLED_PARTS & set(
        path.relative_to(REPO_ROOT).parts
    )


def own_modules() -> tuple[list[str], dict[str, str]]:
    """Files of the imported modules that are this repository's (Sacred only sees direct
    imports), and {module: file} of those that are the user's own code outside it (cwd,
    PYTHONPATH, a sibling folder, an editable install). Files of the standard library and of
    installed distributions are skipped by their path's prefix before anything is resolved
    (there are over a thousand with torch loaded)."""
    installed = installed_locations()
    inside, outside = set(), {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if (
            not isinstance(file, str)
            or not file.endswith(".py")
            or not os.path.isabs(file)
            or file.startswith(installed)
        ):
            continue
        if is_own_code(file):
            inside.add(file)
            continue
        path = Path(file).resolve()
        if (
            path.is_file()
            and not path.is_relative_to(REPO_ROOT)
            and not INSTALLED_PARTS & set(path.parts)
            and not str(path).startswith(installed)
        ):
            outside.setdefault(str(path), name)
    return sorted(inside), {name: file for file, name in sorted(outside.items())}


def import_root(module: str, file: str) -> str:
    """The search-path folder a module was imported from: its file less the module's dotted name
    (/x/pkg/mod.py of pkg.mod, or /x/pkg/__init__.py of pkg, gives /x)."""
    path, parts = Path(file), module.split(".")
    stem = path.parent if path.name == "__init__.py" else path.with_suffix("")
    if module == "__main__" or stem.parts[-len(parts) :] != tuple(parts):
        return str(path.parent)
    return str(stem.parents[len(parts) - 1])


def repository_state(directory: str) -> tuple[str | None, str | None, bool | None]:
    """(url, commit, dirty) of the git repository holding `directory`, as Sacred records them,
    from three git calls per repository (Sacred asks git once per source file, twice)."""
    top_and_head = git(Path(directory), "rev-parse", "--show-toplevel", "HEAD")
    if top_and_head is None:
        return None, None, None
    top, commit = top_and_head.split()[:2]
    dirty = bool((git(Path(top), "status", "--porcelain", "--untracked-files=no") or "").strip())
    url = (git(Path(top), "config", "--get", "remote.origin.url") or "").strip()
    return url or "git:/" + top, commit, dirty


def own_sources() -> tuple[list[Source], dict[str, str]]:
    """Sources of this repository's imported modules and of the user's code outside it, each
    with its hash and its repository's git state; and {module: file} of the ones outside."""
    states = functools.cache(repository_state)  # asked once per folder and run, never reused
    inside, outside = own_modules()
    sources = [Source(file, get_digest(file), *states(str(REPO_ROOT))) for file in inside]
    for module, file in outside.items():
        sources.append(Source(file, get_digest(file), *states(import_root(module, file))))
    return sources, outside


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


def drop_docstrings(config: dict) -> None:
    """Remove the `__doc__` keys Sacred leaves in a config from named configs' docstrings."""
    config.pop("__doc__", None)
    for value in config.values():
        if isinstance(value, dict):
            drop_docstrings(value)


class ConfigurationError(ValueError):
    """A user's config cannot run; raised before anything is recorded."""


def check_updates(argv: list[str]) -> None:
    """Refuse, naming the key, a `with key=value` whose value Sacred cannot turn into a config
    value (complex numbers, bytes and sets are not JSON): Sacred fails there with a traceback."""
    if "with" not in argv:
        return
    for update in argv[argv.index("with") + 1 :]:
        key, sep, value = update.partition("=")
        if not sep:
            continue
        try:
            _convert_value(value.strip())
        except Exception:  # Sacred's own conversion: TypeError, ValueError, RecursionError
            raise ConfigurationError(
                f"{key.strip()} cannot be stored in a run's record (use numbers, strings, "
                f"true/false, None, lists and dicts), got {shown(value.strip())}"
            ) from None


def say_once(line: str) -> None:
    """Print a refusal on stderr, once per torchrun job (rank 0 says it for every rank)."""
    if distributed.in_main_process():
        print(line, file=sys.stderr)


class ReproExperiment(Experiment):
    """Experiment with the project's defaults: sources from the whole repository, the default
    store, progress bars filtered from captured output, and strict config keys."""

    def __init__(self, name: str, ingredients=()):
        # Experiment.__init__ of Sacred 0.8.7 without its inspect.stack() call, which scans every
        # loaded module (about half a second with torch loaded); the caller's globals name the
        # main file. Sources and their git state are gathered once, when a run is created.
        caller = sys._getframe(1).f_globals
        self.additional_host_info = []
        self.additional_cli_options = [store_option, sweep_option]
        self.all_cli_options = gather_command_line_options() + self.additional_cli_options
        Ingredient.__init__(
            self,
            path=name,
            ingredients=list(ingredients),
            base_dir=str(REPO_ROOT),
            _caller_globals=caller,
            save_git_info=False,
        )
        self.default_command = None
        for command in (print_config, print_dependencies, save_config, print_named_configs(self)):
            self.command(command, unobserved=True)
        self.observers, self.current_run, self.option_hooks = [], None, []
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
            sys.exit(2)
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
        finally:
            self.logger.setLevel(level)

    def get_experiment_info(self):
        info = super().get_experiment_info()
        unique = {tuple(sorted(r.items())): r for r in info.get("repositories") or []}
        info["repositories"] = list(unique.values())  # Sacred lists the repository once per file
        return info

    def _create_run(
        self,
        command_name=None,
        config_updates=None,
        named_configs=(),
        info=None,
        meta_info=None,
        options=None,
    ):
        """Build the run; any config problem becomes one ConfigurationError, before observers start."""
        command_name = command_name or self.default_command
        self.resume_point: ResumePoint | None = None
        FROM_RECORD.clear()  # set again by _resume for this run
        try:
            self._check_named_configs(named_configs)
            for key, value in (config_updates or {}).items():  # before Sacred walks them
                check_storable(str(key), value)
                check_value(str(key), value)  # object encodings, sizes, passwords
            check_sections(config_updates, {ing.path for ing, _ in self.traverse_ingredients()})
            config_updates = self._job_seed(command_name, config_updates, named_configs)
            run = super()._create_run(
                command_name, config_updates, named_configs, info, meta_info, options
            )
            if run.config.get("resume") is not None:  # given directly or in a config file
                config_updates = self._resume(
                    command_name, config_updates or {}, named_configs, options, requested=run.config
                )
                run = super()._create_run(
                    command_name, config_updates, named_configs, info, meta_info, options
                )
        except ConfigAddedError as error:
            raise ConfigurationError(
                self._unknown_key_message(next(iter(error.__conflicting_configs__)))
            ) from None
        except (ValueError, FileNotFoundError, RecordError) as error:
            raise ConfigurationError(str(error)) from None
        added = sorted(k for k in run.config_modifications.added if not k.endswith("__doc__"))
        if added:
            added = [k for k in added if not self._inside_free_form(run, k)]
        if added:  # Sacred only warns about a new key that some captured function could take
            self.current_run = None
            raise ConfigurationError(self._unknown_key_message(added[0]))
        drop_docstrings(run.config)  # a named config's docstring is no setting
        self._record_sources(run)
        run.__class__ = RecordedRun  # Sacred builds a plain Run; this one never loses a record
        distributed.prepare_run(run)  # under torchrun only rank 0 records the run
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

    def _record_sources(self, run) -> None:
        """Every module of the user's own code imported by now, the run's setup and a model given
        by import path included (Sacred only sees the experiment's direct imports), becomes one of
        the run's sources: the repository's by their path in it, the rest by absolute path, with
        the folder each was imported from in the info, so a rerun finds them there again."""
        sources, outside = own_sources()
        known = {source.filename for source in sources}
        gathered = set().union(
            *(ingredient.sources for ingredient, _ in self.traverse_ingredients())
        )
        sources += [s for s in gathered if s.filename not in known]
        run.experiment_info["sources"] = [
            (s.filename, s.digest) if s.filename in outside.values() else s.to_json(self.base_dir)
            for s in sorted(sources)
        ]
        repositories = {(s.repo, s.commit, s.is_dirty) for s in sources if s.repo}
        run.experiment_info["repositories"] = [
            {"url": url, "commit": commit, "dirty": dirty}
            for url, commit, dirty in sorted(repositories)
        ]
        if outside:
            run.info["outside_code"] = {
                "roots": sorted({import_root(module, file) for module, file in outside.items()}),
                "modules": outside,
            }
        resolved = {
            key: found
            for key, found in RESOLVED.items()  # this run's, not an earlier one's
            if get_by_dotted_path(run.config, key) == found["import_path"]
        }
        if resolved:
            run.info["import_paths"] = resolved

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
        touched |= self._keys_set_by(named_configs, command_name)
        config = resumed_config(self.resume_point, requested, touched)
        FROM_RECORD.update(
            {  # the checkpoint chose these: installed code only if the user says so
                key: f"name it yourself to run it: with resume={requested['resume']} {key}={value}"
                for key, value in iterate_flattened(config)
                if key not in touched
            }
        )
        return config

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
        if not distributed.in_main_process():
            return f"rank {distributed.job().rank} stopped; rank 0 records the run"
        if run is None or run.status != "INTERRUPTED" or run._id is None:
            return "interrupted before the run started; nothing was recorded"
        last = (run.info.get("checkpoints") or {}).get("last.pt")
        if last is None:
            return f"run {run._id} interrupted before it finished an epoch; no checkpoint to resume"
        store = run.meta_info.get("options", {}).get("--store")
        from_default = store in (None, DEFAULT_STORE) or (  # the same default applies again
            is_mongo_url(store) and bool(os.environ.get(MONGO_URL_VARIABLE))
        )
        if from_default:
            where = ""
        elif is_mongo_url(store):  # the printable URL hides the password, so it would not connect
            where = " -R <your MongoDB URL>"
        else:
            where = f" -R {store}"
        return (
            f"run {run._id} interrupted after epoch {last['epoch']}; continue it with: "
            f"{distributed.relaunch_prefix(sys.argv[0])}{where} with resume={run._id}"
        )

    def _store_failure_message(self, error: StoreWriteError) -> str:
        """One sentence: the first write that failed, and what became of the run's record."""
        run = self.current_run
        first = getattr(run, "store_failure", None) or error
        if run is None or run._id is None:
            return f"{first}; the run could not start"
        if run.status_failure is not None:
            return (
                f"{first}; run {run._id} stopped, and its status could not be written either "
                f"({run.status_failure.cause}), so its record still says RUNNING"
            )
        return f"{first}; run {run._id} stopped and is recorded as FAILED"

    @staticmethod
    def _inside_free_form(run, key: str) -> bool:
        """Whether a new key lies inside a config dict that is empty by default (model.kwargs): its
        keys are the user's to choose, and its ingredient's schema checks them. Sacred merges
        updates into the defaults, so a dict whose every key is new was empty by default. (Not
        by building a default run: that would rebind the captured functions to its config.)"""
        added = run.config_modifications.added
        parts = key.split(".")
        for end in range(1, len(parts)):
            prefix = ".".join(parts[:end])
            if prefix in added:
                return False
            value = get_by_dotted_path(run.config, prefix)
            if isinstance(value, dict) and all(f"{prefix}.{k}" in added for k in value):
                return True
        return False

    def _check_named_configs(self, names) -> None:
        """A named config that does not exist, or a config file that is absent or cannot be
        read, is one sentence (Sacred gives a traceback)."""
        available = None
        for name in names:
            if os.path.lexists(name):  # JSON or YAML only, read safely: a pickle is not opened
                try:
                    read_data_file(name)
                except ConfigInputError as error:
                    raise ConfigurationError(str(error)) from None
                continue
            if os.path.splitext(name)[1] in HANDLER_BY_EXT or os.sep in name:
                raise ConfigurationError(f"config file not found: {name}")
            available = available or [n for n, _ in self.gather_named_configs()]
            if name not in available:
                raise ConfigurationError(
                    f"unknown named config '{name}' (named configs: {', '.join(available)}; a config "
                    f"file needs one of the extensions {', '.join(sorted(HANDLER_BY_EXT))})"
                )

    def _unknown_key_message(self, key: str) -> str:
        if key in {ingredient.path for ingredient, _ in self.traverse_ingredients()}:
            return f"{key} is a group of settings: set its keys, e.g. {key}.<key>=... (see print_config)"
        known = [k for k, _ in iterate_flattened(undogmatize(self._default_config()))]
        close = closest_key(key, known)
        hint = f"; did you mean '{close}'?" if close else ""
        return f"unknown config key '{key}'{hint} (see print_config for every key)"

    def _default_config(self) -> dict:
        return create_run(self, self.default_command, {}).config
