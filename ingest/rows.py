"""Row shapes of the tables ingest writes, flattening of protocol messages, and their spool codec.

Rows are plain tuples in table-column order so they go straight into ``copy_records_to_table``
without another conversion on the hot path.
"""

from __future__ import annotations

import base64
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gasguard.protocol import AlarmEvent, AlarmTelemetry, ValveEvent, ValveTelemetry
from ingest.decode import FastAlarmTelemetry, FastValveTelemetry

#: ``source`` column of dead letters written by ingest.
SOURCE = "mqtt"
#: Stored when a device sends no sequence number (the unique keys need a value).
NO_SEQ = -1
#: Longest reason stored in ``dead_letter.reason``.
MAX_REASON = 200

TELEMETRY_COLUMNS = (
    "device_id",
    "device_ts",
    "received_at",
    "seq",
    "kind",
    "lel",
    "alarm_state",
    "valve_position",
    "power_source",
    "battery_pct",
    "mains_ok",
    "rssi",
    "rsrp",
    "snr",
    "csq",
    "ecl",
)
EVENT_COLUMNS = (
    "device_id",
    "device_ts",
    "received_at",
    "seq",
    "type",
    "alarm_state",
    "lel",
    "valve_position",
    "cmd_id",
)
DEAD_LETTER_COLUMNS = ("received_at", "source", "topic", "device_id", "reason", "payload")

TelemetryRow = tuple[
    str,  # device_id
    datetime,  # device_ts
    datetime,  # received_at
    int,  # seq
    str,  # kind
    float | None,  # lel
    str | None,  # alarm_state
    str | None,  # valve_position
    str | None,  # power_source
    int | None,  # battery_pct
    bool | None,  # mains_ok
    int | None,  # rssi
    int | None,  # rsrp
    float | None,  # snr
    int | None,  # csq
    int | None,  # ecl
]
EventRow = tuple[
    str,  # device_id
    datetime,  # device_ts
    datetime,  # received_at
    int,  # seq
    str,  # type
    str | None,  # alarm_state
    float | None,  # lel
    str | None,  # valve_position
    uuid.UUID | None,  # cmd_id
]
DeadLetterRow = tuple[
    datetime,  # received_at
    str,  # source
    str | None,  # topic
    str | None,  # device_id
    str,  # reason
    bytes,  # payload
]

_INT32 = 2**31
_FLOAT32_MAX = 3.4028234663852886e38


class RowError(ValueError):
    """A message that validates against the protocol but cannot be stored in the typed columns."""


@dataclass(slots=True)
class Rows:
    """Rows bound for the three tables, in arrival order."""

    telemetry: list[TelemetryRow] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    dead_letters: list[DeadLetterRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.telemetry) + len(self.events) + len(self.dead_letters)

    def extend(self, other: Rows) -> None:
        """Append another set of rows."""
        self.telemetry.extend(other.telemetry)
        self.events.extend(other.events)
        self.dead_letters.extend(other.dead_letters)


def _int32(name: str, value: int | None) -> int | None:
    if value is not None and not -_INT32 <= value < _INT32:
        raise RowError(f"{name} out of range: {value}")
    return value


def _float32(name: str, value: float | None) -> float | None:
    if value is not None and math.isfinite(value) and abs(value) > _FLOAT32_MAX:
        raise RowError(f"{name} out of range: {value}")
    return value


def telemetry_row(
    device_id: str,
    message: AlarmTelemetry | ValveTelemetry | FastAlarmTelemetry | FastValveTelemetry,
    received_at: datetime,
) -> TelemetryRow:
    """Flatten a telemetry message (pydantic model or its msgspec mirror) into a ``telemetry`` row.

    Raises:
        RowError: a value fits the protocol but not its column.
    """
    power = message.power
    radio = message.radio
    if isinstance(message, AlarmTelemetry | FastAlarmTelemetry):
        lel: float | None = message.lel
        alarm_state: str | None = message.state
        valve_position: str | None = None
    else:
        lel = None
        alarm_state = None
        valve_position = message.position
    return (
        device_id,
        message.ts,
        received_at,
        NO_SEQ if message.seq is None else message.seq,
        message.kind,
        lel,
        alarm_state,
        valve_position,
        None if power is None else power.source,
        None if power is None else power.battery_pct,
        None if power is None else power.mains_ok,
        None if radio is None else _int32("radio.rssi", radio.rssi),
        None if radio is None else _int32("radio.rsrp", radio.rsrp),
        None if radio is None else _float32("radio.snr", radio.snr),
        None if radio is None else radio.csq,
        None if radio is None else radio.ecl,
    )


