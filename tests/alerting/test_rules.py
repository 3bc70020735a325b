"""Alert rules without I/O."""

from datetime import UTC, datetime

import pytest

from alerting.directory import AlarmEntry
from alerting.rules import CloseValve, OpenIncident, RejectEvent, ValveTrackState, on_alarm_event
from gasguard.protocol import AlarmEvent, AlarmState

ENTRY = AlarmEntry(alarm_id="A-1", household_id=7, valve_ids=("V-1", "V-2"), low_alarm_lel=10, high_alarm_lel=25)


def event(state: AlarmState, lel: float = 30.0) -> AlarmEvent:
    return AlarmEvent(seq=1, ts=datetime(2026, 11, 29, 8, 0, tzinfo=UTC), state=state, lel=lel)


def unknown(_: str) -> ValveTrackState:
    return ValveTrackState.UNKNOWN


def test_high_alarm_closes_every_linked_valve_first_then_opens_critical_incident() -> None:
    actions = on_alarm_event(event(AlarmState.HIGH_ALARM), ENTRY, unknown)
    assert actions == [CloseValve("V-1"), CloseValve("V-2"), OpenIncident(household_id=7, severity="critical")]


def test_low_alarm_also_closes_but_is_a_warning() -> None:
    actions = on_alarm_event(event(AlarmState.LOW_ALARM, 12.0), ENTRY, unknown)
    assert actions == [CloseValve("V-1"), CloseValve("V-2"), OpenIncident(household_id=7, severity="warning")]


@pytest.mark.parametrize(
    "state", [AlarmState.SELF_TEST, AlarmState.RECOVERED, AlarmState.NORMAL, AlarmState.FAULT, AlarmState.END_OF_LIFE]
)
def test_non_alarm_states_never_close_a_valve_nor_touch_incidents(state: AlarmState) -> None:
    assert on_alarm_event(event(state), ENTRY, unknown) == []


@pytest.mark.parametrize("track", [ValveTrackState.CLOSING, ValveTrackState.CLOSED])
def test_repeat_alarm_sends_no_second_close_while_closing_or_closed(track: ValveTrackState) -> None:
    actions = on_alarm_event(event(AlarmState.HIGH_ALARM), ENTRY, lambda v: track if v == "V-1" else unknown(v))
    assert actions == [CloseValve("V-2"), OpenIncident(household_id=7, severity="critical")]


def test_alarm_without_a_linked_valve_is_critical() -> None:
    entry = AlarmEntry(alarm_id="A-2", household_id=8, valve_ids=(), low_alarm_lel=10, high_alarm_lel=25)
    assert on_alarm_event(event(AlarmState.LOW_ALARM), entry, unknown) == [
        OpenIncident(household_id=8, severity="critical")
    ]


def test_unknown_alarm_is_rejected() -> None:
    assert on_alarm_event(event(AlarmState.HIGH_ALARM), None, unknown) == [RejectEvent("unknown alarm device")]
