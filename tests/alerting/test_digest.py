"""The operator SMS digest on real PostgreSQL and the provider sandbox over real HTTP.

A duty operator's number that has been sent its burst of operator texts within the window gets further routine
operator texts folded into one digest per window; texts that ask the operator to act at once never fold.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from alerting.notifier import DIGEST_PLACE, NotificationSettings, Notifier, build
from alerting.settings import AlertingSettings
from alerting.templates import OPERATOR_DIGEST, SMS_MAX_CHARS
from gasguard.db import open_pool
from registry.app import create_app
from registry.auth import Role, create_user, issue_token
from registry.settings import RegistrySettings
from tests.alerting.test_notifier import notifier, outbox, queue, receipt_endpoint
from tests.alerting.test_providers import KEY_ID, KEY_SECRET, SIGN, FullSandbox
from tests.support.rows import add_household

OPERATOR = "13900000001"
OTHER_OPERATOR = "13900000002"
BURST = 5
WINDOW_S = 300
ALARM_PARAMS = {"n": "1", "place": "文苑社区3号楼2单元101", "time": "06-13 06:42"}


def digest_notifier(
    dsn: str,
    sandbox: FullSandbox,
    http: httpx.AsyncClient,
    *,
    voice: bool = False,
    batch_size: int = 50,
    burst: int = BURST,
) -> Notifier:
    return notifier(
        dsn,
        sandbox,
        http,
        voice=voice,
        batch_size=batch_size,
        operator_burst=burst,
        operator_digest_window_s=WINDOW_S,
    )


async def incident(db: asyncpg.Connection, n: int, *, severity: str = "critical", kind: str = "gas_alarm") -> int:
    home = await add_household(db, n)
    return int(
        await db.fetchval(
            "INSERT INTO incident (household_id, kind, severity, alarm_received_at, command_sent_at)"
            " VALUES ($1, $2, $3, now(), now()) RETURNING id",
            home.id,
            kind,
            severity,
        )
    )


async def operator_alarm(db: asyncpg.Connection, incident_id: int, *, recipient: str = OPERATOR, order: int = 0) -> int:
    """Operator A's text of a new alarm, due ``order`` in line (earlier due is claimed first)."""
    job_id = await queue(
        db, incident_id, recipient, role="operator", template="SMS_GG_ALARM_OPERATOR", params=ALARM_PARAMS
    )
    await db.execute(
        "UPDATE notification_outbox SET next_attempt_at = now() - make_interval(secs => 1000 - $2) WHERE id = $1",
        job_id,
        order,
    )
    return job_id


async def operator_text(
    db: asyncpg.Connection, incident_id: int, template: str, params: dict[str, str], *, step_key: str = ""
) -> int:
    """Another operator text, as an escalation step or the watchdog queues it."""
    return int(
        await db.fetchval(
            "INSERT INTO notification_outbox (incident_id, channel, recipient, recipient_role, template, params,"
            " step_key) VALUES ($1, 'sms', $2, 'operator', $3, $4, $5) RETURNING id",
            incident_id,
            OPERATOR,
            template,
            params,
            step_key,
        )
    )


async def clear_of_window_end(db: asyncpg.Connection, margin_s: float = 10.0) -> None:
    """Wait out the end of the current digest window if it is near, so a test's folds share one window."""
    left = await db.fetchval("SELECT ($1 - extract(epoch FROM now()) % $1)::float8", WINDOW_S)
    if left < margin_s:
        await asyncio.sleep(left + 0.1)


async def drain(sender: Notifier, db: asyncpg.Connection) -> None:
    while await sender.send_due(db):
        pass


async def digests(db: asyncpg.Connection, recipient: str = OPERATOR) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT * FROM notification_outbox WHERE template = $1 AND recipient = $2 ORDER BY id",
        OPERATOR_DIGEST.code,
        recipient,
    )


def texts_to(sandbox: FullSandbox, phone: str) -> list[str]:
    return [m.text for m in sandbox.platform.received if m.phone == phone]


