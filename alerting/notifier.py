"""Sends notification jobs from the transactional outbox through an SMS provider.

Jobs are claimed with ``FOR UPDATE SKIP LOCKED`` and a lease, so two alerting processes never send
the same job at once and a job claimed by a process that died is picked up again after the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import asyncpg

from alerting.recorder import TRANSIENT_DB_ERRORS
from alerting.sms import SmsProvider, SmsRejected, SmsUnavailable
from alerting.templates import (
    ALARM_RESIDENT,
    TEMPLATES,
    VALVE_CLOSED_TEXT,
    VALVE_CLOSING_TEXT,
    VALVE_UNCONFIRMED_TEXT,
)
from gasguard.db import connect

_LOGGER = logging.getLogger(__name__)

LEASE_S = 30

_CLAIM_SQL = f"""
UPDATE notification_outbox o
SET attempts = o.attempts + 1, next_attempt_at = now() + interval '{LEASE_S} seconds'
FROM (SELECT id FROM notification_outbox
      WHERE status = 'pending' AND next_attempt_at <= now()
      ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due
WHERE o.id = due.id
RETURNING o.id, o.incident_id, o.recipient, o.template, o.params, o.attempts,
          (SELECT i.valve_closed_at IS NOT NULL FROM incident i WHERE i.id = o.incident_id) AS valve_closed,
          EXISTS (SELECT 1 FROM incident i JOIN incident v ON v.household_id = i.household_id
                  WHERE i.id = o.incident_id AND v.kind = 'valve_not_closed' AND v.state <> 'CLOSED') AS valve_failed
"""


@dataclass(frozen=True, slots=True)
class Job:
    """One claimed outbox job."""

    id: int
    recipient: str
    template: str
    params: dict[str, str]
    attempts: int


def job_params(template: str, stored: dict[str, Any], *, valve_closed: bool, valve_failed: bool) -> dict[str, str]:
    """Template parameters as sent; the resident's valve wording reflects the valve's own report."""
    params = {k: str(v) for k, v in stored.items()}
    if template == ALARM_RESIDENT.code:
        if valve_closed:
            params["valve"] = VALVE_CLOSED_TEXT
        elif valve_failed:
            params["valve"] = VALVE_UNCONFIRMED_TEXT
        else:
            params["valve"] = VALVE_CLOSING_TEXT
    return params


def retry_delay_s(attempts: int) -> float:
    """Backoff between attempts: 2, 4, 8 … seconds, at most 5 minutes."""
    return float(min(2**attempts, 300))


class Notifier:
    """Outbox sender loop."""

    def __init__(
        self, dsn: str, provider: SmsProvider, *, sign_name: str, max_attempts: int, batch_size: int = 50
    ) -> None:
        self._dsn = dsn
        self._provider = provider
        self._sign_name = sign_name
        self._max_attempts = max_attempts
        self._batch_size = batch_size
        self._wake = asyncio.Event()
        self.sent = 0

    async def run_loop(self) -> None:
        """Send due jobs forever; wait for NOTIFY or the next due time in between."""
        failing = False
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await connect(self._dsn)
                await conn.add_listener("gg_outbox", self._on_notify)
                if failing:
                    _LOGGER.info("outbox reachable again")
                    failing = False
                while True:
                    self._wake.clear()
                    jobs = await self._claim(conn)
                    for job in jobs:
                        await self._send_to_completion(conn, job)
                    if len(jobs) == self._batch_size:
                        continue
                    wait_s = await conn.fetchval(
                        "SELECT greatest(0, extract(epoch FROM min(next_attempt_at) - now()))::float8"
                        " FROM notification_outbox WHERE status = 'pending'"
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), min(wait_s if wait_s is not None else 5.0, 5.0))
            except TRANSIENT_DB_ERRORS as err:
                if not failing:
                    _LOGGER.warning("outbox unreachable (%s); retrying", err)
                    failing = True
                await asyncio.sleep(1.0)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()

    def _on_notify(self, conn: object, pid: int, channel: str, payload: object) -> None:
        self._wake.set()

    async def _claim(self, conn: asyncpg.Connection) -> list[Job]:
        rows = await conn.fetch(_CLAIM_SQL, self._batch_size)
        return [
            Job(
                id=r["id"],
                recipient=r["recipient"],
                template=r["template"],
                params=job_params(
                    r["template"], r["params"], valve_closed=bool(r["valve_closed"]), valve_failed=r["valve_failed"]
                ),
                attempts=r["attempts"],
            )
            for r in rows
        ]

    async def _send_to_completion(self, conn: asyncpg.Connection, job: Job) -> None:
        """Send one job; a shutdown waits for it, so a sent SMS is never left marked unsent (and resent)."""
        sending = asyncio.ensure_future(self._send(conn, job))
        try:
            await asyncio.shield(sending)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sending, timeout=15)
            raise

    async def _send(self, conn: asyncpg.Connection, job: Job) -> None:
        out_id = f"gg-{job.id}-{job.attempts}"
        template = TEMPLATES.get(job.template)
        try:
            if template is None:
                raise ValueError(f"unknown template {job.template}")  # noqa: TRY301 - same handling as rejects
            template.render(job.params, sign_name=self._sign_name)  # refuse over-long params before paying
            msg_id = await self._provider.send(
                phone=job.recipient, template_code=job.template, params=job.params, out_id=out_id
            )
        except SmsUnavailable as err:
            failed = job.attempts >= self._max_attempts
            await conn.execute(
                "UPDATE notification_outbox SET status = $2, last_error = $3,"
                " next_attempt_at = now() + make_interval(secs => $4) WHERE id = $1",
                job.id,
                "failed" if failed else "pending",
                str(err)[:500],
                retry_delay_s(job.attempts),
            )
            _LOGGER.warning("SMS job %d attempt %d failed: %s", job.id, job.attempts, err)
            return
        except (SmsRejected, ValueError) as err:
            await conn.execute(
                "UPDATE notification_outbox SET status = 'failed', last_error = $2 WHERE id = $1",
                job.id,
                str(err)[:500],
            )
            _LOGGER.error("SMS job %d rejected: %s", job.id, err)  # noqa: TRY400 - an answer, not a crash
            return
        await conn.execute(
            "UPDATE notification_outbox SET status = 'sent', sent_at = now(), provider = $2,"
            " provider_msg_id = $3, out_id = $4, last_error = NULL, params = $5 WHERE id = $1",
            job.id,
            self._provider.name,
            msg_id,
            out_id,
            job.params,
        )
        self.sent += 1
