"""Pure decoders: register maps, word order, status bits, GG-NB1 frames."""

from __future__ import annotations

import base64
import hashlib

import pytest

from gasguard.protocol import AlarmState
from gateway.codecs import (
    CodecError,
    NbReading,
    ValuePoint,
    decode_app_data,
    decode_status,
    decode_value,
    encode_gg_nb1,
    load_register_map,
    read_plan,
)
from gateway.nbiot import onenet_signature, raw_top_level_field


def test_word_order_and_sign() -> None:
    little = ValuePoint(table="holding", address=0, type="int32", word_order="little", scale=0.01)
    big = ValuePoint(table="holding", address=0, type="int32", word_order="big", scale=0.01)
    assert decode_value([0xFFFF, 0xFFFF], little) == pytest.approx(-0.01)
    assert decode_value([0x0001, 0x0000], little) == pytest.approx(0.01)
    assert decode_value([0x0001, 0x0000], big) == pytest.approx(655.36)


def test_status_priority() -> None:
    bits = {"fault": 0, "low_alarm": 1, "high_alarm": 2}
    assert decode_status(0b110, bits) is AlarmState.HIGH_ALARM
    assert decode_status(0b111, bits) is AlarmState.FAULT
    assert decode_status(0, bits) is AlarmState.NORMAL


def test_plc_addressing_base_is_applied() -> None:
    rmap = load_register_map("GG-MC4")
    assert rmap.address(rmap.concentration, 1) == 0 and rmap.address(rmap.concentration, 3) == 4
    with pytest.raises(CodecError):
        rmap.address(rmap.concentration, 5)
    assert {b.table for b in read_plan(rmap)} == {"input", "discrete"}


def test_gg_nb1_round_trip_and_corruption() -> None:
    frame = encode_gg_nb1(NbReading(state=AlarmState.HIGH_ALARM, lel=25.5, battery_pct=70, rsrp=-100, seq=9))
    reading = decode_app_data("GG-NB1", base64.b64encode(frame).decode())
    assert reading.state is AlarmState.HIGH_ALARM and reading.lel == 25.5 and reading.rsrp == -100
    broken = frame[:-1] + bytes([(frame[-1] + 1) & 0xFF])
    with pytest.raises(CodecError, match="checksum"):
        decode_app_data("GG-NB1", base64.b64encode(broken).decode())
    with pytest.raises(CodecError, match="base64"):
        decode_app_data("GG-NB1", "!!!")


def test_onenet_signature_over_the_text_as_sent() -> None:
    body = '{ "nonce": "ab", "msg" : {"type": 1, "value": [1, {"a": "x"}]} , "msg_signature": "s"}'
    assert raw_top_level_field(body, "msg") == '{"type": 1, "value": [1, {"a": "x"}]}'
    assert raw_top_level_field(body, "missing") is None
    assert onenet_signature("tok", "n", "m") == base64.b64encode(hashlib.md5(b"tokn" + b"m").digest()).decode()
