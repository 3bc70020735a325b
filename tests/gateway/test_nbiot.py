"""CTWing and OneNET pushes through the gateway to the real broker; quarantine; PSM downlink queue."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import asyncpg
import httpx

from gasguard.clock import utcnow
from gasguard.mqtt import MqttSession
from gasguard.protocol import (
    Channel,
    Command,
    CommandAck,
    CommandName,
    CommandResult,
    Topics,
    decode_event,
    decode_telemetry,
    encode,
)
from gasguard.settings import MqttEndpoint
from gateway.codecs import NbReading, encode_gg_nb1
from gateway.downlink import list_downlinks
from gateway.identity import list_quarantine
from gateway.settings import GatewaySettings
from simulator.nbiot_platforms import PlatformSimulator
from tests.gateway.conftest import Bus, running_gateway, wait_for
from tests.support.rows import add_household


async def make_nb(
    db: asyncpg.Connection, device_id: str, platform: str, *, psm: bool = False, codec: str = "nb"
) -> str:
    imei = f"86259205{abs(hash(device_id)) % 10**7:07d}"
    await db.execute(
        "INSERT INTO device_model (id, manufacturer, model, kind, gas_type, low_alarm_lel, high_alarm_lel, heartbeat_s,"
        " service_life_years, bearer) VALUES ('T-NB', 'Test', 'NB1', 'alarm', 'NG', 10, 25, 86400, 5, 'GG-NB1')"
        " ON CONFLICT DO NOTHING"
    )
    await db.execute(
        "UPDATE device SET imei = $2, platform = $3, platform_device_id = $4, product_id = '15114816',"
        " power_saving = $5, model_id = CASE WHEN id LIKE 'A-%' THEN 'T-NB' ELSE model_id END WHERE id = $1",
        device_id,
        imei,
        platform,
        f"pd-{device_id}" if platform == "ctwing" else str(1000 + len(device_id)),
        psm,
    )
    return imei


async def test_ctwing_profile_and_transparent_pushes_become_canonical_events(
    db: asyncpg.Connection, gateway_settings: GatewaySettings, platforms: PlatformSimulator, bus: Bus, topics: Topics
) -> None:
    home = await add_household(db, 1)
    other = await add_household(db, 2)
    imei = await make_nb(db, home.alarm_id, "ctwing")
    imei2 = await make_nb(db, other.alarm_id, "ctwing")
    async with running_gateway(gateway_settings), httpx.AsyncClient() as client:
        r = await platforms.ctwing_profile(
            client,
            imei=imei,
            device_id=f"pd-{home.alarm_id}",
            product_id="15114816",
            service_data={"Alarm_Status": 2, "Gas_LEL": 31.5, "RSRP": 98, "SNR": 4, "Battery_Level": 90},
            seq=17,
        )
        assert r.status_code == 200, r.text
        frame = encode_gg_nb1(NbReading(state="low_alarm", lel=12.0, battery_pct=80, rsrp=-101, seq=5))  # type: ignore[arg-type]
        r = await platforms.ctwing_transparent(
            client, imei=imei2, device_id="unknown-id", product_id="15114816", frame=frame
        )
        assert r.status_code == 200, r.text

        async def both_events() -> bool:
            return bool(bus.on(topics.device(home.alarm_id, Channel.EVENT))) and bool(
                bus.on(topics.device(other.alarm_id, Channel.EVENT))
            )

        await wait_for(both_events)
    event = decode_event(bus.on(topics.device(home.alarm_id, Channel.EVENT))[0])
    assert event.state == "high_alarm" and event.lel == 31.5 and event.seq == 17
    telemetry = decode_telemetry(bus.on(topics.device(home.alarm_id, Channel.TELEMETRY))[0])
    assert telemetry.radio is not None and telemetry.radio.rsrp == -98
    event2 = decode_event(bus.on(topics.device(other.alarm_id, Channel.EVENT))[0])
    assert event2.state == "low_alarm" and event2.lel == 12.0  # found by IMEI although the platform id is unknown


async def test_onenet_signed_push_becomes_event_and_forged_is_refused(
    db: asyncpg.Connection, gateway_settings: GatewaySettings, platforms: PlatformSimulator, bus: Bus, topics: Topics
) -> None:
    home = await add_household(db, 1)
    imei = await make_nb(db, home.alarm_id, "onenet")
    async with running_gateway(gateway_settings) as gateway, httpx.AsyncClient() as client:
        verify = await platforms.onenet_verify(client, "hello-onenet")
        assert verify.status_code == 200 and verify.text == "hello-onenet"
        assert (await platforms.onenet_verify(client, "x", forge=True)).status_code == 403
        forged = await platforms.onenet_push(
            client, {"at": 1, "type": 1, "imei": imei, "dev_id": 1, "ds_id": "alarm_status", "value": 2}, forge=True
        )
        assert forged.status_code == 403
        unsigned = await client.post(platforms.gateway_url + "onenet/push", json={"msg": {"type": 1}})
        assert unsigned.status_code == 401
        await asyncio.sleep(0.3)
        assert bus.on(topics.device(home.alarm_id, Channel.EVENT)) == [], "a forged push must not raise an alarm"
        r = await platforms.onenet_datapoint(
            client, imei=imei, dev_id=1, ds_id="alarm", value={"Alarm_Status": 2, "Gas_LEL": 28.0}
        )
        assert r.status_code == 200, r.text

        async def event_out() -> bool:
            return bool(bus.on(topics.device(home.alarm_id, Channel.EVENT)))

        await wait_for(event_out)
        assert gateway.ingress is not None and gateway.ingress.refused == 3
    event = decode_event(bus.on(topics.device(home.alarm_id, Channel.EVENT))[0])
    assert event.state == "high_alarm" and event.lel == 28.0


async def test_unknown_imei_is_quarantined_and_listed(
    db: asyncpg.Connection, gateway_settings: GatewaySettings, platforms: PlatformSimulator, bus: Bus, topics: Topics
) -> None:
    await add_household(db, 1)
    async with running_gateway(gateway_settings), httpx.AsyncClient() as client:
        r = await platforms.ctwing_profile(
            client, imei="869999000000001", device_id="nobody", product_id="1", service_data={"Alarm_Status": 2}
        )
        assert r.status_code == 200 and r.json() == {"quarantined": True}
        listed = (await client.get(platforms.gateway_url + "quarantine")).json()
    [entry] = await list_quarantine(db)
    assert entry.identity == "869999000000001" and entry.identity_kind == "imei" and entry.source == "ctwing"
    assert listed[0]["identity"] == "869999000000001" and "not in the registry" in listed[0]["reason"]
    assert not [t for t, _ in bus.messages if "/event" in t or "/telemetry" in t], "never treated as a known device"


async def test_psm_close_is_delivered_on_next_uplink_or_expires(
    db: asyncpg.Connection,
    gateway_settings: GatewaySettings,
    platforms: PlatformSimulator,
    topics: Topics,
    mqtt_endpoint: MqttEndpoint,
) -> None:
    home = await add_household(db, 1)
    other = await add_household(db, 2)
    imei = await make_nb(db, home.valve_id, "ctwing", psm=True)
    await make_nb(db, other.valve_id, "ctwing", psm=True)
    await db.execute("UPDATE device_model SET heartbeat_s = 3600 WHERE id = 'T-VALVE'")
    now = utcnow()
    delivered_cmd = Command(
        cmd_id=uuid.uuid4(), command=CommandName.CLOSE, issued_at=now, expires_at=now + timedelta(hours=6)
    )
    expiring_cmd = Command(
        # Long enough to be queued even on a loaded machine (a command already expired on arrival is refused),
        # short enough to expire during the test.
        cmd_id=uuid.uuid4(),
        command=CommandName.CLOSE,
        issued_at=now,
        expires_at=now + timedelta(seconds=5),
    )
    async with running_gateway(gateway_settings), httpx.AsyncClient() as client:
        async with MqttSession(mqtt_endpoint, client_id=f"cloud-{uuid.uuid4().hex[:6]}") as cloud:
            cloud.publish(topics.device(home.valve_id, Channel.COMMAND), encode(delivered_cmd))
            cloud.publish(topics.device(other.valve_id, Channel.COMMAND), encode(expiring_cmd))

        async def both_queued() -> bool:
            return len(await list_downlinks(db)) == 2

        await wait_for(both_queued)
        [queued] = await list_downlinks(db, device_id=home.valve_id)
        assert queued.state == "queued" and queued.expected_delivery_at is not None
        assert queued.expected_delivery_at - queued.queued_at == timedelta(hours=1), "next heartbeat of the model"
        assert platforms.commands == [], "nothing goes to the platform while the device sleeps"
        r = await platforms.ctwing_profile(
            client, imei=imei, device_id=f"pd-{home.valve_id}", product_id="15114816", service_data={"Valve_Status": 1}
        )
        assert r.status_code == 200, r.text

        async def settled() -> bool:
            states = {e.device_id: e.state for e in await list_downlinks(db)}
            return states == {home.valve_id: "delivered", other.valve_id: "expired"}

        await wait_for(settled)
    [sent] = platforms.commands
    assert sent.platform == "ctwing" and sent.device == f"pd-{home.valve_id}"
    assert sent.body["content"]["params"] == {"command": "close", "cmd_id": str(delivered_cmd.cmd_id)}


async def test_ctwing_wrong_token_refused_and_bad_frame_dead_lettered(
    db: asyncpg.Connection, gateway_settings: GatewaySettings, platforms: PlatformSimulator, bus: Bus, topics: Topics
) -> None:
    home = await add_household(db, 1)
    imei = await make_nb(db, home.alarm_id, "ctwing")
    async with running_gateway(gateway_settings), httpx.AsyncClient() as client:
        body = {"messageType": "dataReport", "IMEI": imei, "payload": {"serviceData": {"Alarm_Status": 2}}}
        assert (await platforms.ctwing_push(client, body, token="wrong")).status_code == 403
        corrupt = encode_gg_nb1(NbReading(state="high_alarm", lel=30.0))[:-1] + b"\x00"  # type: ignore[arg-type]
        r = await platforms.ctwing_transparent(client, imei=imei, device_id="x", product_id="1", frame=corrupt)
        assert r.status_code == 400 and "checksum" in r.text
        r = await client.post(platforms.gateway_url + "ctwing/push", params={"token": "ct-token"}, content=b"{not json")
        assert r.status_code == 400
        await asyncio.sleep(0.3)
    reasons = [row["reason"] for row in await db.fetch("SELECT reason FROM dead_letter ORDER BY id")]
    assert len(reasons) == 2 and "checksum" in reasons[0] and "malformed CTWing push" in reasons[1]
    assert not [t for t, _ in bus.messages if t.endswith("/event")], "refused or undecodable pushes raise nothing"


async def test_nb_valve_reports_position_as_telemetry_and_event(
    db: asyncpg.Connection, gateway_settings: GatewaySettings, platforms: PlatformSimulator, bus: Bus, topics: Topics
) -> None:
    home = await add_household(db, 1)
    imei = await make_nb(db, home.valve_id, "onenet")
    async with running_gateway(gateway_settings), httpx.AsyncClient() as client:
        r = await platforms.onenet_datapoint(client, imei=imei, dev_id=7, ds_id="alarm", value={"Valve_Status": 2})
        assert r.status_code == 200, r.text

        async def reported() -> bool:
            return bool(bus.on(topics.device(home.valve_id, Channel.EVENT)))

        await wait_for(reported)
    assert decode_event(bus.on(topics.device(home.valve_id, Channel.EVENT))[0]).position == "closed"  # type: ignore[union-attr]
    assert decode_telemetry(bus.on(topics.device(home.valve_id, Channel.TELEMETRY))[0]).kind == "valve"


async def test_device_registered_while_running_is_known_without_restart(
    db: asyncpg.Connection, gateway_settings: GatewaySettings, platforms: PlatformSimulator, bus: Bus, topics: Topics
) -> None:
    home = await add_household(db, 1)
    async with running_gateway(gateway_settings), httpx.AsyncClient() as client:
        imei = await make_nb(db, home.alarm_id, "ctwing")  # the registry notifies gg_directory

        async def known() -> bool:
            r = await platforms.ctwing_profile(
                client, imei=imei, device_id=f"pd-{home.alarm_id}", product_id="1", service_data={"Alarm_Status": 1}
            )
            return r.json() == {"ok": True}

        await wait_for(known)
    assert decode_event(bus.on(topics.device(home.alarm_id, Channel.EVENT))[0]).state == "low_alarm"


async def test_onenet_online_offline_becomes_retained_availability(
    db: asyncpg.Connection, gateway_settings: GatewaySettings, platforms: PlatformSimulator, bus: Bus, topics: Topics
) -> None:
    home = await add_household(db, 1)
    imei = await make_nb(db, home.alarm_id, "onenet")
    async with running_gateway(gateway_settings), httpx.AsyncClient() as client:
        r = await platforms.onenet_push(
            client, {"at": 1764400000000, "type": 2, "imei": imei, "dev_id": 5, "status": 0}
        )
        assert r.status_code == 200, r.text

        async def offline() -> bool:
            return any(b'"offline"' in p for p in bus.on(topics.device(home.alarm_id, Channel.AVAILABILITY)))

        await wait_for(offline)
    assert bus.on(topics.device(home.alarm_id, Channel.EVENT)) == [], "offline is not an alarm and not normal either"


async def test_ctwing_command_response_becomes_ack_or_result_for_our_command(
    db: asyncpg.Connection,
    gateway_settings: GatewaySettings,
    platforms: PlatformSimulator,
    bus: Bus,
    topics: Topics,
    mqtt_endpoint: MqttEndpoint,
) -> None:
    """Test CTWing command status pushes: DELIVERED acks, COMPLETED is a result without a position, TIMEOUT refuses."""
    home = await add_household(db, 1)
    other = await add_household(db, 2)
    await make_nb(db, home.valve_id, "ctwing")
    await make_nb(db, other.valve_id, "ctwing")
    now = utcnow()
    done, lost = (
        Command(cmd_id=uuid.uuid4(), command=CommandName.CLOSE, issued_at=now, expires_at=now + timedelta(hours=1))
        for _ in range(2)
    )
    async with running_gateway(gateway_settings), httpx.AsyncClient() as client:
        async with MqttSession(mqtt_endpoint, client_id=f"cloud-{uuid.uuid4().hex[:6]}") as cloud:
            cloud.publish(topics.device(home.valve_id, Channel.COMMAND), encode(done))
            cloud.publish(topics.device(other.valve_id, Channel.COMMAND), encode(lost))

        async def both_handed_over() -> bool:
            return {e.state for e in await list_downlinks(db)} == {"delivered"} and len(platforms.commands) == 2

        await wait_for(both_handed_over)
        task = {c.device: c.platform_command_id for c in platforms.commands}
        for device_id, code in (
            (home.valve_id, "DELIVERED"),
            (home.valve_id, "COMPLETED"),
            (other.valve_id, "TIMEOUT"),
        ):
            r = await platforms.ctwing_command_response(
                client,
                device_id=f"pd-{device_id}",
                product_id="15114816",
                task_id=task[f"pd-{device_id}"],
                result_code=code,
                result_detail={"note": "设备未唤醒"} if code == "TIMEOUT" else "",
            )
            assert r.status_code == 200, r.text
        stray = await platforms.ctwing_command_response(
            client, device_id=f"pd-{home.valve_id}", product_id="15114816", task_id="no-such-task", result_code="FAILED"
        )
        assert stray.json() == {"unknown_task": "no-such-task"}
        home_ack, home_result = (
            topics.device(home.valve_id, Channel.COMMAND_ACK),
            topics.device(home.valve_id, Channel.COMMAND_RESULT),
        )
        other_ack = topics.device(other.valve_id, Channel.COMMAND_ACK)

        async def published() -> bool:
            return bool(bus.on(home_ack) and bus.on(home_result) and bus.on(other_ack))

        await wait_for(published)
    [ack] = [CommandAck.model_validate_json(p) for p in bus.on(home_ack)]
    assert (ack.cmd_id, ack.accepted) == (done.cmd_id, True)
    [result] = [CommandResult.model_validate_json(p) for p in bus.on(home_result)]
    assert (result.cmd_id, result.ok, result.position) == (done.cmd_id, True, None), (
        "closed only when the valve says so"
    )
    [refused] = [CommandAck.model_validate_json(p) for p in bus.on(other_ack)]
    assert (refused.cmd_id, refused.accepted) == (lost.cmd_id, False)
    assert refused.reason == 'CTWing 指令状态 TIMEOUT: {"note":"设备未唤醒"}'
    status = {e.device_id: (e.platform_status, e.platform_status_detail) for e in await list_downlinks(db)}
    assert status == {home.valve_id: ("COMPLETED", None), other.valve_id: ("TIMEOUT", '{"note":"设备未唤醒"}')}
    letter = await db.fetchrow("SELECT reason FROM dead_letter WHERE source = 'gateway'")
    assert letter is not None and letter["reason"] == "commandResponse for unknown task no-such-task"