async def test_burst_then_fold_then_one_digest_with_the_right_counts(
    db: asyncpg.Connection, database_url: str, full_sandbox: FullSandbox
) -> None:
    # The burst: five critical alarms texted one by one. Then seven more incidents (three critical), one of them
    # with a second text (an escalation reminder): eight jobs folded, seven incidents, three critical.
    severities = ["critical"] * BURST + ["critical", "warning", "critical", "warning", "warning", "critical", "warning"]
    incidents = [await incident(db, n, severity=s) for n, s in enumerate(severities, start=1)]
    jobs = [await operator_alarm(db, i, order=k) for k, i in enumerate(incidents)]
    reminder = await operator_text(
        db, incidents[-1], "SMS_GG_ALARM_OPERATOR", {**ALARM_PARAMS, "n": "2"}, step_key="s1r0"
    )
    other = await operator_alarm(db, incidents[-1], recipient=OTHER_OPERATOR)
    states_before = await db.fetch("SELECT id, state, severity FROM incident ORDER BY id")
    await clear_of_window_end(db)

    async with httpx.AsyncClient() as http:
        sender = digest_notifier(database_url, full_sandbox, http)
        await drain(sender, db)
        assert [(await outbox(db, j))["status"] for j in jobs[:BURST]] == ["sent"] * BURST
        folded = [*jobs[BURST:], reminder]
        [digest] = await digests(db)
        for job in folded:
            row = await outbox(db, job)
            assert row["status"] == "digested" and row["digest_id"] == digest["id"] and row["sent_at"] is None
        assert sender.digested == len(folded)
        # Another operator's number has its own count: its one text went out.
        assert (await outbox(db, other))["status"] == "sent"
        assert len(texts_to(full_sandbox, OPERATOR)) == BURST

        # One digest, due at the end of the window, not before.
        assert digest["status"] == "pending" and digest["recipient_role"] == "operator" and digest["channel"] == "sms"
        start = int(digest["step_key"].removeprefix("digest:"))
        assert start % WINDOW_S == 0
        assert digest["next_attempt_at"].timestamp() == start + WINDOW_S
        assert await db.fetchval(
            "SELECT $1 > now() AND $1 <= now() + interval '300 seconds'", digest["next_attempt_at"]
        )
        assert await sender.send_due(db) == 0
        assert len(texts_to(full_sandbox, OPERATOR)) == BURST

        # The window ends: the digest goes out, counting what was folded into it.
        await db.execute("UPDATE notification_outbox SET next_attempt_at = now() WHERE id = $1", digest["id"])
        assert await sender.send_due(db) == 1
        sent = await outbox(db, digest["id"])
        assert sent["status"] == "sent" and sent["params"]["n"] == "7" and sent["params"]["critical"] == "3"
        text = texts_to(full_sandbox, OPERATOR)[-1]
        assert len(texts_to(full_sandbox, OPERATOR)) == BURST + 1
        assert "另有7起事件" in text and "紧急3起" in text and "监控中心" in text
        assert text.startswith(f"【{SIGN}】") and len(text) <= SMS_MAX_CHARS

        # Its delivery receipt settles it like any job.
        async with receipt_endpoint(database_url, sender.policy) as url:
            full_sandbox.platform.push_urls["aliyun"] = f"{url}/receipts/aliyun"
            assert await full_sandbox.platform.push_reports("aliyun") == {"code": 0, "msg": "接收成功"}
        assert (await outbox(db, digest["id"]))["status"] == "delivered"

    # Nothing is hidden: every incident is as it was, for the control room to show.
    assert await db.fetch("SELECT id, state, severity FROM incident ORDER BY id") == states_before


