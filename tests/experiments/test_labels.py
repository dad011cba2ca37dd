"""A run's notes and tags (meta.comment, meta.tags) say its sweep, search trial and torchrun size."""

from __future__ import annotations

import re

import pytest

from experiments.membership import label_run

WORDS = {"options": {"UPDATE": ["lr=0.01", "seed=1"]}}


@pytest.mark.parametrize(
    "meta, comment, tags",
    [
        (
            {**WORDS, "sweep": {"id": "20261204-ab12", "index": 3}},
            "sweep 20261204-ab12 config 3: lr=0.01 seed=1",
            ["sweep:20261204-ab12"],
        ),
        (
            {
                "sweep": {"id": "s7", "index": 12, "trial": 12},
                "config_updates": {"optimizer": {"name": "sgd"}},
            },
            "search s7 trial 12: optimizer.name='sgd'",
            ["search:s7"],
        ),
        (
            {"distributed": {"world_size": 2, "nodes": 1}},
            "torchrun, 2 processes",
            ["torchrun:2"],
        ),
        (
            {
                **WORDS,
                "sweep": {"id": "x", "index": 0},
                "distributed": {"world_size": 4, "nodes": 2},
            },
            "sweep x config 0: lr=0.01 seed=1; torchrun, 4 processes on 2 nodes",
            ["sweep:x", "torchrun:4"],
        ),
    ],
)
def test_notes_and_tags_name_the_sweep_trial_and_processes(meta, comment, tags):
    label_run(meta)
    assert meta["comment"] == comment and meta["tags"] == tags


def test_a_users_comment_wins_and_a_plain_run_gets_none():
    meta = {**WORDS, "sweep": {"id": "x", "index": 1}, "comment": "my note"}
    label_run(meta)
    assert meta["comment"] == "my note" and meta["tags"] == ["sweep:x"]
    plain = dict(WORDS)
    label_run(plain)
    assert plain == WORDS


def test_a_long_command_line_is_cut():
    meta = {
        "options": {"UPDATE": [f"k{i}=1" for i in range(100)]},
        "sweep": {"id": "x", "index": 0},
    }
    label_run(meta)
    assert len(meta["comment"]) < 240 and meta["comment"].endswith("...")


def test_the_command_line_parses_only_the_options_it_declares():
    """Sacred's docopt reads options out of the help text: a wrapped help line that begins with
    `--word` becomes a junk option recorded in every run's meta.options."""
    from docopt import docopt
    from sacred.arg_parser import format_usage

    import experiments.train as train

    ex = train.ex
    usage = format_usage("dummy", ex.doc, dict(ex.gather_commands()), ex.all_cli_options)
    parsed = {
        key for key in docopt(usage, ["with", "lr=0.1"], default_help=False) if key[:1] == "-"
    }
    assert parsed == {option.get_flag() for option in ex.all_cli_options}


RECORDED = [{"lr": 0.01, "seed": 7}, {"lr": 0.5, "optimizer": {"name": "sgd"}, "seed": 7}]


@pytest.mark.parametrize(
    "claim, words, config, refusal",
    [
        ("s1:1", ["debug", "lr=0.5", "optimizer={'name': 'sgd'}", "seed=7"], RECORDED[1], None),
        ("s1:0", ["resume=3"], {**RECORDED[0], "resume": 3}, None),  # continued by a sweep
        ("s1:0", ["resume=3"], {"lr": 0.2, "seed": 7, "resume": 3}, "has lr=0.01, this run 0.2"),
        ("s1:1", ["debug", "lr=0.01", "seed=7"], RECORDED[0], "config has lr=0.5, this run 0.01"),
        ("s1:2", ["debug"], RECORDED[0], "the sweep has 2 configs"),
        ("s1:0", ["lr=0.01", "seed=7"], RECORDED[0], "named configs are ['debug'], not []"),
        ("s1:0", ["debug", "lr=0.01", "seed=7", "epochs=1"], RECORDED[0], "epochs is not one of"),
        ("s1:0", ["debug", "lr=0.01"], {"lr": 0.01, "seed": 8}, "config has seed=7, this run 8"),
        ("nosuch:0", ["debug"], RECORDED[0], "no sweep 'nosuch' in"),
    ],
)
def test_a_run_claims_only_the_sweep_config_it_is(tmp_path, claim, words, config, refusal):
    """A printed command edited, or typed with another index or sweep, was recorded and reported
    as the sweep's config: compare --sweep ranked a run under a config it never trained."""
    from types import SimpleNamespace

    from experiments.membership import check_membership, sweep_option
    from experiments.sweeps.record import SweepBook, SweepRecord
    from observers.location import StoreLocation
    from observers.records import RecordError

    location = StoreLocation.parse(str(tmp_path / "runs"))
    SweepBook(location).save(SweepRecord("s1", "experiments/train.py", ["debug"], RECORDED))
    options = {"--store": str(location), "UPDATE": words}
    run = SimpleNamespace(meta_info={"options": options}, config=config)
    sweep_option(claim, run)
    if refusal is None:
        check_membership(run)
    else:
        with pytest.raises((ValueError, RecordError), match=re.escape(refusal)):
            check_membership(run)
