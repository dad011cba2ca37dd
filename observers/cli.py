"""The `reprolab` command: list, show, compare, export, rerun and sync recorded runs."""

from __future__ import annotations

import argparse
import os
import sys

from observers.store import RecordError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reprolab",
        description="Browse, compare, rerun and sync runs recorded by reprolab experiments.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    store_help = "a run store directory or mongodb:// URL (default $REPROLAB_MONGO_URL or ./runs)"

    def command(name: str, handler: str, help: str, store: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        if store:
            sub.add_argument("--store", help=store_help)
        sub.set_defaults(handler=handler)
        return sub

    ls = command("ls", "observers.listing:ls_command", "list recorded runs as a table")
    ls.add_argument("--status", help="only runs with this status, e.g. COMPLETED")
    ls.add_argument("--last", type=int, metavar="N", help="only the N most recent runs")

    show = command("show", "observers.report:show_command", "a run's config, record and metrics")
    show.add_argument("run", help="run id or run directory")

    compare = command("compare", "observers.report:compare_command", "compare runs side by side")
    compare.add_argument("runs", nargs="+", help="run ids")
    compare.add_argument("--metric", help="metric to summarise and plot (default val_accuracy)")
    compare.add_argument("--plot", metavar="FILE.png", help="draw the metric's curves into a PNG")

    export = command("export", "observers.report:export_command", "write the runs table to a file")
    export.add_argument("--to", required=True, metavar="FILE", help="a .parquet or .csv file")

    rerun = command("rerun", "observers.rerun:rerun_command", "rerun a recorded run with its config")
    rerun.add_argument("run", help="run id or run directory")
    rerun.add_argument("--verify", action="store_true",
                       help="compare every metric value and the final model with the original")
    rerun.add_argument("--strict", action="store_true",
                       help="refuse to run when code, packages, data or device differ")
    rerun.add_argument("--from-recorded-sources", action="store_true",
                       help="run the source files recorded with the run, not the working tree")
    rerun.add_argument("--world-size", type=int, default=None, metavar="N",
                       help="processes for a run recorded under torchrun (default: its own "
                            "world size; another one is not expected to match)")

    sync = command("sync", "observers.sync:sync_command", "upload runs into MongoDB", store=False)
    sync.add_argument("path", help="a file store or fallback directory")
    sync.add_argument("--to", metavar="URL", help="mongodb:// URL (default $REPROLAB_MONGO_URL)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, _, function = args.handler.partition(":")
    handler = getattr(__import__(module_name, fromlist=[function]), function)
    try:
        return handler(args) or 0
    except BrokenPipeError:  # output piped into `head` and closed: stop quietly, as ls does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (RecordError, ValueError) as error:
        print(f"reprolab: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
