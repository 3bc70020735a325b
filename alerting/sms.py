"""SMS providers behind one interface, and the first real adapter: Aliyun-style template SMS.

The adapter speaks the dysmsapi ``SendSms`` RPC API (2017-05-25): form parameters ``PhoneNumbers``,
``SignName``, ``TemplateCode``, ``TemplateParam`` (JSON) and ``OutId``, signed with HMAC-SHA1 over the
canonical query string (signature version 1.0). The provider does not deduplicate, so the caller's
``out_id`` is unique per attempt and the outbox never sends one job twice on purpose.

Exceptions::

    SmsError
     ├── SmsRejected      the provider answered and refused (bad number, template, flow limit): do not retry as is
     └── SmsUnavailable   no usable answer (network, timeout, 5xx, throttling): retry later
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import quote

import httpx


class SmsError(Exception):
    """Sending an SMS failed."""


class SmsRejected(SmsError):
    """The provider refused the message; retrying the same request will not help."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class SmsUnavailable(SmsError):
    """The provider could not be reached or answered with a transient error."""


class SmsProvider(Protocol):
    """Sends one templated SMS to one number.

    Implementations return the provider's message id (for delivery receipts) and raise `SmsRejected`
    or `SmsUnavailable`. Example::

        biz_id = await provider.send(
            phone="13800001234", template_code="SMS_GG_ALARM_RESIDENT",
            params={"time": "06-13 06:42", "valve": "已关闭", "hotline": "0477-7212345"},
            out_id="outbox-17-1",
        )
    """

    name: str

    async def send(self, *, phone: str, template_code: str, params: Mapping[str, str], out_id: str) -> str:
        """Send the message and return the provider's message id."""
        ...


def percent_encode(value: str) -> str:
    """RFC 3986 encoding as Aliyun's signature requires (space as %20, '~' kept)."""
    return quote(value, safe="~")


def aliyun_signature(method: str, params: Mapping[str, str], secret: str) -> str:
    """HMAC-SHA1 signature of an Aliyun RPC request (signature version 1.0)."""
    canonical = "&".join(f"{percent_encode(k)}={percent_encode(params[k])}" for k in sorted(params))
    string_to_sign = f"{method}&{percent_encode('/')}&{percent_encode(canonical)}"
    digest = hmac.new(f"{secret}&".encode(), string_to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


# Aliyun codes that mean "try again later" rather than "this request is wrong".
_TRANSIENT_CODES = frozenset({"isp.SYSTEM_ERROR", "Throttling.User", "isv.BUSINESS_LIMIT_CONTROL_TEMP"})


class AliyunSmsProvider:
    """Template SMS through an Aliyun dysmsapi-compatible endpoint."""

    name = "aliyun"

    def __init__(
        self,
        *,
        endpoint: str,
        access_key_id: str,
        access_key_secret: str,
        sign_name: str,
        client: httpx.AsyncClient,
    ) -> None:
        self._endpoint = endpoint
        self._key_id = access_key_id
        self._secret = access_key_secret
        self._sign_name = sign_name
        self._client = client

    async def send(self, *, phone: str, template_code: str, params: Mapping[str, str], out_id: str) -> str:
        """Call ``SendSms`` and return its ``BizId``."""
        request = {
            "AccessKeyId": self._key_id,
            "Action": "SendSms",
            "Format": "JSON",
            "OutId": out_id,
            "PhoneNumbers": phone,
            "RegionId": "cn-hangzhou",
            "SignName": self._sign_name,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureNonce": uuid.uuid4().hex,
            "SignatureVersion": "1.0",
            "TemplateCode": template_code,
            "TemplateParam": json.dumps(dict(params), ensure_ascii=False, separators=(",", ":")),
            "Timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Version": "2017-05-25",
        }
        request["Signature"] = aliyun_signature("POST", request, self._secret)
        try:
            response = await self._client.post(self._endpoint, data=request)
        except httpx.HTTPError as err:
            raise SmsUnavailable(f"{type(err).__name__}: {err}") from err
        if response.status_code >= 500:
            raise SmsUnavailable(f"HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError as err:
            raise SmsUnavailable(f"HTTP {response.status_code} with a non-JSON body") from err
        code = str(body.get("Code", ""))
        if code == "OK":
            return str(body["BizId"])
        if code in _TRANSIENT_CODES:
            raise SmsUnavailable(f"{code}: {body.get('Message', '')}")
        raise SmsRejected(code or f"HTTP {response.status_code}", str(body.get("Message", "")))
