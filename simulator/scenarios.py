"""Scripted leaks for demos and tests: one leak every N seconds, or a burst in one community.

The choice of households is a pure function of the households and a seed (`leak_sequence`,
`plan_burst`), so a scenario replays identically; the runners only add the waiting and skip a household
that is busy (its valve still closed from an earlier leak, which only a technician on site can reopen).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from simulator.fleet import Fleet, LeakHandle
from simulator.household import SimHousehold

_LOGGER = logging.getLogger(__name__)


class ScenarioName(enum.StrEnum):
    """Scenarios the simulator service can run."""

    NONE = "none"
    LEAK_EVERY = "leak_every"
    BURST = "burst"


@dataclass(frozen=True, slots=True)
class PlannedLeak:
    """A leak to start ``after_s`` seconds into a burst."""

    after_s: float
    household: SimHousehold


def leak_sequence(households: Sequence[SimHousehold], *, seed: int) -> Iterator[SimHousehold]:
    """An endless, seed-determined sequence of households to leak at (order independent of input order)."""
    if not households:
        raise ValueError("no households to choose from")
    ordered = sorted(households, key=lambda hh: hh.household_id)
    rng = random.Random(seed)
    while True:
        yield rng.choice(ordered)


def plan_burst(
    households: Sequence[SimHousehold],
    *,
    count: int,
    within_s: float,
    seed: int,
    community_code: str | None = None,
) -> list[PlannedLeak]:
    """Choose up to ``count`` households of one community and when, within ``within_s``, each leaks.

    A burst in one community is what a shared-pipe or stairwell leak looks like to the service (several
    alarms in one place within minutes), so it exercises cluster detection. Without ``community_code``
    the community is drawn from the seed among those with the most households to choose from.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    if within_s < 0:
        raise ValueError("within_s must not be negative")
    rng = random.Random(seed)
    by_community: dict[str, list[SimHousehold]] = {}
    for hh in sorted(households, key=lambda hh: hh.household_id):
        by_community.setdefault(hh.community_code, []).append(hh)
    if community_code is None:
        if not by_community:
            raise ValueError("no households to choose from")
        largest = max(len(members) for members in by_community.values())
        # Prefer communities that can fill the burst; otherwise the biggest ones.
        eligible = sorted(c for c, members in by_community.items() if len(members) >= min(count, largest))
        community_code = rng.choice(eligible)
    members = by_community.get(community_code)
    if not members:
        raise ValueError(f"no simulated household in community {community_code}")
    chosen = rng.sample(members, min(count, len(members)))
    offsets = sorted(rng.uniform(0.0, within_s) for _ in chosen)
    return [PlannedLeak(after_s=round(offset, 3), household=hh) for offset, hh in zip(offsets, chosen, strict=True)]


async def run_leak_every(
    fleet: Fleet,
    *,
    interval_s: float,
    seed: int = 0,
    count: int | None = None,
    initial_delay_s: float | None = None,
) -> list[LeakHandle]:
    """Start a leak at a random idle household every ``interval_s`` seconds, ``count`` times or forever."""
    if interval_s <= 0:
        raise ValueError("interval_s must be positive")
    handles: list[LeakHandle] = []
    sequence = leak_sequence(fleet.households, seed=seed)
    await asyncio.sleep(interval_s if initial_delay_s is None else initial_delay_s)
    while True:
        household = _next_idle(fleet, sequence)
        if household is None:
            _LOGGER.warning("no idle household to leak at: every valve is closed or busy")
        else:
            handles.append(await fleet.start_leak(household.alarm_id))
            if count is not None and len(handles) >= count:
                return handles
        await asyncio.sleep(interval_s)


async def run_burst(
    fleet: Fleet,
    *,
    count: int,
    within_s: float,
    seed: int = 0,
    community_code: str | None = None,
) -> list[LeakHandle]:
    """Start leaks at ``count`` households of one community within ``within_s`` seconds."""
    idle = fleet.idle_households()
    if not idle:
        _LOGGER.warning("no idle household for a burst: every valve is closed or busy")
        return []
    plan = plan_burst(idle, count=count, within_s=within_s, seed=seed, community_code=community_code)
    _LOGGER.info("burst of %d leak(s) in community %s", len(plan), plan[0].household.community_code)
    loop = asyncio.get_running_loop()
    start = loop.time()
    handles: list[LeakHandle] = []
    for planned in plan:
        await asyncio.sleep(max(0.0, start + planned.after_s - loop.time()))
        handles.append(await fleet.start_leak(planned.household.alarm_id))
    return handles


def _next_idle(fleet: Fleet, sequence: Iterator[SimHousehold]) -> SimHousehold | None:
    idle = {hh.alarm_id for hh in fleet.idle_households()}
    if not idle:
        return None
    # Draws stay in the seed's order; busy households are passed over (bounded: some are idle).
    for household in sequence:
        if household.alarm_id in idle:
            return household
    return None  # pragma: no cover - the sequence is endless
