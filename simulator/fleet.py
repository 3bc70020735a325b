"""Runs many virtual NG households against an MQTT broker, speaking protocol v1.

A `Fleet` is an async context manager. Entering it connects (one connection for all devices, or one per
device), publishes availability, and starts one background task that runs a TaskGroup owning every
loop: periodic telemetry, connection watching, running leaks and valve motions. Leaving it cancels
that task, says goodbye on the availability topics and disconnects.

Example::

    async with Fleet(endpoint, topics, households=households, telemetry_period_s=60) as fleet:
        leak = await fleet.start_leak(households[0].alarm_id)
        async with asyncio.timeout(30):
            await leak.wait_valve_closed()  # needs GasGuard's alerting service running
        print(fleet.stats().sent)
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Self

from pydantic import ValidationError

from gasguard.clock import utcnow
from gasguard.mqtt import Announcement, MqttSession
from gasguard.protocol import (
    ALARMING_STATES,
    QOS,
    AlarmState,
    Availability,
    Channel,
    Command,
    Radio,
    TopicError,
    Topics,
    ValvePosition,
    encode,
    is_valid_device_id,
)
from gasguard.settings import MqttEndpoint
from simulator.household import (
    DeviceMessage,
    GasLeak,
    LeakPhase,
    LeakProfile,
    Outgoing,
    SimHousehold,
    ValveFaults,
    VirtualAlarm,
    VirtualValve,
)

_LOGGER = logging.getLogger(__name__)
# gmqtt logs every connect and SUBACK at INFO; a child logger lets a large fleet silence them alone.
_MQTT_LOGGER = logging.getLogger(f"{__name__}.mqtt")

_ONLINE = encode(Availability(status="online"))
_OFFLINE = encode(Availability(status="offline"))
# Never sleep shorter than this between telemetry batches: at high rates the loop publishes everything
# that fell due in the meantime instead of waking up once per message.
_MIN_TELEMETRY_SLEEP_S = 0.002
_WATCH_INTERVAL_S = 0.2
_GOODBYE_TIMEOUT_S = 5.0
# Telemetry is skipped (and counted) while this many messages already wait for the broker's window.
_MAX_TELEMETRY_BACKLOG = 100_000


class ConnectionMode(enum.StrEnum):
    """How the fleet's devices reach the broker."""

    #: One connection carries every device, like a gateway or bridge; its last will is on
    #: ``topics.gateway_availability(sim_id)`` and each device gets a retained ``online`` birth.
    MULTIPLEXED = "multiplexed"
    #: One connection per device, each with its own last will on its own availability topic.
    PER_DEVICE = "per_device"


@dataclass(frozen=True, slots=True)
class FleetStats:
    """What the fleet has published and received so far (availability counts only its own publishes)."""

    telemetry: int
    events: int
    availability: int
    acks: int
    results: int
    commands_received: int
    commands_invalid: int
    telemetry_skipped: int
    reconnects: int

    @property
    def sent(self) -> int:
        """Every message the fleet published."""
        return self.telemetry + self.events + self.availability + self.acks + self.results


class LeakHandle:
    """A leak started at one household, with the event-loop times (``loop.time()``) of what followed.

    The times are taken on the simulator's side of the bus, so ``alarm_to_closed_s`` is the latency a
    household would see: from the alarm leaving the device to its valve reporting closed (which
    includes the valve's own closing time).
    """

    def __init__(self, household: SimHousehold, leak: GasLeak) -> None:
        self.household = household
        self.leak = leak
        self.low_alarm_at: float | None = None
        self.high_alarm_at: float | None = None
        self.first_command_at: float | None = None
        self.valve_closed_at: float | None = None
        self.recovered_at: float | None = None
        self._closed = asyncio.Event()
        self._over = asyncio.Event()

    @property
    def started_at(self) -> float:
        """When the gas started to flow."""
        return self.leak.started_at

    @property
    def alarm_at(self) -> float | None:
        """When the alarm first reported an alarm state."""
        times = [t for t in (self.low_alarm_at, self.high_alarm_at) if t is not None]
        return min(times) if times else None

    @property
    def alarm_to_command_s(self) -> float | None:
        """Seconds from the first alarm event to the first command reaching the valve."""
        if self.alarm_at is None or self.first_command_at is None:
            return None
        return self.first_command_at - self.alarm_at

    @property
    def alarm_to_closed_s(self) -> float | None:
        """Seconds from the first alarm event to the valve reporting closed."""
        if self.alarm_at is None or self.valve_closed_at is None:
            return None
        return self.valve_closed_at - self.alarm_at

    @property
    def over(self) -> bool:
        """Whether the leak has ended and the alarm recovered."""
        return self._over.is_set()

    async def wait_valve_closed(self) -> None:
        """Wait until the household's valve reports closed (bound it with `asyncio.timeout`)."""
        await self._closed.wait()

    async def wait_over(self) -> None:
        """Wait until the leak has ended and the alarm has recovered (bound it with `asyncio.timeout`)."""
        await self._over.wait()

    def _note_alarm(self, state: AlarmState, at: float) -> None:
        if state is AlarmState.LOW_ALARM and self.low_alarm_at is None:
            self.low_alarm_at = at
        elif state is AlarmState.HIGH_ALARM and self.high_alarm_at is None:
            self.high_alarm_at = at
        elif state is AlarmState.RECOVERED:
            self.recovered_at = at

    def _note_command(self, at: float) -> None:
        if self.first_command_at is None:
            self.first_command_at = at

    def _note_closed(self, at: float) -> None:
        if self.valve_closed_at is None:
            self.valve_closed_at = at
        self._closed.set()

    def _finish(self) -> None:
        self._over.set()


