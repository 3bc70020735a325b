"""The Aliyun-style SMS adapter against a real HTTP server speaking that API."""

from datetime import UTC, datetime

import httpx
import pytest

from alerting.sms import AliyunSmsProvider, Message, SmsLimited, SmsRejected, SmsUnavailable, aliyun_signature

PARAMS = {"time": "06-13 06:42", "valve": "已关闭", "hotline": "0477-7212345"}


def provider(sandbox, client, *, secret=None, sign="乌审中燃") -> AliyunSmsProvider:
    return AliyunSmsProvider(
        endpoint=sandbox.url,
        access_key_id=sandbox.key_id,
        access_key_secret=secret or sandbox.key_secret,
        sign_name=sign,
        client=client,
    )


def message(out_id: str = "x", phone: str = "13800001234") -> Message:
    return Message(channel="sms", recipient=phone, template="SMS_GG_ALARM_RESIDENT", params=PARAMS, out_id=out_id)


def test_signature_matches_aliyun_documented_example() -> None:
    # The worked example of Aliyun's RPC signature documentation (AccessKey secret "testsecret").
    params = {
        "TimeStamp": "2016-02-23T12:46:24Z",
        "Format": "XML",
        "AccessKeyId": "testid",
        "Action": "DescribeRegions",
        "SignatureMethod": "HMAC-SHA1",
        "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
        "Version": "2014-05-26",
        "SignatureVersion": "1.0",
    }
    assert aliyun_signature("GET", params, "testsecret") == "CT9X0VtwR86fNWSnsc6v8YGOjuE="


async def test_send_delivers_number_template_and_params(sms_sandbox) -> None:
    async with httpx.AsyncClient() as client:
        sent = await provider(sms_sandbox, client).send(message("gg-1-1"))
    [msg] = sms_sandbox.platform.received
    assert msg.biz_id == sent.provider_msg_id and not sent.delivered
    assert (msg.phone, msg.template_code, msg.params, msg.out_id) == (
        "13800001234",
        "SMS_GG_ALARM_RESIDENT",
        PARAMS,
        "gg-1-1",
    )
    assert msg.text.startswith("【乌审中燃】您家燃气报警器06-13 06:42报警，切断阀已关闭")
    assert len(msg.text) <= 70


async def test_wrong_secret_is_rejected_not_retried(sms_sandbox) -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(SmsRejected, match="SignatureDoesNotMatch"):
            await provider(sms_sandbox, client, secret="wrong").send(message())
    assert sms_sandbox.platform.received == []


async def test_unapproved_sign_name_is_rejected(sms_sandbox) -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(SmsRejected, match="SMS_SIGNATURE_ILLEGAL"):
            await provider(sms_sandbox, client, sign="别的公司").send(message())


async def test_outage_is_transient(sms_sandbox) -> None:
    sms_sandbox.platform.unavailable_for = 1
    async with httpx.AsyncClient() as client:
        with pytest.raises(SmsUnavailable):
            await provider(sms_sandbox, client).send(message())


async def test_daily_flow_control_is_a_limit_not_a_plain_refusal(sms_sandbox) -> None:
    sms_sandbox.platform.daily_limit = 1
    async with httpx.AsyncClient() as client:
        await provider(sms_sandbox, client).send(message("a"))
        with pytest.raises(SmsLimited, match="BUSINESS_LIMIT_CONTROL"):
            await provider(sms_sandbox, client).send(message("b"))
        # Another number is not limited.
        await provider(sms_sandbox, client).send(message("c", phone="13800009999"))
    assert [m.out_id for m in sms_sandbox.platform.received] == ["a", "c"]


async def test_query_send_details_reports_waiting_then_delivered_or_failed(sms_sandbox) -> None:
    platform = sms_sandbox.platform
    async with httpx.AsyncClient() as client:
        sms = provider(sms_sandbox, client)
        ok = await sms.send(message("ok"))
        bad = await sms.send(message("bad", phone="13800004444"))
        platform.reports_pending = True
        now = datetime.now(UTC)
        assert await sms.query(recipient="13800001234", provider_msg_id=ok.provider_msg_id, sent_at=now) is None
        platform.reports_pending = False
        platform.undeliverable.add("13800004444")
        delivered = await sms.query(recipient="13800001234", provider_msg_id=ok.provider_msg_id, sent_at=now)
        failed = await sms.query(recipient="13800004444", provider_msg_id=bad.provider_msg_id, sent_at=now)
    assert delivered is not None and delivered.delivered and delivered.code == "DELIVERED"
    assert delivered.out_id == "ok"
    assert failed is not None and not failed.delivered


async def test_unreachable_provider_is_transient() -> None:
    from tests.conftest import free_port

    async with httpx.AsyncClient() as client:
        sms = AliyunSmsProvider(
            endpoint=f"http://127.0.0.1:{free_port()}/",
            access_key_id="k",
            access_key_secret="s",
            sign_name="乌审中燃",
            client=client,
        )
        with pytest.raises(SmsUnavailable):
            await sms.send(message())
