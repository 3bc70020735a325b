"""A Mosquitto configured from the registry keeps each device to its own topics (own broker, own port)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import gmqtt
import pytest

from gasguard.mqtt import MqttSession, probe_topic
from gasguard.protocol import Channel, Topics
from gasguard.settings import MqttEndpoint
from gateway.broker_config import device_password, generate, mosquitto_hash, registry_device_ids
from tests.conftest import free_port
from tests.support.rows import add_household

SECRET = b"test-device-secret"
SERVICES = {"svc-ingest": "p-ingest", "svc-alerting": "p-alerting", "svc-gateway": "p-gateway"}


def test_hash_matches_mosquitto_format() -> None:
    hashed = mosquitto_hash("pw", salt=b"\x00" * 12)
    assert hashed.startswith("$7$101$AAAAAAAAAAAAAAAA$") and len(hashed.split("$")[4]) == 88


@pytest.fixture
def broker_port() -> int:
    return free_port()


@contextlib.contextmanager
def mosquitto(tmp_path: Path, port: int, files) -> Iterator[None]:
    (tmp_path / "passwd").write_text(files.password_file)
    (tmp_path / "acl").write_text(files.acl_file)
    for name in ("passwd", "acl"):
        (tmp_path / name).chmod(0o600)
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {tmp_path / 'passwd'}\n"
        f"acl_file {tmp_path / 'acl'}\npersistence false\nuser root\nlog_dest stderr\n"
    )
    proc = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf)], stderr=subprocess.PIPE)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(10)


async def session(port: int, user: str, password: str, topics: list[tuple[str, int]], handler) -> MqttSession:
    endpoint = MqttEndpoint(host="127.0.0.1", port=port, username=user, password=password)
    return MqttSession(endpoint, client_id=f"{user}-{uuid.uuid4().hex[:6]}", subscriptions=topics, handler=handler)


async def test_device_confined_to_its_own_topics(db: asyncpg.Connection, tmp_path: Path, broker_port: int) -> None:
    await add_household(db, 1)
    await add_household(db, 2)
    ids = await registry_device_ids(db)
    assert ids == ["A-1", "A-2", "V-1", "V-2"]
    topics = Topics(root="gg")
    files = generate(ids, secret=SECRET, service_passwords=SERVICES, topic_root="gg")
    with mosquitto(tmp_path, broker_port, files):
        await asyncio.sleep(0.5)
        seen: list[str] = []
        v2_seen: list[str] = []

        async def on_service(topic: str, payload: bytes) -> None:
            seen.append(topic)

        async def on_v2(topic: str, payload: bytes) -> None:
            v2_seen.append(topic)

        probe = probe_topic("svc-alerting")
        service = await session(broker_port, "svc-alerting", "p-alerting", [("gg/#", 1), (probe, 1)], on_service)
        v1 = await session(broker_port, "V-1", device_password(SECRET, "V-1"), [], on_service)
        # V-2 tries to read V-1's commands as well as its own.
        v2 = await session(
            broker_port,
            "V-2",
            device_password(SECRET, "V-2"),
            [(topics.device("V-1", Channel.COMMAND), 1), (topics.device("V-2", Channel.COMMAND), 1)],
            on_v2,
        )
        async with asyncio.timeout(20), service, v1, v2:
            await asyncio.sleep(0.3)
            v1.publish(topics.device("V-1", Channel.EVENT), b"own")
            v1.publish(topics.device("V-2", Channel.EVENT), b"forged")
            v1.publish(topics.device("V-2", Channel.COMMAND), b"forged-command")
            service.publish(topics.device("V-1", Channel.COMMAND), b"close V-1")
            service.publish(topics.device("V-2", Channel.COMMAND), b"close V-2")
            service.publish(probe, b"1.0")
            v1.publish(probe, b"forged probe")
            await asyncio.sleep(1.0)
        assert topics.device("V-1", Channel.EVENT) in seen, "a device may publish under its own prefix"
        assert topics.device("V-2", Channel.EVENT) not in seen, "a device may not publish as another device"
        assert v2_seen == [topics.device("V-2", Channel.COMMAND)], "a device reads only its own commands"
        assert seen.count(probe) == 1, "a service round-trips its probe; a device may not publish one"

        # A wrong password is refused outright.
        client = gmqtt.Client(f"bad-{uuid.uuid4().hex[:6]}")
        client.set_auth_credentials("V-1", "wrong")
        with pytest.raises(Exception):  # noqa: B017, PT011 - gmqtt raises its own connect error type
            await asyncio.wait_for(client.connect("127.0.0.1", broker_port), 5)
