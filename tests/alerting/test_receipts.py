"""The delivery-receipt push endpoint: provider answers, bad input, unknown messages, database outage."""

from __future__ import annotations

import asyncpg
import httpx

from alerting.notifier import FallbackPolicy
from tests.alerting.test_notifier import receipt_endpoint
from tests.conftest import free_port

POLICY = FallbackPolicy(voice=False, operator_phones=())


async def test_unreadable_push_is_answered_400_and_kept_as_a_dead_letter(
    db: asyncpg.Connection, database_url: str
) -> None:
    async with receipt_endpoint(database_url, POLICY) as url, httpx.AsyncClient() as http:
        not_json = await http.post(f"{url}/receipts/aliyun", content=b"{oops")
        wrong_shape = await http.post(f"{url}/receipts/aliyun", json=[{"phone_number": "13800001234"}])
    assert not_json.status_code == 400 and not_json.json()["code"] == 1
    assert wrong_shape.status_code == 400 and "success" in wrong_shape.json()["msg"]
    rows = await db.fetch("SELECT source, reason, payload FROM dead_letter ORDER BY id")
    assert [r["source"] for r in rows] == ["receipts/aliyun", "receipts/aliyun"]
    assert rows[0]["payload"] == b"{oops" and "not JSON" in rows[0]["reason"]


async def test_receipt_for_an_unknown_message_is_acknowledged_and_kept_once(
    db: asyncpg.Connection, database_url: str
) -> None:
    report = {"phone_number": "13800001234", "success": True, "biz_id": "999^0", "err_code": "DELIVERED", "out_id": ""}
    async with receipt_endpoint(database_url, POLICY) as url, httpx.AsyncClient() as http:
        for _ in range(2):
            answer = await http.post(f"{url}/receipts/aliyun", json=[report])
            assert answer.status_code == 200 and answer.json() == {"code": 0, "msg": "接收成功"}
        unknown = await http.post(f"{url}/receipts/nobody", json=[])
    assert unknown.status_code == 404
    row = await db.fetchrow("SELECT * FROM notification_receipt")
    assert row["provider_msg_id"] == "999^0" and row["outbox_id"] is None and row["delivered"]
    assert await db.fetchval("SELECT count(*) FROM notification_receipt") == 1


async def test_generic_gateway_push_accepts_a_single_object(db: asyncpg.Connection, database_url: str) -> None:
    report = {"msgId": "m1", "mobile": "13800001234", "reportStatus": "DELIVRD", "doneTime": "2026-06-13 06:43:00"}
    async with receipt_endpoint(database_url, POLICY) as url, httpx.AsyncClient() as http:
        answer = await http.post(f"{url}/receipts/generic", json=report)
    assert answer.status_code == 200 and answer.json() == {"code": 0}
    assert await db.fetchval("SELECT code FROM notification_receipt WHERE provider = 'generic'") == "DELIVRD"


async def test_database_outage_answers_503_so_the_provider_pushes_again() -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    report = {"phone_number": "13800001234", "success": True, "biz_id": "1^0"}
    async with receipt_endpoint(dsn, POLICY) as url, httpx.AsyncClient(timeout=30) as http:
        answer = await http.post(f"{url}/receipts/aliyun", json=[report])
    assert answer.status_code == 503 and answer.json()["code"] == 1


async def test_with_a_token_configured_a_push_without_it_is_refused(db: asyncpg.Connection, database_url: str) -> None:
    report = {"phone_number": "13800001234", "success": True, "biz_id": "7^0"}
    async with receipt_endpoint(database_url, POLICY, token="s3cret") as url, httpx.AsyncClient() as http:
        forged = await http.post(f"{url}/receipts/aliyun", json=[report])
        wrong = await http.post(f"{url}/receipts/aliyun?token=guess", json=[report])
        genuine = await http.post(f"{url}/receipts/aliyun?token=s3cret", json=[report])
    assert forged.status_code == wrong.status_code == 403
    assert genuine.status_code == 200 and genuine.json() == {"code": 0, "msg": "接收成功"}
    assert await db.fetchval("SELECT count(*) FROM notification_receipt") == 1


async def test_serve_runs_the_endpoint_on_the_configured_port(db: asyncpg.Connection, database_url: str) -> None:
    import asyncio
    import contextlib

    from alerting.notifier import NotificationSettings
    from alerting.receipts import serve
    from alerting.settings import AlertingSettings

    settings = AlertingSettings(database_url=database_url)
    assert await serve(settings, NotificationSettings(receipts_port=None)) is None  # not configured: nothing served
    port = free_port()
    task = asyncio.create_task(serve(settings, NotificationSettings(receipts_port=port)))
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(100):
                with contextlib.suppress(httpx.TransportError):
                    answer = await http.post(
                        f"http://127.0.0.1:{port}/receipts/tencent",
                        json=[{"sid": "s1", "mobile": "13800001234", "report_status": "SUCCESS", "errmsg": "DELIVRD"}],
                    )
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the receipt endpoint did not start")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert answer.json() == {"result": 0, "errmsg": "OK"}
    assert await db.fetchval("SELECT provider FROM notification_receipt") == "tencent"
