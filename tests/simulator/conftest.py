"""Fixtures for simulator tests: an observer on the test's topic root, and household factories."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import pytest

from gasguard.clock import utcnow
from gasguard.mqtt import MqttSession
from gasguard.protocol import Channel, Command, Topics, encode, new_close_command
from gasguard.settings import MqttEndpoint
from simulator.household import SimHousehold

T = TypeVar("T")


def make_households(count: int, *, communities: int = 1, low: float = 10.0, high: float = 25.0) -> list[SimHousehold]:
    """Households 1..count with ids GA-00000n / GV-00000n, spread round-robin over communities."""
    return [
        SimHousehold(
            household_id=n,
            community_code=f"150626100{(n - 1) % communities + 1:03d}",
            alarm_id=f"GA-{n:06d}",
            valve_id=f"GV-{n:06d}",
            low_alarm_lel=low,
            high_alarm_lel=high,
        )
        for n in range(1, count + 1)
    ]


class Recorder:
    """Everything published under the test's topic root, in arrival order, plus a way to send commands."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.messages: list[tuple[str, bytes]] = []
        self.session: MqttSession | None = None
        self._changed = asyncio.Event()

    async def handler(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))
        self._changed.set()

    def on(self, topic: str) -> list[bytes]:
        """Payloads received on one topic, oldest first."""
        return [payload for t, payload in self.messages if t == topic]

    def device(self, device_id: str, channel: Channel) -> list[bytes]:
        """Payloads received on one device channel."""
        return self.on(self.topics.device(device_id, channel))

    def last(self, topic: str) -> bytes | None:
        """The newest payload on a topic, if any."""
        payloads = self.on(topic)
        return payloads[-1] if payloads else None

    async def wait_for(self, condition: Callable[[], T], timeout: float = 5.0) -> T:
        """Wait until ``condition()`` is truthy; returns its value."""
        async with asyncio.timeout(timeout):
            while not (value := condition()):
                self._changed.clear()
                try:
                    async with asyncio.timeout(0.1):
                        await self._changed.wait()
                except TimeoutError:
                    pass
            return value

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish raw bytes (QoS 1, not retained)."""
        assert self.session is not None
        self.session.publish(topic, payload, qos=1)

    def send(self, valve_id: str, command: Command) -> None:
        """Publish a command to a valve."""
        self.publish(self.topics.device(valve_id, Channel.COMMAND), encode(command))

    def send_close(self, valve_id: str, *, ttl_s: float = 30.0) -> Command:
        """Publish a fresh close command to a valve; returns it."""
        command = new_close_command(utcnow(), ttl_s)
        self.send(valve_id, command)
        return command


@pytest.fixture
async def recorder(mqtt_endpoint: MqttEndpoint, topics: Topics) -> AsyncIterator[Recorder]:
    """A connected observer subscribed to everything under the test's root."""
    rec = Recorder(topics)
    async with MqttSession(
        mqtt_endpoint,
        client_id=f"{topics.root}-observer",
        subscriptions=[(topics.everything(), 1)],
        handler=rec.handler,
    ) as session:
        rec.session = session
        # SUBSCRIBE went out before this PUBLISH on the same connection, so seeing the probe means the
        # subscription is active.
        probe = f"{topics.root}/probe"
        session.publish(probe, b"probe", qos=1)
        await rec.wait_for(lambda: rec.on(probe))
        yield rec
        # Don't leave retained availability messages behind on the shared broker; waiting for our own
        # clears to come back means the broker has processed them before we disconnect.
        retained = sorted({t for t, _ in rec.messages if t.endswith("/availability")})
        for topic in retained:
            session.publish(topic, b"", qos=1, retain=True)
        await rec.wait_for(lambda: all(rec.last(topic) == b"" for topic in retained))
