"""Pure state machines of one simulated NG household: a methane alarm, a shut-off valve and a gas leak.

Nothing here does I/O or reads a clock: every method takes the current time from its caller and
returns the protocol v1 messages the device would send. `simulator.fleet` puts them on the bus.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from gasguard.protocol import (
    ALARMING_STATES,
    AlarmEvent,
    AlarmState,
    AlarmTelemetry,
    Channel,
    Command,
    CommandAck,
    CommandName,
    CommandResult,
    Power,
    PowerSource,
    Radio,
    ValveEvent,
    ValvePosition,
    ValveTelemetry,
)

#: Any message a simulated device originates.
DeviceMessage = AlarmTelemetry | ValveTelemetry | AlarmEvent | ValveEvent | CommandAck | CommandResult

_MAINS = Power(source=PowerSource.MAINS, mains_ok=True)


@dataclass(frozen=True, slots=True)
class SimHousehold:
    """One NG household as the simulator sees it: its alarm, the valve the alarm closes, the set points."""

    household_id: int
    community_code: str
    alarm_id: str
    valve_id: str
    low_alarm_lel: float
    high_alarm_lel: float
    heartbeat_s: int | None = None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message a device wants published on one of its channels."""

    device_id: str
    channel: Channel
    message: DeviceMessage


class VirtualAlarm:
    """A household methane alarm with a low and a high set point (in %LEL, per device model).

    The state follows the concentration: crossing the low set point raises ``low_alarm``, crossing the
    high one raises ``high_alarm``. An alarm latches at its highest level until the concentration falls
    below the low set point again, when it reports ``recovered`` and goes back to ``normal``; so a
    decaying leak never chatters ``high -> low -> high`` around a set point. A faulty alarm stops
    alarming until the fault clears (a silent or broken sensor is exactly what the service must notice).
    """

    def __init__(
        self,
        device_id: str,
        *,
        low_alarm_lel: float,
        high_alarm_lel: float,
        seq: int = 0,
        radio: Radio | None = None,
    ) -> None:
        if not 0 < low_alarm_lel <= high_alarm_lel <= 100:
            raise ValueError(f"set points must satisfy 0 < low <= high <= 100, got {low_alarm_lel}/{high_alarm_lel}")
        self.device_id = device_id
        self.low_alarm_lel = low_alarm_lel
        self.high_alarm_lel = high_alarm_lel
        self.radio = radio
        self._next_seq = seq
        self._lel = 0.0
        self._state = AlarmState.NORMAL

    @property
    def lel(self) -> float:
        """The last measured concentration in %LEL."""
        return self._lel

    @property
    def state(self) -> AlarmState:
        """The state the alarm currently reports."""
        return self._state

    @property
    def seq(self) -> int:
        """The sequence number the next message will carry."""
        return self._next_seq

    def measure(self, lel: float, now: datetime) -> list[AlarmEvent]:
        """Take a new reading; returns the event for a state change, if the reading causes one."""
        self._lel = round(min(100.0, max(0.0, lel)), 1)
        if self._state in (AlarmState.FAULT, AlarmState.END_OF_LIFE):
            return []
        if self._lel >= self.high_alarm_lel:
            target = AlarmState.HIGH_ALARM
        elif self._lel >= self.low_alarm_lel:
            # Latched: a high alarm stays high until the air is clear again.
            target = AlarmState.HIGH_ALARM if self._state is AlarmState.HIGH_ALARM else AlarmState.LOW_ALARM
        elif self._state in ALARMING_STATES:
            self._state = AlarmState.NORMAL
            return [self._event(AlarmState.RECOVERED, now)]
        else:
            target = AlarmState.NORMAL
        if target is self._state:
            return []
        self._state = target
        return [self._event(target, now)]

    def self_test(self, now: datetime) -> list[AlarmEvent]:
        """The resident pressed the test button: a ``self_test`` event, unless the alarm is busy alarming."""
        if self._state is not AlarmState.NORMAL:
            return []
        return [self._event(AlarmState.SELF_TEST, now)]

    def set_fault(self, now: datetime) -> list[AlarmEvent]:
        """The sensor failed: report ``fault`` once and stop alarming."""
        if self._state is AlarmState.FAULT:
            return []
        self._state = AlarmState.FAULT
        return [self._event(AlarmState.FAULT, now)]

    def clear_fault(self, now: datetime) -> list[AlarmEvent]:
        """The sensor works again (repaired or replaced): report ``normal``."""
        if self._state is not AlarmState.FAULT:
            return []
        self._state = AlarmState.NORMAL
        return [self._event(AlarmState.NORMAL, now)]

    def telemetry(self, now: datetime) -> AlarmTelemetry:
        """The periodic report (heartbeat) with the current reading."""
        return AlarmTelemetry(
            seq=self._take_seq(), ts=now, lel=self._lel, state=self._state, power=_MAINS, radio=self.radio
        )

    def _event(self, state: AlarmState, now: datetime) -> AlarmEvent:
        return AlarmEvent(seq=self._take_seq(), ts=now, state=state, lel=self._lel)

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq


