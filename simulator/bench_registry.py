"""Registry benchmark: ``python -m simulator.bench_registry``.

Measures, on fresh databases ``gg_benchreg_<random>_<stage>`` of the local PostgreSQL (dropped at the end):

1. roster import: a generated 40,000-household roster (CSV and XLSX, the importer's Chinese headers) read
   with `registry.rosters.parse_roster` and committed with `registry.rosters.import_roster_checked`;
2. API latency: ``python -m registry`` as its own process over a 40,000-household demo county, driven by
   32 concurrent ``httpx.AsyncClient`` clients with bearer tokens, a fixed number of requests per endpoint.

It prints a Markdown report and writes it to ``docs/benchmarks-registry.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import logging
import os
import platform
import random
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, cast

import asyncpg
import httpx
from openpyxl import Workbook
from pydantic import TypeAdapter

from gasguard.db import connect, migrate
from gasguard.embedded import free_tcp_port, with_database
from registry import queries
from registry.auth import Role, create_user, issue_token, scope_for
from registry.demo_county import LPG_SUPPLIERS, NG_SUPPLIER, TOWNS, community_codes, seed_demo_county
from registry.deps import CursorCodec
from registry.rosters import HEADERS, import_roster_checked, parse_roster
from simulator.bench import (
    PROJECT_ROOT,
    LatencyStats,
    child_env,
    child_process,
    format_ms,
    format_rate,
    markdown_table,
    per_second,
)

_LOGGER = logging.getLogger("simulator.bench_registry")

DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_OUTPUT = PROJECT_ROOT / "docs" / "benchmarks-registry.md"
IMPORT_TARGET_S = 20.0
P99_TARGET_S = 0.050
PERIOD = date(2024, 5, 1)
TODAY = date(2024, 5, 8)

_SURNAMES = (
    "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗梁宋郑谢韩唐冯于董萧程曹袁邓许傅沈曾彭吕苏卢蒋蔡贾丁魏薛叶阎"
    "余潘杜戴夏钟汪田任姜范方石姚谭廖邹熊金陆郝孔白崔康毛邱秦江史顾侯邵孟龙万段雷钱汤尹黎易常武乔贺赖龚文"
)
_GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华玉萍红娥玲芬燕彬鹏辉斌宇浩凯健俊帆帅旭宁龙林欣蕾薇琳晨"
_MONGOL_NAMES = ("巴特尔", "其木格", "乌日娜", "额尔敦", "娜仁花", "斯琴", "宝音", "苏和", "阿拉坦", "萨仁高娃")


# --------------------------------------------------------------------------------------- machine


@dataclass(frozen=True, slots=True)
class Machine:
    """What the figures were measured on."""

    cpu_model: str
    cores: int
    memory_gib: float
    kernel: str
    python: str
    postgresql: str
    load_before: tuple[float, float, float]
    code: str


def _cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    """Total RAM in GiB from /proc/meminfo."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return 0.0


