"""Rule 5 of issue 19: anything that looks like a URL with credentials is a secret, whatever its
case, slashes or characters. Hypothesis writes hostile passwords; none may reach the redacted
form, an error line, a recorded command line or printed sweep commands."""

from __future__ import annotations

import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from observers import credentials as cr
from observers.location import check_location

SCHEMES = ["mongodb://", "MONGODB://", "MongoDB://", "mongodb:/", "mongodb:", "mongodb+srv://"]
HOSTILE = st.text(
    alphabet=st.one_of(
        st.sampled_from(list(" @/%:?#[]'\"\\\t+&=é€")),
        st.characters(blacklist_categories=("Cs", "Cc")),
    ),
    min_size=6,
    max_size=24,
).filter(lambda p: p.strip() == p and any(c in p for c in " @/%:é€"))


def url_of(scheme: str, password: str) -> str:
    return f"{scheme}reprolab:{password}@127.0.0.1:27017/sacred"


def visible(password: str, template: str) -> bool:
    """A password is only checkable if it is not part of the URL's other text."""
    return password not in template


@pytest.mark.parametrize(
    "url",
    [
        "MONGODB://u:pa ss@h/db",
        "mongodb:/u:s3cr3t@h",
        "mongodb:u:s3cr3t@h",
        "mongodb://u:p@ss/w%20rd@h/db",
        "mongodb://u:pässwörd€@h/db",
    ],
)
def test_odd_urls_are_recognised_and_hidden(url):
    password = url.split(":", 2)[-1].rpartition("@")[0]
    assert cr.has_credentials(url)
    assert password not in cr.redact_url(url) and "***" in cr.redact_url(url)


def test_a_credentials_url_that_is_no_mongodb_url_is_never_a_folder(tmp_path, monkeypatch):
    from observers.attach import observers_for
    from observers.store import open_store

    monkeypatch.chdir(tmp_path)
    for location in ("MONGODB://u:s3cr3t@h/db", "mongodb:/u:s3cr3t@h", "mongodb:u:s3cr3t@h"):
        for opener in (observers_for, open_store):
            with pytest.raises(ValueError) as error:
                opener(location)
            assert "s3cr3t" not in str(error.value) and "***" in str(error.value)
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scheme=st.sampled_from(SCHEMES), password=HOSTILE)
def test_hostile_password_never_shows(scheme, password):
    url = url_of(scheme, password)
    if not visible(password, url_of(scheme, "")):
        return
    assert cr.has_credentials(url)
    # the redacted form, and the URL inside a longer line
    assert password not in cr.redact_url(url)
    assert password not in cr.redact(f"cannot reach {url}: timed out", cr.url_secrets(url))
    # an error line as pymongo would write it, quoting the URL and the decoded password
    error = ValueError(f"bad uri {url!r}; password {password!r} ascii {ascii(password)}")
    assert password not in cr.describe_error(error, url)
    # refused as a store location unless it is a proper mongodb:// URL
    if not url.startswith(("mongodb://", "mongodb+srv://")):
        with pytest.raises(ValueError) as refused:
            check_location(url)
        assert password not in str(refused.value)
    # a recorded command line and a run's recorded options
    argv = ["torchrun", "train.py", "-R", url, f"--store={url}", "with", f"data.path={url}"]
    assert all(password not in part for part in cr.redact_argv(argv))
    run = types.SimpleNamespace(
        meta_info={"options": {"--store": url, "UPDATE": [f"data.path={url}"]}},
        experiment_info={"repositories": [{"url": url}]},
    )
    from observers.attach import hide_credentials

    hide_credentials(run)
    assert password not in repr(run.meta_info) + repr(run.experiment_info)
    with pytest.raises(ValueError) as refused:
        cr.check_no_credentials("data.path", url)
    assert password not in str(refused.value)


@settings(max_examples=60, deadline=None)
@given(scheme=st.sampled_from(SCHEMES[:3]), password=HOSTILE)
def test_invalid_mongodb_url_error_hides_password(scheme, password):
    from observers import mongo as om

    url = url_of(scheme, password) + "?notanoption=:"
    if not visible(password, url_of(scheme, "") + "?notanoption=:"):
        return
    try:
        om.check_url(url)
    except ValueError as error:
        assert password not in str(error)


@settings(max_examples=40, deadline=None)
@given(password=HOSTILE)
def test_printed_sweep_commands_hide_password(password):
    import contextlib
    import io
    import tempfile

    from experiments.sweeps.command import launch_commands
    from experiments.sweeps.options import SweepOptions
    from experiments.sweeps.record import Job, SweepBook, SweepRecord
    from observers.location import StoreLocation

    url = url_of("MONGODB://", password)
    if not visible(password, url_of("MONGODB://", "")):
        return
    record = SweepRecord("s1", "experiments/train.py", [], [{}])
    job = Job(0, [f"data.path={url}", "lr=0.1"])
    out = io.StringIO()
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(out):
        store = StoreLocation(folder)
        book = SweepBook(store)
        book.save(record)  # as the sweep command does before it launches
        launch_commands(SweepOptions(store), record, book, [job])
    assert password not in out.getvalue()
