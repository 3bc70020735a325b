"""Fault tests of the telemetry stream through a real Mosquitto and PostgreSQL: nothing lost, nothing doubled.

Each test runs its own Mosquitto (``/usr/sbin/mosquitto`` with the shipped ``deploy/mosquitto/mosquitto.conf``,
only the port and the persistence directory changed), so a broker restart never touches the shared broker
and the broker's queue limits are the deployed ones. A producer publishes numbered readings at QoS 1
while the fault happens; afterwards the stored rows must be exactly the readings sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from gasguard.mqtt import MqttSession
from gasguard.protocol import Channel, Topics
from gasguard.settings import MqttEndpoint
from ingest.settings import IngestSettings
from tests.conftest import free_port
from tests.ingest.conftest import T0, alarm_telemetry, running, wait_until
from tests.support.rows import add_household
from tests.support.tcp_proxy import TcpProxy

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MOSQUITTO = "/usr/sbin/mosquitto"
SHIPPED_CONFIG = PROJECT_ROOT / "deploy" / "mosquitto" / "mosquitto.conf"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="needs /usr/sbin/mosquitto"),
]


def broker_config(shipped: str, *, port: int, data_dir: Path) -> str:
    """The shipped configuration with only the listener and persistence location changed."""
    out = []
    for line in shipped.splitlines():
        directive = line.split("#", 1)[0].split()[:1]
        if directive == ["listener"]:
            out.append(f"listener {port} 127.0.0.1")
        elif directive == ["persistence_location"]:
            out.append(f"persistence_location {data_dir}/")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


class PrivateBroker:
    """A Mosquitto of this test only, restartable on the same port with the same persistence."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        data_dir = workdir / "data"
        data_dir.mkdir()
        if os.geteuid() == 0:
            # Started as root, Mosquitto drops to its own user, which must write its persistence file.
            with contextlib.suppress(KeyError):
                user = pwd.getpwnam("mosquitto")
                os.chown(data_dir, user.pw_uid, user.pw_gid)
        self.config = workdir / "mosquitto.conf"
        self.config.write_text(broker_config(SHIPPED_CONFIG.read_text(), port=self.port, data_dir=data_dir))
        self.log = workdir / "mosquitto.log"
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """``mqtt://`` URL of the listener."""
        return f"mqtt://127.0.0.1:{self.port}"

    def endpoint(self) -> MqttEndpoint:
        """The listener as an MQTT 5 endpoint."""
        return MqttEndpoint.from_url(self.url)

    async def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        with self.log.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                MOSQUITTO, "-c", str(self.config), stdout=log, stderr=log, start_new_session=True
            )
        async with asyncio.timeout(10):
            while True:
                if self._process.returncode is not None:
                    pytest.fail(f"mosquitto exited: {self.log.read_text(errors='replace')[-2000:]}")
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                return

    async def stop(self) -> None:
        """Stop it gracefully (SIGTERM: Mosquitto saves its persistence file first)."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def restart(self) -> None:
        """Stop and start again on the same port with the same persistence."""
        await self.stop()
        await self.start()


@pytest.fixture
def broker_workdir() -> Iterator[Path]:
    """A directory the broker's own user can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="gg-faults-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def broker(broker_workdir: Path) -> AsyncIterator[PrivateBroker]:
    """A private Mosquitto with the shipped configuration."""
    broker = PrivateBroker(broker_workdir)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


class Producer:
    """Publishes numbered alarm readings of one device at QoS 1 while connected, until stopped."""

    def __init__(self, session: MqttSession, topics: Topics, device_id: str, *, per_tick: int = 10) -> None:
        self._session = session
        self._topic = topics.device(device_id, Channel.TELEMETRY)
        self._per_tick = per_tick
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.sent = 0

    def start(self) -> None:
        """Begin publishing in the background."""
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stopping:
            if not self._session.connected:
                await asyncio.sleep(0.02)
                continue
            for seq in range(self.sent, self.sent + self._per_tick):
                self._session.publish(self._topic, alarm_telemetry(seq, at=T0 + timedelta(seconds=seq)), qos=1)
            self.sent += self._per_tick
            await asyncio.sleep(0.01)

    async def stop(self) -> int:
        """Stop, wait until the broker acknowledged everything sent, and return how many were sent."""
        self._stopping = True
        if self._task is not None:
            await self._task
        async with asyncio.timeout(30):
            await self._session.wait_connected()
            await self._session.flush()
        return self.sent