async def test_below_the_burst_every_text_goes_out_on_its_own(
    db: asyncpg.Connection, database_url: str, full_sandbox: FullSandbox
) -> None:
    jobs = [await operator_alarm(db, await incident(db, n), order=n) for n in range(1, BURST + 1)]
    async with httpx.AsyncClient() as http:
        sender = digest_notifier(database_url, full_sandbox, http)
        await drain(sender, db)
        assert [(await outbox(db, j))["status"] for j in jobs] == ["sent"] * BURST
        assert await digests(db) == [] and sender.digested == 0

        # Texts sent longer ago than the window do not count: the number is below the burst again.
        await db.execute("UPDATE notification_attempt SET started_at = started_at - interval '301 seconds'")
        later = [await operator_alarm(db, await incident(db, n), order=n) for n in range(10, 10 + BURST)]
        await drain(sender, db)
        assert [(await outbox(db, j))["status"] for j in later] == ["sent"] * BURST
        assert await digests(db) == []
    assert len(texts_to(full_sandbox, OPERATOR)) == 2 * BURST


async def test_texts_that_need_the_operator_at_once_and_resident_texts_never_fold(
    db: asyncpg.Connection, database_url: str, full_sandbox: FullSandbox
) -> None:
    burst = [await operator_alarm(db, await incident(db, n), order=n) for n in range(1, BURST + 1)]
    async with httpx.AsyncClient() as http:
        sender = digest_notifier(database_url, full_sandbox, http, voice=True)
        await drain(sender, db)
        assert [(await outbox(db, j))["status"] for j in burst] == ["sent"] * BURST

        await clear_of_window_end(db)
        valve = await incident(db, 20, kind="valve_not_closed")
        system = int(
            await db.fetchval(
                "INSERT INTO incident (kind, severity, scope, alarm_received_at)"
                " VALUES ('alerting_behind', 'critical', 'system:alerting:test', now()) RETURNING id"
            )
        )
        alarm = await incident(db, 21)
        valve_params = {"place": "文苑社区3号楼2单元120", "time": "06-13 06:42"}
        never = {
            "valve not closed": await operator_text(db, valve, "SMS_GG_VALVE_NOT_CLOSED", valve_params),
            "valve not closed, escalated": await operator_text(
                db, valve, "SMS_GG_VALVE_NOT_CLOSED", valve_params, step_key="s1r0"
            ),
            "resident unreachable": await operator_text(
                db,
                alarm,
                "SMS_GG_RESIDENT_UNREACHABLE",
                {"place": "文苑社区3号楼2单元121", "time": "06-13 06:42", "reason": "限额"},
            ),
            "alerting behind": await operator_text(
                db,
                system,
                "SMS_GG_ALERTING_BEHIND",
                {"part": "事件入库", "lag": "45", "time": "06-13 06:42", "effect": "短信"},
            ),
            # The watchdog's incident escalated with a generic device notice is still not folded (by its kind).
            "alerting behind, escalated": await operator_text(
                db,
                system,
                "SMS_GG_DEVICE_NOTICE",
                {"issue": "异常", "place": "燃气报警服务", "time": "06-13 06:42"},
                step_key="s1r0",
            ),
            # The operator lives in a monitored household too: their own alarm text is a resident's.
            "resident": await queue(db, alarm, OPERATOR),
            "emergency": await queue(
                db,
                alarm,
                OPERATOR,
                role="emergency",
                template="SMS_GG_EMERGENCY",
                params={"place": "文苑社区3号楼2单元121", "what": "燃气报警", "time": "06-13 06:42"},
            ),
            "emergency webhook": await queue(
                db,
                alarm,
                full_sandbox.webhook_url,
                channel="webhook",
                role="emergency",
                template="WEBHOOK_GG_EMERGENCY",
                params={"kind": "gas_alarm", "place": "文苑社区", "time": "2026-11-29T06:42:00+08:00", "round": "1"},
            ),
            "voice": await queue(
                db,
                alarm,
                OPERATOR,
                channel="voice",
                role="operator",
                template="TTS_GG_OPERATOR_NOTICE",
                params={"place": "文苑社区3号楼2单元121"},
            ),
        }
        # A routine text queued with them does fold: the number is past its burst.
        routine = await operator_alarm(db, alarm)
        await drain(sender, db)

    statuses = {what: (await outbox(db, job))["status"] for what, job in never.items()}
    # (a webhook's 2xx answer is its receipt)
    assert statuses == {**dict.fromkeys(never, "sent"), "emergency webhook": "delivered"}
    assert (await outbox(db, routine))["status"] == "digested"
    assert len(full_sandbox.platform.calls) == 1
    # Five alarms, five unfoldable operator texts, the resident's and the emergency text.
    assert len(texts_to(full_sandbox, OPERATOR)) == BURST + 5 + 2


