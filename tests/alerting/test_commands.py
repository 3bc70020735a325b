"""Close-command bookkeeping without I/O."""

from datetime import UTC, datetime

from alerting.commands import CommandTracker
from alerting.rules import ValveTrackState
from gasguard.protocol import ValvePosition, new_close_command


def start(tracker: CommandTracker, now: float = 0.0, *, confirm: float = 30.0, ttl: float = 3600.0):
    command = new_close_command(datetime(2026, 11, 29, tzinfo=UTC), ttl)
    return tracker.start(command=command, valve_id="V-1", household_id=1, now=now, confirm_timeout_s=confirm, ttl_s=ttl)


def test_unacknowledged_command_is_resent_with_backoff() -> None:
    tracker = CommandTracker(ack_timeout_s=2, resend_max_interval_s=60)
    track = start(tracker)
    assert tracker.due(1.9).resend == []
    assert tracker.due(2.0).resend == [track]
    assert track.attempts == 2
    assert tracker.due(5.9).resend == []  # next one 4 s later
    assert tracker.due(6.0).resend == [track]


def test_ack_is_not_closed_and_closed_report_settles() -> None:
    tracker = CommandTracker(ack_timeout_s=2, resend_max_interval_s=60)
    track = start(tracker)
    assert tracker.on_ack(track.command.cmd_id, accepted=True) is track
    assert tracker.state("V-1") is ValveTrackState.CLOSING
    assert tracker.on_position("V-1", ValvePosition.CLOSING) is None
    assert tracker.on_position("V-1", ValvePosition.CLOSED) is track
    assert tracker.state("V-1") is ValveTrackState.CLOSED
    due = tracker.due(100.0)
    assert due.resend == due.not_confirmed == due.expired == []


def test_no_closed_report_in_time_escalates_once_and_keeps_resending() -> None:
    tracker = CommandTracker(ack_timeout_s=2, resend_max_interval_s=10)
    track = start(tracker, confirm=30)
    tracker.on_ack(track.command.cmd_id, accepted=True)
    escalations = []
    resends = 0
    for t in range(1, 120):
        due = tracker.due(float(t))
        escalations += due.not_confirmed
        resends += len(due.resend)
    assert escalations == [track]
    assert resends >= 10
    assert tracker.state("V-1") is ValveTrackState.CLOSING


def test_refusal_and_fault_end_the_command() -> None:
    tracker = CommandTracker(ack_timeout_s=2, resend_max_interval_s=60)
    track = start(tracker)
    assert tracker.on_ack(track.command.cmd_id, accepted=False) is track
    assert tracker.state("V-1") is ValveTrackState.UNKNOWN
    track = start(tracker)
    assert tracker.on_position("V-1", ValvePosition.FAULT) is track
    assert tracker.state("V-1") is ValveTrackState.UNKNOWN


def test_expired_command_is_dropped() -> None:
    tracker = CommandTracker(ack_timeout_s=2, resend_max_interval_s=5)
    track = start(tracker, confirm=10, ttl=20)
    expired = [t for s in range(1, 40) for t in tracker.due(float(s)).expired]
    assert expired == [track]
    assert tracker.state("V-1") is ValveTrackState.UNKNOWN


def test_manual_reopen_on_site_makes_the_valve_closable_again() -> None:
    tracker = CommandTracker(ack_timeout_s=2, resend_max_interval_s=60)
    start(tracker)
    tracker.on_position("V-1", ValvePosition.CLOSED)
    tracker.on_position("V-1", ValvePosition.OPEN)
    assert tracker.state("V-1") is ValveTrackState.UNKNOWN
