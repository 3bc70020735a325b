"""Canonical device protocol v1: topics, payload models and QoS per message kind.

This module is the single source of truth for what travels on the MQTT bus between devices (or the
gateway speaking for them) and GasGuard's services. `docs/protocol.md` describes the same contract for
device vendors; a test keeps the two in step.

Topic layout, for a device id ``D`` under the topic root ``R`` (``gg`` in production)::

    R/v1/dev/D/telemetry     device -> cloud   periodic readings             QoS 1
    R/v1/dev/D/event         device -> cloud   state changes (alarms, valve)  QoS 1
    R/v1/dev/D/availability  device -> cloud   retained birth + last will     QoS 1, retained
    R/v1/dev/D/cmd           cloud -> device   commands (close, self_test)    QoS 1
    R/v1/dev/D/cmd/ack       device -> cloud   command accepted or refused    QoS 1
    R/v1/dev/D/cmd/result    device -> cloud   outcome with reported position QoS 1
    R/v1/gw/G/availability   bridge -> cloud   availability of a connection carrying many devices

There is deliberately no ``open`` command: reopening a gas valve is an on-site job (domain §1.3).
"""

from __future__ import annotations

import enum
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

PROTOCOL_VERSION = 1
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)


class Channel(enum.StrEnum):
    """The per-device topic leaves of protocol v1."""

    TELEMETRY = "telemetry"
    EVENT = "event"
    AVAILABILITY = "availability"
    COMMAND = "cmd"
    COMMAND_ACK = "cmd/ack"
    COMMAND_RESULT = "cmd/result"


# QoS per message kind. Everything that matters is QoS 1: telemetry feeds a "loses nothing" ingest,
# and events/commands carry safety state. QoS 2 buys nothing here because every consumer dedupes on
# (device, seq) or cmd_id anyway.
QOS: dict[Channel, int] = {
    Channel.TELEMETRY: 1,
    Channel.EVENT: 1,
    Channel.AVAILABILITY: 1,
    Channel.COMMAND: 1,
    Channel.COMMAND_ACK: 1,
    Channel.COMMAND_RESULT: 1,
}


def is_valid_device_id(device_id: str) -> bool:
    """Return whether ``device_id`` may appear as a topic level (no wildcards, no slashes)."""
    return _DEVICE_ID_RE.match(device_id) is not None


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    """A device topic split into its parts."""

    device_id: str
    channel: Channel


class TopicError(ValueError):
    """A topic that is not part of protocol v1."""


@dataclass(frozen=True, slots=True)
class Topics:
    """Builds and parses protocol v1 topics under one root.

    The root is ``gg`` in production; tests give each test its own root so they never cross-talk on a
    shared broker.
    """

    root: str = "gg"

    @property
    def prefix(self) -> str:
        """The part shared by every device topic."""
        return f"{self.root}/v{PROTOCOL_VERSION}/dev/"

    def device(self, device_id: str, channel: Channel) -> str:
        """Topic of one device's channel."""
        if not is_valid_device_id(device_id):
            raise TopicError(f"invalid device id {device_id!r}")
        return f"{self.prefix}{device_id}/{channel.value}"

    def all_devices(self, channel: Channel) -> str:
        """Subscription filter for one channel of every device."""
        return f"{self.prefix}+/{channel.value}"

    def everything(self) -> str:
        """Subscription filter for all traffic under the root (for dead-lettering unknown topics)."""
        return f"{self.root}/#"

    def gateway_availability(self, gateway_id: str) -> str:
        """Availability topic of a connection that carries many devices."""
        if not is_valid_device_id(gateway_id):
            raise TopicError(f"invalid gateway id {gateway_id!r}")
        return f"{self.root}/v{PROTOCOL_VERSION}/gw/{gateway_id}/availability"

    def parse(self, topic: str) -> ParsedTopic:
        """Split a device topic, or raise `TopicError` if it is not one of protocol v1."""
        if not topic.startswith(self.prefix):
            raise TopicError(f"topic outside {self.prefix}: {topic!r}")
        rest = topic[len(self.prefix) :]
        device_id, _, leaf = rest.partition("/")
        if not is_valid_device_id(device_id):
            raise TopicError(f"invalid device id in topic {topic!r}")
        try:
            channel = Channel(leaf)
        except ValueError as err:
            raise TopicError(f"unknown channel {leaf!r} in topic {topic!r}") from err
        return ParsedTopic(device_id=device_id, channel=channel)


class AlarmState(enum.StrEnum):
    """State a gas alarm reports."""

    NORMAL = "normal"
    LOW_ALARM = "low_alarm"
    HIGH_ALARM = "high_alarm"
    FAULT = "fault"
    SELF_TEST = "self_test"
    RECOVERED = "recovered"
    END_OF_LIFE = "end_of_life"


