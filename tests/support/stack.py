"""Services started in the test's event loop: the registry app, alerting, or alerting + ingest + a fleet.

Shared by the end-to-end and browser tests so each does not grow its own copy of the start-up and
tear-down code.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from alerting.service import Alerting
from alerting.settings import AlertingSettings
from gasguard.protocol import Topics
from gasguard.settings import MqttEndpoint
from ingest.service import Ingest
from ingest.settings import IngestSettings
from registry.app import serve
from registry.settings import RegistrySettings
from simulator.fleet import Fleet
from simulator.household import SimHousehold
from tests.conftest import SmsSandbox, free_port


@contextlib.asynccontextmanager
async def alerting_running(settings: AlertingSettings) -> AsyncIterator[Alerting]:
    """The alerting service in this process, ready to act."""
    service = Alerting(settings)
    task = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(service.ready.wait(), 30)
        yield service
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@dataclass
class Stack:
    """The running services and the simulated households."""

    alerting: Alerting
    ingest: Ingest
    fleet: Fleet


@contextlib.asynccontextmanager
async def stack(
    *,
    dsn: str,
    mqtt_url: str,
    topics: Topics,
    sms: SmsSandbox,
    spool: Path,
    households: Sequence[SimHousehold],
    telemetry_period_s: float | None = None,
    valve_close_s: float = 0.2,
) -> AsyncIterator[Stack]:
    """Alerting and ingest on the real broker and database, and a fleet of simulated households."""
    common = {"database_url": dsn, "mqtt_url": mqtt_url, "topic_root": topics.root}
    tag = uuid.uuid4().hex[:8]
    alerting = Alerting(
        AlertingSettings(
            **common,
            client_id=f"alerting-{tag}",
            sms_endpoint=sms.url,
            sms_access_key_id=sms.key_id,
            sms_access_key_secret=sms.key_secret,
            spool_dir=str(spool / "alerting"),
        )
    )
    ingest = Ingest(IngestSettings(**common, client_id=f"ingest-{tag}", spool_dir=str(spool / "ingest")))
    ingest_ready = asyncio.Event()
    tasks = [asyncio.create_task(alerting.run()), asyncio.create_task(ingest.run(ready=ingest_ready))]
    try:
        await asyncio.wait_for(asyncio.gather(alerting.ready.wait(), ingest_ready.wait()), 30)
        fleet = Fleet(
            MqttEndpoint.from_url(mqtt_url),
            topics,
            households=households,
            sim_id=f"sim-{tag}",
            telemetry_period_s=telemetry_period_s,
            valve_close_s=valve_close_s,
        )
        async with fleet:
            yield Stack(alerting=alerting, ingest=ingest, fleet=fleet)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def registry_running(database_url: str) -> AsyncIterator[str]:
    """The registry app (API and UI) under uvicorn on a free loopback port; yields its base URL."""
    port = free_port()
    settings = RegistrySettings(database_url=database_url, host="127.0.0.1", port=port, cookie_secure=False)
    ready = asyncio.Event()
    task = asyncio.create_task(serve(settings, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
