"""Pure classification of one MQTT message into a table row, a dead letter, or nothing.

No I/O happens here: the caller supplies the receive time and the current set of known devices, so
every decision about bad input is testable without a broker or a database.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from pydantic import ValidationError

from gasguard.protocol import (
    EVENT_ADAPTER,
    PROTOCOL_VERSION,
    TELEMETRY_ADAPTER,
    Channel,
    ParsedTopic,
    TopicError,
    Topics,
    is_valid_device_id,
)
from ingest.decode import decode_telemetry
from ingest.rows import (
    DeadLetterRow,
    EventRow,
    RowError,
    TelemetryRow,
    dead_letter_row,
    event_row,
    telemetry_row,
)

UNKNOWN_TOPIC = "unknown topic"
UNKNOWN_DEVICE = "unknown device"
INVALID_PAYLOAD = "invalid payload"

# Two topics (telemetry, event) per device of a large county, with room to spare.
_PARSE_CACHE_SIZE = 262_144

# Channels owned by other services (alerting, gateway): part of the protocol, so never dead letters.
_NOT_OURS = frozenset({Channel.AVAILABILITY, Channel.COMMAND, Channel.COMMAND_ACK, Channel.COMMAND_RESULT})


class DeviceSet(Protocol):
    """Anything that knows the registered device ids."""

    @property
    def ids(self) -> Set[str]:
        """The device ids currently in the registry."""
        ...


@dataclass(frozen=True, slots=True)
class ToTelemetry:
    """A valid reading for the ``telemetry`` table."""

    row: TelemetryRow
    seq: int | None


@dataclass(frozen=True, slots=True)
class ToEvent:
    """A valid event for the ``device_event`` table."""

    row: EventRow
    seq: int | None


@dataclass(frozen=True, slots=True)
class ToDeadLetter:
    """Input that cannot be stored as data, with the reason."""

    row: DeadLetterRow


#: ``None`` means "not ours to store" (protocol topics owned by other services).
Classified = ToTelemetry | ToEvent | ToDeadLetter | None


def describe_validation_error(err: ValidationError) -> str:
    """A short human-readable reason: the first error's location and message."""
    errors = err.errors(include_url=False, include_context=False, include_input=False)
    if not errors:
        return f"{INVALID_PAYLOAD}: {err.title}"
    first = errors[0]
    location = ".".join(str(part) for part in first["loc"])
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    where = f"{location}: " if location else ""
    return f"{INVALID_PAYLOAD}: {where}{first['msg']}{more}"


class Classifier:
    """Routes protocol v1 messages under one topic root."""

    def __init__(self, topics: Topics, devices: DeviceSet) -> None:
        self._topics = topics
        self._devices = devices
        self._gateway_prefix = f"{topics.root}/v{PROTOCOL_VERSION}/gw/"
        # Devices keep publishing to the same few topics; parsing each once saves the hot path a
        # regex and an enum lookup. Bounded, so a flood of junk topics cannot grow it without limit.
        self._parsed: dict[str, ParsedTopic | None] = {}

    def _parse(self, topic: str) -> ParsedTopic | None:
        try:
            return self._parsed[topic]
        except KeyError:
            pass
        try:
            parsed: ParsedTopic | None = self._topics.parse(topic)
        except TopicError:
            parsed = None
        if len(self._parsed) >= _PARSE_CACHE_SIZE:
            self._parsed.clear()
        self._parsed[topic] = parsed
        return parsed

    def _is_gateway_availability(self, topic: str) -> bool:
        if not (topic.startswith(self._gateway_prefix) and topic.endswith("/availability")):
            return False
        gateway_id = topic[len(self._gateway_prefix) : -len("/availability")]
        return is_valid_device_id(gateway_id)

    def classify(self, topic: str | bytes, payload: bytes, received_at: datetime) -> Classified:
        """Decide what to store for one message; never raises on bad input."""
        if not isinstance(topic, str):
            # gmqtt hands over the raw bytes of a topic that is not valid UTF-8.
            text = topic.decode("utf-8", "replace")
            return ToDeadLetter(dead_letter_row(received_at, text, None, UNKNOWN_TOPIC, payload))
        parsed = self._parse(topic)
        if parsed is None:
            if self._is_gateway_availability(topic):
                return None
            return ToDeadLetter(dead_letter_row(received_at, topic, None, UNKNOWN_TOPIC, payload))
        channel = parsed.channel
        device_id = parsed.device_id
        if channel in _NOT_OURS:
            return None
        if device_id not in self._devices.ids:
            return ToDeadLetter(dead_letter_row(received_at, topic, device_id, UNKNOWN_DEVICE, payload))
        try:
            if channel is Channel.TELEMETRY:
                # The strict msgspec reading first; what it refuses, pydantic judges (and explains).
                telemetry = decode_telemetry(payload) or TELEMETRY_ADAPTER.validate_json(payload)
                return ToTelemetry(telemetry_row(device_id, telemetry, received_at), telemetry.seq)
            event = EVENT_ADAPTER.validate_json(payload)
            return ToEvent(event_row(device_id, event, received_at), event.seq)
        except ValidationError as err:
            reason = describe_validation_error(err)
        except RowError as err:
            reason = f"{INVALID_PAYLOAD}: {err}"
        return ToDeadLetter(dead_letter_row(received_at, topic, device_id, reason, payload))


class SeqTracker:
    """Counts per-device sequence gaps and regressions (duplicates, reordering, device restarts).

    One counter per device across telemetry and events: the protocol dedupes on ``(device, seq)``,
    so ``seq`` numbers a device's messages, not one channel's. The last value is always replaced, so
    a device that restarts from 0 counts one regression and is then tracked again; a redelivered run
    counts one regression per message and, ending where it left off, no spurious gap.
    """

    __slots__ = ("_last", "gaps", "missing", "out_of_order")

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self.gaps = 0
        self.missing = 0
        self.out_of_order = 0

    def observe(self, device_id: str, seq: int) -> None:
        """Record that ``device_id`` sent ``seq``."""
        last = self._last.get(device_id)
        self._last[device_id] = seq
        if last is None or seq == last + 1:
            return
        if seq > last:
            self.gaps += 1
            self.missing += seq - last - 1
        else:
            self.out_of_order += 1

    def __len__(self) -> int:
        return len(self._last)
