"""A local stand-in for a template-SMS provider (Aliyun dysmsapi ``SendSms``), for tests and the demo.

It is the outer boundary GasGuard cannot reach from here, so it is faked as a real HTTP server that
speaks the provider's API: it checks the HMAC-SHA1 request signature, the approved signature name and
template, fills the template, and records every message, which tests and the demo read back from
``GET /_sandbox/messages``. Faults can be switched on to exercise retries.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
_PHONE = re.compile(r"^1[3-9][0-9]{9}$")


def _percent_encode(value: str) -> str:
    return quote(value, safe="~")


def _signature(method: str, params: Mapping[str, str], secret: str) -> str:
    canonical = "&".join(f"{_percent_encode(k)}={_percent_encode(params[k])}" for k in sorted(params))
    string_to_sign = f"{method}&{_percent_encode('/')}&{_percent_encode(canonical)}"
    return base64.b64encode(hmac.new(f"{secret}&".encode(), string_to_sign.encode(), hashlib.sha1).digest()).decode()


@dataclass(frozen=True, slots=True)
class ReceivedSms:
    """One message the platform accepted."""

    biz_id: str
    phone: str
    sign_name: str
    template_code: str
    params: dict[str, str]
    out_id: str
    text: str
    received_at: str


@dataclass(slots=True)
class SmsPlatform:
    """State of the fake provider: credentials, approved signature and templates, received messages."""

    keys: dict[str, str]
    sign_names: frozenset[str]
    templates: dict[str, str]
    received: list[ReceivedSms] = field(default_factory=list)
    #: Fault injection: answer 503 to the next N requests.
    unavailable_for: int = 0

    def app(self) -> FastAPI:
        """The HTTP app speaking the provider's API."""
        app = FastAPI(title="SMS provider sandbox (Aliyun dysmsapi SendSms)")

        @app.api_route("/", methods=["GET", "POST"])
        async def rpc(request: Request) -> JSONResponse:
            params: dict[str, str] = dict(request.query_params)
            if request.method == "POST":
                params.update({k: str(v) for k, v in (await request.form()).items()})
            return self._handle(request.method, params)

        @app.get("/_sandbox/messages")
        async def messages() -> list[dict[str, Any]]:
            return [asdict(m) for m in self.received]

        return app

    def _handle(self, method: str, params: dict[str, str]) -> JSONResponse:
        request_id = str(uuid.uuid4())
        if self.unavailable_for > 0:
            self.unavailable_for -= 1
            return JSONResponse({"Code": "isp.SYSTEM_ERROR", "Message": "sandbox outage"}, status_code=503)
        signature = params.pop("Signature", "")
        secret = self.keys.get(params.get("AccessKeyId", ""))
        if secret is None:
            return _error(request_id, "InvalidAccessKeyId.NotFound", "unknown AccessKeyId", 404)
        if not hmac.compare_digest(signature, _signature(method, params, secret)):
            return _error(request_id, "SignatureDoesNotMatch", "signature mismatch", 400)
        if params.get("Action") != "SendSms" or params.get("Version") != "2017-05-25":
            return _error(request_id, "InvalidAction.NotFound", "only SendSms 2017-05-25 is served", 400)
        phone = params.get("PhoneNumbers", "")
        if not _PHONE.match(phone):
            return _error(request_id, "isv.MOBILE_NUMBER_ILLEGAL", f"bad number {phone!r}")
        sign_name = params.get("SignName", "")
        if sign_name not in self.sign_names:
            return _error(request_id, "isv.SMS_SIGNATURE_ILLEGAL", "signature name not approved")
        template = self.templates.get(params.get("TemplateCode", ""))
        if template is None:
            return _error(request_id, "isv.SMS_TEMPLATE_ILLEGAL", "template not approved")
        try:
            values = json.loads(params.get("TemplateParam", "{}"))
        except ValueError:
            return _error(request_id, "isv.INVALID_JSON_PARAM", "TemplateParam is not JSON")
        missing = set(_PLACEHOLDER.findall(template)) - set(values)
        if missing:
            return _error(request_id, "isv.TEMPLATE_MISSING_PARAMETERS", f"missing {sorted(missing)}")
        text = f"【{sign_name}】" + _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)
        biz_id = f"{uuid.uuid4().int % 10**18:018d}^0"
        self.received.append(
            ReceivedSms(
                biz_id=biz_id,
                phone=phone,
                sign_name=sign_name,
                template_code=params["TemplateCode"],
                params={k: str(v) for k, v in values.items()},
                out_id=params.get("OutId", ""),
                text=text,
                received_at=datetime.now(UTC).isoformat(),
            )
        )
        return JSONResponse({"Code": "OK", "Message": "OK", "BizId": biz_id, "RequestId": request_id})


def _error(request_id: str, code: str, message: str, status: int = 200) -> JSONResponse:
    return JSONResponse({"Code": code, "Message": message, "RequestId": request_id}, status_code=status)
