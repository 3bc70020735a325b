"""Services started in the test's event loop: the registry app, alerting, or alerting + ingest + a fleet;
and loopback valves that answer alerting's close commands on the broker.

Shared by the end-to-end, alerting and browser tests so each does not grow its own copy of the start-up
and tear-down code.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alerting.service import Alerting
from alerting.settings import AlertingSettings
from gasguard.mqtt import MqttSession
from gasguard.protocol import (
    Channel,
    Command,
    CommandAck,
    CommandResult,
    Topics,
    ValveEvent,
    ValvePosition,
    encode,
)
from gasguard.settings import MqttEndpoint
from ingest.service import Ingest
from ingest.settings import IngestSettings
from registry.app import serve
from registry.settings import RegistrySettings
from simulator.fleet import Fleet
from simulator.household import SimHousehold
from tests.conftest import SmsSandbox, free_port


@contextlib.asynccontextmanager
async def alerting_running(settings: AlertingSettings, *, ready_timeout_s: float = 30.0) -> AsyncIterator[Alerting]:
    """The alerting service in this process, ready to act (it fails if not ready in ``ready_timeout_s``)."""
    service = Alerting(settings)
    task = asyncio.create_task(service.run())
    try:
        await asyncio.wait_for(service.ready.wait(), ready_timeout_s)
        yield service
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def alerting_settings_for(
    *, database_url: str, mqtt_url: str, topic_root: str, sms: SmsSandbox, spool_dir: Path, **overrides: Any
) -> AlertingSettings:
    """Alerting on the test's database, broker root and SMS sandbox, with a fresh client id; ``overrides``
    sets any other setting."""
    return AlertingSettings(
        database_url=database_url,
        mqtt_url=mqtt_url,
        topic_root=topic_root,
        client_id=f"alerting-{uuid.uuid4().hex[:8]}",
        sms_endpoint=sms.url,
        sms_access_key_id=sms.key_id,
        sms_access_key_secret=sms.key_secret,
        spool_dir=str(spool_dir),
        **overrides,
    )


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


@dataclass
class LoopbackValves:
    """Valves on the broker that answer close commands the way protocol v1 says, or stay silent.

    Every command received is kept in ``commands`` as (valve id, command). A valve in ``silent`` answers
    nothing. Otherwise it acknowledges, then reports CLOSED and a successful result; with ``closing_s`` it
    first reports CLOSING and waits that long before CLOSED.
    """

    session: MqttSession
    topics: Topics
    closing_s: float | None = None
    commands: list[tuple[str, Command]] = field(default_factory=list)
    silent: set[str] = field(default_factory=set)

    async def handle(self, topic: str, payload: bytes) -> None:
        valve_id = self.topics.parse(topic).device_id
        command = Command.model_validate_json(payload)
        self.commands.append((valve_id, command))
        if valve_id in self.silent:
            return
        now = datetime.now(UTC)
        publish = self.session.publish
        publish(
            self.topics.device(valve_id, Channel.COMMAND_ACK),
            encode(CommandAck(cmd_id=command.cmd_id, ts=now, accepted=True)),
        )
        seq = 1
        if self.closing_s is not None:
            publish(
                self.topics.device(valve_id, Channel.EVENT),
                encode(ValveEvent(seq=seq, ts=now, position=ValvePosition.CLOSING, cmd_id=command.cmd_id)),
            )
            await asyncio.sleep(self.closing_s)
            seq += 1
        publish(
            self.topics.device(valve_id, Channel.EVENT),
            encode(ValveEvent(seq=seq, ts=now, position=ValvePosition.CLOSED, cmd_id=command.cmd_id)),
        )
        publish(
            self.topics.device(valve_id, Channel.COMMAND_RESULT),
            encode(CommandResult(cmd_id=command.cmd_id, ts=now, ok=True, position=ValvePosition.CLOSED)),
        )


@contextlib.asynccontextmanager
async def loopback_valves(
    endpoint: MqttEndpoint, topics: Topics, *, closing_s: float | None = None
) -> AsyncIterator[LoopbackValves]:
    """Loopback valves subscribed to every command topic under ``topics``' root, connected."""

    async def handle(topic: str, payload: bytes) -> None:
        await valves.handle(topic, payload)  # bound below, before the session connects

    session = MqttSession(
        endpoint,
        client_id=f"valves-{uuid.uuid4().hex[:8]}",
        subscriptions=[(topics.all_devices(Channel.COMMAND), 1)],
        handler=handle,
    )
    valves = LoopbackValves(session, topics, closing_s=closing_s)
    async with session:
        yield valves
