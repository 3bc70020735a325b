"""The watchdog: the 'alerting is behind' system alarm, its all-clear, and the text during a database outage.

The rules are pure (`judge`, `settle`); the rest runs against the real PostgreSQL, the real broker and a
provider sandbox served over real HTTP on loopback.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import asyncpg
import httpx
import pytest

from alerting import notifier
from alerting.notifier import NotificationSettings
from alerting.providers.aliyun import AliyunSmsProvider
from alerting.settings import AlertingSettings
from alerting.templates import ALERTING_BEHIND_OPERATOR, ALERTING_DB_DOWN_OPERATOR, EMERGENCY_WEBHOOK, SMS_MAX_CHARS
from alerting.watchdog import (
    AllClear,
    Policy,
    RaiseBehind,
    Signals,
    TextOutage,
    Watchdog,
    WatchState,
    behind_params,
    judge,
    raise_behind,
    settle,
    system_scope,
)
from gasguard import incidents
from gasguard.protocol import Channel
from tests.alerting.test_providers import KEY_ID, KEY_SECRET, WEBHOOK_SECRET
from tests.conftest import free_port
from tests.support.rows import add_household
from tests.support.stack import alerting_running, alerting_settings_for, wait_for

POLICY = Policy(behind_alarm_s=30.0, recovered_after_s=60.0)
OPERATORS = ["13900000001", "13900000002"]
SIGN = "乌审中燃"


def signals(now: float, *, inbound: float = 0.0, recorder: float = 0.0, outage: bool = False, active: bool = True):
    return Signals(
        now=now,
        engine_active=active,
        caught_up_to=now - inbound,
        recorder_lag_s=recorder,
        recorder_pending=7 if recorder else 0,
        commands_inflight=3,
        db_outage=outage,
    )


def run(state: WatchState, *readings: Signals, done: bool = True) -> tuple[WatchState, list[list[object]]]:
    """Judge each reading in turn; with ``done`` every action succeeds (is settled), else none does."""
    seen: list[list[object]] = []
    for reading in readings:
        state, actions = judge(state, reading, POLICY)
        seen.append(list(actions))
        if done:
            for action in actions:
                state = settle(state, action)
    return state, seen


# The rules (pure)


def test_nothing_to_do_while_caught_up() -> None:
    state, seen = run(WatchState(), signals(100, inbound=0.2, recorder=1.0), signals(101, inbound=30.0, recorder=30.0))
    assert seen == [[], []] and state == WatchState()


def test_inbound_lag_of_the_active_engine_raises_once() -> None:
    state, seen = run(WatchState(), signals(100, inbound=31), signals(101, inbound=32), signals(102, inbound=200))
    [raised] = seen[0]
    assert isinstance(raised, RaiseBehind)
    assert (raised.inbound_lag_s, raised.recorder_lag_s, raised.commands_inflight) == (31, 0, 3)
    assert seen[1:] == [[], []]  # still behind: nothing new
    assert state.episode is not None and state.episode.raised and state.episode.worst_inbound_s == 200


def test_a_standby_engines_inbound_queue_is_not_judged() -> None:
    _, seen = run(WatchState(), signals(100, inbound=500, active=False))
    assert seen == [[]]


def test_recorder_lag_raises_too() -> None:
    _, seen = run(WatchState(), signals(100, recorder=45))
    [[raised]] = seen
    assert isinstance(raised, RaiseBehind) and raised.recorder_lag_s == 45 and raised.recorder_pending == 7


def test_a_failed_raise_is_tried_again() -> None:
    state, seen = run(WatchState(), signals(100, recorder=45), signals(101, recorder=46), done=False)
    assert [type(a) for a in seen[0]] == [RaiseBehind] and [type(a) for a in seen[1]] == [RaiseBehind]
    assert seen[1][0].started_s_ago == 1  # the same episode, started at the first reading
    state, seen = run(state, signals(102, recorder=47), signals(103, recorder=48))
    assert [type(a) for a in seen[0]] == [RaiseBehind] and seen[1] == []


def test_caught_up_only_after_the_recovery_time_and_once() -> None:
    state, _ = run(WatchState(), signals(100, inbound=40), signals(130, inbound=90))
    state, seen = run(state, signals(140, inbound=1), signals(199, inbound=1), signals(200, inbound=1))
    assert seen[:2] == [[], []]
    [[cleared]] = seen[2:]
    assert cleared == AllClear(behind_s=40, worst_inbound_s=90, worst_recorder_s=0)
    state, seen = run(state, signals(201), signals(300))
    assert seen == [[], []] and state == WatchState()


def test_falling_behind_again_within_the_recovery_time_is_the_same_episode() -> None:
    state, _ = run(WatchState(), signals(100, recorder=40))
    state, seen = run(state, signals(120, recorder=0), signals(170, recorder=35), signals(200, recorder=0))
    assert seen == [[], [], []]
    state, seen = run(state, signals(259), signals(260))
    assert seen[0] == [] and seen[1] == [AllClear(behind_s=100, worst_inbound_s=0, worst_recorder_s=40)]


def test_an_all_clear_that_failed_is_written_before_the_next_raise() -> None:
    state, _ = run(WatchState(), signals(100, recorder=40))
    state, _ = run(state, signals(110), signals(170), done=False)
    assert state.all_clear_due is not None
    _, seen = run(state, signals(171, recorder=50), done=False)
    assert [type(a) for a in seen[0]] == [AllClear, RaiseBehind]


def test_an_episode_never_raised_needs_no_all_clear() -> None:
    state, _ = run(WatchState(), signals(100, recorder=40), done=False)
    state, seen = run(state, signals(101), signals(161), done=False)
    assert seen == [[], []] and state == WatchState()


def test_database_outage_texts_once_and_writes_nothing() -> None:
    state, seen = run(
        WatchState(),
        signals(100, recorder=5, outage=True),
        signals(130, recorder=35, outage=True),  # behind, but the database cannot take the incident
        signals(131, recorder=36, outage=True),
        signals(140, recorder=45, outage=True),
    )
    assert seen[:2] == [[], []]
    assert seen[2] == [TextOutage(outage_s=31)]
    assert seen[3] == []
    # The database is back with the recorder still behind: now the incident is written.
    state, seen = run(state, signals(141, recorder=46))
    assert [type(a) for a in seen[0]] == [RaiseBehind]
    # A second outage gets its own text.
    state, seen = run(state, signals(200, outage=True), signals(231, outage=True))
    assert seen == [[], [TextOutage(outage_s=31)]]


def test_outage_text_is_retried_until_sent() -> None:
    state, seen = run(WatchState(), signals(100, outage=True), signals(131, outage=True), done=False)
    state, seen2 = run(state, signals(132, outage=True))
    assert seen[1] == [TextOutage(outage_s=31)] and seen2 == [[TextOutage(outage_s=32)]]
    assert state.outage_texted


@pytest.mark.parametrize(
    ("inbound", "recorder", "part", "effect", "lag"),
    [
        (31.4, 0, "报警接收", "关阀和短信", "31"),
        (0, 326.0, "事件入库", "事件和短信", "326"),
        (45, 600.0, "接收和入库", "关阀和短信", "600"),
        (0, 1e9, "事件入库", "事件和短信", "99999"),
    ],
)
def test_operator_text_says_what_lags_and_fits_one_sms(inbound, recorder, part, effect, lag) -> None:
    from datetime import UTC, datetime

    action = RaiseBehind(
        started_s_ago=0,
        inbound_lag_s=inbound,
        recorder_lag_s=recorder,
        recorder_pending=1,
        commands_inflight=0,
        engine_active=True,
    )
    params = behind_params(action, since=datetime(2026, 11, 29, 6, 5, tzinfo=UTC), policy=POLICY)
    assert params == {"part": part, "lag": lag, "time": "11-29 14:05", "effect": effect}
    text = ALERTING_BEHIND_OPERATOR.render(params, sign_name=SIGN)
    assert len(text) <= SMS_MAX_CHARS and part in text and f"{lag}秒" in text


# The incident, its texts and its all-clear (real PostgreSQL)


@dataclass
class Readings:
    """Signals the test controls, read by the watchdog as it reads the service's."""

    now: float = 1000.0
    inbound: float = 0.0
    recorder: float = 0.0
    outage: bool = False
    reads: list[Signals] = field(default_factory=list)

    def __call__(self) -> Signals:
        reading = signals(self.now, inbound=self.inbound, recorder=self.recorder, outage=self.outage)
        self.reads.append(reading)
        return reading


