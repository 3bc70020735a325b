"""Scenario planning is a pure function of households and seed; the runners drive a real fleet."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from gasguard.protocol import AlarmState, Channel, Topics, ValvePosition, decode_event
from gasguard.settings import MqttEndpoint
from simulator.fleet import Fleet
from simulator.household import LeakProfile
from simulator.scenarios import leak_sequence, plan_burst, run_burst, run_leak_every
from tests.simulator.conftest import Recorder, make_households


def test_leak_sequence_is_determined_by_the_seed() -> None:
    households = make_households(50)
    first = [hh.household_id for hh in itertools.islice(leak_sequence(households, seed=7), 20)]
    again = [hh.household_id for hh in itertools.islice(leak_sequence(list(reversed(households)), seed=7), 20)]
    other = [hh.household_id for hh in itertools.islice(leak_sequence(households, seed=8), 20)]
    assert first == again
    assert first != other
    assert set(first) <= {hh.household_id for hh in households}


def test_leak_sequence_needs_households() -> None:
    with pytest.raises(ValueError, match="no households"):
        next(leak_sequence([], seed=0))


def test_burst_stays_in_one_community_and_window() -> None:
    households = make_households(60, communities=4)
    plan = plan_burst(households, count=5, within_s=10.0, seed=3)
    assert len(plan) == 5
    assert len({p.household.community_code for p in plan}) == 1
    assert len({p.household.household_id for p in plan}) == 5
    offsets = [p.after_s for p in plan]
    assert offsets == sorted(offsets)
    assert all(0.0 <= offset <= 10.0 for offset in offsets)
    assert plan == plan_burst(list(reversed(households)), count=5, within_s=10.0, seed=3)


def test_burst_in_a_chosen_community_is_capped_at_its_size() -> None:
    households = make_households(8, communities=4)  # two per community
    plan = plan_burst(households, count=5, within_s=1.0, seed=0, community_code="150626100003")
    assert sorted(p.household.household_id for p in plan) == [3, 7]


def test_burst_rejects_unknown_community() -> None:
    with pytest.raises(ValueError, match="no simulated household"):
        plan_burst(make_households(4), count=2, within_s=1.0, seed=0, community_code="150626999001")


FAST_LEAK = LeakProfile(peak_lel=40.0, ramp_s=0.3, decay_s=0.3)


async def test_run_burst_leaks_at_households_of_one_community(
    mqtt_endpoint: MqttEndpoint, topics: Topics, recorder: Recorder
) -> None:
    households = make_households(12, communities=3)
    async with Fleet(
        mqtt_endpoint,
        topics,
        households=households,
        telemetry_period_s=None,
        leak_profile=FAST_LEAK,
        leak_sample_s=0.05,
    ) as fleet:
        handles = await run_burst(fleet, count=3, within_s=0.2, seed=5)
        assert len({h.household.household_id for h in handles}) == 3
        assert len({h.household.community_code for h in handles}) == 1

        def all_high() -> bool:
            return all(
                any(
                    decode_event(p).state is AlarmState.HIGH_ALARM
                    for p in recorder.device(h.household.alarm_id, Channel.EVENT)
                )
                for h in handles
            )

        await recorder.wait_for(all_high)
        leaked = {h.household.alarm_id for h in handles}
        quiet = [hh.alarm_id for hh in households if hh.alarm_id not in leaked]
        assert all(fleet.alarm_state(alarm_id) is AlarmState.NORMAL for alarm_id in quiet)
        assert all(not recorder.device(alarm_id, Channel.EVENT) for alarm_id in quiet)


async def test_run_leak_every_skips_busy_households(
    mqtt_endpoint: MqttEndpoint, topics: Topics, recorder: Recorder
) -> None:
    households = make_households(4)
    async with Fleet(
        mqtt_endpoint,
        topics,
        households=households,
        telemetry_period_s=None,
        valve_close_s=0.1,
        leak_profile=FAST_LEAK,
        leak_sample_s=0.05,
    ) as fleet:
        # Close two valves first (as alerting would have): those households are not idle any more.
        for hh in households[:2]:
            recorder.send_close(hh.valve_id)
        async with asyncio.timeout(5):
            for hh in households[:2]:
                await fleet.wait_valve_position(hh.valve_id, ValvePosition.CLOSED)
        handles = await run_leak_every(fleet, interval_s=0.05, seed=1, count=2, initial_delay_s=0)
    assert sorted(h.household.household_id for h in handles) == [3, 4]
