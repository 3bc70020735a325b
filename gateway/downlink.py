"""Downlink to NB-IoT devices: sent at once when reachable, queued with a TTL for power-saving (PSM) ones."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import asyncpg
import httpx

from gasguard.clock import utcnow
from gasguard.protocol import Command
from gateway.identity import DeviceIdentity

_LOGGER = logging.getLogger(__name__)


class PlatformError(Exception):
    """The platform's command API refused or failed."""


class PlatformAdapter(Protocol):
    """Hands one command to a carrier platform, which delivers it to the device."""

    async def send(self, device: DeviceIdentity, command: Command) -> str:
        """Send and return the platform's command id."""


class CtwingAdapter:
    """CTWing AEP command API (``/aep_device_command/command``)."""

    def __init__(self, client: httpx.AsyncClient, base_url: str) -> None:
        self._client = client
        self._url = base_url.rstrip("/") + "/aep_device_command/command"

    async def send(self, device: DeviceIdentity, command: Command) -> str:
        """Create the command on the platform."""
        body = {
            "deviceId": device.platform_device_id,
            "productId": device.product_id,
            "operator": "gasguard",
            "level": 1,
            "content": {"params": {"command": command.command.value, "cmd_id": str(command.cmd_id)}},
        }
        return _command_id(await self._client.post(self._url, json=body), "commandId")


class OnenetAdapter:
    """OneNET NB-IoT execute API (``/nbiot/execute?imei=…``)."""

    def __init__(self, client: httpx.AsyncClient, base_url: str) -> None:
        self._client = client
        self._url = base_url.rstrip("/") + "/nbiot/execute"

    async def send(self, device: DeviceIdentity, command: Command) -> str:
        """Execute the command resource on the device."""
        params: dict[str, str | int] = {"imei": device.imei or "", "obj_id": 3200, "obj_inst_id": 0, "res_id": 5750}
        body = {"args": f"{command.command.value}:{command.cmd_id}"}
        return _command_id(await self._client.post(self._url, params=params, json=body), "uuid")


def _command_id(response: httpx.Response, key: str) -> str:
    if response.status_code >= 400:
        raise PlatformError(f"HTTP {response.status_code}: {response.text[:200]}")
    data: Any = response.json()
    if not isinstance(data, dict) or not data.get(key):
        raise PlatformError(f"no {key} in platform answer {data!r}")
    return str(data[key])


