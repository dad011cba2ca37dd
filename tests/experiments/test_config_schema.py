"""Every key of every ingredient and of train.py has a declared type and range: a value of the
wrong type or sign (or one a record cannot hold) is one ConfigurationError naming the key, raised
before any run directory exists. Property-based: hypothesis generates the wrong values."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from experiments.base import ConfigurationError
from experiments.train import SCHEMA as TRAIN_SCHEMA
from experiments.train import ex
from ingredients.data import SCHEMA as DATA_SCHEMA
from ingredients.model import SCHEMA as MODEL_SCHEMA
from ingredients.optimizer import SCHEMA as OPTIMIZER_SCHEMA
from ingredients.seeding import SCHEMA as SEEDING_SCHEMA
from tests.helpers import REPO_ROOT

SCHEMAS = {
    None: TRAIN_SCHEMA,
    "data": DATA_SCHEMA,
    "model": MODEL_SCHEMA,
    "optimizer": OPTIMIZER_SCHEMA,
    "seeding": SEEDING_SCHEMA,
}

# The type of every key, declared here apart from the schemas so the test can catch a wrong rule.
# A trailing "?" means None is allowed.
KINDS = {
    "seed": "int",
    "lr": "number",
    "epochs": "int",
    "device": "str",
    "amp": "str",
    "accumulate": "int",
    "loss": "str",
    "monitor": "str",
    "monitor_mode": "str",
    "patience": "int?",
    "limit_batches": "int?",
    "progress": "bool",
    "resume": "run?",
    "lr_scaling": "str",
    "allow_world_size_change": "bool",
    "data.path": "str",
    "data.format": "str",
    "data.target": "str",
    "data.features": "strs?",
    "data.shape": "ints?",
    "data.standardize": "bool",
    "data.val_fraction": "number",
    "data.split_seed": "int",
    "data.batch_size": "int",
    "data.shuffle": "bool",
    "data.drop_last": "bool",
    "data.num_workers": "int",
    "data.pin_memory": "bool",
    "data.in_memory_mb": "number",
    "data.image_column": "str?",
    "data.channels": "int?",
    "data.image_size": "ints?",
    "data.split_column": "str?",
    "data.val_path": "str?",
    "data.test_path": "str?",
    "data.augment": "groups",
    "data.mean": "numbers?",
    "data.std": "numbers?",
    "model.name": "str",
    "model.hidden": "ints",
    "model.dropout": "number",
    "model.batchnorm": "bool",
    "model.channels": "ints",
    "model.kwargs": "dict",
    "model.freeze": "strs",
    "model.freeze_batchnorm": "bool",
    "model.sync_batchnorm": "bool",
    "optimizer.name": "str",
    "optimizer.momentum": "number",
    "optimizer.nesterov": "bool",
    "optimizer.betas": "numbers",
    "optimizer.weight_decay": "number",
    "optimizer.param_groups": "groups",
    "optimizer.clip_grad_norm": "number?",
    "optimizer.schedule": "str",
    "optimizer.step_size": "int",
    "optimizer.gamma": "number",
    "optimizer.warmup_epochs": "int",
    "seeding.deterministic": "bool",
    "seeding.loader_seed_offset": "int",
}

# Values no record can hold as plain JSON, whatever the key.
UNSTORABLE = st.one_of(
    st.complex_numbers(),
    st.binary(max_size=4),
    st.frozensets(st.integers(), max_size=3).map(set),
    st.integers(min_value=2**63),
    st.integers(max_value=-(2**63) - 1),
)
TEXT = st.text(max_size=8)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
NEGATIVE = st.one_of(st.integers(max_value=-1), st.floats(max_value=-1e-9, allow_infinity=True))
LISTS = st.lists(st.integers(0, 9), max_size=3)
DICTS = st.dictionaries(st.text("abc", max_size=3), st.integers(0, 9), max_size=2)
NOT_INT = st.one_of(FLOATS, TEXT, st.booleans(), LISTS, DICTS, st.integers(max_value=-1))
NOT_NUMBER = st.one_of(NEGATIVE, NON_FINITE, TEXT, st.booleans(), LISTS, DICTS)
NOT_BOOL = st.one_of(
    st.integers(),
    FLOATS,
    st.sampled_from(["true", "false", "yes", "0"]),
    TEXT,
    st.lists(st.booleans(), max_size=2),
)
NOT_STR = st.one_of(st.integers(), FLOATS, st.booleans(), LISTS, DICTS, st.just(""))
NOT_LIST = st.one_of(st.integers(), TEXT, st.booleans(), DICTS)

WRONG = {
    "int": NOT_INT,
    "number": NOT_NUMBER,
    "bool": NOT_BOOL,
    "str": NOT_STR,
    "ints": st.one_of(NOT_LIST, st.lists(NOT_INT | st.just(0), min_size=1, max_size=3)),
    "strs": st.one_of(NOT_LIST, st.lists(NOT_STR, min_size=1, max_size=3)),
    "numbers": st.one_of(NOT_LIST, st.lists(NOT_NUMBER, min_size=2, max_size=2)),
    "dict": st.one_of(st.integers(), TEXT, st.booleans(), LISTS),
    "groups": st.one_of(
        NOT_LIST,
        st.lists(NOT_LIST, min_size=1, max_size=2),
        st.just([{"lr_scale": 2.0}]),
        st.just([{"pattern": "*", "lr": 1}]),
    ),
    "run": st.one_of(FLOATS, st.booleans(), LISTS, DICTS, st.integers(max_value=0), st.just("")),
}


def wrong_values(kind: str):
    """Values of every wrong type for a key of this kind (None too, unless it is allowed)."""
    base = WRONG[kind.rstrip("?")]
    return (
        st.one_of(base, UNSTORABLE)
        if kind.endswith("?")
        else st.one_of(base, UNSTORABLE, st.none())
    )


def update_for(key: str, value) -> dict:
    section, _, leaf = key.rpartition(".")
    return {section: {leaf: value}} if section else {key: value}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("schema_store") / "runs"


def refused(store: Path, updates: dict) -> str:
    """The one-line message a config is refused with; fails if it ran or failed otherwise.
    A run that wrongly starts stops after one batch."""
    try:
        ex.run(
            config_updates={"epochs": 1, "limit_batches": 1, **updates},
            options={"--store": str(store), "--loglevel": "ERROR"},
        )
    except ConfigurationError as error:
        message = str(error)
    else:
        pytest.fail(f"{updates!r} was accepted")
    assert "\n" not in message and "unknown config key" not in message, message
    assert not store.exists() or not any(store.iterdir()), f"{updates!r} left a run directory"
    return message


def test_every_config_key_has_a_rule_and_a_declared_kind():
    config = ex._create_run("print_config").config  # the defaults, without any check
    keys = {f"{section}.{k}" for section in SCHEMAS if section for k in config[section]}
    keys |= {k for k in config if k not in SCHEMAS}
    declared = {f"{s}.{k}" if s else k for s, schema in SCHEMAS.items() for k in schema}
    assert keys == declared == set(KINDS)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_wrong_value_for_any_key_is_one_sentence_naming_it(store, data):
    key = data.draw(st.sampled_from(sorted(KINDS)), label="key")
    value = data.draw(wrong_values(KINDS[key]), label="value")
    message = refused(store, update_for(key, value))
    assert message.startswith(key), message


@settings(max_examples=15, deadline=None)
@given(
    section=st.sampled_from(["data", "model", "optimizer", "seeding"]),
    value=st.one_of(st.none(), st.integers(-9, 9), TEXT, LISTS, st.booleans()),
)
def test_an_ingredient_section_replaced_by_a_value_is_one_sentence(store, section, value):
    assert refused(store, {section: value}).startswith(f"{section} is a group of settings")


@pytest.mark.parametrize(
    "update, expected",
    [
        (
            "seeding.deterministic='yes'",
            "error: seeding.deterministic must be true or false, got 'yes'",
        ),
        ("data.shape={1,2}", "error: data.shape cannot be stored in a run's record"),
        ("nope.json", "error: config file not found: nope.json"),
    ],
)
def test_the_command_line_says_one_line_and_exits_2(tmp_path, update, expected):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "experiments" / "train.py"),
            "-F",
            str(tmp_path / "s"),
            "with",
            update,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(expected) and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "s").exists()


@pytest.fixture(scope="module")
def float_target(tmp_path_factory) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(REPO_ROOT / "data" / "digits.parquet")
    labels = pa.array(table.column("label").to_numpy().astype("float32"))
    path = tmp_path_factory.mktemp("float_target") / "float.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", labels), path)
    return path


@pytest.mark.parametrize(
    "loss, expected",
    [
        (
            "bce_with_logits",
            "loss: bce_with_logits needs targets in [0, 1], the target column holds "
            "values from 0.0 to 9.0",
        ),
        ("cross_entropy", "loss: cross_entropy needs an integer target column"),
    ],
)
def test_a_target_that_does_not_fit_the_loss_is_refused(store, float_target, loss, expected):
    message = refused(store, {"loss": loss, "data": {"path": str(float_target)}})
    assert message.startswith(expected)


@pytest.mark.parametrize(
    "path, expected",
    [
        ("x" * 5000, "data.path: cannot use 'xxx"),  # longer than any file name may be
        ("data/\0digits.parquet", "data.path must be a file path"),
        (str(REPO_ROOT / "data" / "absent.parquet"), "data.path: file not found"),
    ],
)
def test_a_path_that_cannot_be_a_file_is_one_sentence(store, path, expected):
    assert refused(store, {"data": {"path": path}}).startswith(expected)


@pytest.mark.parametrize(
    "device", ["meta", "mps", "cuda:", "cuda:-1", "cpu:0", "CPU", "cuda:\u0663"]
)
def test_a_device_train_cannot_use_is_one_sentence(store, device):
    assert refused(store, {"device": device}) == (
        f"device must be auto, cpu, cuda or cuda:N, got {device!r}"
    )


def test_a_gpu_past_the_machines_count_is_refused_before_the_run(store, monkeypatch):
    # this machine has no GPU: CUDA is made to report one, so that cuda:1 is one too many
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    assert refused(store, {"device": "cuda:1"}) == (
        "device: 'cuda:1' asked for, but this machine has 1 CUDA device(s), numbered from 0"
    )


HUGE = "a" * 100_000


@pytest.mark.parametrize(
    "updates",
    [
        {"monitor": HUGE},
        {"model": {"name": HUGE}},
        {"model": {"freeze": [HUGE]}},
        {"data": {"target": HUGE}},
        {"data": {"features": [HUGE]}},
        {"optimizer": {"param_groups": [{"pattern": HUGE, "lr_scale": 2.0}]}},
    ],
)
def test_a_huge_value_is_shortened_in_its_sentence(store, updates):
    message = refused(store, updates)
    assert f"'{'a' * 39}...{'a' * 19}'" in message and len(message) < 300, message[:300]


def test_a_runs_loglevel_is_for_that_run_only(store):
    """Sacred's --loglevel sets the experiment's logger for good; a later run would log nothing."""
    refused(store, {"epochs": 0})
    assert ex.logger.level == logging.INFO


# --------------------------------------------------------------------------- issue 19, rule 4

JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**31), 2**31), st.floats(), TEXT),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(TEXT, children, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    named=st.lists(st.sampled_from(["cnn", "debug"]), max_size=2, unique=True),
    section=st.sampled_from(["data", "model", "optimizer", "seeding"]),
    value=st.one_of(st.none(), st.integers(-9, 9), TEXT, LISTS, st.booleans()),
)
def test_a_section_replaced_beside_named_configs_is_one_sentence(store, named, section, value):
    try:
        ex.run(
            config_updates={"epochs": 1, "limit_batches": 1, section: value},
            named_configs=named,
            options={"--store": str(store), "--loglevel": "ERROR"},
        )
    except ConfigurationError as error:
        assert str(error).startswith(f"{section} is a group of settings"), str(error)
    else:
        pytest.fail("accepted")
    assert not store.exists() or not any(store.iterdir())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kwargs=st.dictionaries(
        st.one_of(TEXT, st.sampled_from(["py/object", "py/reduce", "json://1", "py/tuple"])),
        JSON_VALUES,
        min_size=1,
        max_size=3,
    )
)
@example(kwargs={"\n": {"": None}})  # a key's newline was repeated into the sentence
def test_values_of_every_json_type_in_a_dict_valued_key_are_one_sentence(store, kwargs):
    """Plain data is taken as typed (never decoded); anything else is one sentence naming it."""
    updates = {"epochs": 1, "model": {"kwargs": kwargs}}
    keys = list(all_keys(kwargs))
    odd = [k for k in keys if not k or k[0] == "$" or {".", "="} & set(k)]
    encoded = [k for k in keys if k.startswith(("py/", "json://"))]
    try:
        run = ex._create_run("train", config_updates=updates, options={"--store": str(store)})
    except ConfigurationError as error:
        message = str(error)
        assert "\n" not in message and message.startswith("model.kwargs"), message
        assert encoded or odd, message
    else:
        assert not encoded and not odd
        assert json.dumps(dict(run.config["model"]["kwargs"]), sort_keys=True) == json.dumps(
            kwargs, sort_keys=True
        )
    assert not store.exists() or not any(store.iterdir())


def all_keys(value):
    """Every mapping key at any depth of a value."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from all_keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from all_keys(item)


