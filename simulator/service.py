"""The simulator as a service: load NG households from the registry, run the fleet and a scenario."""

from __future__ import annotations

import asyncio
import logging

from gasguard.db import connect
from gasguard.protocol import Topics
from simulator.fleet import Fleet
from simulator.loader import load_households
from simulator.scenarios import ScenarioName, run_burst, run_leak_every
from simulator.settings import SimulatorSettings

_LOGGER = logging.getLogger(__name__)


async def run(settings: SimulatorSettings) -> None:
    """Simulate the registry's NG households until cancelled."""
    conn = await connect(settings.dsn())
    try:
        households = await load_households(conn, limit=settings.households)
    finally:
        await conn.close()
    if not households:
        raise RuntimeError("no NG household with an alarm linked to a shut-off valve in the registry; seed one first")
    fleet = Fleet(
        settings.mqtt(),
        Topics(settings.topic_root),
        households=households,
        mode=settings.mode,
        sim_id=settings.sim_id,
        telemetry_period_s=settings.telemetry_period_s,
        valve_close_s=settings.valve_close_s,
    )
    async with fleet, asyncio.TaskGroup() as tg:
        tg.create_task(fleet.wait(), name=f"simulator[{settings.sim_id}].fleet")
        tg.create_task(_scenario(fleet, settings), name=f"simulator[{settings.sim_id}].scenario")
        tg.create_task(_stats_loop(fleet, settings.stats_every_s), name=f"simulator[{settings.sim_id}].stats_loop")


async def _scenario(fleet: Fleet, settings: SimulatorSettings) -> None:
    match settings.scenario:
        case ScenarioName.LEAK_EVERY:
            await run_leak_every(fleet, interval_s=settings.leak_interval_s, seed=settings.seed)
        case ScenarioName.BURST:
            await asyncio.sleep(settings.leak_interval_s)
            await run_burst(fleet, count=settings.burst_size, within_s=settings.burst_within_s, seed=settings.seed)
        case ScenarioName.NONE:
            pass


async def _stats_loop(fleet: Fleet, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        stats = fleet.stats()
        _LOGGER.info(
            "sent %d (telemetry %d, events %d, acks %d, results %d); commands received %d; reconnects %d",
            stats.sent,
            stats.telemetry,
            stats.events,
            stats.acks,
            stats.results,
            stats.commands_received,
            stats.reconnects,
        )
