"""Alerting watches itself: one system alarm to the duty operators when it falls behind, and its all-clear.

Alerting is allowed to fall behind in an alarm storm: its command timers wait for the inbound queue
(`alerting.engine.Engine.horizon`, up to ``max_backlog_s``) and its recorder may need minutes to store
tens of thousands of incidents. Nobody would be told. The watchdog judges every ``watchdog_interval_s``
in each alerting process:

* **behind** when the active engine has not read everything the broker had for it up to
  ``behind_alarm_s`` ago (``now - caught_up_to``: alarms and valve reports wait unread, so close commands
  and escalations are late), or the oldest record not yet in the database has waited longer than that
  (`alerting.recorder.Recorder.lag_s`: incidents and their SMS are late);
* **caught up** once neither has held for ``behind_recovered_s``.

Behind opens one critical ``alerting_behind`` incident without a household, scoped to the process
(``system:alerting:<client id>``, one active per scope by a unique index), with the measured lags on its
timeline and outbox jobs to the duty operators and the emergency-management webhook — written on the
watchdog's own connection in one transaction, never through the recorder, which may be what is behind.
Judging "behind" again changes nothing; a new episode on a still-open incident is a ``behind`` entry with
its own texts; catching up is a ``caught_up`` entry (已追上). Operators close the incident as usual.

While the database is unreachable (the recorder is journaling) it cannot take an incident, so once that
has lasted ``behind_alarm_s`` the duty operators get one SMS straight through the SMS provider, once
per outage.

The rules are the pure `judge` and `settle`; `Watchdog` does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import asyncpg

from alerting.providers.base import Message, Provider, Rejected, Unavailable
from alerting.recorder import TRANSIENT_DB_ERRORS
from alerting.settings import AlertingSettings
from alerting.templates import (
    ALERTING_BEHIND_OPERATOR,
    ALERTING_DB_DOWN_OPERATOR,
    EMERGENCY_WEBHOOK,
    county_time,
)
from gasguard import incidents
from gasguard.clock import utcnow
from gasguard.db import connect
from gasguard.metrics import Sample

_LOGGER = logging.getLogger(__name__)

KIND = "alerting_behind"
ACTOR = "alerting:watchdog"
#: Timeline entry types of the episodes: the first opens the incident, later ones come after a ``caught_up``.
OPENED, BEHIND, CAUGHT_UP = "opened", "behind", "caught_up"
#: A database round trip of the watchdog's gives up after this long (an outage must not stall the judging).
DB_TIMEOUT_S = 10.0
#: After a failed connection or write, leave the database alone this long (no reconnect storm, no log flood).
DB_RETRY_S = 5.0
#: After the SMS provider was unavailable, try the outage text again this much later.
OUTAGE_SMS_RETRY_S = 30.0
#: Longest number the SMS templates' ``lag`` parameter can hold.
_MAX_LAG = 99_999


def system_scope(client_id: str) -> str:
    """The scope of one alerting process's system incident."""
    return f"system:alerting:{client_id}"


@dataclass(frozen=True, slots=True)
class Policy:
    """When alerting counts as behind, and as caught up again."""

    behind_alarm_s: float = 30.0
    recovered_after_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Signals:
    """What the watchdog reads from the engine and the recorder at one moment (``now`` is monotonic)."""

    now: float
    #: Whether this process's engine acts on alarms (a standby's inbound queue is not judged).
    engine_active: bool
    #: `alerting.engine.Engine.caught_up_to`; None before the engine exists.
    caught_up_to: float | None
    recorder_lag_s: float
    recorder_pending: int
    commands_inflight: int
    #: The recorder cannot reach the database and is journaling.
    db_outage: bool

    @property
    def inbound_lag_s(self) -> float:
        """How far behind the clock the active engine has read its inbound queue; 0 for a standby."""
        if not self.engine_active or self.caught_up_to is None:
            return 0.0
        return max(0.0, self.now - self.caught_up_to)


