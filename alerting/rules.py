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
