"""The fleet against the real broker: commands, leaks, telemetry, availability in both connection modes."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta

import pytest

from gasguard.clock import utcnow
from gasguard.protocol import (
    AlarmEvent,
    AlarmState,
    AlarmTelemetry,
    Availability,
    Channel,
    Command,
    CommandAck,
    CommandName,
    CommandResult,
    Topics,
    ValveEvent,
    ValvePosition,
    ValveTelemetry,
    decode_event,
    decode_telemetry,
)
from gasguard.settings import MqttEndpoint
from simulator.fleet import ConnectionMode, Fleet
from simulator.household import LeakProfile, ValveFaults
from tests.simulator.conftest import Recorder, make_households
from tests.support.tcp_proxy import TcpProxy

FAST_LEAK = LeakProfile(peak_lel=40.0, ramp_s=0.4, decay_s=0.3)


def status(payload: bytes | None) -> str | None:
    return None if payload is None else Availability.model_validate_json(payload).status


def valve_replies(recorder: Recorder, valve_id: str) -> list[CommandAck | ValveEvent | CommandResult]:
    """The valve's acks, events and results in arrival order, decoded."""
    topics = recorder.topics
    decoded: list[CommandAck | ValveEvent | CommandResult] = []
    for topic, payload in recorder.messages:
        if topic == topics.device(valve_id, Channel.COMMAND_ACK):
            decoded.append(CommandAck.model_validate_json(payload))
        elif topic == topics.device(valve_id, Channel.EVENT):
            event = decode_event(payload)
            assert isinstance(event, ValveEvent)
            decoded.append(event)
        elif topic == topics.device(valve_id, Channel.COMMAND_RESULT):
            decoded.append(CommandResult.model_validate_json(payload))
    return decoded


@pytest.mark.parametrize("mode", list(ConnectionMode))
async def test_valve_obeys_close_in_order(
    mqtt_endpoint: MqttEndpoint, topics: Topics, recorder: Recorder, mode: ConnectionMode
) -> None:
    households = make_households(2)
    target, other = households[0].valve_id, households[1].valve_id
    async with Fleet(
        mqtt_endpoint, topics, households=households, mode=mode, telemetry_period_s=None, valve_close_s=0.2
    ) as fleet:
        command = recorder.send_close(target)
        await recorder.wait_for(lambda: recorder.device(target, Channel.COMMAND_RESULT))
        assert fleet.valve_position(target) is ValvePosition.CLOSED
        assert fleet.valve_position(other) is ValvePosition.OPEN
        stats = fleet.stats()
    replies = valve_replies(recorder, target)
    assert [type(r) for r in replies] == [CommandAck, ValveEvent, ValveEvent, CommandResult]
    ack, closing, closed, result = replies
    assert isinstance(ack, CommandAck)
    assert ack.accepted
    assert isinstance(closing, ValveEvent)
    assert closing.position is ValvePosition.CLOSING
    assert isinstance(closed, ValveEvent)
    assert closed.position is ValvePosition.CLOSED
    assert isinstance(result, CommandResult)
    assert (result.ok, result.position) == (True, ValvePosition.CLOSED)
    assert {ack.cmd_id, closing.cmd_id, closed.cmd_id, result.cmd_id} == {command.cmd_id}
    assert closed.ts - closing.ts >= timedelta(seconds=0.2)
    assert valve_replies(recorder, other) == []
    assert (stats.commands_received, stats.acks, stats.results, stats.events) == (1, 1, 1, 2)


async def test_valve_ignoring_commands_never_acks(
    mqtt_endpoint: MqttEndpoint, topics: Topics, recorder: Recorder
) -> None:
    deaf, healthy = make_households(2)
    async with Fleet(
        mqtt_endpoint,
        topics,
        households=[deaf, healthy],
        telemetry_period_s=None,
        valve_close_s=0.1,
        valve_faults={deaf.valve_id: ValveFaults(ignore_commands=True)},
    ) as fleet:
        recorder.send_close(deaf.valve_id)
        recorder.send_close(deaf.valve_id)
        # Both valves share one connection, so the healthy valve's result arriving proves the deaf valve's
        # commands were delivered and handled before it.
        recorder.send_close(healthy.valve_id)
        await recorder.wait_for(lambda: recorder.device(healthy.valve_id, Channel.COMMAND_RESULT))
        assert fleet.stats().commands_received == 3
        assert fleet.valve_position(deaf.valve_id) is ValvePosition.OPEN
    assert valve_replies(recorder, deaf.valve_id) == []


