"""Delivery-receipt push endpoint: a small FastAPI app the alerting service serves on its own port.

Routes, one per provider, each answering in the provider's expected way:

- ``POST /receipts/aliyun``        Aliyun SmsReport (JSON array) → ``{"code": 0, "msg": "接收成功"}``
- ``POST /receipts/aliyun-voice``  Aliyun VoiceReport (JSON array) → ``{"code": 0, "msg": "接收成功"}``
- ``POST /receipts/tencent``       Tencent status callback (JSON array) → ``{"result": 0, "errmsg": "OK"}``
- ``POST /receipts/generic``       generic gateway report (object or array) → ``{"code": 0}``

A receipt is applied idempotently (`alerting.notifier.apply_receipt`): a repeated push changes nothing.
Unreadable input is answered 400 and kept in ``dead_letter`` with the reason; while the database is
unreachable the answer is 503, so the provider pushes again later (and polling reconciles the rest).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, TypeAdapter, ValidationError

from alerting.notifier import FallbackPolicy, NotificationSettings, apply_receipt
from alerting.providers.aliyun import AliyunSmsReport
from alerting.providers.base import Receipt
from alerting.providers.generic_gateway import GatewayReport
from alerting.providers.tencent import TencentSmsReport
from alerting.providers.voice import VoiceReport
from alerting.recorder import TRANSIENT_DB_ERRORS
from gasguard.clock import utcnow
from gasguard.db import open_pool
from gasguard.web import serve_asgi

if TYPE_CHECKING:
    from alerting.settings import AlertingSettings

_LOGGER = logging.getLogger(__name__)

_UNREACHABLE: tuple[type[BaseException], ...] = (*TRANSIENT_DB_ERRORS, OSError)
_OK_ALIYUN = {"code": 0, "msg": "接收成功"}


class _Route:
    """How one provider's pushes are read and answered."""

    def __init__(
        self, model: type[BaseModel], ok: dict[str, Any], error: Callable[[str], dict[str, Any]], *, single: bool
    ) -> None:
        self.adapter: TypeAdapter[list[Any]] = TypeAdapter(list[model])  # type: ignore[valid-type]
        self.ok = ok
        self.error = error
        self.single = single

    def parse(self, body: bytes) -> list[Receipt]:
        """The receipts in a pushed body; raises ValueError with the reason."""
        try:
            data = json.loads(body)
        except ValueError as err:
            raise ValueError(f"body is not JSON: {err}") from err
        if self.single and isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            raise ValueError("expected a JSON array of reports")  # noqa: TRY004 - a reason for the sender
        try:
            reports = self.adapter.validate_python(data)
        except ValidationError as err:
            raise ValueError(f"bad report: {err.errors()[0]['loc']} {err.errors()[0]['msg']}") from err
        return [r.receipt() for r in reports]


ROUTES: dict[str, _Route] = {
    "aliyun": _Route(AliyunSmsReport, _OK_ALIYUN, lambda m: {"code": 1, "msg": m}, single=False),
    "aliyun-voice": _Route(VoiceReport, _OK_ALIYUN, lambda m: {"code": 1, "msg": m}, single=False),
    "tencent": _Route(
        TencentSmsReport, {"result": 0, "errmsg": "OK"}, lambda m: {"result": 1, "errmsg": m}, single=False
    ),
    "generic": _Route(GatewayReport, {"code": 0}, lambda m: {"code": 1, "msg": m}, single=True),
}


def app(dsn: str, policy: FallbackPolicy, *, token: str | None = None) -> FastAPI:
    """The receipt endpoint on its own database pool; ``policy`` decides fallbacks for failed deliveries.

    With a ``token``, pushes must carry it as ``?token=…`` (configured into the provider's callback
    URL): a forged "delivered" report would hide a message that never arrived.
    """
    state: dict[str, asyncpg.Pool] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # min_size=0: the endpoint starts (and answers 503) even while the database is away.
        async with open_pool(dsn, min_size=0, max_size=4, timeout=5) as pool:
            state["pool"] = pool
            yield

    api = FastAPI(title="GasGuard delivery receipts", lifespan=lifespan)

    @api.post("/receipts/{provider}")
    async def receive(provider: str, request: Request) -> JSONResponse:
        route = ROUTES.get(provider)
        body = await request.body()
        if route is None:
            return JSONResponse({"code": 1, "msg": f"unknown provider {provider}"}, status_code=404)
        if token is not None and not hmac.compare_digest(request.query_params.get("token", ""), token):
            _LOGGER.warning("%s receipt push without a valid token refused", provider)
            return JSONResponse(route.error("forbidden"), status_code=403)
        try:
            receipts = route.parse(body)
        except ValueError as err:
            _LOGGER.warning("unreadable %s receipt push: %s", provider, err)
            await _dead_letter(state["pool"], provider, str(err), body)
            return JSONResponse(route.error(str(err)[:200]), status_code=400)
        try:
            outcomes = await _apply_all(state["pool"], receipts, policy)
        except _UNREACHABLE as err:
            _LOGGER.warning("receipts not stored, database unreachable: %s", err)
            return JSONResponse(route.error("暂不可用，请重试"), status_code=503)
        _LOGGER.debug("%s receipts: %s", provider, outcomes)
        return JSONResponse(route.ok)

    @api.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return api


async def _apply_all(pool: asyncpg.Pool, receipts: Sequence[Receipt], policy: FallbackPolicy) -> list[str]:
    async with pool.acquire() as conn:
        return [await apply_receipt(conn, r, source="push", policy=policy) for r in receipts]


async def _dead_letter(pool: asyncpg.Pool, provider: str, reason: str, body: bytes) -> None:
    try:
        await pool.execute(
            "INSERT INTO dead_letter (received_at, source, reason, payload) VALUES ($1, $2, $3, $4)",
            utcnow(),
            f"receipts/{provider}",
            reason[:500],
            body,
        )
    except _UNREACHABLE as err:
        _LOGGER.error("dead letter for a %s receipt push lost (database unreachable): %s", provider, err)  # noqa: TRY400


async def serve(settings: AlertingSettings, notify: NotificationSettings | None = None) -> None:
    """Serve the receipt endpoint until cancelled (returns at once when no port is configured)."""
    notify = notify or NotificationSettings()
    if notify.receipts_port is None:
        return
    policy = FallbackPolicy(voice=bool(notify.voice_endpoint), operator_phones=tuple(settings.duty_operator_phones))
    ready = asyncio.Event()
    _LOGGER.info("delivery receipts on %s:%d", notify.receipts_host, notify.receipts_port)
    token = notify.receipts_token.get_secret_value() if notify.receipts_token else None
    await serve_asgi(
        app(settings.dsn(), policy, token=token), host=notify.receipts_host, port=notify.receipts_port, ready=ready
    )