async def stored(db: asyncpg.Connection) -> tuple[int, int]:
    """Telemetry rows and distinct sequence numbers stored."""
    row = await db.fetchrow("SELECT count(*) AS n, count(DISTINCT seq) AS d FROM telemetry")
    assert row is not None
    return int(row["n"]), int(row["d"])


def ingest_settings(broker: PrivateBroker, database_url: str, topics: Topics, spool: Path) -> IngestSettings:
    """In-process ingest settings for these tests."""
    return IngestSettings(
        mqtt_url=broker.url,
        database_url=database_url,
        topic_root=topics.root,
        client_id=f"ingest-{topics.root}",
        spool_dir=str(spool),
        batch_size=200,
        batch_max_age_s=0.02,
        db_retry_max_s=0.5,
        db_connect_timeout_s=2.0,
        directory_refresh_s=3600.0,
        shutdown_timeout_s=3.0,
    )


@contextlib.asynccontextmanager
async def ingest_process(
    broker: PrivateBroker, database_url: str, topics: Topics, spool: Path, log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m ingest`` as its own process with a fixed client id; SIGTERM (then SIGKILL) at the end."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GG_")}
    env |= {
        "PYTHONPATH": str(PROJECT_ROOT),
        "GG_MQTT_URL": broker.url,
        "GG_DATABASE_URL": database_url,
        "GG_TOPIC_ROOT": topics.root,
        "GG_CLIENT_ID": f"ingest-{topics.root}",
        "GG_SPOOL_DIR": str(spool),
        "GG_BATCH_MAX_AGE_S": "0.02",
        "GG_DB_RETRY_MAX_S": "0.5",
    }
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ingest", stdout=out, stderr=out, env=env, cwd=spool.parent
        )
    try:
        async with asyncio.timeout(30):
            while "subscribed to" not in _read(log):
                if process.returncode is not None:
                    pytest.fail(f"ingest exited with {process.returncode}:\n{_read(log)}")
                await asyncio.sleep(0.05)
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


def _read(path: Path) -> str:
    return path.read_text(errors="replace")


async def probe(session: MqttSession, db: asyncpg.Connection, topics: Topics) -> None:
    """Publish outside the protocol until ingest dead-letters it: its subscription is live."""
    topic = f"{topics.root}/probe"

    async def arrived() -> bool:
        session.publish(topic, b"probe", qos=1)
        return bool(await db.fetchval("SELECT count(*) FROM dead_letter WHERE topic = $1", topic))

    await wait_until(arrived, timeout=20, interval=0.2)


async def test_kill_9_ingest_mid_stream_and_restart_loses_and_doubles_nothing(
    broker: PrivateBroker, database_url: str, db: asyncpg.Connection, topics: Topics, tmp_path: Path
) -> None:
    """Test that SIGKILL of ``python -m ingest`` while readings flow, then a restart, stores each exactly once."""
    household = await add_household(db, 1)
    spool, log = tmp_path / "spool", tmp_path / "ingest.log"
    async with MqttSession(broker.endpoint(), client_id=f"dev-{topics.root}") as publisher:
        producer = Producer(publisher, topics, household.alarm_id)
        async with ingest_process(broker, database_url, topics, spool, log) as first:
            await probe(publisher, db, topics)
            producer.start()
            await wait_until(lambda: _at_least(db, 300), timeout=30)
            first.send_signal(signal.SIGKILL)
            await first.wait()
            killed_at = producer.sent
            rows_at_kill, _ = await stored(db)
        assert first.returncode == -signal.SIGKILL
        # The broker queues for the dead worker's persistent session meanwhile.
        await wait_until(lambda: producer.sent >= killed_at + 300, timeout=30)
        async with ingest_process(broker, database_url, topics, spool, log):
            restarted_at = producer.sent
            await wait_until(lambda: producer.sent >= restarted_at + 300, timeout=30)
            sent = await producer.stop()
            await wait_until(lambda: _at_least(db, sent), timeout=60)
            await asyncio.sleep(0.5)  # a stray redelivery would land now
            rows, distinct = await stored(db)

    assert rows_at_kill <= killed_at < restarted_at < sent  # killed mid-stream, published while it was down
    assert (rows, distinct) == (sent, sent)
    assert await db.fetchval("SELECT min(seq) FROM telemetry") == 0
    assert await db.fetchval("SELECT max(seq) FROM telemetry") == sent - 1


