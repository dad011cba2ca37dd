"""What the provenance record lists as the project's untracked files."""

from __future__ import annotations

import shutil
import subprocess

from observers.provenance import git_state


def test_a_store_inside_the_checkout_is_not_counted_as_untracked_code(default_run, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("print('hello')\n")
    git = ["git", "-C", str(project), "-c", "user.name=t", "-c", "user.email=t@t"]
    for command in (["init", "-q"], ["add", "train.py"], ["commit", "-qm", "start"]):
        subprocess.run([*git, *command], check=True, capture_output=True)
    shutil.copytree(default_run.parent, project / "elsewhere")  # as `-F elsewhere` leaves it
    (project / "notes").mkdir()
    (project / "notes" / "idea.py").write_text("x = 1\n")

    record, _ = git_state(project)

    assert record["untracked"] == ["notes/idea.py"]
