"""The same poller over Modbus RTU: a socat pseudo-terminal pair stands in for the RS-485 line."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gasguard.clock import utcnow
from gasguard.protocol import AlarmState, Topics, decode_event, new_close_command
from gateway.codecs import load_register_map
from gateway.identity import ControllerConfig, DeviceIdentity
from gateway.modbus_poller import ModbusPoller, PollerTiming, SeqSource
from simulator.modbus_devices import SimulatedController
from tests.gateway.conftest import wait_for


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    if shutil.which("socat") is None:
        pytest.skip("socat is not installed")
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    proc = subprocess.Popen(
        ["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"], stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(100):
            if a.exists() and b.exists():
                break
            proc.poll()
            if proc.returncode is not None:
                raise RuntimeError("socat exited")
            time.sleep(0.05)
        yield str(a), str(b)
    finally:
        proc.terminate()
        proc.wait(5)


async def test_rtu_alarm_and_close_with_read_back(pty_pair: tuple[str, str]) -> None:
    controller_side, gateway_side = pty_pair
    rmap = load_register_map("GG-MC4")
    sim = SimulatedController(rmap, unit_id=3, actuation_s=0.2)
    topics = Topics("rtu")
    alarm = DeviceIdentity("A-9", "alarm", "m", "s9", modbus_controller="RTU-1", modbus_channel=1, modbus_point="alarm")
    valve = DeviceIdentity(
        "V-9", "shutoff_valve", "m", "v9", modbus_controller="RTU-1", modbus_channel=1, modbus_point="valve"
    )
    out: list[tuple[str, bytes]] = []
    config = ControllerConfig("RTU-1", "GG-MC4", "rtu", None, None, gateway_side, 9600, 3, 0.1)
    async with sim.serve_rtu(controller_side):
        poller = ModbusPoller(
            config,
            rmap,
            {(1, "alarm"): alarm, (1, "valve"): valve},
            topics=topics,
            publish=lambda t, p, r: out.append((t, p)),
            seq=SeqSource(),
            timing=PollerTiming(timeout_s=1.0, confirm_timeout_s=3.0),
        )
        task = asyncio.create_task(poller.run())
        try:
            sim.set_channel(1, lel=18.0, state=AlarmState.LOW_ALARM)
            command = new_close_command(utcnow(), 60)
            poller.submit(valve, command)

            async def done() -> bool:
                return any(t == "rtu/v1/dev/V-9/cmd/result" for t, _ in out) and any(
                    t == "rtu/v1/dev/A-9/event" for t, _ in out
                )

            await wait_for(done, 15)
        finally:
            task.cancel()
    [result] = [p for t, p in out if t == "rtu/v1/dev/V-9/cmd/result"]
    assert b'"ok":true' in result and b'"position":"closed"' in result
    [event] = [decode_event(p) for t, p in out if t == "rtu/v1/dev/A-9/event"]
    assert event.state == "low_alarm" and event.lel == pytest.approx(18.0)
    assert sim.valve_closed(1)
