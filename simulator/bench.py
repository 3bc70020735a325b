"""Benchmark driver: ``python -m simulator.bench`` (``make bench``) measures latency and throughput here.

It starts its own Mosquitto with the shipped configuration on a free loopback port and a fresh PostgreSQL
database holding a seeded demo county, runs alerting and ingest as their own processes, plays the devices
and the load from this process and from worker processes, and writes ``docs/benchmarks.md``. All traffic
stays on loopback; every stage is bounded in count and time; the broker, the database and every process
started here are stopped or dropped at the end, also on error, SIGINT or SIGTERM.

Workers are this module too: ``python -m simulator.bench worker ROLE JSON`` runs an echo client, a
telemetry publisher, a subscriber (gmqtt, paho-mqtt or aiomqtt) or the SMS sandbox. They talk to the
driver one line at a time: ``READY {...}`` once set up, ``go`` from the driver to start, ``RESULT {...}``
when done; the end of their stdin means stop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import itertools
import json
import logging
import math
import os
import platform
import pwd
import resource
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from gasguard import runtime
from gasguard.clock import utcnow
from gasguard.db import connect, migrate
from gasguard.embedded import free_tcp_port, with_database
from gasguard.mqtt import MqttSession
from gasguard.protocol import (
    AlarmEvent,
    AlarmState,
    AlarmTelemetry,
    Channel,
    Command,
    CommandAck,
    CommandResult,
    Power,
    PowerSource,
    Radio,
    TopicError,
    Topics,
    ValveEvent,
    ValvePosition,
    ValveTelemetry,
    encode,
)
from gasguard.settings import MqttEndpoint

_LOGGER = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BROKER_CONFIG = PROJECT_ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
DEFAULT_OUTPUT = PROJECT_ROOT / "docs" / "benchmarks.md"
DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_MOSQUITTO = "/usr/sbin/mosquitto"
LOOPBACK = "127.0.0.1"

CLIENTS = ("gmqtt", "paho", "aiomqtt")
_CLIENT_PACKAGES = {"gmqtt": "gmqtt", "paho": "paho-mqtt", "aiomqtt": "aiomqtt"}
_CLIENT_MODULES = {"gmqtt": "gmqtt", "paho": "paho.mqtt", "aiomqtt": "aiomqtt"}

#: How often the alarm benchmark asks the database whether the valve's closing has been recorded.
POLL_INTERVAL_S = 0.002
#: How often the ingest benchmark counts the telemetry rows (a count costs PostgreSQL a scan).
COUNT_INTERVAL_S = 0.2
_READY = "READY"
_RESULT = "RESULT"
_GO = "go"
_SMS_KEY = ("gg-bench", "gg-bench-secret")
_ALARM_LEL = 35.0
_MARK_EVERY = 1000
#: Written into a child's log just before the driver stops it; what follows is shutdown output.
STOP_MARKER = "--- simulator.bench: stopping"


class BenchError(RuntimeError):
    """A benchmark stage could not run or its figures cannot be trusted."""


# --------------------------------------------------------------------------------------- statistics


def percentile(samples: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``samples``, which need not be sorted."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 < q <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {q}")
    ordered = sorted(samples)
    # round() first: 0.07 * 100 is 7.000000000000001 in floating point, which must not become rank 8.
    rank = math.ceil(round(q * len(ordered) / 100, 9))
    return ordered[max(rank, 1) - 1]


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Summary of latency samples, all in seconds."""

    count: int
    minimum: float
    p50: float
    p90: float
    p99: float
    maximum: float
    mean: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> LatencyStats:
        """Summarise ``samples`` (at least one)."""
        if not samples:
            raise ValueError("no latency samples")
        return cls(
            count=len(samples),
            minimum=min(samples),
            p50=percentile(samples, 50),
            p90=percentile(samples, 90),
            p99=percentile(samples, 99),
            maximum=max(samples),
            mean=statistics.fmean(samples),
        )


def per_second(count: int, seconds: float) -> float:
    """``count`` over ``seconds``; 0 when no time passed (one sample has no rate)."""
    return count / seconds if seconds > 0 else 0.0


def format_ms(seconds: float) -> str:
    """Milliseconds with as many decimals as the magnitude deserves."""
    ms = seconds * 1000
    if ms < 10:
        return f"{ms:.2f} ms"
    if ms < 100:
        return f"{ms:.1f} ms"
    return f"{ms:,.0f} ms"


def format_rate(per_s: float) -> str:
    """A rate per second with thousands separators."""
    return f"{per_s:,.0f}/s"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines.extend("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- broker config


def rewrite_broker_config(text: str, *, host: str, port: int, persistence_dir: Path, log_file: Path) -> str:
    """The shipped Mosquitto configuration with only the listener, persistence location and log destination changed.

    Every other line (``set_tcp_nodelay``, the in-flight and queue limits, persistence itself) is kept
    verbatim, so the benchmark measures the broker as it is deployed.

    Raises:
        ValueError: when the configuration has no listener or more than one (the benchmark would not
            know which to move).
    """
    out = ["# Rewritten by simulator.bench: listener, persistence_location and log_dest differ from the shipped file."]
    listeners = 0
    has_persistence_location = False
    has_log_dest = False
    for line in text.splitlines():
        tokens = line.split("#", 1)[0].split()
        directive = tokens[0] if tokens else ""
        if directive == "listener":
            listeners += 1
            out.append(f"listener {port} {host}")
        elif directive == "persistence_location":
            has_persistence_location = True
            out.append(f"persistence_location {persistence_dir}/")
        elif directive == "log_dest":
            if not has_log_dest:
                out.append(f"log_dest file {log_file}")
            has_log_dest = True
        else:
            out.append(line)
    if listeners != 1:
        raise ValueError(f"expected exactly one listener in the broker configuration, found {listeners}")
    if not has_persistence_location:
        out.append(f"persistence_location {persistence_dir}/")
    if not has_log_dest:
        out.append(f"log_dest file {log_file}")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------- payloads


def telemetry_payload(device_id: str, seq: int, ts: datetime) -> bytes:
    """Protocol-v1 telemetry of a demo device (alarm for ``GA-…``, valve otherwise), about 125 bytes."""
    radio = Radio(rssi=-55 - zlib.crc32(device_id.encode()) % 40)
    power = Power(source=PowerSource.MAINS)
    if device_id.startswith("GA-"):
        return encode(
            AlarmTelemetry(seq=seq, ts=ts, lel=(seq % 30) / 10, state=AlarmState.NORMAL, power=power, radio=radio)
        )
    return encode(ValveTelemetry(seq=seq, ts=ts, position=ValvePosition.OPEN, power=power, radio=radio))


# --------------------------------------------------------------------------------------- child processes


class ChildProcess:
    """A process this driver started; `stop` ends it (stdin closed, SIGTERM, SIGKILL after a timeout)."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path

    def log_tail(self, lines: int = 25) -> str:
        """The end of the process's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def read_message(self, kind: str, timeout_s: float) -> dict[str, Any]:
        """Wait for the next ``KIND {json}`` line on the worker's stdout."""
        stdout = self.process.stdout
        if stdout is None:
            raise BenchError(f"{self.name} has no stdout pipe")
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    line = await stdout.readline()
                    if not line:
                        await asyncio.wait_for(self.process.wait(), 5)
                        raise BenchError(
                            f"{self.name} exited with {self.process.returncode} before {kind}:\n{self.log_tail()}"
                        )
                    head, _, body = line.decode(errors="replace").strip().partition(" ")
                    if head == kind:
                        message: dict[str, Any] = json.loads(body) if body else {}
                        return message
                    _LOGGER.debug("%s: %s", self.name, line)
        except TimeoutError as err:
            raise BenchError(f"{self.name} sent no {kind} within {timeout_s:g} s:\n{self.log_tail()}") from err

    def send(self, line: str) -> None:
        """Write one line to the worker's stdin."""
        if self.process.stdin is None:
            raise BenchError(f"{self.name} has no stdin pipe")
        self.process.stdin.write(line.encode() + b"\n")

    async def wait_for_log(self, marker: str, timeout_s: float) -> None:
        """Wait until ``marker`` appears in the log (services announce readiness there)."""
        try:
            async with asyncio.timeout(timeout_s):
                while marker not in self.log_path.read_text(errors="replace"):
                    if self.process.returncode is not None:
                        raise BenchError(
                            f"{self.name} exited with {self.process.returncode} while starting:\n{self.log_tail()}"
                        )
                    await asyncio.sleep(0.05)
        except TimeoutError as err:
            raise BenchError(f"{self.name} did not log {marker!r} within {timeout_s:g} s:\n{self.log_tail()}") from err

    async def stop(self, timeout_s: float = 10.0) -> int | None:
        """End the process and reap it; returns its exit code."""
        process = self.process
        if process.stdin is not None and not process.stdin.is_closing():
            # Workers stop by themselves at the end of their stdin; give them a moment to.
            process.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 3)
        if process.returncode is None:
            with contextlib.suppress(OSError), self.log_path.open("a") as log:
                log.write(f"\n{STOP_MARKER} {self.name}\n")
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout_s)
            except TimeoutError:
                _LOGGER.warning("%s ignored SIGTERM for %g s; killing it", self.name, timeout_s)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await asyncio.wait_for(process.wait(), 5)
        return process.returncode


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any ``GG_*`` setting, plus ``extra`` and the project on the path."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GG_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def child_process(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    pipes: bool = False,
) -> AsyncIterator[ChildProcess]:
    """Start a process, yield it, and always stop it on the way out.

    With ``pipes`` its stdin and stdout are pipes for the worker line protocol; otherwise stdout goes to
    the log too. Its own session keeps a Ctrl-C in the terminal from reaching it before the driver
    has decided how to stop it.
    """
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if pipes else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if pipes else log,
            stderr=log,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    child = ChildProcess(name, process, log_path)
    try:
        yield child
    finally:
        try:
            await child.stop()
        except BaseException:
            # Cancelled or failed while stopping it: never leave it running.
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            raise


def worker_argv(role: str, job: EchoJob | PublishJob | SubscribeJob | SmsJob) -> list[str]:
    """Command line of a worker process running ``role`` on ``job``."""
    return [sys.executable, "-m", "simulator.bench", "worker", role, json.dumps(asdict(job))]


# --------------------------------------------------------------------------------------- broker and database


@dataclass(frozen=True, slots=True)
class Broker:
    """The benchmark's own Mosquitto."""

    host: str
    port: int
    config_path: Path
    log_path: Path

    @property
    def url(self) -> str:
        """``mqtt://`` URL of the listener."""
        return f"mqtt://{self.host}:{self.port}"

    def endpoint(self) -> MqttEndpoint:
        """The listener as an MQTT 5 endpoint."""
        return MqttEndpoint(host=self.host, port=self.port)


def _hand_over_to_broker_user(*paths: Path) -> None:
    # Started as root, Mosquitto drops to the "mosquitto" user before it writes its log and database.
    if os.geteuid() != 0:
        return
    try:
        user = pwd.getpwnam("mosquitto")
    except KeyError:
        return
    for path in paths:
        os.chown(path, user.pw_uid, user.pw_gid)


async def _wait_for_port(host: str, port: int, process: ChildProcess, timeout_s: float) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                if process.process.returncode is not None:
                    raise BenchError(f"mosquitto exited with {process.process.returncode}:\n{process.log_tail()}")
                try:
                    _, writer = await asyncio.open_connection(host, port)
                except OSError:
                    await asyncio.sleep(0.02)
                    continue
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return
    except TimeoutError as err:
        raise BenchError(f"mosquitto did not listen on {host}:{port} within {timeout_s:g} s") from err


def _prepare_broker(config: Path, workdir: Path, port: int) -> Broker:
    """Write the rewritten configuration, a data directory and a log file the broker's user may write."""
    # The broker may drop to its own user (when started as root) and must reach its files.
    workdir.chmod(0o755)
    data_dir = workdir / "mosquitto-data"
    data_dir.mkdir()
    log_path = workdir / "mosquitto.log"
    log_path.touch()
    _hand_over_to_broker_user(data_dir, log_path)
    config_path = workdir / "mosquitto.conf"
    config_path.write_text(
        rewrite_broker_config(config.read_text(), host=LOOPBACK, port=port, persistence_dir=data_dir, log_file=log_path)
    )
    return Broker(host=LOOPBACK, port=port, config_path=config_path, log_path=log_path)


@contextlib.asynccontextmanager
async def bench_broker(mosquitto: str, config: Path, workdir: Path) -> AsyncIterator[Broker]:
    """Run Mosquitto with the shipped configuration on a free loopback port until the block ends."""
    broker = _prepare_broker(config, workdir, free_tcp_port(LOOPBACK))
    argv = [mosquitto, "-c", str(broker.config_path)]
    async with child_process("mosquitto", argv, log_path=workdir / "mosquitto.out", cwd=workdir) as process:
        await _wait_for_port(broker.host, broker.port, process, timeout_s=10)
        _LOGGER.info("mosquitto listening on %s:%d with %s", broker.host, broker.port, config)
        yield broker


