"""Escalation, durable commands, device rules and two engines, on the real broker and database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import asyncpg

from alerting.service import Alerting
from alerting.settings import AlertingSettings
from gasguard import incidents
from gasguard.mqtt import MqttSession
from gasguard.protocol import AlarmState, Channel, Topics
from gasguard.settings import MqttEndpoint
from tests.alerting.test_service import alarm, publish_once, running, wait_for
from tests.support.rows import add_household, ensure_catalogue
from tests.support.stack import LoopbackValves

STEP_ROLES = ["operator_a", "operator_b", "supervisor"]


async def short_policy(db: asyncpg.Connection, *, step1_after_s: int, repeat_s: int | None = None) -> None:
    """Critical policy with a seconds-long second step (a test clock for escalation)."""
    await db.execute("DELETE FROM escalation_policy_step WHERE severity = 'critical' AND step > 0")
    await db.execute(
        "INSERT INTO escalation_policy_step (severity, step, after_s, roles, repeat_every_s)"
        " VALUES ('critical', 1, $1, $2, $3)",
        step1_after_s,
        STEP_ROLES,
        repeat_s,
    )


def contacts(settings: AlertingSettings) -> AlertingSettings:
    return settings.model_copy(update={"backup_operator_phones": ["13900000002"], "supervisor_phones": ["13900000003"]})


async def outbox(db: asyncpg.Connection, step_key: str) -> list[tuple[str, str]]:
    rows = await db.fetch(
        "SELECT recipient, template FROM notification_outbox WHERE step_key = $1 ORDER BY recipient", step_key
    )
    return [(r["recipient"], r["template"]) for r in rows]


async def test_unacknowledged_alarm_escalates_and_acknowledging_stops_it(
    db: asyncpg.Connection,
    settings: AlertingSettings,
    valves: LoopbackValves,
    topics: Topics,
    mqtt_endpoint: MqttEndpoint,
) -> None:
    await short_policy(db, step1_after_s=1, repeat_s=1)
    home = await add_household(db, 1, phone="13812345678")
    async with running(contacts(settings)):
        await publish_once(mqtt_endpoint, topics.device(home.alarm_id, Channel.EVENT), alarm())

        async def repeated() -> bool:
            return len(await outbox(db, "s1r1")) == 3

        await wait_for(repeated)
        incident_id = await db.fetchval("SELECT id FROM incident WHERE kind = 'gas_alarm'")
        await incidents.acknowledge(db, incident_id, actor="operator:zhang")
        fired = await db.fetchval("SELECT steps_fired FROM escalation WHERE incident_id = $1", incident_id)
        await asyncio.sleep(2.5)
        assert await db.fetchval("SELECT steps_fired FROM escalation WHERE incident_id = $1", incident_id) == fired
    assert await outbox(db, "") == [
        ("13812345678", "SMS_GG_ALARM_RESIDENT"),
        ("13900000001", "SMS_GG_ALARM_OPERATOR"),
    ]
    expected = [(p, "SMS_GG_ALARM_OPERATOR") for p in ("13900000001", "13900000002", "13900000003")]
    assert await outbox(db, "s1r0") == expected
    assert await outbox(db, "s1r1") == expected
    state = await incidents.get_incident(db, incident_id)
    assert state.state is incidents.IncidentState.ACKNOWLEDGED
    types = [e.type for e in await incidents.timeline(db, incident_id)]
    assert types.count("notified") == 1 and types[-1] == "acknowledged"


async def test_valve_never_reports_critical_incident_and_operator_escalation(
    db: asyncpg.Connection,
    settings: AlertingSettings,
    valves: LoopbackValves,
    topics: Topics,
    mqtt_endpoint: MqttEndpoint,
) -> None:
    await ensure_catalogue(db, close_confirm_timeout_s=1)
    await short_policy(db, step1_after_s=1)
    home = await add_household(db, 1)
    valves.silent.add(home.valve_id)
    async with running(contacts(settings)):
        await publish_once(mqtt_endpoint, topics.device(home.alarm_id, Channel.EVENT), alarm())

        async def escalated() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT count(*) FROM notification_outbox o JOIN incident i ON i.id = o.incident_id"
                    " WHERE i.kind = 'valve_not_closed' AND o.step_key = 's1r0'"
                )
            )

        await wait_for(escalated)
    critical = await db.fetchrow("SELECT * FROM incident WHERE kind = 'valve_not_closed'")
    assert critical["severity"] == "critical" and critical["state"] == "NOTIFIED"
    rows = await db.fetch(
        "SELECT recipient, template, step_key FROM notification_outbox WHERE incident_id = $1"
        " ORDER BY step_key, recipient",
        critical["id"],
    )
    assert [(r["recipient"], r["step_key"]) for r in rows] == [
        ("13900000001", ""),
        ("13900000001", "s1r0"),
        ("13900000002", "s1r0"),
        ("13900000003", "s1r0"),
    ]
    assert {r["template"] for r in rows} == {"SMS_GG_VALVE_NOT_CLOSED"}


async def test_self_test_never_dispatches_and_fault_opens_a_device_incident(
    db: asyncpg.Connection,
    settings: AlertingSettings,
    valves: LoopbackValves,
    topics: Topics,
    mqtt_endpoint: MqttEndpoint,
) -> None:
    home = await add_household(db, 1)
    async with running(settings) as service:
        topic = topics.device(home.alarm_id, Channel.EVENT)
        await publish_once(mqtt_endpoint, topic, alarm(AlarmState.SELF_TEST))
        await asyncio.sleep(0.3)
        await asyncio.wait_for(service.recorder.idle.wait(), 10)
        assert await db.fetchval("SELECT count(*) FROM incident") == 0
        assert await db.fetchval("SELECT count(*) FROM notification_outbox") == 0
        await publish_once(mqtt_endpoint, topic, alarm(AlarmState.FAULT, seq=2))

        async def fault_recorded() -> bool:
            return bool(await db.fetchval("SELECT count(*) FROM incident WHERE kind = 'device_fault'"))

        await wait_for(fault_recorded)
        await publish_once(mqtt_endpoint, topic, alarm(AlarmState.RECOVERED, seq=3))

        async def recovered() -> bool:
            return await db.fetchval("SELECT status FROM device_state WHERE device_id = $1", home.alarm_id) == "normal"

        await wait_for(recovered)
    assert valves.commands == []
    fault = await db.fetchrow("SELECT * FROM incident WHERE kind = 'device_fault'")
    assert fault["state"] != "CLOSED", "recovered never closes an incident"
    assert fault["device_id"] == home.alarm_id
    assert await db.fetchval("SELECT count(*) FROM notification_outbox WHERE recipient_role = 'resident'") == 0


async def test_unconfirmed_command_in_the_database_is_resent_after_a_restart(
    db: asyncpg.Connection, settings: AlertingSettings, valves: LoopbackValves
) -> None:
    home = await add_household(db, 1)
    cmd_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO valve_command (cmd_id, valve_id, command, reason, issued_at, expires_at, state)"
        " VALUES ($1, $2, 'close', 'gas_alarm', now() - interval '5 seconds', now() + interval '1 hour', 'sent')",
        cmd_id,
        home.valve_id,
    )
    async with running(settings):

        async def confirmed() -> bool:
            return await db.fetchval("SELECT state FROM valve_command WHERE cmd_id = $1", cmd_id) == "confirmed"

        await wait_for(confirmed)
    assert {c.cmd_id for _, c in valves.commands} == {cmd_id}


@contextlib.asynccontextmanager
async def engine(settings: AlertingSettings, name: str) -> AsyncIterator[Alerting]:
    tagged = settings.model_copy(
        update={"client_id": f"{settings.client_id}-{name}", "spool_dir": settings.spool_dir + name}
    )
    async with running(tagged) as service:
        yield service


async def test_two_engines_and_a_burst_of_duplicates_make_one_incident_and_one_sms_per_step(
    db: asyncpg.Connection,
    settings: AlertingSettings,
    valves: LoopbackValves,
    topics: Topics,
    mqtt_endpoint: MqttEndpoint,
) -> None:
    await short_policy(db, step1_after_s=1)
    home = await add_household(db, 1, phone="13812345678")
    burst = MqttSession(mqtt_endpoint, client_id=f"burst-{uuid.uuid4().hex[:8]}")
    base = contacts(settings)
    async with engine(base, "a") as first, engine(base, "b") as second, burst:
        assert first.engine is not None and second.engine is not None
        assert [first.engine.active, second.engine.active].count(True) == 1
        for seq in range(20):
            burst.publish(topics.device(home.alarm_id, Channel.EVENT), alarm(seq=seq), qos=1)

        async def step1_fired() -> bool:
            return len(await outbox(db, "s1r0")) == 3

        await wait_for(step1_fired)
        await asyncio.sleep(0.5)
    assert len(valves.commands) == 1
    assert await db.fetchval("SELECT count(*) FROM incident") == 1
    rows = await db.fetch("SELECT recipient, template, step_key FROM notification_outbox")
    keys = [(r["recipient"], r["template"], r["step_key"]) for r in rows]
    assert len(keys) == len(set(keys)) == 5  # resident + operator A at once; A, B and supervisor at step 1
    assert await db.fetchval("SELECT count(*) FROM incident_event WHERE type = 'escalation_step'") == 2


async def test_standby_takes_over_when_the_active_engine_stops(
    db: asyncpg.Connection,
    settings: AlertingSettings,
    valves: LoopbackValves,
    topics: Topics,
    mqtt_endpoint: MqttEndpoint,
) -> None:
    home = await add_household(db, 1)
    async with contextlib.AsyncExitStack() as stack:
        active = await stack.enter_async_context(engine(settings, "a"))
        async with engine(settings, "b") as standby:
            assert active.engine is not None and standby.engine is not None
            assert active.engine.active and not standby.engine.active
            await stack.aclose()  # the active engine goes away

            async def took_over() -> bool:
                assert standby.engine is not None
                return standby.engine.active

            await wait_for(took_over)
            await publish_once(mqtt_endpoint, topics.device(home.alarm_id, Channel.EVENT), alarm())

            async def closed() -> bool:
                return bool(await db.fetchval("SELECT count(*) FROM incident WHERE valve_closed_at IS NOT NULL"))

            await wait_for(closed)
    assert len(valves.commands) == 1


def _subprocess_env(settings: AlertingSettings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "GG_DATABASE_URL": settings.dsn(),
            "GG_MQTT_URL": settings.mqtt_url or "",
            "GG_TOPIC_ROOT": settings.topic_root,
            "GG_CLIENT_ID": settings.client_id,
            "GG_SPOOL_DIR": settings.spool_dir,
            "GG_SMS_ENDPOINT": settings.sms_endpoint,
            "GG_SMS_ACCESS_KEY_ID": settings.sms_access_key_id,
            "GG_SMS_ACCESS_KEY_SECRET": settings.sms_access_key_secret.get_secret_value(),
            "GG_DUTY_OPERATOR_PHONES": '["13900000001"]',
            "GG_BACKUP_OPERATOR_PHONES": '["13900000002"]',
            "GG_SUPERVISOR_PHONES": '["13900000003"]',
            "GG_ESCALATION_POLL_S": "0.2",
        }
    )
    return env


async def _start(settings: AlertingSettings) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: ASYNC220 - a child process we SIGKILL on purpose
        [sys.executable, "-m", "alerting"],
        env=_subprocess_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def test_kill_9_mid_escalation_fires_the_step_after_restart_exactly_once(
    db: asyncpg.Connection,
    settings: AlertingSettings,
    valves: LoopbackValves,
    topics: Topics,
    mqtt_endpoint: MqttEndpoint,
) -> None:
    await short_policy(db, step1_after_s=3)
    home = await add_household(db, 1)
    process = await _start(settings)
    try:

        async def leading() -> bool:
            # pg_locks is server-wide: other tests' engines hold the same lock key in their own databases.
            return bool(
                await db.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            )

        await wait_for(leading, 30)
        await publish_once(mqtt_endpoint, topics.device(home.alarm_id, Channel.EVENT), alarm())

        async def first_step() -> bool:
            return await db.fetchval("SELECT steps_fired FROM escalation") == 1

        # Generous: a loaded CI machine starts the subprocess slowly; this waits, it does not time anything.
        await wait_for(first_step, 30)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        await asyncio.sleep(3.5)
        assert await outbox(db, "s1r0") == [], "nothing fires while no engine runs"
        process = await _start(settings)

        async def second_step() -> bool:
            return len(await outbox(db, "s1r0")) == 3

        await wait_for(second_step, 30)
        await asyncio.sleep(1.0)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
    assert await outbox(db, "s1r0") == [
        (p, "SMS_GG_ALARM_OPERATOR") for p in ("13900000001", "13900000002", "13900000003")
    ]
    assert await db.fetchval("SELECT count(*) FROM incident_event WHERE type = 'escalation_step'") == 2
    assert await db.fetchval("SELECT steps_fired FROM escalation") == 2