@dataclass(frozen=True, slots=True)
class ValveFaults:
    """Faults a simulated valve can be given, to exercise the service's unhappy paths.

    Args:
        ignore_commands: never answers a command at all (no ack, no motion): a dead radio or firmware.
        stuck: acknowledges and starts closing, but never reaches closed; it ends at ``stuck_position``
            (``fault``, or ``open`` for a valve that silently failed to move) and reports a failed result.
        stuck_position: where a stuck valve ends up: ``ValvePosition.FAULT`` or ``ValvePosition.OPEN``.
        ack_drop_first_n: the first n commands are lost on the link (neither acknowledged nor acted
            on), so the sender has to resend; later ones are handled normally.
    """

    ignore_commands: bool = False
    stuck: bool = False
    stuck_position: ValvePosition = ValvePosition.FAULT
    ack_drop_first_n: int = 0

    def __post_init__(self) -> None:
        if self.stuck_position not in (ValvePosition.FAULT, ValvePosition.OPEN):
            raise ValueError("a stuck valve ends up in 'fault' or 'open'")
        if self.ack_drop_first_n < 0:
            raise ValueError("ack_drop_first_n must not be negative")


class VirtualValve:
    """An electric shut-off valve that closes on command and reports its limit-switch position.

    It obeys only ``close`` and ``self_test`` (protocol v1 has no ``open``: reopening is a manual job on
    site, see `reopen_by_hand`). A close is acknowledged at once, reported as ``closing``, and after
    ``close_delay_s`` reported as ``closed`` together with a result carrying the position. Commands are
    idempotent by nature: a resend while closing is acknowledged again and answered when the motion
    ends; a close to a closed valve is acknowledged and answered ``closed`` straight away.
    """

    def __init__(
        self,
        device_id: str,
        *,
        close_delay_s: float = 2.0,
        faults: ValveFaults | None = None,
        position: ValvePosition = ValvePosition.OPEN,
        seq: int = 0,
        radio: Radio | None = None,
    ) -> None:
        if close_delay_s < 0:
            raise ValueError("close_delay_s must not be negative")
        if position is ValvePosition.CLOSING:
            raise ValueError("a valve cannot start in the middle of a motion")
        self.device_id = device_id
        self.close_delay_s = close_delay_s
        self.faults = faults or ValveFaults()
        self.radio = radio
        self._position: ValvePosition = position
        self._next_seq = seq
        self._received = 0
        self._motion_deadline: datetime | None = None
        self._pending: list[uuid.UUID] = []

    @property
    def position(self) -> ValvePosition:
        """The position the limit switches report."""
        return self._position

    @property
    def motion_deadline(self) -> datetime | None:
        """When the running motion ends (call `tick` then), or None when the valve is still."""
        return self._motion_deadline

    @property
    def commands_received(self) -> int:
        """How many commands reached the device (including ignored or dropped ones)."""
        return self._received

    @property
    def seq(self) -> int:
        """The sequence number the next telemetry or event will carry."""
        return self._next_seq

    def on_command(self, command: Command, now: datetime) -> list[Outgoing]:
        """Handle a command from the cloud; returns what the valve sends in reply, in order."""
        self._received += 1
        if self.faults.ignore_commands or self._received <= self.faults.ack_drop_first_n:
            return []
        if command.expires_at <= now:
            return [self._ack(command.cmd_id, now, accepted=False, reason="expired")]
        if command.command is CommandName.SELF_TEST:
            return self._self_test(command.cmd_id, now)
        return self._close(command.cmd_id, now)

    def tick(self, now: datetime) -> list[Outgoing]:
        """Advance the motion; returns the final position report and results once it has ended."""
        if self._motion_deadline is None or now < self._motion_deadline:
            return []
        self._motion_deadline = None
        pending, self._pending = self._pending, []
        cause = pending[0] if pending else None
        if self.faults.stuck:
            final, ok, detail = self.faults.stuck_position, False, "valve did not reach the closed position"
        else:
            final, ok, detail = ValvePosition.CLOSED, True, None
        self._position = final
        out = [self._position_event(final, now, cause)]
        out.extend(
            Outgoing(
                self.device_id,
                Channel.COMMAND_RESULT,
                CommandResult(cmd_id=cmd_id, ts=now, ok=ok, position=final, detail=detail),
            )
            for cmd_id in pending
        )
        return out

    def reopen_by_hand(self, now: datetime) -> list[Outgoing]:
        """A technician reopened the valve on site after a leak check (the only way to reopen it)."""
        if self._position in (ValvePosition.OPEN, ValvePosition.CLOSING):
            return []
        self._position = ValvePosition.OPEN
        return [self._position_event(ValvePosition.OPEN, now, None)]

    def telemetry(self, now: datetime) -> ValveTelemetry:
        """The periodic report (heartbeat) with the current position."""
        return ValveTelemetry(seq=self._take_seq(), ts=now, position=self._position, power=_MAINS, radio=self.radio)

    def _close(self, cmd_id: uuid.UUID, now: datetime) -> list[Outgoing]:
        ack = self._ack(cmd_id, now, accepted=True)
        if self._position is ValvePosition.CLOSED:
            result = CommandResult(cmd_id=cmd_id, ts=now, ok=True, position=ValvePosition.CLOSED)
            return [ack, Outgoing(self.device_id, Channel.COMMAND_RESULT, result)]
        if self._position is ValvePosition.CLOSING:
            if cmd_id not in self._pending:
                self._pending.append(cmd_id)
            return [ack]
        # Open, or in fault after a failed attempt: the motor tries (again).
        self._position = ValvePosition.CLOSING
        self._motion_deadline = now + timedelta(seconds=self.close_delay_s)
        self._pending = [cmd_id]
        return [ack, self._position_event(ValvePosition.CLOSING, now, cmd_id)]

    def _self_test(self, cmd_id: uuid.UUID, now: datetime) -> list[Outgoing]:
        if self._position is ValvePosition.CLOSING:
            return [self._ack(cmd_id, now, accepted=False, reason="busy closing")]
        healthy = not self.faults.stuck and self._position is not ValvePosition.FAULT
        result = CommandResult(
            cmd_id=cmd_id,
            ts=now,
            ok=healthy,
            position=self._position,
            detail="self-test passed" if healthy else "actuator fault",
        )
        return [self._ack(cmd_id, now, accepted=True), Outgoing(self.device_id, Channel.COMMAND_RESULT, result)]

    def _ack(self, cmd_id: uuid.UUID, now: datetime, *, accepted: bool, reason: str | None = None) -> Outgoing:
        ack = CommandAck(cmd_id=cmd_id, ts=now, accepted=accepted, reason=reason)
        return Outgoing(self.device_id, Channel.COMMAND_ACK, ack)

    def _position_event(self, position: ValvePosition, now: datetime, cmd_id: uuid.UUID | None) -> Outgoing:
        event = ValveEvent(seq=self._take_seq(), ts=now, position=position, cmd_id=cmd_id)
        return Outgoing(self.device_id, Channel.EVENT, event)

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq


