"""Pure classification and sequence tracking, without broker or database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gasguard.protocol import Channel, Topics
from ingest.classify import Classifier, SeqTracker, ToDeadLetter, ToEvent, ToTelemetry
from tests.ingest.conftest import alarm_event, alarm_telemetry

NOW = datetime(2026, 3, 1, 8, 0, 5, tzinfo=UTC)
TOPICS = Topics("gg")


class Registry:
    ids = frozenset({"alarm-1"})


@pytest.fixture
def classifier() -> Classifier:
    return Classifier(TOPICS, Registry())


def test_valid_messages_become_rows_with_seq(classifier: Classifier) -> None:
    """Test that telemetry and events are routed to their tables with the receive time."""
    reading = classifier.classify(TOPICS.device("alarm-1", Channel.TELEMETRY), alarm_telemetry(4), NOW)
    assert isinstance(reading, ToTelemetry)
    assert (reading.row[0], reading.row[2], reading.row[3], reading.seq) == ("alarm-1", NOW, 4, 4)
    event = classifier.classify(TOPICS.device("alarm-1", Channel.EVENT), alarm_event(None), NOW)
    assert isinstance(event, ToEvent)
    assert (event.row[3], event.seq) == (-1, None)


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (
            "gg/v1/dev/alarm-1/telemetry",
            b"",
            "invalid payload: Invalid JSON: EOF while parsing a value at line 1 column 0",
        ),
        ("gg/v1/dev/alarm-1/telemetry", b"[1]", "invalid payload: Input should be an object"),
        (
            "gg/v1/dev/alarm-1/event",
            b'{"type":"smoke"}',
            "invalid payload: Input tag 'smoke' found using 'type' does not match any of the expected tags: "
            "'alarm', 'valve'",
        ),
        ("gg/v1/dev/ghost/telemetry", b"{}", "unknown device"),
        ("gg/v1/dev/alarm-1/telemetry/extra", b"{}", "unknown topic"),
        ("gg/v1/dev/bad id/telemetry", b"{}", "unknown topic"),
        ("gg/v2/dev/alarm-1/telemetry", b"{}", "unknown topic"),
        ("gg/v1/gw/gw-1/status", b"{}", "unknown topic"),
        ("gg", b"{}", "unknown topic"),
    ],
)
def test_bad_input_is_dead_lettered_with_a_readable_reason(
    classifier: Classifier, topic: str, payload: bytes, reason: str
) -> None:
    """Test the reason stored for each kind of bad input."""
    result = classifier.classify(topic, payload, NOW)
    assert isinstance(result, ToDeadLetter)
    assert result.row[4] == reason
    assert (result.row[0], result.row[2], result.row[5]) == (NOW, topic, payload)


def test_a_topic_that_is_not_utf8_is_dead_lettered(classifier: Classifier) -> None:
    """Test the raw-bytes topic gmqtt passes on when it cannot decode one."""
    result = classifier.classify(b"gg/v1/dev/\xff/telemetry", b"{}", NOW)
    assert isinstance(result, ToDeadLetter)
    assert result.row[2:5] == ("gg/v1/dev/\ufffd/telemetry", None, "unknown topic")


def test_long_reasons_are_cut(classifier: Classifier) -> None:
    """Test that a reason never exceeds the stored limit."""
    payload = alarm_telemetry(1).replace(b'"state":"normal"', b'"state":"' + b"x" * 500 + b'"')
    result = classifier.classify(TOPICS.device("alarm-1", Channel.TELEMETRY), payload, NOW)
    assert isinstance(result, ToDeadLetter)
    assert result.row[4].startswith("invalid payload: alarm.state: Input should be")
    assert len(result.row[4]) <= 200


@pytest.mark.parametrize(
    "topic",
    [
        "gg/v1/dev/alarm-1/availability",
        "gg/v1/dev/alarm-1/cmd",
        "gg/v1/dev/alarm-1/cmd/ack",
        "gg/v1/dev/alarm-1/cmd/result",
        "gg/v1/dev/someone-else/cmd",
        "gg/v1/gw/modbus-1/availability",
    ],
)
def test_protocol_topics_of_other_services_are_ignored(classifier: Classifier, topic: str) -> None:
    """Test that nothing is stored for availability and command traffic."""
    assert classifier.classify(topic, b"not even json", NOW) is None


def test_sequence_tracker_counts_gaps_and_regressions() -> None:
    """Test gap, missing and out-of-order counting, per device."""
    tracker = SeqTracker()
    for device, seq in [("a", 0), ("a", 1), ("b", 50), ("a", 5), ("a", 5), ("a", 6), ("b", 51), ("a", 0), ("a", 1)]:
        tracker.observe(device, seq)
    assert (tracker.gaps, tracker.missing, tracker.out_of_order) == (1, 3, 2)
    assert len(tracker) == 2
