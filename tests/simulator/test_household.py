"""Pure state-machine tests of the simulated alarm, valve and leak (no I/O)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from gasguard.protocol import (
    AlarmEvent,
    AlarmState,
    AlarmTelemetry,
    Channel,
    Command,
    CommandAck,
    CommandName,
    CommandResult,
    ValveEvent,
    ValvePosition,
    ValveTelemetry,
    decode_event,
    decode_telemetry,
    encode,
)
from simulator.household import GasLeak, LeakPhase, LeakProfile, Outgoing, ValveFaults, VirtualAlarm, VirtualValve

T0 = datetime(2026, 6, 13, 6, 42, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def command(name: CommandName = CommandName.CLOSE, *, issued: float = 0.0, ttl_s: float = 60.0) -> Command:
    return Command(cmd_id=uuid.uuid4(), command=name, issued_at=at(issued), expires_at=at(issued + ttl_s))


def summary(out: list[Outgoing]) -> list[tuple[Channel, object]]:
    """(channel, the field that matters) for each message, to compare sequences compactly."""
    rows: list[tuple[Channel, object]] = []
    for item in out:
        message = item.message
        if isinstance(message, CommandAck):
            rows.append((item.channel, message.accepted))
        elif isinstance(message, ValveEvent):
            rows.append((item.channel, message.position))
        elif isinstance(message, CommandResult):
            rows.append((item.channel, (message.ok, message.position)))
        else:
            rows.append((item.channel, message))
    return rows


# ----------------------------------------------------------------------------------------------- alarm


def test_alarm_raises_low_then_high_then_recovers() -> None:
    alarm = VirtualAlarm("GA-000001", low_alarm_lel=10, high_alarm_lel=25)
    assert alarm.measure(5.0, at(0)) == []
    (low,) = alarm.measure(12.0, at(1))
    assert (low.state, low.lel) == (AlarmState.LOW_ALARM, 12.0)
    assert alarm.measure(15.0, at(2)) == []  # no change, no event
    (high,) = alarm.measure(30.0, at(3))
    assert (high.state, high.lel) == (AlarmState.HIGH_ALARM, 30.0)
    (recovered,) = alarm.measure(3.0, at(4))
    assert recovered.state is AlarmState.RECOVERED
    assert alarm.state is AlarmState.NORMAL
    assert [low.seq, high.seq, recovered.seq] == [0, 1, 2]


def test_alarm_jumps_straight_to_high_alarm() -> None:
    alarm = VirtualAlarm("GA-000001", low_alarm_lel=10, high_alarm_lel=25)
    events = alarm.measure(40.0, at(0))
    assert [event.state for event in events] == [AlarmState.HIGH_ALARM]


def test_high_alarm_latches_until_below_low_set_point() -> None:
    alarm = VirtualAlarm("GA-000001", low_alarm_lel=10, high_alarm_lel=25)
    alarm.measure(30.0, at(0))
    assert alarm.measure(20.0, at(1)) == []  # between the set points: still high
    assert alarm.state is AlarmState.HIGH_ALARM
    assert alarm.measure(26.0, at(2)) == []
    assert [event.state for event in alarm.measure(9.9, at(3))] == [AlarmState.RECOVERED]


def test_alarm_set_points_come_from_the_model() -> None:
    alarm = VirtualAlarm("GA-000001", low_alarm_lel=8, high_alarm_lel=20)
    assert [event.state for event in alarm.measure(8.0, at(0))] == [AlarmState.LOW_ALARM]
    assert [event.state for event in alarm.measure(20.0, at(1))] == [AlarmState.HIGH_ALARM]


@pytest.mark.parametrize(("low", "high"), [(0, 25), (30, 25), (10, 101)])
def test_alarm_rejects_bad_set_points(low: float, high: float) -> None:
    with pytest.raises(ValueError, match="set points"):
        VirtualAlarm("GA-000001", low_alarm_lel=low, high_alarm_lel=high)


def test_alarm_clamps_readings_to_the_protocol_range() -> None:
    alarm = VirtualAlarm("GA-000001", low_alarm_lel=10, high_alarm_lel=25)
    alarm.measure(250.0, at(0))
    assert alarm.lel == 100.0
    alarm.measure(-3.0, at(1))
    assert alarm.lel == 0.0


def test_alarm_telemetry_is_valid_protocol_and_counts_seq() -> None:
    alarm = VirtualAlarm("GA-000001", low_alarm_lel=10, high_alarm_lel=25, seq=41)
    alarm.measure(12.0, at(0))  # event takes seq 41
    first = alarm.telemetry(at(1))
    second = alarm.telemetry(at(2))
    assert (first.seq, second.seq) == (42, 43)
    decoded = decode_telemetry(encode(first))
    assert isinstance(decoded, AlarmTelemetry)
    assert (decoded.state, decoded.lel, decoded.ts) == (AlarmState.LOW_ALARM, 12.0, at(1))


def test_alarm_fault_suppresses_alarming_until_cleared() -> None:
    alarm = VirtualAlarm("GA-000001", low_alarm_lel=10, high_alarm_lel=25)
    assert [e.state for e in alarm.set_fault(at(0))] == [AlarmState.FAULT]
    assert alarm.set_fault(at(1)) == []
    assert alarm.measure(50.0, at(2)) == []
    assert alarm.telemetry(at(3)).state is AlarmState.FAULT
    assert [e.state for e in alarm.clear_fault(at(4))] == [AlarmState.NORMAL]


def test_self_test_event_only_when_quiet() -> None:
    alarm = VirtualAlarm("GA-000001", low_alarm_lel=10, high_alarm_lel=25)
    (event,) = alarm.self_test(at(0))
    assert isinstance(decode_event(encode(event)), AlarmEvent)
    assert event.state is AlarmState.SELF_TEST
    assert alarm.state is AlarmState.NORMAL
    alarm.measure(30.0, at(1))
    assert alarm.self_test(at(2)) == []


# ----------------------------------------------------------------------------------------------- valve


def test_valve_close_sequence() -> None:
    valve = VirtualValve("GV-000001", close_delay_s=2.0)
    cmd = command()
    out = valve.on_command(cmd, at(0))
    assert summary(out) == [(Channel.COMMAND_ACK, True), (Channel.EVENT, ValvePosition.CLOSING)]
    assert valve.position is ValvePosition.CLOSING
    assert valve.motion_deadline == at(2)
    assert valve.tick(at(1.9)) == []
    done = valve.tick(at(2))
    assert summary(done) == [
        (Channel.EVENT, ValvePosition.CLOSED),
        (Channel.COMMAND_RESULT, (True, ValvePosition.CLOSED)),
    ]
    assert valve.position is ValvePosition.CLOSED
    assert valve.motion_deadline is None
    # Every reply names the command that caused it.
    for item in [*out, *done]:
        assert getattr(item.message, "cmd_id", None) == cmd.cmd_id
    assert all(item.device_id == "GV-000001" for item in [*out, *done])


def test_valve_resend_while_closing_is_acked_and_answered_once_closed() -> None:
    valve = VirtualValve("GV-000001", close_delay_s=1.0)
    first, second = command(), command()
    valve.on_command(first, at(0))
    assert summary(valve.on_command(second, at(0.5))) == [(Channel.COMMAND_ACK, True)]
    assert summary(valve.on_command(first, at(0.6))) == [(Channel.COMMAND_ACK, True)]  # duplicate delivery
    done = valve.tick(at(1.0))
    results = [item.message for item in done if isinstance(item.message, CommandResult)]
    assert [r.cmd_id for r in results] == [first.cmd_id, second.cmd_id]
    event = done[0].message
    assert isinstance(event, ValveEvent)
    assert event.cmd_id == first.cmd_id


def test_close_to_a_closed_valve_answers_closed_at_once() -> None:
    valve = VirtualValve("GV-000001", close_delay_s=0.0, position=ValvePosition.CLOSED)
    out = valve.on_command(command(), at(0))
    assert summary(out) == [(Channel.COMMAND_ACK, True), (Channel.COMMAND_RESULT, (True, ValvePosition.CLOSED))]
    assert valve.motion_deadline is None


def test_expired_command_is_refused_and_valve_stays_open() -> None:
    valve = VirtualValve("GV-000001")
    out = valve.on_command(command(issued=-120, ttl_s=60), at(0))
    assert len(out) == 1
    ack = out[0].message
    assert isinstance(ack, CommandAck)
    assert (ack.accepted, ack.reason) == (False, "expired")
    assert valve.position is ValvePosition.OPEN


def test_self_test_reports_position_without_moving() -> None:
    valve = VirtualValve("GV-000001")
    out = valve.on_command(command(CommandName.SELF_TEST), at(0))
    assert summary(out) == [(Channel.COMMAND_ACK, True), (Channel.COMMAND_RESULT, (True, ValvePosition.OPEN))]
    assert valve.position is ValvePosition.OPEN


def test_ignoring_valve_never_answers() -> None:
    valve = VirtualValve("GV-000001", faults=ValveFaults(ignore_commands=True))
    assert valve.on_command(command(), at(0)) == []
    assert valve.on_command(command(), at(1)) == []
    assert valve.position is ValvePosition.OPEN
    assert valve.commands_received == 2


def test_ack_drop_first_n_loses_the_first_commands_only() -> None:
    valve = VirtualValve("GV-000001", faults=ValveFaults(ack_drop_first_n=2))
    cmd = command()
    assert valve.on_command(cmd, at(0)) == []
    assert valve.on_command(cmd, at(1)) == []
    assert valve.position is ValvePosition.OPEN
    assert summary(valve.on_command(cmd, at(2))) == [
        (Channel.COMMAND_ACK, True),
        (Channel.EVENT, ValvePosition.CLOSING),
    ]


@pytest.mark.parametrize("final", [ValvePosition.FAULT, ValvePosition.OPEN])
def test_stuck_valve_acks_but_never_closes(final: ValvePosition) -> None:
    valve = VirtualValve("GV-000001", close_delay_s=1.0, faults=ValveFaults(stuck=True, stuck_position=final))
    out = valve.on_command(command(), at(0))
    assert summary(out) == [(Channel.COMMAND_ACK, True), (Channel.EVENT, ValvePosition.CLOSING)]
    done = valve.tick(at(1.0))
    assert summary(done) == [(Channel.EVENT, final), (Channel.COMMAND_RESULT, (False, final))]
    assert valve.position is final
    # A resend makes the motor try again, and fail again.
    valve.on_command(command(issued=2), at(2))
    assert summary(valve.tick(at(3))) == [(Channel.EVENT, final), (Channel.COMMAND_RESULT, (False, final))]


def test_healed_valve_closes_on_the_next_try() -> None:
    valve = VirtualValve("GV-000001", close_delay_s=0.5, faults=ValveFaults(stuck=True))
    valve.on_command(command(), at(0))
    valve.tick(at(0.5))
    assert valve.position is ValvePosition.FAULT
    valve.faults = ValveFaults()
    valve.on_command(command(issued=1), at(1))
    valve.tick(at(1.5))
    assert valve.position is ValvePosition.CLOSED


def test_stuck_position_must_be_fault_or_open() -> None:
    with pytest.raises(ValueError, match="stuck"):
        ValveFaults(stuck=True, stuck_position=ValvePosition.CLOSED)


def test_reopen_only_by_hand() -> None:
    valve = VirtualValve("GV-000001", close_delay_s=0.0)
    assert valve.reopen_by_hand(at(0)) == []  # already open
    valve.on_command(command(), at(0))
    valve.tick(at(0))
    assert valve.position is ValvePosition.CLOSED
    out = valve.reopen_by_hand(at(10))
    assert summary(out) == [(Channel.EVENT, ValvePosition.OPEN)]
    event = out[0].message
    assert isinstance(event, ValveEvent)
    assert event.cmd_id is None


def test_valve_messages_are_valid_protocol() -> None:
    valve = VirtualValve("GV-000001", close_delay_s=0.0, seq=7)
    out = valve.on_command(command(), at(0))
    out += valve.tick(at(0))
    for item in out:
        if item.channel is Channel.EVENT:
            assert isinstance(decode_event(encode(item.message)), ValveEvent)
    telemetry = decode_telemetry(encode(valve.telemetry(at(1))))
    assert isinstance(telemetry, ValveTelemetry)
    assert telemetry.position is ValvePosition.CLOSED
    assert telemetry.seq == 9  # closing, closed, then this


# ------------------------------------------------------------------------------------------------ leak


def test_leak_ramps_past_the_high_set_point_then_decays_once_cut() -> None:
    leak = GasLeak(LeakProfile(peak_lel=40, ramp_s=4, decay_s=10), started_at=100.0)
    assert leak.lel_at(100.0) == 0.0
    assert leak.lel_at(102.0) == pytest.approx(20.0)
    assert leak.lel_at(104.0) == pytest.approx(40.0)
    assert leak.lel_at(200.0) == pytest.approx(40.0)  # keeps leaking until the gas is cut
    assert leak.phase(200.0) is LeakPhase.RISING
    leak.cut_off(105.0)
    leak.cut_off(107.0)  # later cuts change nothing
    assert leak.phase(110.0) is LeakPhase.DECAYING
    assert leak.lel_at(110.0) == pytest.approx(20.0)
    assert leak.lel_at(115.0) == 0.0
    assert leak.phase(115.0) is LeakPhase.OVER


def test_leak_drives_an_alarm_through_its_states() -> None:
    alarm = VirtualAlarm("GA-000001", low_alarm_lel=10, high_alarm_lel=25)
    leak = GasLeak(LeakProfile(peak_lel=40, ramp_s=4, decay_s=4), started_at=0.0)
    states: list[AlarmState] = []
    for step in range(41):
        t = step * 0.25
        if t >= 5.0:
            leak.cut_off(5.0)
        states += [event.state for event in alarm.measure(leak.lel_at(t), at(t))]
    assert states == [AlarmState.LOW_ALARM, AlarmState.HIGH_ALARM, AlarmState.RECOVERED]
