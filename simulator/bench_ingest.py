"""Ingest-only benchmark: ``python -m simulator.bench_ingest``.

On a private Mosquitto started with the shipped configuration and a fresh database holding 80,000
registered devices, it measures, in one run and on the same broker:

1. the bare receive rate of the fastest Python MQTT client (gmqtt) taking the same telemetry stream;
2. sustained ingest (``python -m ingest`` as its own process) with zero-loss checks (count and distinct keys);
3. the same with two ingest workers on one MQTT 5 shared subscription (each worker's share from its
   Prometheus endpoint);
4. the resident memory of each ingest process with 80,000 devices known.

It prints a Markdown section and writes it to ``docs/benchmarks-ingest.md``. The broker, the database
and the processes it starts are reused from `simulator.bench` (the full benchmark driver) and stopped or
dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx

from gasguard import runtime
from gasguard.db import connect, migrate
from gasguard.embedded import free_tcp_port
from gasguard.mqtt import MqttSession
from simulator.bench import (
    _GO,
    COUNT_INTERVAL_S,
    DEFAULT_ADMIN_DSN,
    DEFAULT_BROKER_CONFIG,
    DEFAULT_MOSQUITTO,
    PROJECT_ROOT,
    BenchError,
    ChildProcess,
    ReceiveResult,
    _collect_publishers,
    _publish_all,
    _Run,
    bench_broker,
    bench_database,
    bench_receive,
    child_env,
    child_process,
    format_rate,
    markdown_table,
    per_second,
)

_LOGGER = logging.getLogger(__name__)

DEFAULT_OUTPUT = PROJECT_ROOT / "docs" / "benchmarks-ingest.md"
TARGET_SHARE_OF_BARE = 0.8
TARGET_RSS_MB = 300


@dataclass(frozen=True, slots=True)
class WorkerFigures:
    """One ingest process: what it took and how much memory it held."""

    messages_in: int
    rows_out: int
    #: Resident memory once subscribed with every device known, before the stream starts.
    idle_rss_mb: float
    rss_mb: float
    peak_rss_mb: float
    known_devices: int


@dataclass(frozen=True, slots=True)
class IngestRun:
    """Sustained telemetry into one or more ingest workers."""

    workers: tuple[WorkerFigures, ...]
    messages: int
    publish_rate: float
    rows: int
    distinct: int
    rows_per_s: float
    span_s: float

    @property
    def complete(self) -> bool:
        """Every message is a row, exactly once."""
        return self.rows == self.distinct == self.messages


async def seed_devices(dsn: str, devices: int) -> list[str]:
    """Register ``devices`` devices (half alarms ``GA-…``, half valves ``GV-…``) in households of two."""
    households = (devices + 1) // 2
    conn = await connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(
                """
                INSERT INTO town (code, name) VALUES ('150626100000', '嘎鲁图镇');
                INSERT INTO community (code, town_code, name, synthetic)
                    VALUES ('150626100901', '150626100000', '基准社区', true);
                INSERT INTO device_model (id, manufacturer, model, kind, gas_type, service_life_years) VALUES
                    ('bench-alarm', 'Bench', 'A', 'alarm', 'NG', 5),
                    ('bench-valve', 'Bench', 'V', 'shutoff_valve', 'NG', 10);
                """
            )
            await conn.execute(
                "INSERT INTO household (community_code, building, unit, room, gas_type, supplier)"
                " SELECT '150626100901', (i / 100)::text, '1', (i % 100)::text, 'NG', '乌审中燃'"
                " FROM generate_series(1, $1) AS i",
                households,
            )
            await conn.execute(
                "INSERT INTO device (id, household_id, model_id, serial)"
                " SELECT prefix || lpad(n::text, 6, '0'), h.id, model, prefix || 'S' || n"
                " FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM household) AS h,"
                " (VALUES ('GA-', 'bench-alarm'), ('GV-', 'bench-valve')) AS m(prefix, model)",
            )
        ids: list[str] = [r["id"] for r in await conn.fetch("SELECT id FROM device ORDER BY id LIMIT $1", devices)]
    finally:
        await conn.close()
    return ids


def _rss_mb(pid: int) -> tuple[float, float]:
    """Current and peak resident set size of a process, in MiB (from ``/proc``)."""
    rss = peak = 0.0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return rss, peak


async def _scrape(http: httpx.AsyncClient, port: int) -> dict[str, float]:
    response = await http.get(f"http://127.0.0.1:{port}/metrics")
    response.raise_for_status()
    samples: dict[str, float] = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


async def _wait_metrics(http: httpx.AsyncClient, port: int, worker: ChildProcess) -> None:
    async with asyncio.timeout(60):
        while True:
            if worker.process.returncode is not None:
                raise BenchError(f"{worker.name} exited:\n{worker.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                await _scrape(http, port)
                return
            await asyncio.sleep(0.1)


async def bench_workers(run: _Run, *, workers: int, devices: Sequence[str], rounds: int, publishers: int) -> IngestRun:
    """Publish ``rounds`` readings per device into ``workers`` ingest processes; count rows and memory."""
    expected = rounds * len(devices)
    root = f"bench-ing{workers}-{secrets.token_hex(3)}"
    ports = [free_tcp_port() for _ in range(workers)]
    conn = await connect(run.dsn)
    await conn.execute("TRUNCATE telemetry, device_event, dead_letter")
    try:
        async with contextlib.AsyncExitStack() as stack, httpx.AsyncClient(timeout=5) as http:
            procs: list[ChildProcess] = []
            for index, port in enumerate(ports):
                env = {
                    "GG_DATABASE_URL": run.dsn,
                    "GG_MQTT_URL": run.broker.url,
                    "GG_TOPIC_ROOT": root,
                    "GG_CLIENT_ID": f"{root}-ingest-{index}",
                    "GG_SPOOL_DIR": str(run.workdir / f"{root}-spool-{index}"),
                    "GG_METRICS_PORT": str(port),
                    "GG_LOG_LEVEL": "INFO",
                }
                if workers > 1:
                    env["GG_SHARE_GROUP"] = "ingest"
                name = f"{root}-ingest-{index}"
                procs.append(
                    await stack.enter_async_context(
                        child_process(
                            name,
                            [sys.executable, "-m", "ingest"],
                            log_path=run.log(name),
                            cwd=run.workdir,
                            env=child_env(env),
                        )
                    )
                )
            for proc, port in zip(procs, ports, strict=True):
                await proc.wait_for_log("subscribed to", timeout_s=60)
                await _wait_metrics(http, port, proc)
            await _probe(run, http, root, ports)
            idle = [_rss_mb(proc.process.pid)[0] for proc in procs]
            pubs = await _publish_all(
                run, stack, name=root, root=root, devices=devices, rounds=rounds, publishers=publishers
            )
            for pub in pubs:
                pub.send(_GO)
            samples = await _count(conn, expected, timeout_s=300)
            published = await _collect_publishers(pubs, timeout_s=60)
            await asyncio.sleep(1.0)  # a duplicate or a stray would land now
            final = await conn.fetchrow(
                "SELECT count(*) AS rows, count(DISTINCT (device_id, device_ts, seq)) AS distinct_rows FROM telemetry"
            )
            assert final is not None
            figures = []
            for proc, port, idle_mb in zip(procs, ports, idle, strict=True):
                metrics = await _scrape(http, port)
                rss, peak = _rss_mb(proc.process.pid)
                figures.append(
                    WorkerFigures(
                        messages_in=int(metrics.get("gasguard_ingest_messages_in_total", 0)),
                        rows_out=int(metrics.get("gasguard_ingest_rows_out_total", 0)),
                        idle_rss_mb=idle_mb,
                        rss_mb=rss,
                        peak_rss_mb=peak,
                        known_devices=int(metrics.get("gasguard_ingest_known_devices", 0)),
                    )
                )
    finally:
        await conn.close()
    first_at, first_count = next((at, n) for at, n in samples if n > 0)
    last_at = next(at for at, n in samples if n >= samples[-1][1])
    result = IngestRun(
        workers=tuple(figures),
        messages=expected,
        publish_rate=per_second(published.sent, published.done_at - published.started_at),
        rows=int(final["rows"]),
        distinct=int(final["distinct_rows"]),
        rows_per_s=per_second(samples[-1][1] - first_count, last_at - first_at),
        span_s=last_at - first_at,
    )
    _LOGGER.info("%d ingest worker(s): %d/%d rows, %s", workers, result.rows, expected, format_rate(result.rows_per_s))
    return result


async def _probe(run: _Run, http: httpx.AsyncClient, root: str, ports: Sequence[int]) -> None:
    """Publish outside the protocol until every worker has received something: all subscriptions are live."""
    async with MqttSession(run.broker.endpoint(), client_id=f"{root}-probe") as session:
        async with asyncio.timeout(30):
            while True:
                session.publish(f"{root}/bench/probe", b"probe", qos=1)
                counts = [(await _scrape(http, port)).get("gasguard_ingest_messages_in_total", 0) for port in ports]
                if all(counts):
                    return
                await asyncio.sleep(0.2)


async def _count(conn: asyncpg.Connection, expected: int, *, timeout_s: float) -> list[tuple[float, int]]:
    samples: list[tuple[float, int]] = []
    last_growth = time.monotonic()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            while True:
                n: int = await conn.fetchval("SELECT count(*) FROM telemetry")
                now = time.monotonic()
                if not samples or n > samples[-1][1]:
                    last_growth = now
                samples.append((now, n))
                if n >= expected or now - last_growth > 20:
                    break
                await asyncio.sleep(COUNT_INTERVAL_S)
    if not samples or samples[-1][1] == 0:
        raise BenchError("ingest wrote no telemetry rows")
    return samples


@dataclass(frozen=True, slots=True)
class Report:
    """Figures of one run."""

    devices: int
    rounds: int
    publishers: int
    bare: ReceiveResult
    single: IngestRun
    shared: IngestRun
    duration_s: float
    load_before: tuple[float, float, float]


def render(report: Report) -> str:
    """The Markdown section."""
    bare = report.bare
    one, two = report.single, report.shared
    ratio = one.rows_per_s / bare.rate if bare.rate else 0.0
    worker = one.workers[0]
    rows = [
        (
            "bare gmqtt subscriber (no storage)",
            format_rate(bare.rate),
            format_rate(bare.publish_rate),
            f"{bare.received:,}/{bare.sent:,}",
            f"{bare.distinct:,}",
            "—",
            "—",
        ),
        (
            "ingest, 1 worker",
            format_rate(one.rows_per_s),
            format_rate(one.publish_rate),
            f"{one.rows:,}/{one.messages:,}",
            f"{one.distinct:,}",
            f"{ratio:.2f}",
            f"{worker.idle_rss_mb:.0f} MB idle, {worker.rss_mb:.0f} after (peak {worker.peak_rss_mb:.0f})",
        ),
        (
            "ingest, 2 workers, `$share/ingest/…`",
            format_rate(two.rows_per_s),
            format_rate(two.publish_rate),
            f"{two.rows:,}/{two.messages:,}",
            f"{two.distinct:,}",
            f"{two.rows_per_s / bare.rate:.2f}" if bare.rate else "—",
            " + ".join(f"{w.rss_mb:.0f}" for w in two.workers) + " MB",
        ),
    ]
    split = " / ".join(f"{w.messages_in:,}" for w in two.workers)
    per_10k = worker.idle_rss_mb / (worker.known_devices / 10_000) if worker.known_devices else 0.0
    gain = two.rows_per_s / one.rows_per_s - 1 if one.rows_per_s else 0.0
    scaling = (
        f"here the second worker changed throughput by {gain:+.0%}"
        if abs(gain) >= 0.1
        else "here a second worker added no throughput"
    )
    verdict_rate = "meets" if ratio >= TARGET_SHARE_OF_BARE else "misses"
    verdict_loss = (
        "zero loss, zero duplicates in both ingest runs"
        if one.complete and two.complete
        else "**LOSS OR DUPLICATES** — see the counts"
    )
    load = ", ".join(f"{v:.2f}" for v in report.load_before)
    return (
        "## Ingest at county scale (`python -m simulator.bench_ingest`)\n\n"
        f"{report.devices:,} registered devices, {report.rounds} readings each ({report.devices * report.rounds:,}"
        f" QoS 1 messages of protocol-v1 telemetry per run) from {report.publishers} publisher processes, through a"
        " private Mosquitto started with `deploy/mosquitto/mosquitto.conf` (only port and persistence moved),"
        " into a fresh PostgreSQL database. The three rows are from the same run on the same broker. Rates: the bare"
        " client's from its first to last message; ingest's from the first to the last committed row (sampled every"
        " 0.2 s)."
        f" Load average before the run: {load}; run time {report.duration_s:.0f} s.\n\n"
        + markdown_table(
            ("run", "rate (msg/s)", "publishers sent at", "stored / sent", "distinct", "÷ bare gmqtt", "ingest RSS"),
            rows,
        )
        + "\n\n"
        f"- Target ≥ {TARGET_SHARE_OF_BARE:.0%} of the bare gmqtt receive rate: ingest reaches {ratio:.0%}"
        f" ({verdict_rate} it). {verdict_loss}.\n"
        f"- Shared subscription: the broker split the stream {split} messages between the two workers (probes"
        " included); each reading was stored exactly once. On these 2 cores the broker, the publishers, PostgreSQL"
        f" and the workers share the CPUs ({scaling}); with cores to spare each"
        " worker adds up to its own single-worker rate until Mosquitto's single thread (the bare rate above) is"
        " the ceiling, and beyond that a clustered broker with shared subscriptions.\n"
        f"- Memory: ingest with {worker.known_devices:,} devices known held {worker.idle_rss_mb:.0f} MB RSS once"
        f" subscribed (≈ {per_10k:.1f} MB per 10,000 devices, interpreter included), {worker.rss_mb:.0f} MB after"
        f" the stream (peak {worker.peak_rss_mb:.0f} MB: per-device topic and sequence caches, up to"
        " `GG_RECEIVE_MAXIMUM` messages in flight, and freed memory the allocator keeps)."
        " The gateway was not run by this benchmark (it needs its own"
        f" device sources); target for both together: < {TARGET_RSS_MB} MB.\n"
    )


async def run_all(
    *,
    devices: int,
    rounds: int,
    publishers: int,
    admin_dsn: str,
    mosquitto: str,
    config: Path,
) -> Report:
    """Run the three measurements once on a private broker and database."""
    started = time.monotonic()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="gg-bench-ingest-") as tmp:
        workdir = Path(tmp)
        async with bench_database(admin_dsn) as dsn, bench_broker(mosquitto, config, workdir) as broker:
            await migrate(dsn)
            ids = await seed_devices(dsn, devices)
            _LOGGER.info("registered %d devices", len(ids))
            run = _Run(broker=broker, dsn=dsn, workdir=workdir)
            bare = await bench_receive(run, client="gmqtt", devices=ids, rounds=rounds, publishers=publishers)
            single = await bench_workers(run, workers=1, devices=ids, rounds=rounds, publishers=publishers)
            shared = await bench_workers(run, workers=2, devices=ids, rounds=rounds, publishers=publishers)
    return Report(
        devices=devices,
        rounds=rounds,
        publishers=publishers,
        bare=bare,
        single=single,
        shared=shared,
        duration_s=time.monotonic() - started,
        load_before=load_before,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Parse options, run once (bounded to 8 minutes), print and write the Markdown section."""
    parser = argparse.ArgumentParser(prog="python -m simulator.bench_ingest", description=__doc__)
    parser.add_argument("--devices", type=int, default=80_000)
    parser.add_argument("--rounds", type=int, default=2, help="readings per device in each measurement")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--admin-dsn", default=os.environ.get("GG_BENCH_ADMIN_DSN", DEFAULT_ADMIN_DSN))
    parser.add_argument("--mosquitto", default=DEFAULT_MOSQUITTO)
    parser.add_argument("--broker-config", type=Path, default=DEFAULT_BROKER_CONFIG)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    section: list[str] = []

    async def go() -> None:
        async with asyncio.timeout(480):
            report = await run_all(
                devices=args.devices,
                rounds=args.rounds,
                publishers=args.publishers,
                admin_dsn=args.admin_dsn,
                mosquitto=args.mosquitto,
                config=args.broker_config,
            )
        section.append(render(report))

    runtime.run(go, log_level="INFO")
    if not section:
        raise SystemExit(1)
    sys.stdout.write(section[0])
    args.output.write_text(section[0], encoding="utf-8")


if __name__ == "__main__":
    main()
