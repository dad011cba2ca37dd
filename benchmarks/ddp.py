"""Data-parallel benchmark: samples/s of 2 CPU processes (torchrun, gloo) against 1.

    python benchmarks/ddp.py           # 3 repeats of 4 epochs per world size
    python benchmarks/ddp.py --quick   # 1 repeat of 1 epoch: a smoke run

Each world size is launched through torchrun and trains as experiments/train.py does under it
(experiments/distributed.py: process group, sharded loader, DistributedDataParallel, reduced
loss): the default MLP on the bundled digits, data.batch_size 64 per process. A first epoch
warms up; the clock then covers the timed epochs of the whole job (samples of every rank over
rank 0's wall time). Startup (imports, rendezvous) is not counted. With world size 2 every rank
sees half the samples per epoch with the same per-process batch, so the ideal ratio is 2 on two
free cores; a gradient all-reduce per step costs more than this small model's compute.
Each job has --timeout seconds (300): one running past it is killed, torchrun and every rank
(torchrun starts each rank in a session of its own), and the benchmark stops naming its world size.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]


def worker(epochs: int, out: str) -> None:
    """One rank: train `epochs` timed epochs after a warm-up one; rank 0 writes samples/s."""
    sys.path.insert(0, str(ROOT))
    import torch
    from sacred import Experiment

    from experiments.distributed import job
    from experiments.loop import make_loss, train_one_epoch
    from ingredients.data import data, load_splits, make_loader
    from ingredients.model import build_model, model
    from ingredients.optimizer import build_optimizer, build_scheduler, optimizer
    from ingredients.seeding import loader_generator, seed_everything, seeding

    ex = Experiment("bench_ddp", ingredients=[data, model, optimizer, seeding], save_git_info=False)

    @ex.main
    def run(seed):
        current = job()
        seed_everything(current.seed(seed))
        device = current.start(SimpleNamespace(config={"seed": seed}, info={}), torch.device("cpu"))
        splits = load_splits()
        batches = make_loader(splits.train, True, generator=loader_generator(seed), **current.shard)
        net = build_model(splits.input_shape, splits.num_classes)
        trained = current.wrap(net, False)
        opt = build_optimizer(net, 0.01)
        scheduler = build_scheduler(opt, epochs + 1, len(batches))
        loss_fn, step, start = make_loss("cross_entropy"), 0, None
        for epoch in range(epochs + 1):
            if epoch == 1:
                torch.distributed.barrier()
                start = time.perf_counter()
            _, step = train_one_epoch(
                trained,
                batches,
                opt,
                scheduler,
                loss_fn,
                device,
                epoch=epoch,
                step=step,
                progress=False,
                reduce=current.reducer,
            )
        torch.distributed.barrier()
        rate = epochs * len(splits.train) / (time.perf_counter() - start)
        if current.is_main:
            Path(out).write_text(json.dumps({"samples_per_s": rate}))
        del trained  # the DDP model goes before the group (Job.leave says why)
        current.leave()

    # "sys" capture: Sacred's "fd" capture starts tee processes in sessions of their own
    ex.run(config_updates={"seed": 0}, options={"--loglevel": "WARNING", "--capture": "sys"})


def measure(processes: int, threads: int, epochs: int, timeout: float) -> float:
    """Samples/s of one torchrun job of `processes` ranks with `threads` torch threads each;
    a job running past `timeout` seconds is killed (torchrun and every rank) and ends the run."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rate.json"
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
            __file__,
            "--worker",
            "--epochs",
            str(epochs),
            "--out",
            str(out),
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
        job = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            job.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            ranks = kill_job(job)
            raise SystemExit(
                f"the job of world size {processes} ran past {timeout:g} s and was "
                f"killed (torchrun, pid {job.pid}, and its ranks {ranks})"
            ) from None
        if job.returncode != 0 or not out.is_file():
            raise SystemExit(
                f"the job of world size {processes} failed (exit {job.returncode}) "
                f"and wrote no result"
            )
        return json.loads(out.read_text())["samples_per_s"]


def kill_job(job: subprocess.Popen) -> list[int]:
    """SIGKILL torchrun's process group and each rank's: torchrun starts every rank in a session
    of its own, so killing torchrun's group alone would leave the ranks running."""
    ranks = children(job.pid)
    os.killpg(job.pid, signal.SIGKILL)
    for rank in ranks:
        try:
            os.killpg(rank, signal.SIGKILL)  # a rank leads its own group
        except ProcessLookupError:
            pass
    job.wait()
    return ranks


def children(pid: int) -> list[int]:
    """The ids of `pid`'s child processes (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # the process ended meanwhile
            continue
        if int(fields[1]) == pid:  # the field after the state is the parent's id
            found.append(int(stat.parent.name))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat of 1 epoch")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="")
    parser.add_argument(
        "--timeout",
        type=float,
        default=300,
        help="seconds one torchrun job may take before it is killed",
    )
    args = parser.parse_args()
    if args.worker:
        worker(args.epochs, args.out)
        return
    epochs, repeats = (1, 1) if args.quick else (args.epochs, args.repeats)
    # (processes, threads each): torchrun sets OMP_NUM_THREADS=1 only for several processes,
    # so one process is measured with 1 thread and with every core.
    setups = {
        (1, 1): "1 process, 1 thread",
        (1, os.cpu_count() or 1): "1 process, all cores",
        (2, 1): "2 processes (gloo), 1 thread each",
    }
    rates: dict = {setup: [] for setup in setups}
    for _ in range(repeats):  # taking turns, so a busy phase of the machine hits every setup
        for setup in setups:
            rates[setup].append(measure(*setup, epochs, args.timeout))
    medians = {setup: statistics.median(found) for setup, found in rates.items()}
    base = medians[(1, 1)]
    from report import print_table

    print_table(
        f"data-parallel training, MLP on digits, batch 64 per process, {epochs} epochs, "
        f"median of {repeats} (os.cpu_count() = {os.cpu_count()})",
        ["setup", "samples/s", "ratio"],
        [
            [name, f"{medians[setup]:,.0f}", f"{medians[setup] / base:.2f}"]
            for setup, name in setups.items()
        ],
    )


if __name__ == "__main__":
    main()
