"""compose.yaml, the local stack in containers: valid for Compose (validated by `docker compose config`, or
Debian's docker-compose where Docker's plugin is absent; no image is built here: there is no Docker daemon on
CI), and in agreement with the code: its variables are settings, its commands are the CLI's, its ports are
the ones it configures, its image's Dockerfile exists."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from maskserve.cli import app
from maskserve.service.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"


def compose_command() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def test_compose_validates_with_the_compose_tool():
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed (make docker-compose)")
    run = subprocess.run([*command, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr


def test_compose_agrees_with_the_code():
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert set(services) == {"redis", "encoder", "decoder"}
    known = {f"MASKSERVE_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    for name in ("encoder", "decoder"):
        s = services[name]
        assert s["command"][0] in commands
        assert set(s["environment"]) <= known, set(s["environment"]) - known
        assert s["environment"]["MASKSERVE_REDIS_URL"].startswith("redis://redis:")
        assert (ROOT / s["build"]["context"] / s["build"]["dockerfile"]).is_file()
    env = services["decoder"]["environment"]
    published = {int(p.split(":")[-1]) for p in services["decoder"]["ports"]}
    assert published == {Settings().grpc_port, int(env["MASKSERVE_HTTP_PORT"]), int(env["MASKSERVE_METRICS_PORT"])}
    assert all(p.startswith("127.0.0.1:") for p in services["decoder"]["ports"])  # loopback, as `maskserve up`