@dataclass(frozen=True, slots=True)
class Episode:
    """One stretch of being behind."""

    #: Monotonic time it was first judged behind.
    since: float
    worst_inbound_s: float = 0.0
    worst_recorder_s: float = 0.0
    #: Its incident (or ``behind`` entry) is in the database.
    raised: bool = False
    #: Neither condition has held since then (None while behind).
    clear_since: float | None = None


@dataclass(frozen=True, slots=True)
class RaiseBehind:
    """Open the system incident (or a new episode on it) and text the duty operators."""

    started_s_ago: float
    inbound_lag_s: float
    recorder_lag_s: float
    recorder_pending: int
    commands_inflight: int
    engine_active: bool


@dataclass(frozen=True, slots=True)
class AllClear:
    """Append 已追上 to the incident: it was behind for ``behind_s``."""

    behind_s: float
    worst_inbound_s: float
    worst_recorder_s: float


@dataclass(frozen=True, slots=True)
class TextOutage:
    """Text the duty operators straight through the SMS provider: the database has been away ``outage_s``."""

    outage_s: float


Action = RaiseBehind | AllClear | TextOutage


@dataclass(frozen=True, slots=True)
class WatchState:
    """What the watchdog remembers between judgements."""

    episode: Episode | None = None
    #: An episode that ended after it was raised, whose all-clear is not written yet.
    all_clear_due: AllClear | None = None
    #: Monotonic time the recorder was first seen in an outage (None: no outage).
    outage_since: float | None = None
    outage_texted: bool = False


def lagging(signals: Signals, policy: Policy) -> tuple[bool, bool]:
    """Whether the inbound queue and the recorder are behind (pure)."""
    return signals.inbound_lag_s > policy.behind_alarm_s, signals.recorder_lag_s > policy.behind_alarm_s


def judge(state: WatchState, signals: Signals, policy: Policy) -> tuple[WatchState, list[Action]]:
    """The next state and what to do now (pure).

    Actions repeat on every judgement until `settle` records that they were done, so a failed write is
    retried. Nothing is written to the database during an outage (it would fail; the outage text covers it).
    """
    now = signals.now
    actions: list[Action] = []
    outage_since, outage_texted = state.outage_since, state.outage_texted
    if signals.db_outage:
        outage_since = now if outage_since is None else outage_since
        if not outage_texted and now - outage_since > policy.behind_alarm_s:
            actions.append(TextOutage(outage_s=now - outage_since))
    else:
        outage_since, outage_texted = None, False

    inbound, recorder = signals.inbound_lag_s, signals.recorder_lag_s
    all_clear = state.all_clear_due
    episode = state.episode
    if any(lagging(signals, policy)):
        if episode is None:
            episode = Episode(since=now, worst_inbound_s=inbound, worst_recorder_s=recorder)
        else:
            episode = replace(
                episode,
                clear_since=None,
                worst_inbound_s=max(episode.worst_inbound_s, inbound),
                worst_recorder_s=max(episode.worst_recorder_s, recorder),
            )
    elif episode is not None:
        clear_since = now if episode.clear_since is None else episode.clear_since
        if now - clear_since >= policy.recovered_after_s:
            if episode.raised:
                all_clear = AllClear(
                    behind_s=clear_since - episode.since,
                    worst_inbound_s=episode.worst_inbound_s,
                    worst_recorder_s=episode.worst_recorder_s,
                )
            episode = None
        else:
            episode = replace(episode, clear_since=clear_since)

    if not signals.db_outage:
        if all_clear is not None:
            actions.append(all_clear)
        if episode is not None and not episode.raised and episode.clear_since is None:
            actions.append(
                RaiseBehind(
                    started_s_ago=now - episode.since,
                    inbound_lag_s=inbound,
                    recorder_lag_s=recorder,
                    recorder_pending=signals.recorder_pending,
                    commands_inflight=signals.commands_inflight,
                    engine_active=signals.engine_active,
                )
            )
    return WatchState(episode, all_clear, outage_since, outage_texted), actions