async def _admin_execute(admin_dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await conn.execute(sql, timeout=60)
    finally:
        await conn.close(timeout=5)


@contextlib.asynccontextmanager
async def bench_database(admin_dsn: str) -> AsyncIterator[str]:
    """Create a fresh database ``gg_bench_<random>`` on the server of ``admin_dsn``; drop it at the end."""
    name = f"gg_bench_{secrets.token_hex(4)}"
    await _admin_execute(admin_dsn, f'CREATE DATABASE "{name}"')
    _LOGGER.info("created database %s", name)
    try:
        yield with_database(admin_dsn, name)
    finally:
        await _admin_execute(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        _LOGGER.info("dropped database %s", name)


# --------------------------------------------------------------------------------------- machine


@dataclass(frozen=True, slots=True)
class MachineInfo:
    """What the figures were measured on."""

    cpu_model: str
    cores: int
    memory_gib: float
    kernel: str
    python: str
    mosquitto: str
    postgresql: str
    timescaledb: str
    clients: dict[str, str]
    load_before: tuple[float, float, float]
    code: str


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return 0.0


def package_version(distribution: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def client_available(client: str) -> bool:
    """Whether the MQTT client library ``client`` (gmqtt, paho, aiomqtt) can be imported here."""
    try:
        return importlib.util.find_spec(_CLIENT_MODULES[client]) is not None
    except ModuleNotFoundError:
        return False


@dataclass(frozen=True, slots=True)
class CpuSample:
    """Cumulative CPU seconds: the whole machine (busy and stolen by the hypervisor) and this process tree."""

    busy_s: float
    steal_s: float
    own_s: float

    @classmethod
    def now(cls) -> CpuSample:
        """Read ``/proc/stat`` and this process's and its reaped children's usage."""
        busy = steal = 0.0
        with contextlib.suppress(OSError, ValueError, IndexError):
            # cpu user nice system idle iowait irq softirq steal ...
            values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
            tick = os.sysconf("SC_CLK_TCK")
            busy = (values[0] + values[1] + values[2] + values[5] + values[6]) / tick
            steal = values[7] / tick
        me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(busy, steal, me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime)


@dataclass(frozen=True, slots=True)
class CpuUse:
    """Where the machine's CPU went during the run, in core-seconds."""

    available_s: float
    busy_s: float
    steal_s: float
    own_s: float

    @property
    def others_s(self) -> float:
        """PostgreSQL (which the benchmark drives but does not own) and everything else on the machine."""
        return max(self.busy_s - self.own_s, 0.0)


async def _output(*argv: str, cwd: Path | None = None) -> str | None:
    """Stdout of a short command, or None if it fails or takes more than 5 s."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
    except OSError:
        return None
    try:
        out, _ = await asyncio.wait_for(process.communicate(), 5)
    except TimeoutError:
        process.kill()
        await asyncio.wait_for(process.wait(), 5)
        return None
    return out.decode(errors="replace") if process.returncode == 0 else None


async def code_version() -> str:
    """The commit measured, and whether the working tree differed from it (read-only git queries)."""
    commit = await _output("git", "rev-parse", "--short", "HEAD", cwd=PROJECT_ROOT)
    if commit is None:
        return "unknown (not a git checkout)"
    status = await _output("git", "status", "--porcelain", "--untracked-files=no", cwd=PROJECT_ROOT) or ""
    changed = len(status.splitlines())
    suffix = f", with uncommitted changes to {changed} tracked file(s)" if changed else ""
    return f"commit {commit.strip()}{suffix}"


async def _mosquitto_version(mosquitto: str) -> str:
    process = await asyncio.create_subprocess_exec(
        mosquitto, "-h", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), 5)
    except TimeoutError:
        process.kill()
        await asyncio.wait_for(process.wait(), 5)
        return "unknown"
    first = out.decode(errors="replace").splitlines()[:1]
    return first[0].removeprefix("mosquitto version ").strip() if first else "unknown"


async def machine_info(conn: asyncpg.Connection, mosquitto: str) -> MachineInfo:
    """Collect the machine, the software versions and the load before the run."""
    server_version: str = await conn.fetchval("SHOW server_version")
    available: str | None = await conn.fetchval(
        "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'"
    )
    installed: str | None = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    if installed:
        timescale = f"yes, {installed} (telemetry is a hypertable)"
    elif available:
        timescale = f"available ({available}) but not installed"
    else:
        timescale = "no (plain PostgreSQL tables with B-tree and BRIN indexes)"
    return MachineInfo(
        cpu_model=_cpu_model(),
        cores=os.cpu_count() or 0,
        memory_gib=_memory_gib(),
        kernel=platform.release(),
        python=platform.python_version(),
        mosquitto=await _mosquitto_version(mosquitto),
        postgresql=server_version,
        timescaledb=timescale,
        clients={name: package_version(dist) or "not installed" for name, dist in _CLIENT_PACKAGES.items()},
        load_before=os.getloadavg(),
        code=await code_version(),
    )


# --------------------------------------------------------------------------------------- worker jobs


@dataclass(frozen=True, slots=True)
class EchoJob:
    """An echo client: answers every message on ``ping`` with the same payload on ``pong``."""

    url: str
    ping: str
    pong: str
    client_id: str
    deadline_s: float


@dataclass(frozen=True, slots=True)
class PublishJob:
    """A telemetry publisher: ``rounds`` messages per device, as fast as the broker acknowledges them."""

    url: str
    root: str
    devices_file: str
    rounds: int
    client_id: str
    ts_start: float
    deadline_s: float


@dataclass(frozen=True, slots=True)
class SubscribeJob:
    """A bare subscriber of one client library that counts what arrives."""

    client: str
    url: str
    topic_filter: str
    probe_topic: str
    expected: int
    receive_maximum: int
    idle_s: float
    client_id: str
    deadline_s: float


@dataclass(frozen=True, slots=True)
class SmsJob:
    """The SMS provider sandbox on a loopback port."""

    port: int
    key_id: str
    key_secret: str
    sign_name: str
    deadline_s: float


# --------------------------------------------------------------------------------------- 1. round trip


@dataclass(frozen=True, slots=True)
class RoundTripResult:
    """Bare broker round trips: publish QoS 1, another process answers, the answer arrives."""

    latency: LatencyStats
    payload_bytes: int


@dataclass(frozen=True, slots=True)
class _Run:
    """What every stage needs: the broker, the database and a scratch directory."""

    broker: Broker
    dsn: str
    workdir: Path

    def log(self, name: str) -> Path:
        """Log file of one process of this run."""
        return self.workdir / f"{name}.log"


async def bench_round_trip(run: _Run, *, count: int, warmup: int, gap_s: float = 0.0) -> RoundTripResult:
    """Measure ``count`` sequential QoS 1 round trips through the broker to an echo process and back.

    Back to back by default; with ``gap_s``, paced like a measurement that pauses between its samples (a
    pause lets the processes and the virtual CPUs fall idle, and waking them costs time a tight loop
    never pays).
    """
    root = f"bench-rt-{secrets.token_hex(3)}"
    ping, pong = f"{root}/ping", f"{root}/pong"
    job = EchoJob(url=run.broker.url, ping=ping, pong=pong, client_id=f"{root}-echo", deadline_s=300)
    loop = asyncio.get_running_loop()
    pending: dict[bytes, asyncio.Future[float]] = {}

    async def on_pong(topic: str, payload: bytes) -> None:
        arrived = time.perf_counter()
        future = pending.pop(payload, None)
        if future is not None and not future.done():
            future.set_result(arrived)

    argv = worker_argv("echo", job)
    async with child_process(
        "echo", argv, log_path=run.log("echo"), cwd=run.workdir, env=child_env({}), pipes=True
    ) as echo:
        await echo.read_message(_READY, timeout_s=30)
        session = MqttSession(
            run.broker.endpoint(), client_id=f"{root}-ping", subscriptions=[(pong, 1)], handler=on_pong
        )
        samples: list[float] = []
        async with session:
            for i in range(warmup + count):
                key = b"%010d" % i
                future: asyncio.Future[float] = loop.create_future()
                pending[key] = future
                sent = time.perf_counter()
                session.publish(ping, key, qos=1)
                try:
                    arrived = await asyncio.wait_for(future, 5)
                except TimeoutError as err:
                    raise BenchError(f"round trip {i} got no answer within 5 s") from err
                if i >= warmup:
                    samples.append(arrived - sent)
                if gap_s:
                    await asyncio.sleep(gap_s)
    result = RoundTripResult(latency=LatencyStats.of(samples), payload_bytes=10)
    _LOGGER.info(
        "bare round trip%s: p50 %s, p99 %s, max %s",
        f" ({gap_s * 1000:g} ms apart)" if gap_s else "",
        format_ms(result.latency.p50),
        format_ms(result.latency.p99),
        format_ms(result.latency.maximum),
    )
    return result


# --------------------------------------------------------------------------------------- 2. receive rate


@dataclass(frozen=True, slots=True)
class ReceiveResult:
    """How fast one subscriber of one client library took QoS 1 messages from live publishers."""

    client: str
    version: str
    sent: int
    acked: int
    received: int
    distinct: int
    rate: float
    first_to_last_s: float
    publish_rate: float
    lag_after_publishers_s: float
    payload_bytes: float
    #: Rate while the publishers were still sending, and after they had finished (draining the queue).
    rate_while_publishing: float | None = None
    rate_after_publishers: float | None = None
    error: str | None = None

    @property
    def complete(self) -> bool:
        """Every message sent arrived exactly once."""
        return self.error is None and self.received == self.sent == self.distinct


@dataclass(frozen=True, slots=True)
class _Published:
    sent: int
    acked: int
    started_at: float
    done_at: float
    payload_bytes: float


def _split_devices(workdir: Path, name: str, devices: Sequence[str], parts: int) -> list[Path]:
    """Write ``parts`` disjoint slices of ``devices`` to JSON files, one per publisher."""
    paths = []
    for index in range(parts):
        path = workdir / f"{name}-{index}-devices.json"
        path.write_text(json.dumps(list(devices[index::parts])))
        paths.append(path)
    return paths


async def _publish_all(
    run: _Run,
    stack: contextlib.AsyncExitStack,
    *,
    name: str,
    root: str,
    devices: Sequence[str],
    rounds: int,
    publishers: int,
) -> list[ChildProcess]:
    """Start ``publishers`` telemetry publishers over disjoint slices of ``devices``; wait until all are ready."""
    ts_start = (utcnow() - timedelta(seconds=rounds + 60)).replace(microsecond=0).timestamp()
    workers: list[ChildProcess] = []
    for index, devices_file in enumerate(_split_devices(run.workdir, name, devices, publishers)):
        job = PublishJob(
            url=run.broker.url,
            root=root,
            devices_file=str(devices_file),
            rounds=rounds,
            client_id=f"{root}-pub-{index}",
            ts_start=ts_start,
            deadline_s=300,
        )
        worker = await stack.enter_async_context(
            child_process(
                f"{name}-publisher-{index}",
                worker_argv("publish", job),
                log_path=run.log(f"{name}-publisher-{index}"),
                cwd=run.workdir,
                env=child_env({}),
                pipes=True,
            )
        )
        workers.append(worker)
    for worker in workers:
        await worker.read_message(_READY, timeout_s=120)
    return workers


async def _collect_publishers(workers: Sequence[ChildProcess], timeout_s: float) -> _Published:
    results = [await worker.read_message(_RESULT, timeout_s=timeout_s) for worker in workers]
    sent = sum(int(r["sent"]) for r in results)
    return _Published(
        sent=sent,
        acked=sum(int(r["acked"]) for r in results),
        started_at=min(float(r["started_at"]) for r in results),
        done_at=max(float(r["done_at"]) for r in results),
        payload_bytes=sum(float(r["payload_bytes"]) * int(r["sent"]) for r in results) / sent if sent else 0.0,
    )


def ingest_receive_maximum() -> int:
    """Ingest's default MQTT 5 Receive Maximum; the bare subscribers announce the same window."""
    from ingest.settings import IngestSettings

    return int(IngestSettings.model_fields["receive_maximum"].default)


def split_rates(points: Sequence[tuple[float, int]], split_at: float) -> tuple[float | None, float | None]:
    """Rates before and after ``split_at`` from (time, count so far) points; None where too few points."""
    before = [(at, count) for at, count in points if at <= split_at]
    after = [(at, count) for at, count in points if at > split_at]

    def rate(points: Sequence[tuple[float, int]]) -> float | None:
        if len(points) < 2 or points[-1][0] <= points[0][0]:
            return None
        return (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])

    return rate(before), rate(after)


async def bench_receive(
    run: _Run, *, client: str, devices: Sequence[str], rounds: int, publishers: int
) -> ReceiveResult:
    """Measure one bare subscriber of ``client`` taking ``rounds * len(devices)`` telemetry messages."""
    version = package_version(_CLIENT_PACKAGES[client]) or "not installed"
    expected = rounds * len(devices)
    if not client_available(client):
        return ReceiveResult(client, version, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, error="not installed")
    root = f"bench-rx-{client}-{secrets.token_hex(3)}"
    job = SubscribeJob(
        client=client,
        url=run.broker.url,
        topic_filter=Topics(root).everything(),
        probe_topic=f"{root}/bench/probe",
        expected=expected,
        receive_maximum=ingest_receive_maximum(),
        idle_s=5.0,
        client_id=f"{root}-sub",
        deadline_s=240,
    )
    async with contextlib.AsyncExitStack() as stack:
        subscriber = await stack.enter_async_context(
            child_process(
                f"subscriber-{client}",
                worker_argv("subscribe", job),
                log_path=run.log(f"subscriber-{client}"),
                cwd=run.workdir,
                env=child_env({}),
                pipes=True,
            )
        )
        await subscriber.read_message(_READY, timeout_s=30)
        workers = await _publish_all(
            run, stack, name=f"rx-{client}", root=root, devices=devices, rounds=rounds, publishers=publishers
        )
        for worker in workers:
            worker.send(_GO)
        published = await _collect_publishers(workers, timeout_s=240)
        outcome = await subscriber.read_message(_RESULT, timeout_s=240)
    received = int(outcome["received"])
    first_at = float(outcome["first_at"])
    span = float(outcome["last_at"]) - first_at
    marks = [(float(at), int(count)) for at, count in outcome["marks"]]
    during, after = split_rates([(first_at, 1), *marks], published.done_at)
    result = ReceiveResult(
        client=client,
        version=version,
        sent=published.sent,
        acked=published.acked,
        received=received,
        distinct=int(outcome["distinct"]),
        rate=per_second(received - 1, span),
        first_to_last_s=span,
        publish_rate=per_second(published.sent, published.done_at - published.started_at),
        lag_after_publishers_s=float(outcome["last_at"]) - published.done_at,
        payload_bytes=published.payload_bytes,
        rate_while_publishing=during,
        rate_after_publishers=after,
    )
    _LOGGER.info(
        "%s receive: %d/%d messages, %s (publishers %s)",
        client,
        result.received,
        result.sent,
        format_rate(result.rate),
        format_rate(result.publish_rate),
    )
    return result


# --------------------------------------------------------------------------------------- 3. alarms


@dataclass(frozen=True, slots=True)
class BenchHousehold:
    """A seeded NG household whose alarm closes its valve."""

    household_id: int
    alarm_id: str
    valve_id: str


@dataclass(frozen=True, slots=True)
class BurstResult:
    """Alarms published all at once on different households."""

    alarms: int
    to_command: LatencyStats
    to_recorded: LatencyStats


@dataclass(frozen=True, slots=True)
class SmsResult:
    """Resident texts the SMS sandbox received for the alarms."""

    expected: int
    received: int
    said_closed: int
    #: Texts that did not say the valve is closed although it had reported closed at once.
    not_closed_one_at_a_time: int
    not_closed_burst: int
    #: Alerting's ``resident_sms_hold_s``: how long a resident's text waits for the closed report.
    hold_s: float
    drain_s: float
    #: Alarm received by alerting -> text accepted by the provider, for the one-at-a-time alarms and the burst.
    alarm_to_sms: LatencyStats | None
    burst_alarm_to_sms: LatencyStats | None


@dataclass(frozen=True, slots=True)
class AlarmLegs:
    """Where an alarm's time goes, from alerting's stored timestamps and the driver's wall clock.

    ``in_alerting`` and ``closed_in_alerting`` use alerting's clock only; the others compare it with the
    driver's (one system clock, so comparable to a few microseconds).
    """

    to_alerting: LatencyStats
    in_alerting: LatencyStats
    to_valve: LatencyStats
    closed_in_alerting: LatencyStats
    closed_to_recorded: LatencyStats


def _alarm_legs(
    rows: Sequence[asyncpg.Record],
    households: Sequence[BenchHousehold],
    sent: Mapping[int, datetime],
    commanded: Mapping[str, datetime],
    recorded: Mapping[int, datetime],
) -> AlarmLegs:
    by_household = {r["household_id"]: r for r in rows}
    legs: dict[str, list[float]] = {name: [] for name in AlarmLegs.__dataclass_fields__}
    for household in households:
        row = by_household.get(household.household_id)
        if row is None or row["command_sent_at"] is None or row["valve_closed_at"] is None:
            continue
        received, issued, closed = row["alarm_received_at"], row["command_sent_at"], row["valve_closed_at"]
        legs["to_alerting"].append((received - sent[household.household_id]).total_seconds())
        legs["in_alerting"].append((issued - received).total_seconds())
        legs["to_valve"].append((commanded[household.valve_id] - issued).total_seconds())
        legs["closed_in_alerting"].append((closed - received).total_seconds())
        legs["closed_to_recorded"].append((recorded[household.household_id] - closed).total_seconds())
    return AlarmLegs(**{name: LatencyStats.of(samples) for name, samples in legs.items()})


@dataclass(frozen=True, slots=True)
class AlarmResult:
    """Alarm -> close command -> valve closed recorded, one alarm at a time."""

    alarms: int
    warmup: int
    gap_s: float
    to_command: LatencyStats
    to_recorded: LatencyStats
    legs: AlarmLegs
    poll_query: LatencyStats
    incidents: int
    closed_recorded: int
    not_closed_incidents: int
    resends: int
    repeated_commands: int
    dead_letters: int
    burst: BurstResult | None
    sms: SmsResult


class _ValvePlayer:
    """Plays the alarmed households' valves: acknowledges ``close`` and reports closed at once."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.session: MqttSession | None = None
        self.command_at: dict[str, float] = {}
        #: Wall-clock arrival of each valve's first command, to compare with alerting's own timestamps.
        self.command_wall: dict[str, datetime] = {}
        self.commands = 0
        self.repeats = 0
        self._waiters: dict[str, asyncio.Future[float]] = {}
        self._seq = itertools.count(1)

    def expect(self, valve_id: str) -> asyncio.Future[float]:
        """A future resolved with the ``perf_counter`` time the valve's first command arrives."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters[valve_id] = future
        return future

    async def handle(self, topic: str, payload: bytes) -> None:
        """MQTT handler for ``+/cmd``."""
        arrived = time.perf_counter()
        try:
            parsed = self.topics.parse(topic)
        except TopicError:
            return
        if parsed.channel is not Channel.COMMAND:
            return
        command = Command.model_validate_json(payload)
        valve_id = parsed.device_id
        self.commands += 1
        first = valve_id not in self.command_at
        if first:
            self.command_at[valve_id] = arrived
            self.command_wall[valve_id] = utcnow()
            waiter = self._waiters.pop(valve_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(arrived)
        else:
            self.repeats += 1
        self._answer(valve_id, command.cmd_id, report_motion=first)

    def _answer(self, valve_id: str, cmd_id: uuid.UUID, *, report_motion: bool) -> None:
        session = self.session
        if session is None:
            return
        now = utcnow()
        session.publish(
            self.topics.device(valve_id, Channel.COMMAND_ACK), encode(CommandAck(cmd_id=cmd_id, ts=now, accepted=True))
        )
        if report_motion:
            for position in (ValvePosition.CLOSING, ValvePosition.CLOSED):
                event = ValveEvent(seq=next(self._seq), ts=utcnow(), position=position, cmd_id=cmd_id)
                session.publish(self.topics.device(valve_id, Channel.EVENT), encode(event))
        result = CommandResult(cmd_id=cmd_id, ts=utcnow(), ok=True, position=ValvePosition.CLOSED)
        session.publish(self.topics.device(valve_id, Channel.COMMAND_RESULT), encode(result))


class _ClosedPoller:
    """Polls the incident table for a recorded valve closing, every `POLL_INTERVAL_S`."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self._statement: asyncpg.prepared_stmt.PreparedStatement | None = None
        self.query_s: list[float] = []
        #: Wall-clock time each household's closing was first seen.
        self.closed_wall: dict[int, datetime] = {}

    async def wait_closed(self, household_id: int, timeout_s: float) -> float:
        """The ``perf_counter`` time a poll first saw ``valve_closed_at`` set for the household's incident."""
        if self._statement is None:
            self._statement = await self._conn.prepare(
                "SELECT valve_closed_at IS NOT NULL FROM incident"
                " WHERE household_id = $1 AND kind = 'gas_alarm' AND state <> 'CLOSED'"
            )
        statement = self._statement
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    asked = time.perf_counter()
                    closed = await statement.fetchval(household_id)
                    answered = time.perf_counter()
                    self.query_s.append(answered - asked)
                    if closed:
                        self.closed_wall[household_id] = utcnow()
                        return answered
                    await asyncio.sleep(POLL_INTERVAL_S)
        except TimeoutError as err:
            raise BenchError(f"household {household_id}: valve closing not recorded within {timeout_s:g} s") from err

    async def wait_all_closed(self, household_ids: Sequence[int], timeout_s: float) -> dict[int, float]:
        """Like `wait_closed` for many households at once; returns when each was first seen closed."""
        statement = await self._conn.prepare(
            "SELECT household_id FROM incident WHERE kind = 'gas_alarm' AND state <> 'CLOSED'"
            " AND valve_closed_at IS NOT NULL AND household_id = ANY($1::bigint[])"
        )
        seen: dict[int, float] = {}
        remaining = set(household_ids)
        try:
            async with asyncio.timeout(timeout_s):
                while remaining:
                    rows = await statement.fetch(list(remaining))
                    answered = time.perf_counter()
                    for row in rows:
                        seen[row[0]] = answered
                        remaining.discard(row[0])
                    if remaining:
                        await asyncio.sleep(POLL_INTERVAL_S)
        except TimeoutError as err:
            raise BenchError(f"{len(remaining)} burst valve closings not recorded within {timeout_s:g} s") from err
        return seen


async def _seeded_households(conn: asyncpg.Connection, count: int) -> list[BenchHousehold]:
    rows = await conn.fetch(
        "SELECT d.household_id, l.alarm_id, l.valve_id FROM alarm_valve_link l"
        " JOIN device d ON d.id = l.alarm_id ORDER BY l.alarm_id LIMIT $1",
        count,
    )
    if len(rows) < count:
        raise BenchError(f"the seeded county has {len(rows)} alarm-valve links, {count} needed")
    return [BenchHousehold(r["household_id"], r["alarm_id"], r["valve_id"]) for r in rows]


async def _sms_count(http: httpx.AsyncClient) -> int:
    response = await http.get("/_bench/count")
    response.raise_for_status()
    return int(response.json()["received"])


async def _wait_sms(http: httpx.AsyncClient, expected: int, timeout_s: float) -> tuple[int, float]:
    """Poll the sandbox until it holds ``expected`` texts; returns the count and when it got there."""
    received = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while True:
                received = await _sms_count(http)
                if received >= expected:
                    break
                await asyncio.sleep(0.02)
    return received, time.perf_counter()


@dataclass(frozen=True, slots=True)
class _Text:
    """One resident text as the provider received it."""

    latency_s: float
    said_closed: bool


async def _resident_texts(
    conn: asyncpg.Connection, messages: Sequence[Mapping[str, Any]], closed_text: str
) -> dict[int, _Text]:
    """Per household: alarm received by alerting -> text accepted by the provider (wall clocks), and its wording."""
    accepted: dict[int, tuple[datetime, bool]] = {}
    for message in messages:
        # Alerting sends each job with OutId gg-<outbox id>-<attempt>.
        parts = str(message.get("out_id", "")).split("-")
        if len(parts) == 3 and parts[0] == "gg" and parts[1].isdigit():
            said_closed = message.get("params", {}).get("valve") == closed_text
            accepted[int(parts[1])] = (datetime.fromisoformat(str(message["received_at"])), said_closed)
    rows = await conn.fetch(
        "SELECT o.id, i.household_id, i.alarm_received_at FROM notification_outbox o"
        " JOIN incident i ON i.id = o.incident_id WHERE o.id = ANY($1::bigint[]) AND o.recipient_role = 'resident'",
        list(accepted),
    )
    return {
        r["household_id"]: _Text(
            latency_s=(accepted[r["id"]][0] - r["alarm_received_at"]).total_seconds(),
            said_closed=accepted[r["id"]][1],
        )
        for r in rows
    }


async def bench_alarms(
    run: _Run, households: Sequence[BenchHousehold], *, alarms: int, warmup: int, burst: int, gap_s: float
) -> AlarmResult:
    """Alarm -> close -> recorded against ``python -m alerting``, one household per alarm."""
    from alerting.settings import AlertingSettings
    from alerting.templates import VALVE_CLOSED_TEXT

    if len(households) < warmup + alarms + burst:
        raise BenchError("not enough households for the alarm benchmark")
    warm, measured, stormed = (
        households[:warmup],
        households[warmup : warmup + alarms],
        households[warmup + alarms : warmup + alarms + burst],
    )
    root = f"bench-al-{secrets.token_hex(3)}"
    topics = Topics(root)
    sms_port = free_tcp_port(LOOPBACK)
    sign_name = str(AlertingSettings.model_fields["sms_sign_name"].default)
    sms_job = SmsJob(port=sms_port, key_id=_SMS_KEY[0], key_secret=_SMS_KEY[1], sign_name=sign_name, deadline_s=400)
    alerting_env = child_env(
        {
            "GG_DATABASE_URL": run.dsn,
            "GG_MQTT_URL": run.broker.url,
            "GG_TOPIC_ROOT": root,
            "GG_CLIENT_ID": f"{root}-alerting",
            "GG_SMS_ENDPOINT": f"http://{LOOPBACK}:{sms_port}/",
            "GG_SMS_ACCESS_KEY_ID": _SMS_KEY[0],
            "GG_SMS_ACCESS_KEY_SECRET": _SMS_KEY[1],
            "GG_SPOOL_DIR": str(run.workdir / "alerting-spool"),
            "GG_LOG_LEVEL": "INFO",
        }
    )
    player = _ValvePlayer(topics)
    async with contextlib.AsyncExitStack() as stack:
        sms = await stack.enter_async_context(
            child_process(
                "sms-sandbox",
                worker_argv("sms", sms_job),
                log_path=run.log("sms-sandbox"),
                cwd=run.workdir,
                env=child_env({}),
                pipes=True,
            )
        )
        await sms.read_message(_READY, timeout_s=30)
        # As deployed (docker-compose.yml): the engine alone in its process, the database-driven parts beside it.
        notify = await stack.enter_async_context(
            child_process(
                "alerting-notify",
                [sys.executable, "-m", "alerting"],
                log_path=run.log("alerting-notify"),
                cwd=run.workdir,
                env={**alerting_env, "GG_ROLE": "notify"},
            )
        )
        await notify.wait_for_log("alerting ready", timeout_s=60)
        alerting = await stack.enter_async_context(
            child_process(
                "alerting",
                [sys.executable, "-m", "alerting"],
                log_path=run.log("alerting"),
                cwd=run.workdir,
                env={**alerting_env, "GG_ROLE": "engine"},
            )
        )
        await alerting.wait_for_log("alerting ready", timeout_s=60)
        if "alerting ready (standby)" in alerting.log_tail():
            raise BenchError("alerting started as a standby engine; the benchmark needs the active one")
        session = MqttSession(
            run.broker.endpoint(),
            client_id=f"{root}-devices",
            subscriptions=[(topics.all_devices(Channel.COMMAND), 1)],
            handler=player.handle,
        )
        await stack.enter_async_context(session)
        player.session = session
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=f"http://{LOOPBACK}:{sms_port}", timeout=10))
        conn = await connect(run.dsn)
        stack.push_async_callback(conn.close)
        poller = _ClosedPoller(conn)
        seq = itertools.count(1)

        sent_wall: dict[int, datetime] = {}

        async def alarm(household: BenchHousehold, *, attempts: int = 1) -> tuple[float, float]:
            topic = topics.device(household.alarm_id, Channel.EVENT)
            commanded = player.expect(household.valve_id)
            for attempt in range(attempts):
                payload = encode(AlarmEvent(seq=next(seq), ts=utcnow(), state=AlarmState.HIGH_ALARM, lel=_ALARM_LEL))
                sent_wall[household.household_id] = utcnow()
                sent = time.perf_counter()
                session.publish(topic, payload, qos=1)
                try:
                    command_at = await asyncio.wait_for(asyncio.shield(commanded), 10 if attempt == attempts - 1 else 1)
                    break
                except TimeoutError:
                    if attempt == attempts - 1:
                        raise BenchError(f"no close command for {household.valve_id} within 10 s") from None
            recorded_at = await poller.wait_closed(household.household_id, timeout_s=15)
            return command_at - sent, recorded_at - sent

        _LOGGER.info("alarms: %d warm-up, %d measured one at a time, a burst of %d", warmup, alarms, burst)
        for index, household in enumerate(warm):
            # The first alarm may race alerting's SUBSCRIBE; repeating it is harmless (no command storm).
            await alarm(household, attempts=20 if index == 0 else 1)
        poller.query_s.clear()
        to_command: list[float] = []
        to_recorded: list[float] = []
        for household in measured:
            command_s, recorded_s = await alarm(household)
            to_command.append(command_s)
            to_recorded.append(recorded_s)
            await asyncio.sleep(gap_s)
        poll_query = LatencyStats.of(poller.query_s)
        burst_result = await _burst(session, player, poller, topics, stormed, seq) if stormed else None
        alarms_done_at = time.perf_counter()
        expected_sms = len(warm) + len(measured) + len(stormed)
        sms_received, sms_done_at = await _wait_sms(http, expected_sms, timeout_s=120)
        messages_response = await http.get("/_sandbox/messages")
        messages_response.raise_for_status()
        messages: list[dict[str, Any]] = messages_response.json()
        texts = await _resident_texts(conn, messages, VALVE_CLOSED_TEXT)
        server = await conn.fetch(
            "SELECT household_id, alarm_received_at, command_sent_at, valve_closed_at"
            " FROM incident WHERE kind = 'gas_alarm' AND household_id = ANY($1::bigint[])",
            [h.household_id for h in measured],
        )
        counts = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE kind = 'gas_alarm') AS incidents,"
            " count(valve_closed_at) FILTER (WHERE kind = 'gas_alarm') AS closed,"
            " count(*) FILTER (WHERE kind = 'valve_not_closed') AS not_closed FROM incident"
        )
        assert counts is not None
        resends: int = await conn.fetchval("SELECT count(*) FROM valve_command_attempt WHERE attempt > 1")
        dead_letters: int = await conn.fetchval("SELECT count(*) FROM dead_letter")
    result = AlarmResult(
        alarms=len(measured),
        warmup=len(warm),
        gap_s=gap_s,
        to_command=LatencyStats.of(to_command),
        to_recorded=LatencyStats.of(to_recorded),
        legs=_alarm_legs(server, measured, sent_wall, player.command_wall, poller.closed_wall),
        poll_query=poll_query,
        incidents=counts["incidents"],
        closed_recorded=counts["closed"],
        not_closed_incidents=counts["not_closed"],
        resends=resends,
        repeated_commands=player.repeats,
        dead_letters=dead_letters,
        burst=burst_result,
        sms=SmsResult(
            expected=expected_sms,
            received=sms_received,
            said_closed=sum(1 for m in messages if m.get("params", {}).get("valve") == VALVE_CLOSED_TEXT),
            not_closed_one_at_a_time=sum(
                1 for h in measured if h.household_id in texts and not texts[h.household_id].said_closed
            ),
            not_closed_burst=sum(
                1 for h in stormed if h.household_id in texts and not texts[h.household_id].said_closed
            ),
            hold_s=float(AlertingSettings.model_fields["resident_sms_hold_s"].default),
            drain_s=sms_done_at - alarms_done_at,
            alarm_to_sms=_stats_for(texts, measured),
            burst_alarm_to_sms=_stats_for(texts, stormed),
        ),
    )
    _LOGGER.info(
        "alarm -> close p50 %s p99 %s; alarm -> closed recorded p50 %s p99 %s; SMS %d/%d",
        format_ms(result.to_command.p50),
        format_ms(result.to_command.p99),
        format_ms(result.to_recorded.p50),
        format_ms(result.to_recorded.p99),
        result.sms.received,
        result.sms.expected,
    )
    return result


