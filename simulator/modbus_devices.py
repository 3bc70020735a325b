"""Simulated Modbus gas alarm controllers: a pymodbus TCP server per controller, per-model register maps.

A controller answers like the real thing: concentration and status bits per channel, a valve output
(coil or register) whose limit-switch feedback follows after the actuator's travel time, a valve that
can be jammed, slow answers (timeouts) and a controller that stops answering altogether.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

from gasguard.protocol import AlarmState
from gateway.codecs import RegisterMap, Table, encode_value

_LOGGER = logging.getLogger(__name__)

_READ_TABLE: dict[int, Table] = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}
_WRITE_TABLE: dict[int, Table] = {5: "coil", 15: "coil", 6: "holding", 16: "holding"}
_STATE_BIT = {
    AlarmState.FAULT: "fault",
    AlarmState.LOW_ALARM: "low_alarm",
    AlarmState.HIGH_ALARM: "high_alarm",
    AlarmState.END_OF_LIFE: "sensor_end_of_life",
}


class _ControllerContext(ModbusServerContext):
    """A pymodbus server context backed by the simulated controller's tables."""

    def __init__(self, controller: SimulatedController) -> None:  # deliberately no super(): no datastore blocks
        self.old_simulator = True
        self.simdevices = []
        self._controller = controller

    def device_ids(self) -> list[int]:
        """The one unit id this controller answers to."""
        return [self._controller.unit_id]

    async def async_getValues(self, device_id: int, func_code: int, address: int, count: int = 1) -> Any:
        """Serve a read (or the read-back after a write)."""
        await self._controller.answer_gate()
        table = _READ_TABLE.get(func_code) or _WRITE_TABLE.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        values = [self._controller.tables[table].get(address + i, 0) for i in range(count)]
        return [bool(v) for v in values] if table in {"coil", "discrete"} else values

    async def async_setValues(self, device_id: int, func_code: int, address: int, values: Any) -> Any:
        """Serve a write."""
        await self._controller.answer_gate()
        table = _WRITE_TABLE.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        for offset, value in enumerate(values if isinstance(values, Sequence) else [values]):
            self._controller.written(table, address + offset, int(value))
        return None


class SimulatedController:
    """One multi-channel controller with per-channel alarms and valves, following ``register_map``."""

    def __init__(self, register_map: RegisterMap, *, unit_id: int = 1, actuation_s: float = 0.2) -> None:
        self.register_map = register_map
        self.unit_id = unit_id
        self.actuation_s = actuation_s
        self.tables: dict[Table, dict[int, int]] = {"coil": {}, "discrete": {}, "holding": {}, "input": {}}
        self.jammed: set[int] = set()
        self.writes: list[tuple[Table, int, int]] = []
        self.delay_s = 0.0
        self._answering = asyncio.Event()
        self._answering.set()
        self._tasks: set[asyncio.Task[None]] = set()
        for channel in range(1, register_map.channels + 1):
            self.set_channel(channel, lel=0.0, state=AlarmState.NORMAL)

    # --- behaviour ----------------------------------------------------------------------------------

    def set_channel(self, channel: int, *, lel: float, state: AlarmState) -> None:
        """Set a channel's concentration and alarm state as the controller's sensor would."""
        rmap = self.register_map
        conc = rmap.concentration
        for i, word in enumerate(encode_value(lel, conc)):
            self.tables[conc.table][rmap.address(conc, channel) + i] = word
        status = rmap.status
        bit = _STATE_BIT.get(state)
        raw = 1 << status.bits[bit] if bit is not None and bit in status.bits else 0
        self.tables[status.table][rmap.address(status, channel)] = raw

    def valve_closed(self, channel: int) -> bool:
        """Whether the channel's valve feedback reads closed."""
        valve = self.register_map.valve
        assert valve is not None
        fb = valve.feedback
        return self.tables[fb.table].get(self.register_map.address(fb, channel), 0) == fb.closed_value

    def stop_answering(self) -> None:
        """Receive requests but never answer them (a hung controller or a cut RS-485 line behind a converter)."""
        self._answering.clear()

    def resume_answering(self) -> None:
        """Answer again."""
        self._answering.set()

    async def answer_gate(self) -> None:
        """Hold a request while the controller is silent, and for the configured delay."""
        await self._answering.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)

    def written(self, table: Table, address: int, value: int) -> None:
        """Apply a write; a close on a valve output moves the feedback after the actuation time."""
        self.writes.append((table, address, value))
        self.tables[table][address] = value
        valve = self.register_map.valve
        if valve is None:
            return
        for channel in range(1, self.register_map.channels + 1):
            out = valve.output
            if out.table == table and self.register_map.address(out, channel) == address and value == out.close_value:
                if channel in self.jammed:
                    _LOGGER.info("simulated controller: valve %d jammed, stays open", channel)
                    continue
                task = asyncio.get_running_loop().create_task(self._actuate(channel))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _actuate(self, channel: int) -> None:
        await asyncio.sleep(self.actuation_s)
        valve = self.register_map.valve
        assert valve is not None
        fb = valve.feedback
        self.tables[fb.table][self.register_map.address(fb, channel)] = fb.closed_value

    # --- serving ------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def serve_tcp(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[int]:
        """Serve Modbus TCP on ``host:port`` while the context is open; yields the bound port."""
        server = ModbusTcpServer(_ControllerContext(self), address=(host, port))
        await server.serve_forever(background=True)
        try:
            transport: Any = server.transport
            yield int(transport.sockets[0].getsockname()[1]) if port == 0 else port
        finally:
            self._answering.set()
            await server.shutdown()  # type: ignore[no-untyped-call]
            for task in list(self._tasks):
                task.cancel()

    @contextlib.asynccontextmanager
    async def serve_rtu(self, serial_port: str, *, baudrate: int = 9600) -> AsyncIterator[None]:
        """Serve Modbus RTU on a serial device (a pty of a socat pair in tests) while the context is open."""
        server = ModbusSerialServer(_ControllerContext(self), port=serial_port, baudrate=baudrate)
        await server.serve_forever(background=True)
        try:
            yield
        finally:
            self._answering.set()
            await server.shutdown()  # type: ignore[no-untyped-call]
            for task in list(self._tasks):
                task.cancel()
