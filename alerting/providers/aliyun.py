"""Aliyun adapters: template SMS (dysmsapi ``SendSms`` / ``QuerySendDetails``) and its SmsReport push.

The RPC API (2017-05-25) takes form parameters signed with HMAC-SHA1 over the canonical query string
(signature version 1.0). ``SendSms`` does not deduplicate, so every attempt carries its own ``OutId``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import httpx
from pydantic import BaseModel, ConfigDict

from alerting.providers.base import Channel, Limited, Message, Receipt, Rejected, Sent, Unavailable

CHINA_TZ = ZoneInfo("Asia/Shanghai")

# Codes that mean "try again later" rather than "this request is wrong".
_TRANSIENT_CODES = frozenset({"isp.SYSTEM_ERROR", "Throttling.User", "isv.BUSINESS_LIMIT_CONTROL_TEMP"})
# Per-number flow control: the number has had enough of this template today.
_LIMIT_CODES = frozenset({"isv.BUSINESS_LIMIT_CONTROL", "isv.DAY_LIMIT_CONTROL"})


def percent_encode(value: str) -> str:
    """RFC 3986 encoding as Aliyun's signature requires (space as %20, '~' kept)."""
    return quote(value, safe="~")


def aliyun_signature(method: str, params: Mapping[str, str], secret: str) -> str:
    """HMAC-SHA1 signature of an Aliyun RPC request (signature version 1.0)."""
    canonical = "&".join(f"{percent_encode(k)}={percent_encode(params[k])}" for k in sorted(params))
    string_to_sign = f"{method}&{percent_encode('/')}&{percent_encode(canonical)}"
    digest = hmac.new(f"{secret}&".encode(), string_to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def china_time(value: str | None) -> datetime | None:
    """Parse ``YYYY-MM-DD HH:MM:SS`` in China time (how Aliyun and Tencent report times)."""
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA_TZ)
    except ValueError:
        return None


class AliyunRpc:
    """Signed calls to one Aliyun RPC product endpoint."""

    def __init__(
        self, *, endpoint: str, access_key_id: str, access_key_secret: str, version: str, client: httpx.AsyncClient
    ) -> None:
        self._endpoint = endpoint
        self._key_id = access_key_id
        self._secret = access_key_secret
        self._version = version
        self._client = client

    async def call(self, action: str, params: Mapping[str, str]) -> dict[str, Any]:
        """POST one action; returns the JSON body whose ``Code`` is ``OK``, raises otherwise."""
        request = {
            "AccessKeyId": self._key_id,
            "Action": action,
            "Format": "JSON",
            "RegionId": "cn-hangzhou",
            "SignatureMethod": "HMAC-SHA1",
            "SignatureNonce": uuid.uuid4().hex,
            "SignatureVersion": "1.0",
            "Timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Version": self._version,
            **params,
        }
        request["Signature"] = aliyun_signature("POST", request, self._secret)
        try:
            response = await self._client.post(self._endpoint, data=request)
        except httpx.HTTPError as err:
            raise Unavailable(f"{type(err).__name__}: {err}") from err
        if response.status_code >= 500:
            raise Unavailable(f"HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError as err:
            raise Unavailable(f"HTTP {response.status_code} with a non-JSON body") from err
        if not isinstance(body, dict):
            raise Unavailable(f"HTTP {response.status_code} with an unexpected body")
        code = str(body.get("Code", ""))
        if code == "OK":
            return body
        message = str(body.get("Message", ""))
        if code in _TRANSIENT_CODES:
            raise Unavailable(f"{code}: {message}")
        if code in _LIMIT_CODES:
            raise Limited(code, message)
        raise Rejected(code or f"HTTP {response.status_code}", message)


class AliyunSmsProvider:
    """Template SMS through an Aliyun dysmsapi-compatible endpoint; its reports can be polled."""

    name = "aliyun"
    channel: Channel = "sms"

    def __init__(
        self,
        *,
        endpoint: str,
        access_key_id: str,
        access_key_secret: str,
        sign_name: str,
        client: httpx.AsyncClient,
    ) -> None:
        self._rpc = AliyunRpc(
            endpoint=endpoint,
            access_key_id=access_key_id,
            access_key_secret=access_key_secret,
            version="2017-05-25",
            client=client,
        )
        self._sign_name = sign_name

    async def send(self, message: Message) -> Sent:
        """Call ``SendSms``; the message id is its ``BizId``."""
        body = await self._rpc.call(
            "SendSms",
            {
                "OutId": message.out_id,
                "PhoneNumbers": message.recipient,
                "SignName": self._sign_name,
                "TemplateCode": message.template,
                "TemplateParam": json.dumps(dict(message.params), ensure_ascii=False, separators=(",", ":")),
            },
        )
        return Sent(provider_msg_id=str(body["BizId"]))

    async def query(self, *, recipient: str, provider_msg_id: str, sent_at: datetime) -> Receipt | None:
        """``QuerySendDetails`` for one message: a receipt once the carrier reported, else None."""
        body = await self._rpc.call(
            "QuerySendDetails",
            {
                "PhoneNumber": recipient,
                "BizId": provider_msg_id,
                "SendDate": sent_at.astimezone(CHINA_TZ).strftime("%Y%m%d"),
                "PageSize": "10",
                "CurrentPage": "1",
            },
        )
        details = (body.get("SmsSendDetailDTOs") or {}).get("SmsSendDetailDTO") or []
        for detail in details:
            status = int(detail.get("SendStatus", 1))
            if status == 1:  # still waiting for the carrier
                continue
            return Receipt(
                provider=self.name,
                provider_msg_id=provider_msg_id,
                delivered=status == 3,
                code=str(detail.get("ErrCode") or ("DELIVERED" if status == 3 else "FAILED")),
                out_id=detail.get("OutId") or None,
                reported_at=china_time(detail.get("ReceiveDate")),
            )
        return None


class AliyunSmsReport(BaseModel):
    """One element of Aliyun's SmsReport push (a JSON array of these)."""

    model_config = ConfigDict(extra="ignore")

    phone_number: str
    success: bool
    biz_id: str
    err_code: str = ""
    err_msg: str = ""
    out_id: str | None = None
    send_time: str | None = None
    report_time: str | None = None

    def receipt(self) -> Receipt:
        """As a provider-neutral receipt."""
        return Receipt(
            provider="aliyun",
            provider_msg_id=self.biz_id,
            delivered=self.success,
            code=self.err_code or ("DELIVERED" if self.success else "FAILED"),
            out_id=self.out_id or None,
            reported_at=china_time(self.report_time),
        )
