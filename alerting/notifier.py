"""Sends notification jobs from the transactional outbox through SMS, voice and webhook providers.

Jobs are claimed with ``FOR UPDATE SKIP LOCKED`` and a lease, so two alerting processes never send
the same job at once and a job claimed by a process that died is picked up again after the lease.
Every attempt is recorded with its own out_id. A message counts as delivered only on the provider's
delivery receipt (pushed to `alerting.receipts` or polled here); a webhook's 2xx answer is its
receipt. When a per-number limit, repeated failures or a negative receipt stop a message, a fallback
job goes out: a voice call to the same number, or a notice to the duty operators.

In an alarm storm a duty operator's phone is spared: once a number has been sent its burst of operator texts
within the digest window, further routine operator texts (new-alarm and device notices) are folded into one
digest SMS per number and window, which counts them when it is sent. Texts that need the operator to act on one
household at once (a valve that did not close, a resident not reached, alerting itself behind) always go out
one by one, and the incidents themselves are untouched: the control room shows every one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import asyncpg
import httpx
from asyncpg.pool import PoolConnectionProxy
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from alerting.listen import listen_forever
from alerting.providers.aliyun import AliyunSmsProvider
from alerting.providers.base import (
    Channel,
    DeliveryError,
    Limited,
    Message,
    Provider,
    Receipt,
    ReceiptSource,
    Rejected,
    Sent,
    Unavailable,
)
from alerting.providers.generic_gateway import GenericGatewayProvider
from alerting.providers.tencent import TencentSmsProvider, TencentTemplate
from alerting.providers.voice import VOICE_FOR_SMS, VOICE_SCRIPTS, AliyunVoiceProvider
from alerting.providers.webhook import WebhookProvider
from alerting.recorder import TRANSIENT_DB_ERRORS
from alerting.templates import (
    ALARM_OPERATOR,
    ALARM_RESIDENT,
    DEVICE_NOTICE,
    OPERATOR_DIGEST,
    TEMPLATES,
    VALVE_CLOSED_TEXT,
    VALVE_UNCONFIRMED_TEXT,
    SmsTemplate,
    county_time,
)
from gasguard.clock import utcnow
from gasguard.db import connect, open_pool

if TYPE_CHECKING:
    from alerting.settings import AlertingSettings

_LOGGER = logging.getLogger(__name__)

#: The sender runs on its own connection, or on one from its pool when sending concurrently.
DbConn: TypeAlias = asyncpg.Connection | PoolConnectionProxy

LEASE_S = 30
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")

#: Told to the duty operators when a resident's alarm message could not be delivered.
RESIDENT_UNREACHABLE = SmsTemplate(
    code="SMS_GG_RESIDENT_UNREACHABLE",
    text="住户未收到报警通知：${place}，${time}报警，${reason}。请立即电话联系住户。",
    max_param_chars={"place": 22, "time": 11, "reason": 4},
)

#: SMS templates this module adds to `alerting.templates.TEMPLATES` (they need provider approval too).
NOTIFY_TEMPLATES: dict[str, SmsTemplate] = {RESIDENT_UNREACHABLE.code: RESIDENT_UNREACHABLE}
ALL_SMS_TEMPLATES: dict[str, SmsTemplate] = {**TEMPLATES, **NOTIFY_TEMPLATES}

#: Templates whose ``valve`` parameter is filled from the valve's own report at send time.
_VALVE_WORDED = frozenset({ALARM_RESIDENT.code, VOICE_FOR_SMS[ALARM_RESIDENT.code]})

#: Operator texts that may be folded into a digest: routine notices, each of which the control room shows. An
#: allow-list, so a template added later goes out one by one until someone decides otherwise. The valve-not-closed,
#: resident-unreachable and alerting-behind texts are not on it: each asks the operator to act at once.
FOLDABLE_TEMPLATES = frozenset({ALARM_OPERATOR.code, DEVICE_NOTICE.code})
#: Incident kinds whose operator texts are never folded, whatever template their escalation uses.
NEVER_FOLDED_KINDS = frozenset({"valve_not_closed", "alerting_behind"})
#: The digest of a job without an incident (a fallback's place).
DIGEST_PLACE = "多户"

REASON_LIMITED = "限额"
REASON_FAILED = "发送失败"
REASON_UNDELIVERED = "未送达"


_UNLIMITED_ROLES: dict[str, int | None] = {"operator": None, "emergency": None}


class NotificationSettings(BaseSettings):
    """Notification settings (``GG_*`` environment variables) beyond the SMS ones in AlertingSettings."""

    model_config = SettingsConfigDict(env_prefix="GG_", env_file=".env", env_ignore_empty=True, extra="ignore")

    #: Which template-SMS provider sends: ``aliyun`` (GG_SMS_* settings), ``tencent`` or ``generic``.
    sms_provider: Literal["aliyun", "tencent", "generic"] = "aliyun"
    tencent_endpoint: str = "https://sms.tencentcloudapi.com/"
    tencent_secret_id: str = ""
    tencent_secret_key: SecretStr = SecretStr("")
    tencent_sdk_app_id: str = ""
    tencent_region: str = "ap-guangzhou"
    #: Our template code → Tencent's numeric TemplateId.
    tencent_template_ids: dict[str, str] = Field(default_factory=dict)
    gateway_endpoint: str = ""
    gateway_account: str = ""
    gateway_password: SecretStr = SecretStr("")
    #: TTS voice calls (Aliyun dyvmsapi style); unset means no voice fallback.
    voice_endpoint: str | None = None
    voice_access_key_id: str = ""
    voice_access_key_secret: SecretStr = SecretStr("")
    voice_show_number: str = ""
    #: Emergency-management webhook, for jobs whose recipient is not itself a URL.
    webhook_url: str | None = None
    webhook_secret: SecretStr = SecretStr("")
    #: Per provider: messages of one template to one number per day (county calendar day).
    daily_limits: dict[str, int] = Field(
        default_factory=lambda: {"aliyun": 50, "tencent": 10, "generic": 50, "aliyun-voice": 20}
    )
    #: Per recipient role: the daily per-number, per-template limit in place of the provider's above;
    #: ``null`` exempts the role. Duty operators and emergency management must not be cut off in an
    #: alarm storm (one text per household and step), so by default only residents are limited.
    role_daily_limits: dict[str, int | None] = Field(default_factory=lambda: dict(_UNLIMITED_ROLES))
    #: Operator SMS digest: a duty operator's number that has already been sent this many operator texts within the
    #: window gets further routine ones (new alarms, device notices) as one digest SMS per window, due at the
    #: window's end. Valve-not-closed, resident-unreachable and alerting-behind texts always go out on their own.
    operator_burst: int = Field(default=5, ge=1)
    operator_digest_window_s: int = Field(default=300, ge=10)
    #: Poll for a receipt when a message has been sent this long without one, then this often.
    reconcile_after_s: float = Field(default=300.0, gt=0)
    reconcile_interval_s: float = Field(default=60.0, gt=0)
    #: Stop polling messages older than this (QuerySendDetails keeps 30 days).
    reconcile_give_up_s: float = Field(default=2 * 86400.0, gt=0)
    #: Delivery-receipt push endpoint; no port means not served.
    receipts_host: str = "127.0.0.1"
    receipts_port: int | None = None
    #: Shared secret the providers' callback URLs carry as ``?token=``; unset accepts any push.
    receipts_token: SecretStr | None = None


@dataclass(frozen=True, slots=True)
class FallbackPolicy:
    """What a blocked message may fall back to."""

    voice: bool
    operator_phones: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FallbackJob:
    """A job to add to the outbox in place of one that could not go out."""

    channel: Channel
    recipient: str
    recipient_role: str
    template: str
    params: dict[str, str]


def plan_fallback(
    *,
    channel: str,
    recipient_role: str,
    template: str,
    params: Mapping[str, str],
    place: str,
    reason: str,
    policy: FallbackPolicy,
) -> list[FallbackJob]:
    """Fallback jobs for a message that could not be delivered (pure).

    A resident's alarm SMS → a voice call to that number if voice is available, else a notice to the
    duty operators; a resident's failed call → the operators; an operator's SMS → a call to them.
    """
    now_text = params.get("time") or county_time(utcnow())
    operators = [
        FallbackJob(
            channel="sms",
            recipient=phone,
            recipient_role="operator",
            template=RESIDENT_UNREACHABLE.code,
            params={"place": place, "time": now_text, "reason": reason},
        )
        for phone in policy.operator_phones
    ]
    if recipient_role == "resident":
        if channel == "sms" and policy.voice and template in VOICE_FOR_SMS:
            return [FallbackJob("voice", "", "resident", VOICE_FOR_SMS[template], dict(params))]
        return operators
    if recipient_role == "operator" and channel == "sms" and policy.voice:
        return [FallbackJob("voice", "", "operator", "TTS_GG_OPERATOR_NOTICE", {"place": place})]
    return []


@dataclass(frozen=True, slots=True)
class Job:
    """One claimed outbox job."""

    id: int
    recipient: str
    template: str
    params: dict[str, str]
    attempts: int
    channel: Channel = "sms"
    recipient_role: str = "resident"
    incident_id: int | None = None
    incident_kind: str | None = None


_CLAIM_SQL = f"""
UPDATE notification_outbox o
SET attempts = o.attempts + 1, next_attempt_at = now() + interval '{LEASE_S} seconds'
FROM (SELECT id FROM notification_outbox
      WHERE status = 'pending' AND next_attempt_at <= now()
      ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due
WHERE o.id = due.id
RETURNING o.id, o.incident_id, o.channel, o.recipient, o.recipient_role, o.template, o.params, o.attempts,
          (SELECT i.valve_closed_at IS NOT NULL FROM incident i WHERE i.id = o.incident_id) AS valve_closed,
          (SELECT i.kind FROM incident i WHERE i.id = o.incident_id) AS incident_kind
"""

#: Operator texts this number was sent, or is being sent (an attempt not finished within a lease), in the window.
_OPERATOR_RECENT_SQL = f"""
SELECT count(*) FROM notification_attempt a JOIN notification_outbox o ON o.id = a.outbox_id
WHERE a.recipient = $1 AND a.channel = 'sms' AND o.recipient_role = 'operator'
  AND a.started_at > now() - make_interval(secs => $2)
  AND (a.outcome = 'sent' OR (a.outcome IS NULL AND a.started_at > now() - interval '{LEASE_S} seconds'))
"""

_DIGEST_UPSERT_SQL = f"""
INSERT INTO notification_outbox (channel, recipient, recipient_role, template, params, step_key, next_attempt_at)
VALUES ('sms', $1, 'operator', '{OPERATOR_DIGEST.code}', $2, $3, $4)
ON CONFLICT (recipient, step_key) WHERE template = '{OPERATOR_DIGEST.code}'
DO UPDATE SET recipient = EXCLUDED.recipient
RETURNING id, attempts
"""

_DIGEST_COUNT_SQL = """
SELECT count(DISTINCT o.incident_id) + count(*) FILTER (WHERE o.incident_id IS NULL) AS n,
       count(DISTINCT o.incident_id) FILTER (WHERE i.severity = 'critical') AS critical
FROM notification_outbox o LEFT JOIN incident i ON i.id = o.incident_id
WHERE o.digest_id = $1 AND o.status = 'digested'
"""

_SENT_TODAY_SQL = """
SELECT count(*) FROM notification_attempt
WHERE recipient = $1 AND template = $2 AND provider = $3 AND outcome = 'sent'
  AND started_at >= (date_trunc('day', now() AT TIME ZONE 'Asia/Shanghai') AT TIME ZONE 'Asia/Shanghai')
"""

_PLACE_SQL = """
SELECT c.name || h.building || h.unit || h.room FROM incident i
JOIN household h ON h.id = i.household_id JOIN community c ON c.code = h.community_code WHERE i.id = $1
"""

_RECONCILE_SQL = """
UPDATE notification_outbox o SET reconciled_at = now()
FROM (SELECT id FROM notification_outbox
      WHERE status = 'sent' AND provider = ANY($1::text[])
        AND sent_at <= now() - make_interval(secs => $2) AND sent_at > now() - make_interval(secs => $3)
        AND (reconciled_at IS NULL OR reconciled_at <= now() - make_interval(secs => $2))
      ORDER BY sent_at LIMIT $4 FOR UPDATE SKIP LOCKED) due
WHERE o.id = due.id
RETURNING o.id, o.provider, o.recipient, o.provider_msg_id, o.sent_at
"""


def job_params(template: str, stored: dict[str, Any], *, valve_closed: bool) -> dict[str, str]:
    """Template parameters as sent; the resident's valve wording reflects the valve's own report.

    Only the valve's own closed report, recorded on the incident, makes the text say 已关闭. Anything
    else — the hold ended first, the valve refused or faulted, or no valve was commanded — is 未确认关闭:
    a command sent is not a valve closing (safety rule 3), so the text never says it is closing.
    """
    params = {k: str(v) for k, v in stored.items()}
    if template in _VALVE_WORDED:
        params["valve"] = VALVE_CLOSED_TEXT if valve_closed else VALVE_UNCONFIRMED_TEXT
    return params


def retry_delay_s(attempts: int) -> float:
    """Backoff between attempts: 2, 4, 8 … seconds, at most 5 minutes."""
    return float(min(2**attempts, 300))


def short_place(place: str, limit: int = 22) -> str:
    """The place cut to ``limit`` characters, keeping the end (the room number)."""
    return place if len(place) <= limit else place[len(place) - limit :]


async def enqueue_fallback(conn: DbConn, outbox_id: int, reason: str, policy: FallbackPolicy) -> int:
    """Add the fallback jobs of one blocked outbox job (in the caller's transaction); returns how many."""
    row = await conn.fetchrow(
        "SELECT id, incident_id, channel, recipient, recipient_role, template, params, step_key"
        " FROM notification_outbox WHERE id = $1",
        outbox_id,
    )
    if row is None:
        return 0
    place_raw = await conn.fetchval(_PLACE_SQL, row["incident_id"]) if row["incident_id"] is not None else None
    place = short_place(place_raw or (f"事件{row['incident_id']}" if row["incident_id"] is not None else DIGEST_PLACE))
    plan = plan_fallback(
        channel=row["channel"],
        recipient_role=row["recipient_role"],
        template=row["template"],
        params={k: str(v) for k, v in (row["params"] or {}).items()},
        place=place,
        reason=reason,
        policy=policy,
    )
    if not plan:
        _LOGGER.error(
            "outbox job %d (%s to %s) could not be delivered and has no fallback",
            outbox_id,
            row["channel"],
            row["recipient_role"],
        )
        return 0
    added = 0
    for job in plan:
        status = await conn.execute(
            """
            INSERT INTO notification_outbox (incident_id, channel, recipient, recipient_role, template, params,
                                             fallback_of, step_key)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING
            """,
            row["incident_id"],
            job.channel,
            job.recipient or row["recipient"],
            job.recipient_role,
            job.template,
            job.params,
            outbox_id,
            row["step_key"],
        )
        added += status == "INSERT 0 1"
    _LOGGER.warning("outbox job %d blocked (%s): %d fallback job(s) queued", outbox_id, reason, added)
    return added


async def apply_receipt(
    conn: DbConn, receipt: Receipt, *, source: Literal["push", "poll"], policy: FallbackPolicy
) -> str:
    """Record one delivery receipt and settle its job; idempotent.

    Returns ``delivered``, ``undeliverable``, ``duplicate`` (seen before), ``unknown`` (no such
    message; kept) or ``early`` (kept; settled when the sender records the message as sent).
    """
    async with conn.transaction():
        outbox_id: int | None = await conn.fetchval(
            "SELECT outbox_id FROM notification_attempt WHERE provider = $1 AND provider_msg_id = $2"
            " ORDER BY id DESC LIMIT 1",
            receipt.provider,
            receipt.provider_msg_id,
        )
        if outbox_id is None and receipt.out_id:
            outbox_id = await conn.fetchval(
                "SELECT outbox_id FROM notification_attempt WHERE out_id = $1", receipt.out_id
            )
        inserted = await conn.fetchval(
            """
            INSERT INTO notification_receipt (provider, provider_msg_id, out_id, delivered, code, reported_at,
                                              source, outbox_id)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING RETURNING id
            """,
            receipt.provider,
            receipt.provider_msg_id,
            receipt.out_id,
            receipt.delivered,
            receipt.code,
            receipt.reported_at,
            source,
            outbox_id,
        )
        if inserted is None:
            return "duplicate"
        if outbox_id is None:
            _LOGGER.warning("receipt for unknown %s message %s kept", receipt.provider, receipt.provider_msg_id)
            return "unknown"
        return await _settle(conn, outbox_id, receipt.delivered, receipt.code, receipt.reported_at, policy)


async def _settle(
    conn: DbConn,
    outbox_id: int,
    delivered: bool,
    code: str,
    reported_at: datetime | None,
    policy: FallbackPolicy,
) -> str:
    """Move a sent job to delivered or undeliverable, exactly once."""
    changed = await conn.fetchval(
        "UPDATE notification_outbox SET status = $2, receipt_code = $3, receipt_at = coalesce($4, now()),"
        " delivered_at = CASE WHEN $2 = 'delivered' THEN now() END WHERE id = $1 AND status = 'sent' RETURNING id",
        outbox_id,
        "delivered" if delivered else "undeliverable",
        code,
        reported_at,
    )
    if changed is None:
        status = await conn.fetchval("SELECT status FROM notification_outbox WHERE id = $1", outbox_id)
        return "early" if status == "pending" else "duplicate"
    if delivered:
        return "delivered"
    await enqueue_fallback(conn, outbox_id, REASON_UNDELIVERED, policy)
    return "undeliverable"


async def _start_attempt(conn: DbConn, job: Job, out_id: str, provider: Provider) -> None:
    """Record that an attempt to send ``job`` through ``provider`` begins (before the provider is called)."""
    await conn.execute(
        "INSERT INTO notification_attempt (outbox_id, attempt, out_id, channel, provider, recipient, template)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        job.id,
        job.attempts,
        out_id,
        job.channel,
        provider.name,
        job.recipient,
        job.template,
    )


class Notifier:
    """Outbox sender loop, plus polling reconciliation of receipts."""

    def __init__(
        self,
        dsn: str,
        providers: Mapping[str, Provider],
        *,
        sign_name: str,
        max_attempts: int,
        policy: FallbackPolicy | None = None,
        daily_limits: Mapping[str, int] | None = None,
        role_daily_limits: Mapping[str, int | None] | None = None,
        receipt_sources: Sequence[ReceiptSource] = (),
        reconcile_after_s: float = 300.0,
        reconcile_interval_s: float = 60.0,
        reconcile_give_up_s: float = 2 * 86400.0,
        batch_size: int = 50,
        concurrency: int = 8,
        operator_burst: int | None = 5,
        operator_digest_window_s: int = 300,
    ) -> None:
        self._dsn = dsn
        self._providers = dict(providers)
        self._sign_name = sign_name
        self._max_attempts = max_attempts
        self.policy = policy or FallbackPolicy(voice="voice" in self._providers, operator_phones=())
        self._limits = dict(daily_limits or {})
        self._role_limits = dict(role_daily_limits or {})
        self._sources = {s.name: s for s in receipt_sources}
        self._reconcile_after_s = reconcile_after_s
        self._reconcile_interval_s = reconcile_interval_s
        self._reconcile_give_up_s = reconcile_give_up_s
        self._batch_size = batch_size
        self._concurrency = concurrency
        self._operator_burst = operator_burst
        self._digest_window_s = operator_digest_window_s
        self.sent = 0
        self.digested = 0

    def provider(self, channel: str) -> Provider | None:
        """The provider that sends on ``channel`` (``sms``, ``voice``, ``webhook``), if one is configured."""
        return self._providers.get(channel)

    async def run_loop(self) -> None:
        """Send due jobs and reconcile receipts forever."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._send_loop(), name="notifier.send")
            if self._sources:
                tg.create_task(self._reconcile_loop(), name="notifier.reconcile")

    async def _send_loop(self) -> None:
        await listen_forever(self._dsn, "gg_outbox", self._send_forever, what="outbox", errors=TRANSIENT_DB_ERRORS)

    async def _send_forever(self, conn: asyncpg.Connection, wake: asyncio.Event) -> None:
        async with open_pool(self._dsn, min_size=1, max_size=self._concurrency) as pool:
            while True:
                wake.clear()
                if await self.send_due(conn, pool) == self._batch_size:
                    continue
                wait_s = await conn.fetchval(
                    "SELECT greatest(0, extract(epoch FROM min(next_attempt_at) - now()))::float8"
                    " FROM notification_outbox WHERE status = 'pending'"
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), min(wait_s if wait_s is not None else 5.0, 5.0))

    async def _reconcile_loop(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await connect(self._dsn)
                while True:
                    await self.reconcile_once(conn)
                    await asyncio.sleep(self._reconcile_interval_s)
            except TRANSIENT_DB_ERRORS as err:
                _LOGGER.warning("receipt reconciliation: database unreachable (%s)", err)
                await asyncio.sleep(self._reconcile_interval_s)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()

    async def send_due(self, conn: DbConn, pool: asyncpg.Pool | None = None) -> int:
        """Claim and send one batch of due jobs; returns how many were claimed.

        With a pool, jobs to different numbers go out concurrently, each number's on its own connection:
        in a storm the sender waits mostly on round trips, to PostgreSQL and to the provider. Jobs to one
        number still go one after the other, so its daily limit is counted exactly.
        """
        jobs = await self._claim(conn)
        if pool is None:
            for job in jobs:
                await self._send_to_completion(conn, job)
            return len(jobs)
        by_recipient: dict[str, list[Job]] = {}
        for job in jobs:
            by_recipient.setdefault(job.recipient, []).append(job)

        async def send_in_order(queue: list[Job]) -> None:
            async with pool.acquire() as own:
                for job in queue:
                    await self._send_to_completion(own, job)

        # Every number's jobs finish (or fail) before the first failure is raised: none is left half-sent.
        outcomes = await asyncio.gather(*(send_in_order(q) for q in by_recipient.values()), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return len(jobs)

    async def reconcile_once(self, conn: DbConn) -> int:
        """Poll receipts of messages sent without one for a while; returns how many were settled."""
        rows = await conn.fetch(
            _RECONCILE_SQL,
            list(self._sources),
            self._reconcile_after_s,
            self._reconcile_give_up_s,
            self._batch_size,
        )
        settled = 0
        for r in rows:
            source = self._sources[r["provider"]]
            try:
                receipt = await source.query(
                    recipient=r["recipient"], provider_msg_id=r["provider_msg_id"], sent_at=r["sent_at"]
                )
            except DeliveryError as err:
                _LOGGER.warning("polling the receipt of outbox job %d failed: %s", r["id"], err)
                continue
            if receipt is None:
                continue
            outcome = await apply_receipt(conn, receipt, source="poll", policy=self.policy)
            settled += outcome in {"delivered", "undeliverable"}
        return settled

    async def _claim(self, conn: DbConn) -> list[Job]:
        rows = await conn.fetch(_CLAIM_SQL, self._batch_size)
        return [
            Job(
                id=r["id"],
                recipient=r["recipient"],
                template=r["template"],
                params=job_params(r["template"], r["params"], valve_closed=bool(r["valve_closed"])),
                attempts=r["attempts"],
                channel=r["channel"],
                recipient_role=r["recipient_role"],
                incident_id=r["incident_id"],
                incident_kind=r["incident_kind"],
            )
            for r in rows
        ]

    def daily_limit(self, provider: str, recipient_role: str) -> int | None:
        """Messages of one template a number may get per day from ``provider``; None means no limit."""
        if recipient_role in self._role_limits:
            return self._role_limits[recipient_role]
        return self._limits.get(provider)

    async def _send_to_completion(self, conn: DbConn, job: Job) -> None:
        """Send one job; a shutdown waits for it, so a sent message is never left marked unsent (and resent)."""
        sending = asyncio.ensure_future(self._send(conn, job))
        try:
            await asyncio.shield(sending)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sending, timeout=15)
            raise

    def _message(self, job: Job, out_id: str) -> Message:
        """The message for a job; raises ValueError when the job cannot be rendered."""
        text = ""
        if job.channel == "sms":
            template = ALL_SMS_TEMPLATES.get(job.template)
            if template is None:
                raise ValueError(f"unknown template {job.template}")
            text = template.render(job.params, sign_name=self._sign_name)  # refuse over-long params before paying
        elif job.channel == "voice":
            script = VOICE_SCRIPTS.get(job.template)
            if script is None:
                raise ValueError(f"unknown voice script {job.template}")
            missing = set(_PLACEHOLDER.findall(script)) - job.params.keys()
            if missing:
                raise ValueError(f"voice script {job.template} is missing {sorted(missing)}")
        return Message(
            channel=job.channel,
            recipient=job.recipient,
            template=job.template,
            params=job.params,
            out_id=out_id,
            incident_id=job.incident_id,
            text=text,
        )

    def foldable(self, job: Job) -> bool:
        """Whether this job may be folded into its number's digest once the number has had its burst."""
        return (
            self._operator_burst is not None
            and job.channel == "sms"
            and job.recipient_role == "operator"
            and job.template in FOLDABLE_TEMPLATES
            and job.incident_kind not in NEVER_FOLDED_KINDS
        )

    async def _fold_or_start(self, conn: DbConn, job: Job, out_id: str, provider: Provider) -> int | None:
        """Fold the job into its number's digest (returns the digest's id) or record its attempt as started.

        Under a per-number advisory lock, so senders in other processes count this attempt before deciding
        on theirs: at most the burst goes out one by one per window, and one digest per number and window
        exists (the unique index besides).
        """
        assert self._operator_burst is not None
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('gg-operator-digest:' || $1, 0))", job.recipient
            )
            recent = await conn.fetchval(_OPERATOR_RECENT_SQL, job.recipient, float(self._digest_window_s))
            if recent < self._operator_burst:
                await _start_attempt(conn, job, out_id, provider)
                return None
            now: datetime = await conn.fetchval("SELECT now()")
            window = int(now.timestamp()) // self._digest_window_s
            while True:
                start = window * self._digest_window_s
                row = await conn.fetchrow(
                    _DIGEST_UPSERT_SQL,
                    job.recipient,
                    {"since": county_time(datetime.fromtimestamp(start, UTC))},
                    f"digest:{start}",
                    datetime.fromtimestamp(start + self._digest_window_s, UTC),
                )
                assert row is not None
                if row["attempts"] == 0:
                    break
                # This window's digest is already being sent (and counted): the job goes in the next one.
                window += 1
            digest_id: int = row["id"]
            await conn.execute(
                "UPDATE notification_outbox SET status = 'digested', digest_id = $2, last_error = NULL WHERE id = $1",
                job.id,
                digest_id,
            )
        self.digested += 1
        return digest_id

    async def _digest_params(self, conn: DbConn, job: Job) -> dict[str, str]:
        """The digest's parameters, counting the jobs folded into it by now.

        The digest's row lock waits for a sender still folding into it; one that folds after this has seen
        the digest claimed (attempts > 0) and uses the next window's.
        """
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM notification_outbox WHERE id = $1 FOR UPDATE", job.id)
            counts = await conn.fetchrow(_DIGEST_COUNT_SQL, job.id)
        assert counts is not None
        limit = 10 ** OPERATOR_DIGEST.max_param_chars["n"] - 1
        return {
            **job.params,
            "n": str(min(int(counts["n"]), limit)),
            "critical": str(min(int(counts["critical"]), limit)),
        }

    async def _send(self, conn: DbConn, job: Job) -> None:
        out_id = f"gg-{job.id}-{job.attempts}"
        provider = self._providers.get(job.channel)
        if job.template == OPERATOR_DIGEST.code:
            job = replace(job, params=await self._digest_params(conn, job))
        try:
            if provider is None:
                raise ValueError(f"no provider for channel {job.channel}")  # noqa: TRY301 - handled as a refusal
            message = self._message(job, out_id)
            limit = self.daily_limit(provider.name, job.recipient_role)
            if limit is not None:
                today = await conn.fetchval(_SENT_TODAY_SQL, job.recipient, job.template, provider.name)
                if today >= limit:
                    raise Limited("GasGuard.DailyLimit", f"{today} of {limit} today to this number")  # noqa: TRY301
            if self.foldable(job) and await self._fold_or_start(conn, job, out_id, provider) is not None:
                return
        except Limited as err:
            await self._blocked(conn, job, out_id, provider, err)
            return
        except ValueError as err:
            await self._finish(conn, job, "failed", str(err), fallback=REASON_FAILED)
            _LOGGER.error("outbox job %d refused: %s", job.id, err)  # noqa: TRY400 - an answer, not a crash
            return
        await _start_attempt(conn, job, out_id, provider)
        try:
            sent = await provider.send(message)
        except Limited as err:
            await self._blocked(conn, job, out_id, provider, err)
            return
        except Unavailable as err:
            await self._attempt_done(conn, out_id, "unavailable", None, str(err))
            if job.attempts >= self._max_attempts:
                await self._finish(conn, job, "failed", str(err), fallback=REASON_FAILED)
            else:
                await conn.execute(
                    "UPDATE notification_outbox SET last_error = $2,"
                    " next_attempt_at = now() + make_interval(secs => $3) WHERE id = $1",
                    job.id,
                    str(err)[:500],
                    retry_delay_s(job.attempts),
                )
            _LOGGER.warning("outbox job %d attempt %d failed: %s", job.id, job.attempts, err)
            return
        except Rejected as err:
            await self._attempt_done(conn, out_id, "rejected", None, str(err))
            await self._finish(conn, job, "failed", str(err), fallback=REASON_FAILED)
            _LOGGER.error("outbox job %d rejected: %s", job.id, err)  # noqa: TRY400 - an answer, not a crash
            return
        await self._sent(conn, job, provider, out_id, sent)

    async def _attempt_done(
        self, conn: DbConn, out_id: str, outcome: str, msg_id: str | None, error: str | None
    ) -> None:
        await conn.execute(
            "UPDATE notification_attempt SET finished_at = now(), outcome = $2, provider_msg_id = $3, error = $4"
            " WHERE out_id = $1",
            out_id,
            outcome,
            msg_id,
            error[:500] if error else None,
        )

    async def _blocked(self, conn: DbConn, job: Job, out_id: str, provider: Provider | None, err: Limited) -> None:
        async with conn.transaction():
            if provider is not None:
                await conn.execute(
                    "INSERT INTO notification_attempt (outbox_id, attempt, out_id, channel, provider, recipient,"
                    " template, finished_at, outcome, error) VALUES ($1, $2, $3, $4, $5, $6, $7, now(), 'limited', $8)"
                    " ON CONFLICT (out_id) DO UPDATE SET finished_at = now(), outcome = 'limited', error = $8",
                    job.id,
                    job.attempts,
                    out_id,
                    job.channel,
                    provider.name,
                    job.recipient,
                    job.template,
                    str(err)[:500],
                )
            await self._finish(conn, job, "blocked", str(err), fallback=REASON_LIMITED)

    async def _finish(self, conn: DbConn, job: Job, status: str, error: str, *, fallback: str) -> None:
        async with conn.transaction():
            await conn.execute(
                "UPDATE notification_outbox SET status = $2, last_error = $3 WHERE id = $1", job.id, status, error[:500]
            )
            await enqueue_fallback(conn, job.id, fallback, self.policy)

    async def _sent(self, conn: DbConn, job: Job, provider: Provider, out_id: str, sent: Sent) -> None:
        async with conn.transaction():
            await self._attempt_done(conn, out_id, "sent", sent.provider_msg_id, None)
            await conn.execute(
                "UPDATE notification_outbox SET status = 'sent', sent_at = now(), provider = $2,"
                " provider_msg_id = $3, out_id = $4, last_error = NULL, params = $5 WHERE id = $1",
                job.id,
                provider.name,
                sent.provider_msg_id,
                out_id,
                job.params,
            )
            if sent.delivered:
                await _settle(conn, job.id, True, "ACCEPTED", None, self.policy)
            else:
                # A receipt may have overtaken us (pushed before this row said "sent").
                early = await conn.fetchrow(
                    "UPDATE notification_receipt SET outbox_id = $1 WHERE id = (SELECT id FROM notification_receipt"
                    " WHERE (provider = $2 AND provider_msg_id = $3) OR out_id = $4 ORDER BY id LIMIT 1)"
                    " RETURNING delivered, code, reported_at",
                    job.id,
                    provider.name,
                    sent.provider_msg_id,
                    out_id,
                )
                if early is not None:
                    await _settle(conn, job.id, early["delivered"], early["code"], early["reported_at"], self.policy)
        self.sent += 1


