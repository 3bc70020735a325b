"""The alerting service: engine on the MQTT bus, recorder, directory keeper and SMS notifier."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx

from alerting.directory import DirectoryKeeper
from alerting.engine import Engine
from alerting.notifier import Notifier
from alerting.recorder import Recorder
from alerting.settings import AlertingSettings
from alerting.sms import AliyunSmsProvider
from gasguard.mqtt import MqttSession
from gasguard.protocol import Topics

_LOGGER = logging.getLogger(__name__)


class Alerting:
    """All parts of the alerting service, exposed so a demo or benchmark can watch their counters."""

    def __init__(self, settings: AlertingSettings) -> None:
        self.settings = settings
        dsn = settings.dsn()
        self.topics = Topics(root=settings.topic_root)
        self.directory = DirectoryKeeper(dsn, refresh_s=settings.directory_refresh_s)
        self.recorder = Recorder(dsn, journal_path=Path(settings.spool_dir) / "records.jsonl")
        self.session: MqttSession | None = None
        self.engine: Engine | None = None
        self.notifier: Notifier | None = None
        self.ready = asyncio.Event()

    async def run(self) -> None:
        """Run until cancelled."""
        settings = self.settings
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as http:
            provider = AliyunSmsProvider(
                endpoint=settings.sms_endpoint,
                access_key_id=settings.sms_access_key_id,
                access_key_secret=settings.sms_access_key_secret.get_secret_value(),
                sign_name=settings.sms_sign_name,
                client=http,
            )
            self.notifier = Notifier(
                settings.dsn(), provider, sign_name=settings.sms_sign_name, max_attempts=settings.sms_max_attempts
            )
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.directory.run_loop(), name="alerting.directory_loop")
                tg.create_task(self.recorder.run_loop(), name="alerting.recorder_loop")
                tg.create_task(self.notifier.run_loop(), name="alerting.notifier_loop")
                # Start listening only with a directory to act on. If the database is down at start,
                # the journal of an earlier run still replays, but alarms need the wiring first.
                await self.directory.loaded.wait()
                engine = Engine(
                    settings,
                    topics=self.topics,
                    directory=self.directory,
                    recorder=self.recorder,
                    publish=lambda topic, payload: self._publish(topic, payload),
                )
                self.engine = engine
                self.session = MqttSession(
                    settings.mqtt(),
                    client_id=settings.client_id,
                    subscriptions=engine.subscriptions(),
                    handler=engine.handle,
                    persistent=True,
                )
                async with self.session:
                    tg.create_task(engine.timer_loop(), name="alerting.timer_loop")
                    _LOGGER.info(
                        "alerting ready: %d alarms, %d valves in the directory",
                        len(self.directory.current.alarms),
                        len(self.directory.current.valves),
                    )
                    self.ready.set()
                    await asyncio.Event().wait()

    def _publish(self, topic: str, payload: bytes) -> None:
        assert self.session is not None
        self.session.publish(topic, payload, qos=1)


async def run(settings: AlertingSettings) -> None:
    """Run the alerting service until cancelled."""
    await Alerting(settings).run()
