"""A Sacred Experiment that records into the project's stores and refuses bad config before a run starts."""

from __future__ import annotations

import difflib
import inspect
import sys
from pathlib import Path

from sacred import SETTINGS, Experiment
from sacred.config.utils import undogmatize
from sacred.dependencies import gather_sources_and_dependencies
from sacred.utils import ConfigAddedError, apply_backspaces_and_linefeeds, iterate_flattened

from observers.attach import choose_store, store_option

REPO_ROOT = Path(__file__).resolve().parents[1]

# "sys" capture keeps the real terminal visible to tqdm (fd capture hides it behind a pipe).
SETTINGS.CAPTURE_MODE = "sys"


def repository_modules() -> list[str]:
    """Files of every imported module that lives in this repository (Sacred only sees direct imports)."""
    files = {getattr(module, "__file__", None) for module in list(sys.modules.values())}
    return sorted(
        f for f in files
        if f and f.endswith(".py") and Path(f).resolve().is_relative_to(REPO_ROOT)
        and ".venv" not in Path(f).resolve().relative_to(REPO_ROOT).parts
    )


def closest_key(key: str, known: list[str]) -> str | None:
    """The known key a typo most likely meant, judged on the whole key and on its last part."""

    def score(candidate: str) -> float:
        whole = difflib.SequenceMatcher(None, key, candidate).ratio()
        leaf = difflib.SequenceMatcher(None, key.split(".")[-1], candidate.split(".")[-1]).ratio()
        return max(whole, leaf - 0.05)

    best = max(known, key=score, default=None)
    return best if best is not None and score(best) >= 0.6 else None


class ConfigurationError(ValueError):
    """A user's config cannot run; raised before anything is recorded."""


class ReproExperiment(Experiment):
    """Experiment with the project's defaults: sources from the whole repository, the default
    store, progress bars filtered from captured output, and strict config keys."""

    def __init__(self, name: str, ingredients=()):
        super().__init__(
            name,
            ingredients=list(ingredients),
            base_dir=str(REPO_ROOT),
            additional_cli_options=[store_option],
        )
        # Sacred takes the main file from its caller's globals, which would be this module.
        caller = inspect.stack()[1][0].f_globals
        self.doc = caller.get("__doc__", "")
        self.mainfile, self.sources, self.dependencies = gather_sources_and_dependencies(
            caller, True, self.base_dir
        )
        self.option_hook(choose_store)
        self.captured_out_filter = apply_backspaces_and_linefeeds
        self._from_commandline = False

    def run_commandline(self, argv=None):
        self._from_commandline = True
        return super().run_commandline(argv)

    def run(self, *args, **kwargs):
        try:
            return super().run(*args, **kwargs)
        except ConfigurationError as error:
            if not self._from_commandline:
                raise
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)

    def _create_run(self, *args, **kwargs):
        """Build the run; any config problem becomes one ConfigurationError, before observers start."""
        for path in repository_modules():
            self.add_source_file(path)
        try:
            run = super()._create_run(*args, **kwargs)
        except ConfigAddedError as error:
            raise ConfigurationError(self._unknown_key_message(next(iter(error.__conflicting_configs__)))) from None
        except (ValueError, FileNotFoundError) as error:
            raise ConfigurationError(str(error)) from None
        added = sorted(k for k in run.config_modifications.added if not k.endswith("__doc__"))
        if added:  # Sacred only warns about a new key that some captured function could take
            self.current_run = None
            raise ConfigurationError(self._unknown_key_message(added[0]))
        return run

    def _unknown_key_message(self, key: str) -> str:
        known = [k for k, _ in iterate_flattened(undogmatize(self._default_config()))]
        close = closest_key(key, known)
        hint = f"; did you mean '{close}'?" if close else ""
        return f"unknown config key '{key}'{hint} (see print_config for every key)"

    def _default_config(self) -> dict:
        from sacred.initialize import create_run

        return create_run(self, self.default_command, {}).config
