"""Pure decoders: Modbus register maps (data files) and NB-IoT payloads (CTWing, OneNET) to readings."""

from __future__ import annotations

import base64
import binascii
import enum
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gasguard.protocol import AlarmState, ValvePosition

Table = Literal["coil", "discrete", "holding", "input"]
ValueType = Literal["uint16", "int16", "uint32", "int32", "float32"]

_WIDTH: dict[str, int] = {"uint16": 1, "int16": 1, "uint32": 2, "int32": 2, "float32": 2}
_BIT_TABLES = frozenset({"coil", "discrete"})


class CodecError(ValueError):
    """A payload or register block that does not decode; the message says why."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ValuePoint(_Frozen):
    """A numeric value per channel: table, documented address, stride between channels, type, scaling."""

    table: Literal["holding", "input"]
    address: Annotated[int, Field(ge=0)]
    stride: Annotated[int, Field(ge=0)] = 1
    type: ValueType = "uint16"
    word_order: Literal["big", "little"] = "big"
    scale: float = 1.0


class StatusPoint(ValuePoint):
    """A status register per channel with named bits."""

    bits: dict[Literal["fault", "low_alarm", "high_alarm", "sensor_end_of_life"], Annotated[int, Field(ge=0, le=31)]]


class OutputPoint(_Frozen):
    """The valve output per channel: a coil or a holding register, and the value that means close."""

    table: Literal["coil", "holding"]
    address: Annotated[int, Field(ge=0)]
    stride: Annotated[int, Field(ge=0)] = 1
    close_value: int = 1


class FeedbackPoint(_Frozen):
    """Where the valve's position is read back, and the value that means closed."""

    table: Table
    address: Annotated[int, Field(ge=0)]
    stride: Annotated[int, Field(ge=0)] = 1
    closed_value: int = 1


class ValvePoints(_Frozen):
    """Valve output and its read-back."""

    output: OutputPoint
    feedback: FeedbackPoint


class RegisterMap(_Frozen):
    """One controller model's register map, as in its data file under ``gateway/register_maps``."""

    model: str
    description: str = ""
    address_base: Literal[0, 1] = 0
    channels: Annotated[int, Field(ge=1, le=256)]
    concentration: ValuePoint
    status: StatusPoint
    valve: ValvePoints | None = None

    @model_validator(mode="after")
    def _addresses_not_below_base(self) -> RegisterMap:
        points: list[ValuePoint | OutputPoint | FeedbackPoint] = [self.concentration, self.status]
        if self.valve is not None:
            points += [self.valve.output, self.valve.feedback]
        for point in points:
            if point.address < self.address_base:
                raise ValueError(f"address {point.address} below address_base {self.address_base}")
        return self

    def address(self, point: ValuePoint | OutputPoint | FeedbackPoint, channel: int) -> int:
        """Protocol (0-based) address of ``point`` for a 1-based ``channel``."""
        if not 1 <= channel <= self.channels:
            raise CodecError(f"channel {channel} outside 1..{self.channels} of {self.model}")
        return point.address - self.address_base + (channel - 1) * point.stride


def register_map_from_text(text: str) -> RegisterMap:
    """Parse a register-map YAML document (raises `pydantic.ValidationError` or `yaml.YAMLError`)."""
    return RegisterMap.model_validate(yaml.safe_load(text))


@cache
def load_register_map(model: str) -> RegisterMap:
    """Load the bundled register map of ``model`` (``gateway/register_maps/<model>.yaml``)."""
    path = resources.files("gateway") / "register_maps" / f"{model}.yaml"
    if not path.is_file():
        raise CodecError(f"no register map for controller model {model!r}")
    return register_map_from_text(path.read_text(encoding="utf-8"))


@dataclass(frozen=True, slots=True)
class Block:
    """A contiguous read: table, first protocol address, count."""

    table: Table
    start: int
    count: int


def read_plan(rmap: RegisterMap) -> tuple[Block, ...]:
    """The fewest contiguous reads (one per table) that cover every channel's points."""
    spans: dict[Table, tuple[int, int]] = {}

    def cover(table: Table, first: int, width: int) -> None:
        lo, hi = spans.get(table, (first, first + width))
        spans[table] = (min(lo, first), max(hi, first + width))

    for ch in range(1, rmap.channels + 1):
        cover(rmap.concentration.table, rmap.address(rmap.concentration, ch), _WIDTH[rmap.concentration.type])
        cover(rmap.status.table, rmap.address(rmap.status, ch), _WIDTH[rmap.status.type])
        if rmap.valve is not None:
            cover(rmap.valve.feedback.table, rmap.address(rmap.valve.feedback, ch), 1)
    return tuple(Block(table, lo, hi - lo) for table, (lo, hi) in sorted(spans.items()))


