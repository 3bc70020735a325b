"""API models of the registry, in families per resource (``XPublic``, ``XsPublic``, ``XDetailPublic``).

Personal data is masked by the field types themselves (`MaskedPhone`, `MaskedName`, `Scrubbed`), so a
route cannot forget to mask and re-validating an already masked value changes nothing. Unmasked
phone numbers are not served at all until authentication and roles exist (domain requirement 26).
"""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue

GasType = Literal["NG", "LPG"]
DeviceKind = Literal["alarm", "shutoff_valve", "self_closing_valve", "hose", "regulator"]
IncidentKind = Literal["gas_alarm", "valve_not_closed"]
IncidentState = Literal["NEW", "NOTIFIED", "ACKNOWLEDGED", "DISPATCHED", "ON_SITE", "RESOLVED", "CLOSED"]

# A mainland mobile number anywhere inside free text (not part of a longer digit run).
_PHONE_IN_TEXT = re.compile(r"(?<![0-9])(1[3-9][0-9])[0-9]{4}([0-9]{4})(?![0-9])")


def mask_phone(value: str) -> str:
    """Mask a phone number or other recipient address, keeping at most the first 3 and last 4 characters.

    ``13812345678`` becomes ``138****5678``; anything shorter than 11 characters keeps only its last 2.
    """
    if len(value) >= 11:
        return f"{value[:3]}****{value[-4:]}"
    if len(value) >= 6:
        return f"****{value[-2:]}"
    return "****"


def mask_name(value: str) -> str:
    """Mask a person's name, keeping the first character (``张三丰`` becomes ``张**``)."""
    return value[:1] + "*" * max(len(value) - 1, 1) if value else value


def scrub_text(value: str) -> str:
    """Mask every mobile number that appears inside free text."""
    return _PHONE_IN_TEXT.sub(r"\1****\2", value)


def scrub_json(value: JsonValue) -> JsonValue:
    """Mask every mobile number inside a JSON document (keys and string values, at any depth)."""
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, list):
        return [scrub_json(item) for item in value]
    if isinstance(value, dict):
        return {scrub_text(key): scrub_json(item) for key, item in value.items()}
    return value


class Row(Protocol):
    """A database row read by column name (an ``asyncpg.Record`` or a plain dict)."""

    def __getitem__(self, key: str, /) -> Any: ...


MaskedPhone = Annotated[str, AfterValidator(mask_phone)]
MaskedName = Annotated[str, AfterValidator(mask_name)]
ScrubbedText = Annotated[str, AfterValidator(scrub_text)]
ScrubbedJson = Annotated[JsonValue, AfterValidator(scrub_json)]


class _Public(BaseModel):
    """Base of every response model: immutable."""

    model_config = ConfigDict(frozen=True)


class _PagePublic(_Public):
    """Common fields of a page of results."""

    total: int = Field(description="Number of rows matching the filters, on all pages.")
    limit: int
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page.",
    )


# Health


class HealthPublic(_Public):
    """Liveness of the API and reachability of its database."""

    status: Literal["ok", "degraded"]
    database: Literal["ok", "unreachable"]
    version: str


# Places: 12-digit statistical division codes; names are display only (domain requirement 27).


class TownPublic(_Public):
    """A town (镇/苏木) by statistical code."""

    code: str
    name: str


class CommunityPublic(_Public):
    """A community (社区/嘎查) by statistical code; ``synthetic`` marks made-up demo codes."""

    code: str
    name: str
    synthetic: bool


class PlacePublic(_Public):
    """Where a household is: town → community → building/unit/room."""

    town: TownPublic
    community: CommunityPublic
    building: str
    unit: str
    room: str

    @classmethod
    def from_record(cls, row: Row) -> PlacePublic:
        """Build from a row carrying the ``town_*``, ``community_*`` and address columns."""
        return cls(
            town=TownPublic(code=row["town_code"], name=row["town_name"]),
            community=CommunityPublic(
                code=row["community_code"], name=row["community_name"], synthetic=row["community_synthetic"]
            ),
            building=row["building"],
            unit=row["unit"],
            room=row["room"],
        )


# Households


class HouseholdPublic(_Public):
    """A household in the programme; resident details are masked."""

    id: int
    place: PlacePublic
    gas_type: GasType
    supplier: str
    resident_name: MaskedName | None
    resident_phone: MaskedPhone | None = Field(description="Masked, e.g. 138****5678.")
    monitored: bool = Field(
        description="True only for NG households with an alarm linked to a shut-off valve; LPG never.",
    )
    created_at: datetime

    @classmethod
    def from_record(cls, row: Row) -> HouseholdPublic:
        """Build from a `registry.queries` household row."""
        return cls(
            id=row["id"],
            place=PlacePublic.from_record(row),
            gas_type=row["gas_type"],
            supplier=row["supplier"],
            resident_name=row["resident_name"],
            resident_phone=row["resident_phone"],
            monitored=row["monitored"],
            created_at=row["created_at"],
        )