def run_train(tmp_path: Path, *words: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "experiments" / "train.py"), "-F", "s", *words],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")
)


@pytest.mark.parametrize(
    "words, expected",
    [
        (["with", "cfg.pickle"], "only JSON or YAML config files"),
        (["with", "bomb.yaml"], "YAML aliases (*name) are not accepted"),
        (["with", "dup.json"], "the key 'lr' appears twice"),
        (["with", "model.kwargs={'py/object': 'os.system'}"], "object encoding"),
        (["with", "model.kwargs={'json://x': 1}"], "object encoding"),
        (["with", "cnn", "data=1"], "data is a group of settings"),
        (["with", "data.num_workers=1000"], "data.num_workers must be an integer in [0,"),
        (["with", f"model.hidden={list(range(20000))}"], "at most 10000"),
        (["with", "data.path=MONGODB://u:pa ss@h/x"], "holds a URL with a password"),
    ],
)
def test_hostile_config_input_is_one_line_exit_2_and_never_opened(tmp_path, words, expected):
    pickled = (
        b"\x80\x04\x95.\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c\x06system\x93"
        + b"\x8c\x14touch PICKLE_RAN_xyz\x85R."
    )
    (tmp_path / "cfg.pickle").write_bytes(pickled)
    (tmp_path / "bomb.yaml").write_text(BOMB)
    (tmp_path / "dup.json").write_text('{"lr": 0.1, "lr": 0.2}')
    result = run_train(tmp_path, *words)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1 and expected in result.stderr, result.stderr
    assert "pa ss" not in result.stderr
    assert not (tmp_path / "PICKLE_RAN_xyz").exists() and not (tmp_path / "s").exists()


