"""API models of the registry, in families per resource (``XPublic``, ``XsPublic``, ``XDetailPublic``).

Personal data is masked by the field types themselves (`MaskedPhone`, `MaskedName`, `Scrubbed`), so a
route cannot forget to mask and re-validating an already masked value changes nothing. A full phone
number is served only by `ContactPublic`, to roles that need it, and every such read is audited.
"""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue

GasType = Literal["NG", "LPG"]
DeviceKind = Literal["alarm", "shutoff_valve", "self_closing_valve", "hose", "regulator"]
IncidentKind = Literal[
    "gas_alarm",
    "valve_not_closed",
    "device_fault",
    "end_of_life",
    "offline",
    "low_battery",
    "mains_loss",
    "cluster",
    "alerting_behind",
]
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

    total: int = Field(
        description=(
            "Number of rows matching the filters, on all pages; from a per-process count at most 30 s old"
            " (`total_age_s`) unless the request asked for `exact_total=true`."
        )
    )
    total_age_s: float = Field(description="How old `total` is, in seconds (0: counted for this page).")
    limit: int
    has_more: bool = Field(description="Whether another page follows (then `next_cursor` is set).")
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
        return cls.model_validate(cls.record_data(row))

    @staticmethod
    def record_data(row: Row) -> dict[str, Any]:
        """The fields of `from_record`, unvalidated (to validate many rows in one call)."""
        return {
            "town": {"code": row["town_code"], "name": row["town_name"]},
            "community": {
                "code": row["community_code"],
                "name": row["community_name"],
                "synthetic": row["community_synthetic"],
            },
            "building": row["building"],
            "unit": row["unit"],
            "room": row["room"],
        }


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
    unprotected: bool = Field(
        description="A fitted device is past its service life, or the programme's kit is not in place.",
    )
    hazard: ScrubbedText | None = Field(default=None, description="Recorded hazard (隐患), if any.")
    created_at: datetime

    @classmethod
    def from_record(cls, row: Row, *, personal: bool = True) -> HouseholdPublic:
        """Build from a `registry.queries` household row; ``personal=False`` omits resident details."""
        return cls.model_validate(cls.record_data(row, personal=personal))

    @staticmethod
    def record_data(row: Row, *, personal: bool = True) -> dict[str, Any]:
        """The fields of `from_record`, unvalidated: a page validates all its rows in one call."""
        return {
            "id": row["id"],
            "place": PlacePublic.record_data(row),
            "gas_type": row["gas_type"],
            "supplier": row["supplier"],
            "resident_name": row["resident_name"] if personal else None,
            "resident_phone": row["resident_phone"] if personal else None,
            "monitored": row["monitored"],
            "unprotected": row["unprotected"],
            "hazard": row["hazard"],
            "created_at": row["created_at"],
        }


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
    #: None for a cluster incident, which belongs to ``scope`` (a building or a community).
    household_id: int | None
    scope: str | None
    place: PlacePublic | None
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
        place = PlacePublic.from_record(row) if row["household_id"] is not None else None
        return {name: row[name] for name in names} | {"place": place}

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
    status: Literal["pending", "sent", "delivered", "failed", "undeliverable", "blocked", "digested"]
    attempts: int
    created_at: datetime
    sent_at: datetime | None
    last_error: ScrubbedText | None


class IncidentDetailPublic(IncidentPublic):
    """An incident with its timeline, valve commands and notifications."""

    timeline: list[IncidentEventPublic]
    commands: list[ValveCommandPublic]
    notifications: list[NotificationPublic]


# Writes and unmasked contact data (behind roles; every use audited)

PHONE_PATTERN = r"^1[3-9][0-9]{9}$"
CODE_PATTERN = r"^[0-9]{12}$"
SUPPLIER_NG = "乌审中燃"


class _Input(BaseModel):
    """Base of request bodies: immutable, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class ContactPublic(_Public):
    """A household's resident with the full phone number; reading it is recorded in the audit log."""

    household_id: int
    resident_name: str | None
    resident_phone: str | None


