"""Static checks of docker-compose.yml and .env.example: pinned images, no literal secrets,
localhost-only ports, an authenticated health check, and Omniboard wired to MongoDB."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import REPO_ROOT as ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
GITIGNORE = ROOT / ".gitignore"

# ${VAR}, ${VAR:-default}, ${VAR:?message}, ...; "$${...}" is compose's escape and is skipped.
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")
WHOLE_INTERPOLATION = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?:[:]?[-?+][^}]*)?\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    assert COMPOSE_FILE.is_file(), f"missing {COMPOSE_FILE}"
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and "services" in data
    return data


@pytest.fixture(scope="module")
def mongo(compose: dict[str, Any]) -> dict[str, Any]:
    assert "mongo" in compose["services"], "service 'mongo' missing"
    return compose["services"]["mongo"]


@pytest.fixture(scope="module")
def omniboard(compose: dict[str, Any]) -> dict[str, Any]:
    assert "omniboard" in compose["services"], "service 'omniboard' missing"
    return compose["services"]["omniboard"]


def _env(service: dict[str, Any]) -> dict[str, str]:
    """Return a service's environment as a dict, whichever of the two compose syntaxes it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _strings(node: Any) -> Iterator[str]:
    """Yield every string value in the parsed YAML (comments are not part of it)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _command_words(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else [str(c) for c in command]


def _env_example_vars() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def test_no_obsolete_version_key(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "top-level 'version' is obsolete in Compose v2"


def test_mongo_image_pinned_to_major_version(mongo: dict[str, Any]) -> None:
    image = mongo["image"]
    assert re.fullmatch(r"mongo:\d+(?:\.\d+){0,2}", image), f"pin the mongo image, got {image!r}"
    assert not image.endswith(":latest")


def test_root_credentials_come_from_interpolation(mongo: dict[str, Any]) -> None:
    env = _env(mongo)
    for key in ("MONGO_INITDB_ROOT_USERNAME", "MONGO_INITDB_ROOT_PASSWORD"):
        assert key in env, f"{key} not set for mongo"
        assert WHOLE_INTERPOLATION.match(env[key]), f"{key} must be ${{...}}, got {env[key]!r}"


def test_no_literal_password_in_compose_file() -> None:
    text = COMPOSE_FILE.read_text()
    placeholder = _env_example_vars().get("MONGO_ROOT_PASSWORD", "change-me")
    assert placeholder not in text
    for uri in re.findall(r"mongodb://[^\s\"']+", text):
        if "@" in uri and not uri.startswith("mongodb://<"):  # "<user>:<password>" is docs
            userinfo = uri[len("mongodb://") : uri.index("@")]
            assert all(WHOLE_INTERPOLATION.match(part) for part in userinfo.split(":", 1)), uri


def test_named_volume_declared_and_mounted(compose: dict[str, Any], mongo: dict[str, Any]) -> None:
    declared = set((compose.get("volumes") or {}).keys())
    assert declared, "no top-level named volume declared"
    mounted = {}
    for volume in mongo.get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume.get("target", "")
        mounted[target] = source
    assert "/data/db" in mounted, "nothing mounted on /data/db"
    assert mounted["/data/db"] in declared, "/data/db must use a declared named volume"


def test_mongo_healthcheck_pings_with_auth(mongo: dict[str, Any]) -> None:
    check = mongo.get("healthcheck")
    assert check, "mongo has no healthcheck"
    for key in ("test", "interval", "retries"):
        assert key in check, f"healthcheck lacks {key!r}"
    test = check["test"] if isinstance(check["test"], str) else " ".join(check["test"])
    assert "mongosh" in test and "ping" in test
    assert re.search(r"(--username|-u)\b", test) and re.search(r"(--password|-p)\b", test)
    assert "admin" in test, "authenticate against the admin database"
    assert int(check["retries"]) >= 1


def test_every_published_port_is_localhost_only(compose: dict[str, Any]) -> None:
    published = 0
    for name, service in compose["services"].items():
        for port in service.get("ports") or []:
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port!r} not on 127.0.0.1"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port!r} not on 127.0.0.1"
    assert published >= 2, "expected MongoDB and Omniboard ports"
    assert "127.0.0.1:9000:9000" in [str(p) for p in compose["services"]["omniboard"]["ports"]]


def test_omniboard_image_pinned(omniboard: dict[str, Any]) -> None:
    image = omniboard["image"]
    match = re.fullmatch(r"vivekratnavel/omniboard:([\w][\w.\-]*)", image)
    assert match, f"pin the omniboard image, got {image!r}"
    assert match.group(1) != "latest"


def test_omniboard_connects_with_full_authenticated_uri(omniboard: dict[str, Any]) -> None:
    words = _command_words(omniboard)
    assert "--mu" in words, "omniboard must be started with --mu"
    uri = words[words.index("--mu") + 1].strip("\"'")
    assert uri.startswith("mongodb://")
    assert "authSource=" in uri
    assert re.search(r"@mongo:27017/sacred\?", uri), (
        f"expected the 'sacred' database on mongo: {uri}"
    )
    userinfo = uri[len("mongodb://") : uri.index("@")]
    user, password = userinfo.split(":", 1)
    assert WHOLE_INTERPOLATION.match(user) and WHOLE_INTERPOLATION.match(password), userinfo


def test_omniboard_waits_for_healthy_mongo(omniboard: dict[str, Any]) -> None:
    depends = omniboard.get("depends_on")
    assert isinstance(depends, dict), "depends_on must use the long form with a condition"
    assert depends["mongo"]["condition"] == "service_healthy"


def test_services_have_restart_policy(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service.get("restart") in {"always", "unless-stopped", "on-failure"}, name


def test_env_example_defines_every_interpolated_variable(compose: dict[str, Any]) -> None:
    assert ENV_EXAMPLE.is_file(), f"missing {ENV_EXAMPLE}"
    used = {m for s in _strings(compose) for m in INTERPOLATION.findall(s)}
    assert {"MONGO_ROOT_USER", "MONGO_ROOT_PASSWORD"} <= used
    defined = _env_example_vars()
    missing = used - defined.keys()
    assert not missing, f".env.example lacks {sorted(missing)}"
    assert defined["MONGO_ROOT_PASSWORD"] == "change-me"


def test_env_example_shows_reprolab_mongo_url() -> None:
    text = ENV_EXAMPLE.read_text()
    url = re.search(r"REPROLAB_MONGO_URL=\"?(mongodb://\S+?)\"?$", text, re.MULTILINE)
    assert url, ".env.example should show the REPROLAB_MONGO_URL to export"
    assert "@127.0.0.1:27017/sacred?" in url.group(1) and "authSource=admin" in url.group(1)
    line = next(l for l in text.splitlines() if "REPROLAB_MONGO_URL" in l)
    assert line.lstrip().startswith("#"), "the URL is documentation, not a compose variable"


def test_gitignore_ignores_env_file() -> None:
    assert GITIGNORE.is_file(), f"missing {GITIGNORE}"
    lines = {line.strip() for line in GITIGNORE.read_text().splitlines()}
    assert ".env" in lines, ".gitignore must ignore .env"


def _compose_cli() -> list[str] | None:
    """Return a working Compose command: the `docker compose` plugin, else `docker-compose`."""
    candidates = []
    if docker := shutil.which("docker"):
        candidates.append([docker, "compose"])
    if legacy := shutil.which("docker-compose"):
        candidates.append([legacy])
    for cli in candidates:
        try:
            probe = subprocess.run(
                [*cli, "version"], check=False, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return cli
    return None


def test_docker_compose_config_validates(tmp_path: Path) -> None:
    """Bonus: let Compose itself validate the file (`config` needs no engine)."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither the docker compose plugin nor docker-compose is installed")
    env_file = ["--env-file", str(ENV_EXAMPLE)]
    files = ["--project-directory", str(tmp_path), "-f", str(COMPOSE_FILE)]
    result = subprocess.run(
        [*cli, *env_file, *files, "config", "--quiet"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    if result.returncode != 0 and re.search(r"daemon|engine", result.stderr, re.IGNORECASE):
        pytest.skip(f"compose config needs an engine here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