ALARMING_STATES = frozenset({AlarmState.LOW_ALARM, AlarmState.HIGH_ALARM})


class ValvePosition(enum.StrEnum):
    """Position a shut-off valve reports from its own limit switches."""

    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    FAULT = "fault"


class PowerSource(enum.StrEnum):
    """Where a device draws power from."""

    MAINS = "mains"
    BATTERY = "battery"


class CommandName(enum.StrEnum):
    """Commands the cloud may send. There is no ``open``: reopening is manual, on site."""

    CLOSE = "close"
    SELF_TEST = "self_test"


class _Message(BaseModel):
    """Common base: immutable, strict about unknown fields, versioned."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    v: Literal[1] = 1


class Power(BaseModel):
    """Power supply status."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    source: PowerSource
    battery_pct: Annotated[int, Field(ge=0, le=100)] | None = None
    mains_ok: bool | None = None


class Radio(BaseModel):
    """Radio quality, as much of it as the bearer reports."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    rssi: int | None = None
    rsrp: int | None = None
    snr: float | None = None
    csq: Annotated[int, Field(ge=0, le=99)] | None = None
    ecl: Annotated[int, Field(ge=0, le=2)] | None = None


class _DeviceMessage(_Message):
    """A message a device originates: sequence number and device clock."""

    seq: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    ts: AwareDatetime


class AlarmTelemetry(_DeviceMessage):
    """Periodic reading of a gas alarm."""

    kind: Literal["alarm"] = "alarm"
    lel: Annotated[float, Field(ge=0, le=100)]
    state: AlarmState
    power: Power | None = None
    radio: Radio | None = None


class ValveTelemetry(_DeviceMessage):
    """Periodic report of a shut-off valve."""

    kind: Literal["valve"] = "valve"
    position: ValvePosition
    power: Power | None = None
    radio: Radio | None = None


Telemetry = Annotated[AlarmTelemetry | ValveTelemetry, Field(discriminator="kind")]


class AlarmEvent(_DeviceMessage):
    """A gas alarm changed state (alarm, recovered, fault, self-test, end-of-life)."""

    type: Literal["alarm"] = "alarm"
    state: AlarmState
    lel: Annotated[float, Field(ge=0, le=100)]


class ValveEvent(_DeviceMessage):
    """A valve's reported position changed; ``cmd_id`` names the command that caused it, if any."""

    type: Literal["valve"] = "valve"
    position: ValvePosition
    cmd_id: uuid.UUID | None = None


Event = Annotated[AlarmEvent | ValveEvent, Field(discriminator="type")]


class Availability(_Message):
    """Retained online/offline status; the broker publishes ``offline`` as the last will."""

    status: Literal["online", "offline"]
    ts: AwareDatetime | None = None


class Command(_Message):
    """A command from GasGuard to a device."""

    cmd_id: uuid.UUID
    command: CommandName
    issued_at: AwareDatetime
    expires_at: AwareDatetime


class CommandAck(_Message):
    """The device received the command; says nothing about the valve's position."""

    cmd_id: uuid.UUID
    ts: AwareDatetime
    accepted: bool
    reason: str | None = None


class CommandResult(_Message):
    """Outcome of a command, carrying the position the valve's limit switch reports."""

    cmd_id: uuid.UUID
    ts: AwareDatetime
    ok: bool
    position: ValvePosition | None = None
    detail: str | None = None


TELEMETRY_ADAPTER: TypeAdapter[AlarmTelemetry | ValveTelemetry] = TypeAdapter(Telemetry)
EVENT_ADAPTER: TypeAdapter[AlarmEvent | ValveEvent] = TypeAdapter(Event)


def decode_telemetry(payload: bytes) -> AlarmTelemetry | ValveTelemetry:
    """Validate a telemetry payload (raises `pydantic.ValidationError`)."""
    return TELEMETRY_ADAPTER.validate_json(payload)


def decode_event(payload: bytes) -> AlarmEvent | ValveEvent:
    """Validate an event payload (raises `pydantic.ValidationError`)."""
    return EVENT_ADAPTER.validate_json(payload)


def encode(message: BaseModel) -> bytes:
    """Serialise a protocol message to compact JSON, omitting unset optional fields."""
    return message.model_dump_json(exclude_none=True).encode()


def new_close_command(now: datetime, ttl_s: float) -> Command:
    """Build a fresh ``close`` command valid for ``ttl_s`` seconds."""
    return Command(
        cmd_id=uuid.uuid4(),
        command=CommandName.CLOSE,
        issued_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
    )