def event_row(device_id: str, message: AlarmEvent | ValveEvent, received_at: datetime) -> EventRow:
    """Flatten an event message into a ``device_event`` row."""
    seq = NO_SEQ if message.seq is None else message.seq
    if isinstance(message, AlarmEvent):
        return (device_id, message.ts, received_at, seq, message.type, message.state, message.lel, None, None)
    return (device_id, message.ts, received_at, seq, message.type, None, None, message.position, message.cmd_id)


def clean_text(text: str, limit: int | None = None) -> str:
    """Make text storable in a PostgreSQL ``text`` column (no NUL, no lone surrogates), optionally cut."""
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def dead_letter_row(
    received_at: datetime, topic: str | None, device_id: str | None, reason: str, payload: bytes
) -> DeadLetterRow:
    """Build a ``dead_letter`` row; text is cleaned so the row itself can never be rejected."""
    return (
        received_at,
        SOURCE,
        None if topic is None else clean_text(topic),
        None if device_id is None else clean_text(device_id),
        clean_text(reason, MAX_REASON),
        payload,
    )


# --- Spool codec -------------------------------------------------------------------------------------
# JSON has no datetime, UUID or bytes, so those columns are encoded by position: ISO 8601 strings keep
# the device's own UTC offset, UUIDs their canonical text, payloads base64.


def _encode_value(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # 'inf', '-inf', 'nan': strict JSON has no literal for them
    return value


def _encode_row(row: tuple[Any, ...]) -> list[object]:
    return [_encode_value(value) for value in row]


def encode_rows(rows: Rows) -> dict[str, list[list[object]]]:
    """Turn rows into a JSON-ready document."""
    return {
        "t": [_encode_row(row) for row in rows.telemetry],
        "e": [_encode_row(row) for row in rows.events],
        "d": [_encode_row(row) for row in rows.dead_letters],
    }


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _decode_telemetry(r: list[Any]) -> TelemetryRow:
    return (
        r[0],
        datetime.fromisoformat(r[1]),
        datetime.fromisoformat(r[2]),
        r[3],
        r[4],
        _float(r[5]),
        r[6],
        r[7],
        r[8],
        r[9],
        r[10],
        r[11],
        r[12],
        _float(r[13]),
        r[14],
        r[15],
    )


def _decode_event(r: list[Any]) -> EventRow:
    return (
        r[0],
        datetime.fromisoformat(r[1]),
        datetime.fromisoformat(r[2]),
        r[3],
        r[4],
        r[5],
        _float(r[6]),
        r[7],
        None if r[8] is None else uuid.UUID(r[8]),
    )


def _decode_dead_letter(r: list[Any]) -> DeadLetterRow:
    return (datetime.fromisoformat(r[0]), r[1], r[2], r[3], r[4], base64.b64decode(r[5]))


def decode_rows(document: dict[str, Any]) -> Rows:
    """Inverse of `encode_rows` (raises `KeyError`, `TypeError` or `ValueError` on a corrupt document)."""
    return Rows(
        telemetry=[_decode_telemetry(r) for r in document["t"]],
        events=[_decode_event(r) for r in document["e"]],
        dead_letters=[_decode_dead_letter(r) for r in document["d"]],
    )


def row_as_json(row: tuple[Any, ...]) -> list[object]:
    """A row as JSON values, used as the payload when the database rejects a single row."""
    return _encode_row(row)