def _stats_for(texts: Mapping[int, _Text], households: Sequence[BenchHousehold]) -> LatencyStats | None:
    samples = [texts[h.household_id].latency_s for h in households if h.household_id in texts]
    return LatencyStats.of(samples) if samples else None


async def _burst(
    session: MqttSession,
    player: _ValvePlayer,
    poller: _ClosedPoller,
    topics: Topics,
    households: Sequence[BenchHousehold],
    seq: Iterator[int],
) -> BurstResult:
    """Publish one alarm per household back to back, then wait for every command and every recorded closing."""
    commanded = {h.household_id: player.expect(h.valve_id) for h in households}
    payloads = [
        encode(AlarmEvent(seq=next(seq), ts=utcnow(), state=AlarmState.HIGH_ALARM, lel=_ALARM_LEL)) for _ in households
    ]
    sent: dict[int, float] = {}
    for household, payload in zip(households, payloads, strict=True):
        sent[household.household_id] = time.perf_counter()
        session.publish(topics.device(household.alarm_id, Channel.EVENT), payload, qos=1)
        await asyncio.sleep(0)  # let answers in as they come, like a real fleet would
    try:
        command_at = dict(zip(commanded, await asyncio.wait_for(asyncio.gather(*commanded.values()), 30), strict=True))
    except TimeoutError as err:
        raise BenchError("burst: not every valve got its close command within 30 s") from err
    recorded_at = await poller.wait_all_closed(list(sent), timeout_s=60)
    return BurstResult(
        alarms=len(households),
        to_command=LatencyStats.of([command_at[h] - sent[h] for h in sent]),
        to_recorded=LatencyStats.of([recorded_at[h] - sent[h] for h in sent]),
    )