class HouseholdCreate(_Input):
    """A new household; the community code is its identity, names are display only."""

    community_code: Annotated[str, Field(pattern=CODE_PATTERN)]
    building: Annotated[str, Field(min_length=1, max_length=40)]
    unit: Annotated[str, Field(min_length=1, max_length=40)]
    room: Annotated[str, Field(min_length=1, max_length=40)]
    gas_type: GasType
    supplier: Annotated[str, Field(min_length=1, max_length=100)]
    resident_name: Annotated[str, Field(min_length=1, max_length=50)] | None = None
    resident_phone: Annotated[str, Field(pattern=PHONE_PATTERN)] | None = None
    hazard: Annotated[str, Field(max_length=500)] | None = None


class HouseholdUpdate(_Input):
    """Fields of a household that may change; omitted fields stay as they are."""

    supplier: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    resident_name: Annotated[str, Field(min_length=1, max_length=50)] | None = None
    resident_phone: Annotated[str, Field(pattern=PHONE_PATTERN)] | None = None
    hazard: Annotated[str, Field(max_length=500)] | None = None


class DeviceModelCreate(_Input):
    """A device model for the catalogue (the procurement step)."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]
    manufacturer: Annotated[str, Field(min_length=1, max_length=100)]
    model: Annotated[str, Field(min_length=1, max_length=100)]
    kind: DeviceKind
    gas_type: GasType
    low_alarm_lel: Annotated[float, Field(gt=0, le=100)] | None = None
    high_alarm_lel: Annotated[float, Field(gt=0, le=100)] | None = None
    heartbeat_s: Annotated[int, Field(gt=0)] | None = None
    close_confirm_timeout_s: Annotated[int, Field(gt=0)] | None = None
    service_life_years: Annotated[int, Field(gt=0, le=50)]
    bearer: Annotated[str, Field(max_length=40)] | None = None


class DeviceModelDetailPublic(DeviceModelPublic):
    """A catalogue entry with its set points and timing."""

    low_alarm_lel: float | None
    high_alarm_lel: float | None
    heartbeat_s: int | None
    close_confirm_timeout_s: int | None


class CommunityDetailPublic(CommunityPublic):
    """A community with its town and the year its buildings went up (for the installation queue)."""

    town_code: str
    built_year: int | None


# Incident actions (duty operators) and the emergency-management overview

Disposition = Literal["real_leak", "appliance_fault", "false_alarm_cooking", "device_fault", "test"]


class AcknowledgeRequest(_Input):
    """Take ownership of an incident."""

    note: Annotated[str, Field(max_length=500)] | None = None


class CallbackRequest(_Input):
    """The outcome of calling the resident back."""

    reached: bool
    outcome: Annotated[str, Field(min_length=1, max_length=500)]


class DispatchRequest(_Input):
    """Send a crew."""

    crew: Annotated[str, Field(min_length=1, max_length=200)]
    eta_minutes: Annotated[int, Field(ge=0, le=24 * 60)] | None = None


class OnSiteRequest(_Input):
    """What the crew found and did on site."""

    technician: Annotated[str, Field(min_length=1, max_length=100)]
    arrived_at: datetime
    detector_lel: Annotated[float, Field(ge=0, le=100)]
    cause: Annotated[str, Field(min_length=1, max_length=500)]
    action: Annotated[str, Field(min_length=1, max_length=500)]
    valve_reopened_on_site: bool
    resident_present: bool
    notes: Annotated[str, Field(max_length=1000)] | None = None


class ResolveRequest(_Input):
    """The hazard is over."""

    note: Annotated[str, Field(max_length=500)] | None = None


class CloseRequest(_Input):
    """Close with a disposition."""

    disposition: Disposition
    note: Annotated[str, Field(max_length=500)] | None = None


class IncidentCountPublic(_Public):
    """Active incidents of one community, by kind and severity."""

    town_code: str | None
    town_name: str | None
    community_code: str | None
    community_name: str | None
    kind: str
    severity: str
    count: int


class EscalatedIncidentPublic(_Public):
    """An active incident that has escalated, with its place and no personal data."""

    id: int
    kind: str
    severity: str
    state: str
    town_name: str | None
    community_code: str | None
    community_name: str | None
    building: str | None
    opened_at: datetime
    escalation_steps_fired: int
    valve_closed_at: datetime | None


class IncidentOverviewPublic(_Public):
    """The county view for emergency management: aggregates and escalated incidents, no phone numbers."""

    active_total: int
    by_community: list[IncidentCountPublic]
    escalated: list[EscalatedIncidentPublic]
