"""SMS templates: one part, Chinese, never telling anyone to reopen a valve."""

import pytest

from alerting.templates import ALARM_RESIDENT, SMS_MAX_CHARS, TEMPLATES, county_time

SIGN = "乌审中燃"


@pytest.mark.parametrize("template", list(TEMPLATES.values()), ids=list(TEMPLATES))
def test_longest_rendering_fits_one_sms(template) -> None:
    assert template.longest(sign_name=SIGN) <= SMS_MAX_CHARS


@pytest.mark.parametrize("template", list(TEMPLATES.values()), ids=list(TEMPLATES))
def test_no_template_asks_to_reopen(template) -> None:
    for phrase in ("开阀", "打开阀", "打开切断阀", "恢复供气", "重新开启"):
        assert phrase not in template.text


def test_resident_text_gives_the_safety_advice() -> None:
    text = ALARM_RESIDENT.render({"time": "06-13 06:42", "valve": "已关闭", "hotline": "0477-7212345"}, sign_name=SIGN)
    assert text.startswith("【乌审中燃】")
    for advice in ("开窗通风", "勿开关电器", "勿动明火", "室外"):
        assert advice in text


def test_overlong_parameter_is_refused() -> None:
    with pytest.raises(ValueError, match="hotline"):
        ALARM_RESIDENT.render({"time": "06-13 06:42", "valve": "已关闭", "hotline": "0" * 20}, sign_name=SIGN)


def test_county_time_is_beijing_time() -> None:
    from datetime import UTC, datetime

    assert county_time(datetime(2021, 6, 12, 22, 42, tzinfo=UTC)) == "06-13 06:42"
