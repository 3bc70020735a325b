"""Escalation as data: policy steps per severity in ``escalation_policy_step``, timers in ``escalation``.

The escalator claims due rows with ``FOR UPDATE SKIP LOCKED``; firing a step inserts its outbox jobs,
its timeline entry and the next timer in one transaction, and each job carries a ``step_key`` under a
unique key, so two engines never fire a step twice and a restart (even ``kill -9``) resumes exactly
where the database says it was. Acknowledging an incident stops its escalation
(`gasguard.incidents`). The planning is pure; `Escalator` does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from alerting.listen import listen_forever
from alerting.recorder import TRANSIENT_DB_ERRORS
from alerting.records import ACTOR, place_of
from alerting.settings import AlertingSettings
from alerting.templates import (
    ALARM_OPERATOR,
    ALARM_RESIDENT,
    DEVICE_NOTICE,
    EMERGENCY_NOTICE,
    EMERGENCY_WEBHOOK,
    VALVE_NOT_CLOSED_OPERATOR,
    county_time,
)
from gasguard import incidents

_LOGGER = logging.getLogger(__name__)

ALARM_KINDS = frozenset({"gas_alarm", "cluster"})
DEVICE_ISSUES: Mapping[str, str] = {
    "device_fault": "故障",
    "end_of_life": "到期",
    "offline": "离线",
    "low_battery": "电量低",
    "mains_loss": "市电中断",
    "offline_scope": "成片离线",
}
EMERGENCY_WHAT: Mapping[str, str] = {
    "gas_alarm": "燃气报警",
    "cluster": "多户燃气报警",
    "valve_not_closed": "切断阀未关闭",
    "offline_scope": "设备成片离线",
}


@dataclass(frozen=True, slots=True)
class PolicyStep:
    """One step of a severity's policy."""

    step: int
    after_s: int
    roles: tuple[str, ...]
    repeat_every_s: int | None


@dataclass(frozen=True, slots=True)
class Contacts:
    """Who holds each escalation role."""

    operator_a: tuple[str, ...] = ()
    operator_b: tuple[str, ...] = ()
    supervisor: tuple[str, ...] = ()
    emergency: tuple[str, ...] = ()
    emergency_webhook: str | None = None

    @classmethod
    def from_settings(cls, settings: AlertingSettings) -> Contacts:
        """Contacts as configured (``GG_DUTY_OPERATOR_PHONES`` and friends)."""
        return cls(
            operator_a=tuple(settings.duty_operator_phones),
            operator_b=tuple(settings.backup_operator_phones),
            supervisor=tuple(settings.supervisor_phones),
            emergency=tuple(settings.emergency_phones),
            emergency_webhook=settings.emergency_webhook_url,
        )


@dataclass(frozen=True, slots=True)
class Job:
    """One notification an escalation step calls for."""

    channel: str
    recipient: str
    recipient_role: str
    template: str
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class Next:
    """Where the escalation goes after a step: the next step and round, seconds to wait, or stop."""

    step: int
    round: int
    at_offset_s: float | None  # seconds after the escalation's start; None with repeat_s or stop
    repeat_s: int | None
    stop: bool


@dataclass(frozen=True, slots=True)
class IncidentFacts:
    """What the templates need about the incident."""

    kind: str
    place: str
    time: datetime
    resident_phone: str | None
    hotline: str


def step_key(step: int, round_: int) -> str:
    """Unique key of a step's jobs; step 0 of round 0 shares the key of the jobs recorded with the alarm."""
    return "" if step == 0 and round_ == 0 else f"s{step}r{round_}"


