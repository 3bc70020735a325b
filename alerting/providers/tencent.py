"""Tencent Cloud template SMS: ``SendSms`` (API 3.0, version 2021-01-11) signed with TC3-HMAC-SHA256.

Numbers go out in E.164 (``+86…``), template parameters as an ordered array (``{1}``, ``{2}`` … in
the approved template), and ``SessionContext`` carries our out_id, which Tencent echoes back.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict

from alerting.providers.aliyun import china_time
from alerting.providers.base import Channel, Limited, Message, Receipt, Rejected, Sent, Unavailable

SERVICE = "sms"
VERSION = "2021-01-11"
CONTENT_TYPE = "application/json; charset=utf-8"


def _hmac_sha256(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def tc3_signature(
    *, secret_key: str, service: str, headers: Mapping[str, str], payload: bytes, timestamp: int
) -> tuple[str, str, str]:
    """TC3-HMAC-SHA256 of one POST request to ``/`` without a query: (signature, credential scope, signed headers).

    ``headers`` are the headers to sign; names and values go into the canonical request lower-cased and
    trimmed, sorted by name, as Tencent's "Signature v3" document specifies (its worked example is the
    known-answer test in tests/alerting/test_providers.py).
    """
    date = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")
    canonical = sorted((name.lower().strip(), value.lower().strip()) for name, value in headers.items())
    canonical_headers = "".join(f"{name}:{value}\n" for name, value in canonical)
    signed_headers = ";".join(name for name, _ in canonical)
    canonical_request = "\n".join(
        ["POST", "/", "", canonical_headers, signed_headers, hashlib.sha256(payload).hexdigest()]
    )
    scope = f"{date}/{service}/tc3_request"
    string_to_sign = "\n".join(
        ["TC3-HMAC-SHA256", str(timestamp), scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = _hmac_sha256(_hmac_sha256(_hmac_sha256(f"TC3{secret_key}".encode(), date), service), "tc3_request")
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest(), scope, signed_headers


@dataclass(frozen=True, slots=True)
class TencentTemplate:
    """An approved Tencent template: its numeric id and which of our parameters fill {1}, {2} …."""

    template_id: str
    param_order: Sequence[str]


# Codes that mean "try again later".
_TRANSIENT_PREFIXES = ("InternalError", "RequestLimitExceeded", "LimitExceeded.DeliveryFrequencyLimit")
_LIMIT_PREFIXES = ("LimitExceeded.PhoneNumber",)


def _classify(code: str, message: str) -> Exception:
    if code.startswith(_TRANSIENT_PREFIXES):
        return Unavailable(f"{code}: {message}")
    if code.startswith(_LIMIT_PREFIXES):
        return Limited(code, message)
    return Rejected(code, message)


class TencentSmsProvider:
    """Template SMS through a Tencent Cloud SMS-compatible endpoint."""

    name = "tencent"
    channel: Channel = "sms"

    def __init__(
        self,
        *,
        endpoint: str,
        secret_id: str,
        secret_key: str,
        sdk_app_id: str,
        sign_name: str,
        templates: Mapping[str, TencentTemplate],
        client: httpx.AsyncClient,
        region: str = "ap-guangzhou",
    ) -> None:
        self._endpoint = endpoint
        self._host = urlsplit(endpoint).netloc
        self._secret_id = secret_id
        self._secret_key = secret_key
        self._sdk_app_id = sdk_app_id
        self._sign_name = sign_name
        self._templates = dict(templates)
        self._client = client
        self._region = region

    async def send(self, message: Message) -> Sent:
        """Call ``SendSms``; the message id is the ``SerialNo``."""
        template = self._templates.get(message.template)
        if template is None:
            raise Rejected("GasGuard.TemplateNotMapped", f"no Tencent template id for {message.template}")
        body = {
            "PhoneNumberSet": [f"+86{message.recipient}"],
            "SmsSdkAppId": self._sdk_app_id,
            "SignName": self._sign_name,
            "TemplateId": template.template_id,
            "TemplateParamSet": [message.params[name] for name in template.param_order],
            "SessionContext": message.out_id,
        }
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        timestamp = int(time.time())
        signed = {"Content-Type": CONTENT_TYPE, "Host": self._host, "X-TC-Action": "SendSms"}
        signature, scope, signed_headers = tc3_signature(
            secret_key=self._secret_key, service=SERVICE, headers=signed, payload=payload, timestamp=timestamp
        )
        headers = {
            "Authorization": (
                f"TC3-HMAC-SHA256 Credential={self._secret_id}/{scope}, SignedHeaders={signed_headers},"
                f" Signature={signature}"
            ),
            **signed,
            "X-TC-Timestamp": str(timestamp),
            "X-TC-Version": VERSION,
            "X-TC-Region": self._region,
        }
        try:
            response = await self._client.post(self._endpoint, content=payload, headers=headers)
        except httpx.HTTPError as err:
            raise Unavailable(f"{type(err).__name__}: {err}") from err
        if response.status_code >= 500:
            raise Unavailable(f"HTTP {response.status_code}")
        try:
            answer = response.json()["Response"]
        except (ValueError, KeyError, TypeError) as err:
            raise Unavailable(f"HTTP {response.status_code} without a Response object") from err
        error = answer.get("Error")
        if error:
            raise _classify(str(error.get("Code", "")), str(error.get("Message", "")))
        statuses = answer.get("SendStatusSet") or []
        if not statuses:
            raise Unavailable("SendStatusSet is empty")
        status = statuses[0]
        if status.get("Code") != "Ok":
            raise _classify(str(status.get("Code", "")), str(status.get("Message", "")))
        return Sent(provider_msg_id=str(status["SerialNo"]))


class TencentSmsReport(BaseModel):
    """One element of Tencent's delivery-status callback (a JSON array of these)."""

    model_config = ConfigDict(extra="ignore")

    sid: str
    mobile: str
    report_status: str
    errmsg: str = ""
    user_receive_time: str | None = None

    def receipt(self) -> Receipt:
        """As a provider-neutral receipt."""
        return Receipt(
            provider="tencent",
            provider_msg_id=self.sid,
            delivered=self.report_status == "SUCCESS",
            code=self.errmsg or self.report_status,
            reported_at=china_time(self.user_receive_time),
        )
