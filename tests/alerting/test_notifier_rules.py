"""Pure notification rules: fallback plans, backoff, template lengths and wording."""

from __future__ import annotations

import re

import pytest

from alerting.notifier import (
    ALL_SMS_TEMPLATES,
    NOTIFY_TEMPLATES,
    RESIDENT_UNREACHABLE,
    FallbackPolicy,
    job_params,
    plan_fallback,
    retry_delay_s,
    short_place,
    tencent_param_order,
)

PARAMS = {"time": "06-13 06:42", "hotline": "0477-7212345"}


def plan(channel: str, role: str, *, voice: bool, operators: tuple[str, ...] = ("13900000001", "13900000002")):
    return plan_fallback(
        channel=channel,
        recipient_role=role,
        template="SMS_GG_ALARM_RESIDENT" if channel == "sms" else "TTS_GG_ALARM_RESIDENT",
        params=PARAMS,
        place="文苑社区3号楼2单元101",
        reason="限额",
        policy=FallbackPolicy(voice=voice, operator_phones=operators),
    )


def test_resident_sms_falls_back_to_a_voice_call_to_the_same_number() -> None:
    [job] = plan("sms", "resident", voice=True)
    assert (job.channel, job.recipient, job.template) == ("voice", "", "TTS_GG_ALARM_RESIDENT")
    assert job.params == PARAMS


def test_without_voice_every_duty_operator_is_told() -> None:
    jobs = plan("sms", "resident", voice=False)
    assert [j.recipient for j in jobs] == ["13900000001", "13900000002"]
    assert all(j.template == RESIDENT_UNREACHABLE.code and j.recipient_role == "operator" for j in jobs)
    assert jobs[0].params == {"place": "文苑社区3号楼2单元101", "time": "06-13 06:42", "reason": "限额"}


def test_a_failed_voice_call_to_the_resident_goes_to_the_operators() -> None:
    assert {j.recipient for j in plan("voice", "resident", voice=True)} == {"13900000001", "13900000002"}


def test_operator_sms_falls_back_to_calling_the_operator_and_nothing_loops() -> None:
    [job] = plan("sms", "operator", voice=True)
    assert job.channel == "voice" and job.recipient_role == "operator"
    assert plan("voice", "operator", voice=True) == []
    assert plan("webhook", "emergency", voice=True) == []


def test_backoff_grows_and_is_capped() -> None:
    assert [retry_delay_s(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert retry_delay_s(30) == 300.0


def test_valve_wording_comes_from_the_valves_report_for_sms_and_voice() -> None:
    for template in ("SMS_GG_ALARM_RESIDENT", "TTS_GG_ALARM_RESIDENT"):
        assert job_params(template, PARAMS, valve_closed=True)["valve"] == "已关闭"
        # Not reported closed (hold ended, refused, faulted, no valve): never "closing", always "unconfirmed".
        assert job_params(template, PARAMS, valve_closed=False)["valve"] == "未确认关闭"
    assert "valve" not in job_params(RESIDENT_UNREACHABLE.code, PARAMS, valve_closed=True)


@pytest.mark.parametrize("template", list(NOTIFY_TEMPLATES.values()), ids=lambda t: t.code)
def test_notification_templates_fit_one_sms_and_never_say_reopen(template) -> None:
    assert template.longest(sign_name="乌审中燃") <= 70
    assert not re.search(r"(打开|开启|重新开|恢复).{0,4}阀", template.text)


def test_long_places_keep_the_room_number() -> None:
    assert short_place("乌审召镇某某很长名字的社区12号楼3单元1201", 22).endswith("12号楼3单元1201")
    assert len(short_place("字" * 40)) == 22


def test_tencent_parameter_order_follows_the_template_text() -> None:
    assert tencent_param_order(ALL_SMS_TEMPLATES["SMS_GG_ALARM_RESIDENT"].text) == ["time", "valve", "hotline"]
