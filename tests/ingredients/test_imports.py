"""Import paths in the config: searched where a Python user expects, recorded, and never taken
from inside a run store."""

from __future__ import annotations

import sys

import pytest

from ingredients.imports import RESOLVED, import_callable, module_file


@pytest.fixture(autouse=True)
def own_sys_path(monkeypatch):
    """Each test's additions to sys.path and sys.modules are undone after it."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_a_module_in_the_current_directory_is_found_and_recorded(tmp_path, monkeypatch):
    (tmp_path / "cwd_models.py").write_text("def make(**kwargs):\n    return 'built'\n")
    monkeypatch.chdir(tmp_path)
    factory = import_callable("model.name", "cwd_models:make")
    assert factory() == "built"
    assert RESOLVED["model.name"]["file"] == str(tmp_path / "cwd_models.py")
    assert str(tmp_path) in RESOLVED["model.name"]["searched"]


def test_a_folder_a_record_once_named_is_never_searched(tmp_path, monkeypatch):
    """Replaces "a module in a recorded root is found from elsewhere": the variable a rerun used
    to set is ignored, so only the working directory and Python's own path are searched."""
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "rooted_models.py").write_text("def make():\n    return 7\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REPROLAB_IMPORT_ROOTS", str(tmp_path / "own"))
    with pytest.raises(ValueError, match="no module 'rooted_models'"):
        import_callable("model.name", "rooted_models:make")
    assert module_file("rooted_models", [str(tmp_path)]) is None
    assert module_file("rooted_models", [str(tmp_path / "own")]) == str(
        tmp_path / "own" / "rooted_models.py"
    )
    assert module_file("../etc", [str(tmp_path)]) is None  # not a module name: not looked up


def test_a_missing_module_is_one_sentence_saying_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", "/nowhere")
    with pytest.raises(ValueError) as error:
        import_callable("model.name", "no_such_models_here:make")
    message = str(error.value)
    assert message.startswith("model.name: cannot import 'no_such_models_here:make'")
    assert str(tmp_path) in message and "/nowhere" in message and "\n" not in message


@pytest.mark.parametrize("layout", ["_sources", "run.json", ".reprolab"])
def test_a_module_inside_a_run_store_is_refused_before_it_runs(tmp_path, monkeypatch, layout):
    store = tmp_path / "store"
    (store / "3" / "pkg").mkdir(parents=True)
    if layout == "run.json":
        (store / "3" / "run.json").write_text("{}")
    else:
        (store / layout).mkdir()
    marker = tmp_path / "ran"
    (store / "3" / "pkg" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (store / "3" / "pkg" / "planted.py").write_text("def make():\n    return 1\n")
    monkeypatch.chdir(store / "3")
    with pytest.raises(
        ValueError,
        match=r"^model.name: refusing to import 'pkg.planted:make' from "
        r".* inside the run store",
    ):
        import_callable("model.name", "pkg.planted:make")
    assert not marker.exists()
    assert "pkg" not in sys.modules
