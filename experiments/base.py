"""A Sacred Experiment that records into the project's stores and refuses bad config before a run starts."""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

from sacred import Experiment, SETTINGS
from sacred.config.utils import undogmatize
from sacred.utils import ConfigAddedError, apply_backspaces_and_linefeeds, iterate_flattened

from observers.attach import choose_store, store_option

REPO_ROOT = Path(__file__).resolve().parents[1]

# "sys" capture keeps the real terminal visible to tqdm (fd capture hides it behind a pipe).
SETTINGS.CAPTURE_MODE = "sys"


class ConfigurationError(ValueError):
    """A user's config cannot run; raised before anything is recorded."""


class ReproExperiment(Experiment):
    """Experiment with the project's defaults: sources from the whole repository, the default
    store, progress bars filtered from captured output, and strict config keys."""

    def __init__(self, name: str, ingredients=()):
        super().__init__(
            name,
            ingredients=list(ingredients),
            base_dir=str(REPO_ROOT),  # record ingredient modules as sources, not only this file
            additional_cli_options=[store_option],
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
        try:
            run = super()._create_run(*args, **kwargs)
        except ConfigAddedError as error:
            raise ConfigurationError(self._unknown_key_message(error.conflicting_configs[0])) from None
        except (ValueError, FileNotFoundError) as error:
            raise ConfigurationError(str(error)) from None
        if run.config_modifications.added:
            self.current_run = None
            key = sorted(run.config_modifications.added)[0]
            raise ConfigurationError(self._unknown_key_message(key))
        return run

    def _unknown_key_message(self, key: str) -> str:
        known = [k for k, _ in iterate_flattened(undogmatize(self._default_config()))]
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"unknown config key '{key}'{hint} (see print_config for every key)"

    def _default_config(self) -> dict:
        from sacred.initialize import create_run

        return create_run(self, self.default_command, {}).config
