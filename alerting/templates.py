"""SMS templates (zh-CN). Each renders to at most 70 characters including the 【signature】.

A message over 70 characters is split into 67-character parts that may arrive out of order, so the
limit is checked here for the longest values a parameter can take. Templates never tell a resident to
reopen a valve: reopening is an on-site job for the gas company (domain §1.3, §3.3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

COUNTY_TZ = ZoneInfo("Asia/Shanghai")
SMS_MAX_CHARS = 70
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


def county_time(at: datetime) -> str:
    """``MM-DD HH:MM`` in the county's time zone, as residents read it."""
    return at.astimezone(COUNTY_TZ).strftime("%m-%d %H:%M")


@dataclass(frozen=True, slots=True)
class SmsTemplate:
    """An approved template: the provider's code, the text with ``${name}`` placeholders, and limits."""

    code: str
    text: str
    #: Longest value each parameter may take; rendering refuses longer values.
    max_param_chars: dict[str, int]

    @property
    def params(self) -> frozenset[str]:
        """Names of the placeholders in the text."""
        return frozenset(_PLACEHOLDER.findall(self.text))

    def render(self, params: dict[str, str], *, sign_name: str) -> str:
        """The message as the handset shows it, signature first."""
        missing = self.params - params.keys()
        if missing:
            raise ValueError(f"template {self.code} is missing {sorted(missing)}")
        for name in self.params:
            if len(params[name]) > self.max_param_chars[name]:
                raise ValueError(f"template {self.code}: {name} longer than {self.max_param_chars[name]}")
        body = _PLACEHOLDER.sub(lambda m: params[m.group(1)], self.text)
        return f"【{sign_name}】{body}"

    def longest(self, *, sign_name: str) -> int:
        """Length of the longest message this template can produce."""
        return len(self.render({n: "字" * self.max_param_chars[n] for n in self.params}, sign_name=sign_name))


ALARM_RESIDENT = SmsTemplate(
    code="SMS_GG_ALARM_RESIDENT",
    text="您家燃气报警器${time}报警，切断阀${valve}。请开窗通风，勿开关电器、勿动明火，到室外拨打${hotline}",
    max_param_chars={"time": 11, "valve": 5, "hotline": 12},
)

VALVE_NOT_CLOSED_OPERATOR = SmsTemplate(
    code="SMS_GG_VALVE_NOT_CLOSED",
    text="紧急：${place}切断阀未确认关闭，报警${time}。请立即电话联系住户并派员处置。",
    max_param_chars={"place": 22, "time": 11},
)

ALARM_OPERATOR = SmsTemplate(
    code="SMS_GG_ALARM_OPERATOR",
    text="燃气报警未确认(第${n}次)：${place}，${time}报警。请立即联系住户并确认。",
    max_param_chars={"n": 2, "place": 22, "time": 11},
)

EMERGENCY_NOTICE = SmsTemplate(
    code="SMS_GG_EMERGENCY",
    text="应急通报：${place}${what}，${time}。燃气公司正在处置，请协调。",
    max_param_chars={"place": 22, "what": 8, "time": 11},
)

DEVICE_NOTICE = SmsTemplate(
    code="SMS_GG_DEVICE_NOTICE",
    text="设备${issue}：${place}，${time}起。请安排检修。",
    max_param_chars={"issue": 6, "place": 22, "time": 11},
)

#: To the duty operators when an alerting process has fallen behind (`alerting.watchdog`). ``part`` says what lags
#: (报警接收: alarms and valve reports wait unread at the broker; 事件入库: incidents wait for the database),
#: ``effect`` what that delays.
ALERTING_BEHIND_OPERATOR = SmsTemplate(
    code="SMS_GG_ALERTING_BEHIND",
    text="系统告警：燃气报警服务${part}已滞后${lag}秒（${time}起），${effect}可能延迟，请盯看监控。",
    max_param_chars={"part": 5, "lag": 5, "time": 11, "effect": 5},
)

#: Sent straight through the SMS provider (not the outbox, which lives in the database) when alerting's database
#: has been unreachable for a while.
ALERTING_DB_DOWN_OPERATOR = SmsTemplate(
    code="SMS_GG_ALERTING_DB_DOWN",
    text="系统告警：燃气报警服务数据库中断已${lag}秒（${time}起），事件和短信暂存未发，请立即联系运维。",
    max_param_chars={"lag": 5, "time": 11},
)

#: To a duty operator's phone in an alarm storm, once per window, in place of the operator texts folded into it
#: (`alerting.notifier`): ``n`` incidents (``critical`` of them critical) since ``since`` were not texted one by one.
#: Every one of them is on the control-room board; only the phone is spared.
OPERATOR_DIGEST = SmsTemplate(
    code="SMS_GG_OPERATOR_DIGEST",
    text="短信汇总：${since}起另有${n}起事件（其中紧急${critical}起）未逐条发短信，请到监控中心查看。",
    max_param_chars={"since": 11, "n": 6, "critical": 6},
)

TEMPLATES: dict[str, SmsTemplate] = {
    t.code: t
    for t in (
        ALARM_RESIDENT,
        VALVE_NOT_CLOSED_OPERATOR,
        ALARM_OPERATOR,
        EMERGENCY_NOTICE,
        DEVICE_NOTICE,
        ALERTING_BEHIND_OPERATOR,
        ALERTING_DB_DOWN_OPERATOR,
        OPERATOR_DIGEST,
    )
}

#: Name of the emergency-management webhook "template" (a JSON event, not an SMS).
EMERGENCY_WEBHOOK = "WEBHOOK_GG_EMERGENCY"

VALVE_CLOSED_TEXT = "已关闭"
VALVE_UNCONFIRMED_TEXT = "未确认关闭"
