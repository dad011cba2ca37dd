"""The exit codes of reprolab's commands and experiments, by name."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # a run failed, a rerun did not match, a sweep has failed runs
    USAGE = 2  # bad input: config, command line, record; told in one sentence
    INTERRUPTED = 130  # 128 + SIGINT
    TERMINATED = 143  # 128 + SIGTERM


STOPPED_BY_SIGNAL = frozenset({130, 143, -2, -9, -15})  # a child ended by Ctrl-C, TERM or KILL
