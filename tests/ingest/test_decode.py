"""The msgspec telemetry decoder never accepts what the pydantic protocol models refuse, and stores the same row."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from pydantic import BaseModel, ValidationError

from gasguard.protocol import TELEMETRY_ADAPTER, AlarmTelemetry, Power, Radio, ValveTelemetry
from ingest.decode import FastAlarmTelemetry, FastPower, FastRadio, FastValveTelemetry, decode_telemetry
from ingest.rows import RowError, TelemetryRow, telemetry_row

RECEIVED = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)

ALARM: dict[str, Any] = {
    "v": 1,
    "seq": 7,
    "ts": "2026-03-01T07:59:58.123456Z",
    "kind": "alarm",
    "lel": 3.5,
    "state": "normal",
    "power": {"source": "battery", "battery_pct": 88, "mains_ok": False},
    "radio": {"rssi": -71, "rsrp": -95, "snr": 4.5, "csq": 21, "ecl": 1},
}
VALVE: dict[str, Any] = {"v": 1, "seq": 0, "ts": "2026-03-01T15:59:58+08:00", "kind": "valve", "position": "closed"}


def variant(base: dict[str, Any], path: str, value: Any) -> bytes:
    """``base`` with the member at dotted ``path`` set to ``value`` (``...`` removes it), as JSON."""
    doc = json.loads(json.dumps(base))
    *parents, leaf = path.split(".")
    target = doc
    for part in parents:
        target = target.setdefault(part, {})
    if value is ...:
        target.pop(leaf, None)
    else:
        target[leaf] = value
    return json.dumps(doc).encode()


CORPUS: list[bytes] = [
    json.dumps(ALARM).encode(),
    json.dumps(VALVE).encode(),
    variant(ALARM, "seq", None),
    variant(ALARM, "seq", ...),
    variant(ALARM, "power", None),
    variant(ALARM, "radio", {}),
    variant(ALARM, "lel", 0),
    variant(ALARM, "lel", 100),
    variant(VALVE, "position", "closing"),
    variant(VALVE, "power", {"source": "mains"}),
    # Refused by both, or by the strict reading only (pydantic decides):
    variant(ALARM, "seq", -1),
    variant(ALARM, "seq", 2**63 - 1),
    variant(ALARM, "seq", 2**63),
    variant(ALARM, "seq", "7"),
    variant(ALARM, "seq", 7.0),
    variant(ALARM, "seq", 7.5),
    variant(ALARM, "lel", -0.01),
    variant(ALARM, "lel", 100.01),
    variant(ALARM, "lel", "3.5"),
    variant(ALARM, "lel", None),
    variant(ALARM, "lel", ...),
    variant(ALARM, "state", "NORMAL"),
    variant(ALARM, "state", "closed"),
    variant(ALARM, "v", 2),
    variant(ALARM, "v", "1"),
    variant(ALARM, "kind", "valve"),
    variant(ALARM, "kind", ...),
    variant(ALARM, "extra", 1),
    variant(ALARM, "power.extra", 1),
    variant(ALARM, "radio.extra", 1),
    variant(ALARM, "power.source", ...),
    variant(ALARM, "power.source", "solar"),
    variant(ALARM, "power.battery_pct", -1),
    variant(ALARM, "power.battery_pct", 101),
    variant(ALARM, "power.battery_pct", 100),
    variant(ALARM, "power.mains_ok", 1),
    variant(ALARM, "power.mains_ok", "true"),
    variant(ALARM, "radio.csq", 99),
    variant(ALARM, "radio.csq", 100),
    variant(ALARM, "radio.ecl", 2),
    variant(ALARM, "radio.ecl", 3),
    variant(ALARM, "radio.rssi", 2**40),
    variant(ALARM, "radio.rssi", 2**70),
    variant(ALARM, "radio.snr", "4.5"),
    variant(ALARM, "ts", "2026-03-01T07:59:58"),
    variant(ALARM, "ts", "2026-03-01 07:59:58Z"),
    variant(ALARM, "ts", 1772351998),
    variant(ALARM, "ts", "yesterday"),
    variant(VALVE, "lel", 1.0),
    variant(VALVE, "position", "ajar"),
    b'{"v":1,"kind":"alarm","ts":"2026-03-01T07:59:58Z","lel":NaN,"state":"normal"}',
    b'{"v":1,"kind":"alarm","ts":"2026-03-01T07:59:58Z","lel":1,"state":"normal","radio":{"snr":Infinity}}',
    b"",
    b"null",
    b"[]",
    b'{"v":1,',
    b"\xff\xfe",
]


def _pydantic(payload: bytes) -> AlarmTelemetry | ValveTelemetry | None:
    try:
        return TELEMETRY_ADAPTER.validate_json(payload)
    except ValidationError:
        return None


def _row(message: AlarmTelemetry | ValveTelemetry | FastAlarmTelemetry | FastValveTelemetry) -> TelemetryRow | str:
    try:
        return telemetry_row("dev", message, RECEIVED)
    except RowError as err:
        return f"RowError: {err}"


@pytest.mark.parametrize("payload", CORPUS, ids=range(len(CORPUS)))
def test_strict_reading_accepts_only_what_pydantic_accepts_and_stores_the_same_row(payload: bytes) -> None:
    """Test that a payload the fast decoder takes is valid protocol v1 and flattens to the pydantic row."""
    fast = decode_telemetry(payload)
    reference = _pydantic(payload)
    if fast is None:
        return  # pydantic decides, as before; nothing of this path is used
    assert reference is not None, f"msgspec accepted what pydantic refuses: {payload!r}"
    assert _row(fast) == _row(reference)


def test_ordinary_telemetry_takes_the_fast_path() -> None:
    """Test that the messages devices actually send do not fall through to pydantic (else nothing is gained)."""
    taken = [p for p in CORPUS[:10] if decode_telemetry(p) is not None]
    assert taken == CORPUS[:10]
    assert isinstance(decode_telemetry(CORPUS[0]), FastAlarmTelemetry)
    assert isinstance(decode_telemetry(CORPUS[1]), FastValveTelemetry)


@pytest.mark.parametrize(
    ("model", "struct"),
    [
        (AlarmTelemetry, FastAlarmTelemetry),
        (ValveTelemetry, FastValveTelemetry),
        (Power, FastPower),
        (Radio, FastRadio),
    ],
)
def test_structs_mirror_the_protocol_models(model: type[BaseModel], struct: type[msgspec.Struct]) -> None:
    """Test that a field added to or made optional in `gasguard.protocol` cannot be missed here."""
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    fields = {f.name: f.required for f in info.fields}
    if info.tag_field is not None:
        fields[info.tag_field] = True
    expected = {name: field.is_required() or name == "kind" for name, field in model.model_fields.items()}
    assert fields == expected
