"""A generic domestic SMS-gateway HTTP API (the shape most resellers share).

Every request carries ``account``, ``datetime`` (``YYYYMMDDhhmmss`` China time, accepted within 30
minutes) and ``sign`` = lower-case hex MD5 of account + password + datetime. ``POST /v1/sms/send`` with
``mobile`` and the full ``content`` (signature included) answers ``{"code": 0, "msgId": "…"}``;
``POST /v1/sms/report`` with ``ids`` (≤ 200, comma separated) answers the delivery reports, which the
gateway also pushes as ``{msgId, mobile, reportStatus: "DELIVRD" | other, submitTime, doneTime}``.
Codes: 0 ok; -1 busy (retry); -7 per-number frequency limit; anything else is a refusal.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

from alerting.providers.aliyun import CHINA_TZ, china_time
from alerting.providers.base import Channel, Limited, Message, Receipt, Rejected, Sent, Unavailable

DELIVERED = "DELIVRD"


def gateway_sign(account: str, password: str, stamp: str) -> str:
    """The request signature: MD5(account + password + datetime), lower-case hex."""
    return hashlib.md5(f"{account}{password}{stamp}".encode()).hexdigest()


class GenericGatewayProvider:
    """Content SMS through a generic gateway; its reports can be polled."""

    name = "generic"
    channel: Channel = "sms"

    def __init__(self, *, endpoint: str, account: str, password: str, client: httpx.AsyncClient) -> None:
        self._endpoint = endpoint.rstrip("/")
        self._account = account
        self._password = password
        self._client = client

    def _auth(self) -> dict[str, str]:
        stamp = datetime.now(CHINA_TZ).strftime("%Y%m%d%H%M%S")
        return {"account": self._account, "datetime": stamp, "sign": gateway_sign(self._account, self._password, stamp)}

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._client.post(f"{self._endpoint}{path}", json={**self._auth(), **body})
        except httpx.HTTPError as err:
            raise Unavailable(f"{type(err).__name__}: {err}") from err
        if response.status_code >= 500:
            raise Unavailable(f"HTTP {response.status_code}")
        try:
            answer = response.json()
        except ValueError as err:
            raise Unavailable(f"HTTP {response.status_code} with a non-JSON body") from err
        if not isinstance(answer, dict):
            raise Unavailable(f"HTTP {response.status_code} with an unexpected body")
        code = int(answer.get("code", -999))
        message = str(answer.get("msg", ""))
        if code == 0:
            return answer
        if code == -1:
            raise Unavailable(f"{code}: {message}")
        if code == -7:
            raise Limited(str(code), message)
        raise Rejected(str(code), message)

    async def send(self, message: Message) -> Sent:
        """Send the rendered text; the message id is the gateway's ``msgId``."""
        if not message.text:
            raise Rejected("GasGuard.NoContent", "the generic gateway needs the rendered text")
        answer = await self._post(
            "/v1/sms/send", {"mobile": message.recipient, "content": message.text, "extno": message.out_id}
        )
        return Sent(provider_msg_id=str(answer["msgId"]))

    async def query(self, *, recipient: str, provider_msg_id: str, sent_at: datetime) -> Receipt | None:
        """Pull the report for one message."""
        answer = await self._post("/v1/sms/report", {"ids": provider_msg_id})
        for raw in answer.get("reports") or []:
            report = GatewayReport.model_validate(raw)
            if report.msgId == provider_msg_id:
                return report.receipt()
        return None


class GatewayReport(BaseModel):
    """One delivery report of the generic gateway (pushed or pulled)."""

    model_config = ConfigDict(extra="ignore")

    msgId: str
    mobile: str
    reportStatus: str
    doneTime: str | None = None

    def receipt(self) -> Receipt:
        """As a provider-neutral receipt."""
        return Receipt(
            provider="generic",
            provider_msg_id=self.msgId,
            delivered=self.reportStatus == DELIVERED,
            code=self.reportStatus,
            reported_at=china_time(self.doneTime),
        )