async def test_first_command_lost_then_resend_closes(
    mqtt_endpoint: MqttEndpoint, topics: Topics, recorder: Recorder
) -> None:
    (hh,) = make_households(1)
    async with Fleet(
        mqtt_endpoint,
        topics,
        households=[hh],
        telemetry_period_s=None,
        valve_close_s=0.1,
        valve_faults={hh.valve_id: ValveFaults(ack_drop_first_n=1)},
    ) as fleet:
        command = recorder.send_close(hh.valve_id)
        recorder.send(hh.valve_id, command)  # the resend a sender makes after its ack timeout
        await recorder.wait_for(lambda: recorder.device(hh.valve_id, Channel.COMMAND_RESULT))
        assert fleet.stats().commands_received == 2
    acks = [CommandAck.model_validate_json(p) for p in recorder.device(hh.valve_id, Channel.COMMAND_ACK)]
    assert [ack.cmd_id for ack in acks] == [command.cmd_id]


async def test_stuck_valve_reports_fault(mqtt_endpoint: MqttEndpoint, topics: Topics, recorder: Recorder) -> None:
    (hh,) = make_households(1)
    async with Fleet(
        mqtt_endpoint,
        topics,
        households=[hh],
        telemetry_period_s=None,
        valve_close_s=0.1,
        valve_faults={hh.valve_id: ValveFaults(stuck=True)},
    ) as fleet:
        recorder.send_close(hh.valve_id)
        await recorder.wait_for(lambda: recorder.device(hh.valve_id, Channel.COMMAND_RESULT))
        assert fleet.valve_position(hh.valve_id) is ValvePosition.FAULT
    replies = valve_replies(recorder, hh.valve_id)
    positions = [r.position for r in replies if isinstance(r, ValveEvent)]
    assert positions == [ValvePosition.CLOSING, ValvePosition.FAULT]
    result = replies[-1]
    assert isinstance(result, CommandResult)
    assert (result.ok, result.position) == (False, ValvePosition.FAULT)


async def test_invalid_and_expired_commands(mqtt_endpoint: MqttEndpoint, topics: Topics, recorder: Recorder) -> None:
    (hh,) = make_households(1)
    now = utcnow()
    expired = Command(
        cmd_id=uuid.uuid4(),
        command=CommandName.CLOSE,
        issued_at=now - timedelta(hours=2),
        expires_at=now - timedelta(hours=1),
    )
    async with Fleet(mqtt_endpoint, topics, households=[hh], telemetry_period_s=None, valve_close_s=0.1) as fleet:
        recorder.publish(topics.device(hh.valve_id, Channel.COMMAND), b'{"command": "open"}')
        recorder.send(hh.valve_id, expired)
        await recorder.wait_for(lambda: recorder.device(hh.valve_id, Channel.COMMAND_ACK))
        assert fleet.stats().commands_invalid == 1
        assert fleet.valve_position(hh.valve_id) is ValvePosition.OPEN
    (ack,) = [CommandAck.model_validate_json(p) for p in recorder.device(hh.valve_id, Channel.COMMAND_ACK)]
    assert (ack.cmd_id, ack.accepted, ack.reason) == (expired.cmd_id, False, "expired")


