"""End to end: an installation recorded through the registry API is armed in alerting without a restart.

The registry records a new household's kit (alarm linked to its shut-off valve); the database's
``gg_directory`` notification makes the running alerting service reload its directory (its periodic
refresh is set to an hour, so only the notification can do it); the next alarm from the new alarm
device closes the newly linked valve, confirmed by the valve's own report.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest

from gasguard.mqtt import MqttSession
from gasguard.protocol import AlarmEvent, AlarmState, Channel, Topics, encode
from gasguard.settings import MqttEndpoint
from registry.app import create_app
from registry.auth import Role, create_user, issue_token
from registry.deps import china_today
from registry.settings import RegistrySettings
from tests.conftest import SmsSandbox
from tests.support.rows import COMMUNITY, ensure_catalogue
from tests.support.stack import LoopbackValves, alerting_running, alerting_settings_for, loopback_valves, wait_for

ALARM_ID = "GA-NEW-0001"
VALVE_ID = "SV-NEW-0001"


@pytest.fixture
async def valves(mqtt_endpoint: MqttEndpoint, topics: Topics) -> AsyncIterator[LoopbackValves]:
    """Loopback valves subscribed to every command topic of this test's root."""
    async with loopback_valves(mqtt_endpoint, topics) as loopback:
        yield loopback


async def test_new_installation_arms_alerting_without_restart(
    database_url: str,
    db: asyncpg.Connection,
    mqtt_url: str,
    mqtt_endpoint: MqttEndpoint,
    topic_root: str,
    topics: Topics,
    sms_sandbox: SmsSandbox,
    valves: LoopbackValves,
    tmp_path: Path,
) -> None:
    """Record household + kit through the API; the new alarm's next alarm closes the new valve."""
    await ensure_catalogue(db)  # places, T-ALARM and T-VALVE (NG)
    admin = await create_user(db, username="admin", password=None, display_name="管理员", role=Role.ADMIN)
    await create_user(db, username="installer-li", password="装表-pw-1", display_name="李师傅", role=Role.INSTALLER)
    admin_headers = {"Authorization": f"Bearer {await issue_token(db, user_id=admin.id, name='e2e')}"}
    settings = alerting_settings_for(
        database_url=database_url,
        mqtt_url=mqtt_url,
        topic_root=topic_root,
        sms=sms_sandbox,
        spool_dir=tmp_path / "spool",
        ack_timeout_s=0.5,
        default_close_confirm_timeout_s=5.0,
        duty_operator_phones=["13900000001"],
        directory_refresh_s=3600.0,  # only the database's notification can arm the new devices in time
    )
    app = create_app(RegistrySettings(database_url=database_url, cookie_secure=False))
    async with (
        alerting_running(settings) as alerting,
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://registry.test") as api,
    ):
        assert ALARM_ID not in alerting.directory.current.alarms

        async def post(url: str, body: object, headers: dict[str, str] | None = None) -> dict[str, object]:
            response = await api.post(url, json=body, headers=headers)
            assert response.status_code in (200, 201), (url, response.text)
            result: dict[str, object] = response.json()
            return result

        # The rest of the NG kit goes into the catalogue through the API.
        for model_id, kind, life in (("T-SCV", "self_closing_valve", 10), ("T-HOSE", "hose", 8)):
            await post(
                "/catalogue/models",
                {
                    "id": model_id,
                    "manufacturer": "Test",
                    "model": model_id,
                    "kind": kind,
                    "gas_type": "NG",
                    "service_life_years": life,
                },
                admin_headers,
            )
        household = await post(
            "/households",
            {
                "community_code": COMMUNITY,
                "building": "9号楼",
                "unit": "1单元",
                "room": "301",
                "gas_type": "NG",
                "supplier": "乌审中燃",
                "resident_name": "新住户",
                "resident_phone": "13812340000",
            },
            admin_headers,
        )
        assert household["monitored"] is False and household["unprotected"] is True
        job = await post("/installations/jobs", {"household_id": household["id"]}, admin_headers)
        installer_id = await db.fetchval("SELECT id FROM app_user WHERE username = 'installer-li'")
        await post(f"/installations/jobs/{job['id']}/assign", {"installer_id": installer_id}, admin_headers)

        # The installer records the kit from a login session.
        await post("/auth/login", {"username": "installer-li", "password": "装表-pw-1"})
        done = await post(
            f"/installations/jobs/{job['id']}/complete",
            {
                "installed_on": china_today().isoformat(),
                "devices": [
                    {"id": ALARM_ID, "model_id": "T-ALARM", "serial": "SA-NEW-1", "imei": "862592051651472"},
                    {"id": VALVE_ID, "model_id": "T-VALVE", "serial": "SV-NEW-1"},
                    {"id": "SC-NEW-0001", "model_id": "T-SCV", "serial": "SC-NEW-1"},
                    {"id": "HO-NEW-0001", "model_id": "T-HOSE", "serial": "HO-NEW-1"},
                ],
            },
        )
        assert done["state"] == "completed"
        api.cookies.clear()
        detail = (await api.get(f"/households/{household['id']}", headers=admin_headers)).json()
        assert detail["monitored"] is True and detail["unprotected"] is False
        assert detail["links"] == [{"alarm_id": ALARM_ID, "valve_id": VALVE_ID}]

        # Alerting learns of it through NOTIFY gg_directory, without a restart.
        async def armed() -> bool:
            entry = alerting.directory.current.alarms.get(ALARM_ID)
            return entry is not None and VALVE_ID in entry.valve_ids

        await wait_for(armed)

        async with MqttSession(mqtt_endpoint, client_id=f"alarm-{uuid.uuid4().hex[:8]}") as device:
            device.publish(
                topics.device(ALARM_ID, Channel.EVENT),
                encode(AlarmEvent(seq=1, ts=datetime.now(UTC), state=AlarmState.HIGH_ALARM, lel=32.5)),
                qos=1,
            )
            await device.flush()

        async def valve_confirmed_closed() -> bool:
            return bool(
                await db.fetchval(
                    "SELECT count(*) FROM incident WHERE household_id = $1 AND valve_closed_at IS NOT NULL",
                    household["id"],
                )
            )

        await wait_for(valve_confirmed_closed)

    assert [(valve, command.command) for valve, command in valves.commands] == [(VALVE_ID, "close")]
    command = await db.fetchrow("SELECT state, reported_position FROM valve_command WHERE valve_id = $1", VALVE_ID)
    assert (command["state"], command["reported_position"]) == ("confirmed", "closed")
    audit = [r["action"] for r in await db.fetch("SELECT action FROM audit_log ORDER BY id")]
    assert audit.count("installation_completed") == 1