async def _at_least(db: asyncpg.Connection, rows: int) -> bool:
    return (await stored(db))[0] >= rows


async def test_broker_restart_mid_stream_loses_and_doubles_nothing(
    broker: PrivateBroker, database_url: str, db: asyncpg.Connection, topics: Topics, tmp_path: Path
) -> None:
    """Test that a broker restart while readings flow stores each reading exactly once."""
    household = await add_household(db, 1)
    settings = ingest_settings(broker, database_url, topics, tmp_path / "spool")
    # Like a device, the publisher keeps its session, so what the broker had not acknowledged before the
    # restart is sent again afterwards (gmqtt drops its in-flight store when no session is present).
    async with MqttSession(broker.endpoint(), client_id=f"dev-{topics.root}", persistent=True) as publisher:
        producer = Producer(publisher, topics, household.alarm_id)
        async with running(settings, publisher) as ingest:
            producer.start()
            await wait_until(lambda: ingest.stats().rows_written >= 300, timeout=30)
            await broker.restart()
            restarted_at = producer.sent
            await wait_until(lambda: producer.sent >= restarted_at + 500, timeout=30)
            sent = await producer.stop()
            await wait_until(lambda: _at_least(db, sent), timeout=60)
            await asyncio.sleep(0.5)
            rows, distinct = await stored(db)
            stats = ingest.stats()

    assert stats.messages_in >= sent
    assert (rows, distinct) == (sent, sent)
    assert await db.fetchval("SELECT max(seq) FROM telemetry") == sent - 1


def _through(proxy: TcpProxy, dsn: str) -> str:
    parts = urlsplit(dsn)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))


async def test_database_away_for_30_s_while_publishing_loses_and_doubles_nothing(
    broker: PrivateBroker, database_url: str, db: asyncpg.Connection, topics: Topics, tmp_path: Path
) -> None:
    """Test that 30 s without PostgreSQL while readings flow ends with every reading stored exactly once."""
    household = await add_household(db, 1)
    parts = urlsplit(database_url)
    async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        settings = ingest_settings(broker, _through(proxy, database_url), topics, tmp_path / "spool")
        async with MqttSession(broker.endpoint(), client_id=f"dev-{topics.root}") as publisher:
            producer = Producer(publisher, topics, household.alarm_id, per_tick=5)
            async with running(settings, publisher) as ingest:
                producer.start()
                await wait_until(lambda: ingest.stats().rows_written >= 200, timeout=30)
                await proxy.cut()
                cut_at = producer.sent
                await asyncio.sleep(30)
                during = ingest.stats()
                rows_during, _ = await stored(db)
                await proxy.restore()
                restored_at = producer.sent
                await wait_until(lambda: producer.sent >= restored_at + 300, timeout=30)
                sent = await producer.stop()
                await wait_until(
                    lambda: ingest.stats().rows_written >= sent and ingest.stats().spool_bytes == 0, timeout=60
                )
                rows, distinct = await stored(db)
                after = ingest.stats()

    assert restored_at - cut_at > 500  # plenty was published while the database was away
    assert not during.database_available
    assert during.rows_spooled > 0
    assert rows_during < restored_at
    assert (rows, distinct) == (sent, sent)
    assert after.spool_segments == 0