def decode_value(words: Sequence[int], point: ValuePoint) -> float:
    """Decode one value from its 16-bit words with the point's type, word order and scaling."""
    width = _WIDTH[point.type]
    if len(words) != width:
        raise CodecError(f"{point.type} needs {width} registers, got {len(words)}")
    ordered = list(words) if point.word_order == "big" else list(reversed(words))
    raw = struct.pack(f">{width}H", *(w & 0xFFFF for w in ordered))
    fmt = {"uint16": ">H", "int16": ">h", "uint32": ">I", "int32": ">i", "float32": ">f"}[point.type]
    (value,) = struct.unpack(fmt, raw)
    return float(value) * point.scale


def encode_value(value: float, point: ValuePoint) -> list[int]:
    """Inverse of `decode_value` (used by the simulator and tests)."""
    scaled = value / point.scale
    fmt = {"uint16": ">H", "int16": ">h", "uint32": ">I", "int32": ">i", "float32": ">f"}[point.type]
    raw = struct.pack(fmt, scaled if point.type == "float32" else round(scaled))
    words = list(struct.unpack(f">{_WIDTH[point.type]}H", raw))
    return words if point.word_order == "big" else list(reversed(words))


def decode_status(raw: int, bits: Mapping[Any, int]) -> AlarmState:
    """Alarm state from a status word; fault outranks alarms, high outranks low."""
    for name, state in (
        ("fault", AlarmState.FAULT),
        ("high_alarm", AlarmState.HIGH_ALARM),
        ("low_alarm", AlarmState.LOW_ALARM),
        ("sensor_end_of_life", AlarmState.END_OF_LIFE),
    ):
        if name in bits and raw >> bits[name] & 1:
            return state
    return AlarmState.NORMAL


@dataclass(frozen=True, slots=True)
class ChannelReading:
    """What one poll says about one channel."""

    channel: int
    lel: float
    state: AlarmState
    valve: ValvePosition | None


def _take(
    blocks: Mapping[Table, Sequence[int]], plan: Mapping[Table, Block], table: Table, addr: int, n: int
) -> list[int]:
    block = plan[table]
    values = blocks.get(table)
    offset = addr - block.start
    if values is None or offset < 0 or offset + n > len(values):
        raise CodecError(f"{table} {addr}+{n} not in the block read")
    return [int(v) for v in values[offset : offset + n]]


def decode_snapshot(rmap: RegisterMap, blocks: Mapping[Table, Sequence[int]]) -> tuple[ChannelReading, ...]:
    """Decode the blocks of `read_plan` into one reading per channel."""
    plan = {b.table: b for b in read_plan(rmap)}
    readings = []
    for ch in range(1, rmap.channels + 1):
        conc = rmap.concentration
        lel = decode_value(_take(blocks, plan, conc.table, rmap.address(conc, ch), _WIDTH[conc.type]), conc)
        status = rmap.status
        (raw_status,) = _take(blocks, plan, status.table, rmap.address(status, ch), 1)
        valve = None
        if rmap.valve is not None:
            fb = rmap.valve.feedback
            (raw_fb,) = _take(blocks, plan, fb.table, rmap.address(fb, ch), 1)
            valve = valve_position(raw_fb, fb)
        readings.append(
            ChannelReading(
                channel=ch, lel=min(max(lel, 0.0), 100.0), state=decode_status(raw_status, status.bits), valve=valve
            )
        )
    return tuple(readings)


def valve_position(raw: int, feedback: FeedbackPoint) -> ValvePosition:
    """Position from a read-back value: closed only when it equals the map's closed value."""
    return ValvePosition.CLOSED if int(raw) == feedback.closed_value else ValvePosition.OPEN


# --- NB-IoT -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NbReading:
    """What one NB-IoT uplink says, bearer-neutral; ``None`` where the uplink is silent about it."""

    state: AlarmState | None = None
    lel: float | None = None
    battery_pct: int | None = None
    rsrp: int | None = None
    snr: float | None = None
    csq: int | None = None
    valve: ValvePosition | None = None
    seq: int | None = None


class FrameType(enum.IntEnum):
    """Message types of the GG-NB1 transparent frame."""

    EVENT = 1
    HEARTBEAT = 2


#: Status codes shared by the GG-NB1 frame and the profile-mode ``Alarm_Status`` field.
STATE_CODES: dict[int, AlarmState] = {
    0: AlarmState.NORMAL,
    1: AlarmState.LOW_ALARM,
    2: AlarmState.HIGH_ALARM,
    3: AlarmState.FAULT,
    4: AlarmState.SELF_TEST,
    5: AlarmState.RECOVERED,
    6: AlarmState.END_OF_LIFE,
}
_CODE_OF_STATE = {state: code for code, state in STATE_CODES.items()}
_VALVE_CODES = {0: None, 1: ValvePosition.OPEN, 2: ValvePosition.CLOSED, 3: ValvePosition.FAULT}
_CODE_OF_VALVE = {ValvePosition.OPEN: 1, ValvePosition.CLOSED: 2, ValvePosition.FAULT: 3}