class _State(enum.Enum):
    UNOPENED = 1
    OPEN = 2
    CLOSED = 3


def _radio(device_id: str) -> Radio:
    # A stable, plausible signal level per device (crc32, not hash(): the latter is salted per process).
    return Radio(rssi=-55 - zlib.crc32(device_id.encode()) % 40)


class Fleet:
    """Virtual households on one broker; reusable for one run only (a closed fleet cannot reopen).

    Args:
        endpoint: the broker.
        topics: protocol topics under the root to use.
        households: the households to simulate (alarm and valve ids must be unique).
        mode: one connection for all devices, or one per device.
        sim_id: names the fleet in client ids, task names and the gateway availability topic.
        telemetry_period_s: every device sends telemetry once per period, spread evenly over it;
            None sends none (tests that only exercise commands).
        valve_close_s: how long a valve takes from ``closing`` to ``closed``.
        valve_faults: faults per valve id (`ValveFaults`); change later with `set_valve_faults`.
        leak_profile: default shape of a leak started with `start_leak`.
        leak_sample_s: how often a leaking household's alarm samples the air.
        valve_cuts_leak: a closed valve stops the gas, so the concentration decays and the alarm recovers.
        seq_start: first sequence number of every device; defaults to the current time in ms, so a
            restarted simulator never reuses sequence numbers a consumer has already seen.
    """

    def __init__(
        self,
        endpoint: MqttEndpoint,
        topics: Topics,
        *,
        households: Sequence[SimHousehold],
        mode: ConnectionMode = ConnectionMode.MULTIPLEXED,
        sim_id: str = "sim",
        telemetry_period_s: float | None = 60.0,
        valve_close_s: float = 2.0,
        valve_faults: Mapping[str, ValveFaults] | None = None,
        leak_profile: LeakProfile | None = None,
        leak_sample_s: float = 0.25,
        valve_cuts_leak: bool = True,
        seq_start: int | None = None,
    ) -> None:
        if not is_valid_device_id(sim_id):
            raise ValueError(f"sim_id must be usable as a topic level: {sim_id!r}")
        if telemetry_period_s is not None and telemetry_period_s <= 0:
            raise ValueError("telemetry_period_s must be positive (or None for no telemetry)")
        if leak_sample_s <= 0:
            raise ValueError("leak_sample_s must be positive")
        self._endpoint = endpoint
        self._topics = topics
        self._mode = mode
        self._sim_id = sim_id
        self._telemetry_period_s = telemetry_period_s
        self._leak_profile = leak_profile or LeakProfile()
        self._leak_sample_s = leak_sample_s
        self._valve_cuts_leak = valve_cuts_leak
        seq = int(utcnow().timestamp() * 1000) if seq_start is None else seq_start

        self._households = tuple(households)
        self._by_alarm: dict[str, SimHousehold] = {}
        self._by_valve: dict[str, SimHousehold] = {}
        self._alarms: dict[str, VirtualAlarm] = {}
        self._valves: dict[str, VirtualValve] = {}
        faults = dict(valve_faults or {})
        for hh in self._households:
            for device_id in (hh.alarm_id, hh.valve_id):
                if device_id in self._alarms or device_id in self._valves:
                    raise ValueError(f"device {device_id!r} appears twice in the fleet")
                if not is_valid_device_id(device_id):
                    raise ValueError(f"invalid device id {device_id!r}")
            self._by_alarm[hh.alarm_id] = hh
            self._by_valve[hh.valve_id] = hh
            self._alarms[hh.alarm_id] = VirtualAlarm(
                hh.alarm_id,
                low_alarm_lel=hh.low_alarm_lel,
                high_alarm_lel=hh.high_alarm_lel,
                seq=seq,
                radio=_radio(hh.alarm_id),
            )
            self._valves[hh.valve_id] = VirtualValve(
                hh.valve_id,
                close_delay_s=valve_close_s,
                faults=faults.pop(hh.valve_id, None),
                seq=seq,
                radio=_radio(hh.valve_id),
            )
        if faults:
            raise ValueError(f"faults given for valves not in the fleet: {sorted(faults)}")

        self._gateway, self._sessions = self._build_sessions()
        self._counts: dict[Channel, int] = dict.fromkeys(Channel, 0)
        self._commands_received = 0
        self._commands_invalid = 0
        self._telemetry_skipped = 0
        self._reconnects = 0
        self._leaks: dict[str, LeakHandle] = {}
        self._moving: set[str] = set()
        self._position_changed: dict[str, asyncio.Event] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._ready = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._state = _State.UNOPENED

    # ----------------------------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Self:
        if self._state is not _State.UNOPENED:
            raise RuntimeError("a Fleet cannot be reopened once it has been used")
        self._state = _State.OPEN
        runner = asyncio.create_task(self._run(), name=f"simulator[{self._sim_id}]")
        self._runner = runner
        ready = asyncio.create_task(self._ready.wait(), name=f"simulator[{self._sim_id}].ready")
        try:
            await asyncio.wait({ready, runner}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            await self._stop()
            raise
        finally:
            ready.cancel()
        if not self._ready.is_set():
            self._state = _State.CLOSED
            runner.result()  # raises what stopped the fleet while starting
            raise RuntimeError("the fleet stopped while starting")
        _LOGGER.info(
            "fleet %s up: %d household(s), %s, %d connection(s)",
            self._sim_id,
            len(self._households),
            self._mode.value,
            len(self._connections()),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        failure = await self._stop()
        if failure is None:
            return
        if exc is None:
            raise failure
        _LOGGER.error("fleet %s had failed as well", self._sim_id, exc_info=failure)

    async def wait(self) -> None:
        """Run until the fleet is cancelled; raises if one of its tasks fails."""
        runner = self._require_running()
        await asyncio.shield(runner)

    async def _stop(self) -> BaseException | None:
        self._state = _State.CLOSED
        runner = self._runner
        if runner is None:
            return None
        if not runner.done():
            runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({runner})
        if runner.cancelled():
            return None
        return runner.exception()

    async def _run(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            for session in self._connections():
                await stack.enter_async_context(session)
            try:
                async with asyncio.TaskGroup() as tg:
                    self._tg = tg
                    if self._mode is ConnectionMode.MULTIPLEXED:
                        self._announce_devices(_ONLINE)
                    tg.create_task(self._watch_loop(), name=f"simulator[{self._sim_id}].watch_loop")
                    if self._telemetry_period_s is not None and self._households:
                        tg.create_task(self._telemetry_loop(), name=f"simulator[{self._sim_id}].telemetry_loop")
                    self._ready.set()
            finally:
                self._tg = None
                # A clean stop suppresses last wills, so say goodbye for every device ourselves.
                if self._gateway is not None and self._gateway.connected:
                    self._announce_devices(_OFFLINE)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_GOODBYE_TIMEOUT_S):
                            await self._gateway.flush()

    def _build_sessions(self) -> tuple[MqttSession | None, dict[str, MqttSession]]:
        root = self._topics.root
        device_ids = [*self._alarms, *self._valves]
        if self._mode is ConnectionMode.MULTIPLEXED:
            gateway = MqttSession(
                self._endpoint,
                client_id=f"{root}-{self._sim_id}",
                # One wildcard subscription instead of one per valve; commands for devices that are not
                # ours are ignored in the handler.
                subscriptions=[(self._topics.all_devices(Channel.COMMAND), QOS[Channel.COMMAND])],
                handler=self._on_message,
                announcement=Announcement(self._topics.gateway_availability(self._sim_id), _ONLINE, _OFFLINE),
                logger=_MQTT_LOGGER,
            )
            return gateway, dict.fromkeys(device_ids, gateway)
        sessions: dict[str, MqttSession] = {}
        for device_id in device_ids:
            is_valve = device_id in self._valves
            subscriptions = (
                [(self._topics.device(device_id, Channel.COMMAND), QOS[Channel.COMMAND])] if is_valve else []
            )
            sessions[device_id] = MqttSession(
                self._endpoint,
                client_id=f"{root}-{self._sim_id}-{device_id}",
                subscriptions=subscriptions,
                handler=self._on_message if is_valve else None,
                announcement=Announcement(self._topics.device(device_id, Channel.AVAILABILITY), _ONLINE, _OFFLINE),
                logger=_MQTT_LOGGER,
            )
        return None, sessions

    def _connections(self) -> list[MqttSession]:
        if self._gateway is not None:
            return [self._gateway]
        return list(self._sessions.values())

    def _require_running(self) -> asyncio.Task[None]:
        runner = self._runner
        if self._state is not _State.OPEN or runner is None:
            raise RuntimeError("the fleet is not running (use 'async with Fleet(...)')")
        if runner.done():
            raise RuntimeError("the fleet has stopped") from (None if runner.cancelled() else runner.exception())
        return runner

    # ------------------------------------------------------------------------------------- observation

    @property
    def sim_id(self) -> str:
        """The fleet's name (client ids, gateway availability topic)."""
        return self._sim_id

    @property
    def mode(self) -> ConnectionMode:
        """How devices reach the broker."""
        return self._mode

    @property
    def households(self) -> tuple[SimHousehold, ...]:
        """The simulated households, in the order given."""
        return self._households

    @property
    def connected(self) -> bool:
        """Whether every connection of the fleet is up."""
        return all(session.connected for session in self._connections())

    @property
    def backlog(self) -> int:
        """Messages published but still waiting for the broker's in-flight window."""
        return sum(session.backlog for session in self._connections())

    async def flush(self) -> None:
        """Wait until the broker has acknowledged everything published so far (bound it with a timeout)."""
        self._require_running()
        for session in self._connections():
            await session.flush()

    def stats(self) -> FleetStats:
        """A snapshot of the counters."""
        return FleetStats(
            telemetry=self._counts[Channel.TELEMETRY],
            events=self._counts[Channel.EVENT],
            availability=self._counts[Channel.AVAILABILITY],
            acks=self._counts[Channel.COMMAND_ACK],
            results=self._counts[Channel.COMMAND_RESULT],
            commands_received=self._commands_received,
            commands_invalid=self._commands_invalid,
            telemetry_skipped=self._telemetry_skipped,
            reconnects=self._reconnects,
        )

    def valve_position(self, valve_id: str) -> ValvePosition:
        """The position a valve currently reports."""
        return self._valve(valve_id).position

    def valve_positions(self) -> dict[str, ValvePosition]:
        """Every valve's current position, by valve id."""
        return {valve_id: valve.position for valve_id, valve in self._valves.items()}

    def alarm_state(self, alarm_id: str) -> AlarmState:
        """The state an alarm currently reports."""
        return self._alarm(alarm_id).state

    def alarm_lel(self, alarm_id: str) -> float:
        """The concentration an alarm last measured, in %LEL."""
        return self._alarm(alarm_id).lel

    def leak(self, alarm_id: str) -> LeakHandle | None:
        """The running leak at this alarm's household, if any."""
        return self._leaks.get(alarm_id)

    def idle_households(self) -> list[SimHousehold]:
        """Households with an open valve, a quiet alarm and no running leak (candidates for a new leak)."""
        return [
            hh
            for hh in self._households
            if hh.alarm_id not in self._leaks
            and self._valves[hh.valve_id].position is ValvePosition.OPEN
            and self._alarms[hh.alarm_id].state is AlarmState.NORMAL
        ]

    async def wait_valve_position(self, valve_id: str, position: ValvePosition) -> None:
        """Wait until a valve reports ``position`` (bound it with `asyncio.timeout`)."""
        valve = self._valve(valve_id)
        while valve.position is not position:
            await self._position_changed.setdefault(valve_id, asyncio.Event()).wait()

    # ----------------------------------------------------------------------------------------- driving

    async def start_leak(self, alarm_id: str, *, profile: LeakProfile | None = None) -> LeakHandle:
        """Start a leak at the household of ``alarm_id``; returns the running leak if there is one."""
        self._require_running()
        household = self._household_of_alarm(alarm_id)
        if (running := self._leaks.get(alarm_id)) is not None:
            return running
        tg = self._task_group()
        leak = GasLeak(profile or self._leak_profile, started_at=asyncio.get_running_loop().time())
        handle = LeakHandle(household, leak)
        self._leaks[alarm_id] = handle
        tg.create_task(self._leak_loop(handle), name=f"simulator[{self._sim_id}].leak[{alarm_id}]")
        _LOGGER.info("leak started at household %s (alarm %s)", household.household_id, alarm_id)
        return handle

    def stop_leak(self, alarm_id: str) -> None:
        """Stop the gas at this household (the resident turned the appliance off); the air then clears."""
        handle = self._leaks.get(alarm_id)
        if handle is not None:
            handle.leak.cut_off(asyncio.get_running_loop().time())

    def set_valve_faults(self, valve_id: str, faults: ValveFaults) -> None:
        """Give a valve new faults (or `ValveFaults()` to heal it)."""
        self._valve(valve_id).faults = faults

    def reopen_valve_by_hand(self, valve_id: str) -> None:
        """A technician reopened the valve on site; it reports ``open`` again."""
        self._require_running()
        valve = self._valve(valve_id)
        self._publish_all(valve.reopen_by_hand(utcnow()))
        self._position_changed_now(valve_id)

    def publish_telemetry_round(self) -> int:
        """Publish one telemetry message from every device now; returns how many were published."""
        self._require_running()
        now = utcnow()
        sent = 0
        for device in self._devices_in_telemetry_order():
            sent += self._send_telemetry(device, now)
        return sent

    # --------------------------------------------------------------------------------------- the loops

    async def _telemetry_loop(self) -> None:
        """Each device reports once per period; reports are spread evenly so the broker sees a steady rate."""
        assert self._telemetry_period_s is not None
        devices = self._devices_in_telemetry_order()
        count = len(devices)
        interval = self._telemetry_period_s / count
        loop = asyncio.get_running_loop()
        start = loop.time()
        slot = 0  # the next report due, counted from the start over all periods
        while True:
            due = int((loop.time() - start) / interval)
            if due - slot > count:
                _LOGGER.warning(
                    "fleet %s is %d telemetry reports behind schedule; skipping them", self._sim_id, due - slot
                )
                slot = due
            now = utcnow()
            while slot <= due:
                self._send_telemetry(devices[slot % count], now)
                slot += 1
            await asyncio.sleep(max(start + slot * interval - loop.time(), _MIN_TELEMETRY_SLEEP_S))

    async def _watch_loop(self) -> None:
        """Count reconnects and, in multiplexed mode, republish the device births after each one."""
        sessions = self._connections()
        was_up = [session.connected for session in sessions]
        while True:
            await asyncio.sleep(_WATCH_INTERVAL_S)
            for index, session in enumerate(sessions):
                up = session.connected
                if up and not was_up[index]:
                    self._reconnects += 1
                    if self._mode is ConnectionMode.MULTIPLEXED:
                        self._announce_devices(_ONLINE)
                was_up[index] = up

    async def _leak_loop(self, handle: LeakHandle) -> None:
        household = handle.household
        alarm = self._alarms[household.alarm_id]
        valve = self._valves[household.valve_id]
        loop = asyncio.get_running_loop()
        try:
            while True:
                at = loop.time()
                if self._valve_cuts_leak and valve.position is ValvePosition.CLOSED:
                    handle.leak.cut_off(at)
                for event in alarm.measure(handle.leak.lel_at(at), utcnow()):
                    self._publish(alarm.device_id, Channel.EVENT, event)
                    handle._note_alarm(event.state, at)
                if handle.leak.phase(at) is LeakPhase.OVER and alarm.state not in ALARMING_STATES:
                    return
                await asyncio.sleep(self._leak_sample_s)
        finally:
            if self._leaks.get(household.alarm_id) is handle:
                del self._leaks[household.alarm_id]
            handle._finish()

    async def _motion_loop(self, valve: VirtualValve) -> None:
        try:
            while (deadline := valve.motion_deadline) is not None:
                await asyncio.sleep(max(0.0, (deadline - utcnow()).total_seconds()))
                out = valve.tick(utcnow())
                if out:
                    self._publish_all(out)
                    self._position_changed_now(valve.device_id)
        finally:
            self._moving.discard(valve.device_id)

    # -------------------------------------------------------------------------------------- the wire

    async def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            parsed = self._topics.parse(topic)
        except TopicError:
            return
        valve = self._valves.get(parsed.device_id)
        if parsed.channel is not Channel.COMMAND or valve is None:
            return
        self._commands_received += 1
        try:
            command = Command.model_validate_json(payload)
        except ValidationError as err:
            self._commands_invalid += 1
            _LOGGER.warning("valve %s got an invalid command: %s", valve.device_id, err.errors(include_input=False))
            return
        household = self._by_valve[valve.device_id]
        if (handle := self._leaks.get(household.alarm_id)) is not None:
            handle._note_command(asyncio.get_running_loop().time())
        before = valve.position
        self._publish_all(valve.on_command(command, utcnow()))
        if valve.position is not before:
            self._position_changed_now(valve.device_id)
        if valve.motion_deadline is not None and valve.device_id not in self._moving:
            tg = self._tg
            if tg is None:
                return  # shutting down
            self._moving.add(valve.device_id)
            tg.create_task(self._motion_loop(valve), name=f"simulator[{self._sim_id}].valve[{valve.device_id}].motion")

    def _position_changed_now(self, valve_id: str) -> None:
        valve = self._valves[valve_id]
        if valve.position is ValvePosition.CLOSED:
            household = self._by_valve[valve_id]
            if (handle := self._leaks.get(household.alarm_id)) is not None:
                handle._note_closed(asyncio.get_running_loop().time())
        if (event := self._position_changed.pop(valve_id, None)) is not None:
            event.set()

    def _send_telemetry(self, device: VirtualAlarm | VirtualValve, now: datetime) -> int:
        session = self._sessions[device.device_id]
        if not session.connected or session.backlog >= _MAX_TELEMETRY_BACKLOG:
            # A device without a link cannot report, and a link that cannot keep up does not queue
            # heartbeats forever; consumers see the gap, as they would in the field.
            self._telemetry_skipped += 1
            return 0
        self._publish(device.device_id, Channel.TELEMETRY, device.telemetry(now))
        return 1

    def _publish_all(self, out: Sequence[Outgoing]) -> None:
        for item in out:
            self._publish(item.device_id, item.channel, item.message)

    def _publish(self, device_id: str, channel: Channel, message: DeviceMessage) -> None:
        retain = channel is Channel.AVAILABILITY
        self._sessions[device_id].publish(
            self._topics.device(device_id, channel), encode(message), qos=QOS[channel], retain=retain
        )
        self._counts[channel] += 1

    def _announce_devices(self, payload: bytes) -> None:
        assert self._gateway is not None, "device births are published by the gateway connection"
        session = self._gateway
        for device_id in [*self._alarms, *self._valves]:
            session.publish(
                self._topics.device(device_id, Channel.AVAILABILITY),
                payload,
                qos=QOS[Channel.AVAILABILITY],
                retain=True,
            )
            self._counts[Channel.AVAILABILITY] += 1

    # ------------------------------------------------------------------------------------------ lookups

    def _devices_in_telemetry_order(self) -> list[VirtualAlarm | VirtualValve]:
        devices: list[VirtualAlarm | VirtualValve] = []
        for hh in self._households:
            devices.extend((self._alarms[hh.alarm_id], self._valves[hh.valve_id]))
        return devices

    def _task_group(self) -> asyncio.TaskGroup:
        if self._tg is None:
            raise RuntimeError("the fleet is not running")
        return self._tg

    def _household_of_alarm(self, alarm_id: str) -> SimHousehold:
        try:
            return self._by_alarm[alarm_id]
        except KeyError:
            raise ValueError(f"alarm {alarm_id!r} is not in this fleet") from None

    def _alarm(self, alarm_id: str) -> VirtualAlarm:
        try:
            return self._alarms[alarm_id]
        except KeyError:
            raise ValueError(f"alarm {alarm_id!r} is not in this fleet") from None

    def _valve(self, valve_id: str) -> VirtualValve:
        try:
            return self._valves[valve_id]
        except KeyError:
            raise ValueError(f"valve {valve_id!r} is not in this fleet") from None