def settle(state: WatchState, action: Action) -> WatchState:
    """The state once ``action`` has been carried out (pure)."""
    match action:
        case RaiseBehind():
            return state if state.episode is None else replace(state, episode=replace(state.episode, raised=True))
        case AllClear():
            return replace(state, all_clear_due=None)
        case TextOutage():
            return replace(state, outage_texted=True)


def behind_params(action: RaiseBehind, *, since: datetime, policy: Policy) -> dict[str, str]:
    """The operators' SMS parameters: what lags, by how much, since when, and what that delays (pure)."""
    inbound = action.inbound_lag_s > policy.behind_alarm_s
    recorder = action.recorder_lag_s > policy.behind_alarm_s
    part = "接收和入库" if inbound and recorder else "报警接收" if inbound else "事件入库"
    lag = min(_MAX_LAG, round(max(action.inbound_lag_s, action.recorder_lag_s)))
    return {
        "part": part,
        "lag": str(lag),
        "time": county_time(since),
        "effect": "关阀和短信" if inbound else "事件和短信",
    }


@dataclass(frozen=True, slots=True)
class Contacts:
    """Who hears that alerting is behind."""

    operator_phones: tuple[str, ...] = ()
    emergency_webhook: str | None = None


async def _last_episode_entry(conn: asyncpg.Connection, incident_id: int) -> str | None:
    last: str | None = await conn.fetchval(
        "SELECT type FROM incident_event WHERE incident_id = $1 AND type = ANY($2::text[]) ORDER BY id DESC LIMIT 1",
        incident_id,
        [OPENED, BEHIND, CAUGHT_UP],
    )
    return last


async def raise_behind(
    conn: asyncpg.Connection,
    *,
    scope: str,
    action: RaiseBehind,
    since: datetime,
    contacts: Contacts,
    policy: Policy,
) -> tuple[int, bool] | None:
    """Open the system incident, or a new episode on the active one, with its outbox jobs (one transaction).

    Idempotent: while the active incident's latest episode has not caught up, this changes nothing.
    Returns (incident id, whether anything was written), or None if the incident was closed under us.
    """
    detail: dict[str, object] = {
        "scope": scope,
        "inbound_lag_s": round(action.inbound_lag_s, 1),
        "recorder_lag_s": round(action.recorder_lag_s, 1),
        "recorder_pending": action.recorder_pending,
        "commands_inflight": action.commands_inflight,
        "engine_active": action.engine_active,
        "behind_alarm_s": policy.behind_alarm_s,
    }
    params = behind_params(action, since=since, policy=policy)
    detail["note"] = f"燃气报警服务{params['part']}滞后{params['lag']}秒（超过{policy.behind_alarm_s:g}秒即告警）"
    async with conn.transaction():
        incident_id: int | None = await conn.fetchval(
            """
            INSERT INTO incident (household_id, kind, severity, scope, alarm_received_at, detail)
            VALUES (NULL, $1, 'critical', $2, $3, $4)
            ON CONFLICT (scope) WHERE kind = 'alerting_behind' AND state <> 'CLOSED' DO NOTHING
            RETURNING id
            """,
            KIND,
            scope,
            since,
            detail,
        )
        entry = OPENED
        episode = 1
        if incident_id is None:
            incident_id = await conn.fetchval(
                "SELECT id FROM incident WHERE scope = $1 AND kind = $2 AND state <> 'CLOSED' FOR UPDATE", scope, KIND
            )
            if incident_id is None:
                return None  # closed between the two statements; the next judgement opens a new one
            if await _last_episode_entry(conn, incident_id) != CAUGHT_UP:
                return incident_id, False  # this episode is on record already
            entry = BEHIND
            episode = 1 + await conn.fetchval(
                "SELECT count(*) FROM incident_event WHERE incident_id = $1 AND type = ANY($2::text[])",
                incident_id,
                [OPENED, BEHIND],
            )
        await conn.execute(
            "INSERT INTO incident_event (incident_id, actor, type, detail) VALUES ($1, $2, $3, $4)",
            incident_id,
            ACTOR,
            entry,
            {**detail, "episode": episode, "started_at": since.isoformat()},
        )
        # Each episode's texts under their own key: a replay of the same episode texts nobody twice.
        key = "" if episode == 1 else f"behind{episode}"
        jobs: list[tuple[str, str, str, str, dict[str, str]]] = [
            ("sms", phone, "operator", ALERTING_BEHIND_OPERATOR.code, params) for phone in contacts.operator_phones
        ]
        if contacts.emergency_webhook:
            webhook = {
                "kind": KIND,
                "place": "燃气报警服务",
                "time": since.isoformat(),
                "round": str(episode),
                "scope": scope,
                "inbound_lag_s": str(detail["inbound_lag_s"]),
                "recorder_lag_s": str(detail["recorder_lag_s"]),
            }
            jobs.append(("webhook", contacts.emergency_webhook, "emergency", EMERGENCY_WEBHOOK, webhook))
        for channel, recipient, role, template, job_params in jobs:
            await conn.execute(
                "INSERT INTO notification_outbox (incident_id, channel, recipient, recipient_role, template, params,"
                " step_key) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                incident_id,
                channel,
                recipient,
                role,
                template,
                job_params,
                key,
            )
        if jobs:
            await incidents.mark_notified(conn, incident_id, actor=ACTOR)
    return incident_id, True


