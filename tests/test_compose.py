"""docker-compose.yml is valid for docker-compose and has the production shape the architecture describes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # PyYAML is installed with amqtt, a runtime dependency of the project.

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

APP_SERVICES = {
    "ingest": "ingest",
    "alerting": "alerting",
    "alerting-notify": "alerting",
    "gateway": "gateway",
    "registry": "registry",
}
ALL_SERVICES = {"timescaledb", "mosquitto", "migrate", *APP_SERVICES, "simulator"}
# Variables that would change what the file resolves to; the tests pin them.
_COMPOSE_VARIABLES = {"POSTGRES_PASSWORD", "GG_LOG_LEVEL", "COMPOSE_FILE", "COMPOSE_PROFILES", "COMPOSE_PROJECT_NAME"}


def docker_compose_binary() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        pytest.fail(
            "docker-compose is not installed, so docker-compose.yml cannot be checked: "
            "run `apt-get install -y docker-compose` (.ci/run installs it)",
            pytrace=False,
        )
    return path


def run_compose(*args: str, env_file: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in _COMPOSE_VARIABLES} | variables
    return subprocess.run(
        [
            docker_compose_binary(),
            "--file",
            str(COMPOSE_FILE),
            "--project-directory",
            str(ROOT),
            "--env-file",
            str(env_file),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    """An empty env file, so a developer's .env cannot change what is checked."""
    path = tmp_path / "compose.env"
    path.write_text("")
    return path


def resolved(env_file: Path, **variables: str) -> dict[str, Any]:
    result = run_compose("config", env_file=env_file, **variables)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container target -> source, from short (``src:dst[:mode]``) or long volume syntax."""
    found: dict[str, str] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        found[target] = source
    return found


def test_compose_config_is_valid(env_file: Path) -> None:
    """``docker-compose config -q`` accepts the file."""
    result = run_compose("config", "-q", env_file=env_file)
    assert result.returncode == 0, f"docker-compose config -q failed:\n{result.stderr}"


def test_services_and_demo_profile(env_file: Path) -> None:
    """Every service exists; only the simulator is behind the demo profile."""
    services = resolved(env_file)["services"]
    assert set(services) == ALL_SERVICES
    assert services["simulator"]["profiles"] == ["demo"]
    assert [name for name, service in services.items() if service.get("profiles")] == ["simulator"]


def test_infrastructure_services(env_file: Path) -> None:
    """TimescaleDB has a pg_isready healthcheck and a data volume; Mosquitto mounts the shipped config."""
    services = resolved(env_file)["services"]
    timescaledb = services["timescaledb"]
    assert timescaledb["image"] == "timescale/timescaledb:latest-pg16"
    assert "pg_isready" in " ".join(timescaledb["healthcheck"]["test"])
    assert "/var/lib/postgresql/data" in mounts(timescaledb)
    mosquitto = services["mosquitto"]
    assert mosquitto["image"] == "eclipse-mosquitto:2"
    config_source = mounts(mosquitto)["/mosquitto/config/mosquitto.conf"]
    assert Path(config_source) == ROOT / "deploy" / "mosquitto" / "mosquitto.conf"


def test_app_services_run_from_the_dockerfile(env_file: Path) -> None:
    """migrate and each service are built from ./Dockerfile and run their own process."""
    services = resolved(env_file)["services"]
    expected = {name: ["python", "-m", module] for name, module in APP_SERVICES.items()}
    expected |= {"migrate": ["gasguard", "migrate"], "simulator": ["python", "-m", "simulator"]}
    for name, command in expected.items():
        service = services[name]
        assert Path(service["build"]["context"]) == ROOT, name
        assert service["build"].get("dockerfile", "Dockerfile") == "Dockerfile", name
        assert service["command"] == command, name


def test_startup_order_and_restart_policies(env_file: Path) -> None:
    """Services wait for a healthy database and a finished migration; only one-shots do not restart."""
    services = resolved(env_file)["services"]
    assert services["migrate"]["depends_on"]["timescaledb"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    for name in APP_SERVICES:
        depends_on = services[name]["depends_on"]
        assert depends_on["timescaledb"]["condition"] == "service_healthy", name
        assert depends_on["migrate"]["condition"] == "service_completed_successfully", name
        assert "mosquitto" in depends_on, name
        assert services[name]["restart"] in {"always", "unless-stopped"}, name
    for name in ("timescaledb", "mosquitto"):
        assert services[name]["restart"] in {"always", "unless-stopped"}, name


def test_database_and_broker_urls(env_file: Path) -> None:
    """Every app service gets the same database and broker URLs, with the database's own password."""
    for password in ("gasguard", "s3cret-from-env"):
        variables = {} if password == "gasguard" else {"POSTGRES_PASSWORD": password}
        services = resolved(env_file, **variables)["services"]
        assert services["timescaledb"]["environment"]["POSTGRES_PASSWORD"] == password
        for name in (*APP_SERVICES, "migrate"):
            environment = services[name]["environment"]
            assert environment["GG_DATABASE_URL"] == f"postgresql://postgres:{password}@timescaledb:5432/gasguard"
            assert environment["GG_MQTT_URL"] == "mqtt://mosquitto:1883"


def test_alerting_runs_its_engine_and_its_notify_part_apart(env_file: Path) -> None:
    """The alarm path has a container to itself; outbox, receipts and escalation run beside it."""
    services = resolved(env_file)["services"]
    assert services["alerting"]["environment"]["GG_ROLE"] == "engine"
    assert services["alerting-notify"]["environment"]["GG_ROLE"] == "notify"
    # Only the engine journals records during a database outage, so only it needs the spool volume.
    assert any("alerting-spool" in str(v) for v in services["alerting"]["volumes"])


def test_registry_is_published_and_health_checked(env_file: Path) -> None:
    """The registry listens on all interfaces on 8000, publishes it, and is health-checked via /health."""
    registry = resolved(env_file)["services"]["registry"]
    assert registry["environment"]["GG_REGISTRY_HOST"] == "0.0.0.0"
    assert str(registry["environment"]["GG_REGISTRY_PORT"]) == "8000"
    published = {
        (str(port["published"]), str(port["target"])) if isinstance(port, dict) else tuple(port.split(":")[-2:])
        for port in registry["ports"]
    }
    assert ("8000", "8000") in published
    assert "/health" in " ".join(registry["healthcheck"]["test"])


def test_dockerfile_shape() -> None:
    """The image is python:3.11-slim, installs the project with pip and runs as a non-root user."""
    instructions = [
        line.strip() for line in DOCKERFILE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    froms = [line.split()[1] for line in instructions if line.upper().startswith("FROM ")]
    assert froms == ["python:3.11-slim"]
    assert any(line.startswith("RUN pip install") for line in instructions)
    users = [line.split()[1] for line in instructions if line.upper().startswith("USER ")]
    assert users, "the image must switch to a non-root user"
    assert users[-1] not in {"root", "0"}
