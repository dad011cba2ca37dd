"""The `reprolab` command: list, show, compare, export, rerun, sweep and sync recorded runs.

Each subcommand's handler is a function below that imports what it runs; the reporting
modules (pandas, matplotlib) and the launchers (torch for a rerun's checks) load only when
their command runs, so `reprolab ls` on an empty store starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from observers.exit_codes import ExitCode
from observers.files import StoreWriteError
from observers.store import RecordError


def list_runs(args: argparse.Namespace) -> int:
    from observers.listing import ls_command

    return ls_command(args)


def show_run(args: argparse.Namespace) -> int:
    from observers.report import show_command

    return show_command(args)


def compare_runs(args: argparse.Namespace) -> int:
    from observers.report import compare_command

    return compare_command(args)


def export_runs(args: argparse.Namespace) -> int:
    from observers.report import export_command

    return export_command(args)


def repeat_run(args: argparse.Namespace) -> int:
    from experiments.rerun import rerun_command

    return rerun_command(args)


def run_sweep(args: argparse.Namespace) -> int:
    from experiments.sweeps.options import SweepOptions
    from experiments.sweeps.search import sweep_or_search

    return sweep_or_search(SweepOptions.from_args(args))


def evaluate_run(args: argparse.Namespace) -> int:
    from experiments.evaluate import evaluate_command

    return evaluate_command(args)


def pack_images(args: argparse.Namespace) -> int:
    from ingredients.image_sources import MANIFEST
    from ingredients.pack import pack

    manifest = pack(args.folder, args.out, args.shard_size)
    print(
        f"packed {manifest['rows']} images of {len(manifest['classes'])} classes into "
        f"{len(manifest['shards'])} shards in {args.out} (manifest {MANIFEST})"
    )
    return ExitCode.OK


def sync_runs(args: argparse.Namespace) -> int:
    from observers.sync import sync_command

    return sync_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reprolab",
        description="Browse, compare, rerun and sync runs recorded by reprolab experiments.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    store_help = "a run store directory or mongodb:// URL (default $REPROLAB_MONGO_URL or ./runs)"

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], help: str, store: bool = True
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        if store:
            sub.add_argument("--store", help=store_help)
        sub.set_defaults(handler=handler)
        return sub

    ls = command("ls", list_runs, "list recorded runs as a table")
    ls.add_argument("--status", help="only runs with this status, e.g. COMPLETED")
    ls.add_argument(
        "--last", type=int, metavar="N", help="only the N most recent runs (default 20)"
    )
    ls.add_argument("--all", action="store_true", help="every run, not only the last 20")
    ls.add_argument("--sweep", metavar="SWEEP", help="only the runs of this sweep")

    show = command("show", show_run, "a run's config, record and metrics")
    show.add_argument("run", help="run id or run directory")

    compare = command("compare", compare_runs, "compare runs side by side")
    compare.add_argument("runs", nargs="*", help="run ids")
    compare.add_argument("--metric", help="metric to summarise and plot (default val_accuracy)")
    compare.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw the metric's curves into a PNG (with --sweep: the metric against a varied key)",
    )
    compare.add_argument(
        "--sweep",
        metavar="SWEEP",
        help="rank the runs of this sweep by the metric, with the keys that varied",
    )

    export = command("export", export_runs, "write the runs table to a file")
    export.add_argument("--to", required=True, metavar="FILE", help="a .parquet or .csv file")

    rerun_parser = command("rerun", repeat_run, "rerun a recorded run with its config")
    rerun_parser.add_argument("run", help="run id or run directory")
    rerun_parser.add_argument(
        "--verify",
        action="store_true",
        help="compare every metric value and the final model with the original",
    )
    rerun_parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse to run when code, packages, data or device differ",
    )
    rerun_parser.add_argument(
        "--from-recorded-sources",
        action="store_true",
        help="run the source files recorded with the run, not the working tree",
    )
    rerun_parser.add_argument(
        "--trust-import-paths",
        action="store_true",
        help="let the record's import paths (model.name) name installed code, "
        "which they may not otherwise: it runs what they name",
    )
    rerun_parser.add_argument(
        "--world-size",
        type=int,
        default=None,
        metavar="N",
        help="processes for a run recorded under torchrun (default: its own "
        "world size; another one is not expected to match)",
    )

    add_sweep_command(command)

    evaluate = command(
        "evaluate",
        evaluate_run,
        "a recorded image run's best checkpoint on other data (kept in the run's evaluations)",
    )
    evaluate.add_argument("run", help="run id or run directory")
    evaluate.add_argument("--data", required=True, help="a Parquet/Arrow file, folder or glob")
    evaluate.add_argument(
        "--split", help="only the rows of this split (train, val, test) of the data's split column"
    )
    pack = command(
        "pack",
        pack_images,
        "pack an image folder (class subfolders) into Parquet shards with a manifest",
        store=False,
    )
    pack.add_argument("folder", help="FOLDER/CLASS/IMAGE files")
    pack.add_argument("out", help="the folder the shards and manifest.json go to")
    pack.add_argument("--shard-size", type=int, default=10000, help="images per shard")

    sync_parser = command("sync", sync_runs, "upload runs into MongoDB", store=False)
    sync_parser.add_argument("path", help="a file store or fallback directory")
    sync_parser.add_argument(
        "--to", metavar="URL", help="mongodb:// URL (default $REPROLAB_MONGO_URL)"
    )
    return parser


def add_sweep_command(command) -> None:
    """`reprolab sweep`'s arguments (typed once by experiments.sweeps.options.SweepOptions)."""
    parser = command(
        "sweep",
        run_sweep,
        "run many configs of an experiment, here in parallel or as a Slurm job array",
    )
    parser.add_argument(
        "words",
        nargs="*",
        metavar="EXPERIMENT.py [SWEEP.yaml] with KEY=VALUES",
        help="the experiment (default experiments/train.py), an optional sweep "
        "file, then config values: a list or range(...) is swept, e.g. "
        "'lr=[0.1, 0.01]' 'seed=range(3)' epochs=5",
    )
    parser.add_argument(
        "--file", metavar="SWEEP.yaml", help="a sweep file with grid, random, fixed"
    )
    parser.add_argument("--dry-run", action="store_true", help="list the configs, run nothing")
    parser.add_argument(
        "--print-commands",
        action="store_true",
        help="record the sweep and print one command per config, for any scheduler",
    )
    parser.add_argument(
        "--resume",
        metavar="SWEEP",
        help="run what SWEEP still lacks: continue "
        "interrupted runs, rerun failed ones, skip completed ones",
    )
    parser.add_argument(
        "--status", metavar="SWEEP", help="each config's run state (store and Slurm)"
    )
    parser.add_argument(
        "--on",
        choices=("local", "slurm"),
        help="where runs run (default local; with --resume, where the sweep ran last)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        metavar="N",
        help="local: runs at a time (default 1; with --resume, as last time)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="local: torch threads per run (default: cores / --parallel; "
        "with --resume, as last time)",
    )
    slurm = parser.add_argument_group("Slurm (with --on slurm)")
    slurm.add_argument("--partition", help="sbatch --partition")
    slurm.add_argument(
        "--time", help="time limit per run: minutes, HH:MM:SS or D-HH:MM (default 60)"
    )
    slurm.add_argument("--cpus", type=int, help="CPUs per run, also its torch threads (default 1)")
    slurm.add_argument("--gpus", type=int, help="GPUs per run")
    slurm.add_argument("--mem", help="memory per run, e.g. 4G")
    slurm.add_argument("--max-parallel", type=int, metavar="N", help="tasks of the array at a time")
    slurm.add_argument(
        "--sbatch",
        action="append",
        metavar="KEY=VALUE",
        help="any other sbatch option, e.g. --sbatch account=proj --sbatch qos=low",
    )
    slurm.add_argument("--wait", action="store_true", help="follow the job array until it ends")
    search = parser.add_argument_group(
        "search (Optuna; a key given as loguniform(a, b), uniform(a, b), int(a, b) or "
        "logint(a, b) is searched, a list is categorical)"
    )
    search.add_argument("--trials", type=int, metavar="N", help="trials in all (the budget)")
    search.add_argument("--metric", help="the metric to optimise (default val_accuracy)")
    search.add_argument(
        "--direction",
        choices=("maximize", "minimize"),
        help="default: minimize a metric named like a loss, else maximize",
    )
    search.add_argument("--sampler", help="tpe (default), random, or grid (a discrete space)")
    search.add_argument("--sampler-seed", type=int, metavar="N", help="the sampler's seed")
    search.add_argument("--pruner", help="none (default), median, halving or hyperband")
    search.add_argument(
        "--pruner-option",
        action="append",
        metavar="KEY=VALUE",
        help="a pruner setting, e.g. --pruner-option min_resource=1",
    )
    search.add_argument(
        "--study-storage",
        metavar="URL",
        help="an Optuna database (sqlite:///FILE, postgresql://...) instead of the run store",
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "sweep":  # `with` words may follow options: argparse leaves them over
        args.words += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.handler(args) or ExitCode.OK
    except BrokenPipeError:  # output piped into `head` and closed: stop quietly, as ls does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
    except (RecordError, ValueError) as error:
        print(f"reprolab: error: {error}", file=sys.stderr)
        return ExitCode.USAGE
    except (StoreWriteError, OSError) as error:  # a full or read-only store: one sentence
        print(f"reprolab: error: {write_failure(error)}", file=sys.stderr)
        return ExitCode.FAILED


def write_failure(error: Exception) -> str:
    """A failed write or read of the store in one sentence, naming the file."""
    if isinstance(error, OSError):
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror or error}{where}; nothing more was done"
    return f"{error}; nothing more was done"


if __name__ == "__main__":
    sys.exit(main())
