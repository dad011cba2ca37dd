"""Training-loop benchmark: experiments/loop.py against a bare PyTorch loop, in one process.

    python benchmarks/train.py           # the default run (MLP) and the CNN, 21 repeats
    python benchmarks/train.py --quick   # the MLP only, 3 repeats of 1 epoch: a smoke run

Both loops train the same model (same initial weights) on the bundled digits, the same batch
size and one reshuffle per epoch, on the same device. Ours goes through the real ingredients
(load_splits, make_loader, build_model, build_optimizer, build_scheduler, gradient_clipper) and
train_one_epoch, as experiments/train.py does; the bare loop is index_select + forward + loss +
backward + step + schedule, written by hand. Every measurement trains a fresh copy of the model
(where its tensors land in memory moves small models' speed by several percent), the candidates
take turns, and medians are reported. Target: ours >= 0.95 of the bare loop's samples/s. Then
what each option of our loop costs on this machine. On a GPU (torch.cuda.is_available()) both
loops use pinned memory and non_blocking copies, the CNN runs channels_last, and pin_memory is
measured there; without a GPU, pinning and channels_last do not apply and are skipped.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
import torch
from report import print_table
from sacred import Experiment

from experiments.loop import make_loss, train_one_epoch
from ingredients.checkout import CHECKOUT_ROOT
from ingredients.data import data, load_splits, make_loader, row_major_table
from ingredients.model import build_model, model
from ingredients.optimizer import build_optimizer, build_scheduler, gradient_clipper, optimizer
from ingredients.seeding import loader_generator, seed_everything, seed_worker, seeding

ex = Experiment("bench_train", ingredients=[data, model, optimizer, seeding], save_git_info=False)
ex.add_config(repeats=21, epochs=4, options=True, workload="mlp")
LR = 0.01
CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")


def sync() -> None:
    """Wait for the device, so that the clock measures finished work."""
    if CUDA:
        torch.cuda.synchronize()


def default_clip() -> Callable:
    """What experiments/train.py passes as clip: the optimizer ingredient's plain clipping step."""
    return gradient_clipper()


class Trainer:
    """A fresh copy of the model with its optimizer and schedule."""

    def __init__(self, net: torch.nn.Module, steps_per_epoch: int, channels_last: bool = False):
        self.net = copy.deepcopy(net).to(DEVICE)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.opt = build_optimizer(self.net, LR)
        self.scheduler = build_scheduler(self.opt, 10_000, steps_per_epoch)

    def ours(self, batches, epochs: int, amp: str = "off", clip=None) -> float:
        """Samples/s of train_one_epoch over `batches`, as experiments/train.py runs it."""
        loss_fn, step, clip = make_loss("cross_entropy"), 0, clip or default_clip()
        sync()
        start = time.perf_counter()
        for epoch in range(1, epochs + 1):
            _, step = train_one_epoch(
                self.net,
                batches,
                self.opt,
                self.scheduler,
                loss_fn,
                DEVICE,
                epoch=epoch,
                step=step,
                amp=amp,
                clip=clip,
                progress=False,
            )
        sync()
        return epochs * len(batches.dataset) / (time.perf_counter() - start)

    def bare(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        generator,
        epochs: int,
        channels_last: bool = False,
    ) -> float:
        """Samples/s of a hand-written loop: shuffle, gather, forward, backward, step."""
        loss_fn = torch.nn.CrossEntropyLoss()
        layout = torch.channels_last if channels_last else torch.preserve_format

        def to_device(batch: torch.Tensor, **kwargs) -> torch.Tensor:
            batch = batch.pin_memory() if CUDA else batch  # pinned: the copy can be asynchronous
            return batch.to(DEVICE, non_blocking=True, **kwargs)

        sync()
        start = time.perf_counter()
        self.net.train()
        for _ in range(epochs):
            for index in torch.randperm(len(y), generator=generator).split(batch_size):
                loss = loss_fn(
                    self.net(to_device(x.index_select(0, index), memory_format=layout)),
                    to_device(y.index_select(0, index)),
                )
                loss.backward()
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
                self.scheduler.step()
        sync()
        return epochs * len(y) / (time.perf_counter() - start)


def against(
    candidate: Callable[[], float], reference: Callable[[], float], repeats: int
) -> dict[str, float]:
    """The two measured back to back `repeats` times (after a warm-up pair), taking turns to go
    first: medians of each, and the median of the pairs' ratios (a slow phase of a noisy
    machine hits both members of a pair)."""
    pairs = []
    for round_ in range(repeats + 1):
        if round_ % 2:
            got = (candidate(), reference())
        else:
            got = tuple(reversed((reference(), candidate())))
        if round_:
            pairs.append(got)
    return {
        "rate": statistics.median(c for c, _ in pairs),
        "reference": statistics.median(r for _, r in pairs),
        "ratio": statistics.median(c / r for c, r in pairs),
    }


def with_determinism(deterministic: bool, measure: Callable[[], float]) -> Callable[[], float]:
    """The measure run with torch's deterministic switches set as given, then restored."""

    def wrapped() -> float:
        before = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(deterministic)
        try:
            return measure()
        finally:
            torch.use_deterministic_algorithms(before)

    return wrapped