async def test_two_notifiers_racing_send_the_burst_once_and_make_one_digest(
    db: asyncpg.Connection, database_url: str, full_sandbox: FullSandbox
) -> None:
    jobs = [await operator_alarm(db, await incident(db, n), order=n) for n in range(1, 41)]
    await clear_of_window_end(db, 20.0)
    async with (
        httpx.AsyncClient() as http,
        open_pool(database_url, max_size=4) as pool_a,
        open_pool(database_url, max_size=4) as pool_b,
        pool_a.acquire() as conn_a,
        pool_b.acquire() as conn_b,
    ):
        a = digest_notifier(database_url, full_sandbox, http, batch_size=3)
        b = digest_notifier(database_url, full_sandbox, http, batch_size=3)

        async def run(sender: Notifier, conn: asyncpg.Connection) -> None:
            while await sender.send_due(conn):  # each round trip lets the other sender run
                pass

        await asyncio.gather(run(a, conn_a), run(b, conn_b))
        assert a.sent + a.digested > 0 and b.sent + b.digested > 0, "both senders took part"

    statuses = [(await outbox(db, j))["status"] for j in jobs]
    assert statuses.count("sent") == BURST and statuses.count("digested") == len(jobs) - BURST
    [digest] = await digests(db)
    assert await db.fetchval("SELECT count(*) FROM notification_outbox WHERE digest_id = $1", digest["id"]) == 35
    assert len(texts_to(full_sandbox, OPERATOR)) == BURST

    # The database itself refuses a second digest for the number and window.
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(
            "INSERT INTO notification_outbox (channel, recipient, recipient_role, template, step_key)"
            " VALUES ('sms', $1, 'operator', $2, $3)",
            OPERATOR,
            OPERATOR_DIGEST.code,
            digest["step_key"],
        )


async def test_a_digest_being_sent_is_counted_once_and_later_texts_wait_for_the_next(
    db: asyncpg.Connection, database_url: str, full_sandbox: FullSandbox
) -> None:
    for n in range(1, BURST + 3):
        await operator_alarm(db, await incident(db, n), order=n)
    await clear_of_window_end(db)
    async with httpx.AsyncClient() as http:
        sender = digest_notifier(database_url, full_sandbox, http)
        await drain(sender, db)
        [digest] = await digests(db)
        await db.execute("UPDATE notification_outbox SET next_attempt_at = now() WHERE id = $1", digest["id"])
        full_sandbox.platform.unavailable_for = 1
        assert await sender.send_due(db) == 1
        retrying = await outbox(db, digest["id"])
        assert retrying["status"] == "pending" and retrying["attempts"] == 1

        # Folded while this window's digest is already under way: it goes into the next window's digest.
        late = await operator_alarm(db, await incident(db, 30))
        await drain(sender, db)
        first, second = await digests(db)
        assert first["id"] == digest["id"]
        assert (await outbox(db, late))["digest_id"] == second["id"]
        assert (
            int(second["step_key"].removeprefix("digest:")) == int(first["step_key"].removeprefix("digest:")) + WINDOW_S
        )

        await db.execute("UPDATE notification_outbox SET next_attempt_at = now() WHERE id = $1", digest["id"])
        assert await sender.send_due(db) == 1
    sent = await outbox(db, digest["id"])
    assert sent["status"] == "sent" and sent["params"]["n"] == "2" and sent["attempts"] == 2
    assert "另有2起事件" in texts_to(full_sandbox, OPERATOR)[-1]


