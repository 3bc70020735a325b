"""The alerting service against the real broker and database: alarm -> close -> confirm -> incident -> SMS."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from alerting.service import Alerting
from alerting.settings import AlertingSettings
from gasguard.mqtt import MqttSession
from gasguard.protocol import AlarmEvent, AlarmState, Channel, Topics, encode
from gasguard.settings import MqttEndpoint
from tests.support.rows import add_household, ensure_catalogue
from tests.support.stack import LoopbackValves, alerting_running, alerting_settings_for, loopback_valves
from tests.support.stack import wait_for as stack_wait_for


@pytest.fixture
async def valves(mqtt_endpoint: MqttEndpoint, topics: Topics) -> AsyncIterator[LoopbackValves]:
    async with loopback_valves(mqtt_endpoint, topics, closing_s=0.05) as loopback:
        yield loopback


@pytest.fixture
def settings(database_url: str, mqtt_url: str, topic_root: str, sms_sandbox, tmp_path: Path) -> AlertingSettings:
    return alerting_settings_for(
        database_url=database_url,
        mqtt_url=mqtt_url,
        topic_root=topic_root,
        sms=sms_sandbox,
        spool_dir=tmp_path / "spool",
        ack_timeout_s=0.5,
        default_close_confirm_timeout_s=2.0,
        duty_operator_phones=["13900000001"],
    )


def running(settings: AlertingSettings) -> contextlib.AbstractAsyncContextManager[Alerting]:
    return alerting_running(settings, ready_timeout_s=15)


async def wait_for(predicate, timeout: float = 10.0) -> None:
    await stack_wait_for(predicate, timeout)


def alarm(state: AlarmState = AlarmState.HIGH_ALARM, seq: int = 1) -> bytes:
    return encode(AlarmEvent(seq=seq, ts=datetime.now(UTC), state=state, lel=32.5))


async def publish_once(endpoint: MqttEndpoint, topic: str, payload: bytes) -> None:
    async with MqttSession(endpoint, client_id=f"pub-{uuid.uuid4().hex[:8]}") as session:
        session.publish(topic, payload, qos=1)
        await asyncio.sleep(0.1)


async def test_alarm_closes_only_its_valve_and_texts_the_resident(
    db: asyncpg.Connection, settings, valves: LoopbackValves, topics: Topics, mqtt_endpoint, sms_sandbox
) -> None:
    home = await add_household(db, 1, phone="13812345678")
    neighbour = await add_household(db, 2)
    async with running(settings):
        await publish_once(mqtt_endpoint, topics.device(home.alarm_id, Channel.EVENT), alarm())

        async def incident_complete() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT count(*) FROM incident WHERE valve_closed_at IS NOT NULL AND household_id = $1", home.id
                )
            )

        await wait_for(incident_complete)

        async def sms_sent_and_notified() -> bool:
            sms = await db.fetchval("SELECT status FROM notification_outbox WHERE recipient_role = 'resident'")
            # The escalator marks the incident NOTIFIED on its own loop, not with the text.
            state = await db.fetchval("SELECT state FROM incident WHERE household_id = $1", home.id)
            return sms == "sent" and state == "NOTIFIED"

        await wait_for(sms_sent_and_notified, timeout=60)

    assert [v for v, _ in valves.commands] == [home.valve_id]
    assert all(c.command == "close" for _, c in valves.commands)
    row = await db.fetchrow("SELECT * FROM incident WHERE household_id = $1", home.id)
    assert row["kind"] == "gas_alarm" and row["severity"] == "critical" and row["state"] == "NOTIFIED"
    assert row["alarm_received_at"] <= row["command_sent_at"] <= row["valve_closed_at"]
    assert await db.fetchval("SELECT count(*) FROM incident WHERE household_id = $1", neighbour.id) == 0
    command = await db.fetchrow("SELECT * FROM valve_command WHERE valve_id = $1", home.valve_id)
    assert command["state"] == "confirmed" and command["reported_position"] == "closed"
    timeline = [r["type"] for r in await db.fetch("SELECT type FROM incident_event ORDER BY id")]
    assert [t for t in timeline if t not in ("escalation_step", "notified")] == [
        "opened",
        "valve_command_sent",
        "valve_closed",
    ]
    assert "escalation_step" in timeline, "the first escalation step goes out at once"
    [sms] = [m for m in sms_sandbox.platform.received if m.phone == "13812345678"]
    assert sms.phone == "13812345678"
    assert sms.template_code == "SMS_GG_ALARM_RESIDENT"
    assert sms.params["valve"] == "已关闭"
    assert set(sms.params) == {"time", "valve", "hotline"}
    assert "切断阀已关闭" in sms.text and len(sms.text) <= 70
    outbox = await db.fetchrow("SELECT * FROM notification_outbox WHERE recipient_role = 'resident'")
    assert outbox["status"] == "sent" and outbox["provider_msg_id"] == sms.biz_id


async def test_repeated_alarms_make_one_command_one_incident_one_sms(
    db: asyncpg.Connection, settings, valves: LoopbackValves, topics: Topics, mqtt_endpoint, sms_sandbox
) -> None:
    home = await add_household(db, 1)
    burst = MqttSession(mqtt_endpoint, client_id=f"burst-{uuid.uuid4().hex[:8]}")
    async with running(settings) as service, burst:
        for seq in range(20):
            burst.publish(topics.device(home.alarm_id, Channel.EVENT), alarm(seq=seq), qos=1)

        async def all_handled() -> bool:
            assert service.engine is not None
            resident = [m for m in sms_sandbox.platform.received if m.template_code == "SMS_GG_ALARM_RESIDENT"]
            return service.engine.alarms_handled == 20 and len(resident) == 1

        await wait_for(all_handled)
        await asyncio.wait_for(service.recorder.idle.wait(), 10)
    assert len(valves.commands) == 1
    assert await db.fetchval("SELECT count(*) FROM incident") == 1
    assert await db.fetchval("SELECT count(*) FROM incident_event WHERE type = 'repeat_alarm'") == 19
    assert [m.template_code for m in sms_sandbox.platform.received].count("SMS_GG_ALARM_RESIDENT") == 1


async def test_self_test_and_recovery_close_nothing(
    db: asyncpg.Connection, settings, valves: LoopbackValves, topics: Topics, mqtt_endpoint
) -> None:
    home = await add_household(db, 1)
    async with running(settings) as service:
        await publish_once(mqtt_endpoint, topics.device(home.alarm_id, Channel.EVENT), alarm(AlarmState.SELF_TEST))
        await publish_once(mqtt_endpoint, topics.device(home.alarm_id, Channel.EVENT), alarm(AlarmState.RECOVERED))
        await asyncio.sleep(0.5)
        await asyncio.wait_for(service.recorder.idle.wait(), 10)
    assert valves.commands == []
    assert await db.fetchval("SELECT count(*) FROM incident") == 0


async def test_silent_valve_is_resent_then_escalated_critical(
    db: asyncpg.Connection, settings, valves: LoopbackValves, topics: Topics, mqtt_endpoint, sms_sandbox
) -> None:
    await ensure_catalogue(db, close_confirm_timeout_s=2)
    home = await add_household(db, 1)
    valves.silent.add(home.valve_id)
    async with running(settings):
        await publish_once(mqtt_endpoint, topics.device(home.alarm_id, Channel.EVENT), alarm())

        async def escalated() -> bool:
            return any(m.template_code == "SMS_GG_VALVE_NOT_CLOSED" for m in sms_sandbox.platform.received)

        await wait_for(escalated)
    assert len(valves.commands) >= 2, "an unacknowledged close must be re-sent"
    assert len({c.cmd_id for _, c in valves.commands}) == 1, "re-sends carry the same command id"
    critical = await db.fetchrow("SELECT * FROM incident WHERE kind = 'valve_not_closed'")
    assert critical["severity"] == "critical" and critical["household_id"] == home.id
    gas = await db.fetchrow("SELECT * FROM incident WHERE kind = 'gas_alarm'")
    assert gas["valve_closed_at"] is None
    [operator_sms] = [m for m in sms_sandbox.platform.received if m.template_code == "SMS_GG_VALVE_NOT_CLOSED"]
    assert operator_sms.phone == "13900000001"
    [resident_sms] = [m for m in sms_sandbox.platform.received if m.template_code == "SMS_GG_ALARM_RESIDENT"]
    assert resident_sms.params["valve"] == "未确认关闭", "without the valve's report the text must not claim closed"


async def test_malformed_command_ack_is_a_dead_letter(
    db: asyncpg.Connection, settings, valves: LoopbackValves, topics: Topics, mqtt_endpoint
) -> None:
    await add_household(db, 1)
    async with running(settings) as service:
        await publish_once(mqtt_endpoint, topics.device("V-1", Channel.COMMAND_ACK), b'{"cmd_id": "nope"}')

        async def dead_lettered() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM dead_letter"))

        await wait_for(dead_lettered)
        assert service.recorder.pending == 0
    row = await db.fetchrow("SELECT * FROM dead_letter")
    assert row["source"] == "alerting" and row["device_id"] == "V-1"
    assert "malformed command ack" in row["reason"]
