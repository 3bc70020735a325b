"""Close commands in flight: resend until the valve reports closed, escalate when it does not in time.

Pure bookkeeping over a monotonic clock passed in by the caller; the engine does the I/O. A valve
counts as closed only when it reports the closed position itself — an acknowledgement only means the
device received the command (safety rule 3).
"""

from __future__ import annotations

import heapq
import itertools
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from alerting.rules import ValveTrackState
from gasguard.protocol import Command, ValvePosition


@dataclass(slots=True)
class InflightClose:
    """One close command the valve has not yet confirmed."""

    command: Command
    valve_id: str
    household_id: int
    sent_at: float
    confirm_deadline: float
    expires_at: float
    attempts: int = 1
    acked: bool = False
    escalated: bool = False
    next_resend: float = 0.0


@dataclass(frozen=True, slots=True)
class PendingCommand:
    """A close command the database holds as unconfirmed and unexpired (reloaded on start or take-over)."""

    cmd_id: uuid.UUID
    valve_id: str
    issued_at: datetime
    expires_at: datetime
    attempts: int
    acked: bool
    escalated: bool


@dataclass(frozen=True, slots=True)
class Due:
    """What the timers call for now."""

    resend: list[InflightClose] = field(default_factory=list)
    not_confirmed: list[InflightClose] = field(default_factory=list)
    expired: list[InflightClose] = field(default_factory=list)


class CommandTracker:
    """Tracks close commands per valve and the positions valves last reported."""

    def __init__(self, *, ack_timeout_s: float, resend_max_interval_s: float) -> None:
        self._ack_timeout_s = ack_timeout_s
        self._resend_max_s = resend_max_interval_s
        self._by_valve: dict[str, InflightClose] = {}
        self._by_cmd: dict[uuid.UUID, InflightClose] = {}
        self._closed: set[str] = set()
        self._timers: list[tuple[float, int, uuid.UUID]] = []
        self._tiebreak = itertools.count()

    def state(self, valve_id: str) -> ValveTrackState:
        """Closing (a command in flight), closed (reported), or unknown."""
        if valve_id in self._by_valve:
            return ValveTrackState.CLOSING
        if valve_id in self._closed:
            return ValveTrackState.CLOSED
        return ValveTrackState.UNKNOWN

    @property
    def inflight(self) -> int:
        """Number of commands awaiting the valve's closed report."""
        return len(self._by_valve)

    def start(
        self, *, command: Command, valve_id: str, household_id: int, now: float, confirm_timeout_s: float, ttl_s: float
    ) -> InflightClose:
        """Register a close command that has just been published."""
        track = InflightClose(
            command=command,
            valve_id=valve_id,
            household_id=household_id,
            sent_at=now,
            confirm_deadline=now + confirm_timeout_s,
            expires_at=now + ttl_s,
            next_resend=now + self._ack_timeout_s,
        )
        self._by_valve[valve_id] = track
        self._by_cmd[command.cmd_id] = track
        self._closed.discard(valve_id)
        self._schedule(track.next_resend, track)
        self._schedule(track.confirm_deadline, track)
        return track

    def inflight_valves(self) -> frozenset[str]:
        """Valves with a close command in flight."""
        return frozenset(self._by_valve)

    def reschedule(self, track: InflightClose, when: float) -> None:
        """Wake this command's timers at ``when`` (after its state was adjusted from the database)."""
        self._schedule(when, track)

    def get(self, cmd_id: uuid.UUID) -> InflightClose | None:
        """The in-flight command with this id, if any."""
        return self._by_cmd.get(cmd_id)

    def on_ack(self, cmd_id: uuid.UUID, *, accepted: bool) -> InflightClose | None:
        """Note an acknowledgement; a refusal ends the command and is returned for escalation."""
        track = self._by_cmd.get(cmd_id)
        if track is None:
            return None
        if not accepted:
            self._forget(track)
            return track
        track.acked = True
        return track

    def on_position(self, valve_id: str, position: ValvePosition) -> InflightClose | None:
        """Note a reported position; returns the in-flight command it settles, if any."""
        track = self._by_valve.get(valve_id)
        if position is ValvePosition.CLOSED:
            self._closed.add(valve_id)
        elif position is ValvePosition.OPEN:
            # Reopened by hand on site (the only way): the next alarm must close it again.
            self._closed.discard(valve_id)
            return None
        elif position is ValvePosition.CLOSING:
            return None
        if track is not None:
            self._forget(track)
        return track

    def due(self, now: float) -> Due:
        """Pop every timer that has fired and say what to do."""
        due = Due()
        while self._timers and self._timers[0][0] <= now:
            _, _, cmd_id = heapq.heappop(self._timers)
            track = self._by_cmd.get(cmd_id)
            if track is None:
                continue
            if now >= track.expires_at:
                self._forget(track)
                due.expired.append(track)
                continue
            if not track.escalated and now >= track.confirm_deadline:
                track.escalated = True
                due.not_confirmed.append(track)
            if now >= track.next_resend:
                track.attempts += 1
                # Unacknowledged: back off from the ack timeout; acknowledged: poll slowly.
                base = self._ack_timeout_s * 2 ** min(track.attempts - 1, 10)
                interval = self._resend_max_s if track.acked else min(base, self._resend_max_s)
                track.next_resend = now + interval
                self._schedule(track.next_resend, track)
                due.resend.append(track)
        return due

    def _schedule(self, when: float, track: InflightClose) -> None:
        heapq.heappush(self._timers, (when, next(self._tiebreak), track.command.cmd_id))

    def _forget(self, track: InflightClose) -> None:
        self._by_cmd.pop(track.command.cmd_id, None)
        if self._by_valve.get(track.valve_id) is track:
            del self._by_valve[track.valve_id]
