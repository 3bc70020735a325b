"""Fast, strict decoding of protocol v1 telemetry with msgspec; pydantic's models stay the authority.

Telemetry is nearly all of ingest's traffic, and validating it with pydantic cost about as much CPU
as everything else ingest does per message. These msgspec structs mirror `gasguard.protocol`'s
``AlarmTelemetry`` and ``ValveTelemetry`` in their strictest reading: exact JSON types, the same
bounds, no unknown fields, timezone-aware RFC 3339 times. A payload they accept is valid protocol v1;
anything they refuse (including what pydantic's lax mode would still coerce, such as ``"5"`` for an
integer) is handed to pydantic, whose verdict and error text decide. So this path can only be faster,
never more permissive; ``tests/ingest/test_decode.py`` checks the fields against the pydantic models
and the verdicts against a corpus of valid and broken messages.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

import msgspec

from gasguard.protocol import AlarmState, PowerSource, ValvePosition

# Bounds of gasguard.protocol, restated for msgspec (the test compares the two).
_Seq = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
_AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]
_Lel = Annotated[float, msgspec.Meta(ge=0, le=100)]
_Percent = Annotated[int, msgspec.Meta(ge=0, le=100)]
_Csq = Annotated[int, msgspec.Meta(ge=0, le=99)]
_Ecl = Annotated[int, msgspec.Meta(ge=0, le=2)]


class FastPower(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``gasguard.protocol.Power``."""

    source: PowerSource
    battery_pct: _Percent | None = None
    mains_ok: bool | None = None


class FastRadio(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``gasguard.protocol.Radio``."""

    rssi: int | None = None
    rsrp: int | None = None
    snr: float | None = None
    csq: _Csq | None = None
    ecl: _Ecl | None = None


class FastAlarmTelemetry(msgspec.Struct, forbid_unknown_fields=True, frozen=True, tag_field="kind", tag="alarm"):
    """``gasguard.protocol.AlarmTelemetry``."""

    kind: ClassVar[str] = "alarm"

    ts: _AwareTime
    lel: _Lel
    state: AlarmState
    v: Literal[1] = 1
    seq: _Seq | None = None
    power: FastPower | None = None
    radio: FastRadio | None = None


class FastValveTelemetry(msgspec.Struct, forbid_unknown_fields=True, frozen=True, tag_field="kind", tag="valve"):
    """``gasguard.protocol.ValveTelemetry``."""

    kind: ClassVar[str] = "valve"

    ts: _AwareTime
    position: ValvePosition
    v: Literal[1] = 1
    seq: _Seq | None = None
    power: FastPower | None = None
    radio: FastRadio | None = None


FastTelemetry = FastAlarmTelemetry | FastValveTelemetry

_DECODER: msgspec.json.Decoder[FastTelemetry] = msgspec.json.Decoder(FastTelemetry)


def decode_telemetry(payload: bytes) -> FastTelemetry | None:
    """The telemetry in ``payload``, or None when the strict reading refuses it (ask pydantic then)."""
    try:
        return _DECODER.decode(payload)
    except msgspec.DecodeError:  # ValidationError is a DecodeError
        return None
