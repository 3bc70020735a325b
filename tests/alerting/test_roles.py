"""The alerting service split in two: the ``engine`` (alarm path) and ``notify`` (database-driven) roles."""

from __future__ import annotations

import asyncio

import asyncpg

from alerting.settings import AlertingSettings
from gasguard.protocol import Channel, Topics
from tests.alerting.test_service import alarm, publish_once, running, wait_for
from tests.support.rows import add_household
from tests.support.stack import LoopbackValves


async def test_engine_closes_and_records_and_notify_sends_the_texts(
    db: asyncpg.Connection,
    settings: AlertingSettings,
    valves: LoopbackValves,
    topics: Topics,
    mqtt_endpoint,
    sms_sandbox,
) -> None:
    home = await add_household(db, 1, phone="13812345678")
    engine_settings = settings.model_copy(update={"role": "engine"})
    notify_settings = settings.model_copy(update={"role": "notify", "client_id": f"{settings.client_id}-notify"})

    async with running(engine_settings) as engine:
        assert engine.notifier is None, "the engine role sends nothing itself"
        await publish_once(mqtt_endpoint, topics.device(home.alarm_id, Channel.EVENT), alarm())

        async def closed_and_queued() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT count(*) FROM incident i JOIN notification_outbox o ON o.incident_id = i.id"
                    " WHERE i.household_id = $1 AND i.valve_closed_at IS NOT NULL AND o.recipient_role = 'resident'",
                    home.id,
                )
            )

        await wait_for(closed_and_queued)
        # With the notify parts in the same process the text is sent within about a second (the test above
        # this one in test_service.py); here nobody sends it and no escalation step runs.
        await asyncio.sleep(2.0)
        assert await db.fetchval("SELECT status FROM notification_outbox WHERE recipient_role = 'resident'") == (
            "pending"
        )
        assert await db.fetchval("SELECT state FROM incident WHERE household_id = $1", home.id) == "NEW"
        assert sms_sandbox.platform.received == []

        async with running(notify_settings) as notify:
            assert notify.engine is None and notify.session is None, "the notify role has no MQTT alarm path"

            async def sent_and_notified() -> bool:
                status = await db.fetchval("SELECT status FROM notification_outbox WHERE recipient_role = 'resident'")
                state = await db.fetchval("SELECT state FROM incident WHERE household_id = $1", home.id)
                return status == "sent" and state == "NOTIFIED"

            await wait_for(sent_and_notified, timeout=60)

    assert [v for v, _ in valves.commands] == [home.valve_id]
    [sms] = [m for m in sms_sandbox.platform.received if m.phone == "13812345678"]
    assert sms.params["valve"] == "已关闭"
    steps = await db.fetchval(
        "SELECT count(*) FROM incident_event e JOIN incident i ON i.id = e.incident_id"
        " WHERE i.household_id = $1 AND e.type = 'escalation_step'",
        home.id,
    )
    assert steps >= 1
