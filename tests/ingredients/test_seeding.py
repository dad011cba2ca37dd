"""Seeding ingredient: every RNG seeded, determinism switches, RNG state round trip."""

import os
import random

import numpy as np
import pytest
import torch

from ingredients.seeding import loader_generator, rng_state, seed_everything, set_rng_state


@pytest.fixture(autouse=True)
def restore_switches(monkeypatch):
    """These tests flip process-wide switches: put them back for the tests that follow."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.benchmark = before[1]


def draws(generator):
    return (
        random.random(),
        float(np.random.rand()),
        float(torch.rand(1)),
        int(torch.randint(0, 1000, (1,), generator=generator)),
    )


def test_same_seed_same_draws_everywhere():
    seed_everything(11, deterministic=True)
    first = draws(loader_generator(11, 1))
    seed_everything(11, deterministic=True)
    assert draws(loader_generator(11, 1)) == first
    seed_everything(12, deterministic=True)
    assert draws(loader_generator(12, 1)) != first


def test_deterministic_switches_are_set_and_recorded():
    record = seed_everything(3, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert record["use_deterministic_algorithms"] and record["cudnn_deterministic"]
    assert not record["cudnn_benchmark"]
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == record["cublas_workspace_config"] == ":4096:8"
    assert record["torch_version"] == torch.__version__ and record["num_threads"] >= 1
    fast = seed_everything(3, deterministic=False)
    assert fast["cudnn_benchmark"] and not fast["use_deterministic_algorithms"]


def test_rng_state_round_trip_continues_the_same_stream():
    seed_everything(5, deterministic=True)
    generator = loader_generator(5, 1)
    draws(generator)
    saved = rng_state(generator)
    expected = draws(generator)
    seed_everything(99, deterministic=True)
    other = loader_generator(99, 1)
    set_rng_state(saved, other)
    assert draws(other) == expected
