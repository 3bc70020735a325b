"""Alerting under storm: batched recording, the resident's hold, mass offline, against real PostgreSQL/Mosquitto."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType

import asyncpg
import httpx

from alerting.devicestate import ScopePolicy, sweep
from alerting.directory import AlarmEntry, Directory, DirectoryKeeper, ValveEntry
from alerting.engine import Engine
from alerting.escalation import Contacts, fire_due
from alerting.recorder import Recorder
from alerting.records import (
    AlarmRecorded,
    ResidentSmsDue,
    SentCommand,
    ValveNotClosed,
    ValveReported,
    apply,
    batchable,
)
from alerting.settings import AlertingSettings
from gasguard.protocol import AlarmState, Channel, Command, Topics, ValveEvent, ValvePosition, encode
from gasguard.settings import MqttEndpoint
from tests.alerting.test_notifier import notifier
from tests.alerting.test_providers import FullSandbox
from tests.alerting.test_service import alarm, publish_once, running, wait_for
from tests.support.rows import add_household
from tests.support.stack import LoopbackValves

WAIT_S = 60.0


def alarm_record(household_id: int, alarm_id: str, *, received_at: datetime, valve_id: str | None) -> AlarmRecorded:
    commands = (
        ()
        if valve_id is None
        else (
            SentCommand(
                cmd_id=uuid.uuid4(),
                valve_id=valve_id,
                issued_at=received_at,
                expires_at=received_at + timedelta(hours=6),
            ),
        )
    )
    return AlarmRecorded(
        alarm_id=alarm_id,
        household_id=household_id,
        severity="critical",
        alarm_state="high_alarm",
        lel=35.0,
        device_ts=received_at,
        received_at=received_at,
        commands=commands,
        resident_sms_hold_s=10.0,
        hotline="0477-7212345",
    )


async def test_recorder_batches_a_storm_stores_each_alarm_once_and_dead_letters_only_the_refused_record(
    db: asyncpg.Connection, database_url: str, tmp_path: Path
) -> None:
    homes = [await add_household(db, n) for n in range(1, 41)]
    recorder = Recorder(database_url, journal_path=tmp_path / "records.jsonl")
    now = datetime.now(UTC)
    records = [alarm_record(h.id, h.alarm_id, received_at=now, valve_id=h.valve_id) for h in homes]
    records.insert(20, records[3])  # the same alarm twice (a replay)
    records.insert(
        25, alarm_record(homes[5].id, homes[5].alarm_id, received_at=now + timedelta(seconds=1), valve_id=None)
    )
    records.insert(30, alarm_record(10**9, "A-nowhere", received_at=now, valve_id=None))  # no such household
    for record in records:
        recorder.submit(record)
    task = asyncio.create_task(recorder.run_loop())
    try:
        await asyncio.wait_for(recorder.idle.wait(), WAIT_S)
    finally:
        task.cancel()
    assert recorder.applied == len(records)
    incidents = await db.fetch("SELECT household_id FROM incident WHERE kind = 'gas_alarm'")
    assert sorted(r["household_id"] for r in incidents) == sorted(h.id for h in homes)
    assert await db.fetchval("SELECT count(*) FROM valve_command") == len(homes)
    assert await db.fetchval("SELECT count(*) FROM incident_event WHERE type = 'repeat_alarm'") == 1
    # Every resident text is queued with its incident, in the same transaction.
    assert await db.fetchval("SELECT count(*) FROM notification_outbox WHERE recipient_role = 'resident'") == len(homes)
    [dead] = await db.fetch("SELECT * FROM dead_letter")
    assert dead["topic"] == "alerting/record" and "ForeignKeyViolation" in dead["reason"]


async def test_recorder_applies_a_storm_in_far_fewer_transactions_than_records(
    db: asyncpg.Connection, database_url: str, tmp_path: Path
) -> None:
    homes = [await add_household(db, n) for n in range(1, 101)]
    recorder = Recorder(database_url, journal_path=tmp_path / "records.jsonl", batch_max=50)
    now = datetime.now(UTC)
    for h in homes:
        recorder.submit(alarm_record(h.id, h.alarm_id, received_at=now, valve_id=h.valve_id))
    task = asyncio.create_task(recorder.run_loop())
    try:
        await asyncio.wait_for(recorder.idle.wait(), WAIT_S)
    finally:
        task.cancel()
    assert recorder.applied == 100 and recorder.transactions == 2
    assert await db.fetchval("SELECT count(DISTINCT household_id) FROM incident WHERE kind = 'gas_alarm'") == 100


async def test_a_late_recorded_alarm_holds_the_text_until_the_engine_releases_it(
    db: asyncpg.Connection, database_url: str, full_sandbox: FullSandbox
) -> None:
    """In a storm the recorder lags: the alarm may be stored long after its 10-second hold ended.

    The text must still wait for what the engine knew by then — the valve's closed report, or the end
    of the hold without it — and say which.
    """
    closed, silent = await add_household(db, 1), await add_household(db, 2)
    two_minutes_ago = datetime.now(UTC) - timedelta(minutes=2)
    closed_alarm = alarm_record(closed.id, closed.alarm_id, received_at=two_minutes_ago, valve_id=closed.valve_id)
    await apply(db, closed_alarm)
    await apply(db, alarm_record(silent.id, silent.alarm_id, received_at=two_minutes_ago, valve_id=silent.valve_id))
    async with httpx.AsyncClient() as http:
        sender = notifier(database_url, full_sandbox, http)
        assert await sender.send_due(db) == 0, "held although the hold ended long ago by the device's clock"
        await apply(
            db,
            ValveReported(
                valve_id=closed.valve_id,
                household_id=closed.id,
                position="closed",
                cmd_id=closed_alarm.commands[0].cmd_id,
                at=two_minutes_ago + timedelta(seconds=3),
            ),
        )
        await apply(db, ResidentSmsDue(household_id=silent.id, at=two_minutes_ago + timedelta(seconds=10)))
        assert await sender.send_due(db) == 2
    texts = {m.phone: m for m in full_sandbox.platform.received}
    assert texts[closed.phone].params["valve"] == "已关闭"
    assert texts[silent.phone].params["valve"] == "未确认关闭"


async def test_hold_ends_on_the_engines_timer_and_the_text_says_unconfirmed(
    db: asyncpg.Connection,
    settings: AlertingSettings,
    valves: LoopbackValves,
    topics: Topics,
    mqtt_endpoint: MqttEndpoint,
    sms_sandbox,
) -> None:
    home = await add_household(db, 1, phone="13812340001")
    valves.silent.add(home.valve_id)
    # The hold (1 s) ends long before the valve's confirmation timeout (10 minutes).
    quick = settings.model_copy(update={"resident_sms_hold_s": 1.0, "default_close_confirm_timeout_s": 600.0})
    async with running(quick):
        await publish_once(mqtt_endpoint, topics.device(home.alarm_id, Channel.EVENT), alarm())

        async def texted() -> bool:
            return any(m.phone == home.phone for m in sms_sandbox.platform.received)

        await wait_for(texted, timeout=WAIT_S)
    [text] = [m for m in sms_sandbox.platform.received if m.phone == home.phone]
    assert text.params["valve"] == "未确认关闭" and "切断阀未确认关闭" in text.text
    assert await db.fetchval("SELECT count(*) FROM incident WHERE kind = 'valve_not_closed'") == 0


async def silence(db: asyncpg.Connection, device_ids: list[str]) -> None:
    """Devices last heard from well past 1.5 heartbeats ago."""
    await db.execute("UPDATE device SET created_at = now() - interval '30 days' WHERE id = ANY($1::text[])", device_ids)


async def test_a_silent_community_is_one_incident_and_every_device_stays_unknown(db: asyncpg.Connection) -> None:
    homes = [await add_household(db, n) for n in range(1, 7)]
    devices = [h.alarm_id for h in homes]  # the test catalogue's valves have no heartbeat
    await silence(db, devices)
    policy = ScopePolicy(min_devices=5, share=0.5)
    first = await sweep(db, policy)
    again = await sweep(db, policy)
    assert len(first.silent_scopes) == 1 and first.silent_scopes[0].startswith("community:")
    assert first.opened == 1 and again.opened == 0
    [incident] = await db.fetch("SELECT * FROM incident")
    assert incident["kind"] == "offline" and incident["household_id"] is None
    assert incident["scope"] == f"offline:{first.silent_scopes[0]}" and incident["severity"] == "critical"
    assert incident["detail"]["devices_unknown"] == incident["detail"]["devices"]
    statuses = dict(await db.fetch("SELECT device_id, status FROM device_state"))
    assert statuses == dict.fromkeys(devices, "unknown")
    # One text to the duty operator for the whole community, at once.
    assert await fire_due(db, Contacts(operator_a=("13900000001",)), hotline="0477-7212345") == 1
    [job] = await db.fetch("SELECT * FROM notification_outbox WHERE incident_id = $1", incident["id"])
    assert job["recipient"] == "13900000001" and job["template"] == "SMS_GG_DEVICE_NOTICE"
    assert job["params"]["issue"] == "成片离线"


async def test_a_few_silent_devices_still_get_their_own_offline_incidents(db: asyncpg.Connection) -> None:
    homes = [await add_household(db, n) for n in range(1, 7)]
    await silence(db, [homes[0].alarm_id, homes[1].alarm_id])
    await db.execute(
        "INSERT INTO telemetry (device_id, device_ts, received_at, seq, kind, lel, alarm_state, power_source,"
        " battery_pct, mains_ok) SELECT id, now(), now(), 1, 'alarm', 0, 'normal', 'mains', 90, true FROM device"
        " WHERE id <> ALL($1::text[])",
        [homes[0].alarm_id, homes[1].alarm_id],
    )
    result = await sweep(db, ScopePolicy(min_devices=5, share=0.5))
    assert result.silent_scopes == ()
    kinds = sorted((r["kind"], r["household_id"]) for r in await db.fetch("SELECT kind, household_id FROM incident"))
    assert kinds == [("offline", homes[0].id), ("offline", homes[1].id)]


def test_a_batch_ends_before_a_record_that_grouping_would_move_ahead_of_its_households_earlier_records() -> None:
    now = datetime.now(UTC)
    first = alarm_record(1, "A-1", received_at=now, valve_id="V-1")
    cmd_id = first.commands[0].cmd_id
    closed = ValveReported(valve_id="V-1", household_id=1, position="closed", cmd_id=cmd_id, at=now)
    other = alarm_record(2, "A-2", received_at=now, valve_id="V-2")
    again = alarm_record(1, "A-1", received_at=now + timedelta(minutes=5), valve_id=None)
    # Household 2's alarm may be grouped ahead of household 1's valve report; household 1's next alarm may not.
    assert batchable([first, closed, other, again]) == 3
    assert batchable([first, other, closed]) == 3
    assert batchable([again]) == 1


async def test_recorder_keeps_a_households_records_in_order_across_batches(
    db: asyncpg.Connection, database_url: str, tmp_path: Path
) -> None:
    home = await add_household(db, 1)
    now = datetime.now(UTC)
    first = alarm_record(home.id, home.alarm_id, received_at=now, valve_id=home.valve_id)
    closed = ValveReported(
        valve_id=home.valve_id, household_id=home.id, position="closed", cmd_id=first.commands[0].cmd_id, at=now
    )
    again = alarm_record(home.id, home.alarm_id, received_at=now + timedelta(seconds=30), valve_id=None)
    recorder = Recorder(database_url, journal_path=tmp_path / "records.jsonl")
    for record in (first, closed, again):
        recorder.submit(record)
    task = asyncio.create_task(recorder.run_loop())
    try:
        await asyncio.wait_for(recorder.idle.wait(), WAIT_S)
    finally:
        task.cancel()
    assert recorder.applied == 3 and recorder.transactions == 2 and recorder.pending == 0
    types = [r["type"] for r in await db.fetch("SELECT type FROM incident_event ORDER BY id")]
    assert [t for t in types if t != "escalation_step"] == [
        "opened",
        "valve_command_sent",
        "valve_closed",
        "repeat_alarm",
    ]
    assert await db.fetchval("SELECT valve_closed_at FROM incident WHERE household_id = $1", home.id) == now


class _Records:
    """Stands in for the recorder: keeps what the engine submits."""

    def __init__(self) -> None:
        self.records: list[object] = []

    def submit(self, record: object) -> None:
        self.records.append(record)


def _probed_engine(
    settings: AlertingSettings,
    households: tuple[int, ...],
    now: list[float],
    published: list[tuple[str, bytes]],
    records: _Records,
) -> tuple[Engine, Topics]:
    """An engine with an inbound-lag probe on a test clock, wired to households with alarm A-n and valve V-n."""
    keeper = DirectoryKeeper("postgresql://unused", refresh_s=60)
    keeper.current = Directory(
        alarms=MappingProxyType({f"A-{n}": AlarmEntry(f"A-{n}", n, (f"V-{n}",), 10.0, 25.0) for n in households}),
        valves=MappingProxyType({f"V-{n}": ValveEntry(f"V-{n}", n, 30.0) for n in households}),
    )
    topics = Topics("gg-test")
    engine = Engine(
        settings,
        topics=topics,
        directory=keeper,
        recorder=records,  # type: ignore[arg-type]
        publish=lambda topic, payload: published.append((topic, payload)),
        monotonic=lambda: now[0],
        probe_topic="gasguard-probe/test",
    )
    return engine, topics


def test_a_backed_up_inbound_queue_raises_no_false_valve_not_closed_but_a_silent_valve_still_escalates() -> None:
    """Command timers are judged at the time up to which the engine has read the broker's queue for it."""
    now = [0.0]
    published: list[tuple[str, bytes]] = []
    records = _Records()
    engine, topics = _probed_engine(
        AlertingSettings(resident_sms_hold_s=10.0, max_inbound_lag_s=30.0), (1, 2), now, published, records
    )
    for n in (1, 2):
        engine.on_message(topics.device(f"A-{n}", Channel.EVENT), alarm())
    commands = {t: Command.model_validate_json(p) for t, p in published if t.endswith("/cmd")}
    assert len(commands) == 2
    for t in (0.1, 5.0, 20.0):  # the probe went out at 0.1 and is stuck behind a backlog
        now[0] = t
        engine.tick()
    assert not [r for r in records.records if isinstance(r, ResidentSmsDue)], "the hold ends on what was read"
    # The backlog drains: valve 1's closed report (sent in time), then the probe sent at 0.1.
    cmd_1 = commands[topics.device("V-1", Channel.COMMAND)]
    closed = ValveEvent(seq=1, ts=datetime.now(UTC), position=ValvePosition.CLOSED, cmd_id=cmd_1.cmd_id)
    engine.on_message(topics.device("V-1", Channel.EVENT), encode(closed))
    engine.on_message("gasguard-probe/test", b"20.0")
    now[0] = 20.5
    engine.tick()
    assert [r.household_id for r in records.records if isinstance(r, ResidentSmsDue)] == [2]
    for t in (40.0, 45.0):  # past valve 2's 30-s deadline by the clock, not by what was read (20.0)
        now[0] = t
        engine.tick()
    assert not [r for r in records.records if isinstance(r, ValveNotClosed)], "judged at the wall clock: false alarm"
    now[0] = 61.0  # the next probe never came back: at most 30 s behind the clock, valve 2 escalates
    engine.tick()
    assert [r.valve_id for r in records.records if isinstance(r, ValveNotClosed)] == ["V-2"]


def test_while_a_backlog_is_still_flowing_in_timers_wait_for_it_longer() -> None:
    now = [0.0]
    published: list[tuple[str, bytes]] = []
    records = _Records()
    engine, topics = _probed_engine(
        AlertingSettings(max_inbound_lag_s=30.0, max_backlog_s=600.0), (1,), now, published, records
    )
    engine.on_message(topics.device("A-1", Channel.EVENT), alarm())
    for t in range(1, 300, 5):  # other households' old messages keep arriving; the probe is not back yet
        now[0] = float(t)
        engine.on_message(topics.device("A-2", Channel.EVENT), alarm(AlarmState.SELF_TEST))
        engine.tick()
    assert not [r for r in records.records if isinstance(r, ValveNotClosed)]
    now[0] = 700.0  # nothing arrives any more: judged at most 30 s behind the clock
    engine.tick()
    assert [r.valve_id for r in records.records if isinstance(r, ValveNotClosed)] == ["V-1"]