def build(settings: AlertingSettings, http: httpx.AsyncClient, notify: NotificationSettings | None = None) -> Notifier:
    """The notifier with every configured provider, as the alerting service runs it."""
    notify = notify or NotificationSettings()
    providers: dict[str, Provider] = {}
    sources: list[ReceiptSource] = []
    if notify.sms_provider == "tencent":
        providers["sms"] = TencentSmsProvider(
            endpoint=notify.tencent_endpoint,
            secret_id=notify.tencent_secret_id,
            secret_key=notify.tencent_secret_key.get_secret_value(),
            sdk_app_id=notify.tencent_sdk_app_id,
            sign_name=settings.sms_sign_name,
            templates={
                code: TencentTemplate(template_id, tencent_param_order(ALL_SMS_TEMPLATES[code].text))
                for code, template_id in notify.tencent_template_ids.items()
                if code in ALL_SMS_TEMPLATES
            },
            client=http,
            region=notify.tencent_region,
        )
    elif notify.sms_provider == "generic":
        gateway = GenericGatewayProvider(
            endpoint=notify.gateway_endpoint,
            account=notify.gateway_account,
            password=notify.gateway_password.get_secret_value(),
            client=http,
        )
        providers["sms"] = gateway
        sources.append(gateway)
    else:
        aliyun = AliyunSmsProvider(
            endpoint=settings.sms_endpoint,
            access_key_id=settings.sms_access_key_id,
            access_key_secret=settings.sms_access_key_secret.get_secret_value(),
            sign_name=settings.sms_sign_name,
            client=http,
        )
        providers["sms"] = aliyun
        sources.append(aliyun)
    if notify.voice_endpoint:
        providers["voice"] = AliyunVoiceProvider(
            endpoint=notify.voice_endpoint,
            access_key_id=notify.voice_access_key_id or settings.sms_access_key_id,
            access_key_secret=(
                notify.voice_access_key_secret.get_secret_value() or settings.sms_access_key_secret.get_secret_value()
            ),
            show_number=notify.voice_show_number,
            client=http,
        )
    if not notify.webhook_secret.get_secret_value():
        _LOGGER.warning("GG_WEBHOOK_SECRET is not set: webhook events go out with an empty-key signature")
    providers["webhook"] = WebhookProvider(
        url=notify.webhook_url, secret=notify.webhook_secret.get_secret_value(), client=http
    )
    return Notifier(
        settings.dsn(),
        providers,
        sign_name=settings.sms_sign_name,
        max_attempts=settings.sms_max_attempts,
        policy=FallbackPolicy(voice="voice" in providers, operator_phones=tuple(settings.duty_operator_phones)),
        daily_limits=notify.daily_limits,
        role_daily_limits=notify.role_daily_limits,
        receipt_sources=sources,
        reconcile_after_s=notify.reconcile_after_s,
        reconcile_interval_s=notify.reconcile_interval_s,
        reconcile_give_up_s=notify.reconcile_give_up_s,
        operator_burst=notify.operator_burst,
        operator_digest_window_s=notify.operator_digest_window_s,
    )


def tencent_param_order(text: str) -> list[str]:
    """Our template's parameter names in the order Tencent's {1}, {2} … take them."""
    return list(dict.fromkeys(_PLACEHOLDER.findall(text)))
