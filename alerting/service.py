"""The alerting service: engine on the MQTT bus, recorder, directory keeper, escalator and SMS notifier.

Two or more alerting processes may run at once. All of them are connected to the broker and
subscribed (each with its own client id), but only the one holding a PostgreSQL advisory lock acts on
alarms; the others are warm standbys that remember the last seconds of alarms. When the active
process dies its database session ends, the lock is free, and a standby takes it within
``leader_poll_s``, adopts the unconfirmed close commands from ``valve_command`` and replays the alarms
it saw meanwhile. A database outage never demotes the active engine: the alarm path does not wait on
the database. Escalation, the outbox sender and the recorder run in every process that has them; the
database (``FOR UPDATE SKIP LOCKED``, unique keys) keeps them from doing anything twice.

``settings.role`` splits one process into two: ``engine`` (the alarm path and its recorder) and ``notify``
(outbox sender, receipts, escalation, health sweep — all driven by the database). Production runs them
apart, so SMS signing, HTTP and escalation queries never hold up an alarm in the engine's event loop and
the engine's memory holds only the alarm path; ``all`` keeps the demo and small sites to one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import asyncpg
import httpx

from alerting import notifier, receipts
from alerting.commands import PendingCommand
from alerting.devicestate import ScopePolicy, sweep_loop
from alerting.directory import DirectoryKeeper
from alerting.engine import Engine
from alerting.escalation import Escalator
from alerting.notifier import NotificationSettings, Notifier
from alerting.recorder import TRANSIENT_DB_ERRORS, Recorder
from alerting.settings import AlertingSettings
from alerting.watchdog import Signals, Watchdog
from gasguard.db import connect
from gasguard.metrics import ServiceMetrics, SnapshotCollector, serve_metrics
from gasguard.mqtt import MqttSession, probe_topic
from gasguard.protocol import Topics

_LOGGER = logging.getLogger(__name__)


class Alerting:
    """All parts of the alerting service, exposed so a demo or benchmark can watch their counters."""

    def __init__(self, settings: AlertingSettings, *, notify: NotificationSettings | None = None) -> None:
        self.settings = settings
        self.notify = notify or NotificationSettings()
        dsn = settings.dsn()
        self.topics = Topics(root=settings.topic_root)
        self.directory = DirectoryKeeper(dsn, refresh_s=settings.directory_refresh_s)
        self.recorder = Recorder(dsn, journal_path=Path(settings.spool_dir) / "records.jsonl")
        self.session: MqttSession | None = None
        self.engine: Engine | None = None
        self.notifier: Notifier | None = None
        self.escalator = Escalator(dsn, settings)
        #: Tells the duty operators when the engine part falls behind (its inbound queue or its recorder).
        self.watchdog = Watchdog(settings, read=self.signals)
        self.metrics = ServiceMetrics("alerting")
        self.metrics.register(SnapshotCollector(self.metrics, self.watchdog.samples))
        self.ready = asyncio.Event()
        #: Set once the first attempt to become the active engine has finished (either way).
        self.leadership_decided = asyncio.Event()

    async def run(self) -> None:
        """Run until cancelled: the parts ``settings.role`` names."""
        role = self.settings.role
        async with contextlib.AsyncExitStack() as resources, asyncio.TaskGroup() as tg:
            http: httpx.AsyncClient | None = None
            if role in ("all", "notify"):
                http = await resources.enter_async_context(httpx.AsyncClient(timeout=httpx.Timeout(10.0)))
                self._start_notify(tg, http)
            if role in ("all", "engine"):
                if http is None:  # the watchdog's text during a database outage needs the SMS provider
                    http = await resources.enter_async_context(httpx.AsyncClient(timeout=httpx.Timeout(10.0)))
                self._start_watchdog(tg, http)
                await self._run_engine(tg)
            else:
                _LOGGER.info("alerting ready (notify): outbox, receipts, escalation and health sweep running")
                self.ready.set()
                await asyncio.Event().wait()

    def _start_notify(self, tg: asyncio.TaskGroup, http: httpx.AsyncClient) -> None:
        """The database-driven parts: outbox sender, delivery receipts, escalation timers, health sweep."""
        settings = self.settings
        self.notifier = notifier.build(settings, http, self.notify)
        tg.create_task(self.notifier.run_loop(), name="alerting.notifier_loop")
        tg.create_task(receipts.serve(settings, self.notify), name="alerting.receipts")
        tg.create_task(self.escalator.run_loop(), name="alerting.escalation_loop")
        scope_policy = ScopePolicy(min_devices=settings.offline_scope_min_devices, share=settings.offline_scope_share)
        tg.create_task(
            sweep_loop(settings.dsn(), interval_s=settings.health_sweep_s, policy=scope_policy),
            name="alerting.health_loop",
        )

    def _start_watchdog(self, tg: asyncio.TaskGroup, http: httpx.AsyncClient) -> None:
        """The watchdog over the engine part, and its metrics endpoint if a port is set."""
        # During a database outage it texts through the SMS provider the notifier sends with (built here too
        # when this process has no notifier; building it opens nothing).
        sender = self.notifier if self.notifier is not None else notifier.build(self.settings, http, self.notify)
        self.watchdog.sms = sender.provider("sms")
        tg.create_task(self.watchdog.run_loop(), name="alerting.watchdog")
        if self.settings.metrics_port:
            tg.create_task(self._serve_metrics(), name="alerting.metrics")

    def signals(self) -> Signals:
        """What the watchdog and the metrics read: the engine's inbound lag, the recorder's lag and backlog."""
        now = time.monotonic()
        engine = self.engine
        return Signals(
            now=now,
            engine_active=engine is not None and engine.active,
            caught_up_to=engine.caught_up_to if engine is not None else None,
            recorder_lag_s=self.recorder.lag_s(now),
            recorder_pending=self.recorder.pending,
            commands_inflight=engine.tracker.inflight if engine is not None else 0,
            db_outage=self.recorder.in_outage,
        )

    async def _serve_metrics(self) -> None:
        # Metrics are for people; a port clash must not stop alerting.
        host, port = self.settings.metrics_host, self.settings.metrics_port
        try:
            await serve_metrics(self.metrics, host=host, port=port)
        except OSError as err:
            _LOGGER.error("cannot serve metrics on %s:%d (%r); alerting carries on without them", host, port, err)  # noqa: TRY400

    async def _run_engine(self, tg: asyncio.TaskGroup) -> None:
        """The alarm path: directory, recorder, engine on the MQTT bus, leader lock; never returns."""
        settings = self.settings
        tg.create_task(self.directory.run_loop(), name="alerting.directory_loop")
        tg.create_task(self.recorder.run_loop(), name="alerting.recorder_loop")
        # Start listening only with a directory to act on. If the database is down at start,
        # the journal of an earlier run still replays, but alarms need the wiring first.
        await self.directory.loaded.wait()
        engine = Engine(
            settings,
            topics=self.topics,
            directory=self.directory,
            recorder=self.recorder,
            publish=lambda topic, payload: self._publish(topic, payload),
            active=False,
            probe_topic=probe_topic(settings.client_id),
        )
        self.engine = engine
        self.session = MqttSession(
            settings.mqtt(),
            client_id=settings.client_id,
            subscriptions=engine.subscriptions(),
            handler=engine.handle,
            persistent=True,
            receive_maximum=settings.receive_maximum,
        )
        async with self.session:
            tg.create_task(engine.timer_loop(), name="alerting.timer_loop")
            tg.create_task(self._leader_loop(engine), name="alerting.leader_loop")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.leadership_decided.wait(), 10)
            _LOGGER.info(
                "alerting ready (%s): %d alarms, %d valves in the directory",
                "active" if engine.active else "standby",
                len(self.directory.current.alarms),
                len(self.directory.current.valves),
            )
            self.ready.set()
            await asyncio.Event().wait()

    async def _leader_loop(self, engine: Engine) -> None:
        """Hold the advisory lock while alive; a standby polls for it and takes over."""
        settings = self.settings
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await connect(settings.dsn())
                while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", settings.leader_lock_key):
                    if engine.active:
                        engine.demote()
                    self.leadership_decided.set()
                    await asyncio.sleep(settings.leader_poll_s)
                if not engine.active:
                    engine.promote(await load_pending_commands(conn))
                self.leadership_decided.set()
                while True:
                    await asyncio.sleep(settings.leader_poll_s)
                    await conn.fetchval("SELECT 1")
            except TRANSIENT_DB_ERRORS as err:
                # Keep the current role: an active engine goes on closing valves during an outage.
                _LOGGER.warning("leader lock connection failed (%s); keeping role %s", err, engine.active)
                await asyncio.sleep(settings.leader_poll_s)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()

    def _publish(self, topic: str, payload: bytes) -> None:
        assert self.session is not None
        self.session.publish(topic, payload, qos=1)


_PENDING_SQL = """
SELECT c.cmd_id, c.valve_id, c.issued_at, c.expires_at, c.state, c.acked_at,
       (SELECT count(*) FROM valve_command_attempt a WHERE a.cmd_id = c.cmd_id) AS attempts
FROM valve_command c
WHERE c.command = 'close' AND c.confirmed_at IS NULL AND c.expires_at > now()
  AND (c.state IN ('sent', 'acked') OR (c.state = 'failed' AND c.reported_position IS DISTINCT FROM 'fault'))
ORDER BY c.issued_at
"""


async def load_pending_commands(conn: asyncpg.Connection) -> list[PendingCommand]:
    """Close commands the database holds as neither confirmed nor expired nor refused (restart resilience)."""
    return [
        PendingCommand(
            cmd_id=r["cmd_id"],
            valve_id=r["valve_id"],
            issued_at=r["issued_at"],
            expires_at=r["expires_at"],
            attempts=max(1, int(r["attempts"])),
            acked=r["acked_at"] is not None,
            escalated=r["state"] == "failed",
        )
        for r in await conn.fetch(_PENDING_SQL)
    ]


async def run(settings: AlertingSettings) -> None:
    """Run the alerting service until cancelled."""
    await Alerting(settings).run()