def watchdog_settings(database_url: str, **overrides) -> AlertingSettings:
    values = {
        "database_url": database_url,
        "client_id": f"alerting-{uuid.uuid4().hex[:8]}",
        "duty_operator_phones": OPERATORS,
        "emergency_webhook_url": "http://127.0.0.1:9/emergency/events",
        **overrides,
    }
    return AlertingSettings(**values)


async def system_incidents(db: asyncpg.Connection, scope: str) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM incident WHERE kind = 'alerting_behind' AND scope = $1 ORDER BY id", scope)


async def timeline(db: asyncpg.Connection, incident_id: int) -> list[tuple[str, dict]]:
    rows = await db.fetch("SELECT type, detail FROM incident_event WHERE incident_id = $1 ORDER BY id", incident_id)
    return [(r["type"], r["detail"]) for r in rows]


async def jobs(db: asyncpg.Connection, incident_id: int) -> list[tuple[str, str, str, str, str]]:
    rows = await db.fetch(
        "SELECT channel, recipient, recipient_role, template, step_key FROM notification_outbox"
        " WHERE incident_id = $1 ORDER BY id",
        incident_id,
    )
    return [tuple(r) for r in rows]


async def test_behind_opens_one_system_incident_with_operator_texts_and_the_em_webhook(
    db: asyncpg.Connection, database_url: str
) -> None:
    settings = watchdog_settings(database_url)
    scope = system_scope(settings.client_id)
    readings = Readings(recorder=326.0)
    dog = Watchdog(settings, read=readings)
    await dog.check()
    [incident] = await system_incidents(db, scope)
    assert incident["household_id"] is None and incident["severity"] == "critical"
    assert incident["state"] == "NOTIFIED" and incident["scope"] == f"system:alerting:{settings.client_id}"
    entries = await timeline(db, incident["id"])
    assert [t for t, _ in entries] == ["opened", "notified"]
    opened = entries[0][1]
    assert (opened["recorder_lag_s"], opened["recorder_pending"], opened["inbound_lag_s"]) == (326.0, 7, 0.0)
    assert opened["commands_inflight"] == 3 and opened["episode"] == 1
    assert sorted(await jobs(db, incident["id"])) == sorted(
        [
            ("sms", OPERATORS[0], "operator", ALERTING_BEHIND_OPERATOR.code, ""),
            ("sms", OPERATORS[1], "operator", ALERTING_BEHIND_OPERATOR.code, ""),
            ("webhook", settings.emergency_webhook_url, "emergency", EMERGENCY_WEBHOOK, ""),
        ]
    )
    params = await db.fetchval(
        "SELECT params FROM notification_outbox WHERE incident_id = $1 AND recipient = $2", incident["id"], OPERATORS[0]
    )
    assert params["part"] == "事件入库" and params["lag"] == "326"

    # Judged behind again, by this watchdog and by a fresh one (a restart): still one incident, no new text.
    readings.now += 1
    readings.recorder = 400.0
    await dog.check()
    restarted = Watchdog(settings, read=readings)
    await restarted.check()
    await restarted.check()
    assert len(await system_incidents(db, scope)) == 1
    assert len(await jobs(db, incident["id"])) == 3
    assert [t for t, _ in await timeline(db, incident["id"])] == ["opened", "notified"]
    assert dog.raised == 1 and restarted.raised == 0
    # The database itself refuses a second record of the same episode.
    again = judge(WatchState(), signals(readings.now, recorder=500), POLICY)[1][0]
    assert isinstance(again, RaiseBehind)
    result = await raise_behind(
        db,
        scope=scope,
        action=again,
        since=incident["alarm_received_at"],
        contacts=dog_contacts(settings),
        policy=POLICY,
    )
    assert result == (incident["id"], False)
    assert len(await jobs(db, incident["id"])) == 3


