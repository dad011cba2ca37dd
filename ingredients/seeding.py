"""Seeding ingredient: one seed drives every RNG, and determinism switches are explicit and recorded."""

from __future__ import annotations

import os
import random
import warnings

import numpy as np
import torch
from sacred import Ingredient

from ingredients.schema import BOOLEAN, INSPECTION_COMMANDS, check_section, integer

# Explicit globals and no git query: Sacred would scan the whole stack (slow); the run's
# sources and their git state are gathered once by experiments/base.py.
seeding = Ingredient("seeding", _caller_globals=globals(), save_git_info=False)

# cuBLAS needs a fixed workspace to be deterministic; it must be set before CUDA starts.
CUBLAS_WORKSPACE = ":4096:8"
THREADS_VARIABLE = "REPROLAB_NUM_THREADS"  # set by `reprolab rerun`: the thread count recorded then


@seeding.config
def config():
    deterministic = True  # deterministic kernels, cuDNN deterministic, benchmark off; False lets cuDNN benchmark for speed
    loader_seed_offset = 1  # the loader's shuffling generator is seeded with seed + this offset


# What each key of the config accepts, checked before a run starts (see ingredients/__init__.py).
# The offset keeps seed + offset within what torch.Generator.manual_seed takes (seed < 2**32).
SCHEMA = {
    "deterministic": BOOLEAN,
    "loader_seed_offset": integer(0, 2**32, words="an integer in [0, 2**32)"),
}


@seeding.config_hook
def validate(config, command_name, logger):
    """Refuse bad seeding settings before the run starts."""
    if command_name not in INSPECTION_COMMANDS:
        check_section("seeding", config, SCHEMA)
    return {}


@seeding.capture
def seed_everything(seed: int, deterministic: bool) -> dict:
    """Seed python, numpy and torch (CPU and CUDA) and set the determinism switches; return what is in force."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too
    if deterministic:
        if torch.cuda.is_initialized() and os.environ.get("CUBLAS_WORKSPACE_CONFIG") is None:
            warnings.warn(
                "CUDA started before seeding: CUBLAS_WORKSPACE_CONFIG may not take effect"
            )
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    fix_threads()
    return determinism_record(seed)


def fix_threads() -> int:
    """Set torch's intra-op thread count explicitly (a rerun's: the recorded one). Float results
    depend on it (reductions and matrix products are split by thread), and only an explicit
    count turns off MKL's dynamic mode, in which each call may pick its own number of threads."""
    wanted = os.environ.get(THREADS_VARIABLE, "")
    threads = int(wanted) if wanted.isdigit() and int(wanted) > 0 else torch.get_num_threads()
    torch.set_num_threads(threads)
    return threads


def determinism_record(seed: int) -> dict:
    """What governs the run's numerics right now: seed, switches, library versions, threads."""
    cudnn = torch.backends.cudnn
    return {
        "seed": seed,
        "use_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": cudnn.deterministic,
        "cudnn_benchmark": cudnn.benchmark,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        **torch_build(),
        "num_interop_threads": torch.get_num_interop_threads(),
    }


def torch_build() -> dict:
    """torch, CUDA and cuDNN versions and the thread count: what a rerun compares with then."""
    cudnn = torch.backends.cudnn
    return {
        "torch_version": str(torch.__version__),  # a str subclass the record would mangle
        "cuda_version": torch.version.cuda,
        "cudnn_version": cudnn.version() if cudnn.is_available() else None,
        "num_threads": torch.get_num_threads(),
    }


@seeding.capture
def loader_generator(seed: int, loader_seed_offset: int) -> torch.Generator:
    """The generator that orders the training batches; its state is saved in checkpoints."""
    return torch.Generator().manual_seed(seed + loader_seed_offset)


def seed_worker(worker_id: int) -> None:
    """Seed python and numpy in a loader worker from the seed torch derived for it."""
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)


def rng_state(generator: torch.Generator) -> dict:
    """Every RNG state needed to continue bit-exactly (tensors and plain types only)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "loader": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    """Restore the states saved by rng_state."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