def row_major_copy(directory: Path) -> Path:
    """The bundled digits as a row-major Arrow IPC file (to read per batch from the file)."""
    path = directory / "digits_rows.arrow"
    table = row_major_table(pq.read_table(CHECKOUT_ROOT / "data" / "digits.parquet"), "label")
    with pa_ipc.new_file(path, table.schema) as writer:
        writer.write_table(table)
    return path


@ex.main
def bench(_config, seed, repeats: int, epochs: int, options: bool, workload: str) -> dict:
    """Ours against bare on the configured workload; with options, what each option costs."""
    seed_everything(seed)
    splits = load_splits()
    splits.digest(None)  # the data file's hash runs on a thread: let it end before timing
    train = splits.train
    batches = make_loader(
        train,
        True,
        generator=loader_generator(seed),
        worker_init_fn=seed_worker,
        device_is_cuda=CUDA,
    )
    net = build_model(splits.input_shape, splits.num_classes)
    layout = workload == "cnn" and CUDA  # channels_last helps convolutions on a GPU
    generator = loader_generator(seed)

    def fresh(**kwargs) -> Trainer:
        return Trainer(net, len(batches), **kwargs)

    def ours() -> float:
        return fresh(channels_last=layout).ours(batches, epochs)

    # the bare loop gets the standardised features up front, as a hand-written script would
    x, y = train[np.arange(len(train))]

    def bare() -> float:
        return fresh(channels_last=layout).bare(x, y, batches.batch_size, generator, epochs, layout)

    results = {"bare": against(ours, bare, repeats)}
    if options:
        with tempfile.TemporaryDirectory(prefix="reprolab-train-bench-") as tmp:
            candidates = option_candidates(fresh, batches, train, seed, epochs, Path(tmp))
            results |= {name: against(option, ours, repeats) for name, option in candidates.items()}
    return results


def option_candidates(
    fresh, batches, train, seed: int, epochs: int, tmp: Path
) -> dict[str, Callable[[], float]]:
    """Our loop with one option changed from the default, on a fresh model copy each time."""
    candidates = {
        "seeding.deterministic=False": with_determinism(
            False, lambda: fresh().ours(batches, epochs)
        ),
        "amp=bf16": lambda: fresh().ours(batches, epochs, amp="bf16"),
    }
    if CUDA:
        unpinned = make_loader(
            train, True, generator=loader_generator(seed), pin_memory=False, device_is_cuda=True
        )
        candidates["data.pin_memory=False"] = lambda: fresh().ours(unpinned, epochs)
    file_backed = load_splits(path=str(row_major_copy(tmp)), in_memory_mb=0).train
    for workers in (0, 2):
        loader = make_loader(
            file_backed,
            True,
            generator=loader_generator(seed),
            num_workers=workers,
            worker_init_fn=seed_worker,
            device_is_cuda=CUDA,
        )
        candidates[f"file-backed (data.in_memory_mb=0), data.num_workers={workers}"] = (
            lambda loader=loader: fresh().ours(loader, epochs)
        )
    return candidates


def run(workload: str, repeats: int, epochs: int, options: bool) -> dict[str, dict]:
    updates = {
        "repeats": repeats,
        "epochs": epochs,
        "options": options,
        "workload": workload,
        "seed": 1,
    }
    if workload == "cnn":
        updates |= {"model": {"name": "cnn"}, "data": {"shape": [1, 8, 8]}}
    return ex.run(
        config_updates=updates, options={"--loglevel": "ERROR", "--unobserved": True}
    ).result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the MLP only, 3 repeats of 1 epoch")
    parser.add_argument("--repeats", type=int, help="repeats per figure (default 21, quick 3)")
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 21)
    epochs = 1 if args.quick else 4
    print(
        f"Training-loop benchmark on {DEVICE} (torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads): samples/s over {epochs} epoch(s) of the bundled "
        f"digits (1,438 training samples, batch 64), median of {repeats} repeats"
    )
    rows, option_rows = [], []
    for workload in ["mlp"] if args.quick else ["mlp", "cnn"]:
        results = run(workload, repeats, epochs, options=workload == "mlp")
        bare = results.pop("bare")
        rows.append(
            [
                workload + (" (default run)" if workload == "mlp" else ""),
                f"{bare['rate']:,.0f}",
                f"{bare['reference']:,.0f}",
                f"{bare['ratio']:.3f}",
            ]
        )
        option_rows += [
            [name, f"{got['rate']:,.0f}", f"{got['reference']:,.0f}", f"{got['ratio']:.2f}x"]
            for name, got in results.items()
        ]
    print_table(
        "our loop against a bare PyTorch loop (target: ratio >= 0.95; ratio: median of "
        "back-to-back pairs)",
        ["model", "ours samples/s", "bare samples/s", "ours / bare"],
        rows,
    )
    print_table(
        "cost of options (MLP; each against our loop with the defaults: deterministic, "
        "fp32, in memory" + (", pinned)" if CUDA else ")"),
        ["option", "samples/s", "default samples/s", "ratio"],
        option_rows,
    )
    if not CUDA:
        print("  pin_memory and channels_last apply on a GPU only: not measured on this machine")


if __name__ == "__main__":
    main()