def plan_jobs(roles: Sequence[str], facts: IncidentFacts, contacts: Contacts, *, round_: int, step: int) -> list[Job]:
    """The notifications for one step (pure)."""
    jobs: list[Job] = []
    time = county_time(facts.time)
    n = str(min(step + round_ + 1, 99))
    for role in roles:
        if role == "resident":
            if facts.kind == "gas_alarm" and facts.resident_phone:
                jobs.append(
                    Job(
                        "sms",
                        facts.resident_phone,
                        "resident",
                        ALARM_RESIDENT.code,
                        {"time": time, "hotline": facts.hotline},
                    )
                )
        elif role in ("operator_a", "operator_b", "supervisor"):
            phones: tuple[str, ...] = getattr(contacts, role)
            if facts.kind in ALARM_KINDS:
                template, params = ALARM_OPERATOR.code, {"n": n, "place": facts.place, "time": time}
            elif facts.kind == "valve_not_closed":
                template, params = VALVE_NOT_CLOSED_OPERATOR.code, {"place": facts.place, "time": time}
            else:
                issue = DEVICE_ISSUES.get(facts.kind, "异常")
                template, params = DEVICE_NOTICE.code, {"issue": issue, "place": facts.place, "time": time}
            jobs.extend(Job("sms", phone, "operator", template, dict(params)) for phone in phones)
        elif role == "emergency":
            what = EMERGENCY_WHAT.get(facts.kind, "燃气险情")
            params = {"place": facts.place, "what": what, "time": time}
            jobs.extend(
                Job("sms", phone, "emergency", EMERGENCY_NOTICE.code, dict(params)) for phone in contacts.emergency
            )
        elif role == "emergency_webhook" and contacts.emergency_webhook:
            params = {"kind": facts.kind, "place": facts.place, "time": facts.time.isoformat(), "round": n}
            jobs.append(Job("webhook", contacts.emergency_webhook, "emergency", EMERGENCY_WEBHOOK, params))
    # One job per recipient and template within a step, even if a phone holds two roles.
    unique: dict[tuple[str, str], Job] = {}
    for job in jobs:
        unique.setdefault((job.recipient, job.template), job)
    return list(unique.values())


def plan_next(steps: Sequence[PolicyStep], *, step: int, round_: int) -> Next:
    """After firing ``step`` of ``round_``: the following step, a repeat of this one, or the end (pure)."""
    later = [s for s in steps if s.step > step]
    if later:
        nxt = min(later, key=lambda s: s.step)
        return Next(step=nxt.step, round=round_, at_offset_s=float(nxt.after_s), repeat_s=None, stop=False)
    current = next((s for s in steps if s.step == step), None)
    if current is not None and current.repeat_every_s:
        return Next(step=step, round=round_ + 1, at_offset_s=None, repeat_s=current.repeat_every_s, stop=False)
    return Next(step=step, round=round_, at_offset_s=None, repeat_s=None, stop=True)


_CLAIM_SQL = """
SELECT e.incident_id, e.severity, e.next_step, e.round, e.started_at,
       i.kind, i.household_id, i.community_code, i.scope, i.alarm_received_at, i.state,
       h.resident_phone
FROM escalation e
JOIN incident i ON i.id = e.incident_id
LEFT JOIN household h ON h.id = i.household_id
WHERE e.stopped_at IS NULL AND e.next_step_at <= now()
ORDER BY e.next_step_at
LIMIT $1
FOR UPDATE OF e SKIP LOCKED
"""


async def load_policy(conn: asyncpg.Connection) -> dict[str, list[PolicyStep]]:
    """Every severity's steps, in order."""
    rows = await conn.fetch(
        "SELECT severity, step, after_s, roles, repeat_every_s FROM escalation_policy_step ORDER BY severity, step"
    )
    policy: dict[str, list[PolicyStep]] = {}
    for r in rows:
        policy.setdefault(r["severity"], []).append(
            PolicyStep(
                step=r["step"], after_s=r["after_s"], roles=tuple(r["roles"]), repeat_every_s=r["repeat_every_s"]
            )
        )
    return policy


async def _place(conn: asyncpg.Connection, row: asyncpg.Record) -> str:
    if row["household_id"] is not None:
        return await place_of(conn, row["household_id"])
    name = await conn.fetchval("SELECT name FROM community WHERE code = $1", row["community_code"])
    scope = str(row["scope"] or "")
    building = scope.split(":", 2)[2] if scope.startswith("building:") else ""
    return f"{name or ''}{building}"[-22:]


