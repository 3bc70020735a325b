"""Voice calls (text-to-speech) for when an SMS is not enough: Aliyun dyvms ``SingleCallByTts`` style.

The call reads an approved TTS template with parameters; the answer's ``CallId`` is the message id and
the call report (answered or not) is the receipt. Scripts are kept here, in Chinese, and, like the
SMS templates, never tell the resident to reopen the valve.
"""

from __future__ import annotations

import json

import httpx
from pydantic import BaseModel, ConfigDict

from alerting.providers.aliyun import AliyunRpc, china_time
from alerting.providers.base import Channel, Message, Receipt, Sent

#: Voice template code → script (``${name}`` placeholders), as approved with the provider.
VOICE_SCRIPTS: dict[str, str] = {
    "TTS_GG_ALARM_RESIDENT": (
        "乌审中燃提醒：您家燃气报警器${time}报警，切断阀${valve}。请立即开窗通风，不要开关电器，不要动明火，"
        "到室外后拨打${hotline}。"
    ),
    "TTS_GG_OPERATOR_NOTICE": "乌审中燃值班提醒：${place}燃气报警，住户短信未能送达，请立即电话联系住户。",
}

#: Which voice script stands in for which SMS template when the SMS cannot go out.
VOICE_FOR_SMS: dict[str, str] = {"SMS_GG_ALARM_RESIDENT": "TTS_GG_ALARM_RESIDENT"}

#: Answered and listened to: the call reached the person.
_ANSWERED = frozenset({"200000", "200010"})


class AliyunVoiceProvider:
    """TTS calls through an Aliyun dyvmsapi-compatible endpoint."""

    name = "aliyun-voice"
    channel: Channel = "voice"

    def __init__(
        self,
        *,
        endpoint: str,
        access_key_id: str,
        access_key_secret: str,
        show_number: str,
        client: httpx.AsyncClient,
    ) -> None:
        self._rpc = AliyunRpc(
            endpoint=endpoint,
            access_key_id=access_key_id,
            access_key_secret=access_key_secret,
            version="2017-05-25",
            client=client,
        )
        self._show_number = show_number

    async def send(self, message: Message) -> Sent:
        """Place the call; the message id is its ``CallId``."""
        body = await self._rpc.call(
            "SingleCallByTts",
            {
                "CalledNumber": message.recipient,
                "CalledShowNumber": self._show_number,
                "TtsCode": message.template,
                "TtsParam": json.dumps(dict(message.params), ensure_ascii=False, separators=(",", ":")),
                "PlayTimes": "2",
                "OutId": message.out_id,
            },
        )
        return Sent(provider_msg_id=str(body["CallId"]))


class VoiceReport(BaseModel):
    """One element of the pushed call report (VoiceReport, a JSON array of these)."""

    model_config = ConfigDict(extra="ignore")

    call_id: str
    status_code: str
    status_msg: str = ""
    out_id: str | None = None
    end_time: str | None = None

    def receipt(self) -> Receipt:
        """As a provider-neutral receipt: delivered when the call was answered."""
        return Receipt(
            provider="aliyun-voice",
            provider_msg_id=self.call_id,
            delivered=self.status_code in _ANSWERED,
            code=self.status_code,
            out_id=self.out_id or None,
            reported_at=china_time(self.end_time),
        )