async def test_leak_produces_high_alarm_event(mqtt_endpoint: MqttEndpoint, topics: Topics, recorder: Recorder) -> None:
    households = make_households(3)
    leaking = households[1]
    async with Fleet(
        mqtt_endpoint,
        topics,
        households=households,
        telemetry_period_s=None,
        leak_profile=FAST_LEAK,
        leak_sample_s=0.05,
    ) as fleet:
        handle = await fleet.start_leak(leaking.alarm_id)
        assert await fleet.start_leak(leaking.alarm_id) is handle  # one leak per household at a time

        def high_alarm() -> AlarmEvent | None:
            for payload in recorder.device(leaking.alarm_id, Channel.EVENT):
                event = decode_event(payload)
                assert isinstance(event, AlarmEvent)
                if event.state is AlarmState.HIGH_ALARM:
                    return event
            return None

        event = await recorder.wait_for(high_alarm)
        assert event.lel >= leaking.high_alarm_lel
        assert fleet.alarm_state(leaking.alarm_id) is AlarmState.HIGH_ALARM
        assert handle.low_alarm_at is not None
        assert handle.high_alarm_at is not None
        assert handle.low_alarm_at <= handle.high_alarm_at
    states = [decode_event(p).state for p in recorder.device(leaking.alarm_id, Channel.EVENT)]
    assert states[:2] == [AlarmState.LOW_ALARM, AlarmState.HIGH_ALARM]
    event_topics = {t for t, _ in recorder.messages if t.endswith("/event")}
    assert event_topics == {topics.device(leaking.alarm_id, Channel.EVENT)}


async def test_closing_the_valve_ends_the_leak(mqtt_endpoint: MqttEndpoint, topics: Topics, recorder: Recorder) -> None:
    (hh,) = make_households(1)
    async with Fleet(
        mqtt_endpoint,
        topics,
        households=[hh],
        telemetry_period_s=None,
        valve_close_s=0.1,
        leak_profile=FAST_LEAK,
        leak_sample_s=0.05,
    ) as fleet:
        handle = await fleet.start_leak(hh.alarm_id)
        await recorder.wait_for(lambda: fleet.alarm_state(hh.alarm_id) is AlarmState.HIGH_ALARM)
        recorder.send_close(hh.valve_id)  # what GasGuard's alerting does
        async with asyncio.timeout(5):
            await handle.wait_valve_closed()
            await handle.wait_over()
        assert fleet.leak(hh.alarm_id) is None
        assert fleet.alarm_state(hh.alarm_id) is AlarmState.NORMAL
    states = [decode_event(p).state for p in recorder.device(hh.alarm_id, Channel.EVENT)]
    assert states == [AlarmState.LOW_ALARM, AlarmState.HIGH_ALARM, AlarmState.RECOVERED]
    assert handle.alarm_to_command_s is not None
    assert handle.alarm_to_command_s >= 0
    assert handle.alarm_to_closed_s is not None
    assert handle.alarm_to_closed_s >= 0.1  # includes the valve's own closing time


async def test_stop_leak_lets_the_air_clear(mqtt_endpoint: MqttEndpoint, topics: Topics, recorder: Recorder) -> None:
    (hh,) = make_households(1)
    async with Fleet(
        mqtt_endpoint, topics, households=[hh], telemetry_period_s=None, leak_profile=FAST_LEAK, leak_sample_s=0.05
    ) as fleet:
        handle = await fleet.start_leak(hh.alarm_id)
        await recorder.wait_for(lambda: fleet.alarm_state(hh.alarm_id) is AlarmState.HIGH_ALARM)
        fleet.stop_leak(hh.alarm_id)
        async with asyncio.timeout(5):
            await handle.wait_over()
        assert fleet.valve_position(hh.valve_id) is ValvePosition.OPEN
    assert decode_event(recorder.device(hh.alarm_id, Channel.EVENT)[-1]).state is AlarmState.RECOVERED


