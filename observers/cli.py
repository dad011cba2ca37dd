"""The `reprolab` command: list, show, compare, export, rerun and sync recorded runs."""

from __future__ import annotations

import argparse
import sys

from observers.store import RecordError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reprolab",
        description="Browse, compare, rerun and sync runs recorded by reprolab experiments.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    store_help = "a run store directory or mongodb:// URL (default $REPROLAB_MONGO_URL or ./runs)"

    ls = commands.add_parser("ls", help="list recorded runs as a table")
    ls.add_argument("--store", help=store_help)
    ls.add_argument("--status", help="only runs with this status, e.g. COMPLETED")
    ls.add_argument("--last", type=int, metavar="N", help="only the N most recent runs")
    ls.set_defaults(handler="observers.report:ls_command")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, _, function = args.handler.partition(":")
    handler = getattr(__import__(module_name, fromlist=[function]), function)
    try:
        return handler(args) or 0
    except (RecordError, ValueError) as error:
        print(f"reprolab: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
