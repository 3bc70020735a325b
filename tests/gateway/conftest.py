"""Fixtures for the gateway: the service against the real broker and database, simulated platforms."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest

from gasguard.mqtt import MqttSession
from gasguard.protocol import Topics
from gasguard.settings import MqttEndpoint
from gasguard.web import serve_asgi
from gateway.service import Gateway
from gateway.settings import GatewaySettings
from simulator.nbiot_platforms import PlatformSimulator
from tests.conftest import free_port
from tests.support.stack import wait_for as wait_for  # the gateway tests import it from here


class Bus:
    """Everything published under the test's topic root."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    async def handle(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p in self.messages if t == topic]


@pytest.fixture
async def bus(mqtt_endpoint: MqttEndpoint, topics: Topics) -> AsyncIterator[Bus]:
    recorder = Bus()
    session = MqttSession(
        mqtt_endpoint,
        client_id=f"bus-{uuid.uuid4().hex[:8]}",
        subscriptions=[(topics.everything(), 1)],
        handler=recorder.handle,
    )
    async with session:
        yield recorder


@pytest.fixture
async def platforms() -> AsyncIterator[PlatformSimulator]:
    gateway_port = free_port()
    sim = PlatformSimulator(
        gateway_url=f"http://127.0.0.1:{gateway_port}/", ctwing_token="ct-token", onenet_token="on-token"
    )
    port = free_port()
    ready = asyncio.Event()
    task = asyncio.create_task(serve_asgi(sim.app(), host="127.0.0.1", port=port, ready=ready))
    await asyncio.wait_for(ready.wait(), 10)
    sim.api_url = f"http://127.0.0.1:{port}"
    yield sim
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
def gateway_settings(
    database_url: str, mqtt_url: str, topic_root: str, platforms: PlatformSimulator
) -> GatewaySettings:
    api = platforms.api_url
    return GatewaySettings(
        database_url=database_url,
        mqtt_url=mqtt_url,
        topic_root=topic_root,
        client_id=f"gateway-{uuid.uuid4().hex[:8]}",
        http_port=int(platforms.gateway_url.rsplit(":", 1)[1].strip("/")),
        onenet_token="on-token",
        ctwing_push_token="ct-token",
        ctwing_api_url=f"{api}/ctwing/",
        onenet_api_url=f"{api}/onenet/",
        downlink_sweep_s=0.2,
        modbus_timeout_s=2.0,
        modbus_confirm_timeout_s=3.0,
    )


@contextlib.asynccontextmanager
async def running_gateway(settings: GatewaySettings) -> AsyncIterator[Gateway]:
    gateway = Gateway(settings)
    task = asyncio.create_task(gateway.run())
    try:
        done, _ = await asyncio.wait(
            {task, asyncio.ensure_future(gateway.ready.wait())}, timeout=30, return_when=asyncio.FIRST_COMPLETED
        )
        if task in done:
            await task
        assert gateway.ready.is_set(), "gateway did not start"
        yield gateway
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