# --------------------------------------------------------------------------------------- 4. ingest


@dataclass(frozen=True, slots=True)
class IngestResult:
    """Sustained telemetry into ``python -m ingest`` and on into PostgreSQL."""

    messages: int
    devices: int
    publishers: int
    payload_bytes: float
    publish_rate: float
    #: From the start signal to ingest receiving its first message (its clock) and to the first row committed.
    first_received_after_s: float
    first_row_after_s: float
    commit_span_s: float
    rows_per_s: float
    steady_rows_per_s: float
    end_to_end_rows_per_s: float
    receive_rows_per_s: float
    rows: int
    distinct: int
    dead_letters: int
    events: int
    #: Commit rate while the publishers were still sending, and after their last PUBACK (like section 2's).
    rows_per_s_while_publishing: float | None = None
    rows_per_s_after_publishers: float | None = None

    @property
    def complete(self) -> bool:
        """Every message is a row, exactly once."""
        return self.rows == self.distinct == self.messages


def _time_at(samples: Sequence[tuple[float, int]], rows: float) -> float:
    """First sample time at which the count had reached ``rows``."""
    return _sample_at(samples, rows)[0]


def _sample_at(samples: Sequence[tuple[float, int]], rows: float) -> tuple[float, int]:
    for at, count in samples:
        if count >= rows:
            return at, count
    raise ValueError(f"the count never reached {rows}")


def steady_rate(samples: Sequence[tuple[float, int]]) -> float:
    """Rows per second between the samples at 10 % and 90 % of the final count (start-up and tail cut off)."""
    final = samples[-1][1]
    (low_at, low_count), (high_at, high_count) = _sample_at(samples, 0.1 * final), _sample_at(samples, 0.9 * final)
    return per_second(high_count - low_count, high_at - low_at)


async def bench_ingest(run: _Run, *, devices: Sequence[str], rounds: int, publishers: int) -> IngestResult:
    """Publish ``rounds`` telemetry messages per device as fast as the broker takes them; count rows."""
    expected = rounds * len(devices)
    root = f"bench-in-{secrets.token_hex(3)}"
    env = child_env(
        {
            "GG_DATABASE_URL": run.dsn,
            "GG_MQTT_URL": run.broker.url,
            "GG_TOPIC_ROOT": root,
            "GG_CLIENT_ID": "gasguard-ingest-bench",
            "GG_SPOOL_DIR": str(run.workdir / "ingest-spool"),
            "GG_LOG_LEVEL": "INFO",
        }
    )
    conn = await connect(run.dsn)
    try:
        async with contextlib.AsyncExitStack() as stack:
            ingest = await stack.enter_async_context(
                child_process(
                    "ingest", [sys.executable, "-m", "ingest"], log_path=run.log("ingest"), cwd=run.workdir, env=env
                )
            )
            await ingest.wait_for_log("subscribed to", timeout_s=60)
            await _probe_ingest(run, conn, root)
            workers = await _publish_all(
                run, stack, name="ingest", root=root, devices=devices, rounds=rounds, publishers=publishers
            )
            _LOGGER.info("ingest: %d messages over %d devices from %d publishers", expected, len(devices), publishers)
            go_wall = utcnow()
            go_at = time.monotonic()
            for worker in workers:
                worker.send(_GO)
            samples = await _count_rows(conn, expected, timeout_s=300)
            published = await _collect_publishers(workers, timeout_s=60)
            await asyncio.sleep(1.0)  # anything still arriving now would be a duplicate or a stray
            final = await conn.fetchrow(
                "SELECT count(*) AS rows, count(DISTINCT (device_id, device_ts, seq)) AS distinct_rows,"
                " extract(epoch FROM max(received_at) - min(received_at))::float8 AS receive_span,"
                " min(received_at) AS first_received FROM telemetry"
            )
            assert final is not None
            dead_letters: int = await conn.fetchval(
                "SELECT count(*) FROM dead_letter WHERE starts_with(topic, $1) AND topic <> $2",
                f"{root}/",
                _probe_topic(root),
            )
            events: int = await conn.fetchval("SELECT count(*) FROM device_event")
    finally:
        await conn.close()
    first_at, first_count = next((at, count) for at, count in samples if count > 0)
    last_at = _time_at(samples, samples[-1][1])
    rows = int(final["rows"])
    # From the first row to the last: samples after the count stopped growing would only dilute the rate.
    growing = [(at, count) for at, count in samples if first_at <= at <= last_at]
    while_publishing, after_publishers = split_rates(growing, published.done_at)
    result = IngestResult(
        messages=expected,
        devices=len(devices),
        publishers=publishers,
        payload_bytes=published.payload_bytes,
        publish_rate=per_second(published.sent, published.done_at - published.started_at),
        first_received_after_s=(final["first_received"] - go_wall).total_seconds(),
        first_row_after_s=first_at - go_at,
        commit_span_s=last_at - first_at,
        rows_per_s=per_second(samples[-1][1] - first_count, last_at - first_at),
        steady_rows_per_s=steady_rate(samples),
        rows_per_s_while_publishing=while_publishing,
        rows_per_s_after_publishers=after_publishers,
        end_to_end_rows_per_s=per_second(samples[-1][1], last_at - go_at),
        receive_rows_per_s=per_second(rows - 1, float(final["receive_span"] or 0.0)),
        rows=rows,
        distinct=int(final["distinct_rows"]),
        dead_letters=dead_letters,
        events=events,
    )
    _LOGGER.info(
        "ingest: %d/%d rows, %s (publishers %s)",
        result.rows,
        result.messages,
        format_rate(result.rows_per_s),
        format_rate(result.publish_rate),
    )
    return result