class HouseholdsPublic(_PagePublic):
    """A page of households."""

    items: list[HouseholdPublic]


class LinkPublic(_Public):
    """An alarm that closes a valve."""

    alarm_id: str
    valve_id: str


# Devices


class DeviceModelPublic(_Public):
    """A device model from the catalogue."""

    id: str
    manufacturer: str
    model: str
    kind: DeviceKind
    gas_type: GasType
    service_life_years: int
    bearer: str | None


class DevicePublic(_Public):
    """An installed device with its computed end of service life."""

    id: str
    household_id: int
    kind: DeviceKind
    model: DeviceModelPublic
    serial: str
    imei: str | None
    manufactured_on: date | None
    installed_on: date | None
    expires_on: date | None = Field(description="installed_on + the model's service life; null if not installed.")
    expired: bool | None = Field(description="Past its service life today (China Standard Time); null if unknown.")

    @classmethod
    def from_record(cls, row: Row, *, today: date) -> DevicePublic:
        """Build from a `registry.queries` device row, judging expiry against ``today``."""
        expires_on: date | None = row["expires_on"]
        return cls(
            id=row["id"],
            household_id=row["household_id"],
            kind=row["kind"],
            model=DeviceModelPublic(
                id=row["model_id"],
                manufacturer=row["manufacturer"],
                model=row["model"],
                kind=row["kind"],
                gas_type=row["model_gas_type"],
                service_life_years=row["service_life_years"],
                bearer=row["bearer"],
            ),
            serial=row["serial"],
            imei=row["imei"],
            manufactured_on=row["manufactured_on"],
            installed_on=row["installed_on"],
            expires_on=expires_on,
            expired=None if expires_on is None else expires_on <= today,
        )


class DevicesPublic(_PagePublic):
    """A page of devices."""

    items: list[DevicePublic]


class DeviceDetailPublic(DevicePublic):
    """A device with the alarm→valve links it takes part in."""

    links: list[LinkPublic]


class HouseholdDetailPublic(HouseholdPublic):
    """A household with its devices and alarm→valve links."""

    devices: list[DevicePublic]
    links: list[LinkPublic]


# Incidents


class IncidentPublic(_Public):
    """An incident's current state."""

    id: int
    household_id: int
    place: PlacePublic
    kind: IncidentKind
    severity: Literal["info", "warning", "critical"]
    state: IncidentState
    alarm_device_id: str | None
    alarm_state: str | None
    alarm_lel: float | None
    alarm_device_ts: datetime | None
    alarm_received_at: datetime
    command_sent_at: datetime | None
    valve_closed_at: datetime | None
    opened_at: datetime
    closed_at: datetime | None
    disposition: str | None

    @classmethod
    def fields_from_record(cls, row: Row) -> dict[str, Any]:
        """The constructor arguments taken from a `registry.queries` incident row."""
        names = IncidentPublic.model_fields.keys() - {"place"}
        return {name: row[name] for name in names} | {"place": PlacePublic.from_record(row)}

    @classmethod
    def from_record(cls, row: Row) -> IncidentPublic:
        """Build from a `registry.queries` incident row."""
        return cls(**cls.fields_from_record(row))


class IncidentsPublic(_PagePublic):
    """A page of incidents, newest first."""

    items: list[IncidentPublic]


class IncidentEventPublic(_Public):
    """One entry of an incident's append-only timeline; phone numbers in it are masked."""

    id: int
    at: datetime
    actor: ScrubbedText
    type: ScrubbedText
    detail: ScrubbedJson


class ValveCommandAttemptPublic(_Public):
    """One transmission of a valve command."""

    attempt: int
    sent_at: datetime


class ValveCommandPublic(_Public):
    """A valve command: what was commanded and what the valve reported."""

    cmd_id: uuid.UUID
    valve_id: str
    command: Literal["close", "self_test"]
    reason: ScrubbedText
    issued_at: datetime
    expires_at: datetime
    state: Literal["sent", "acked", "refused", "confirmed", "failed", "expired"]
    acked_at: datetime | None
    confirmed_at: datetime | None
    reported_position: str | None
    attempts: list[ValveCommandAttemptPublic]


class NotificationPublic(_Public):
    """A notification job from the outbox; the recipient is masked and message parameters are omitted."""

    id: int
    channel: str
    recipient: MaskedPhone
    recipient_role: Literal["resident", "operator", "emergency"]
    template: str
    status: Literal["pending", "sent", "delivered", "failed"]
    attempts: int
    created_at: datetime
    sent_at: datetime | None
    last_error: ScrubbedText | None


class IncidentDetailPublic(IncidentPublic):
    """An incident with its timeline, valve commands and notifications."""

    timeline: list[IncidentEventPublic]
    commands: list[ValveCommandPublic]
    notifications: list[NotificationPublic]
