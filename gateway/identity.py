"""One device identity across bearers, and the quarantine for sources the registry does not know."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

import asyncpg

_LOGGER = logging.getLogger(__name__)

_Text = TypeVar("_Text", str, str | None)

# Rows per round trip when the identities are read.
_IDENTITY_PREFETCH = 2000

IdentityKind = Literal["serial", "imei", "platform_device_id", "modbus", "device_id"]


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """The registry's view of one device, with every key a source may name it by."""

    device_id: str
    kind: str
    model_id: str
    serial: str
    imei: str | None = None
    platform: str | None = None
    platform_device_id: str | None = None
    product_id: str | None = None
    power_saving: bool = False
    heartbeat_s: int | None = None
    codec: str | None = None
    modbus_controller: str | None = None
    modbus_channel: int | None = None
    modbus_point: str | None = None


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    """A Modbus controller row."""

    id: str
    register_map: str
    transport: Literal["tcp", "rtu"]
    host: str | None
    port: int | None
    serial_port: str | None
    baudrate: int | None
    unit_id: int
    poll_interval_s: float


@dataclass(frozen=True)
class IdentityIndex:
    """In-memory lookups by every key; the hot paths never wait on the database."""

    devices: dict[str, DeviceIdentity] = field(default_factory=dict)
    controllers: dict[str, ControllerConfig] = field(default_factory=dict)
    by_serial: dict[str, DeviceIdentity] = field(default_factory=dict)
    by_imei: dict[str, DeviceIdentity] = field(default_factory=dict)
    by_platform_id: dict[tuple[str, str], DeviceIdentity] = field(default_factory=dict)
    by_modbus: dict[tuple[str, int, str], DeviceIdentity] = field(default_factory=dict)

    @classmethod
    def build(cls, devices: Iterable[DeviceIdentity], controllers: Iterable[ControllerConfig] = ()) -> IdentityIndex:
        """Index ``devices`` by every key they carry."""
        index = cls(controllers={c.id: c for c in controllers})
        for dev in devices:
            index.devices[dev.device_id] = dev
            index.by_serial[dev.serial] = dev
            if dev.imei:
                index.by_imei[dev.imei] = dev
            if dev.platform and dev.platform_device_id:
                index.by_platform_id[(dev.platform, dev.platform_device_id)] = dev
            if dev.modbus_controller and dev.modbus_channel is not None and dev.modbus_point:
                index.by_modbus[(dev.modbus_controller, dev.modbus_channel, dev.modbus_point)] = dev
        return index

    def resolve_nbiot(
        self, platform: str, *, imei: str | None, platform_device_id: str | None
    ) -> DeviceIdentity | None:
        """The device a platform push is about: by platform device id first, then by IMEI."""
        if platform_device_id:
            found = self.by_platform_id.get((platform, platform_device_id))
            if found is not None:
                return found
        if imei:
            return self.by_imei.get(imei)
        return None

    def modbus_points(self, controller: str) -> dict[tuple[int, str], DeviceIdentity]:
        """Devices wired to one controller, by (channel, point)."""
        return {(ch, point): dev for (ctl, ch, point), dev in self.by_modbus.items() if ctl == controller}


async def load_identities(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> IdentityIndex:
    """Read devices and Modbus controllers from the registry."""
    # The driver makes a new string for every row; the few distinct values of the low-cardinality columns
    # (kind, model, platform, ...) are shared instead, which keeps a county's identity map smaller.
    shared: dict[str, str] = {}

    def one(value: _Text) -> _Text:
        return value if value is None else shared.setdefault(value, value)

    # Read through a cursor: holding every record of a county at once would add the records' own copy of
    # each row to the gateway's peak memory at every reload.
    devices: list[DeviceIdentity] = []
    async with conn.transaction(readonly=True):
        async for r in conn.cursor(
            """
            SELECT d.id, m.kind, d.model_id, d.serial, d.imei, d.platform, d.platform_device_id, d.product_id,
                   d.power_saving, m.heartbeat_s, m.bearer, d.modbus_controller, d.modbus_channel, d.modbus_point
            FROM device d JOIN device_model m ON m.id = d.model_id
            """,
            prefetch=_IDENTITY_PREFETCH,
        ):
            devices.append(
                DeviceIdentity(
                    device_id=r["id"],
                    kind=one(r["kind"]),
                    model_id=one(r["model_id"]),
                    serial=r["serial"],
                    imei=r["imei"],
                    platform=one(r["platform"]),
                    platform_device_id=r["platform_device_id"],
                    product_id=one(r["product_id"]),
                    power_saving=r["power_saving"],
                    heartbeat_s=r["heartbeat_s"],
                    codec=one(r["bearer"]),
                    modbus_controller=one(r["modbus_controller"]),
                    modbus_channel=r["modbus_channel"],
                    modbus_point=one(r["modbus_point"]),
                )
            )
    controllers = [
        ControllerConfig(
            id=r["id"],
            register_map=r["register_map"],
            transport=r["transport"],
            host=r["host"],
            port=r["port"],
            serial_port=r["serial_port"],
            baudrate=r["baudrate"],
            unit_id=r["unit_id"],
            poll_interval_s=float(r["poll_interval_s"]),
        )
        for r in await conn.fetch("SELECT * FROM modbus_controller ORDER BY id")
    ]
    return IdentityIndex.build(devices, controllers)


async def quarantine(
    pool: asyncpg.Pool | asyncpg.Connection,
    *,
    source: str,
    identity_kind: IdentityKind,
    identity: str,
    reason: str,
    payload: bytes,
) -> None:
    """Keep a message from an unknown source, with the reason; logged as a warning too."""
    _LOGGER.warning("quarantined %s %s=%s: %s", source, identity_kind, identity, reason)
    await pool.execute(
        "INSERT INTO quarantine (source, identity_kind, identity, reason, payload) VALUES ($1, $2, $3, $4, $5)",
        source,
        identity_kind,
        identity,
        reason,
        payload,
    )


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """One quarantined message."""

    id: int
    received_at: datetime
    source: str
    identity_kind: str
    identity: str
    reason: str
    payload: bytes

    def as_json(self) -> dict[str, Any]:
        """JSON-friendly view (payload as text, replacing undecodable bytes)."""
        return {
            "id": self.id,
            "received_at": self.received_at.isoformat(),
            "source": self.source,
            "identity_kind": self.identity_kind,
            "identity": self.identity,
            "reason": self.reason,
            "payload": self.payload.decode("utf-8", errors="replace"),
        }


async def list_quarantine(
    pool: asyncpg.Pool | asyncpg.Connection, *, limit: int = 100, identity: str | None = None
) -> list[QuarantineEntry]:
    """Most recent quarantined messages first, optionally for one identity value."""
    rows = await pool.fetch(
        "SELECT * FROM quarantine WHERE ($1::text IS NULL OR identity = $1) ORDER BY id DESC LIMIT $2",
        identity,
        limit,
    )
    return [
        QuarantineEntry(
            id=r["id"],
            received_at=r["received_at"],
            source=r["source"],
            identity_kind=r["identity_kind"],
            identity=r["identity"],
            reason=r["reason"],
            payload=bytes(r["payload"]),
        )
        for r in rows
    ]