async def fire_due(conn: asyncpg.Connection, contacts: Contacts, *, hotline: str, batch: int = 20) -> int:
    """Fire every due step (one transaction per batch); returns how many steps fired."""
    async with conn.transaction():
        rows = await conn.fetch(_CLAIM_SQL, batch)
        if not rows:
            return 0
        policy = await load_policy(conn)
        for row in rows:
            await _fire(conn, row, policy.get(row["severity"], []), contacts, hotline=hotline)
    return len(rows)


async def _fire(
    conn: asyncpg.Connection,
    row: asyncpg.Record,
    steps: Sequence[PolicyStep],
    contacts: Contacts,
    *,
    hotline: str,
) -> None:
    incident_id: int = row["incident_id"]
    step, round_ = int(row["next_step"]), int(row["round"])
    if row["state"] not in (incidents.IncidentState.NEW.value, incidents.IncidentState.NOTIFIED.value):
        # Someone owns it already (acknowledged through a path that did not stop the timer).
        await conn.execute(
            "UPDATE escalation SET stopped_at = now(), stopped_reason = 'owned' WHERE incident_id = $1", incident_id
        )
        return
    current = next((s for s in steps if s.step == step), None)
    key = step_key(step, round_)
    sent: list[dict[str, str]] = []
    if current is not None:
        facts = IncidentFacts(
            # An offline incident without a household is a whole community or gateway gone silent.
            kind="offline_scope" if row["kind"] == "offline" and row["household_id"] is None else row["kind"],
            place=await _place(conn, row),
            time=row["alarm_received_at"],
            resident_phone=row["resident_phone"],
            hotline=hotline,
        )
        for job in plan_jobs(current.roles, facts, contacts, round_=round_, step=step):
            status = await conn.execute(
                "INSERT INTO notification_outbox (incident_id, channel, recipient, recipient_role, template, params,"
                " step_key) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                incident_id,
                job.channel,
                job.recipient,
                job.recipient_role,
                job.template,
                job.params,
                key,
            )
            if status.endswith(" 1"):
                sent.append({"role": job.recipient_role, "template": job.template, "channel": job.channel})
    nxt = plan_next(steps, step=step, round_=round_)
    await conn.execute(
        """
        UPDATE escalation SET steps_fired = steps_fired + 1, next_step = $2, round = $3,
            next_step_at = CASE WHEN $4::float8 IS NOT NULL THEN greatest(now(), started_at + make_interval(secs => $4))
                                WHEN $5::int IS NOT NULL THEN now() + make_interval(secs => $5)
                                ELSE next_step_at END,
            stopped_at = CASE WHEN $6 THEN now() ELSE NULL END,
            stopped_reason = CASE WHEN $6 THEN 'policy_exhausted' ELSE NULL END
        WHERE incident_id = $1
        """,
        incident_id,
        nxt.step,
        nxt.round,
        nxt.at_offset_s,
        nxt.repeat_s,
        nxt.stop,
    )
    await conn.execute(
        "INSERT INTO incident_event (incident_id, actor, type, detail) VALUES ($1, $2, 'escalation_step', $3)",
        incident_id,
        ACTOR,
        {"step": step, "round": round_, "jobs": sent},
    )
    await incidents.mark_notified(conn, incident_id, actor=ACTOR)
    _LOGGER.info("incident %d: escalation step %d round %d fired (%d jobs)", incident_id, step, round_, len(sent))


class Escalator:
    """Fires due escalation steps; any number of engines may run one."""

    def __init__(self, dsn: str, settings: AlertingSettings) -> None:
        self._dsn = dsn
        self._contacts = Contacts.from_settings(settings)
        self._hotline = settings.hotline
        self._poll_s = settings.escalation_poll_s
        self.fired = 0

    async def run_loop(self) -> None:
        """Forever: fire what is due, then wait for NOTIFY ``gg_escalation`` or the poll interval."""
        await listen_forever(
            self._dsn, "gg_escalation", self._fire_forever, what="escalation timers", errors=TRANSIENT_DB_ERRORS
        )

    async def _fire_forever(self, conn: asyncpg.Connection, wake: asyncio.Event) -> None:
        while True:
            wake.clear()
            fired = await fire_due(conn, self._contacts, hotline=self._hotline)
            self.fired += fired
            if fired:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self._poll_s)