class LeakPhase(enum.StrEnum):
    """Where a simulated leak is in its life."""

    RISING = "rising"
    DECAYING = "decaying"
    OVER = "over"


@dataclass(frozen=True, slots=True)
class LeakProfile:
    """Shape of a simulated leak: a linear rise to ``peak_lel`` and, once the gas is cut, a linear decay."""

    peak_lel: float = 40.0
    ramp_s: float = 4.0
    decay_s: float = 10.0

    def __post_init__(self) -> None:
        if not 0 < self.peak_lel <= 100:
            raise ValueError("peak_lel must be in (0, 100]")
        if self.ramp_s < 0 or self.decay_s < 0:
            raise ValueError("ramp_s and decay_s must not be negative")


class GasLeak:
    """Concentration over time of one leak, on a monotonic clock in seconds supplied by the caller.

    The concentration rises while gas flows; when the supply is cut (the valve closed, or the resident
    turned the appliance off) it decays back to zero through ventilation.
    """

    def __init__(self, profile: LeakProfile, *, started_at: float) -> None:
        self.profile = profile
        self.started_at = started_at
        self._cut_at: float | None = None
        self._lel_at_cut = 0.0

    @property
    def cut(self) -> bool:
        """Whether the gas supply has been cut."""
        return self._cut_at is not None

    def cut_off(self, at: float) -> None:
        """The gas stopped flowing at ``at``; later cuts change nothing."""
        if self._cut_at is None:
            self._lel_at_cut = self._rising(at)
            self._cut_at = at

    def phase(self, at: float) -> LeakPhase:
        """Rising, decaying, or over."""
        if self._cut_at is None:
            return LeakPhase.RISING
        if at - self._cut_at < self.profile.decay_s:
            return LeakPhase.DECAYING
        return LeakPhase.OVER

    def lel_at(self, at: float) -> float:
        """Concentration in %LEL at time ``at``."""
        if self._cut_at is None:
            return self._rising(at)
        if self.profile.decay_s == 0:
            return 0.0
        remaining = 1.0 - (at - self._cut_at) / self.profile.decay_s
        return self._lel_at_cut * min(1.0, max(0.0, remaining))

    def _rising(self, at: float) -> float:
        elapsed = max(0.0, at - self.started_at)
        if self.profile.ramp_s == 0:
            return self.profile.peak_lel
        return self.profile.peak_lel * min(1.0, elapsed / self.profile.ramp_s)