def _probe_topic(root: str) -> str:
    """A topic under ``root`` that is not part of the protocol, so ingest dead-letters what arrives on it."""
    return f"{root}/bench/probe"


async def _probe_ingest(run: _Run, conn: asyncpg.Connection, root: str) -> None:
    """Publish to a topic outside the protocol until ingest dead-letters it: its subscription is live."""
    session = MqttSession(run.broker.endpoint(), client_id=f"{root}-probe")
    async with session:
        try:
            async with asyncio.timeout(30):
                while not await conn.fetchval("SELECT count(*) FROM dead_letter WHERE topic = $1", _probe_topic(root)):
                    session.publish(_probe_topic(root), b"probe", qos=1)
                    await asyncio.sleep(0.5)
        except TimeoutError as err:
            raise BenchError("ingest did not take a probe message within 30 s") from err


async def _count_rows(conn: asyncpg.Connection, expected: int, *, timeout_s: float) -> list[tuple[float, int]]:
    """Sample ``count(*)`` of telemetry every `COUNT_INTERVAL_S` until it reaches ``expected`` or stalls for 20 s."""
    samples: list[tuple[float, int]] = []
    last_growth = time.monotonic()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while True:
                count: int = await conn.fetchval("SELECT count(*) FROM telemetry")
                now = time.monotonic()
                if not samples or count > samples[-1][1]:
                    last_growth = now
                samples.append((now, count))
                if count >= expected or now - last_growth > 20:
                    break
                await asyncio.sleep(COUNT_INTERVAL_S)
    if not samples or samples[-1][1] == 0:
        raise BenchError("ingest wrote no telemetry rows")
    return samples


# --------------------------------------------------------------------------------------- the whole run


@dataclass(frozen=True, slots=True)
class Options:
    """What to run, and how much of it."""

    round_trips: int = 2000
    receive_rounds: int = 3
    clients: tuple[str, ...] = CLIENTS
    alarms: int = 1000
    alarm_warmup: int = 20
    burst: int = 200
    alarm_gap_s: float = 0.02
    telemetry_devices: int = 20_000
    telemetry_rounds: int = 10
    publishers: int = 2
    admin_dsn: str = DEFAULT_ADMIN_DSN
    mosquitto: str = DEFAULT_MOSQUITTO
    broker_config: Path = DEFAULT_BROKER_CONFIG
    output: Path | None = DEFAULT_OUTPUT
    logs_dir: Path | None = None
    deadline_s: float = 570.0


@dataclass(frozen=True, slots=True)
class LogFindings:
    """Warnings and errors a process logged during the run, and separately while stopping."""

    process: str
    during_run: tuple[str, ...]
    at_shutdown: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BenchReport:
    """Everything one run measured."""

    started: datetime
    duration_s: float
    cpu: CpuUse
    machine: MachineInfo
    load_after: tuple[float, float, float]
    households: int
    round_trip: RoundTripResult
    receive: tuple[ReceiveResult, ...]
    alarms: AlarmResult
    ingest: IngestResult
    findings: tuple[LogFindings, ...]


_ANOMALY_MARKERS = (" WARNING ", " ERROR ", " CRITICAL ", "Traceback", "Warning:", "Error:")


def scan_log(text: str) -> list[str]:
    """Lines of a log that report a warning or an error."""
    return [line.strip() for line in text.splitlines() if any(marker in line for marker in _ANOMALY_MARKERS)]


def log_findings(process: str, text: str) -> LogFindings:
    """Warnings and errors in one process's log, split at the driver's stop marker."""
    during, _, after = text.partition(STOP_MARKER)
    return LogFindings(process, tuple(scan_log(during)), tuple(scan_log(after)))


def _keep_logs(workdir: Path, destination: Path) -> None:
    """Copy the run's logs and broker configuration out of the scratch directory before it goes."""
    destination.mkdir(parents=True, exist_ok=True)
    for path in [*workdir.glob("*.log"), workdir / "mosquitto.conf"]:
        with contextlib.suppress(OSError):
            shutil.copy(path, destination / path.name)
    _LOGGER.info("logs kept in %s", destination)


def _all_findings(workdir: Path) -> tuple[LogFindings, ...]:
    """Findings of every log in the run's directory that has any (services first)."""
    first = ("alerting", "ingest", "mosquitto")
    paths = sorted(workdir.glob("*.log"), key=lambda p: (first.index(p.stem) if p.stem in first else 9, p.stem))
    findings = (log_findings(path.stem, path.read_text(errors="replace")) for path in paths)
    return tuple(f for f in findings if f.during_run or f.at_shutdown)


async def run_benchmarks(options: Options) -> BenchReport:
    """Run every benchmark once against a private broker and database; returns the figures."""
    from registry.demo_county import MODEL_NG_ALARM, MODEL_NG_SHUTOFF_VALVE, seed_demo_county

    started = utcnow()
    clock = time.monotonic()
    cpu_before = CpuSample.now()
    alarm_households = options.alarm_warmup + options.alarms + options.burst
    # 10 % of the demo county is LPG, with nothing networked; NG households have an alarm and a valve.
    ng_needed = max(alarm_households, math.ceil(options.telemetry_devices / 2))
    households = math.ceil(ng_needed / 0.9) + 10
    with tempfile.TemporaryDirectory(prefix="gg-bench-") as tmp:
        workdir = Path(tmp)
        try:
            async with (
                bench_database(options.admin_dsn) as dsn,
                bench_broker(options.mosquitto, options.broker_config, workdir) as broker,
            ):
                await migrate(dsn)
                conn = await connect(dsn)
                try:
                    machine = await machine_info(conn, options.mosquitto)
                    county = await seed_demo_county(conn, households=households, seed=0)
                    bench_households = await _seeded_households(conn, alarm_households)
                    devices: list[str] = [
                        r["id"]
                        for r in await conn.fetch(
                            "SELECT id FROM device WHERE model_id = ANY($1::text[]) ORDER BY id LIMIT $2",
                            [MODEL_NG_ALARM, MODEL_NG_SHUTOFF_VALVE],
                            options.telemetry_devices,
                        )
                    ]
                finally:
                    await conn.close()
                _LOGGER.info("seeded %d households (%d NG) in %s", county.households, county.ng_households, dsn)
                run = _Run(broker=broker, dsn=dsn, workdir=workdir)
                round_trip = await bench_round_trip(run, count=options.round_trips, warmup=100)
                receive = tuple(
                    [
                        await bench_receive(
                            run,
                            client=client,
                            devices=devices,
                            rounds=options.receive_rounds,
                            publishers=options.publishers,
                        )
                        for client in options.clients
                    ]
                )
                alarms = await bench_alarms(
                    run,
                    bench_households,
                    alarms=options.alarms,
                    warmup=options.alarm_warmup,
                    burst=options.burst,
                    gap_s=options.alarm_gap_s,
                )
                ingest = await bench_ingest(
                    run, devices=devices, rounds=options.telemetry_rounds, publishers=options.publishers
                )
        finally:
            if options.logs_dir is not None:
                _keep_logs(workdir, options.logs_dir)
        findings = _all_findings(workdir)
    duration_s = time.monotonic() - clock
    cpu_after = CpuSample.now()
    cpu = CpuUse(
        available_s=duration_s * (os.cpu_count() or 1),
        busy_s=cpu_after.busy_s - cpu_before.busy_s,
        steal_s=cpu_after.steal_s - cpu_before.steal_s,
        own_s=cpu_after.own_s - cpu_before.own_s,
    )
    return BenchReport(
        started=started,
        duration_s=duration_s,
        cpu=cpu,
        machine=machine,
        load_after=os.getloadavg(),
        households=county.households,
        round_trip=round_trip,
        receive=receive,
        alarms=alarms,
        ingest=ingest,
        findings=findings,
    )


# --------------------------------------------------------------------------------------- report


def _stats_row(label: str, stats: LatencyStats) -> list[str]:
    return [
        label,
        f"{stats.count:,}",
        format_ms(stats.p50),
        format_ms(stats.p90),
        format_ms(stats.p99),
        format_ms(stats.maximum),
    ]


_LATENCY_HEADERS = ("", "samples", "p50", "p90", "p99", "max")


def _gmqtt_receive(report: BenchReport) -> ReceiveResult | None:
    return next((r for r in report.receive if r.client == "gmqtt" and r.error is None), None)


def render_report(report: BenchReport) -> str:
    """``docs/benchmarks.md`` for one run."""
    m = report.machine
    rt = report.round_trip.latency
    al = report.alarms
    ing = report.ingest
    sections: list[str] = []
    sections.append(
        "# GasGuard benchmarks\n\n"
        f"Measured on {report.started:%Y-%m-%d %H:%M} UTC by `python -m simulator.bench` (`make bench`), which writes"
        f" this file whole; the run took {report.duration_s:.0f} s. Re-run it on the target machine to refresh"
        " the figures; they are from one run, not an average of several.\n\n"
        "`make bench` also runs `python -m simulator.bench_ingest` (ingest with 80,000 devices, shared"
        " subscriptions, memory: [benchmarks-ingest.md](benchmarks-ingest.md)) and `python -m simulator.bench_registry`"
        " (roster import and API latency on 40,000 households: [benchmarks-registry.md](benchmarks-registry.md))."
        " Issue 5's alerting benchmarks — alarm → close beside a 10,000 msg/s telemetry load, a 36,000-household"
        " alarm storm drained stage by stage, and alerting's memory with the 80,000-device directory — are"
        " `python -m simulator.bench_alerting`: [benchmarks-alerting.md](benchmarks-alerting.md). The control room's"
        " load times in Chromium on 40,000 households (board and county view) are `python -m simulator.bench_ui`:"
        " [benchmarks-ui.md](benchmarks-ui.md)."
    )
    sections.append(
        "## Machine\n\n"
        + markdown_table(
            ("", ""),
            [
                ("CPU", f"{m.cpu_model}, {m.cores} cores"),
                ("Memory", f"{m.memory_gib:.1f} GiB"),
                ("Kernel", m.kernel),
                ("Python", m.python),
                ("Mosquitto", m.mosquitto),
                ("PostgreSQL", m.postgresql),
                ("TimescaleDB", m.timescaledb),
                ("MQTT clients", ", ".join(f"{k} {v}" for k, v in m.clients.items())),
                ("GasGuard code", m.code),
                (
                    "Load average (1/5/15 min)",
                    f"{_load(m.load_before)} before the run, {_load(report.load_after)} after",
                ),
                ("CPU during the run", _cpu_text(report.cpu)),
            ],
        )
        + _busy_warning(report)
    )
    sections.append(
        "## How it runs\n\n"
        "- **Broker:** its own `mosquitto` on a free loopback port with the shipped `deploy/mosquitto/mosquitto.conf`;"
        " only `listener`, `persistence_location` and `log_dest` are rewritten, so `set_tcp_nodelay true`,"
        " `max_inflight_messages` and `max_queued_messages`/`max_queued_bytes` are as deployed. The shared broker"
        " on port 1883 is not used.\n"
        f"- **Database:** a fresh database `gg_bench_<random>` on the local PostgreSQL, migrated with Alembic and"
        f" seeded with a demo county of {report.households:,} households; dropped at the end.\n"
        "- **Services** run as their own OS processes, as deployed: `python -m alerting` twice (`GG_ROLE=engine`,"
        " the alarm path, and `GG_ROLE=notify`, outbox, receipts and escalation) and `python -m ingest`,"
        " configured through `GG_*` variables. The SMS provider is the local sandbox"
        " (`simulator.sms_platform.SmsPlatform`) in a worker process.\n"
        "- **Load** comes from worker processes (`python -m simulator.bench worker …`) and from the driver, which"
        " plays the devices. Every client is an MQTT 5 client at QoS 1; all traffic is on loopback.\n"
        "- Percentiles are nearest-rank over all samples of a stage; times on one side are `time.perf_counter()`,"
        " across processes `time.monotonic()` (one system-wide clock on Linux)."
    )
    sections.append(
        "## 1. Bare broker round trip (baseline)\n\n"
        f"The driver publishes a {report.round_trip.payload_bytes}-byte QoS 1 message; an echo process (gmqtt"
        " through `gasguard.mqtt.MqttSession`, like the services) answers on another topic; the driver times"
        f" publish → answer received, one at a time, {rt.count:,} times after 100 warm-up trips.\n\n"
        + markdown_table(_LATENCY_HEADERS, [_stats_row("broker round trip (2 hops each way)", rt)])
        + "\n\nThis is the floor for anything that goes device → broker → service → broker → device: the alarm →"
        " close path below cannot be faster."
    )
    sections.append(_receive_section(report))
    sections.append(_alarm_section(report, rt, al))
    sections.append(_ingest_section(report, ing))
    sections.append(_findings_section(report))
    return "\n\n".join(sections) + "\n"