def expected_delivery(now: datetime, last_uplink: datetime | None, heartbeat_s: int | None) -> datetime | None:
    """When a PSM device is next expected to wake: its next heartbeat after ``now``, if the model has one."""
    if heartbeat_s is None:
        return None
    period = timedelta(seconds=heartbeat_s)
    if last_uplink is None:
        return now + period
    due = last_uplink + period
    if due < now:
        due += period * ((now - due) // period + 1)
    return due


@dataclass(frozen=True, slots=True)
class DownlinkEntry:
    """One queued or finished downlink, as operators see it."""

    cmd_id: uuid.UUID
    device_id: str
    platform: str
    command: str
    queued_at: datetime
    expires_at: datetime
    expected_delivery_at: datetime | None
    state: str
    delivered_at: datetime | None
    platform_command_id: str | None
    last_error: str | None
    #: What the platform last reported about the command (CTWing: SENT, DELIVERED, COMPLETED, FAILED, ...).
    platform_status: str | None = None
    platform_status_detail: str | None = None
    platform_status_at: datetime | None = None


async def list_downlinks(
    pool: asyncpg.Pool | asyncpg.Connection, *, device_id: str | None = None, state: str | None = None
) -> list[DownlinkEntry]:
    """Downlinks newest first, optionally for one device or in one state."""
    rows = await pool.fetch(
        """
        SELECT cmd_id, device_id, platform, command, queued_at, expires_at, expected_delivery_at, state,
               delivered_at, platform_command_id, last_error, platform_status, platform_status_detail,
               platform_status_at
        FROM downlink_queue
        WHERE ($1::text IS NULL OR device_id = $1) AND ($2::text IS NULL OR state = $2)
        ORDER BY queued_at DESC
        """,
        device_id,
        state,
    )
    return [DownlinkEntry(**dict(r)) for r in rows]


class Downlink:
    """Routes commands for NB-IoT devices to their platform, or into the PSM queue until the next uplink."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        adapters: dict[str, PlatformAdapter],
        *,
        ttl_s: float,
        clock: Any = utcnow,
    ) -> None:
        self._pool = pool
        self._adapters = adapters
        self._ttl = timedelta(seconds=ttl_s)
        self._clock = clock
        self.last_uplink: dict[str, datetime] = {}

    async def handle_command(self, device: DeviceIdentity, command: Command) -> None:
        """Queue the command (PSM devices) or hand it to the platform now (reachable devices)."""
        if device.platform not in self._adapters:
            _LOGGER.warning("no platform adapter for %s (%s)", device.device_id, device.platform)
            return
        now = self._clock()
        expires_at = min(command.expires_at, now + self._ttl)
        if expires_at <= now:
            _LOGGER.warning("command %s for %s already expired", command.cmd_id, device.device_id)
            return
        inserted = await self._pool.fetchval(
            """
            INSERT INTO downlink_queue
                (cmd_id, device_id, platform, command, queued_at, expires_at, expected_delivery_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (cmd_id) DO NOTHING RETURNING true
            """,
            command.cmd_id,
            device.device_id,
            device.platform,
            command.command.value,
            now,
            expires_at,
            expected_delivery(now, self.last_uplink.get(device.device_id), device.heartbeat_s),
        )
        if not inserted:
            return  # a resend of a command already queued or delivered
        if device.power_saving:
            _LOGGER.info("command %s for PSM device %s queued until its next uplink", command.cmd_id, device.device_id)
            return
        await self._deliver(device, command.cmd_id, command)

    async def on_uplink(self, device: DeviceIdentity) -> int:
        """The device is awake: hand over every unexpired queued command; returns how many were delivered."""
        now = self._clock()
        self.last_uplink[device.device_id] = now
        rows = await self._pool.fetch(
            "SELECT cmd_id, command, queued_at, expires_at FROM downlink_queue"
            " WHERE device_id = $1 AND state = 'queued' AND expires_at > $2 ORDER BY queued_at",
            device.device_id,
            now,
        )
        delivered = 0
        for row in rows:
            command = Command(
                cmd_id=row["cmd_id"], command=row["command"], issued_at=row["queued_at"], expires_at=row["expires_at"]
            )
            delivered += await self._deliver(device, row["cmd_id"], command)
        return delivered

    async def _deliver(self, device: DeviceIdentity, cmd_id: uuid.UUID, command: Command) -> int:
        assert device.platform is not None
        try:
            platform_id = await self._adapters[device.platform].send(device, command)
        except (PlatformError, httpx.HTTPError) as err:
            _LOGGER.warning("platform refused command %s for %s: %s", cmd_id, device.device_id, err)
            await self._pool.execute("UPDATE downlink_queue SET last_error = $2 WHERE cmd_id = $1", cmd_id, str(err))
            return 0
        await self._pool.execute(
            "UPDATE downlink_queue SET state = 'delivered', delivered_at = $2, platform_command_id = $3,"
            " last_error = NULL"
            " WHERE cmd_id = $1 AND state = 'queued'",
            cmd_id,
            self._clock(),
            platform_id,
        )
        _LOGGER.info("command %s handed to %s for %s", cmd_id, device.platform, device.device_id)
        return 1

    async def platform_status(
        self, platform: str, device_id: str, platform_command_id: str, status: str, detail: str | None
    ) -> uuid.UUID | None:
        """Record what the platform reports about one of its commands; returns our ``cmd_id`` (None if unknown)."""
        cmd_id: uuid.UUID | None = await self._pool.fetchval(
            "UPDATE downlink_queue SET platform_status = $4, platform_status_detail = $5, platform_status_at = $6"
            " WHERE platform = $1 AND device_id = $2 AND platform_command_id = $3 RETURNING cmd_id",
            platform,
            device_id,
            platform_command_id,
            status,
            detail,
            self._clock(),
        )
        return cmd_id

    async def expire(self) -> int:
        """Mark queued commands past their TTL as expired; returns how many."""
        result: str = await self._pool.execute(
            "UPDATE downlink_queue SET state = 'expired' WHERE state = 'queued' AND expires_at <= $1", self._clock()
        )
        count = int(result.rsplit(" ", 1)[-1])
        if count:
            _LOGGER.warning("%d queued downlink command(s) expired before the device woke", count)
        return count
