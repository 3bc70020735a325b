"""Loading households from the registry, the service end to end, settings and the command line."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from gasguard.protocol import AlarmState, Channel, Topics, decode_event
from registry.demo_county import seed_demo_county
from simulator import service
from simulator.__main__ import app
from simulator.fleet import ConnectionMode
from simulator.loader import load_households
from simulator.scenarios import ScenarioName
from simulator.settings import SimulatorSettings
from tests.simulator.conftest import Recorder


async def test_load_households_reads_ng_alarms_with_their_valves(db: asyncpg.Connection) -> None:
    county = await seed_demo_county(db, households=50, seed=1)
    households = await load_households(db)
    assert len(households) == county.ng_households == 45
    assert [hh.household_id for hh in households] == sorted(hh.household_id for hh in households)
    gas = dict(await db.fetch("SELECT id, gas_type FROM household"))
    for hh in households:
        assert gas[hh.household_id] == "NG"
        assert hh.valve_id == hh.alarm_id.replace("GA-", "GV-")
        assert (hh.low_alarm_lel, hh.high_alarm_lel, hh.heartbeat_s) == (10.0, 25.0, 3600)
        assert len(hh.community_code) == 12
    limited = await load_households(db, limit=7)
    assert limited == households[:7]


async def test_load_households_skips_alarms_without_set_points_or_valve(db: asyncpg.Connection) -> None:
    await seed_demo_county(db, households=10)
    first, second = (await load_households(db))[:2]
    await db.execute(
        """
        INSERT INTO device_model (id, manufacturer, model, kind, gas_type, service_life_years)
        VALUES ('no-setpoints', 'test', 'test', 'alarm', 'NG', 5)
        """
    )
    await db.execute("UPDATE device SET model_id = 'no-setpoints' WHERE id = $1", first.alarm_id)
    await db.execute("DELETE FROM alarm_valve_link WHERE alarm_id = $1", second.alarm_id)
    loaded = {hh.alarm_id for hh in await load_households(db)}
    assert first.alarm_id not in loaded
    assert second.alarm_id not in loaded
    assert len(loaded) == 9 - 2


async def test_service_runs_the_scenario_until_cancelled(
    db: asyncpg.Connection, database_url: str, mqtt_url: str, topics: Topics, recorder: Recorder
) -> None:
    await seed_demo_county(db, households=30, seed=2)
    settings = SimulatorSettings(
        database_url=database_url,
        mqtt_url=mqtt_url,
        topic_root=topics.root,
        sim_id="svc",
        households=10,
        telemetry_period_s=0.5,
        scenario=ScenarioName.BURST,
        leak_interval_s=0.1,
        burst_size=2,
        burst_within_s=0.1,
    )
    task = asyncio.create_task(service.run(settings))
    try:

        def high_alarms() -> set[str]:
            return {
                topic
                for topic, payload in recorder.messages
                if topic.endswith("/event") and decode_event(payload).state is AlarmState.HIGH_ALARM
            }

        # Default leak profile: the concentration passes the high set point about 2.5 s in.
        alarmed = await recorder.wait_for(lambda: len(high_alarms()) == 2 and high_alarms(), timeout=15)
        # Only the first 10 NG households are simulated, and every one of them reports.
        loaded = await load_households(db, limit=10)
        simulated = {hh.alarm_id for hh in loaded}
        assert {topics.parse(t).device_id for t in alarmed} <= simulated
        await recorder.wait_for(
            lambda: all(recorder.device(hh.valve_id, Channel.TELEMETRY) for hh in loaded), timeout=5
        )
        all_households = await load_households(db)
        assert not any(recorder.device(hh.alarm_id, Channel.TELEMETRY) for hh in all_households[10:])
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # A clean stop says goodbye on the gateway's availability topic.
    gateway = topics.gateway_availability("svc")
    await recorder.wait_for(lambda: recorder.last(gateway) == b'{"v":1,"status":"offline"}')


async def test_service_refuses_an_empty_registry(database_url: str, mqtt_url: str) -> None:
    settings = SimulatorSettings(database_url=database_url, mqtt_url=mqtt_url)
    with pytest.raises(RuntimeError, match="no NG household"):
        await service.run(settings)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GG_DATABASE_URL", "postgresql://gg@db/gg")
    monkeypatch.setenv("GG_SIM_MODE", "per_device")
    monkeypatch.setenv("GG_SIM_HOUSEHOLDS", "25")
    monkeypatch.setenv("GG_SIM_SCENARIO", "burst")
    monkeypatch.setenv("GG_TOPIC_ROOT", "demo")
    settings = SimulatorSettings()
    assert settings.mode is ConnectionMode.PER_DEVICE
    assert settings.households == 25
    assert settings.scenario is ScenarioName.BURST
    assert settings.topic_root == "demo"
    assert settings.telemetry_period_s == 60.0


def test_settings_reject_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GG_DATABASE_URL", "postgresql://gg@db/gg")
    with pytest.raises(ValidationError, match="sim_id"):
        SimulatorSettings(sim_id="a/#")
    with pytest.raises(ValidationError):
        SimulatorSettings(telemetry_period_s=0)
    monkeypatch.delenv("GG_DATABASE_URL")
    with pytest.raises(ValidationError, match="database_url"):
        SimulatorSettings()


def test_cli_help_and_bad_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "--scenario" in result.output
    monkeypatch.delenv("GG_DATABASE_URL", raising=False)
    result = runner.invoke(app, ["--households", "5"])
    assert result.exit_code == 2
    assert "database_url" in result.output