def _cpu_text(cpu: CpuUse) -> str:
    return (
        f"{cpu.busy_s:,.0f} of {cpu.available_s:,.0f} core-seconds busy ({cpu.busy_s / cpu.available_s:.0%});"
        f" the benchmark's own processes (driver, workers, services, broker) {cpu.own_s:,.0f}, PostgreSQL and"
        f" everything else {cpu.others_s:,.0f}; stolen by the hypervisor {cpu.steal_s:,.0f}"
    )


def _busy_warning(report: BenchReport) -> str:
    load = report.machine.load_before[0]
    if load < report.machine.cores / 2:
        return ""
    return (
        f"\n\n**The machine was not idle:** its 1-minute load average was {load:.2f} on {report.machine.cores} cores"
        " when the run started (other sessions' tests and benchmarks share it), so latency tails and rates here are"
        " worse than on a quiet machine. PostgreSQL is shared with that other work."
    )


def _load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


def _optional_rate(rate: float | None) -> str:
    return "—" if rate is None else format_rate(rate)


def _receive_section(report: BenchReport) -> str:
    rows = []
    for r in report.receive:
        if r.error is not None:
            rows.append([r.client, r.version, "—", "—", "—", "—", "—", "—", "—", f"not measured: {r.error}"])
            continue
        rows.append(
            [
                r.client,
                r.version,
                f"{r.sent:,}",
                f"{r.received:,} ({r.distinct:,} distinct)",
                "yes" if r.complete else "**no**",
                f"**{format_rate(r.rate)}**",
                _optional_rate(r.rate_while_publishing),
                _optional_rate(r.rate_after_publishers),
                format_rate(r.publish_rate),
                f"{r.lag_after_publishers_s:+.1f} s",
            ]
        )
    payload = next((r.payload_bytes for r in report.receive if r.error is None), 0.0)
    return (
        "## 2. Bare MQTT receive rate per client (baseline)\n\n"
        f"One subscriber process per client library subscribes to `<root>/#` at QoS 1 (Receive Maximum"
        f" {ingest_receive_maximum():,}, as ingest uses); {report.ingest.publishers} publisher processes (gmqtt)"
        f" send the same protocol-v1 telemetry as the ingest benchmark (average payload {payload:.0f} bytes, one"
        " topic per device) as fast as the broker acknowledges it. The subscriber only counts and keeps the"
        " payloads. The rate is from its first to its last message, and is split at the moment the publishers"
        " had their last PUBACK (the subscriber notes the time of every 1,000th message); *lag* is how long after"
        " that moment the last message arrived (positive: the subscriber was the bottleneck and the broker queued"
        " for it). gmqtt runs through `MqttSession` (PUBACK after the handler returns, as in the services);"
        " paho-mqtt calls `on_message` on its network thread; aiomqtt hands messages to an `async for` loop.\n\n"
        + markdown_table(
            (
                "client",
                "version",
                "sent",
                "received",
                "all arrived once",
                "receive rate",
                "… while publishers ran",
                "… after they finished",
                "publishers' rate",
                "lag",
            ),
            rows,
        )
        + "\n\n**What this means.** "
        + _receive_meaning(report)
    )


def _receive_meaning(report: BenchReport) -> str:
    """The paragraph under the receive figures, from the figures."""
    measured = [r for r in report.receive if r.error is None and r.rate > 0]
    text = (
        "One subscriber process's receive rate is the ceiling of one ingest worker before it does any work of its"
        " own, so gmqtt's is the baseline for section 4. The publishers, the broker and the subscriber share"
        f" {report.machine.cores} cores."
    )
    gm = _gmqtt_receive(report)
    others = [r for r in measured if r.client != "gmqtt"]
    if gm is not None and others:
        text += " Overall gmqtt took messages " + ", ".join(
            f"{gm.rate / r.rate:.1f}× as fast as {r.client}" for r in others
        )
        gm_after = gm.rate_after_publishers
        drained = [(r.client, r.rate_after_publishers) for r in others if r.rate_after_publishers]
        if gm_after and drained:
            text += "; alone with the broker, draining its queue once the publishers had finished, " + ", ".join(
                f"{gm_after / rate:.1f}× {client}" for client, rate in drained
            )
        text += "."
    if measured and all(r.complete for r in measured):
        worst = max(measured, key=lambda r: r.lag_after_publishers_s)
        text += (
            " Every client received every message exactly once, even the one that fell"
            f" {worst.lag_after_publishers_s:.0f} s behind its publishers ({worst.client}): with the shipped queue"
            " limits the broker queued for it instead of dropping."
        )
    elif measured:
        text += " **Some messages did not arrive exactly once: see the table.**"
    return text


def _alarm_section(report: BenchReport, rt: LatencyStats, al: AlarmResult) -> str:
    rows = [
        _stats_row("bare broker round trip (section 1)", rt),
        _stats_row("**alarm → close command at the valve**", al.to_command),
        _stats_row("**alarm → valve closed recorded in PostgreSQL**", al.to_recorded),
        _stats_row("… alarm published → received by alerting", al.legs.to_alerting),
        _stats_row("… received by alerting → close command published (inside alerting)", al.legs.in_alerting),
        _stats_row("… close command published → received by the valve", al.legs.to_valve),
        _stats_row("… alarm received by alerting → valve's closed report received", al.legs.closed_in_alerting),
        _stats_row("… closed report received by alerting → visible in PostgreSQL", al.legs.closed_to_recorded),
        _stats_row("poll query (resolution of the recorded figure)", al.poll_query),
    ]
    text = (
        "## 3. Alarm → close → recorded\n\n"
        "The alerting engine (`python -m alerting`, `GG_ROLE=engine`) runs as its own process, its notify part"
        f" (`GG_ROLE=notify`) as another. The driver plays {al.alarms:,} households, one alarm at a"
        f" time, each on a different household (after {al.warmup} warm-up alarms): it publishes an `AlarmEvent`"
        " `high_alarm` on the alarm's `event` topic and, as the valve, answers the `close` command at once with"
        " `CommandAck`, `ValveEvent` `closing` and `closed` (with the `cmd_id`) and `CommandResult` `closed` — a"
        " valve that closes instantly, so the figures are GasGuard's own latency, not the valve motor's."
        f" Between alarms it pauses {al.gap_s * 1000:.0f} ms.\n\n"
        "- *alarm → close command*: device side, from publishing the alarm to the `close` command arriving on the"
        " valve's `cmd` topic (one process, `perf_counter`).\n"
        "- *alarm → valve closed recorded*: from publishing the alarm until a query sees `incident.valve_closed_at`"
        f" set. The driver polls `SELECT valve_closed_at IS NOT NULL FROM incident WHERE household_id = $1 …` every"
        f" {POLL_INTERVAL_S * 1000:.0f} ms on its own connection (nothing in the schema notifies on it, and the"
        " benchmark adds no trigger); the time taken is when the positive answer arrives, so the figure is late by"
        f" at most one poll interval plus one query (p50 {format_ms(al.poll_query.p50)};"
        f" {al.poll_query.count / al.alarms:.1f} queries per alarm, whose load on PostgreSQL is part of what is"
        " measured).\n"
        "- The rows starting with … split those times into legs using the timestamps alerting itself stores"
        " (`alarm_received_at`, `command_sent_at`, `valve_closed_at`), compared with the driver's wall-clock"
        " times of publishing the alarm, receiving the command and seeing the closing recorded (one system clock"
        " for all processes).\n\n"
        + markdown_table(_LATENCY_HEADERS, rows)
        + "\n\n"
        + markdown_table(
            ("check", "value"),
            [
                ("gas-alarm incidents opened (all alarms of this section)", f"{al.incidents:,}"),
                ("... with the valve closing recorded", f"{al.closed_recorded:,}"),
                ("`valve_not_closed` incidents", f"{al.not_closed_incidents}"),
                ("close commands re-sent by alerting", f"{al.resends}"),
                ("repeated `close` commands seen by the valves", f"{al.repeated_commands}"),
                ("dead letters", f"{al.dead_letters}"),
            ],
        )
    )
    if al.burst is not None:
        b = al.burst
        text += (
            f"\n\n**Burst.** Then {b.alarms} more households alarm at once (published back to back, yielding to the"
            " event loop between them), measured the same way:\n\n"
            + markdown_table(
                _LATENCY_HEADERS,
                [
                    _stats_row("burst: alarm → close command", b.to_command),
                    _stats_row("burst: alarm → valve closed recorded", b.to_recorded),
                ],
            )
        )
    sms = al.sms
    sms_rows: list[Sequence[object]] = [
        ("resident texts expected (one per alarm, warm-up and burst included)", f"{sms.expected:,}"),
        ("received by the SMS sandbox", f"{sms.received:,}"),
        ("... saying the valve is closed (切断阀已关闭)", f"{sms.said_closed:,}"),
        (
            "... not saying so, although the valve had reported closed (one at a time / burst)",
            f"{sms.not_closed_one_at_a_time:,} / {sms.not_closed_burst:,}",
        ),
        ("drain: last alarm's closing recorded → last text received", format_ms(sms.drain_s)),
    ]
    for label, stats in (("one at a time", sms.alarm_to_sms), ("burst", sms.burst_alarm_to_sms)):
        if stats is not None:
            sms_rows.append(
                (
                    f"alarm received by alerting → text accepted by the provider ({label})",
                    f"p50 {format_ms(stats.p50)}, p99 {format_ms(stats.p99)}, max {format_ms(stats.maximum)}",
                )
            )
    text += "\n\n**SMS.**\n\n" + markdown_table(("", ""), sms_rows)
    text += "\n\n**What this means.** " + _alarm_meaning(rt, al)
    return text


def _from_burst(burst: int, total: int) -> str:
    if burst == total:
        return "all from the burst"
    return f"{burst} of them from the burst" if burst else "none from the burst"


def _alarm_meaning(rt: LatencyStats, al: AlarmResult) -> str:
    """The paragraph under the alarm figures, from the figures."""
    legs = al.legs

    def p50_p99(stats: LatencyStats) -> str:
        return f"{format_ms(stats.p50)} / {format_ms(stats.p99)}"

    text = (
        f"Inside alerting an alarm becomes a close command in {format_ms(legs.in_alerting.p50)} at the median"
        f" ({format_ms(legs.in_alerting.p99)} at p99): the command is published from the in-memory directory before"
        f" any database work. At the valve it arrives {p50_p99(al.to_command)} (p50 / p99) after the alarm left"
        f" the device, against {p50_p99(rt)} for a bare round trip over the same four broker hops. The legs show"
        f" where the rest goes: the alarm reaches alerting's handler in {p50_p99(legs.to_alerting)} and the command"
        f" reaches the valve in {p50_p99(legs.to_valve)}; both include gmqtt's task per message and waiting for"
        " the engine's event loop, which it shares with its recorder (the notifier is a process of its own; the"
        " driver and alerting share the cores with the broker and PostgreSQL). The slowest alarm of"
        f" {al.alarms:,} waited {format_ms(al.to_command.maximum)} for its command; the legs' maxima are"
        f" {format_ms(legs.to_alerting.maximum)}, {format_ms(legs.in_alerting.maximum)} and"
        f" {format_ms(legs.to_valve.maximum)}. Recording the closing takes"
        f" {al.to_recorded.p50 / al.to_command.p50:.0f}× as long at the median — {p50_p99(al.to_recorded)} — and"
        " most of it comes after the valve's report has reached alerting"
        f" ({p50_p99(legs.closed_in_alerting)} after the alarm): it becomes visible in PostgreSQL"
        f" {p50_p99(legs.closed_to_recorded)} later: the recorder is a single writer that applies records in"
        " order, in batches of whatever has queued up (one transaction and a few set-based statements per kind"
        " of record in a batch), so one alarm at a time waits for the alarm's own batch, the acknowledgement's"
        " and the closed report's."
    )
    if al.burst is not None:
        b = al.burst
        recorded_per_s = b.alarms / b.to_recorded.maximum if b.to_recorded.maximum > 0 else 0.0
        text += (
            f" In the burst every one of the {b.alarms} valves had its command within"
            f" {format_ms(b.to_command.maximum)}, but the records queued behind each other: the last closing was"
            f" recorded {format_ms(b.to_recorded.maximum)} after its alarm, so the recorder kept up with about"
            f" {recorded_per_s:,.0f} alarms a second."
        )
    text += (
        " The record path delays the incident's timeline and the resident's text (which waits for the closing to"
        f" be recorded, at most `resident_sms_hold_s` = {al.sms.hold_s:g} s), never the valve."
    )
    wrong = al.sms.not_closed_one_at_a_time + al.sms.not_closed_burst
    if wrong:
        text += (
            f" **{wrong} resident texts ({_from_burst(al.sms.not_closed_burst, wrong)}) did not say the valve was"
            " closed although it had reported closed within milliseconds:** their hold ended before the report"
            " reached alerting, so the text said the closing was unconfirmed."
        )
    return text


