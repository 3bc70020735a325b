"""``gasguard`` command line: migrate, seed a demo county, and run everything in one process (``demo``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import typer

from gasguard.db import connect, migrate
from gasguard.embedded import (
    database_reachable,
    embedded_broker,
    embedded_postgres,
    mqtt_reachable,
    recreate_database,
)
from gasguard.runtime import run
from gasguard.settings import CommonSettings

app = typer.Typer(help="GasGuard 燃气安全平台: operations and the all-in-one demo.", no_args_is_help=True)
_LOGGER = logging.getLogger(__name__)

DEMO_DIR = Path("var/demo")
DEMO_SMS_KEY = ("gasguard-demo", "gasguard-demo-secret")
DEMO_DUTY_OPERATOR = "13900000001"
# Demo accounts only: the demo serves plain HTTP on loopback with synthetic data.
DEMO_PASSWORD = "gasguard-demo"


@app.command("migrate")
def migrate_command() -> None:
    """Bring the database in GG_DATABASE_URL to the latest schema."""
    settings = CommonSettings()
    run(lambda: migrate(settings.dsn()), log_level=settings.log_level)


@app.command("seed")
def seed_command(
    households: Annotated[int, typer.Option(min=10, max=40_000, help="How many households (NG and LPG).")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same county.")] = 0,
) -> None:
    """Fill an empty database with a demo county of Wushen Banner (乌审旗)."""
    settings = CommonSettings()

    async def _seed() -> None:
        conn = await connect(settings.dsn())
        try:
            await _seed_if_empty(conn, households=households, seed=seed)
        finally:
            await conn.close()

    run(_seed, log_level=settings.log_level)


@app.command("demo")
def demo_command(
    households: Annotated[int, typer.Option(min=10, max=40_000, help="Households in the demo county.")] = 500,
    leak_every: Annotated[float, typer.Option(min=0.5, help="Seconds between simulated leaks.")] = 5.0,
    port: Annotated[int, typer.Option(help="Port of the registry API.")] = 8000,
    sms_port: Annotated[int, typer.Option(help="Port of the local SMS provider sandbox.")] = 8086,
) -> None:
    """Run every service in one process with a simulated county; print each alarm -> valve -> SMS."""
    settings = CommonSettings()
    run(
        lambda: _demo(settings, households=households, leak_every=leak_every, port=port, sms_port=sms_port),
        log_level=settings.log_level,
    )


async def _seed_if_empty(conn: asyncpg.Connection, *, households: int, seed: int) -> None:
    from registry.auth import seed_demo_users
    from registry.demo_county import seed_demo_county

    existing = await conn.fetchval("SELECT count(*) FROM household")
    if existing:
        typer.echo(f"数据库已有 {existing} 户，跳过生成演示数据 (database already has {existing} households)")
    else:
        county = await seed_demo_county(conn, households=households, seed=seed)
        typer.echo(
            f"演示旗县已生成: {county.households} 户 (天然气 {county.ng_households}, 液化气 {county.lpg_households}), "
            f"{len(county.communities)} 个社区"
        )
    users = await seed_demo_users(conn, password=DEMO_PASSWORD)
    typer.echo(f"演示账号 (密码 {DEMO_PASSWORD}): " + ", ".join(f"{u.username}({u.role.value})" for u in users))


async def _demo(settings: CommonSettings, *, households: int, leak_every: float, port: int, sms_port: int) -> None:
    async with contextlib.AsyncExitStack() as stack:
        mqtt_url, protocol = settings.mqtt_url, settings.mqtt_protocol
        if not mqtt_url or not await mqtt_reachable(mqtt_url):
            if mqtt_url:
                typer.echo(f"MQTT broker {mqtt_url} 无法连接，改用内置 broker")
            mqtt_url, protocol = await stack.enter_async_context(embedded_broker()), "3.1.1"
            typer.echo(f"内置 MQTT broker (amqtt): {mqtt_url}")
        dsn = settings.database_url
        if not dsn or not await database_reachable(dsn):
            if dsn:
                typer.echo("数据库无法连接，改用内置 PostgreSQL")
            server = stack.enter_context(embedded_postgres(DEMO_DIR / "pgdata"))
            dsn = await recreate_database(server, "gasguard_demo")
            typer.echo(f"内置 PostgreSQL (pgserver): {DEMO_DIR / 'pgdata'}")
        await migrate(dsn)
        conn = await connect(dsn)
        try:
            await _seed_if_empty(conn, households=households, seed=0)
        finally:
            await conn.close()
        common: dict[str, Any] = {
            "mqtt_url": mqtt_url,
            "mqtt_protocol": protocol,
            "database_url": dsn,
            "topic_root": settings.topic_root,
            "log_level": settings.log_level,
        }
        await _run_services(common, dsn=dsn, leak_every=leak_every, port=port, sms_port=sms_port)


async def _run_services(common: dict[str, Any], *, dsn: str, leak_every: float, port: int, sms_port: int) -> None:
    # The one place where the services meet: each is still started through its own public entry point.
    from alerting.notifier import ALL_SMS_TEMPLATES, NotificationSettings
    from alerting.providers.voice import VOICE_SCRIPTS
    from alerting.service import Alerting
    from alerting.settings import AlertingSettings
    from gasguard.web import serve_asgi
    from gateway.service import Gateway
    from gateway.settings import GatewaySettings
    from ingest.service import Ingest
    from ingest.settings import IngestSettings
    from registry.app import serve as serve_registry
    from registry.settings import RegistrySettings
    from simulator.service import run as run_simulator
    from simulator.settings import SimulatorSettings
    from simulator.sms_platform import SmsPlatform

    sms = SmsPlatform(
        keys={DEMO_SMS_KEY[0]: DEMO_SMS_KEY[1]},
        sign_names=frozenset({AlertingSettings.model_fields["sms_sign_name"].default}),
        templates={t.code: t.text for t in ALL_SMS_TEMPLATES.values()},
        voice_scripts=dict(VOICE_SCRIPTS),
        # The sandbox pushes delivery reports back, as the real provider does, so "delivered" shows.
        push_urls={"aliyun": f"http://127.0.0.1:{sms_port + 1}/receipts/aliyun"},
        auto_push=True,
    )
    alerting = Alerting(
        AlertingSettings(
            **common,
            sms_endpoint=f"http://127.0.0.1:{sms_port}/",
            sms_access_key_id=DEMO_SMS_KEY[0],
            sms_access_key_secret=DEMO_SMS_KEY[1],
            spool_dir=str(DEMO_DIR / "alerting-spool"),
            duty_operator_phones=[DEMO_DUTY_OPERATOR],
        ),
        notify=NotificationSettings(receipts_port=sms_port + 1),
    )
    ingest = Ingest(IngestSettings(**common, spool_dir=str(DEMO_DIR / "ingest-spool")))
    async with asyncio.TaskGroup() as tg:
        sms_ready, ingest_ready, api_ready = asyncio.Event(), asyncio.Event(), asyncio.Event()
        tg.create_task(serve_asgi(sms.app(), host="127.0.0.1", port=sms_port, ready=sms_ready), name="demo.sms")
        await sms_ready.wait()
        tg.create_task(ingest.run(ready=ingest_ready), name="demo.ingest")
        tg.create_task(alerting.run(), name="demo.alerting")
        gateway = Gateway(GatewaySettings(**common, http_port=sms_port + 2))
        tg.create_task(gateway.run(), name="demo.gateway")
        await asyncio.gather(ingest_ready.wait(), alerting.ready.wait(), gateway.ready.wait())
        registry_settings = RegistrySettings(**common, port=port, cookie_secure=False)
        tg.create_task(serve_registry(registry_settings, ready=api_ready), name="demo.registry")
        await api_ready.wait()
        simulator = SimulatorSettings(
            **common, sim_id="demo", leak_interval_s=leak_every, telemetry_period_s=60.0, valve_close_s=1.0
        )
        tg.create_task(run_simulator(simulator), name="demo.simulator")
        typer.echo(f"GasGuard 演示已启动: 监控平台 http://127.0.0.1:{port}/ui/ (用上面的演示账号登录)")
        typer.echo(f"API http://127.0.0.1:{port}/health  文档 http://127.0.0.1:{port}/docs")
        typer.echo(f"网关 (NB-IoT 推送 / 隔离区): http://127.0.0.1:{sms_port + 2}/quarantine")
        typer.echo(f"模拟泄漏每 {leak_every:g} 秒一次；按 Ctrl-C 停止。")
        tg.create_task(_report_loop(dsn), name="demo.report_loop")


_REPORT_SQL = """
SELECT o.id AS outbox_id, i.kind, i.alarm_device_id, i.alarm_lel,
       i.alarm_received_at, i.command_sent_at, i.valve_closed_at,
       o.sent_at, o.recipient, o.params->>'valve' AS valve_text,
       c.name AS community, h.building, h.unit, h.room