async def test_an_undelivered_digest_falls_back_to_a_call(
    db: asyncpg.Connection, database_url: str, full_sandbox: FullSandbox
) -> None:
    for n in range(1, BURST + 2):
        await operator_alarm(db, await incident(db, n), order=n)
    async with httpx.AsyncClient() as http:
        sender = digest_notifier(database_url, full_sandbox, http, voice=True)
        await drain(sender, db)
        async with receipt_endpoint(database_url, sender.policy) as url:
            full_sandbox.platform.push_urls["aliyun"] = f"{url}/receipts/aliyun"
            await full_sandbox.platform.push_reports("aliyun")  # the burst arrived
            [digest] = await digests(db)
            await db.execute("UPDATE notification_outbox SET next_attempt_at = now() WHERE id = $1", digest["id"])
            await drain(sender, db)
            full_sandbox.platform.undeliverable.add(OPERATOR)
            await full_sandbox.platform.push_reports("aliyun")
        assert (await outbox(db, digest["id"]))["status"] == "undeliverable"
        call = await db.fetchrow("SELECT * FROM notification_outbox WHERE fallback_of = $1", digest["id"])
        assert call["channel"] == "voice" and call["recipient"] == OPERATOR and call["params"]["place"] == DIGEST_PLACE
        await drain(sender, db)
    [made] = full_sandbox.platform.calls
    assert made.phone == OPERATOR and DIGEST_PLACE in made.text


def test_burst_and_window_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (NotificationSettings().operator_burst, NotificationSettings().operator_digest_window_s) == (5, 300)
    monkeypatch.setenv("GG_OPERATOR_BURST", "3")
    monkeypatch.setenv("GG_OPERATOR_DIGEST_WINDOW_S", "600")
    notify = NotificationSettings()
    assert (notify.operator_burst, notify.operator_digest_window_s) == (3, 600)
    monkeypatch.setenv("GG_OPERATOR_BURST", "0")
    with pytest.raises(ValueError, match="operator_burst"):
        NotificationSettings()


async def test_build_passes_the_digest_settings(
    db: asyncpg.Connection, database_url: str, full_sandbox: FullSandbox
) -> None:
    jobs = [await operator_alarm(db, await incident(db, n), order=n) for n in range(1, 4)]
    settings = AlertingSettings(
        database_url=database_url,
        sms_endpoint=full_sandbox.aliyun_url,
        sms_access_key_id=KEY_ID,
        sms_access_key_secret=SecretStr(KEY_SECRET),
        sms_sign_name=SIGN,
    )
    async with httpx.AsyncClient() as http:
        sender = build(settings, http, NotificationSettings(operator_burst=2, operator_digest_window_s=60))
        await drain(sender, db)
    assert [(await outbox(db, j))["status"] for j in jobs] == ["sent", "sent", "digested"]
    [digest] = await digests(db)
    assert await db.fetchval("SELECT $1 - now() <= interval '60 seconds'", digest["next_attempt_at"])
    assert timedelta(0) < digest["next_attempt_at"] - digest["created_at"] <= timedelta(seconds=60)


async def test_the_control_room_shows_a_folded_text_as_digested(
    db: asyncpg.Connection, database_url: str, full_sandbox: FullSandbox
) -> None:
    incidents = [await incident(db, n) for n in range(1, BURST + 2)]
    for order, incident_id in enumerate(incidents):
        await operator_alarm(db, incident_id, order=order)
    await clear_of_window_end(db)
    async with httpx.AsyncClient() as http:
        await drain(digest_notifier(database_url, full_sandbox, http), db)
    operator = await create_user(
        db, username="op-li", password=None, display_name="李值班", role=Role.DUTY_OPERATOR, supplier="乌审中燃"
    )
    headers = {"Authorization": f"Bearer {await issue_token(db, user_id=operator.id, name='t')}"}
    app = create_app(RegistrySettings(database_url=database_url))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://registry.test") as client,
    ):
        answer = await client.get(f"/incidents/{incidents[-1]}", headers=headers)
        assert answer.status_code == 200
        [notification] = answer.json()["notifications"]
        assert notification["status"] == "digested" and notification["template"] == "SMS_GG_ALARM_OPERATOR"
        # The incident itself is on the board like every other.
        board = await client.get("/incidents", headers=headers)
        assert board.status_code == 200
        assert {item["id"] for item in board.json()["items"]} >= set(incidents)