def _ingest_section(report: BenchReport, ing: IngestResult) -> str:
    gm = _gmqtt_receive(report)
    rows: list[Sequence[object]] = [
        ("messages published (QoS 1)", f"{ing.messages:,} over {ing.devices:,} devices, {ing.publishers} publishers"),
        ("average payload", f"{ing.payload_bytes:.0f} bytes"),
        ("publishers' rate (until their last PUBACK)", format_rate(ing.publish_rate)),
        ("first message received by ingest after the start (its `received_at`)", format_ms(ing.first_received_after_s)),
        ("first row committed after the start (first sample above zero)", format_ms(ing.first_row_after_s)),
        ("**rows/s committed, first row → last row**", f"**{format_rate(ing.rows_per_s)}**"),
        ("rows/s committed between 10 % and 90 % of the rows", format_rate(ing.steady_rows_per_s)),
        ("rows/s from the start of publishing to the last row", format_rate(ing.end_to_end_rows_per_s)),
        ("rows/s by ingest's receive times (`received_at` span)", format_rate(ing.receive_rows_per_s)),
        ("rows in `telemetry`", f"{ing.rows:,}"),
        ("distinct `(device_id, device_ts, seq)`", f"{ing.distinct:,}"),
        (
            "lost / duplicated",
            "none"
            if ing.complete
            else f"**{ing.messages - ing.distinct:,} lost, {ing.rows - ing.distinct:,} duplicated**",
        ),
        ("dead letters (besides the readiness probe), event rows", f"{ing.dead_letters}, {ing.events}"),
    ]
    rows.append(
        (
            "rows/s while the publishers ran / after their last PUBACK",
            f"{_optional_rate(ing.rows_per_s_while_publishing)} / {_optional_rate(ing.rows_per_s_after_publishers)}",
        )
    )
    if gm is not None:
        rows.append(
            (
                "bare gmqtt receive rate (section 2): overall / while publishers ran / after",
                f"{format_rate(gm.rate)} / {_optional_rate(gm.rate_while_publishing)}"
                f" / {_optional_rate(gm.rate_after_publishers)}",
            )
        )
        rows.append(
            (
                "ingest ÷ bare gmqtt: overall / while publishers ran / after",
                " / ".join(
                    _ratio(a, b)
                    for a, b in (
                        (ing.rows_per_s, gm.rate),
                        (ing.rows_per_s_while_publishing, gm.rate_while_publishing),
                        (ing.rows_per_s_after_publishers, gm.rate_after_publishers),
                    )
                ),
            )
        )
    return (
        "## 4. Sustained telemetry ingest\n\n"
        "`python -m ingest` runs as its own process with a fixed client id (persistent session) and subscribes to"
        " everything under its topic root. A message to an unknown topic is published first until it shows up as"
        " a dead letter, so the subscription is known to be live. Then the publishers send protocol-v1"
        " `AlarmTelemetry`/`ValveTelemetry` (`gasguard.protocol.encode`, seeded device ids, `seq` rising per"
        " device) as fast as the broker acknowledges. The driver samples `SELECT count(*) FROM telemetry` every"
        f" {COUNT_INTERVAL_S * 1000:.0f} ms; *first row → last row* is between the first sample above zero and"
        " the first sample at the full count. At the end `count(*)` and `count(DISTINCT (device_id, device_ts,"
        " seq))` must both equal the number sent.\n\n"
        + markdown_table(("", ""), rows)
        + "\n\n**What this means.** "
        + _ingest_meaning(ing, gm)
    )


def _ratio(numerator: float | None, denominator: float | None) -> str:
    return f"{numerator / denominator:.2f}" if numerator and denominator else "—"


def _ingest_meaning(ing: IngestResult, gm: ReceiveResult | None) -> str:
    """The paragraph under the ingest figures, from the figures."""
    from ingest.settings import IngestSettings

    fields = IngestSettings.model_fields
    text = (
        f"Ingest committed {format_rate(ing.rows_per_s)}, acknowledging each message only after its batch was"
        " committed."
    )
    if gm is not None and gm.rate:
        text += (
            f" That is {ing.rows_per_s / gm.rate:.0%} of the bare gmqtt subscriber's overall rate in section 2. Both"
            " rates depend on how long the publishers, which share the cores, were still running (compare the"
            " rows split at their last PUBACK, which line up the phases); between stages the other work on the"
            " machine changes too, so only a large gap means much."
        )
        if ing.rows_per_s < 0.8 * gm.rate:
            text += (
                " The gap here is ingest's own work per message: validation, classification, batching and the COPY"
                " into PostgreSQL, on the same cores."
            )
        else:
            text += " Here ingest's own work per message cost little of the rate one gmqtt subscriber can take."
    if ing.publish_rate > ing.rows_per_s:
        text += (
            f" The publishers sent {ing.publish_rate / ing.rows_per_s:.1f}× faster than ingest committed; the broker"
            " queued the"
            " difference for ingest's persistent session (the shipped queue limit is by bytes, not by count)"
        )
        text += ", and nothing was lost or stored twice." if ing.complete else "."
    elif ing.complete:
        text += " Nothing was lost or stored twice."
    if not ing.complete:
        text += " **Rows are missing or duplicated: see the table.**"
    text += (
        f" The first row became visible {format_ms(ing.first_row_after_s - ing.first_received_after_s)} after"
        f" ingest had received its first message, although a batch is sealed at {fields['batch_size'].default:,}"
        f" rows or after {fields['batch_max_age_s'].default * 1000:g} ms: at start-up the first commit competes in"
        f" ingest's event loop with up to {fields['receive_maximum'].default:,} messages in flight (its Receive"
        " Maximum)."
    )
    return text


def _findings_section(report: BenchReport) -> str:
    if not report.findings:
        return "## Warnings and errors in the logs\n\nNone: no process logged a warning or an error."
    lines = ["## Warnings and errors in the logs", ""]
    for f in report.findings:
        lines.append(f"- **{f.process}**: {len(f.during_run)} during the run, {len(f.at_shutdown)} while stopping.")
        lines.extend(f"  - `{line[:200]}`" for line in (*f.during_run[:5], *f.at_shutdown[:3]))
    return "\n".join(lines)


def summary_lines(report: BenchReport) -> list[str]:
    """A short plain-text summary for the terminal."""
    rt = report.round_trip.latency
    al = report.alarms
    ing = report.ingest
    lines = [
        f"GasGuard benchmarks ({report.duration_s:.0f} s, {report.machine.cores} cores, load"
        f" {_load(report.machine.load_before)})",
        f"  bare round trip        p50 {format_ms(rt.p50)}  p99 {format_ms(rt.p99)}  max {format_ms(rt.maximum)}",
    ]
    for r in report.receive:
        if r.error is not None:
            lines.append(f"  receive {r.client:<8}       not measured: {r.error}")
        else:
            lines.append(
                f"  receive {r.client:<8}       {format_rate(r.rate)}  {r.received:,}/{r.sent:,}"
                f" {'complete' if r.complete else 'INCOMPLETE'}"
            )
    lines += [
        f"  alarm -> close         p50 {format_ms(al.to_command.p50)}  p99 {format_ms(al.to_command.p99)}"
        f"  max {format_ms(al.to_command.maximum)}",
        f"  alarm -> closed rec.   p50 {format_ms(al.to_recorded.p50)}  p99 {format_ms(al.to_recorded.p99)}"
        f"  max {format_ms(al.to_recorded.maximum)}",
    ]
    if al.burst is not None:
        lines.append(
            f"  burst of {al.burst.alarms}: close p99 {format_ms(al.burst.to_command.p99)},"
            f" recorded max {format_ms(al.burst.to_recorded.maximum)}"
        )
    lines += [
        f"  SMS                    {al.sms.received:,}/{al.sms.expected:,},"
        f" {format_ms(al.sms.drain_s)} after the last alarm",
        f"  ingest                 {format_rate(ing.rows_per_s)}  rows {ing.rows:,}, distinct {ing.distinct:,},"
        f" sent {ing.messages:,} {'complete' if ing.complete else 'INCOMPLETE'}",
    ]
    for f in report.findings:
        lines.append(f"  log {f.process}: {len(f.during_run)} warning/error lines, {len(f.at_shutdown)} at shutdown")
    return lines


# --------------------------------------------------------------------------------------- workers


async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def _emit(kind: str, payload: Mapping[str, object] | None = None) -> None:
    sys.stdout.write(f"{kind} {json.dumps(payload or {})}\n")
    sys.stdout.flush()


async def _await_probe(publish: Callable[[], None], seen: asyncio.Event, *, timeout_s: float = 20.0) -> None:
    """Publish a probe to our own subscription until it comes back: the subscription is live."""
    async with asyncio.timeout(timeout_s):
        while not seen.is_set():
            publish()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(seen.wait(), 0.5)


async def _echo_worker(job: EchoJob) -> None:
    session: MqttSession | None = None
    probed = asyncio.Event()

    async def echo(topic: str, payload: bytes) -> None:
        if payload == b"probe":
            probed.set()
        elif session is not None:
            session.publish(job.pong, payload, qos=1)

    stdin = await _stdin_reader()
    session = MqttSession(
        MqttEndpoint.from_url(job.url), client_id=job.client_id, subscriptions=[(job.ping, 1)], handler=echo
    )
    async with asyncio.timeout(job.deadline_s), session:
        await _await_probe(lambda: session.publish(job.ping, b"probe", qos=1), probed)
        _emit(_READY)
        await stdin.read()  # until the driver closes our stdin


class _Tally:
    """What a bare subscriber received (the probe aside), with the times of the first and last message.

    ``on_event`` is called once when the probe comes back and once when the last expected message arrives.
    """

    def __init__(self, probe_topic: str, expected: int, on_event: Callable[[], None]) -> None:
        self.probe_topic = probe_topic
        self.expected = expected
        self.probe_seen = False
        self.payloads: list[tuple[str, bytes]] = []
        self.first_at = 0.0
        self.last_at = 0.0
        #: (time, messages so far) every `_MARK_EVERY` messages, to tell rates apart over time.
        self.marks: list[tuple[float, int]] = []
        self._on_event = on_event

    def on_message(self, topic: str, payload: bytes) -> None:
        """Count one message."""
        if topic == self.probe_topic:
            if not self.probe_seen:
                self.probe_seen = True
                self._on_event()
            return
        now = time.monotonic()
        if not self.payloads:
            self.first_at = now
        self.last_at = now
        self.payloads.append((topic, payload))
        if len(self.payloads) % _MARK_EVERY == 0:
            self.marks.append((now, len(self.payloads)))
        if len(self.payloads) == self.expected:
            self._on_event()

    @property
    def complete(self) -> bool:
        """Every expected message is in."""
        return len(self.payloads) >= self.expected

    def idle(self, idle_s: float, started_at: float) -> bool:
        """Nothing came for ``idle_s`` (nothing at all for 60 s): what is missing is not coming."""
        now = time.monotonic()
        return now - self.last_at > idle_s if self.payloads else now - started_at > 60

    async def wait_async(self, event: asyncio.Event, idle_s: float) -> None:
        """Wait in an event loop until complete or idle (``event`` is what ``on_event`` sets)."""
        started = time.monotonic()
        while not self.complete and not self.idle(idle_s, started):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), 0.25)

    def result(self) -> dict[str, object]:
        """The RESULT line."""
        return {
            "received": len(self.payloads),
            "distinct": len(set(self.payloads)),
            "first_at": self.first_at,
            "last_at": self.last_at,
            "marks": self.marks,
        }


