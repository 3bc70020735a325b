"""Alert rules as pure functions: (event, directory entry, valve state) -> actions. No I/O here."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from alerting.directory import AlarmEntry
from gasguard.protocol import ALARMING_STATES, AlarmEvent, AlarmState


class ValveTrackState(enum.Enum):
    """What alerting knows about a valve's closing, from commands it sent and reports it received."""

    UNKNOWN = "unknown"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class CloseValve:
    """Send ``close`` to this valve now."""

    valve_id: str


@dataclass(frozen=True, slots=True)
class OpenIncident:
    """Record a gas-alarm incident (or a repeat alarm on the household's active one)."""

    household_id: int
    severity: str


@dataclass(frozen=True, slots=True)
class RejectEvent:
    """The event cannot be acted on; keep it as a dead letter with the reason."""

    reason: str


Action = CloseValve | OpenIncident | RejectEvent


def on_alarm_event(
    event: AlarmEvent,
    entry: AlarmEntry | None,
    valve_state: Callable[[str], ValveTrackState],
) -> list[Action]:
    """Decide what an alarm event calls for.

    A low or high alarm closes every linked valve at once — no false-alarm heuristic may delay or
    block it (domain requirement 2) — unless a close is already in flight or the valve already
    reported closed, so a burst of repeated alarms causes no command storm. Self-test, recovered and
    normal reports never close a valve and never open or close an incident.
    """
    if entry is None:
        return [RejectEvent(reason="unknown alarm device")]
    if event.state not in ALARMING_STATES:
        return []
    actions: list[Action] = [
        CloseValve(valve_id=valve_id)
        for valve_id in entry.valve_ids
        if valve_state(valve_id) is ValveTrackState.UNKNOWN
    ]
    severity = "critical" if event.state is AlarmState.HIGH_ALARM or not entry.valve_ids else "warning"
    actions.append(OpenIncident(household_id=entry.household_id, severity=severity))
    return actions


# --- Device status, valve fault, health and cluster rules (all pure) -------------------------------


@dataclass(frozen=True, slots=True)
class DeviceIncident:
    """Open (or add to) a device-state incident of this kind for the household; never closes a valve."""

    kind: str
    severity: str
    device_id: str
    household_id: int


@dataclass(frozen=True, slots=True)
class SetDeviceStatus:
    """Record what alerting now concludes about a device ('normal' only after a recovery report)."""

    device_id: str
    status: str


DEVICE_STATUS_KINDS: dict[AlarmState, tuple[str, str]] = {
    AlarmState.FAULT: ("device_fault", "warning"),
    AlarmState.END_OF_LIFE: ("end_of_life", "warning"),
}


def on_status_event(event: AlarmEvent, entry: AlarmEntry | None) -> list[DeviceIncident | SetDeviceStatus]:
    """Non-alarm reports of a gas alarm.

    Sensor fault and end-of-life open a device incident for the operators (no valve, no resident).
    Recovered clears the device state to normal but never closes an incident: a human closes it.
    Self-test is noted in the device state only and never dispatches anyone.
    """
    if entry is None:
        return []
    match event.state:
        case AlarmState.FAULT | AlarmState.END_OF_LIFE:
            kind, severity = DEVICE_STATUS_KINDS[event.state]
            status = "fault" if event.state is AlarmState.FAULT else "end_of_life"
            return [
                SetDeviceStatus(device_id=entry.alarm_id, status=status),
                DeviceIncident(kind=kind, severity=severity, device_id=entry.alarm_id, household_id=entry.household_id),
            ]
        case AlarmState.RECOVERED:
            return [SetDeviceStatus(device_id=entry.alarm_id, status="normal")]
        case AlarmState.LOW_ALARM | AlarmState.HIGH_ALARM:
            return [SetDeviceStatus(device_id=entry.alarm_id, status="alarm")]
        case _:
            return []  # self-test and normal: nothing to dispatch


def on_valve_fault(valve_id: str, household_id: int) -> list[DeviceIncident | SetDeviceStatus]:
    """A valve reporting a fault position: a critical device incident (it may not close on the next alarm)."""
    return [
        SetDeviceStatus(device_id=valve_id, status="fault"),
        DeviceIncident(kind="device_fault", severity="critical", device_id=valve_id, household_id=household_id),
    ]


@dataclass(frozen=True, slots=True)
class HealthInput:
    """The latest facts the database holds about one device."""

    device_id: str
    household_id: int
    heartbeat_s: int | None
    offline_factor: float
    low_battery_pct: int
    last_seen_s_ago: float | None  # None: never heard from
    installed_s_ago: float
    battery_pct: int | None
    mains_ok: bool | None


@dataclass(frozen=True, slots=True)
class HealthVerdict:
    """Status ('unknown' when silent, never 'normal') and the incident kinds the facts call for."""

    device_id: str
    status: str | None
    kinds: tuple[str, ...]


def assess_health(h: HealthInput) -> HealthVerdict:
    """Offline: silent past ``offline_factor`` × the model heartbeat (1.5× by default) → 'unknown'.

    Low battery and mains loss come from the latest telemetry ``power`` block. A device without a
    heartbeat in the catalogue (hose, regulator) reports nothing and gets no verdict.
    """
    if h.heartbeat_s is None:
        return HealthVerdict(device_id=h.device_id, status=None, kinds=())
    limit = h.heartbeat_s * h.offline_factor
    silent_for = h.last_seen_s_ago if h.last_seen_s_ago is not None else h.installed_s_ago
    kinds: list[str] = []
    status: str | None = None
    if silent_for > limit:
        kinds.append("offline")
        status = "unknown"
    if h.battery_pct is not None and h.battery_pct <= h.low_battery_pct:
        kinds.append("low_battery")
    if h.mains_ok is False:
        kinds.append("mains_loss")
    return HealthVerdict(device_id=h.device_id, status=status, kinds=tuple(kinds))


@dataclass(frozen=True, slots=True)
class ClusterPolicy:
    """Several households alarming in one scope within a window make a cluster."""

    scope: str  # 'building' or 'community'
    window_s: int
    min_households: int


def cluster_scopes(*, building_households: int, community_households: int, policies: list[ClusterPolicy]) -> list[str]:
    """Scopes ('building', 'community') whose distinct alarming households within the window reach the policy."""
    counts = {"building": building_households, "community": community_households}
    return [p.scope for p in policies if counts.get(p.scope, 0) >= p.min_households]