def test_sweep_bounds_are_checked_before_values_are_made(tmp_path):
    import time

    from experiments.sweeps import declare as sd

    started = time.monotonic()
    with pytest.raises(ValueError, match="a grid axis holds at most"):
        sd.from_words(["seed=range(1000000000)"])
    with pytest.raises(ValueError, match="more than the 100,000 one sweep may hold"):
        sd.expand(
            sd.from_words(
                ["seed=range(10000)", "lr=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1]"]
            ),
            0,
        )
    (tmp_path / "big.yaml").write_text(
        "grid: {lr: [0.1]}\nrandom: {samples: 1000000000000, values: {seed: [1, 2]}}\n"
    )
    with pytest.raises(ValueError, match=r"random.samples must be an integer in \[1, 100000\]"):
        sd.from_file(tmp_path / "big.yaml")
    (tmp_path / "bomb.yaml").write_text("fixed:\n  " + BOMB.replace("\n", "\n  "))
    with pytest.raises(ValueError, match="aliases"):
        sd.from_file(tmp_path / "bomb.yaml")
    (tmp_path / "dup.yaml").write_text("grid: {lr: [0.1]}\ngrid: {lr: [0.2]}\n")
    with pytest.raises(ValueError, match="appears twice"):
        sd.from_file(tmp_path / "dup.yaml")
    (tmp_path / "huge.yaml").write_bytes(b"#" * (2 << 20))
    with pytest.raises(ValueError, match="not read"):
        sd.from_file(tmp_path / "huge.yaml")
    assert time.monotonic() - started < 10


def test_names_longer_than_a_file_name_are_one_sentence(tmp_path):
    from observers.sweep_records import FileSweepRecords

    result = run_train(tmp_path, "with", f"resume={'r' * 300}")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "fit in a file name" in result.stderr
    with pytest.raises(ValueError, match="fit in a file name"):
        FileSweepRecords(tmp_path).find("s" * 300)