async def _subscribe_gmqtt(job: SubscribeJob) -> dict[str, object]:
    event = asyncio.Event()
    tally = _Tally(job.probe_topic, job.expected, event.set)

    async def handler(topic: str, payload: bytes) -> None:
        tally.on_message(topic, payload)

    session = MqttSession(
        MqttEndpoint.from_url(job.url),
        client_id=job.client_id,
        subscriptions=[(job.topic_filter, 1)],
        handler=handler,
        receive_maximum=job.receive_maximum,
    )
    async with session:
        await _await_probe(lambda: session.publish(job.probe_topic, b"probe", qos=1), event)
        event.clear()
        _emit(_READY)
        await tally.wait_async(event, job.idle_s)
        # PUBACKs go out from the handlers' done-callbacks; let them leave before disconnecting.
        await asyncio.sleep(0.2)
    return tally.result()


async def _subscribe_aiomqtt(job: SubscribeJob) -> dict[str, object]:
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    event = asyncio.Event()
    tally = _Tally(job.probe_topic, job.expected, event.set)
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.ReceiveMaximum = job.receive_maximum
    endpoint = MqttEndpoint.from_url(job.url)
    async with aiomqtt.Client(
        endpoint.host,
        endpoint.port,
        identifier=job.client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        properties=properties,
    ) as client:
        await client.subscribe(job.topic_filter, qos=1)

        async def consume() -> None:
            async for message in client.messages:
                payload = message.payload
                tally.on_message(
                    message.topic.value,
                    bytes(payload) if isinstance(payload, bytes | bytearray) else str(payload).encode(),
                )

        consumer = asyncio.create_task(consume(), name="bench.aiomqtt_consume_loop")
        try:
            async with asyncio.timeout(20):
                while not tally.probe_seen:
                    await client.publish(job.probe_topic, b"probe", qos=1)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(event.wait(), 0.5)
            event.clear()
            _emit(_READY)
            await tally.wait_async(event, job.idle_s)
        finally:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
    return tally.result()


def _subscribe_paho(job: SubscribeJob) -> dict[str, object]:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    event = threading.Event()
    tally = _Tally(job.probe_topic, job.expected, event.set)
    endpoint = MqttEndpoint.from_url(job.url)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=job.client_id, protocol=paho.MQTTv5)
    client.on_message = lambda _client, _userdata, message: tally.on_message(message.topic, bytes(message.payload))
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.ReceiveMaximum = job.receive_maximum
    client.connect(endpoint.host, endpoint.port, keepalive=30, clean_start=True, properties=properties)
    client.loop_start()
    try:
        client.subscribe(job.topic_filter, qos=1)
        deadline = time.monotonic() + 20
        while not tally.probe_seen:
            if time.monotonic() > deadline:
                raise BenchError("paho subscriber: the probe never came back")
            client.publish(job.probe_topic, b"probe", qos=1)
            event.wait(0.5)
        event.clear()
        _emit(_READY)
        started = time.monotonic()
        while not tally.complete and not tally.idle(job.idle_s, started):
            event.wait(0.25)
    finally:
        client.disconnect()
        client.loop_stop()
    return tally.result()


def _subscribe_worker(job: SubscribeJob) -> None:
    if job.client == "paho":
        _emit(_RESULT, _subscribe_paho(job))
        return
    if job.client not in {"gmqtt", "aiomqtt"}:
        raise BenchError(f"unknown client {job.client!r}")
    subscribe = _subscribe_gmqtt if job.client == "gmqtt" else _subscribe_aiomqtt

    async def run() -> None:
        _emit(_RESULT, await asyncio.wait_for(subscribe(job), job.deadline_s))

    runtime.run(run, log_level="WARNING")


class _AckCounter:
    """gmqtt's in-flight store for QoS 1 publishes, counting the PUBACKs that empty it.

    gmqtt calls these methods on the object passed as ``persistent_storage``; the messages themselves
    are kept by gmqtt's own `PersistentStorage`, so resend-on-reconnect works as usual.
    """

    def __init__(self) -> None:
        from gmqtt.storage import PersistentStorage

        self._inner: Any = PersistentStorage()
        self._mids: set[int] = set()
        self.acked = 0

    def push_message(self, mid: int, raw_package: bytes) -> None:
        """Keep an unacknowledged message."""
        self._mids.add(mid)
        self._inner.push_message(mid, raw_package)

    def remove_message_by_mid(self, mid: int) -> None:
        """Forget an acknowledged message."""
        if mid in self._mids:
            self._mids.discard(mid)
            self.acked += 1
        self._inner.remove_message_by_mid(mid)

    @property
    def is_empty(self) -> bool:
        """Nothing awaits an acknowledgement."""
        return bool(self._inner.is_empty)

    async def wait_empty(self) -> None:
        """Wait until nothing awaits an acknowledgement."""
        await self._inner.wait_empty()

    def clear(self) -> None:
        """Drop everything (a clean session)."""
        self._mids.clear()
        self._inner.clear()

    def get_all(self) -> list[tuple[int, bytes]]:
        """Unacknowledged messages in send order."""
        return list(self._inner.get_all())


async def _publish_worker(job: PublishJob, devices: Sequence[str]) -> None:
    import gmqtt
    from gmqtt.mqtt.constants import MQTTv50

    stdin = await _stdin_reader()
    topics = Topics(job.root)
    ts_start = datetime.fromtimestamp(job.ts_start, UTC)
    device_topics = [topics.device(device_id, Channel.TELEMETRY) for device_id in devices]
    messages = [
        (topic, telemetry_payload(device_id, seq, ts_start + timedelta(seconds=seq)))
        for seq in range(1, job.rounds + 1)
        for device_id, topic in zip(devices, device_topics, strict=True)
    ]
    payload_bytes = statistics.fmean(len(payload) for _, payload in messages) if messages else 0.0
    acks = _AckCounter()
    client: Any = gmqtt.Client(job.client_id, clean_session=True, persistent_storage=acks)
    endpoint = MqttEndpoint.from_url(job.url)
    async with asyncio.timeout(job.deadline_s):
        await client.connect(endpoint.host, endpoint.port, version=MQTTv50, keepalive=60)
        try:
            _emit(_READY, {"messages": len(messages)})
            if (await stdin.readline()).strip() != _GO.encode():
                return
            started_at = time.monotonic()
            for index, (topic, payload) in enumerate(messages):
                while True:
                    try:
                        client.publish(topic, payload, qos=1)
                        break
                    except OverflowError:
                        # The broker's Receive Maximum window is full; PUBACKs free it.
                        await asyncio.sleep(0.0005)
                if index % 256 == 0:
                    await asyncio.sleep(0)
            await acks.wait_empty()
            done_at = time.monotonic()
            _emit(
                _RESULT,
                {
                    "sent": len(messages),
                    "acked": acks.acked,
                    "started_at": started_at,
                    "done_at": done_at,
                    "payload_bytes": payload_bytes,
                },
            )
        finally:
            await client.disconnect()


async def _sms_worker(job: SmsJob) -> None:
    from alerting.templates import TEMPLATES
    from gasguard.web import serve_asgi
    from simulator.sms_platform import SmsPlatform

    platform_ = SmsPlatform(
        keys={job.key_id: job.key_secret},
        sign_names=frozenset({job.sign_name}),
        templates={t.code: t.text for t in TEMPLATES.values()},
    )
    app = platform_.app()

    @app.get("/_bench/count")
    async def count() -> dict[str, int]:
        return {"received": len(platform_.received)}

    stdin = await _stdin_reader()
    ready = asyncio.Event()
    server = asyncio.create_task(serve_asgi(app, host=LOOPBACK, port=job.port, ready=ready), name="bench.sms_serve")
    try:
        async with asyncio.timeout(job.deadline_s):
            await asyncio.wait({server, asyncio.create_task(ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
            if server.done():
                await server
                return
            _emit(_READY)
            await stdin.read()
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server


def run_worker(role: str, job_json: str) -> None:
    """Entry point of ``python -m simulator.bench worker ROLE JSON``."""
    data = json.loads(job_json)
    if role == "echo":
        echo_job = EchoJob(**data)
        runtime.run(lambda: _echo_worker(echo_job), log_level="WARNING")
    elif role == "publish":
        publish_job = PublishJob(**data)
        devices: list[str] = json.loads(Path(publish_job.devices_file).read_text())
        runtime.run(lambda: _publish_worker(publish_job, devices), log_level="WARNING")
    elif role == "subscribe":
        runtime.configure_logging("WARNING")
        _subscribe_worker(SubscribeJob(**data))
    elif role == "sms":
        sms_job = SmsJob(**data)
        runtime.run(lambda: _sms_worker(sms_job), log_level="WARNING")
    else:
        raise SystemExit(f"unknown worker role {role!r}")


# --------------------------------------------------------------------------------------- CLI


def parse_options(argv: Sequence[str]) -> Options:
    """Options from the command line."""
    defaults = Options()
    parser = argparse.ArgumentParser(
        prog="python -m simulator.bench",
        description="Measure GasGuard's latency and throughput on this machine; writes docs/benchmarks.md.",
    )
    parser.add_argument("--round-trips", type=int, default=defaults.round_trips, help="bare round trips to time")
    parser.add_argument(
        "--receive-rounds", type=int, default=defaults.receive_rounds, help="messages per device, receive-rate test"
    )
    parser.add_argument(
        "--clients", default=",".join(defaults.clients), help="client libraries for the receive-rate test"
    )
    parser.add_argument("--alarms", type=int, default=defaults.alarms, help="alarms timed one at a time")
    parser.add_argument("--burst", type=int, default=defaults.burst, help="alarms published at once (0: none)")
    parser.add_argument(
        "--alarm-gap-ms", type=float, default=defaults.alarm_gap_s * 1000, help="pause between timed alarms"
    )
    parser.add_argument("--telemetry-devices", type=int, default=defaults.telemetry_devices)
    parser.add_argument(
        "--telemetry-rounds", type=int, default=defaults.telemetry_rounds, help="messages per device, ingest test"
    )
    parser.add_argument("--publishers", type=int, default=defaults.publishers, help="publisher processes")
    parser.add_argument("--admin-dsn", default=defaults.admin_dsn, help="PostgreSQL DSN allowed to create databases")
    parser.add_argument("--mosquitto", default=defaults.mosquitto, help="the mosquitto binary")
    parser.add_argument("--broker-config", type=Path, default=defaults.broker_config)
    parser.add_argument(
        "--output", default=str(defaults.output), help="where to write the Markdown report ('-' for nowhere)"
    )
    parser.add_argument("--logs", type=Path, default=None, help="copy every process's log into this directory")
    parser.add_argument("--deadline-s", type=float, default=defaults.deadline_s, help="abort the run after this long")
    parser.add_argument("--quick", action="store_true", help="a small run for trying the driver out (no report)")
    args = parser.parse_args(argv)
    clients = tuple(c.strip() for c in args.clients.split(",") if c.strip())
    unknown = set(clients) - set(CLIENTS)
    if unknown:
        parser.error(f"unknown clients {sorted(unknown)}; choose from {', '.join(CLIENTS)}")
    options = Options(
        round_trips=args.round_trips,
        receive_rounds=args.receive_rounds,
        clients=clients,
        alarms=args.alarms,
        burst=args.burst,
        alarm_gap_s=args.alarm_gap_ms / 1000,
        telemetry_devices=args.telemetry_devices,
        telemetry_rounds=args.telemetry_rounds,
        publishers=args.publishers,
        admin_dsn=args.admin_dsn,
        mosquitto=args.mosquitto,
        broker_config=args.broker_config,
        output=None if args.output == "-" else Path(args.output),
        logs_dir=args.logs,
        deadline_s=args.deadline_s,
    )
    if args.quick:
        options = dataclasses.replace(
            options,
            round_trips=200,
            receive_rounds=1,
            alarms=50,
            alarm_warmup=5,
            burst=20,
            telemetry_devices=2000,
            telemetry_rounds=2,
            output=None,
        )
    return options


async def _main(options: Options) -> None:
    # gmqtt narrates every SUBACK at INFO through the sessions' logger; its warnings still show.
    logging.getLogger("gasguard.mqtt").setLevel(logging.WARNING)
    try:
        async with asyncio.timeout(options.deadline_s):
            report = await run_benchmarks(options)
    except TimeoutError as err:
        raise BenchError(f"the benchmark did not finish within {options.deadline_s:g} s") from err
    if options.output is not None:
        options.output.write_text(render_report(report))
        _LOGGER.info("wrote %s", options.output)
    for line in summary_lines(report):
        print(line)  # noqa: T201 - the CLI's summary


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m simulator.bench``: run the benchmarks, or one worker role."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["worker"]:
        if len(args) != 3:
            raise SystemExit("usage: python -m simulator.bench worker ROLE JSON")
        run_worker(args[1], args[2])
        return
    options = parse_options(args)
    runtime.run(lambda: _main(options), log_level=os.environ.get("GG_LOG_LEVEL", "INFO"))


if __name__ == "__main__":
    main()
