"""Protocol v1: topics, payload validation, and the document that describes them."""

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from gasguard import protocol
from gasguard.protocol import (
    AlarmEvent,
    AlarmState,
    AlarmTelemetry,
    Channel,
    CommandName,
    TopicError,
    Topics,
    ValveEvent,
    ValvePosition,
    decode_event,
    decode_telemetry,
    encode,
)

DOC = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
TS = datetime(2026, 11, 29, 8, 42, tzinfo=UTC)


def test_topics_round_trip() -> None:
    topics = Topics("gg")
    topic = topics.device("GA-000123", Channel.COMMAND_RESULT)
    assert topic == "gg/v1/dev/GA-000123/cmd/result"
    parsed = topics.parse(topic)
    assert (parsed.device_id, parsed.channel) == ("GA-000123", Channel.COMMAND_RESULT)
    assert topics.all_devices(Channel.EVENT) == "gg/v1/dev/+/event"


@pytest.mark.parametrize(
    "topic", ["gg/v1/dev/GA-1/open", "gg/v2/dev/GA-1/event", "other/v1/dev/GA-1/event", "gg/v1/dev/+/event"]
)
def test_topics_outside_the_protocol_are_refused(topic: str) -> None:
    with pytest.raises(TopicError):
        Topics("gg").parse(topic)


@pytest.mark.parametrize("device_id", ["", "a/b", "a+b", "#", "x" * 65, "-lead"])
def test_device_ids_that_would_break_topics_are_refused(device_id: str) -> None:
    with pytest.raises(TopicError):
        Topics("gg").device(device_id, Channel.EVENT)


def test_no_open_command_exists() -> None:
    assert {c.value for c in CommandName} == {"close", "self_test"}
    with pytest.raises(ValidationError):
        protocol.Command.model_validate(
            {"cmd_id": "8f2c5b8e-2d6a-4d8e-9d7e-0c1a2b3c4d5e", "command": "open", "issued_at": TS, "expires_at": TS}
        )


def test_payloads_round_trip_and_dispatch_on_kind() -> None:
    alarm = AlarmTelemetry(seq=1, ts=TS, lel=3.5, state=AlarmState.NORMAL)
    assert decode_telemetry(encode(alarm)) == alarm
    event = ValveEvent(seq=2, ts=TS, position=ValvePosition.CLOSED)
    assert decode_event(encode(event)) == event
    assert isinstance(decode_event(encode(AlarmEvent(ts=TS, state=AlarmState.HIGH_ALARM, lel=30))), AlarmEvent)


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b'{"v":2,"ts":"2026-11-29T08:42:00Z","kind":"alarm","lel":1,"state":"normal"}',
        b'{"v":1,"ts":"2026-11-29T08:42:00","kind":"alarm","lel":1,"state":"normal"}',  # no offset
        b'{"v":1,"ts":"2026-11-29T08:42:00Z","kind":"alarm","lel":130,"state":"normal"}',
        b'{"v":1,"ts":"2026-11-29T08:42:00Z","kind":"alarm","lel":1,"state":"burning"}',
        b'{"v":1,"ts":"2026-11-29T08:42:00Z","kind":"alarm","lel":1,"state":"normal","extra":1}',
        b'{"v":1,"ts":"2026-11-29T08:42:00Z","kind":"alarm","lel":NaN,"state":"normal"}',
        # A non-finite number anywhere is refused, not stored.
        b'{"v":1,"ts":"2026-11-29T08:42:00Z","kind":"alarm","lel":1,"state":"normal","radio":{"snr":NaN}}',
        b'{"v":1,"ts":"2026-11-29T08:42:00Z","kind":"alarm","lel":1,"state":"normal","radio":{"snr":Infinity}}',
    ],
)
def test_malformed_telemetry_is_refused(payload: bytes) -> None:
    with pytest.raises(ValidationError):
        decode_telemetry(payload)


def _fields(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields)


def test_document_names_every_topic_field_and_value() -> None:
    for channel in Channel:
        assert f"/{channel.value}`" in DOC, channel
    models = [
        protocol.AlarmTelemetry,
        protocol.ValveTelemetry,
        protocol.AlarmEvent,
        protocol.ValveEvent,
        protocol.Availability,
        protocol.Command,
        protocol.CommandAck,
        protocol.CommandResult,
        protocol.Power,
        protocol.Radio,
    ]
    for model in models:
        assert f"`{model.__name__}`" in DOC, model.__name__
        for name in _fields(model):
            assert f"`{name}`" in DOC, f"{model.__name__}.{name}"
    for enum in (AlarmState, ValvePosition, CommandName, protocol.PowerSource):
        for value in enum:
            assert f"`{value.value}`" in DOC, value