async def test_two_writers_racing_still_make_one_incident(db: asyncpg.Connection, database_url: str) -> None:
    settings = watchdog_settings(database_url)
    scope = system_scope(settings.client_id)
    action = judge(WatchState(), signals(10, inbound=60), POLICY)[1][0]
    assert isinstance(action, RaiseBehind)
    from datetime import UTC, datetime

    from gasguard.db import connect

    conns = [await connect(database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(
            *(
                raise_behind(
                    c,
                    scope=scope,
                    action=action,
                    since=datetime.now(UTC),
                    contacts=dog_contacts(settings),
                    policy=POLICY,
                )
                for c in conns
            )
        )
    finally:
        for c in conns:
            await c.close()
    [incident] = await system_incidents(db, scope)
    assert [written for _, written in results].count(True) == 1
    assert {incident_id for incident_id, _ in results} == {incident["id"]}
    assert len(await jobs(db, incident["id"])) == 3


def dog_contacts(settings: AlertingSettings):
    from alerting.watchdog import Contacts

    return Contacts(
        operator_phones=tuple(settings.duty_operator_phones), emergency_webhook=settings.emergency_webhook_url
    )


async def test_caught_up_goes_on_the_timeline_and_operators_close_it_without_an_on_site_record(
    db: asyncpg.Connection, database_url: str
) -> None:
    settings = watchdog_settings(database_url, behind_recovered_s=60.0)
    scope = system_scope(settings.client_id)
    readings = Readings(inbound=45.0)
    dog = Watchdog(settings, read=readings)
    await dog.check()
    readings.now += 20
    readings.inbound = 0.1
    await dog.check()  # caught up 20 s after it was first judged behind ...
    readings.now += 59
    await dog.check()
    [incident] = await system_incidents(db, scope)
    assert [t for t, _ in await timeline(db, incident["id"])] == ["opened", "notified"]
    readings.now += 1
    await dog.check()  # ... and has stayed so for 60 s
    await dog.check()
    entries = await timeline(db, incident["id"])
    assert [t for t, _ in entries] == ["opened", "notified", "caught_up"]
    caught_up = entries[-1][1]
    assert caught_up["behind_s"] == 20.0 and caught_up["worst_inbound_lag_s"] == 45.0
    assert caught_up["note"].startswith("已追上")
    assert dog.cleared == 1

    # Falling behind again on the still-open incident: a new episode, texted again under its own key.
    readings.now += 5
    readings.inbound = 31.0
    await dog.check()
    await dog.check()
    assert [t for t, _ in await timeline(db, incident["id"])] == ["opened", "notified", "caught_up", "behind"]
    assert sorted(k for *_, k in await jobs(db, incident["id"])) == ["", "", "", "behind2", "behind2", "behind2"]

    # No valve belongs to a system incident, so the usual close needs no on-site record.
    await incidents.acknowledge(db, incident["id"], actor="user:zhiban", note="已知悉，盯看监控")
    closed = await incidents.close(
        db, incident["id"], actor="user:zhiban", disposition=incidents.Disposition.DEVICE_FAULT, note="风暴积压"
    )
    assert closed.state is incidents.IncidentState.CLOSED

    # Still behind after it was closed: nothing new until the all-clear, which still goes on its record.
    readings.now += 1
    await dog.check()
    assert len(await system_incidents(db, scope)) == 1
    readings.inbound = 0.0
    readings.now += 1
    await dog.check()
    readings.now += 60
    await dog.check()
    assert [t for t, _ in await timeline(db, incident["id"])][-1] == "caught_up"

    # Behind once more: a new incident, since the last one is closed.
    readings.now += 1
    readings.recorder = 31.0
    await dog.check()
    assert [r["state"] for r in await system_incidents(db, scope)] == ["CLOSED", "NOTIFIED"]


async def test_a_restart_while_behind_still_writes_the_all_clear(db: asyncpg.Connection, database_url: str) -> None:
    settings = watchdog_settings(database_url, behind_recovered_s=0.0)
    scope = system_scope(settings.client_id)
    before = Readings(recorder=90.0)
    await Watchdog(settings, read=before).check()
    after = Watchdog(settings, read=Readings(recorder=0.0))  # the restarted process has caught up
    await after.check()
    [incident] = await system_incidents(db, scope)
    assert [t for t, _ in await timeline(db, incident["id"])][-1] == "caught_up"


async def test_the_queued_texts_go_out_through_the_providers(db: asyncpg.Connection, database_url: str, full_sandbox):
    settings = watchdog_settings(
        database_url,
        sms_endpoint=full_sandbox.aliyun_url,
        sms_access_key_id=KEY_ID,
        sms_access_key_secret=KEY_SECRET,
        emergency_webhook_url=full_sandbox.webhook_url,
    )
    await Watchdog(settings, read=Readings(inbound=75.0)).check()
    async with httpx.AsyncClient() as http:
        sender = notifier.build(settings, http, NotificationSettings(webhook_secret=WEBHOOK_SECRET))
        assert await sender.send_due(db) == 3
    texts = sorted(full_sandbox.platform.received, key=lambda m: m.phone)
    assert [m.phone for m in texts] == OPERATORS
    assert all(m.template_code == ALERTING_BEHIND_OPERATOR.code for m in texts)
    assert texts[0].text.startswith("【乌审中燃】系统告警：燃气报警服务报警接收已滞后75秒")
    assert len(texts[0].text) <= SMS_MAX_CHARS
    [event] = full_sandbox.platform.webhooks
    assert event.body["template"] == EMERGENCY_WEBHOOK and event.body["params"]["kind"] == "alerting_behind"


# The database outage: one text straight through the SMS provider


async def test_database_outage_texts_the_operators_once_through_the_provider(sms_sandbox) -> None:
    # The database really is unreachable: nothing listens on this port.
    settings = watchdog_settings(f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere")
    readings = Readings(outage=True, recorder=5.0)
    async with httpx.AsyncClient() as http:
        provider = AliyunSmsProvider(
            endpoint=sms_sandbox.url,
            access_key_id=sms_sandbox.key_id,
            access_key_secret=sms_sandbox.key_secret,
            sign_name=settings.sms_sign_name,
            client=http,
        )
        dog = Watchdog(settings, read=readings, sms=provider)
        for step in (0, 30, 1, 1, 60):
            readings.now += step
            readings.recorder += step
            await dog.check()
        received = sms_sandbox.platform.received
        assert sorted(m.phone for m in received) == OPERATORS
        assert all(m.template_code == ALERTING_DB_DOWN_OPERATOR.code for m in received)
        assert "数据库中断已31秒" in received[0].text and len(received[0].text) <= SMS_MAX_CHARS
        assert dog.outage_texts == 2

        # The provider is down at first during the next outage: retried later, each operator texted once.
        readings.outage = False
        readings.recorder = 0.0
        readings.now += 1
        await dog.check()
        readings.outage = True
        sms_sandbox.platform.unavailable_for = 1
        for step in (1, 31, 1, 29, 1, 1, 40):
            readings.now += step
            await dog.check()
        phones = [m.phone for m in received]
        assert sorted(phones) == sorted(OPERATORS * 2)


async def test_an_unreachable_database_is_not_hammered(caplog) -> None:
    # The recorder has not noticed (nothing to write), but the watchdog's own writes fail: it backs off.
    settings = watchdog_settings(f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere")
    readings = Readings(inbound=45.0)
    dog = Watchdog(settings, read=readings)
    for _ in range(5):
        readings.now += 1
        await dog.check()
    attempts = [r for r in caplog.records if "database unreachable" in r.getMessage()]
    assert len(attempts) == 1
    assert dog.state.episode is not None and not dog.state.episode.raised


# The service: the watchdog on its own connection while the recorder is stuck


async def test_service_raises_while_its_recorder_is_stuck_and_clears_after(
    db: asyncpg.Connection, database_url: str, mqtt_url: str, topic_root: str, topics, sms_sandbox, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    from gasguard.mqtt import MqttSession
    from gasguard.protocol import AlarmEvent, AlarmState, encode

    home = await add_household(db, 1)
    settings = alerting_settings_for(
        database_url=database_url,
        mqtt_url=mqtt_url,
        topic_root=topic_root,
        sms=sms_sandbox,
        spool_dir=tmp_path / "spool",
        duty_operator_phones=OPERATORS[:1],
        behind_alarm_s=2.0,
        behind_recovered_s=0.5,
        watchdog_interval_s=0.1,
        metrics_port=free_port(),
    )
    scope = system_scope(settings.client_id)
    blocker = await asyncpg.connect(database_url)
    try:
        async with alerting_running(settings, ready_timeout_s=15) as service:
            assert service.signals().engine_active
            # Hold the recorder up: its alarm transaction waits for this lock on valve_command.
            lock = blocker.transaction()
            await lock.start()
            await blocker.execute("LOCK TABLE valve_command IN ACCESS EXCLUSIVE MODE")
            async with MqttSession(service.settings.mqtt(), client_id=f"pub-{uuid.uuid4().hex[:8]}") as pub:
                pub.publish(
                    topics.device(home.alarm_id, Channel.EVENT),
                    encode(AlarmEvent(seq=1, ts=datetime.now(UTC), state=AlarmState.HIGH_ALARM, lel=30.0)),
                    qos=1,
                )

                async def raised() -> bool:
                    return bool(await system_incidents(db, scope))

                await wait_for(raised, 15)
            [incident] = await system_incidents(db, scope)
            assert await db.fetchval("SELECT count(*) FROM incident WHERE kind = 'gas_alarm'") == 0
            opened = (await timeline(db, incident["id"]))[0][1]
            # (Recorder.pending leaves out the batch being applied, so it may say 0 here.)
            assert opened["recorder_lag_s"] >= 2.0 and opened["inbound_lag_s"] < 2.0
            async with httpx.AsyncClient() as http:
                scraped = (await http.get(f"http://127.0.0.1:{settings.metrics_port}/metrics")).text
            assert "gasguard_alerting_behind 1.0" in scraped
            assert "gasguard_alerting_recorder_pending" in scraped and "gasguard_alerting_engine_active 1.0" in scraped
            await lock.rollback()

            async def caught_up() -> bool:
                return [t for t, _ in await timeline(db, incident["id"])][-1] == "caught_up"

            await wait_for(caught_up, 15)
            assert await db.fetchval("SELECT count(*) FROM incident WHERE kind = 'gas_alarm'") == 1
            assert len(await system_incidents(db, scope)) == 1
    finally:
        await blocker.close()


def test_settings_are_read_from_the_documented_variables(monkeypatch) -> None:
    defaults = AlertingSettings(database_url="postgresql://x@127.0.0.1/x")
    assert (defaults.behind_alarm_s, defaults.behind_recovered_s, defaults.metrics_port) == (30.0, 60.0, 0)
    monkeypatch.setenv("GG_BEHIND_ALARM_S", "45")
    monkeypatch.setenv("GG_BEHIND_RECOVERED_S", "120")
    monkeypatch.setenv("GG_METRICS_PORT", "9187")
    dog = Watchdog(AlertingSettings(database_url="postgresql://x@127.0.0.1/x"), read=Readings())
    assert dog.policy == replace(POLICY, behind_alarm_s=45.0, recovered_after_s=120.0)
    assert AlertingSettings().metrics_port == 9187


# The control room


async def test_the_control_room_shows_and_closes_a_system_incident(db: asyncpg.Connection, database_url: str) -> None:
    from registry.app import create_app
    from registry.auth import Role, create_user, issue_token
    from registry.settings import RegistrySettings

    settings = watchdog_settings(database_url)
    await Watchdog(settings, read=Readings(recorder=90.0)).check()
    [incident] = await system_incidents(db, system_scope(settings.client_id))
    admin = await create_user(db, username="admin-t", password=None, display_name="管理员", role=Role.ADMIN)
    headers = {"Authorization": f"Bearer {await issue_token(db, user_id=admin.id, name='t')}"}
    app = create_app(RegistrySettings(database_url=database_url))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://registry.test") as client,
    ):
        board = await client.get("/ui/api/board", headers=headers)
        assert board.status_code == 200, board.text
        assert [(r["kind"], r["scope"]) for r in board.json()["items"]] == [("alerting_behind", incident["scope"])]
        listed = await client.get("/incidents", headers=headers)
        assert listed.status_code == 200, listed.text
        ack = await client.post(f"/incidents/{incident['id']}/acknowledge", headers=headers, json={"note": "已知悉"})
        assert ack.status_code == 200, ack.text
        # No valve, so no on-site record is demanded; 设备故障 is the nearest existing disposition.
        closed = await client.post(
            f"/incidents/{incident['id']}/close", headers=headers, json={"disposition": "device_fault"}
        )
        assert closed.status_code == 200, closed.text
        assert closed.json()["state"] == "CLOSED"
