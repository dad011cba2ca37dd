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

    ex = Experiment("bench_ddp", ingredients=[data, model, optimizer, seeding],
                    save_git_info=False)

    @ex.main
    def run(seed):
        current = job()
        seed_everything(current.seed(seed))
        device = current.start(SimpleNamespace(config={"seed": seed}, info={}),
                               torch.device("cpu"))
        splits = load_splits()
        batches = make_loader(splits.train, True, generator=loader_generator(seed),
                              **current.shard)
        net = build_model(splits.input_shape, splits.num_classes)
        trained = current.wrap(net, False)
        opt = build_optimizer(net, 0.01)
        scheduler = build_scheduler(opt, epochs + 1, len(batches))
        loss_fn, step, start = make_loss("cross_entropy"), 0, None
        for epoch in range(epochs + 1):
            if epoch == 1:
                torch.distributed.barrier()
                start = time.perf_counter()
            _, step = train_one_epoch(trained, batches, opt, scheduler, loss_fn, device,
                                      epoch=epoch, step=step, progress=False,
                                      reduce=current.reducer)
        torch.distributed.barrier()
        rate = epochs * len(splits.train) / (time.perf_counter() - start)
        if current.is_main:
            Path(out).write_text(json.dumps({"samples_per_s": rate}))
        torch.distributed.destroy_process_group()

    ex.run(config_updates={"seed": 0}, options={"--loglevel": "WARNING"})


def measure(processes: int, threads: int, epochs: int) -> float:
    """Samples/s of one torchrun job of `processes` ranks with `threads` torch threads each."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rate.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={processes}", __file__, "--worker", "--epochs",
                   str(epochs), "--out", str(out)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
        job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            job.wait(timeout=600)
        except subprocess.TimeoutExpired:  # seen: a rank stuck at exit after the result was out
            os.killpg(job.pid, signal.SIGKILL)  # torchrun and every rank, no orphans
            job.wait()
            print(f"warning: the {processes}-process job did not end; killed", file=sys.stderr)
        if not out.is_file():
            raise SystemExit(f"the {processes}-process job wrote no result (exit {job.returncode})")
        return json.loads(out.read_text())["samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat of 1 epoch")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.worker:
        worker(args.epochs, args.out)
        return
    epochs, repeats = (1, 1) if args.quick else (args.epochs, args.repeats)
    # (processes, threads each): torchrun sets OMP_NUM_THREADS=1 only for several processes,
    # so one process is measured with 1 thread and with every core.
    setups = {(1, 1): "1 process, 1 thread", (1, os.cpu_count() or 1): "1 process, all cores",
              (2, 1): "2 processes (gloo), 1 thread each"}
    rates: dict = {setup: [] for setup in setups}
    for _ in range(repeats):  # taking turns, so a busy phase of the machine hits every setup
        for setup in setups:
            rates[setup].append(measure(*setup, epochs))
    medians = {setup: statistics.median(found) for setup, found in rates.items()}
    base = medians[(1, 1)]
    from report import print_table

    print_table(f"data-parallel training, MLP on digits, batch 64 per process, {epochs} epochs, "
                f"median of {repeats} (os.cpu_count() = {os.cpu_count()})",
                ["setup", "samples/s", "ratio"],
                [[name, f"{medians[setup]:,.0f}", f"{medians[setup] / base:.2f}"]
                 for setup, name in setups.items()])


if __name__ == "__main__":
    main()
