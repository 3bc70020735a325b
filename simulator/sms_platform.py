"""A local stand-in for the notification providers, for tests and the demo.

These are the outer boundaries GasGuard cannot reach from here, so they are faked as one real HTTP
server that speaks each provider's API and checks each one's request signature:

- ``/``            Aliyun dysmsapi RPC (HMAC-SHA1): ``SendSms`` and ``QuerySendDetails``
- ``/voice/``      Aliyun dyvmsapi RPC: ``SingleCallByTts``
- ``/tencent/``    Tencent Cloud SMS API 3.0 ``SendSms`` 2021-01-11 (TC3-HMAC-SHA256)
- ``/gateway/v1/sms/send`` and ``/gateway/v1/sms/report``  a generic gateway (account + MD5 sign)
- ``/emergency/events``  the emergency-management webhook receiver (HMAC-SHA256 header)

Every accepted message is recorded (``GET /_sandbox/messages``, ``/_sandbox/calls``,
``/_sandbox/webhooks``). Delivery reports are pushed to ``push_urls[provider]`` by `push_reports`
(or after every message when ``auto_push`` is on) in each provider's own format, and answered to
polling. Faults: ``unavailable_for`` (next N requests fail with 503), ``daily_limit`` (per number
and template, as the providers' flow control), ``undeliverable`` (numbers whose reports say failed)
and ``reports_pending`` (polling answers "still waiting").
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

_LOGGER = logging.getLogger(__name__)
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")
_PHONE = re.compile(r"^1[3-9][0-9]{9}$")
_CHINA = ZoneInfo("Asia/Shanghai")


def _percent_encode(value: str) -> str:
    return quote(value, safe="~")


def _signature(method: str, params: Mapping[str, str], secret: str) -> str:
    canonical = "&".join(f"{_percent_encode(k)}={_percent_encode(params[k])}" for k in sorted(params))
    string_to_sign = f"{method}&{_percent_encode('/')}&{_percent_encode(canonical)}"
    return base64.b64encode(hmac.new(f"{secret}&".encode(), string_to_sign.encode(), hashlib.sha1).digest()).decode()


def _tc3_expected(secret_key: str, request_headers: Mapping[str, str], signed: str, payload: bytes, ts: str) -> str:
    """TC3-HMAC-SHA256 over the headers the client says it signed (implemented from Tencent's doc)."""
    names = signed.split(";")
    canonical_headers = "".join(f"{n}:{request_headers.get(n, '').strip().lower()}\n" for n in names)
    canonical = f"POST\n/\n\n{canonical_headers}\n{signed}\n{hashlib.sha256(payload).hexdigest()}"
    date = datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%d")
    to_sign = f"TC3-HMAC-SHA256\n{ts}\n{date}/sms/tc3_request\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = f"TC3{secret_key}".encode()
    for part in (date, "sms", "tc3_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def _china_now() -> str:
    return datetime.now(_CHINA).strftime("%Y-%m-%d %H:%M:%S")


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
    provider: str = "aliyun"


@dataclass(frozen=True, slots=True)
class ReceivedCall:
    """One TTS call the platform placed."""

    call_id: str
    phone: str
    tts_code: str
    params: dict[str, str]
    out_id: str
    text: str
    received_at: str


@dataclass(frozen=True, slots=True)
class ReceivedWebhook:
    """One event the emergency-management receiver accepted (signature verified)."""

    body: dict[str, Any]
    raw: str
    received_at: str


@dataclass(slots=True)
class SmsPlatform:
    """State of the fake providers: credentials, approved signatures and templates, what they received."""

    keys: dict[str, str]
    sign_names: frozenset[str]
    templates: dict[str, str]
    received: list[ReceivedSms] = field(default_factory=list)
    #: Fault injection: answer 503 to the next N requests (any provider).
    unavailable_for: int = 0
    #: Tencent: approved SdkAppIds and TemplateId → text with {1}, {2} … placeholders.
    tencent_app_ids: frozenset[str] = frozenset()
    tencent_templates: dict[str, str] = field(default_factory=dict)
    #: Generic gateway: account → password.
    gateway_accounts: dict[str, str] = field(default_factory=dict)
    #: Voice: TTS code → script with ${name} placeholders.
    voice_scripts: dict[str, str] = field(default_factory=dict)
    calls: list[ReceivedCall] = field(default_factory=list)
    #: Emergency-management webhook: shared secret; None refuses every event.
    webhook_secret: str | None = None
    webhooks: list[ReceivedWebhook] = field(default_factory=list)
    #: Flow control: at most this many messages per number and template (None: unlimited).
    daily_limit: int | None = None
    #: Numbers whose delivery reports say "not delivered" (calls: not answered).
    undeliverable: set[str] = field(default_factory=set)
    #: Polling answers "waiting for the carrier" while set.
    reports_pending: bool = False
    #: Provider ("aliyun", "tencent", "generic", "aliyun-voice") → URL its reports are pushed to.
    push_urls: dict[str, str] = field(default_factory=dict)
    auto_push: bool = False
    #: Message ids already pushed, and the answers the receiver gave.
    pushed: set[str] = field(default_factory=set)
    push_answers: list[Any] = field(default_factory=list)
    _sent_count: Counter[tuple[str, str]] = field(default_factory=Counter)
    _push_tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def app(self) -> FastAPI:
        """The HTTP app speaking the providers' APIs."""
        app = FastAPI(title="Notification provider sandbox (Aliyun, Tencent, gateway, voice, webhook)")

        @app.api_route("/", methods=["GET", "POST"])
        async def rpc(request: Request) -> JSONResponse:
            return self._after(self._handle(request.method, await _rpc_params(request)), "aliyun")

        @app.post("/voice/")
        async def voice(request: Request) -> JSONResponse:
            return self._after(self._handle_voice(request.method, await _rpc_params(request)), "aliyun-voice")

        @app.post("/tencent/")
        async def tencent(request: Request) -> JSONResponse:
            headers = {k.lower(): v for k, v in request.headers.items()}
            return self._after(self._handle_tencent(headers, await request.body()), "tencent")

        @app.post("/gateway/v1/sms/send")
        async def gateway_send(request: Request) -> JSONResponse:
            return self._after(self._handle_gateway_send(await _json(request)), "generic")

        @app.post("/gateway/v1/sms/report")
        async def gateway_report(request: Request) -> JSONResponse:
            return self._handle_gateway_report(await _json(request))

        @app.post("/emergency/events")
        async def emergency(request: Request) -> JSONResponse:
            return self._handle_webhook({k.lower(): v for k, v in request.headers.items()}, await request.body())

        @app.get("/_sandbox/messages")
        async def messages() -> list[dict[str, Any]]:
            return [asdict(m) for m in self.received]

        @app.get("/_sandbox/calls")
        async def calls() -> list[dict[str, Any]]:
            return [asdict(c) for c in self.calls]

        @app.get("/_sandbox/webhooks")
        async def webhooks() -> list[dict[str, Any]]:
            return [asdict(w) for w in self.webhooks]

        return app

    # -- faults shared by every provider ---------------------------------------------------------

    def _outage(self) -> bool:
        if self.unavailable_for > 0:
            self.unavailable_for -= 1
            return True
        return False

    def _over_limit(self, phone: str, template: str) -> bool:
        if self.daily_limit is None:
            return False
        return self._sent_count[(phone, template)] >= self.daily_limit

    def _after(self, response: JSONResponse, provider: str) -> JSONResponse:
        if self.auto_push and provider in self.push_urls:
            task = asyncio.ensure_future(self.push_reports(provider))
            self._push_tasks.add(task)
            task.add_done_callback(self._push_tasks.discard)
        return response

    # -- Aliyun SMS --------------------------------------------------------------------------------

    def _verify_rpc(self, method: str, params: dict[str, str], request_id: str) -> JSONResponse | None:
        signature = params.pop("Signature", "")
        secret = self.keys.get(params.get("AccessKeyId", ""))
        if secret is None:
            return _error(request_id, "InvalidAccessKeyId.NotFound", "unknown AccessKeyId", 404)
        if not hmac.compare_digest(signature, _signature(method, params, secret)):
            return _error(request_id, "SignatureDoesNotMatch", "signature mismatch", 400)
        return None

    def _handle(self, method: str, params: dict[str, str]) -> JSONResponse:
        request_id = str(uuid.uuid4())
        if self._outage():
            return JSONResponse({"Code": "isp.SYSTEM_ERROR", "Message": "sandbox outage"}, status_code=503)
        refused = self._verify_rpc(method, params, request_id)
        if refused is not None:
            return refused
        if params.get("Version") != "2017-05-25":
            return _error(request_id, "InvalidVersion", "only 2017-05-25 is served", 400)
        if params.get("Action") == "QuerySendDetails":
            return self._query_send_details(params, request_id)
        if params.get("Action") != "SendSms":
            return _error(request_id, "InvalidAction.NotFound", "only SendSms and QuerySendDetails are served", 400)
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
        if self._over_limit(phone, params["TemplateCode"]):
            return _error(request_id, "isv.BUSINESS_LIMIT_CONTROL", "触发天级流控Permits:50")
        text = f"【{sign_name}】" + _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)
        biz_id = f"{uuid.uuid4().int % 10**18:018d}^0"
        self._accept_sms(
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

    def _accept_sms(self, sms: ReceivedSms) -> None:
        self._sent_count[(sms.phone, sms.template_code)] += 1
        self.received.append(sms)

    def _query_send_details(self, params: dict[str, str], request_id: str) -> JSONResponse:
        biz_id, phone = params.get("BizId", ""), params.get("PhoneNumber", "")
        details = []
        for m in self.received:
            if m.provider == "aliyun" and m.biz_id == biz_id and m.phone == phone:
                status = 1 if self.reports_pending else (2 if phone in self.undeliverable else 3)
                details.append(
                    {
                        "PhoneNum": phone,
                        "SendStatus": status,
                        "ErrCode": {1: "", 2: "MK:0001", 3: "DELIVERED"}[status],
                        "TemplateCode": m.template_code,
                        "Content": m.text,
                        "SendDate": _china_now(),
                        "ReceiveDate": "" if status == 1 else _china_now(),
                        "OutId": m.out_id,
                    }
                )
        return JSONResponse(
            {
                "Code": "OK",
                "Message": "OK",
                "RequestId": request_id,
                "TotalCount": len(details),
                "SmsSendDetailDTOs": {"SmsSendDetailDTO": details},
            }
        )

    # -- Aliyun voice ------------------------------------------------------------------------------

    def _handle_voice(self, method: str, params: dict[str, str]) -> JSONResponse:
        request_id = str(uuid.uuid4())
        if self._outage():
            return JSONResponse({"Code": "isp.SYSTEM_ERROR", "Message": "sandbox outage"}, status_code=503)
        refused = self._verify_rpc(method, params, request_id)
        if refused is not None:
            return refused
        if params.get("Action") != "SingleCallByTts" or params.get("Version") != "2017-05-25":
            return _error(request_id, "InvalidAction.NotFound", "only SingleCallByTts 2017-05-25 is served", 400)
        phone = params.get("CalledNumber", "")
        if not _PHONE.match(phone):
            return _error(request_id, "isv.MOBILE_NUMBER_ILLEGAL", f"bad number {phone!r}")
        script = self.voice_scripts.get(params.get("TtsCode", ""))
        if script is None:
            return _error(request_id, "isv.TTS_TEMPLATE_ILLEGAL", "TTS template not approved")
        try:
            values = json.loads(params.get("TtsParam", "{}"))
        except ValueError:
            return _error(request_id, "isv.INVALID_JSON_PARAM", "TtsParam is not JSON")
        missing = set(_PLACEHOLDER.findall(script)) - set(values)
        if missing:
            return _error(request_id, "isv.TEMPLATE_MISSING_PARAMETERS", f"missing {sorted(missing)}")
        call_id = f"{uuid.uuid4().int % 10**12:012d}^{uuid.uuid4().int % 10**12:012d}"
        self.calls.append(
            ReceivedCall(
                call_id=call_id,
                phone=phone,
                tts_code=params["TtsCode"],
                params={k: str(v) for k, v in values.items()},
                out_id=params.get("OutId", ""),
                text=_PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), script),
                received_at=datetime.now(UTC).isoformat(),
            )
        )
        return JSONResponse({"Code": "OK", "Message": "OK", "CallId": call_id, "RequestId": request_id})

    # -- Tencent Cloud -----------------------------------------------------------------------------

    def _handle_tencent(self, headers: dict[str, str], payload: bytes) -> JSONResponse:
        request_id = str(uuid.uuid4())
        if self._outage():
            return JSONResponse({"Response": _tc_error(request_id, "InternalError.Timeout", "sandbox outage")}, 503)
        auth = headers.get("authorization", "")
        match = re.fullmatch(
            r"TC3-HMAC-SHA256 Credential=([^/]+)/([0-9-]+)/sms/tc3_request,"
            r" SignedHeaders=([a-z;-]+), Signature=([0-9a-f]{64})",
            auth,
        )
        if match is None:
            return JSONResponse({"Response": _tc_error(request_id, "AuthFailure.InvalidAuthorization", auth[:60])})
        secret_id, _, signed, signature = match.groups()
        secret = self.keys.get(secret_id)
        if secret is None:
            return JSONResponse({"Response": _tc_error(request_id, "AuthFailure.SecretIdNotFound", secret_id)})
        if "host" not in signed.split(";") or "content-type" not in signed.split(";"):
            return JSONResponse({"Response": _tc_error(request_id, "AuthFailure.SignatureFailure", "unsigned host")})
        expected = _tc3_expected(secret, headers, signed, payload, headers.get("x-tc-timestamp", "0"))
        if not hmac.compare_digest(signature, expected):
            return JSONResponse({"Response": _tc_error(request_id, "AuthFailure.SignatureFailure", "mismatch")})
        if headers.get("x-tc-action") != "SendSms" or headers.get("x-tc-version") != "2021-01-11":
            return JSONResponse({"Response": _tc_error(request_id, "InvalidAction", "only SendSms 2021-01-11")})
        try:
            body = json.loads(payload)
        except ValueError:
            return JSONResponse({"Response": _tc_error(request_id, "InvalidParameter", "body is not JSON")})
        if body.get("SmsSdkAppId") not in self.tencent_app_ids:
            return JSONResponse({"Response": _tc_error(request_id, "FailedOperation.SmsSdkAppIdVerifyFail", "")})
        if body.get("SignName") not in self.sign_names:
            return JSONResponse(
                {"Response": _tc_error(request_id, "FailedOperation.SignatureIncorrectOrUnapproved", "")}
            )
        template = self.tencent_templates.get(str(body.get("TemplateId")))
        if template is None:
            return JSONResponse(
                {"Response": _tc_error(request_id, "FailedOperation.TemplateIncorrectOrUnapproved", "")}
            )
        values = [str(v) for v in body.get("TemplateParamSet") or []]
        if len(values) != len(re.findall(r"\{\d+\}", template)):
            return JSONResponse(
                {"Response": _tc_error(request_id, "InvalidParameterValue.TemplateParameterFormatError", "")}
            )
        statuses = []
        for number in body.get("PhoneNumberSet") or []:
            phone = str(number).removeprefix("+86")
            status: dict[str, Any] = {
                "PhoneNumber": number,
                "SessionContext": body.get("SessionContext", ""),
                "Fee": 0,
                "IsoCode": "CN",
                "SerialNo": "",
            }
            if not str(number).startswith("+86") or not _PHONE.match(phone):
                statuses.append(
                    {**status, "Code": "InvalidParameterValue.IncorrectPhoneNumber", "Message": "bad number"}
                )
                continue
            if self._over_limit(phone, str(body["TemplateId"])):
                statuses.append({**status, "Code": "LimitExceeded.PhoneNumberDailyLimit", "Message": "daily limit"})
                continue
            serial = f"{uuid.uuid4().int % 10**10:010d}:{uuid.uuid4().hex[:24]}"
            text = f"【{body['SignName']}】" + re.sub(r"\{(\d+)\}", lambda m: values[int(m.group(1)) - 1], template)
            self._accept_sms(
                ReceivedSms(
                    biz_id=serial,
                    phone=phone,
                    sign_name=body["SignName"],
                    template_code=str(body["TemplateId"]),
                    params={str(i + 1): v for i, v in enumerate(values)},
                    out_id=str(body.get("SessionContext", "")),
                    text=text,
                    received_at=datetime.now(UTC).isoformat(),
                    provider="tencent",
                )
            )
            statuses.append({**status, "Code": "Ok", "Message": "send success", "SerialNo": serial, "Fee": 1})
        return JSONResponse({"Response": {"SendStatusSet": statuses, "RequestId": request_id}})

    # -- generic gateway ---------------------------------------------------------------------------

    def _gateway_auth(self, body: dict[str, Any]) -> JSONResponse | None:
        password = self.gateway_accounts.get(str(body.get("account", "")))
        if password is None:
            return JSONResponse({"code": 101, "msg": "账号不存在"})
        stamp = str(body.get("datetime", ""))
        try:
            at = datetime.strptime(stamp, "%Y%m%d%H%M%S").replace(tzinfo=_CHINA)
        except ValueError:
            return JSONResponse({"code": 103, "msg": "datetime 格式错误"})
        if abs((datetime.now(UTC) - at).total_seconds()) > 1800:
            return JSONResponse({"code": 104, "msg": "datetime 超出30分钟"})
        expected = hashlib.md5(f"{body['account']}{password}{stamp}".encode()).hexdigest()
        if not hmac.compare_digest(str(body.get("sign", "")), expected):
            return JSONResponse({"code": 102, "msg": "签名错误"})
        return None

    def _handle_gateway_send(self, body: dict[str, Any]) -> JSONResponse:
        if self._outage():
            return JSONResponse({"code": -1, "msg": "系统忙"}, status_code=503)
        refused = self._gateway_auth(body)
        if refused is not None:
            return refused
        phone, content = str(body.get("mobile", "")), str(body.get("content", ""))
        if not _PHONE.match(phone):
            return JSONResponse({"code": 201, "msg": "号码错误"})
        sign = re.match(r"^【([^】]+)】", content)
        if sign is None or sign.group(1) not in self.sign_names:
            return JSONResponse({"code": 202, "msg": "签名未报备"})
        if self._over_limit(phone, content):
            return JSONResponse({"code": -7, "msg": "同号码频率超限"})
        msg_id = uuid.uuid4().hex
        self._accept_sms(
            ReceivedSms(
                biz_id=msg_id,
                phone=phone,
                sign_name=sign.group(1),
                template_code=content,
                params={},
                out_id=str(body.get("extno", "")),
                text=content,
                received_at=datetime.now(UTC).isoformat(),
                provider="generic",
            )
        )
        return JSONResponse({"code": 0, "msg": "成功", "msgId": msg_id})

    def _gateway_report_of(self, m: ReceivedSms) -> dict[str, Any]:
        return {
            "msgId": m.biz_id,
            "mobile": m.phone,
            "reportStatus": "UNDELIV" if m.phone in self.undeliverable else "DELIVRD",
            "submitTime": _china_now(),
            "doneTime": _china_now(),
        }

    def _handle_gateway_report(self, body: dict[str, Any]) -> JSONResponse:
        refused = self._gateway_auth(body)
        if refused is not None:
            return refused
        ids = set(str(body.get("ids", "")).split(",")[:200])
        reports = (
            []
            if self.reports_pending
            else [self._gateway_report_of(m) for m in self.received if m.provider == "generic" and m.biz_id in ids]
        )
        return JSONResponse({"code": 0, "msg": "成功", "reports": reports})

    # -- emergency-management webhook receiver -----------------------------------------------------

    def _handle_webhook(self, headers: dict[str, str], payload: bytes) -> JSONResponse:
        if self._outage():
            return JSONResponse({"error": "sandbox outage"}, status_code=503)
        if self.webhook_secret is None:
            return JSONResponse({"error": "no webhook configured"}, status_code=403)
        stamp = headers.get("x-gasguard-timestamp", "")
        expected = (
            "sha256="
            + hmac.new(self.webhook_secret.encode(), stamp.encode() + b"." + payload, hashlib.sha256).hexdigest()
        )
        if not hmac.compare_digest(headers.get("x-gasguard-signature", ""), expected):
            return JSONResponse({"error": "bad signature"}, status_code=401)
        try:
            body = json.loads(payload)
        except ValueError:
            return JSONResponse({"error": "body is not JSON"}, status_code=400)
        self.webhooks.append(
            ReceivedWebhook(body=body, raw=payload.decode(), received_at=datetime.now(UTC).isoformat())
        )
        return JSONResponse({"id": f"EM-{len(self.webhooks)}", "status": "accepted"})

    # -- delivery reports pushed to GasGuard -------------------------------------------------------

    def reports(self, provider: str) -> list[tuple[str, dict[str, Any]]]:
        """Reports not pushed yet for one provider, as (message id, report in that provider's format)."""
        out: list[tuple[str, dict[str, Any]]] = []
        if provider == "aliyun-voice":
            for c in self.calls:
                if c.call_id not in self.pushed:
                    answered = c.phone not in self.undeliverable
                    out.append(
                        (
                            c.call_id,
                            {
                                "call_id": c.call_id,
                                "status_code": "200000" if answered else "200005",
                                "status_msg": "用户听完挂断" if answered else "用户未接听",
                                "out_id": c.out_id,
                                "end_time": _china_now(),
                            },
                        )
                    )
            return out
        for m in self.received:
            if m.provider != provider or m.biz_id in self.pushed:
                continue
            ok = m.phone not in self.undeliverable
            if provider == "aliyun":
                report: dict[str, Any] = {
                    "phone_number": m.phone,
                    "send_time": _china_now(),
                    "report_time": _china_now(),
                    "success": ok,
                    "err_code": "DELIVERED" if ok else "MK:0001",
                    "err_msg": "用户接收成功" if ok else "空号",
                    "sms_size": "1",
                    "biz_id": m.biz_id,
                    "out_id": m.out_id,
                }
            elif provider == "tencent":
                report = {
                    "user_receive_time": _china_now(),
                    "nationcode": "86",
                    "mobile": m.phone,
                    "report_status": "SUCCESS" if ok else "FAIL",
                    "errmsg": "DELIVRD" if ok else "MK:0001",
                    "description": "用户短信送达成功" if ok else "用户短信送达失败",
                    "sid": m.biz_id,
                }
            else:
                report = self._gateway_report_of(m)
            out.append((m.biz_id, report))
        return out

    async def push_reports(self, provider: str, *, repeat: bool = False) -> Any:
        """POST the pending reports of ``provider`` to its push URL as one batch; returns the answer.

        ``repeat`` pushes every report again (providers retry when unsure), to exercise idempotency.
        """
        url = self.push_urls[provider]
        if repeat:
            self.pushed.clear()
        batch = self.reports(provider)
        if not batch:
            return None
        async with httpx.AsyncClient(timeout=10) as client:
            try:
                response = await client.post(url, json=[report for _, report in batch])
            except httpx.HTTPError as err:
                _LOGGER.warning("pushing %s reports failed: %s", provider, err)
                return None
        answer = response.json() if response.headers.get("content-type", "").startswith("application/json") else None
        self.push_answers.append(answer)
        if response.status_code == 200:
            self.pushed.update(msg_id for msg_id, _ in batch)
        return answer


async def _rpc_params(request: Request) -> dict[str, str]:
    params: dict[str, str] = dict(request.query_params)
    if request.method == "POST":
        params.update({k: str(v) for k, v in (await request.form()).items()})
    return params


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def tencent_template_text(text: str) -> tuple[str, list[str]]:
    """Our ``${name}`` template as Tencent's ``{1}``, ``{2}`` … text, with the parameter order."""
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        order.append(match.group(1))
        return f"{{{len(order)}}}"

    return _PLACEHOLDER.sub(number, text), order


def _error(request_id: str, code: str, message: str, status: int = 200) -> JSONResponse:
    return JSONResponse({"Code": code, "Message": message, "RequestId": request_id}, status_code=status)


def _tc_error(request_id: str, code: str, message: str) -> dict[str, Any]:
    return {"Error": {"Code": code, "Message": message}, "RequestId": request_id}