# GG-NB1 frame: A5 | type u8 | seq u16 | state u8 | lel×10 u16 | battery u8 | rsrp i8 | valve u8 | sum u8
_NB1 = struct.Struct(">BBHBHBbB")
_NB1_HEADER = 0xA5


def decode_gg_nb1(frame: bytes) -> NbReading:
    """Decode the GG-NB1 transparent frame (CTWing ``APPdata`` after base64)."""
    if len(frame) != _NB1.size + 1:
        raise CodecError(f"GG-NB1 frame must be {_NB1.size + 1} bytes, got {len(frame)}")
    if sum(frame[:-1]) & 0xFF != frame[-1]:
        raise CodecError("GG-NB1 checksum mismatch")
    header, ftype, seq, state, lel10, battery, rsrp, valve = _NB1.unpack(frame[:-1])
    if header != _NB1_HEADER:
        raise CodecError(f"GG-NB1 header {header:#x} is not 0xa5")
    if ftype not in {t.value for t in FrameType}:
        raise CodecError(f"GG-NB1 frame type {ftype} unknown")
    if state not in STATE_CODES or valve not in _VALVE_CODES or lel10 > 1000 or battery > 100:
        raise CodecError("GG-NB1 field out of range")
    return NbReading(
        state=STATE_CODES[state], lel=lel10 / 10, battery_pct=battery, rsrp=rsrp, valve=_VALVE_CODES[valve], seq=seq
    )


def encode_gg_nb1(reading: NbReading, frame_type: FrameType = FrameType.EVENT) -> bytes:
    """Build a GG-NB1 frame (simulator and tests)."""
    body = _NB1.pack(
        _NB1_HEADER,
        frame_type,
        (reading.seq or 0) & 0xFFFF,
        _CODE_OF_STATE[reading.state or AlarmState.NORMAL],
        round((reading.lel or 0) * 10),
        reading.battery_pct or 0,
        reading.rsrp or 0,
        _CODE_OF_VALVE.get(reading.valve, 0) if reading.valve else 0,
    )
    return body + bytes([sum(body) & 0xFF])


#: Transparent-mode frame codecs by name (the device model's ``bearer`` field names the codec).
FRAME_CODECS = {"GG-NB1": decode_gg_nb1}


def decode_app_data(codec: str, app_data: str) -> NbReading:
    """Decode base64 ``APPdata`` with the named frame codec."""
    try:
        frame = base64.b64decode(app_data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise CodecError(f"APPdata is not base64: {err}") from err
    try:
        decoder = FRAME_CODECS[codec]
    except KeyError as err:
        raise CodecError(f"no frame codec {codec!r}") from err
    return decoder(frame)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def decode_profile(service_data: Mapping[str, Any]) -> NbReading:
    """Decode CTWing profile-mode ``serviceData`` (fields as in the LiAn/GG NB alarm profile)."""
    try:
        state = STATE_CODES[int(service_data["Alarm_Status"])] if "Alarm_Status" in service_data else None
        lel = float(service_data["Gas_LEL"]) if "Gas_LEL" in service_data else None
        rsrp = _int(service_data.get("RSRP"))
        return NbReading(
            state=state,
            lel=lel,
            battery_pct=_int(service_data.get("Battery_Level")),
            # Profiles report RSRP as a positive magnitude; the protocol uses dBm.
            rsrp=-abs(rsrp) if rsrp is not None else None,
            snr=float(service_data["SNR"]) if "SNR" in service_data else None,
            csq=_int(service_data.get("CSQ")),
            valve=_VALVE_CODES.get(int(service_data["Valve_Status"])) if "Valve_Status" in service_data else None,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise CodecError(f"serviceData does not decode: {err!r}") from err


def decode_onenet_datapoint(ds_id: str, value: Any) -> NbReading:
    """Decode one OneNET datapoint (``type`` 1): ``alarm`` (object), ``lel`` or ``alarm_status``."""
    try:
        if ds_id == "alarm" and isinstance(value, Mapping):
            return decode_profile(value)
        if ds_id == "alarm_status":
            return NbReading(state=STATE_CODES[int(value)])
        if ds_id == "lel":
            return NbReading(lel=float(value))
    except (KeyError, TypeError, ValueError) as err:
        raise CodecError(f"datapoint {ds_id!r} does not decode: {err!r}") from err
    raise CodecError(f"unknown datapoint {ds_id!r}")
