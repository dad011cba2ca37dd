"""A file store's evaluations: added whole and bounded, read as plain data, apart from the run's
own record."""

from __future__ import annotations

import json

import pytest

from observers.evaluations import FILE, add_evaluation, read_evaluations
from observers.store import FileRunStore, RecordError


@pytest.fixture
def store(tmp_path) -> FileRunStore:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "run.json").write_text('{"status": "COMPLETED"}')
    return FileRunStore(tmp_path)


def test_evaluations_are_added_whole_and_bounded(store, monkeypatch):
    add_evaluation(store, 1, {"loss": 0.5})
    add_evaluation(store, 1, {"loss": 0.25})
    assert [e["loss"] for e in read_evaluations(store, 1)] == [0.5, 0.25]
    assert (store.root / "1" / "run.json").read_text() == '{"status": "COMPLETED"}'
    monkeypatch.setattr("observers.evaluations.MAX_EVALUATIONS", 2)
    with pytest.raises(RecordError, match="run 1 already keeps 2 evaluations .* the 2 a run may"):
        add_evaluation(store, 1, {"loss": 0.125})
    assert len(read_evaluations(store, 1)) == 2


@pytest.mark.parametrize(
    "planted, says",
    [
        ([{"py/object": "os.system"}], "object-encoding key 'py/object'"),
        ({"loss": 1}, "is not a list of evaluations"),
        ([1, 2], "is not a list of evaluations"),
    ],
)
def test_a_planted_evaluations_file_is_refused_in_one_sentence(store, planted, says):
    (store.root / "1" / FILE).write_text(json.dumps(planted))
    with pytest.raises(RecordError, match=says) as refused:
        read_evaluations(store, 1)
    assert "\n" not in str(refused.value)
