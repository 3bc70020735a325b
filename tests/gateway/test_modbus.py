"""A Modbus controller alarm closes the valve through a register write and a read-back (real broker, DB)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from pathlib import Path

import asyncpg
import httpx
import pytest

from alerting.settings import AlertingSettings
from gasguard.protocol import AlarmState, Channel, CommandAck, CommandResult, Topics, ValveEvent, decode_event
from gateway.codecs import load_register_map
from gateway.identity import list_quarantine
from gateway.settings import GatewaySettings
from simulator.modbus_devices import SimulatedController
from tests.gateway.conftest import Bus, running_gateway, wait_for
from tests.support.rows import add_household
from tests.support.stack import alerting_running, alerting_settings_for


@pytest.fixture
def alerting_settings(
    database_url: str, mqtt_url: str, topic_root: str, sms_sandbox, tmp_path: Path
) -> AlertingSettings:
    return alerting_settings_for(
        database_url=database_url,
        mqtt_url=mqtt_url,
        topic_root=topic_root,
        sms=sms_sandbox,
        spool_dir=tmp_path / "spool",
        ack_timeout_s=2.0,
        default_close_confirm_timeout_s=10.0,
    )


async def wire_to_controller(db: asyncpg.Connection, alarm_id: str, valve_id: str, model: str, port: int) -> None:
    await db.execute(
        "INSERT INTO modbus_controller (id, register_map, transport, host, port, unit_id, poll_interval_s)"
        " VALUES ('MC-1', $1, 'tcp', '127.0.0.1', $2, 1, 0.1)",
        model,
        port,
    )
    await db.execute(
        "UPDATE device SET platform = 'modbus', modbus_controller = 'MC-1', modbus_channel = 2,"
        " modbus_point = CASE WHEN id = $1 THEN 'alarm' ELSE 'valve' END WHERE id IN ($1, $2)",
        alarm_id,
        valve_id,
    )


@pytest.mark.parametrize("model", ["GG-MC4", "GG-MC2L"])
async def test_controller_alarm_closes_valve_with_read_back(
    db: asyncpg.Connection,
    gateway_settings: GatewaySettings,
    alerting_settings: AlertingSettings,
    bus: Bus,
    topics: Topics,
    model: str,
) -> None:
    home = await add_household(db, 1)
    controller = SimulatedController(load_register_map(model), actuation_s=0.3)
    async with controller.serve_tcp() as port:
        await wire_to_controller(db, home.alarm_id, home.valve_id, model, port)
        async with alerting_running(alerting_settings, ready_timeout_s=15), running_gateway(gateway_settings):
            controller.set_channel(2, lel=32.5, state=AlarmState.HIGH_ALARM)

            async def closed_recorded() -> bool:
                return bool(await db.fetchval("SELECT count(*) FROM incident WHERE valve_closed_at IS NOT NULL"))

            await wait_for(closed_recorded, 15)

    valve = load_register_map(model).valve
    assert valve is not None
    out_address = load_register_map(model).address(valve.output, 2)
    assert (valve.output.table, out_address, valve.output.close_value) in controller.writes
    assert controller.valve_closed(2) and not controller.valve_closed(1)
    [event] = [decode_event(p) for p in bus.on(topics.device(home.alarm_id, Channel.EVENT))]
    assert event.state == "high_alarm" and event.lel == pytest.approx(32.5)
    [ack] = [CommandAck.model_validate_json(p) for p in bus.on(topics.device(home.valve_id, Channel.COMMAND_ACK))]
    [result] = [
        CommandResult.model_validate_json(p) for p in bus.on(topics.device(home.valve_id, Channel.COMMAND_RESULT))
    ]
    assert ack.accepted and result.ok and result.position == "closed" and result.cmd_id == ack.cmd_id
    valve_events = [ValveEvent.model_validate_json(p) for p in bus.on(topics.device(home.valve_id, Channel.EVENT))]
    assert [e.position for e in valve_events if e.cmd_id == ack.cmd_id] == ["closed"]
    command = await db.fetchrow("SELECT * FROM valve_command")
    assert command["state"] == "confirmed" and command["reported_position"] == "closed"


async def test_jammed_valve_reports_read_back_position_not_write_success(
    db: asyncpg.Connection,
    gateway_settings: GatewaySettings,
    alerting_settings: AlertingSettings,
    bus: Bus,
    topics: Topics,
) -> None:
    home = await add_household(db, 1)
    controller = SimulatedController(load_register_map("GG-MC4"))
    controller.jammed.add(2)
    async with controller.serve_tcp() as port:
        await wire_to_controller(db, home.alarm_id, home.valve_id, "GG-MC4", port)
        async with alerting_running(alerting_settings, ready_timeout_s=15), running_gateway(gateway_settings):
            controller.set_channel(2, lel=40.0, state=AlarmState.HIGH_ALARM)

            async def result_published() -> bool:
                return bool(bus.on(topics.device(home.valve_id, Channel.COMMAND_RESULT)))

            await wait_for(result_published, 15)
    assert controller.writes, "the close was written"
    result = CommandResult.model_validate_json(bus.on(topics.device(home.valve_id, Channel.COMMAND_RESULT))[0])
    assert not result.ok and result.position == "open"
    assert await db.fetchval("SELECT count(*) FROM incident WHERE valve_closed_at IS NOT NULL") == 0


async def test_silent_controller_goes_offline_once_and_recovers(
    db: asyncpg.Connection,
    gateway_settings: GatewaySettings,
    bus: Bus,
    topics: Topics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.modbus_poller")
    home = await add_household(db, 1)
    controller = SimulatedController(load_register_map("GG-MC4"))
    async with controller.serve_tcp() as port:
        await wire_to_controller(db, home.alarm_id, home.valve_id, "GG-MC4", port)
        async with running_gateway(gateway_settings) as gateway:
            poller = gateway.pollers["MC-1"]

            async def reachable() -> bool:
                return poller.reachable is True

            await wait_for(reachable)
            controller.stop_answering()

            async def unreachable() -> bool:
                return poller.reachable is False and poller.poll_errors >= 3

            await wait_for(unreachable)
            controller.resume_answering()
            await wait_for(reachable)
            await asyncio.sleep(0.3)
    statuses = list(bus.on(topics.device(home.alarm_id, Channel.AVAILABILITY)))
    online = [b'"online"' in s for s in statuses]
    assert online[0] and online[-1] and False in online, "online, offline while silent, online again"
    assert all(a != b for a, b in itertools.pairwise(online)), "published on transitions only"
    messages = [r.getMessage() for r in caplog.records if r.name == "gateway.modbus_poller"]
    # Several polls failed while silent, yet each outage is logged once (and recovery once).
    assert poller.poll_errors >= 3
    assert sum("unreachable" in m for m in messages) == online.count(False)
    assert sum(m.endswith("recovered") for m in messages) == online.count(False)


async def test_unwired_channel_alarm_is_quarantined_and_polls_are_metered(
    db: asyncpg.Connection, gateway_settings: GatewaySettings, bus: Bus, topics: Topics
) -> None:
    home = await add_household(db, 1)
    controller = SimulatedController(load_register_map("GG-MC4"))
    async with controller.serve_tcp() as port:
        await wire_to_controller(db, home.alarm_id, home.valve_id, "GG-MC4", port)
        async with running_gateway(gateway_settings), httpx.AsyncClient() as client:
            controller.set_channel(3, lel=50.0, state=AlarmState.HIGH_ALARM)

            async def quarantined() -> bool:
                return bool(await list_quarantine(db))

            await wait_for(quarantined)
            metrics = (await client.get(f"http://127.0.0.1:{gateway_settings.http_port}/metrics")).text
    [entry] = await list_quarantine(db)
    assert entry.source == "modbus" and entry.identity == "MC-1/3" and "high_alarm" in entry.reason
    assert not [t for t, _ in bus.messages if t.endswith("/event")], "an unwired channel is never published as a device"
    assert 'gg_gateway_modbus_polls_total{controller="MC-1"}' in metrics
    assert 'gg_gateway_modbus_reachable{controller="MC-1"} 1' in metrics