async def test_periodic_telemetry_validates(mqtt_endpoint: MqttEndpoint, topics: Topics, recorder: Recorder) -> None:
    households = make_households(3)
    devices = [d for hh in households for d in (hh.alarm_id, hh.valve_id)]
    async with Fleet(mqtt_endpoint, topics, households=households, telemetry_period_s=0.3, seq_start=1000) as fleet:
        await recorder.wait_for(lambda: all(len(recorder.device(d, Channel.TELEMETRY)) >= 2 for d in devices))
        assert fleet.stats().telemetry >= 2 * len(devices)
    for hh in households:
        alarm_reports = [decode_telemetry(p) for p in recorder.device(hh.alarm_id, Channel.TELEMETRY)]
        valve_reports = [decode_telemetry(p) for p in recorder.device(hh.valve_id, Channel.TELEMETRY)]
        assert all(isinstance(r, AlarmTelemetry) and r.state is AlarmState.NORMAL for r in alarm_reports)
        assert all(isinstance(r, ValveTelemetry) and r.position is ValvePosition.OPEN for r in valve_reports)
        for reports in (alarm_reports, valve_reports):
            seqs = [r.seq for r in reports]
            assert seqs == sorted(seqs)
            assert len(set(seqs)) == len(seqs)
            assert seqs[0] is not None
            assert seqs[0] >= 1000


async def test_telemetry_round_is_counted(mqtt_endpoint: MqttEndpoint, topics: Topics, recorder: Recorder) -> None:
    households = make_households(4)
    async with Fleet(mqtt_endpoint, topics, households=households, telemetry_period_s=None) as fleet:
        assert fleet.stats().telemetry == 0
        assert fleet.publish_telemetry_round() == 8
        assert fleet.publish_telemetry_round() == 8
        stats = fleet.stats()
        await recorder.wait_for(lambda: len([t for t, _ in recorder.messages if t.endswith("/telemetry")]) == 16)
    assert stats.telemetry == 16
    # Multiplexed births: one retained "online" per device, counted as availability sent.
    assert stats.availability == 8
    assert stats.sent == 24


@pytest.mark.parametrize("mode", list(ConnectionMode))
async def test_availability_births_and_goodbyes(
    mqtt_endpoint: MqttEndpoint, topics: Topics, recorder: Recorder, mode: ConnectionMode
) -> None:
    households = make_households(2)
    devices = [d for hh in households for d in (hh.alarm_id, hh.valve_id)]
    gateway = topics.gateway_availability("sim")
    async with Fleet(mqtt_endpoint, topics, households=households, mode=mode, telemetry_period_s=None):
        await recorder.wait_for(
            lambda: all(status(recorder.last(topics.device(d, Channel.AVAILABILITY))) == "online" for d in devices)
        )
    await recorder.wait_for(
        lambda: all(status(recorder.last(topics.device(d, Channel.AVAILABILITY))) == "offline" for d in devices)
    )
    if mode is ConnectionMode.MULTIPLEXED:
        await recorder.wait_for(lambda: status(recorder.last(gateway)) == "offline")
        assert status(recorder.on(gateway)[0]) == "online"
    else:
        assert recorder.on(gateway) == []


async def test_per_device_last_will_when_the_connection_dies(
    mqtt_endpoint: MqttEndpoint, topics: Topics, recorder: Recorder
) -> None:
    households = make_households(2)
    devices = [d for hh in households for d in (hh.alarm_id, hh.valve_id)]

    def all_availability(expected: str) -> bool:
        return all(status(recorder.last(topics.device(d, Channel.AVAILABILITY))) == expected for d in devices)

    async with TcpProxy(mqtt_endpoint.host, mqtt_endpoint.port) as proxy:
        endpoint = MqttEndpoint(host="127.0.0.1", port=proxy.port)
        async with Fleet(
            endpoint, topics, households=households, mode=ConnectionMode.PER_DEVICE, telemetry_period_s=None
        ) as fleet:
            await recorder.wait_for(lambda: all_availability("online"))
            await proxy.cut()  # every device's TCP connection is reset; no DISCONNECT is sent
            await recorder.wait_for(lambda: all_availability("offline"))  # published by the broker: last wills
            assert not fleet.connected
            await proxy.restore()
            await recorder.wait_for(lambda: all_availability("online"), timeout=15)
            await recorder.wait_for(lambda: fleet.connected and fleet.stats().reconnects == len(devices), timeout=5)
            # Commands work again after the reconnect.
            recorder.send_close(households[0].valve_id)
            await recorder.wait_for(lambda: recorder.device(households[0].valve_id, Channel.COMMAND_RESULT))


