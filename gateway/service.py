"""The gateway service: Modbus pollers, NB-IoT push endpoints and command routing onto the MQTT bus."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import asyncpg
import httpx
from pydantic import ValidationError

from gasguard.db import connect, open_pool
from gasguard.mqtt import Announcement, MqttSession
from gasguard.protocol import Availability, Channel, Command, TopicError, Topics, encode
from gasguard.web import serve_asgi
from gateway.codecs import ChannelReading, CodecError, load_register_map
from gateway.downlink import CtwingAdapter, Downlink, OnenetAdapter
from gateway.identity import IdentityIndex, load_identities, quarantine
from gateway.modbus_poller import ModbusPoller, PollerTiming, SeqSource
from gateway.nbiot import NbIotIngress, create_app
from gateway.settings import GatewaySettings

_LOGGER = logging.getLogger(__name__)


class Gateway:
    """All parts of the gateway, exposed so tests and the demo can watch them."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.topics = Topics(root=settings.topic_root)
        self.identities = IdentityIndex()
        self.pollers: dict[str, ModbusPoller] = {}
        self.session: MqttSession | None = None
        self.downlink: Downlink | None = None
        self.ingress: NbIotIngress | None = None
        self.seq = SeqSource()
        self.ready = asyncio.Event()
        self._pool: asyncpg.Pool | None = None
        self._poller_tasks: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    async def run(self) -> None:
        """Run until cancelled."""
        settings = self.settings
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # we log unreachable/recovered once ourselves
        conn = await connect(settings.dsn())
        try:
            self.identities = await load_identities(conn)
        finally:
            await conn.close()
        online = encode(Availability(status="online"))
        offline = encode(Availability(status="offline"))
        self.session = MqttSession(
            settings.mqtt(),
            client_id=settings.client_id,
            subscriptions=[(self.topics.all_devices(Channel.COMMAND), 1)],
            handler=self._on_command,
            announcement=Announcement(self.topics.gateway_availability(settings.gateway_id), online, offline),
        )
        async with (
            open_pool(settings.dsn(), min_size=1, max_size=4) as pool,
            httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as http,
            self.session,
            asyncio.TaskGroup() as tg,
        ):
            self._pool = pool
            self.downlink = Downlink(
                pool,
                {
                    "ctwing": CtwingAdapter(http, settings.ctwing_api_url),
                    "onenet": OnenetAdapter(http, settings.onenet_api_url),
                },
                ttl_s=settings.downlink_ttl_s,
            )
            self.ingress = NbIotIngress(
                pool=pool,
                identities=lambda: self.identities,
                topics=self.topics,
                publish=self._publish,
                downlink=self.downlink,
                seq=self.seq,
                onenet_token=settings.onenet_token.get_secret_value(),
                ctwing_token=settings.ctwing_push_token.get_secret_value(),
                onenet_aes_key=settings.onenet_aes_key.get_secret_value() if settings.onenet_aes_key else None,
            )
            self._start_pollers(tg)
            http_ready = asyncio.Event()
            tg.create_task(
                serve_asgi(
                    create_app(self.ingress, pool, metrics=self.metrics),
                    host=settings.http_host,
                    port=settings.http_port,
                    ready=http_ready,
                ),
                name="gateway.http",
            )
            tg.create_task(self._sweep_loop(), name="gateway.downlink_sweep")
            tg.create_task(self._refresh_loop(tg), name="gateway.identity_refresh")
            tg.create_task(self._listen_loop(), name="gateway.identity_listen")
            await http_ready.wait()
            _LOGGER.info(
                "gateway ready: %d devices, %d Modbus controllers, HTTP on %s:%d",
                len(self.identities.devices),
                len(self.pollers),
                settings.http_host,
                settings.http_port,
            )
            self.ready.set()

    def _publish(self, topic: str, payload: bytes, retain: bool) -> None:
        assert self.session is not None
        self.session.publish(topic, payload, qos=1, retain=retain)

    def _start_pollers(self, tg: asyncio.TaskGroup) -> None:
        settings = self.settings
        timing = PollerTiming(
            timeout_s=settings.modbus_timeout_s,
            reconnect_delay_s=settings.modbus_reconnect_delay_s,
            reconnect_delay_max_s=settings.modbus_reconnect_delay_max_s,
            telemetry_interval_s=settings.modbus_telemetry_interval_s,
            confirm_timeout_s=settings.modbus_confirm_timeout_s,
        )
        for gone in set(self.pollers) - set(self.identities.controllers):
            _LOGGER.info("controller %s removed from the registry; no longer polled", gone)
            self._poller_tasks.pop(gone).cancel()
            del self.pollers[gone]
        for controller in self.identities.controllers.values():
            running = self.pollers.get(controller.id)
            if running is not None and running.config == controller:
                continue
            if running is not None:
                _LOGGER.info("controller %s reconfigured; restarting its poller", controller.id)
                self._poller_tasks.pop(controller.id).cancel()
                del self.pollers[controller.id]
            try:
                rmap = load_register_map(controller.register_map)
            except (CodecError, ValidationError) as err:
                _LOGGER.error("controller %s not polled: %s", controller.id, err)  # noqa: TRY400 (reason suffices)
                continue
            poller = ModbusPoller(
                controller,
                rmap,
                self.identities.modbus_points(controller.id),
                topics=self.topics,
                publish=self._publish,
                seq=self.seq,
                timing=timing,
                on_unknown=self._unknown_channel,
            )
            self.pollers[controller.id] = poller
            self._poller_tasks[controller.id] = tg.create_task(poller.run(), name=f"gateway.modbus[{controller.id}]")

    def _unknown_channel(self, controller_id: str, reading: ChannelReading) -> None:
        """A channel without a registered alarm changed state: quarantine it, never ignore it."""
        payload = json.dumps(
            {"channel": reading.channel, "lel": reading.lel, "state": reading.state.value, "valve": reading.valve},
            ensure_ascii=False,
        ).encode()

        async def write() -> None:
            assert self._pool is not None
            try:
                await quarantine(
                    self._pool,
                    source="modbus",
                    identity_kind="modbus",
                    identity=f"{controller_id}/{reading.channel}",
                    reason=f"channel not wired to a registered alarm; reports {reading.state.value}",
                    payload=payload,
                )
            except (OSError, asyncpg.PostgresError) as err:
                _LOGGER.error("quarantine of %s/%d failed: %s", controller_id, reading.channel, err)  # noqa: TRY400

        task = asyncio.get_running_loop().create_task(write())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def metrics(self) -> str:
        """Prometheus text exposition of the gateway's counters."""
        ingress = self.ingress
        lines = [
            "# TYPE gg_gateway_push_accepted_total counter",
            f"gg_gateway_push_accepted_total {ingress.accepted if ingress else 0}",
            "# TYPE gg_gateway_push_refused_total counter",
            f"gg_gateway_push_refused_total {ingress.refused if ingress else 0}",
            "# TYPE gg_gateway_modbus_polls_total counter",
            "# TYPE gg_gateway_modbus_poll_errors_total counter",
            "# TYPE gg_gateway_modbus_reachable gauge",
        ]
        for cid, poller in sorted(self.pollers.items()):
            lines.append(f'gg_gateway_modbus_polls_total{{controller="{cid}"}} {poller.polls}')
            lines.append(f'gg_gateway_modbus_poll_errors_total{{controller="{cid}"}} {poller.poll_errors}')
            lines.append(f'gg_gateway_modbus_reachable{{controller="{cid}"}} {1 if poller.reachable else 0}')
        backlog = self.session.backlog if self.session is not None else 0
        lines += ["# TYPE gg_gateway_mqtt_backlog gauge", f"gg_gateway_mqtt_backlog {backlog}"]
        return "\n".join(lines) + "\n"

    async def _listen_loop(self) -> None:
        """Hold a LISTEN on ``gg_directory`` (registry triggers) so new devices are known within moments."""
        delay = 0.5
        while True:
            try:
                conn = await connect(self.settings.dsn())
            except (OSError, asyncpg.PostgresError) as err:
                _LOGGER.debug("directory listener cannot connect: %s", err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            delay = 0.5
            closed = asyncio.Event()
            try:
                await conn.add_listener("gg_directory", lambda *_: self._changed.set())
                conn.add_termination_listener(lambda *_, ev=closed: ev.set())
                self._changed.set()  # catch up on anything missed while not listening
                await closed.wait()
            finally:
                await conn.close()

    async def _refresh_loop(self, tg: asyncio.TaskGroup) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.settings.identity_refresh_s)
            await asyncio.sleep(0.1)  # let a burst of registry changes settle
            self._changed.clear()
            assert self._pool is not None
            try:
                async with self._pool.acquire() as conn:
                    self.identities = await load_identities(conn)
            except (OSError, asyncpg.PostgresError) as err:
                _LOGGER.warning("identity refresh failed, keeping the last one: %s", err)
                continue
            for poller in self.pollers.values():
                poller.devices = self.identities.modbus_points(poller.config.id)
            self._start_pollers(tg)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.downlink_sweep_s)
            assert self.downlink is not None
            try:
                await self.downlink.expire()
            except (OSError, asyncpg.PostgresError) as err:
                _LOGGER.warning("downlink expiry sweep failed: %s", err)

    async def _on_command(self, topic: str, payload: bytes) -> None:
        try:
            device_id = self.topics.parse(topic).device_id
        except TopicError:
            return
        device = self.identities.devices.get(device_id)
        if device is None or device.platform in (None, "mqtt"):
            if device is None and device_id not in self.identities.devices:
                _LOGGER.debug("command for %s: not a gateway device", device_id)
            return  # a native MQTT device answers for itself
        try:
            command = Command.model_validate_json(payload)
        except ValidationError as err:
            _LOGGER.warning("malformed command for %s: %s", device_id, err.errors()[0]["msg"])
            return
        if device.modbus_controller is not None:
            poller = self.pollers.get(device.modbus_controller)
            if poller is None:
                _LOGGER.error("close for %s: controller %s is not polled", device_id, device.modbus_controller)
                return
            poller.submit(device, command)
        elif device.platform in {"ctwing", "onenet"} and self.downlink is not None:
            try:
                await self.downlink.handle_command(device, command)
            except (OSError, asyncpg.PostgresError) as err:
                _LOGGER.error("downlink for %s not queued (database): %s", device_id, err)  # noqa: TRY400


async def run(settings: GatewaySettings) -> None:
    """Run the gateway until cancelled."""
    await Gateway(settings).run()