FROM incident i
JOIN household h ON h.id = i.household_id
JOIN community c ON c.code = h.community_code
JOIN notification_outbox o ON o.incident_id = i.id AND o.status IN ('sent', 'delivered')
     AND (o.recipient_role = 'resident' OR i.kind <> 'gas_alarm')
WHERE o.sent_at > now() - interval '10 minutes'
ORDER BY o.sent_at
"""


def _ms(later: Any, earlier: Any) -> str:
    if later is None or earlier is None:
        return "—"
    return f"{(later - earlier).total_seconds() * 1000:.0f} ms"


async def _report_loop(dsn: str) -> None:
    """Print one line per alarm that went all the way to an SMS (read back from the records)."""
    printed: set[int] = set()
    conn: asyncpg.Connection | None = None
    while True:
        await asyncio.sleep(0.5)
        try:
            if conn is None or conn.is_closed():
                conn = await connect(dsn)
            rows = [r for r in await conn.fetch(_REPORT_SQL) if r["outbox_id"] not in printed]
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            conn = None
            continue
        for r in rows:
            printed.add(r["outbox_id"])
            place = f"{r['community']}{r['building']}{r['unit']}{r['room']}"
            phone = f"{r['recipient'][:3]}****{r['recipient'][-4:]}"
            if r["kind"] == "gas_alarm":
                typer.echo(
                    f"报警 {r['alarm_device_id']} {place} {r['alarm_lel']:.0f}%LEL"
                    f" → 关阀指令 +{_ms(r['command_sent_at'], r['alarm_received_at'])}"
                    f" → 阀门{r['valve_text'] or ''} +{_ms(r['valve_closed_at'], r['alarm_received_at'])}"
                    f" → 短信已发 {phone} +{_ms(r['sent_at'], r['alarm_received_at'])}"
                )
            else:
                typer.echo(f"严重: {place} 切断阀未确认关闭 → 值班员短信已发 {phone}")
