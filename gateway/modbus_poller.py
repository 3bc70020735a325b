"""One poller per Modbus controller: the only code that talks to it (reads, valve writes, read-backs)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from gasguard.clock import utcnow
from gasguard.protocol import (
    AlarmEvent,
    AlarmState,
    AlarmTelemetry,
    Availability,
    Channel,
    Command,
    CommandAck,
    CommandName,
    CommandResult,
    Topics,
    ValveEvent,
    ValvePosition,
    ValveTelemetry,
    encode,
)
from gateway.codecs import (
    Block,
    ChannelReading,
    CodecError,
    RegisterMap,
    decode_snapshot,
    read_plan,
)
from gateway.identity import ControllerConfig, DeviceIdentity

_LOGGER = logging.getLogger(__name__)

#: ``publish(topic, payload, retain)``; never blocks (the MQTT session queues).
Publish = Callable[[str, bytes, bool], None]
#: Called with (controller id, reading) when a channel no registered alarm is wired to changes state.
UnknownChannel = Callable[[str, "ChannelReading"], None]


class SeqSource:
    """Sequence numbers for messages the gateway originates: microseconds at start, then +1 each."""

    def __init__(self) -> None:
        self._counter = itertools.count(time.time_ns() // 1000)

    def next(self) -> int:
        """The next sequence number."""
        return next(self._counter)


class ControllerUnreachable(Exception):
    """A request to the controller failed or timed out."""


@dataclass(frozen=True, slots=True)
class PollerTiming:
    """Timeouts and backoff of one poller."""

    timeout_s: float = 1.0
    reconnect_delay_s: float = 0.5
    reconnect_delay_max_s: float = 30.0
    telemetry_interval_s: float = 60.0
    confirm_timeout_s: float = 5.0


def build_client(config: ControllerConfig, timing: PollerTiming) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
    """A pymodbus client for ``config``; pymodbus owns reconnection (doubling delay up to the cap).

    Each controller gets its own start delay (±50 %) so that a county's controllers that dropped
    together do not reconnect in lockstep.
    """
    delay = timing.reconnect_delay_s * random.uniform(0.5, 1.5)
    if config.transport == "tcp":
        assert config.host is not None
        assert config.port is not None
        return AsyncModbusTcpClient(
            config.host,
            port=config.port,
            timeout=timing.timeout_s,
            retries=0,
            reconnect_delay=delay,
            reconnect_delay_max=timing.reconnect_delay_max_s,
            name=f"modbus[{config.id}]",
        )
    assert config.serial_port is not None
    return AsyncModbusSerialClient(
        config.serial_port,
        baudrate=config.baudrate or 9600,
        timeout=timing.timeout_s,
        retries=0,
        reconnect_delay=delay,
        reconnect_delay_max=timing.reconnect_delay_max_s,
        name=f"modbus[{config.id}]",
    )


class ModbusPoller:
    """Polls one controller, publishes protocol v1 messages for its channels' devices, executes closes."""

    def __init__(
        self,
        config: ControllerConfig,
        register_map: RegisterMap,
        devices: dict[tuple[int, str], DeviceIdentity],
        *,
        topics: Topics,
        publish: Publish,
        seq: SeqSource,
        timing: PollerTiming,
        clock: Callable[[], datetime] = utcnow,
        on_unknown: UnknownChannel | None = None,
    ) -> None:
        self.config = config
        self._on_unknown = on_unknown
        self.register_map = register_map
        self.devices = devices
        self._topics = topics
        self._publish = publish
        self._seq = seq
        self._timing = timing
        self._clock = clock
        self._plan: tuple[Block, ...] = read_plan(register_map)
        self._client = build_client(config, timing)
        self._commands: asyncio.Queue[tuple[DeviceIdentity, Command]] = asyncio.Queue()
        self._last: dict[int, ChannelReading] = {}
        self._last_telemetry = float("-inf")
        self._connect_delay = timing.reconnect_delay_s
        #: ``None`` until the first poll; then whether the controller answered the last one.
        self.reachable: bool | None = None
        self.polls = 0
        self.poll_errors = 0

    def submit(self, device: DeviceIdentity, command: Command) -> None:
        """Queue a command for this controller's valve output (executed before the next poll)."""
        self._commands.put_nowait((device, command))

    async def run(self) -> None:
        """Poll until cancelled."""
        try:
            next_poll = 0.0
            loop = asyncio.get_running_loop()
            while True:
                timeout = max(0.0, next_poll - loop.time())
                item = None
                with contextlib.suppress(TimeoutError):
                    item = await asyncio.wait_for(self._commands.get(), timeout)
                if item is not None:
                    await self._execute(*item)
                    continue
                next_poll = loop.time() + self.config.poll_interval_s
                await self._poll_once()
        finally:
            self._client.close()

    async def _ensure_connected(self) -> None:
        if self._client.connected:
            return
        if getattr(self._client.ctx, "reconnect_task", None) is not None:
            # pymodbus is already reconnecting with its capped backoff after a lost connection.
            raise ControllerUnreachable("reconnecting")
        # First connection (pymodbus retries only connections it once had): same capped doubling.
        if not await self._client.connect():
            self._connect_delay = min(self._connect_delay * 2, self._timing.reconnect_delay_max_s)
            await asyncio.sleep(random.uniform(0, self._connect_delay))
            raise ControllerUnreachable("connect failed")
        self._connect_delay = self._timing.reconnect_delay_s

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        await self._ensure_connected()
        try:
            response = await getattr(self._client, method)(*args, device_id=self.config.unit_id, **kwargs)
        except (ModbusException, OSError, TimeoutError) as err:
            raise ControllerUnreachable(f"{method}: {err}") from err
        if response.isError():
            raise ControllerUnreachable(f"{method}: exception response {response}")
        return response

    async def _read_block(self, block: Block) -> list[int]:
        method = {
            "coil": "read_coils",
            "discrete": "read_discrete_inputs",
            "holding": "read_holding_registers",
            "input": "read_input_registers",
        }[block.table]
        response = await self._call(method, block.start, count=block.count)
        if block.table in {"coil", "discrete"}:
            return [int(b) for b in response.bits[: block.count]]
        return [int(r) for r in response.registers]

    async def _poll_once(self, hold_valve: int | None = None) -> tuple[ChannelReading, ...] | None:
        """Read every channel and publish what changed; ``hold_valve`` leaves one valve to a running close."""
        self.polls += 1
        try:
            blocks = {b.table: await self._read_block(b) for b in self._plan}
            readings = decode_snapshot(self.register_map, blocks)
        except ControllerUnreachable as err:
            self.poll_errors += 1
            self._set_reachable(False, str(err))
            return None
        except CodecError:
            self.poll_errors += 1
            _LOGGER.exception("controller %s: register block does not decode", self.config.id)
            return None
        self._set_reachable(True, "")
        now_mono = time.monotonic()
        telemetry_due = now_mono - self._last_telemetry >= self._timing.telemetry_interval_s
        if telemetry_due:
            self._last_telemetry = now_mono
        for reading in readings:
            self._report(reading, telemetry_due=telemetry_due, hold_valve=reading.channel == hold_valve)
        return readings

    def _report(self, reading: ChannelReading, *, telemetry_due: bool, hold_valve: bool = False) -> None:
        previous = self._last.get(reading.channel)
        if hold_valve and previous is not None:
            # The close in progress reports this valve itself, with its cmd_id.
            self._last[reading.channel] = ChannelReading(reading.channel, reading.lel, reading.state, previous.valve)
        else:
            self._last[reading.channel] = reading
        now = self._clock()
        alarm = self.devices.get((reading.channel, "alarm"))
        if alarm is None:
            if self._on_unknown is not None and alarm_state_changed(
                previous.state if previous else None, reading.state
            ):
                self._on_unknown(self.config.id, reading)
        else:
            if telemetry_due:
                self._send(
                    alarm,
                    Channel.TELEMETRY,
                    AlarmTelemetry(seq=self._seq.next(), ts=now, lel=reading.lel, state=reading.state),
                )
            if alarm_state_changed(previous.state if previous else None, reading.state):
                self._send(
                    alarm, Channel.EVENT, AlarmEvent(seq=self._seq.next(), ts=now, state=reading.state, lel=reading.lel)
                )
        valve = self.devices.get((reading.channel, "valve"))
        if valve is not None and reading.valve is not None and not hold_valve:
            if telemetry_due:
                self._send(
                    valve, Channel.TELEMETRY, ValveTelemetry(seq=self._seq.next(), ts=now, position=reading.valve)
                )
            if previous is not None and previous.valve is not None and previous.valve != reading.valve:
                self._send(valve, Channel.EVENT, ValveEvent(seq=self._seq.next(), ts=now, position=reading.valve))

    def _set_reachable(self, reachable: bool, reason: str) -> None:
        if self.reachable is reachable:
            return
        if not reachable:
            _LOGGER.warning("Modbus controller %s unreachable: %s", self.config.id, reason)
        elif self.reachable is False:
            _LOGGER.info("Modbus controller %s recovered", self.config.id)
        self.reachable = reachable
        availability = encode(Availability(status="online" if reachable else "offline", ts=self._clock()))
        self._publish(self._topics.gateway_availability(self.config.id), availability, True)
        for device in self.devices.values():
            self._publish(self._topics.device(device.device_id, Channel.AVAILABILITY), availability, True)

    def _send(self, device: DeviceIdentity, channel: Channel, message: BaseModel) -> None:
        self._publish(self._topics.device(device.device_id, channel), encode(message), False)

    async def _execute(self, device: DeviceIdentity, command: Command) -> None:
        now = self._clock()
        if command.command is not CommandName.CLOSE:
            self._send(
                device,
                Channel.COMMAND_ACK,
                CommandAck(cmd_id=command.cmd_id, ts=now, accepted=False, reason="unsupported by controller"),
            )
            return
        if command.expires_at <= now:
            self._send(
                device, Channel.COMMAND_ACK, CommandAck(cmd_id=command.cmd_id, ts=now, accepted=False, reason="expired")
            )
            return
        valve_map = self.register_map.valve
        channel = device.modbus_channel
        if valve_map is None or channel is None:
            self._send(
                device,
                Channel.COMMAND_ACK,
                CommandAck(cmd_id=command.cmd_id, ts=now, accepted=False, reason="no valve output"),
            )
            return
        out = valve_map.output
        address = self.register_map.address(out, channel)
        try:
            if out.table == "coil":
                await self._call("write_coil", address, bool(out.close_value))
            else:
                await self._call("write_register", address, out.close_value)
        except ControllerUnreachable as err:
            # No ack: the cloud resends the same cmd_id and escalates if the valve never reports closed.
            _LOGGER.warning("close %s for %s: write failed: %s", command.cmd_id, device.device_id, err)
            self._set_reachable(False, str(err))
            return
        self._send(device, Channel.COMMAND_ACK, CommandAck(cmd_id=command.cmd_id, ts=self._clock(), accepted=True))
        position = await self._read_back(channel)
        ts = self._clock()
        if position is None:
            self._send(
                device,
                Channel.COMMAND_RESULT,
                CommandResult(cmd_id=command.cmd_id, ts=ts, ok=False, detail="read-back failed"),
            )
            return
        previous = self._last.get(channel)
        if previous is not None:
            self._last[channel] = ChannelReading(channel, previous.lel, previous.state, position)
        self._send(
            device, Channel.EVENT, ValveEvent(seq=self._seq.next(), ts=ts, position=position, cmd_id=command.cmd_id)
        )
        self._send(
            device,
            Channel.COMMAND_RESULT,
            CommandResult(
                cmd_id=command.cmd_id,
                ts=ts,
                ok=position is ValvePosition.CLOSED,
                position=position,
                detail=None if position is ValvePosition.CLOSED else "valve output did not read back closed in time",
            ),
        )

    async def _read_back(self, channel: int) -> ValvePosition | None:
        """Poll until the valve's feedback says closed or the confirm timeout passes; the last read wins.

        Full polls, not just the feedback point, so that an alarm on another channel is not held up.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timing.confirm_timeout_s
        position: ValvePosition | None = None
        while True:
            readings = await self._poll_once(hold_valve=channel)
            if readings is not None:
                position = readings[channel - 1].valve
                if position is ValvePosition.CLOSED:
                    return position
            if loop.time() >= deadline:
                return position
            await asyncio.sleep(0.1)


def alarm_state_changed(previous: AlarmState | None, current: AlarmState) -> bool:
    """Whether a poll is an event: any change, and any non-normal state seen first."""
    if previous is None:
        return current is not AlarmState.NORMAL
    return previous is not current
