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


# --- device status, valve fault, health, cluster and escalation planning (pure) ---------------------

from alerting.escalation import Contacts, IncidentFacts, PolicyStep, plan_jobs, plan_next, step_key  # noqa: E402
from alerting.rules import (  # noqa: E402
    ClusterPolicy,
    DeviceIncident,
    HealthInput,
    SetDeviceStatus,
    assess_health,
    cluster_scopes,
    on_status_event,
    on_valve_fault,
)


def test_self_test_never_dispatches() -> None:
    assert on_status_event(event(AlarmState.SELF_TEST), ENTRY) == []


def test_recovered_clears_the_device_state_and_opens_or_closes_nothing() -> None:
    assert on_status_event(event(AlarmState.RECOVERED), ENTRY) == [SetDeviceStatus("A-1", "normal")]


@pytest.mark.parametrize(
    ("state", "kind", "status"),
    [(AlarmState.FAULT, "device_fault", "fault"), (AlarmState.END_OF_LIFE, "end_of_life", "end_of_life")],
)
def test_sensor_fault_and_end_of_life_open_a_device_incident(state: AlarmState, kind: str, status: str) -> None:
    assert on_status_event(event(state), ENTRY) == [
        SetDeviceStatus("A-1", status),
        DeviceIncident(kind=kind, severity="warning", device_id="A-1", household_id=7),
    ]


def test_valve_fault_is_a_critical_device_incident() -> None:
    assert on_valve_fault("V-1", 7)[-1] == DeviceIncident("device_fault", "critical", "V-1", 7)


def health(**kw: object) -> HealthInput:
    base: dict[str, object] = {
        "device_id": "A-1",
        "household_id": 7,
        "heartbeat_s": 3600,
        "offline_factor": 1.5,
        "low_battery_pct": 20,
        "last_seen_s_ago": 60.0,
        "installed_s_ago": 86400.0,
        "battery_pct": 90,
        "mains_ok": True,
    }
    base.update(kw)
    return HealthInput(**base)  # type: ignore[arg-type]


def test_offline_only_past_one_and_a_half_heartbeats_and_then_unknown() -> None:
    assert assess_health(health(last_seen_s_ago=5400.0)).kinds == ()
    verdict = assess_health(health(last_seen_s_ago=5401.0))
    assert verdict.kinds == ("offline",) and verdict.status == "unknown"
    never = assess_health(health(last_seen_s_ago=None, installed_s_ago=10_000.0))
    assert never.status == "unknown", "a device never heard from is never normal"


def test_low_battery_and_mains_loss() -> None:
    assert assess_health(health(battery_pct=20, mains_ok=False)).kinds == ("low_battery", "mains_loss")
    assert assess_health(health(battery_pct=None, mains_ok=None)).kinds == ()


def test_devices_without_heartbeat_get_no_verdict() -> None:
    assert assess_health(health(heartbeat_s=None, last_seen_s_ago=None)).status is None


def test_cluster_rule_per_scope() -> None:
    policies = [ClusterPolicy("building", 600, 3), ClusterPolicy("community", 600, 5)]
    assert cluster_scopes(building_households=2, community_households=4, policies=policies) == []
    assert cluster_scopes(building_households=3, community_households=3, policies=policies) == ["building"]
    assert cluster_scopes(building_households=3, community_households=5, policies=policies) == [
        "building",
        "community",
    ]


STEPS = [
    PolicyStep(0, 0, ("resident", "operator_a"), None),
    PolicyStep(1, 300, ("resident", "operator_a", "operator_b", "supervisor"), None),
    PolicyStep(2, 900, ("operator_a", "emergency", "emergency_webhook"), 300),
]


def test_escalation_runs_through_the_steps_then_repeats_the_last() -> None:
    assert plan_next(STEPS, step=0, round_=0).at_offset_s == 300
    assert plan_next(STEPS, step=1, round_=0).at_offset_s == 900
    last = plan_next(STEPS, step=2, round_=0)
    assert (last.step, last.round, last.repeat_s, last.stop) == (2, 1, 300, False)
    assert plan_next(STEPS[:2], step=1, round_=0).stop
    assert step_key(0, 0) == "" and step_key(2, 1) == "s2r1"


def test_step_jobs_per_role_and_kind() -> None:
    facts = IncidentFacts(
        kind="gas_alarm",
        place="文苑社区3号楼2单元101",
        time=datetime(2026, 11, 29, 8, 0, tzinfo=UTC),
        resident_phone="13812345678",
        hotline="0477-7212345",
    )
    contacts = Contacts(
        operator_a=("13900000001",), emergency=("13900000009",), emergency_webhook="http://em.example/hook"
    )
    jobs = plan_jobs(STEPS[2].roles, facts, contacts, round_=0, step=2)
    assert [(j.channel, j.recipient, j.template) for j in jobs] == [
        ("sms", "13900000001", "SMS_GG_ALARM_OPERATOR"),
        ("sms", "13900000009", "SMS_GG_EMERGENCY"),
        ("webhook", "http://em.example/hook", "WEBHOOK_GG_EMERGENCY"),
    ]
    offline = IncidentFacts(
        kind="offline", place="x", time=facts.time, resident_phone="13812345678", hotline="0477-7212345"
    )
    jobs = plan_jobs(STEPS[0].roles, offline, contacts, round_=0, step=0)
    assert [(j.recipient, j.template) for j in jobs] == [("13900000001", "SMS_GG_DEVICE_NOTICE")], (
        "residents get no device notices"
    )