async def _code_version() -> str:
    """The commit measured (``git rev-parse`` only: nothing in the checkout is touched)."""
    with contextlib.suppress(OSError):
        process = await asyncio.create_subprocess_exec(
            "git",
            "rev-parse",
            "--short",
            "HEAD",
            cwd=PROJECT_ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await process.communicate()
        if process.returncode == 0:
            return out.decode().strip()
    return "unknown"


async def machine_info(admin_dsn: str) -> Machine:
    """Collect the machine, the software versions and the load before the run."""
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        server: str = await conn.fetchval("SELECT version()")
    finally:
        await conn.close()
    return Machine(
        cpu_model=_cpu_model(),
        cores=os.cpu_count() or 0,
        memory_gib=_memory_gib(),
        kernel=platform.release(),
        python=platform.python_version(),
        postgresql=server.split(" on ", 1)[0],
        load_before=os.getloadavg(),
        code=await _code_version(),
    )


# --------------------------------------------------------------------------------------- database


@contextlib.asynccontextmanager
async def fresh_database(admin_dsn: str, stage: str) -> AsyncIterator[str]:
    """A fresh, migrated database ``gg_benchreg_<random>_<stage>``; dropped at the end, even on error."""
    name = f"gg_benchreg_{secrets.token_hex(4)}_{stage}"
    admin = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    _LOGGER.info("created database %s", name)
    try:
        dsn = with_database(admin_dsn, name)
        await migrate(dsn)
        yield dsn
    finally:
        admin = await asyncpg.connect(admin_dsn, timeout=10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', timeout=60)
        finally:
            await admin.close()
        _LOGGER.info("dropped database %s", name)


# --------------------------------------------------------------------------------------- 1. roster import


def roster_rows(count: int, *, seed: int = 1) -> list[list[str]]:
    """``count`` valid, distinct roster rows spread over the 18 programme communities like the demo county."""
    rng = random.Random(seed)
    codes = [code for code, _, _ in community_codes()]
    seat = {code for code, town, _ in community_codes() if town == TOWNS[0].code}
    per_community: Counter[str] = Counter()
    phones: set[str] = set()
    rows: list[list[str]] = []
    weights = [4.0 if code in seat else 1.0 for code in codes]
    for community in rng.choices(codes, weights=weights, k=count):
        n = per_community[community]
        per_community[community] += 1
        # 5 units of 10 floors with 2 flats per floor per building: 100 households a building.
        building, rest = divmod(n, 100)
        unit, rest = divmod(rest, 20)
        floor, flat = divmod(rest, 2)
        lpg = rng.random() < (0.05 if community in seat else 0.35)
        while True:
            phone = f"1{rng.choice('3456789')}{rng.randrange(10**9):09d}"
            if phone not in phones:
                phones.add(phone)
                break
        if rng.random() < 0.1:
            name = rng.choice(_MONGOL_NAMES)
        else:
            name = rng.choice(_SURNAMES) + "".join(rng.choice(_GIVEN) for _ in range(rng.choice((1, 2))))
        connected = "" if rng.random() < 0.2 else date(2018 + rng.randrange(6), 1 + rng.randrange(12), 1).isoformat()
        rows.append(
            [
                community,
                str(building + 1),
                str(unit + 1),
                f"{floor + 1}{flat + 1:02d}",
                "液化石油气" if lpg else "天然气",
                rng.choice(LPG_SUPPLIERS) if lpg else NG_SUPPLIER,
                name,
                phone,
                connected,
            ]
        )
    return rows


def as_csv(rows: Sequence[Sequence[str]]) -> bytes:
    """A UTF-8 CSV with the Chinese headers, as a community's spreadsheet exports it."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(HEADERS)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def as_xlsx(rows: Sequence[Sequence[str]]) -> bytes:
    """An XLSX with the Chinese headers (dates as real dates, as Excel stores them)."""
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("花名册")
    sheet.append(list(HEADERS))
    for row in rows:
        connected: date | str = date.fromisoformat(row[8]) if row[8] else ""
        sheet.append([*row[:8], connected])
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


@dataclass(frozen=True, slots=True)
class ImportRun:
    """One timed roster import."""

    label: str
    file_bytes: int
    rows: int
    parse_s: float
    import_s: float
    inserted: int
    updated: int
    unchanged: int
    errors: int
    households_after: int
    entries_after: int

    @property
    def total_s(self) -> float:
        """Parse plus import, end to end."""
        return self.parse_s + self.import_s


async def _add_places(conn: asyncpg.Connection) -> None:
    """The towns and the programme's communities, as `seed_demo_county` writes them."""
    await conn.executemany(
        "INSERT INTO town (code, name) VALUES ($1, $2) ON CONFLICT DO NOTHING", [(t.code, t.name) for t in TOWNS]
    )
    await conn.executemany(
        "INSERT INTO community (code, town_code, name, synthetic) VALUES ($1, $2, $3, true) ON CONFLICT DO NOTHING",
        community_codes(),
    )


async def _timed_import(conn: asyncpg.Connection, label: str, data: bytes, filename: str) -> ImportRun:
    """Parse and import one file, then count what the database holds."""
    start = time.perf_counter()
    parsed = parse_roster(data, filename)
    parsed_at = time.perf_counter()
    result = await import_roster_checked(
        conn, parsed=parsed, filename=filename, period=PERIOD, actor="user:bench", today=TODAY
    )
    done = time.perf_counter()
    if result.errors:
        _LOGGER.error("import %s rejected; first errors: %s", label, result.errors[:5])
    households: int = await conn.fetchval("SELECT count(*) FROM household")
    entries: int = await conn.fetchval(
        "SELECT count(*) FROM roster_entry WHERE batch_id = $1", result.batch_id if result.batch_id else -1
    )
    run = ImportRun(
        label=label,
        file_bytes=len(data),
        rows=result.row_count,
        parse_s=parsed_at - start,
        import_s=done - parsed_at,
        inserted=result.inserted,
        updated=result.updated,
        unchanged=result.unchanged,
        errors=len(result.errors),
        households_after=households,
        entries_after=entries,
    )
    _LOGGER.info("%s: %d rows in %.2f s", label, run.rows, run.total_s)
    return run


async def bench_imports(admin_dsn: str, households: int) -> list[ImportRun]:
    """CSV and XLSX into empty registries, then the XLSX again over the CSV's rows (all unchanged)."""
    rows = roster_rows(households)
    csv_data = as_csv(rows)
    xlsx_data = await asyncio.to_thread(as_xlsx, rows)
    runs: list[ImportRun] = []
    async with fresh_database(admin_dsn, "csv") as dsn:
        conn = await connect(dsn)
        try:
            await _add_places(conn)
            runs.append(await _timed_import(conn, "CSV, new households", csv_data, "roster.csv"))
            runs.append(await _timed_import(conn, "XLSX, same rows again (re-import)", xlsx_data, "roster.xlsx"))
        finally:
            await conn.close()
    async with fresh_database(admin_dsn, "xlsx") as dsn:
        conn = await connect(dsn)
        try:
            await _add_places(conn)
            runs.insert(1, await _timed_import(conn, "XLSX, new households", xlsx_data, "roster.xlsx"))
        finally:
            await conn.close()
    return runs


# --------------------------------------------------------------------------------------- 2. API latency


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One measured request shape."""

    label: str
    path: str
    params: dict[str, str]
    token: str


@dataclass(slots=True)
class EndpointResult:
    """Latencies and status codes of one endpoint's measured requests."""

    endpoint: Endpoint
    latency: LatencyStats
    wall_s: float
    statuses: Counter[int]
    server_cpu_s: float
    explain: str = ""

    @property
    def non_200(self) -> int:
        """Answers other than 200 (must be none)."""
        return sum(n for code, n in self.statuses.items() if code != 200)


@dataclass(frozen=True, slots=True)
class ApiSetup:
    """What the API stage ran against."""

    households: int
    devices: int
    incidents: int
    community: str
    cursor_after: int


@dataclass(slots=True)
class ApiRun:
    """The API stage's figures."""

    setup: ApiSetup
    results: list[EndpointResult] = field(default_factory=list)
    startup_s: float = 0.0


async def _seed_incidents(conn: asyncpg.Connection, count: int, open_count: int) -> int:
    """Closed alarm incidents over the last year on random NG households, ``open_count`` still open."""
    await conn.execute(
        """
        INSERT INTO incident (household_id, kind, severity, state, alarm_device_id, alarm_state, alarm_lel,
                              alarm_device_ts, alarm_received_at, command_sent_at, valve_closed_at, opened_at,
                              closed_at, disposition)
        SELECT a.household_id, 'gas_alarm', 'critical', 'CLOSED', a.id, 'alarm', 12 + random() * 30,
               t, t, t + interval '5 ms', t + interval '1 s', t, t + interval '2 h', 'false_alarm_cooking'
        FROM (SELECT d.id, d.household_id, now() - random() * interval '365 days' AS t
              FROM device d JOIN device_model m ON m.id = d.model_id
              WHERE m.kind = 'alarm' ORDER BY random() LIMIT $1) a
        """,
        count - open_count,
    )
    await conn.execute(
        """
        INSERT INTO incident (household_id, kind, severity, state, alarm_device_id, alarm_state, alarm_lel,
                              alarm_device_ts, alarm_received_at, command_sent_at, valve_closed_at, opened_at)
        SELECT a.household_id, 'gas_alarm', 'critical', 'NOTIFIED', a.id, 'alarm', 25, t, t, t, t + interval '1 s', t
        FROM (SELECT d.id, d.household_id, now() - random() * interval '2 days' AS t
              FROM device d JOIN device_model m ON m.id = d.model_id
              WHERE m.kind = 'alarm' ORDER BY random() LIMIT $1) a
        """,
        open_count,
    )
    total: int = await conn.fetchval("SELECT count(*) FROM incident")
    return total


async def _wait_healthy(base_url: str, deadline_s: float) -> None:
    """Poll /health until it answers 200."""
    deadline = time.monotonic() + deadline_s
    async with httpx.AsyncClient(base_url=base_url, timeout=2.0) as http:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/health")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"registry API at {base_url} not healthy after {deadline_s:g} s")
            await asyncio.sleep(0.1)


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drive(
    base_url: str, endpoint: Endpoint, *, requests: int, concurrency: int, budget_s: float
) -> tuple[list[float], Counter[int], float]:
    """``requests`` GETs from ``concurrency`` clients, none started after ``budget_s``; latencies, statuses, wall."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    remaining = requests
    headers = {"Authorization": f"Bearer {endpoint.token}"}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)

    async def client() -> None:
        nonlocal remaining
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30.0, limits=limits) as http:
            while remaining > 0 and time.perf_counter() < deadline:
                remaining -= 1
                start = time.perf_counter()
                try:
                    response = await http.get(endpoint.path, params=endpoint.params)
                    statuses[response.status_code] += 1
                except httpx.HTTPError:
                    statuses[0] += 1
                latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    deadline = start + budget_s
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(client())
    return latencies, statuses, time.perf_counter() - start


class _CaptureConn:
    """Stands in for a connection to record the SQL a `registry.queries` function would run."""

    def __init__(self) -> None:
        self.sql = ""
        self.args: tuple[Any, ...] = ()

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        """Record the statement instead of running it."""
        self.sql, self.args = sql, args
        return []


async def _explain(conn: asyncpg.Connection, endpoint: Endpoint, setup: ApiSetup) -> str:
    """EXPLAIN ANALYZE of the list query behind ``endpoint`` (as the admin sees it)."""
    capture = _CaptureConn()
    fake = cast(queries.Conn, capture)
    path = endpoint.path
    params = endpoint.params
    if path == "/households":
        await queries.list_households(
            conn=fake,
            limit=51,
            after=setup.cursor_after if "cursor" in params else None,
            community_code=params.get("community_code"),
            gas_type=params.get("gas_type"),
        )
    elif path == "/devices":
        await queries.list_devices(conn=fake, limit=51, kind=params.get("kind"))
    elif path == "/incidents":
        await queries.list_incidents(conn=fake, limit=51)
    else:
        return ""
    plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {capture.sql}", *capture.args)
    return "\n".join(str(row[0]) for row in plan)


async def bench_api(
    admin_dsn: str,
    *,
    households: int,
    requests: int,
    warmup: int,
    concurrency: int,
    budget_s: float,
    workdir: Path,
) -> ApiRun:
    """Serve a seeded county from ``python -m registry`` and measure every endpoint in turn."""
    async with fresh_database(admin_dsn, "api") as dsn:
        conn = await connect(dsn)
        try:
            county = await seed_demo_county(conn, households=households, seed=7)
            incidents = await _seed_incidents(conn, count=5_000, open_count=120)
            community = county.communities[0].code
            admin = await create_user(
                conn, username="bench-admin", password=None, display_name="bench", role=Role.ADMIN
            )
            staff = await create_user(
                conn,
                username="bench-shequ",
                password=None,
                display_name="bench",
                role=Role.COMMUNITY_STAFF,
                community_code=community,
            )
            admin_token = await issue_token(conn, user_id=admin.id, name="bench")
            staff_token = await issue_token(conn, user_id=staff.id, name="bench")
            await conn.execute("ANALYZE")
            assert scope_for(staff).community_code == community

            port = free_tcp_port()
            base_url = f"http://127.0.0.1:{port}"
            env = child_env({"GG_DATABASE_URL": dsn, "GG_REGISTRY_PORT": str(port), "GG_LOG_LEVEL": "WARNING"})
            started = time.perf_counter()
            async with child_process(
                "registry",
                [sys.executable, "-m", "registry"],
                log_path=workdir / "registry.log",
                cwd=PROJECT_ROOT,
                env=env,
            ) as server:
                await _wait_healthy(base_url, deadline_s=30)
                startup_s = time.perf_counter() - started
                # A later page: the cursor half-way through the county, encoded as the households route does.
                cursor_after: int = await conn.fetchval(
                    "SELECT id FROM household ORDER BY id OFFSET $1 LIMIT 1", households // 2
                )
                cursor = CursorCodec(TypeAdapter(tuple[int])).encode((cursor_after,))
                setup = ApiSetup(
                    households=await conn.fetchval("SELECT count(*) FROM household"),
                    devices=await conn.fetchval("SELECT count(*) FROM device"),
                    incidents=incidents,
                    community=community,
                    cursor_after=cursor_after,
                )
                run = ApiRun(setup=setup, startup_s=startup_s)
                endpoints = (
                    Endpoint("GET /households (first page)", "/households", {}, admin_token),
                    Endpoint(
                        "GET /households?community_code&gas_type=NG",
                        "/households",
                        {"community_code": community, "gas_type": "NG"},
                        admin_token,
                    ),
                    Endpoint("GET /households (community staff, scoped)", "/households", {}, staff_token),
                    Endpoint(
                        f"GET /households?cursor (after id {cursor_after})",
                        "/households",
                        {"cursor": cursor},
                        admin_token,
                    ),
                    Endpoint("GET /devices?kind=alarm", "/devices", {"kind": "alarm"}, admin_token),
                    Endpoint("GET /incidents", "/incidents", {}, admin_token),
                    Endpoint("GET /progress", "/progress", {}, admin_token),
                )
                pid = server.process.pid
                for endpoint in endpoints:
                    await _drive(base_url, endpoint, requests=warmup, concurrency=concurrency, budget_s=budget_s / 4)
                    cpu_before = _cpu_seconds(pid)
                    latencies, statuses, wall = await _drive(
                        base_url, endpoint, requests=requests, concurrency=concurrency, budget_s=budget_s
                    )
                    result = EndpointResult(
                        endpoint=endpoint,
                        latency=LatencyStats.of(latencies),
                        wall_s=wall,
                        statuses=statuses,
                        server_cpu_s=_cpu_seconds(pid) - cpu_before,
                    )
                    result.explain = await _explain(conn, endpoint, setup)
                    run.results.append(result)
                    _LOGGER.info(
                        "%s: %d done, p50 %s p99 %s, %s, non-200 %d",
                        endpoint.label,
                        result.latency.count,
                        format_ms(result.latency.p50),
                        format_ms(result.latency.p99),
                        format_rate(per_second(result.latency.count, wall)),
                        result.non_200,
                    )
            return run
        finally:
            await conn.close()


# --------------------------------------------------------------------------------------- report


def _yes(ok: bool) -> str:
    """A target verdict."""
    return "yes" if ok else "**no**"


def _plan_time(explain: str) -> str:
    """The 'Execution Time' line of an EXPLAIN ANALYZE, or a dash."""
    for line in explain.splitlines():
        if line.startswith("Execution Time:"):
            return line.removeprefix("Execution Time:").strip()
    return "–"


def render_report(
    machine: Machine,
    imports: Sequence[ImportRun],
    api: ApiRun,
    *,
    requests: int,
    warmup: int,
    concurrency: int,
    budget_s: float,
    run_s: float,
    when: datetime,
) -> str:
    """The Markdown report."""
    out: list[str] = [
        "# Registry benchmarks",
        "",
        f"Generated by `python -m simulator.bench_registry` on {when:%Y-%m-%d %H:%M} UTC (code {machine.code}); "
        f"the whole run took {run_s:.0f} s.",
        "",
        "## Machine",
        "",
        markdown_table(
            ("", ""),
            (
                ("CPU", machine.cpu_model),
                ("Cores", machine.cores),
                ("RAM", f"{machine.memory_gib:.1f} GiB"),
                ("Kernel", machine.kernel),
                ("Python", machine.python),
                ("PostgreSQL", machine.postgresql),
                ("Load average before the run", " / ".join(f"{x:.2f}" for x in machine.load_before)),
            ),
        ),
        "",
        "Everything ran on this one machine over loopback: PostgreSQL (stock settings), the registry API and the",
        "load generator share the cores, so the figures are an upper bound of what a dedicated server would show.",
        "",
        "## 1. Roster import (花名册)",
        "",
        f"**Method.** A generated roster of {imports[0].rows:,} households over the programme's 18 communities "
        "(deterministic seed; realistic Chinese and Mongolian names, unique mobile numbers, about 10% LPG, 20% "
        "without a gas-connection date; 100 flats per building) is written as a UTF-8 CSV and as an XLSX "
        "(openpyxl, dates as Excel dates) with the importer's Chinese headers. Each file is read with "
        "`parse_roster` and committed with `import_roster_checked` (COPY into the staging table, set-wise "
        "validation, upsert, batch and entry rows) on one connection to a fresh, migrated database holding "
        "only the towns and communities. Timed end to end from bytes in memory to commit; afterwards the "
        "households and the batch's roster entries are counted. The third row imports the XLSX again over the "
        "CSV's households: same rows, different file, so every row is compared and counted unchanged.",
        "",
        markdown_table(
            (
                "Import",
                "File",
                "Rows",
                "Parse",
                "Validate + commit",
                "Total",
                "Rows/s",
                "New / updated / unchanged",
                "Errors",
                "Households after",
                "Entries",
                f"< {IMPORT_TARGET_S:g} s",
            ),
            [
                (
                    run.label,
                    f"{run.file_bytes / 1e6:.1f} MB",
                    f"{run.rows:,}",
                    f"{run.parse_s:.2f} s",
                    f"{run.import_s:.2f} s",
                    f"{run.total_s:.2f} s",
                    format_rate(per_second(run.rows, run.total_s)),
                    f"{run.inserted:,} / {run.updated:,} / {run.unchanged:,}",
                    run.errors,
                    f"{run.households_after:,}",
                    f"{run.entries_after:,}",
                    _yes(run.total_s < IMPORT_TARGET_S and run.errors == 0),
                )
                for run in imports
            ],
        ),
        "",
    ]
    slowest = max(imports, key=lambda r: r.total_s)
    verified = all(r.errors == 0 and r.households_after == r.rows and r.entries_after == r.rows for r in imports)
    out += [
        f"**What this means.** A county-sized monthly batch ({imports[0].rows:,} households, far more than one "
        f"community ever sends) imports in at most {slowest.total_s:.1f} s ({slowest.label}), "
        + (
            f"well inside the {IMPORT_TARGET_S:g} s target"
            if slowest.total_s < IMPORT_TARGET_S
            else f"**missing** the {IMPORT_TARGET_S:g} s target"
        )
        + ". "
        + (
            "Every row arrived: the household count and the batch's roster entries equal the row count. "
            if verified
            else "**The counts after the import do not match the rows; see the table.** "
        )
        + "Reading the file is a small share of the time (python-calamine for XLSX); most of it is the "
        "single transaction's COPY, validation and upsert. An HTTP upload adds only the transfer of the file.",
        "",
        "## 2. Registry API latency",
        "",
        f"**Method.** A fresh database with the demo county of {api.setup.households:,} households "
        f"({api.setup.devices:,} devices) and {api.setup.incidents:,} incidents (closed alarm incidents spread "
        "over a year, 120 still open), analysed. `python -m registry` runs as its own process (one uvicorn "
        "worker, default pool of 10 connections, log level WARNING) on a free loopback port; it was healthy "
        f"{api.startup_s:.1f} s after start. The benchmark process drives it with {concurrency} concurrent "
        f"`httpx.AsyncClient` clients (one keep-alive connection each) authenticated with bearer tokens of an "
        "admin and of a community-staff user (created with `create_user`/`issue_token`). Per endpoint: "
        f"{warmup:,} warm-up requests, then {requests:,} measured requests (no new request after "
        f"{budget_s:g} s, warm-up {budget_s / 4:g} s, to bound the run); latency is measured in the client "
        "from send to full response. The default page size (50) is used; each household list also counts its "
        f"total. The later page is the cursor after household {api.setup.cursor_after:,} (half-way through). "
        "Server CPU is the registry process's user+system time during the measured requests; SQL is "
        "`EXPLAIN ANALYZE` of the page query alone, run once afterwards.",
        "",
        markdown_table(
            (
                "Endpoint",
                "Requests done",
                "p50",
                "p90",
                "p99",
                "max",
                "Requests/s",
                "Server CPU/request",
                "SQL",
                "Non-200",
                "p99 < 50 ms",
            ),
            [
                (
                    r.endpoint.label,
                    f"{r.latency.count:,}" if r.latency.count >= requests else f"**{r.latency.count:,}** (budget)",
                    format_ms(r.latency.p50),
                    format_ms(r.latency.p90),
                    format_ms(r.latency.p99),
                    format_ms(r.latency.maximum),
                    format_rate(per_second(r.latency.count, r.wall_s)),
                    format_ms(r.server_cpu_s / r.latency.count),
                    _plan_time(r.explain),
                    r.non_200 if r.non_200 == 0 else f"**{r.non_200}** {dict(r.statuses)}",
                    _yes(r.latency.p99 < P99_TARGET_S),
                )
                for r in api.results
            ],
        ),
        "",
    ]
    missed = [r for r in api.results if r.latency.p99 >= P99_TARGET_S]
    short = [r for r in api.results if r.latency.count < requests]
    errors = sum(r.non_200 for r in api.results)
    worst = max(api.results, key=lambda r: r.latency.p99)
    out.append(
        f"**What this means.** With {concurrency} clients at once — far more than the county's operators and "
        f"community staff will ever put on the API together — the worst p99 is {format_ms(worst.latency.p99)} "
        f"({worst.endpoint.label}); "
        + (
            f"every endpoint meets the {P99_TARGET_S * 1000:g} ms p99 target. "
            if not missed
            else f"**{len(missed)} endpoint(s) miss the {P99_TARGET_S * 1000:g} ms p99 target** (plans below). "
        )
        + (
            f"All {sum(r.latency.count for r in api.results):,} measured answers were 200. "
            if errors == 0
            else f"**{errors} answers were not 200.** "
        )
        + (
            f"{len(short)} endpoint(s) were too slow to complete {requests:,} requests within the "
            f"{budget_s:g} s budget per endpoint that keeps the run under five minutes; their figures come from "
            "the requests that did complete (503 = no pooled connection within the API's 2 s database timeout). "
            if short
            else ""
        )
        + f"Load average after the run: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}. "
        + "With requests queued 32 deep on one worker, p50 is mostly waiting time: the server CPU per request "
        "shows the actual cost, and requests/s is the throughput of one uvicorn process (add workers or "
        "processes to scale). `/progress` is served from a 15-second per-process cache, so it measures the "
        "cached path, not the 40,000-household aggregation."
    )
    for r in missed:
        if r.explain:
            out += ["", f"Plan of the page query behind {r.endpoint.label}:", "", "```", r.explain, "```"]
    out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------------------- main


@dataclass(frozen=True, slots=True)
class Options:
    """Command-line options."""

    admin_dsn: str
    households: int
    requests: int
    warmup: int
    concurrency: int
    budget_s: float
    output: Path


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m simulator.bench_registry", description=__doc__.split("\n")[0])
    parser.add_argument("--admin-dsn", default=DEFAULT_ADMIN_DSN, help="PostgreSQL server to create databases on")
    parser.add_argument("--households", type=int, default=40_000)
    parser.add_argument("--requests", type=int, default=2_000, help="measured requests per endpoint")
    parser.add_argument("--warmup", type=int, default=100, help="warm-up requests per endpoint")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--budget-s", type=float, default=20.0, help="no new request of an endpoint after this (bounds the run)"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    ns = parser.parse_args(argv)
    return Options(ns.admin_dsn, ns.households, ns.requests, ns.warmup, ns.concurrency, ns.budget_s, ns.output)


async def run(options: Options) -> str:
    """Run both stages and return the report."""
    started = time.perf_counter()
    when = datetime.now(UTC)
    machine = await machine_info(options.admin_dsn)
    imports = await bench_imports(options.admin_dsn, options.households)
    with tempfile.TemporaryDirectory(prefix="gg-benchreg-") as tmp:
        try:
            api = await bench_api(
                options.admin_dsn,
                households=options.households,
                requests=options.requests,
                warmup=options.warmup,
                concurrency=options.concurrency,
                budget_s=options.budget_s,
                workdir=Path(tmp),
            )
        except BaseException:
            log = Path(tmp) / "registry.log"
            if log.exists():
                _LOGGER.exception("registry log:\n%s", log.read_text()[-4000:])
            raise
    return render_report(
        machine,
        imports,
        api,
        requests=options.requests,
        warmup=options.warmup,
        concurrency=options.concurrency,
        budget_s=options.budget_s,
        run_s=time.perf_counter() - started,
        when=when,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark, write the Markdown file and print it."""
    options = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("httpx", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    report = asyncio.run(asyncio.wait_for(run(options), timeout=300))
    options.output.write_text(report, encoding="utf-8")
    sys.stdout.write(report)


if __name__ == "__main__":
    main()
