"""Fixtures for tests against the real PostgreSQL and MQTT broker on this machine.

Every test gets its own database (cloned from a migrated template) and its own MQTT topic root, so
tests never see each other's rows or messages even when several suites run at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from alerting.notifier import ALL_SMS_TEMPLATES
from alerting.providers.voice import VOICE_SCRIPTS
from gasguard.db import connect, migrate
from gasguard.protocol import Topics
from gasguard.settings import MqttEndpoint
from gasguard.web import serve_asgi
from simulator.sms_platform import SmsPlatform

ADMIN_DSN = os.environ.get("GG_TEST_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
MQTT_URL = os.environ.get("GG_TEST_MQTT_URL", "mqtt://127.0.0.1:1883")


def dsn_for(database: str) -> str:
    """The admin DSN pointed at another database on the same server."""
    parts = urlsplit(ADMIN_DSN)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    """A migrated database that each test clones."""
    name = f"gg_tmpl_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    asyncio.run(migrate(dsn_for(name)))
    yield name
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def database_url(template_database: str) -> AsyncIterator[str]:
    """DSN of a fresh, migrated database for this test only."""
    name = f"gg_t_{uuid.uuid4().hex[:12]}"
    await _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield dsn_for(name)
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to this test's database."""
    conn = await connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
def mqtt_url() -> str:
    """URL of the shared loopback broker."""
    return MQTT_URL


@pytest.fixture
def mqtt_endpoint(mqtt_url: str) -> MqttEndpoint:
    """The shared loopback broker as an endpoint."""
    return MqttEndpoint.from_url(mqtt_url)


@pytest.fixture
def topic_root(request: pytest.FixtureRequest) -> str:
    """A topic root unique to this test, so tests never cross-talk on the shared broker."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def topics(topic_root: str) -> Topics:
    """Protocol topics under this test's root."""
    return Topics(root=topic_root)


SMS_KEY_ID = "test-key"
SMS_KEY_SECRET = "test-secret"


@dataclass
class SmsSandbox:
    """The local SMS provider stand-in, listening on loopback."""

    platform: SmsPlatform
    url: str
    key_id: str = SMS_KEY_ID
    key_secret: str = SMS_KEY_SECRET


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def sms_sandbox() -> AsyncIterator[SmsSandbox]:
    """An Aliyun-style SMS API on a loopback port, recording what it receives."""
    platform = SmsPlatform(
        keys={SMS_KEY_ID: SMS_KEY_SECRET},
        sign_names=frozenset({"乌审中燃"}),
        templates={t.code: t.text for t in ALL_SMS_TEMPLATES.values()},
        voice_scripts=dict(VOICE_SCRIPTS),
    )
    port = free_port()
    ready = asyncio.Event()
    task = asyncio.create_task(serve_asgi(platform.app(), host="127.0.0.1", port=port, ready=ready))
    await asyncio.wait_for(ready.wait(), 10)
    yield SmsSandbox(platform=platform, url=f"http://127.0.0.1:{port}/")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