async def all_clear(conn: asyncpg.Connection, *, scope: str, action: AllClear) -> int | None:
    """Append 已追上 to the scope's latest incident if its latest episode is still open; returns its id if so.

    The latest incident, closed or not: operators may close it before alerting has caught up, and the
    record should still say when it did.
    """
    async with conn.transaction():
        incident_id: int | None = await conn.fetchval(
            "SELECT id FROM incident WHERE scope = $1 AND kind = $2 ORDER BY id DESC LIMIT 1 FOR UPDATE", scope, KIND
        )
        if incident_id is None or await _last_episode_entry(conn, incident_id) in (None, CAUGHT_UP):
            return None
        await conn.execute(
            "INSERT INTO incident_event (incident_id, actor, type, detail) VALUES ($1, $2, $3, $4)",
            incident_id,
            ACTOR,
            CAUGHT_UP,
            {
                "behind_s": round(action.behind_s, 1),
                "worst_inbound_lag_s": round(action.worst_inbound_s, 1),
                "worst_recorder_lag_s": round(action.worst_recorder_s, 1),
                "note": f"已追上：滞后持续{round(action.behind_s)}秒",
            },
        )
    return incident_id


async def open_episode_age_s(conn: asyncpg.Connection, *, scope: str) -> float | None:
    """How long ago the scope's latest episode started, if it has not caught up (a restart while behind)."""
    row = await conn.fetchrow(
        """
        SELECT e.type, extract(epoch FROM now() - e.at)::float8 AS age
        FROM incident i
        JOIN LATERAL (SELECT type, at FROM incident_event
                      WHERE incident_id = i.id AND type = ANY($3::text[]) ORDER BY id DESC LIMIT 1) e ON true
        WHERE i.scope = $1 AND i.kind = $2
        ORDER BY i.id DESC LIMIT 1
        """,
        scope,
        KIND,
        [OPENED, BEHIND, CAUGHT_UP],
    )
    if row is None or row["type"] == CAUGHT_UP:
        return None
    return max(0.0, float(row["age"]))


