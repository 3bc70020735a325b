"""Ingest against the real broker and database: storage, idempotency, dead letters, registry, sequence."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import asyncpg

from gasguard.clock import utcnow
from gasguard.mqtt import MqttSession
from gasguard.protocol import Channel, Topics
from ingest.settings import IngestSettings
from tests.ingest.conftest import (
    T0,
    AddDevice,
    alarm_event,
    alarm_telemetry,
    count,
    publish_all,
    running,
    stream,
    valve_event,
    valve_telemetry,
    wait_until,
)


async def test_telemetry_and_events_land_in_typed_columns_with_both_timestamps(
    settings: IngestSettings, publisher: MqttSession, topics: Topics, db: asyncpg.Connection, add_device: AddDevice
) -> None:
    """Test that readings and events are flattened into their tables with device and receive time."""
    alarm = await add_device("alarm-1")
    valve = await add_device("valve-1", kind="shutoff_valve")
    cmd_id = uuid.uuid4()
    before = utcnow()
    async with running(settings, publisher) as ingest:
        publish_all(
            publisher,
            [
                (topics.device(alarm, Channel.TELEMETRY), alarm_telemetry(7)),
                (topics.device(valve, Channel.TELEMETRY), valve_telemetry(None)),
                (topics.device(alarm, Channel.EVENT), alarm_event(8)),
                (topics.device(valve, Channel.EVENT), valve_event(3, cmd_id, at=T0 + timedelta(seconds=2))),
            ],
        )
        await wait_until(lambda: ingest.stats().rows_written == 4)
    after = utcnow()

    reading = await db.fetchrow("SELECT * FROM telemetry WHERE device_id = $1", alarm)
    assert reading is not None
    assert reading["device_ts"] == T0
    assert before <= reading["received_at"] <= after
    assert dict(reading) | {"received_at": None} == {
        "device_id": alarm,
        "device_ts": T0,
        "received_at": None,
        "seq": 7,
        "kind": "alarm",
        "lel": 3.5,
        "alarm_state": "normal",
        "valve_position": None,
        "power_source": "mains",
        "battery_pct": 87,
        "mains_ok": True,
        "rssi": -71,
        "rsrp": -95,
        "snr": 7.5,
        "csq": 18,
        "ecl": 1,
    }
    valve_reading = await db.fetchrow("SELECT * FROM telemetry WHERE device_id = $1", valve)
    assert valve_reading is not None
    assert (valve_reading["kind"], valve_reading["valve_position"], valve_reading["seq"]) == ("valve", "open", -1)
    assert valve_reading["lel"] is None
    assert valve_reading["power_source"] is None

    events = {r["type"]: r for r in await db.fetch("SELECT * FROM device_event")}
    assert set(events) == {"alarm", "valve"}
    assert (events["alarm"]["alarm_state"], events["alarm"]["lel"], events["alarm"]["seq"]) == ("high_alarm", 27.0, 8)
    assert events["valve"]["valve_position"] == "closed"
    assert events["valve"]["cmd_id"] == cmd_id
    assert events["valve"]["device_ts"] == T0 + timedelta(seconds=2)
    assert all(before <= e["received_at"] <= after for e in events.values())
    assert await count(db, "dead_letter") == 0


async def test_device_time_keeps_its_instant_whatever_the_offset(
    settings: IngestSettings, publisher: MqttSession, topics: Topics, db: asyncpg.Connection, add_device: AddDevice
) -> None:
    """Test that a device clock in UTC+8 is stored as the same instant."""
    alarm = await add_device("alarm-tz")
    payload = alarm_telemetry(1).replace(b'"2026-03-01T08:00:00Z"', b'"2026-03-01T16:00:00+08:00"')
    assert b"+08:00" in payload
    async with running(settings, publisher) as ingest:
        publisher.publish(topics.device(alarm, Channel.TELEMETRY), payload, qos=1)
        await wait_until(lambda: ingest.stats().rows_written == 1)
    assert await db.fetchval("SELECT device_ts FROM telemetry") == T0


async def test_redelivered_messages_create_no_duplicates(
    settings: IngestSettings, publisher: MqttSession, topics: Topics, db: asyncpg.Connection, add_device: AddDevice
) -> None:
    """Test that publishing the same messages again leaves one row per message."""
    alarm = await add_device("alarm-dup")
    messages = [*stream(topics, alarm, 50), (topics.device(alarm, Channel.EVENT), alarm_event(None))]
    async with running(settings, publisher) as ingest:
        publish_all(publisher, messages)
        await wait_until(lambda: ingest.stats().rows_written == 51)
        publish_all(publisher, messages)
        await wait_until(lambda: ingest.stats().duplicates == 51)
        stats = ingest.stats()
    assert await count(db, "telemetry") == 50
    assert await count(db, "device_event") == 1
    assert stats.rows_written == 51
    assert stats.seq_out_of_order == 1  # the replay restarts at seq 0; a regression, not 50 gaps
    assert stats.seq_gaps == 0


async def test_bad_input_becomes_dead_letters_and_good_rows_in_the_same_batch_survive(
    settings: IngestSettings, publisher: MqttSession, topics: Topics, db: asyncpg.Connection, add_device: AddDevice
) -> None:
    """Test that malformed payloads, unknown devices and unknown topics are dead-lettered with reasons."""
    alarm = await add_device("alarm-ok")
    telemetry = topics.device(alarm, Channel.TELEMETRY)
    out_of_range = alarm_telemetry(3).replace(b'"lel":3.5', b'"lel":250.0')
    huge_rssi = alarm_telemetry(4).replace(b'"rssi":-71', b'"rssi":99999999999')
    bad = [
        (telemetry, b"{not json"),
        (telemetry, out_of_range),
        (topics.device(alarm, Channel.EVENT), b'{"v":1,"type":"alarm"}'),
        (telemetry, huge_rssi),
        (topics.device("ghost-7", Channel.TELEMETRY), alarm_telemetry(1)),
        (f"{topics.root}/v1/dev/{alarm}/firmware", b"1.2.3"),
        (f"{topics.root}/somewhere/else", b"\x00\x01"),
    ]
    good = [(telemetry, alarm_telemetry(1)), (telemetry, alarm_telemetry(2, at=T0 + timedelta(seconds=1)))]
    async with running(settings, publisher) as ingest:
        # Interleaved so good and bad rows share batches.
        publish_all(publisher, [good[0], *bad[:4], good[1], *bad[4:]])
        await wait_until(lambda: ingest.stats().dead_letters == len(bad) and ingest.stats().rows_written == 2)

    assert await count(db, "telemetry") == 2
    letters = await db.fetch("SELECT * FROM dead_letter ORDER BY id")
    by_payload = {bytes(r["payload"]): r for r in letters}
    assert len(letters) == len(bad)
    assert by_payload[b"{not json"]["reason"].startswith("invalid payload: Invalid JSON")
    assert by_payload[out_of_range]["reason"] == "invalid payload: alarm.lel: Input should be less than or equal to 100"
    assert by_payload[b'{"v":1,"type":"alarm"}']["reason"].startswith("invalid payload: alarm.")
    assert by_payload[huge_rssi]["reason"] == "invalid payload: radio.rssi out of range: 99999999999"
    ghost = by_payload[alarm_telemetry(1)]
    assert (ghost["reason"], ghost["device_id"]) == ("unknown device", "ghost-7")
    firmware = by_payload[b"1.2.3"]
    assert (firmware["reason"], firmware["topic"]) == ("unknown topic", f"{topics.root}/v1/dev/{alarm}/firmware")
    assert by_payload[b"\x00\x01"]["reason"] == "unknown topic"
    assert all(r["source"] == "mqtt" and r["received_at"] is not None for r in letters)
    assert by_payload[b"{not json"]["device_id"] == alarm


async def test_protocol_topics_of_other_services_are_ignored(
    settings: IngestSettings, publisher: MqttSession, topics: Topics, db: asyncpg.Connection, add_device: AddDevice
) -> None:
    """Test that availability and command traffic is neither stored nor dead-lettered."""
    alarm = await add_device("alarm-quiet")
    other = [
        (topics.device(alarm, Channel.AVAILABILITY), b'{"v":1,"status":"online"}'),
        (topics.device(alarm, Channel.COMMAND), b"{}"),
        (topics.device(alarm, Channel.COMMAND_ACK), b"{}"),
        (topics.device(alarm, Channel.COMMAND_RESULT), b"{}"),
        (topics.device("not-registered", Channel.COMMAND), b"{}"),
        (topics.gateway_availability("modbus-gw-1"), b'{"v":1,"status":"offline"}'),
    ]
    async with running(settings, publisher) as ingest:
        ignored_before = ingest.stats().ignored
        publish_all(publisher, [*other, (topics.device(alarm, Channel.TELEMETRY), alarm_telemetry(1))])
        await wait_until(lambda: ingest.stats().rows_written == 1 and ingest.stats().ignored == ignored_before + 6)
    assert await count(db, "dead_letter") == 0
    assert await count(db, "telemetry") == 1


async def test_device_registered_while_running_is_accepted_after_notify(
    settings: IngestSettings, publisher: MqttSession, topics: Topics, db: asyncpg.Connection, add_device: AddDevice
) -> None:
    """Test that NOTIFY gg_directory makes a new device known without a restart or periodic reload."""
    await add_device("alarm-first")
    assert settings.directory_refresh_s >= 3600  # only NOTIFY can explain the reload below
    async with running(settings, publisher) as ingest:
        assert ingest.stats().known_devices == 1
        late = await add_device("alarm-late")
        await wait_until(lambda: ingest.stats().known_devices == 2, timeout=5)
        publisher.publish(topics.device(late, Channel.TELEMETRY), alarm_telemetry(1), qos=1)
        await wait_until(lambda: ingest.stats().rows_written == 1)
    assert await db.fetchval("SELECT device_id FROM telemetry") == late
    assert await count(db, "dead_letter") == 0


async def test_sequence_gaps_and_regressions_are_counted(
    settings: IngestSettings, publisher: MqttSession, topics: Topics, add_device: AddDevice
) -> None:
    """Test per-device sequence tracking across telemetry and events."""
    alarm = await add_device("alarm-seq")
    other = await add_device("alarm-seq-2")
    tel = topics.device(alarm, Channel.TELEMETRY)
    t = [T0 + timedelta(seconds=i) for i in range(10)]
    messages = [
        (tel, alarm_telemetry(1, at=t[1])),
        (tel, alarm_telemetry(2, at=t[2])),
        (topics.device(alarm, Channel.EVENT), alarm_event(3, at=t[3])),  # shared counter: no gap
        (tel, alarm_telemetry(7, at=t[7])),  # gap: 4, 5, 6 missing
        (tel, alarm_telemetry(6, at=t[6])),  # late
        (tel, alarm_telemetry(9, at=t[9])),  # gap after the late 6: counts 7 and 8 as missing
        (topics.device(other, Channel.TELEMETRY), alarm_telemetry(100, at=t[0])),  # first sight: no gap
        (tel, alarm_telemetry(None, at=t[8])),  # no seq: not tracked
    ]
    async with running(settings, publisher) as ingest:
        publish_all(publisher, messages)
        await wait_until(lambda: ingest.stats().rows_written == len(messages))
        stats = ingest.stats()
    assert stats.seq_gaps == 2
    assert stats.seq_missing == 3 + 2
    assert stats.seq_out_of_order == 1


async def test_shared_subscription_workers_split_the_stream_without_loss(
    settings: IngestSettings, publisher: MqttSession, topics: Topics, db: asyncpg.Connection, add_device: AddDevice
) -> None:
    """Test that two workers in one MQTT 5 share group store every message exactly once."""
    alarm = await add_device("alarm-shared")
    first = settings.model_copy(update={"share_group": f"g-{topics.root}"})
    second = first.model_copy(update={"client_id": f"{settings.client_id}-b"})
    assert first.subscription() == f"$share/g-{topics.root}/{topics.root}/#"
    async with running(first) as a, running(second) as b:
        # Probe until both workers have taken one, so both subscriptions are in place.
        probe = topics.gateway_availability("probe")
        while not (a.stats().ignored and b.stats().ignored):
            publisher.publish(probe, b"{}", qos=1)
            await asyncio.sleep(0.05)
        publish_all(publisher, stream(topics, alarm, 400))
        await wait_until(lambda: a.stats().rows_written + b.stats().rows_written == 400)
        taken = (a.stats().messages_in, b.stats().messages_in)
    assert await count(db, "telemetry") == 400
    assert min(taken) > 0
