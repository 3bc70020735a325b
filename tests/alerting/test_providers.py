"""Tencent Cloud, generic-gateway, voice and webhook providers against the local sandbox (real HTTP).

The sandbox checks each provider's own request signature, so a passing send proves the signing.
The ``full_sandbox`` fixture here is imported by the notifier and receipt tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest

from alerting.notifier import ALL_SMS_TEMPLATES, tencent_param_order
from alerting.providers.base import Limited, Message, Rejected, Unavailable
from alerting.providers.generic_gateway import GenericGatewayProvider
from alerting.providers.tencent import TencentSmsProvider, TencentTemplate, tc3_signature
from alerting.providers.voice import VOICE_SCRIPTS, AliyunVoiceProvider
from alerting.providers.webhook import WebhookProvider
from gasguard.web import serve_asgi
from simulator.sms_platform import SmsPlatform, tencent_template_text
from tests.conftest import free_port

KEY_ID, KEY_SECRET = "test-key", "test-secret"
TENCENT_ID, TENCENT_KEY, TENCENT_APP = "AKIDtest", "tencent-secret", "1400000001"
GATEWAY_ACCOUNT, GATEWAY_PASSWORD = "wsqrq", "gw-pass"
WEBHOOK_SECRET = "em-secret"
SIGN = "乌审中燃"
PARAMS = {"time": "06-13 06:42", "valve": "已关闭", "hotline": "0477-7212345"}
#: Our template code → Tencent TemplateId, as the operator would configure GG_TENCENT_TEMPLATE_IDS.
TENCENT_IDS = {code: str(1_000_000 + i) for i, code in enumerate(sorted(ALL_SMS_TEMPLATES))}


@dataclass
class FullSandbox:
    """The provider sandbox with every API switched on."""

    platform: SmsPlatform
    base: str

    @property
    def aliyun_url(self) -> str:
        return f"{self.base}/"

    @property
    def voice_url(self) -> str:
        return f"{self.base}/voice/"

    @property
    def tencent_url(self) -> str:
        return f"{self.base}/tencent/"

    @property
    def gateway_url(self) -> str:
        return f"{self.base}/gateway"

    @property
    def webhook_url(self) -> str:
        return f"{self.base}/emergency/events"


@asynccontextmanager
async def running_sandbox() -> AsyncIterator[FullSandbox]:
    """Aliyun SMS + voice, Tencent, a generic gateway and the emergency webhook on one loopback port."""
    platform = SmsPlatform(
        keys={KEY_ID: KEY_SECRET, TENCENT_ID: TENCENT_KEY},
        sign_names=frozenset({SIGN}),
        templates={code: t.text for code, t in ALL_SMS_TEMPLATES.items()},
        tencent_app_ids=frozenset({TENCENT_APP}),
        tencent_templates={
            TENCENT_IDS[code]: tencent_template_text(t.text)[0] for code, t in ALL_SMS_TEMPLATES.items()
        },
        gateway_accounts={GATEWAY_ACCOUNT: GATEWAY_PASSWORD},
        voice_scripts=dict(VOICE_SCRIPTS),
        webhook_secret=WEBHOOK_SECRET,
    )
    port = free_port()
    ready = asyncio.Event()
    task = asyncio.create_task(serve_asgi(platform.app(), host="127.0.0.1", port=port, ready=ready))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield FullSandbox(platform=platform, base=f"http://127.0.0.1:{port}")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def full_sandbox() -> AsyncIterator[FullSandbox]:
    """The sandbox with every provider API."""
    async with running_sandbox() as sandbox:
        yield sandbox


def tencent(sandbox: FullSandbox, client: httpx.AsyncClient, *, key: str = TENCENT_KEY) -> TencentSmsProvider:
    return TencentSmsProvider(
        endpoint=sandbox.tencent_url,
        secret_id=TENCENT_ID,
        secret_key=key,
        sdk_app_id=TENCENT_APP,
        sign_name=SIGN,
        templates={
            code: TencentTemplate(TENCENT_IDS[code], tencent_param_order(t.text))
            for code, t in ALL_SMS_TEMPLATES.items()
        },
        client=client,
    )


def gateway(
    sandbox: FullSandbox, client: httpx.AsyncClient, *, password: str = GATEWAY_PASSWORD
) -> GenericGatewayProvider:
    return GenericGatewayProvider(
        endpoint=sandbox.gateway_url, account=GATEWAY_ACCOUNT, password=password, client=client
    )


def sms(out_id: str, phone: str = "13800001234", text: str = "") -> Message:
    return Message(
        channel="sms", recipient=phone, template="SMS_GG_ALARM_RESIDENT", params=PARAMS, out_id=out_id, text=text
    )


async def test_tencent_sends_e164_number_params_in_template_order_and_session_context(full_sandbox) -> None:
    async with httpx.AsyncClient() as client:
        sent = await tencent(full_sandbox, client).send(sms("gg-5-1"))
    [msg] = full_sandbox.platform.received
    assert msg.provider == "tencent" and msg.biz_id == sent.provider_msg_id and not sent.delivered
    assert msg.phone == "13800001234" and msg.out_id == "gg-5-1"
    assert msg.text == ALL_SMS_TEMPLATES["SMS_GG_ALARM_RESIDENT"].render(PARAMS, sign_name=SIGN)
    assert len(msg.text) <= 70


# Tencent Cloud's "Signature v3" document works one request through: CVM DescribeInstances in
# ap-guangzhou, timestamp 1551113065 (2019-02-25), this exact JSON body. The 2019 edition signs
# content-type and host with the key "Gu5t9xGARNpq86cd98joQYCN3*******" (hashed payload 35e9c5b0…,
# canonical request hash 5ffe6a04…, signature 2230eefd…); the current edition signs the same request
# with "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE" (signature 72e494ea…).
TC3_DOC_PAYLOAD = b'{"Limit": 1, "Filters": [{"Values": ["\\u672a\\u547d\\u540d"], "Name": "instance-name"}]}'
TC3_DOC_HEADERS = {"Content-Type": "application/json; charset=utf-8", "Host": "cvm.tencentcloudapi.com"}


@pytest.mark.parametrize(
    ("secret_key", "signature"),
    [
        ("Gu5t9xGARNpq86cd98joQYCN3*******", "2230eefd229f582d8b1b891af7107b91597240707d778ab3738f756258d7652c"),
        ("Gu5t9xGARNpq86cd98joQYCN3EXAMPLE", "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"),
    ],
)
def test_tc3_signature_matches_tencents_published_example(secret_key: str, signature: str) -> None:
    assert tc3_signature(
        secret_key=secret_key, service="cvm", headers=TC3_DOC_HEADERS, payload=TC3_DOC_PAYLOAD, timestamp=1551113065
    ) == (signature, "2019-02-25/cvm/tc3_request", "content-type;host")


async def test_tencent_wrong_key_fails_the_signature_check(full_sandbox) -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(Rejected, match=r"AuthFailure\.SignatureFailure"):
            await tencent(full_sandbox, client, key="wrong").send(sms("x"))
    assert full_sandbox.platform.received == []


async def test_tencent_per_number_limit_and_outage_are_classified(full_sandbox) -> None:
    full_sandbox.platform.daily_limit = 0
    async with httpx.AsyncClient() as client:
        with pytest.raises(Limited, match="PhoneNumberDailyLimit"):
            await tencent(full_sandbox, client).send(sms("x"))
        full_sandbox.platform.unavailable_for = 1
        with pytest.raises(Unavailable):
            await tencent(full_sandbox, client).send(sms("y"))


async def test_tencent_unmapped_template_is_refused_before_sending(full_sandbox) -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(Rejected, match="TemplateNotMapped"):
            await tencent(full_sandbox, client).send(
                Message(channel="sms", recipient="13800001234", template="SMS_NOPE", params={}, out_id="x")
            )


async def test_generic_gateway_sends_content_and_reports_are_pulled(full_sandbox) -> None:
    text = ALL_SMS_TEMPLATES["SMS_GG_ALARM_RESIDENT"].render(PARAMS, sign_name=SIGN)
    async with httpx.AsyncClient() as client:
        gw = gateway(full_sandbox, client)
        sent = await gw.send(sms("gg-6-1", text=text))
        full_sandbox.platform.reports_pending = True
        assert (
            await gw.query(recipient="13800001234", provider_msg_id=sent.provider_msg_id, sent_at=datetime.now(UTC))
            is None
        )
        full_sandbox.platform.reports_pending = False
        receipt = await gw.query(
            recipient="13800001234", provider_msg_id=sent.provider_msg_id, sent_at=datetime.now(UTC)
        )
    [msg] = full_sandbox.platform.received
    assert (msg.provider, msg.text, msg.out_id) == ("generic", text, "gg-6-1")
    assert receipt is not None and receipt.delivered and receipt.code == "DELIVRD"


async def test_generic_gateway_wrong_password_fails_the_md5_sign(full_sandbox) -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(Rejected, match="102"):
            await gateway(full_sandbox, client, password="wrong").send(sms("x", text="【乌审中燃】测试"))


async def test_voice_call_reads_the_approved_script(full_sandbox) -> None:
    async with httpx.AsyncClient() as client:
        voice = AliyunVoiceProvider(
            endpoint=full_sandbox.voice_url,
            access_key_id=KEY_ID,
            access_key_secret=KEY_SECRET,
            show_number="04777212345",
            client=client,
        )
        sent = await voice.send(
            Message(
                channel="voice", recipient="13800001234", template="TTS_GG_ALARM_RESIDENT", params=PARAMS, out_id="v"
            )
        )
    [call] = full_sandbox.platform.calls
    assert call.call_id == sent.provider_msg_id and call.phone == "13800001234" and call.out_id == "v"
    assert "切断阀已关闭" in call.text and "开窗通风" in call.text


def test_voice_scripts_never_tell_anyone_to_reopen_the_valve() -> None:
    for script in VOICE_SCRIPTS.values():
        assert not re.search(r"(打开|开启|重新开|恢复).{0,4}阀", script), script


async def test_webhook_is_signed_and_carries_no_phone_numbers(full_sandbox) -> None:
    params = {
        "place": "文苑社区3号楼2单元501（住户13812345678）",
        "resident_phone": "13812345678",
        "time": "06-13 06:42",
        "lel": "18",
    }
    async with httpx.AsyncClient() as client:
        hook = WebhookProvider(url=full_sandbox.webhook_url, secret=WEBHOOK_SECRET, client=client)
        sent = await hook.send(
            Message(
                channel="webhook",
                recipient="emergency-management",
                template="EM_GAS_ALARM",
                params=params,
                out_id="gg-9-1",
                incident_id=9,
            )
        )
    [event] = full_sandbox.platform.webhooks
    assert sent.delivered and sent.provider_msg_id == "EM-1"
    assert event.body["incident_id"] == 9 and event.body["event_id"] == "gg-9-1"
    assert event.body["params"]["time"] == "06-13 06:42" and event.body["params"]["lel"] == "18"
    assert "resident_phone" not in event.body["params"]
    assert not re.search(r"1[3-9]\d{9}", event.raw), event.raw
    assert json.loads(event.raw) == event.body


async def test_webhook_with_a_wrong_secret_is_refused(full_sandbox) -> None:
    async with httpx.AsyncClient() as client:
        hook = WebhookProvider(url=full_sandbox.webhook_url, secret="wrong", client=client)
        with pytest.raises(Rejected, match="HTTP 401"):
            await hook.send(Message(channel="webhook", recipient="em", template="T", params={}, out_id="x"))
    assert full_sandbox.platform.webhooks == []


async def test_webhook_goes_to_the_url_the_job_names(full_sandbox) -> None:
    async with httpx.AsyncClient() as client:
        hook = WebhookProvider(url=None, secret=WEBHOOK_SECRET, client=client)
        await hook.send(
            Message(
                channel="webhook",
                recipient=full_sandbox.webhook_url,
                template="WEBHOOK_GG_EMERGENCY",
                params={},
                out_id="a",
            )
        )
        with pytest.raises(Rejected, match="NoWebhookUrl"):
            await hook.send(Message(channel="webhook", recipient="em", template="T", params={}, out_id="b"))
    assert [w.body["event_id"] for w in full_sandbox.platform.webhooks] == ["a"]