class Watchdog:
    """Judges alerting's lag every interval and raises, clears and texts accordingly."""

    def __init__(
        self,
        settings: AlertingSettings,
        *,
        read: Callable[[], Signals],
        sms: Provider | None = None,
        wall: Callable[[], datetime] = utcnow,
    ) -> None:
        self._dsn = settings.dsn()
        self.scope = system_scope(settings.client_id)
        self.policy = Policy(behind_alarm_s=settings.behind_alarm_s, recovered_after_s=settings.behind_recovered_s)
        self._interval_s = settings.watchdog_interval_s
        self._contacts = Contacts(
            operator_phones=tuple(settings.duty_operator_phones), emergency_webhook=settings.emergency_webhook_url
        )
        self._sign_name = settings.sms_sign_name
        self._read = read
        #: The SMS provider the notifier sends through (set by the service once it has built it).
        self.sms = sms
        self._wall = wall
        self.state = WatchState()
        self._conn: asyncpg.Connection | None = None
        self._db_retry_at = 0.0
        self._synced = False
        self._outage_texted_to: set[str] = set()
        self._outage_retry_at = 0.0
        #: Counters: episodes raised, all-clears written, outage texts accepted by the provider.
        self.raised = 0
        self.cleared = 0
        self.outage_texts = 0

    async def run_loop(self) -> None:
        """Judge forever."""
        try:
            while True:
                try:
                    await self.check()
                except Exception:
                    # The watchdog must outlive its own bugs: the alarm path does not depend on it.
                    _LOGGER.exception("alerting watchdog: judgement failed")
                await asyncio.sleep(self._interval_s)
        finally:
            await self._disconnect()

    async def check(self) -> list[Action]:
        """One judgement: read the signals, decide, act; returns the actions that were due."""
        signals = self._read()
        if not signals.db_outage:
            self._outage_texted_to.clear()
            if not self._synced:
                await self._sync(signals)
        self.state, actions = judge(self.state, signals, self.policy)
        for action in actions:
            if not await self._carry_out(action, signals):
                break  # in order: a later action must not overtake a failed one (all-clear before a new raise)
            self.state = settle(self.state, action)
        return actions

    @property
    def behind(self) -> bool:
        """Whether an episode of being behind is going on."""
        return self.state.episode is not None and self.state.episode.clear_since is None

    def samples(self) -> Iterable[Sample]:
        """Scrape-time metrics (`gasguard.metrics.SnapshotCollector`): the signals as they are now."""
        s = self._read()
        return [
            ("gauge", "inbound_lag_seconds", "How far behind the clock the active engine has read its inbound queue",
             s.inbound_lag_s),
            ("gauge", "recorder_lag_seconds", "How long the oldest record not yet in the database has waited",
             s.recorder_lag_s),
            ("gauge", "recorder_pending", "Records not yet in the database", float(s.recorder_pending)),
            ("gauge", "commands_inflight", "Close commands awaiting the valve's closed report",
             float(s.commands_inflight)),
            ("gauge", "engine_active", "1 if this process's engine acts on alarms, 0 on standby",
             float(s.engine_active)),
            ("gauge", "database_unreachable", "1 while the recorder journals because the database is away",
             float(s.db_outage)),
            ("gauge", "behind", "1 while the watchdog judges alerting behind", float(self.behind)),
            ("counter", "behind_raised", "Episodes of being behind put on record", float(self.raised)),
            ("counter", "outage_texts", "SMS sent straight to the duty operators during a database outage",
             float(self.outage_texts)),
        ]  # fmt: skip

    async def _sync(self, signals: Signals) -> None:
        """After a restart while behind, pick up the open episode so its all-clear is written."""
        conn = await self._connection()
        if conn is None:
            return
        try:
            async with asyncio.timeout(DB_TIMEOUT_S):
                age = await open_episode_age_s(conn, scope=self.scope)
        except TRANSIENT_DB_ERRORS as err:
            await self._lost(err)
            return
        self._synced = True
        if age is not None and self.state.episode is None:
            self.state = replace(self.state, episode=Episode(since=signals.now - age, raised=True))
            _LOGGER.warning("alerting watchdog: %s has been behind since %.0f s ago (on record)", self.scope, age)

    async def _carry_out(self, action: Action, signals: Signals) -> bool:
        if isinstance(action, TextOutage):
            return await self._text_outage(action, signals.now)
        conn = await self._connection()
        if conn is None:
            return False
        try:
            async with asyncio.timeout(DB_TIMEOUT_S):
                if isinstance(action, RaiseBehind):
                    since = self._wall() - timedelta(seconds=action.started_s_ago)
                    result = await raise_behind(
                        conn, scope=self.scope, action=action, since=since, contacts=self._contacts, policy=self.policy
                    )
                    if result is None:
                        return False
                    incident_id, written = result
                    self.raised += written
                    _LOGGER.error(
                        "alerting is behind (inbound %.0f s, recorder %.0f s, %d records pending): incident %d%s",
                        action.inbound_lag_s,
                        action.recorder_lag_s,
                        action.recorder_pending,
                        incident_id,
                        "" if written else " (already on record)",
                    )
                else:
                    cleared = await all_clear(conn, scope=self.scope, action=action)
                    self.cleared += cleared is not None
                    _LOGGER.warning(
                        "alerting has caught up after %.0f s behind (incident %s)", action.behind_s, cleared
                    )
        except TRANSIENT_DB_ERRORS as err:
            await self._lost(err)
            return False
        return True

    async def _text_outage(self, action: TextOutage, now: float) -> bool:
        """Text every duty operator once through the SMS provider; False to try again later."""
        phones = [p for p in self._contacts.operator_phones if p not in self._outage_texted_to]
        if self.sms is None or not phones:
            _LOGGER.critical(
                "alerting's database unreachable for %.0f s; no SMS provider or duty operator phones to tell",
                action.outage_s,
            )
            return True
        if now < self._outage_retry_at:
            return False
        _LOGGER.critical(
            "alerting's database unreachable for %.0f s: texting %d duty operator(s) directly",
            action.outage_s,
            len(phones),
        )
        params = {
            "lag": str(min(_MAX_LAG, round(action.outage_s))),
            "time": county_time(self._wall() - timedelta(seconds=action.outage_s)),
        }
        text = ALERTING_DB_DOWN_OPERATOR.render(params, sign_name=self._sign_name)
        stamp = int(time.time())
        retry = False
        for n, phone in enumerate(phones):
            message = Message(
                channel="sms",
                recipient=phone,
                template=ALERTING_DB_DOWN_OPERATOR.code,
                params=params,
                out_id=f"ggw-{stamp}-{n}",
                text=text,
            )
            try:
                await self.sms.send(message)
            except Rejected as err:
                _LOGGER.error("database-outage SMS to a duty operator refused: %s", err)  # noqa: TRY400
            except Unavailable as err:
                _LOGGER.warning("database-outage SMS to a duty operator failed, will retry: %s", err)
                retry = True
                continue
            else:
                self.outage_texts += 1
            self._outage_texted_to.add(phone)
        if retry:
            self._outage_retry_at = now + OUTAGE_SMS_RETRY_S
            return False
        return True

    async def _connection(self) -> asyncpg.Connection | None:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        if time.monotonic() < self._db_retry_at:
            return None
        try:
            self._conn = await connect(self._dsn)
        except TRANSIENT_DB_ERRORS as err:
            _LOGGER.warning("alerting watchdog: database unreachable (%s); retrying in %.0f s", err, DB_RETRY_S)
            self._conn = None
            self._db_retry_at = time.monotonic() + DB_RETRY_S
        return self._conn

    async def _lost(self, err: BaseException) -> None:
        _LOGGER.warning("alerting watchdog: database write failed (%s); retrying in %.0f s", err, DB_RETRY_S)
        self._db_retry_at = time.monotonic() + DB_RETRY_S
        await self._disconnect()

    async def _disconnect(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None
