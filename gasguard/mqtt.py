"""One MQTT connection per service: connect with backoff, re-subscribe and re-announce on every connect.

Built on gmqtt rather than paho/aiomqtt, on evidence measured on the target machine (see
`docs/benchmarks.md`): gmqtt is asyncio-native, receives QoS 1 about 3x faster than paho and 4x faster
than aiomqtt, speaks MQTT 5 (shared subscriptions for scale-out) and, with
``optimistic_acknowledgement=False``, sends PUBACK only after our async handler returns. Ingest relies
on that last property to acknowledge a reading only once it is durable. Being built on asyncio
transports, its sockets get ``TCP_NODELAY`` (asyncio sets it on every TCP transport), which is what keeps
the alarm -> close round trip near 1-2 ms instead of Nagle's ~40 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import gmqtt
from gmqtt.mqtt.constants import MQTTv50, MQTTv311

from gasguard.settings import MqttEndpoint

_LOGGER = logging.getLogger(__name__)

#: Root of the topics a service sends to itself to learn how far it has read its own inbound queue. It lies
#: outside every device topic root, so ingest neither stores nor dead-letters it; the generated broker ACL
#: (`gateway.broker_config`) lets the service users use it.
PROBE_TOPIC_ROOT = "gasguard-probe"


def probe_topic(client_id: str) -> str:
    """The probe topic of the MQTT client ``client_id``."""
    return f"{PROBE_TOPIC_ROOT}/{client_id}"


MessageHandler = Callable[[str, bytes], Awaitable[None]]

_UNLIMITED = -1


@dataclass(frozen=True, slots=True)
class Announcement:
    """A retained availability pair: published as birth on connect, registered as last will."""

    topic: str
    online: bytes
    offline: bytes


class MqttSession:
    """A reconnecting MQTT client session.

    It is an async context manager that is reusable but not reentrant. Every (re)connect
    re-subscribes from the list given here, republishes the retained birth message and calls
    ``on_connect``; the broker publishes the last will if the connection dies. Leaving the context
    waits (up to ``flush_timeout_s``) until the broker has acknowledged what was published.
    Incoming messages are acknowledged only after ``handler`` returns, so a handler that awaits
    durable storage gets at-least-once delivery end to end.
    """

    def __init__(
        self,
        endpoint: MqttEndpoint,
        *,
        client_id: str,
        subscriptions: Sequence[tuple[str, int]] = (),
        handler: MessageHandler | None = None,
        persistent: bool = False,
        announcement: Announcement | None = None,
        receive_maximum: int | None = None,
        on_connect: Callable[[], None] | None = None,
        flush_timeout_s: float = 5.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._client_id = client_id
        self._subscriptions = list(subscriptions)
        self._handler = handler
        self._persistent = persistent
        self._announcement = announcement
        self._receive_maximum = receive_maximum
        self._on_connect_hook = on_connect
        self._flush_timeout_s = flush_timeout_s
        self._logger = logger or _LOGGER
        self._client: Any = None
        self._lock = asyncio.Lock()
        self._connected = asyncio.Event()
        self._backlog: deque[tuple[str, bytes, int, bool]] = deque()
        self._drainer: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        """Whether the session currently has a live connection."""
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        """Wait until the session is connected (again)."""
        await self._connected.wait()

    async def __aenter__(self) -> Self:
        if self._lock.locked():
            raise RuntimeError("MqttSession is not reentrant")
        await self._lock.acquire()
        try:
            self._client = self._build_client()
            await self._connect_with_backoff()
        except BaseException:
            self._lock.release()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._announcement is not None and self.connected:
                # A clean disconnect suppresses the last will, so say goodbye ourselves.
                self.publish(self._announcement.topic, self._announcement.offline, qos=1, retain=True)
            if self.connected:
                # Closing a socket with unread PUBACKs makes the kernel reset it, and the broker then
                # discards publishes it had not read yet: wait (bounded) until everything is acknowledged.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._flush_timeout_s):
                        await self.flush()
            if self._drainer is not None:
                self._drainer.cancel()
            self._connected.clear()
            await self._client.disconnect()
        except Exception:
            self._logger.debug("error while disconnecting %s", self._client_id, exc_info=True)
        finally:
            self._connected.clear()
            self._client = None
            self._lock.release()

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Send a message now, or queue it in order while the broker's in-flight window is full.

        MQTT 5 brokers announce a receive maximum (Mosquitto's default is 20 unacknowledged QoS 1
        messages per client); gmqtt refuses to exceed it by raising, so excess messages wait in a
        local backlog that drains as acknowledgements free the window. Nothing is dropped.
        """
        if self._client is None:
            raise RuntimeError("MqttSession is not open")
        if not self._backlog:
            try:
                self._client.publish(topic, payload, qos=qos, retain=retain)
            except OverflowError:
                pass
            else:
                return
        self._backlog.append((topic, payload, qos, retain))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain_backlog(), name=f"mqtt[{self._client_id}].drain_loop")

    async def flush(self) -> None:
        """Wait until the broker has acknowledged every QoS 1 message published so far.

        Bound it with `asyncio.timeout`: while disconnected nothing can be acknowledged.
        """
        if self._drainer is not None:
            await asyncio.wait({self._drainer})
        if self._client is not None:
            await self._client._persistent_storage.wait_empty()  # gmqtt's in-flight store

    @property
    def backlog(self) -> int:
        """Messages waiting for the broker's in-flight window."""
        return len(self._backlog)

    async def _drain_backlog(self) -> None:
        while self._backlog and self._client is not None:
            topic, payload, qos, retain = self._backlog[0]
            try:
                self._client.publish(topic, payload, qos=qos, retain=retain)
            except OverflowError:
                await asyncio.sleep(0.001)
                continue
            self._backlog.popleft()

    def _build_client(self) -> Any:
        properties: dict[str, Any] = {}
        version_5 = self._endpoint.protocol == "5"
        if version_5 and self._persistent:
            properties["session_expiry_interval"] = 7 * 24 * 3600
        if version_5 and self._receive_maximum:
            properties["receive_maximum"] = self._receive_maximum
        will = None
        if self._announcement is not None:
            will = gmqtt.Message(self._announcement.topic, self._announcement.offline, qos=1, retain=True)
        client = gmqtt.Client(
            self._client_id,
            clean_session=not self._persistent,
            optimistic_acknowledgement=False,
            will_message=will,
            logger=self._logger,
            **properties,
        )
        client.set_config({"reconnect_retries": _UNLIMITED, "reconnect_delay": 1})
        if self._endpoint.username:
            client.set_auth_credentials(self._endpoint.username, self._endpoint.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    async def _connect_with_backoff(self) -> None:
        version = MQTTv50 if self._endpoint.protocol == "5" else MQTTv311
        attempt = 0
        while True:
            try:
                await self._client.connect(self._endpoint.host, self._endpoint.port, version=version, keepalive=30)
            except (OSError, gmqtt.mqtt.handler.MQTTConnectError) as err:
                attempt += 1
                delay = random.uniform(0, min(10.0, 0.2 * 2**attempt))
                if attempt == 1:
                    self._logger.warning(
                        "MQTT broker %s:%s unreachable (%s); retrying", self._endpoint.host, self._endpoint.port, err
                    )
                await asyncio.sleep(delay)
            else:
                if attempt:
                    self._logger.info("MQTT broker %s:%s reachable again", self._endpoint.host, self._endpoint.port)
                return

    def _on_connect(self, client: Any, flags: int, rc: int, properties: dict[str, Any]) -> None:
        for topic, qos in self._subscriptions:
            client.subscribe(topic, qos=qos)
        if self._announcement is not None:
            client.publish(self._announcement.topic, self._announcement.online, qos=1, retain=True)
        if not self._connected.is_set():
            self._logger.debug("MQTT session %s connected", self._client_id)
        self._connected.set()
        if self._on_connect_hook is not None:
            self._on_connect_hook()

    def _on_disconnect(self, client: Any, packet: object, exc: BaseException | None = None) -> None:
        if self._connected.is_set():
            self._logger.warning("MQTT session %s lost its connection; reconnecting", self._client_id)
        self._connected.clear()

    async def _on_message(self, client: Any, topic: str, payload: bytes, qos: int, properties: Any) -> int:
        if self._handler is not None:
            try:
                await self._handler(topic, payload)
            except Exception:
                # Handlers dead-letter bad input themselves; anything reaching here is a bug. Acknowledge
                # anyway so one poison message cannot wedge the session, and say so loudly.
                self._logger.exception("handler failed on %s", topic)
        return 0