async def test_multiplexed_gateway_last_will_and_reannounce(
    mqtt_endpoint: MqttEndpoint, topics: Topics, recorder: Recorder
) -> None:
    households = make_households(2)
    gateway = topics.gateway_availability("gw1")
    births_topic = topics.device(households[0].alarm_id, Channel.AVAILABILITY)
    async with TcpProxy(mqtt_endpoint.host, mqtt_endpoint.port) as proxy:
        endpoint = MqttEndpoint(host="127.0.0.1", port=proxy.port)
        async with Fleet(endpoint, topics, households=households, sim_id="gw1", telemetry_period_s=0.2) as fleet:
            await recorder.wait_for(lambda: status(recorder.last(gateway)) == "online")
            await proxy.cut()
            await recorder.wait_for(lambda: status(recorder.last(gateway)) == "offline")
            # Telemetry is not queued while the link is down (a device without a link cannot report).
            await recorder.wait_for(lambda: fleet.stats().telemetry_skipped > 0)
            assert status(recorder.last(births_topic)) == "online"  # device births stay; the gateway will says it all
            births_before = len(recorder.on(births_topic))
            sent_before = fleet.stats().telemetry
            await proxy.restore()
            await recorder.wait_for(lambda: status(recorder.last(gateway)) == "online", timeout=15)
            # After the reconnect the fleet republishes every device's birth.
            await recorder.wait_for(lambda: fleet.stats().reconnects == 1)
            assert fleet.stats().availability == 2 * 4
            await recorder.wait_for(lambda: len(recorder.on(births_topic)) > births_before)
            await recorder.wait_for(lambda: fleet.stats().telemetry > sent_before)  # reporting again


async def test_fleet_lifecycle_misuse(mqtt_endpoint: MqttEndpoint, topics: Topics) -> None:
    households = make_households(1)
    fleet = Fleet(mqtt_endpoint, topics, households=households, telemetry_period_s=None)
    with pytest.raises(RuntimeError, match="not running"):
        await fleet.start_leak(households[0].alarm_id)
    async with fleet:
        with pytest.raises(ValueError, match="not in this fleet"):
            await fleet.start_leak("GA-999999")
        with pytest.raises(ValueError, match="not in this fleet"):
            fleet.valve_position("GV-999999")
    with pytest.raises(RuntimeError, match="reopened"):
        async with fleet:
            pass


def test_fleet_rejects_bad_configuration(mqtt_endpoint: MqttEndpoint, topics: Topics) -> None:
    (hh,) = make_households(1)
    with pytest.raises(ValueError, match="twice"):
        Fleet(mqtt_endpoint, topics, households=[hh, hh])
    with pytest.raises(ValueError, match="not in the fleet"):
        Fleet(mqtt_endpoint, topics, households=[hh], valve_faults={"GV-424242": ValveFaults(stuck=True)})
    with pytest.raises(ValueError, match="sim_id"):
        Fleet(mqtt_endpoint, topics, households=[hh], sim_id="a/b")


async def test_reopen_by_hand_is_reported(mqtt_endpoint: MqttEndpoint, topics: Topics, recorder: Recorder) -> None:
    (hh,) = make_households(1)
    async with Fleet(mqtt_endpoint, topics, households=[hh], telemetry_period_s=None, valve_close_s=0.0) as fleet:
        recorder.send_close(hh.valve_id)
        async with asyncio.timeout(5):
            await fleet.wait_valve_position(hh.valve_id, ValvePosition.CLOSED)
        assert fleet.idle_households() == []
        fleet.reopen_valve_by_hand(hh.valve_id)
        assert fleet.idle_households() == [hh]
        await recorder.wait_for(lambda: len(recorder.device(hh.valve_id, Channel.EVENT)) == 3)
    last = json.loads(recorder.device(hh.valve_id, Channel.EVENT)[-1])
    assert last["position"] == "open"
    assert "cmd_id" not in last
