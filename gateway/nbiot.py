"""NB-IoT platform push endpoints (CTWing ``dataReport``, OneNET ``msg``) as a FastAPI app of the gateway."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from gasguard.clock import utcnow
from gasguard.protocol import (
    AlarmEvent,
    AlarmTelemetry,
    Availability,
    Channel,
    CommandAck,
    CommandResult,
    Power,
    PowerSource,
    Radio,
    Topics,
    ValveEvent,
    ValveTelemetry,
    encode,
)
from gateway.codecs import CodecError, NbReading, decode_app_data, decode_onenet_datapoint, decode_profile
from gateway.downlink import Downlink, list_downlinks
from gateway.identity import DeviceIdentity, IdentityIndex, IdentityKind, list_quarantine, quarantine
from gateway.modbus_poller import Publish, SeqSource, alarm_state_changed

_LOGGER = logging.getLogger(__name__)


def onenet_signature(token: str, nonce: str, msg: str) -> str:
    """OneNET push signature: base64(MD5(token + nonce + msg))."""
    return base64.b64encode(hashlib.md5((token + nonce + msg).encode()).digest()).decode()


class OnenetDecryptError(ValueError):
    """A security-mode OneNET ``msg`` that does not decrypt to text."""


def onenet_decrypt(msg: str, aes_key: str) -> str:
    """Decrypt a OneNET security-mode (安全模式) push ``msg``.

    OneNET generates a 16-character key per push instance; ``msg`` is base64 of AES-128-CBC over the
    JSON text with PKCS#7 padding, the key's bytes serving as both key and IV (OneNET's own receiver
    sample, ``com.onenet.datapush.receiver.Util.decryptMsg``). The signature is computed over ``msg``
    as sent, so it is checked before decrypting.
    """
    key = aes_key.encode()
    try:
        data = base64.b64decode(msg, validate=True)
        decryptor = Cipher(algorithms.AES(key), modes.CBC(key)).decryptor()
        padded = decryptor.update(data) + decryptor.finalize()
        unpadder = padding.PKCS7(algorithms.AES.block_size).unpadder()
        return (unpadder.update(padded) + unpadder.finalize()).decode("utf-8")
    except ValueError as err:  # binascii.Error, bad length or padding, not UTF-8
        raise OnenetDecryptError(f"OneNET msg does not decrypt: {err}") from err


def onenet_msg_text(msg: Any) -> str:
    """The text OneNET signs: ``msg`` itself when a string, else its compact JSON."""
    return msg if isinstance(msg, str) else json.dumps(msg, separators=(",", ":"), ensure_ascii=False)


def raw_top_level_field(text: str, name: str) -> str | None:
    """The exact source text of a top-level JSON object member (what the sender signed), if present."""
    decoder = json.JSONDecoder()
    ws = " \t\r\n"
    i = len(text) - len(text.lstrip(ws))
    if text[i : i + 1] != "{":
        return None
    i += 1
    while True:
        while i < len(text) and text[i] in ws:
            i += 1
        if i >= len(text) or text[i] == "}":
            return None
        key, i = decoder.raw_decode(text, i)
        while i < len(text) and text[i] in ws + ":":
            i += 1
        start = i
        _, i = decoder.raw_decode(text, i)
        if key == name:
            return text[start:i]
        while i < len(text) and text[i] in ws + ",":
            i += 1


class CtwingPush(BaseModel):
    """CTWing AEP push envelope (fields we use; the rest is ignored)."""

    model_config = ConfigDict(extra="ignore")

    messageType: str
    deviceId: str | None = None
    productId: str | None = None
    IMEI: str | None = None
    timestamp: int | None = None
    upPacketSN: int | None = None
    payload: dict[str, Any] | None = None
    eventType: int | None = None
    #: ``commandResponse``: the platform's command id and ``{"resultCode": ..., "resultDetail": ...}``.
    taskId: int | str | None = None
    result: dict[str, Any] | None = None


class OnenetMessage(BaseModel):
    """One OneNET ``msg`` entry (type 1 datapoint, type 2 online/offline)."""

    model_config = ConfigDict(extra="ignore")

    type: int
    at: int | None = None
    imei: str | None = None
    dev_id: int | str | None = None
    ds_id: str | None = None
    value: Any = None
    status: int | None = None


class NbIotIngress:
    """Turns platform pushes into protocol v1 messages for the registry's device, or quarantine."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        identities: Callable[[], IdentityIndex],
        topics: Topics,
        publish: Publish,
        downlink: Downlink,
        seq: SeqSource,
        onenet_token: str,
        ctwing_token: str,
        onenet_aes_key: str | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._pool = pool
        self._identities = identities
        self._topics = topics
        self._publish = publish
        self._downlink = downlink
        self._seq = seq
        self._onenet_token = onenet_token
        self._onenet_aes_key = onenet_aes_key
        self._ctwing_token = ctwing_token
        self._clock = clock
        self._last: dict[str, NbReading] = {}
        self.accepted = 0
        self.refused = 0

    # --- CTWing -----------------------------------------------------------------------------------

    async def ctwing(self, body: bytes, token: str | None, source: str) -> dict[str, Any]:
        """Handle one CTWing push."""
        if not token or not hmac.compare_digest(token, self._ctwing_token):
            self._refuse("ctwing", source, "missing or wrong push token")
        try:
            push = CtwingPush.model_validate_json(body)
        except ValidationError as err:
            await self._dead_letter("ctwing", None, f"malformed CTWing push: {err.errors()[0]['msg']}", body)
            raise HTTPException(400, "malformed push") from err
        device = self._identities().resolve_nbiot("ctwing", imei=push.IMEI, platform_device_id=push.deviceId)
        if device is None:
            kind: IdentityKind = "imei" if push.IMEI else "platform_device_id"
            await quarantine(
                self._pool,
                source="ctwing",
                identity_kind=kind,
                identity=push.IMEI or push.deviceId or "?",
                reason="device not in the registry",
                payload=body,
            )
            return {"quarantined": True}
        device_ts = _ms(push.timestamp) or self._clock()
        if push.messageType == "deviceOnlineOfflineReport":
            status = "online" if push.eventType == 1 else "offline"
            self._availability(device, status, device_ts)
            return {"ok": True}
        if push.messageType == "commandResponse":
            return await self._ctwing_command_response(device, push, device_ts, body)
        if push.messageType != "dataReport":
            return {"ignored": push.messageType}
        payload = push.payload or {}
        try:
            reading = decode_ctwing_payload(device.codec or "", payload)
        except CodecError as err:
            await self._dead_letter("ctwing", device.device_id, str(err), body)
            raise HTTPException(400, str(err)) from err
        seq = push.upPacketSN if push.upPacketSN is not None and push.upPacketSN >= 0 else reading.seq
        await self._uplink(device, reading, device_ts, seq)
        return {"ok": True}

    async def _ctwing_command_response(
        self, device: DeviceIdentity, push: CtwingPush, ts: datetime, body: bytes
    ) -> dict[str, Any]:
        result = push.result or {}
        status = str(result.get("resultCode") or "").upper()
        raw_detail = result.get("resultDetail")
        detail = None if raw_detail in (None, "") else _text(raw_detail)
        if push.taskId is None or not status:
            await self._dead_letter("ctwing", device.device_id, "commandResponse without taskId or resultCode", body)
            raise HTTPException(400, "commandResponse without taskId or resultCode")
        cmd_id = await self._downlink.platform_status("ctwing", device.device_id, str(push.taskId), status, detail)
        if cmd_id is None:
            await self._dead_letter("ctwing", device.device_id, f"commandResponse for unknown task {push.taskId}", body)
            return {"unknown_task": str(push.taskId)}
        outcome = ctwing_command_outcome(cmd_id, status, detail, ts)
        if outcome is not None:
            channel, message = outcome
            self._publish(self._topics.device(device.device_id, channel), message, False)
        _LOGGER.info("CTWing reports command %s for %s: %s", cmd_id, device.device_id, status)
        return {"ok": True, "cmd_id": str(cmd_id)}

    # --- OneNET -----------------------------------------------------------------------------------

    def onenet_verify(self, msg: str, nonce: str, signature: str, source: str) -> str:
        """URL verification: check the signature and echo ``msg``."""
        self._check_onenet({msg}, nonce, signature, source)
        return msg

    async def onenet(self, body: bytes, source: str) -> dict[str, Any]:
        """Handle one OneNET push: ``msg``, ``nonce`` and its signature (``msg_signature``, or ``signature``).

        With an AES key configured (the push instance in security mode) ``msg`` must be the encrypted text.
        """
        try:
            envelope = json.loads(body)
            msg, nonce = envelope["msg"], envelope["nonce"]
            signature = envelope["msg_signature"] if "msg_signature" in envelope else envelope["signature"]
        except (ValueError, KeyError, TypeError):
            self._refuse("onenet", source, "unsigned or malformed push")
        candidates = {onenet_msg_text(msg)}
        if not isinstance(msg, str):
            try:
                raw = raw_top_level_field(body.decode("utf-8", errors="replace"), "msg")
            except ValueError:
                raw = None
            if raw is not None:
                candidates.add(raw)  # the platform signs the text it sent, whatever its spacing
        self._check_onenet(candidates, str(nonce), str(signature), source)
        if self._onenet_aes_key is not None:
            if not isinstance(msg, str):
                await self._dead_letter("onenet", None, "plaintext msg while security mode is configured", body)
                raise HTTPException(400, "expected an encrypted msg")
            try:
                msg = onenet_decrypt(msg, self._onenet_aes_key)
            except OnenetDecryptError as err:
                await self._dead_letter("onenet", None, str(err), body)
                raise HTTPException(400, "msg does not decrypt") from err
        if isinstance(msg, str):
            try:
                msg = json.loads(msg)
            except ValueError as err:
                await self._dead_letter("onenet", None, f"msg is not JSON: {err}", body)
                raise HTTPException(400, "msg is not JSON") from err
        entries = msg if isinstance(msg, list) else [msg]
        results = []
        for raw in entries:
            results.append(await self._onenet_entry(raw, body))
        return {"ok": True, "results": results}

    async def _onenet_entry(self, raw: Any, body: bytes) -> str:
        try:
            entry = OnenetMessage.model_validate(raw)
        except ValidationError as err:
            await self._dead_letter("onenet", None, f"malformed OneNET msg: {err.errors()[0]['msg']}", body)
            return "dead_letter"
        device = self._identities().resolve_nbiot(
            "onenet", imei=entry.imei, platform_device_id=str(entry.dev_id) if entry.dev_id is not None else None
        )
        if device is None:
            await quarantine(
                self._pool,
                source="onenet",
                identity_kind="imei" if entry.imei else "platform_device_id",
                identity=entry.imei or str(entry.dev_id),
                reason="device not in the registry",
                payload=json.dumps(raw, ensure_ascii=False).encode(),
            )
            return "quarantined"
        device_ts = _ms(entry.at) or self._clock()
        if entry.type == 2:
            self._availability(device, "online" if entry.status == 1 else "offline", device_ts)
            return "ok"
        if entry.type != 1 or entry.ds_id is None:
            await self._dead_letter("onenet", device.device_id, f"unsupported OneNET msg type {entry.type}", body)
            return "dead_letter"
        try:
            reading = decode_onenet_datapoint(entry.ds_id, entry.value)
        except CodecError as err:
            await self._dead_letter("onenet", device.device_id, str(err), body)
            return "dead_letter"
        await self._uplink(device, reading, device_ts, None)
        return "ok"

    def _check_onenet(self, msgs: set[str], nonce: str, signature: str, source: str) -> None:
        ok = [
            hmac.compare_digest(onenet_signature(self._onenet_token, nonce, m).encode(), signature.encode())
            for m in msgs
        ]
        if not any(ok):
            self._refuse("onenet", source, "bad signature")

    # --- shared -----------------------------------------------------------------------------------

    def _refuse(self, platform: str, source: str, reason: str) -> Any:
        self.refused += 1
        _LOGGER.warning("refused %s push from %s: %s", platform, source, reason)
        raise HTTPException(403 if "signature" in reason or "token" in reason else 401, reason)

    async def _dead_letter(self, platform: str, device_id: str | None, reason: str, body: bytes) -> None:
        _LOGGER.warning("dead-lettered %s push (%s): %s", platform, device_id, reason)
        await self._pool.execute(
            "INSERT INTO dead_letter (received_at, source, topic, device_id, reason, payload)"
            " VALUES (now(), $1, $2, $3, $4, $5)",
            "gateway",
            f"http:{platform}",
            device_id,
            reason,
            body,
        )

    def _availability(self, device: DeviceIdentity, status: str, ts: datetime) -> None:
        payload = encode(Availability(status="online" if status == "online" else "offline", ts=ts))
        self._publish(self._topics.device(device.device_id, Channel.AVAILABILITY), payload, True)

    async def _uplink(self, device: DeviceIdentity, reading: NbReading, device_ts: datetime, seq: int | None) -> None:
        self.accepted += 1
        previous = self._last.get(device.device_id)
        merged = merge_reading(previous, reading)
        self._last[device.device_id] = merged
        dev_id = device.device_id
        seq_value = seq if seq is not None else self._seq.next()
        if device.kind == "alarm" and merged.state is not None:
            lel = merged.lel if merged.lel is not None else 0.0
            power = (
                Power(source=PowerSource.BATTERY, battery_pct=merged.battery_pct)
                if merged.battery_pct is not None
                else None
            )
            radio = (
                Radio(rsrp=merged.rsrp, snr=merged.snr, csq=merged.csq)
                if merged.rsrp is not None or merged.csq is not None
                else None
            )
            self._publish(
                self._topics.device(dev_id, Channel.TELEMETRY),
                encode(
                    AlarmTelemetry(seq=seq_value, ts=device_ts, lel=lel, state=merged.state, power=power, radio=radio)
                ),
                False,
            )
            if reading.state is not None and alarm_state_changed(previous.state if previous else None, reading.state):
                self._publish(
                    self._topics.device(dev_id, Channel.EVENT),
                    encode(AlarmEvent(seq=seq_value, ts=device_ts, state=reading.state, lel=lel)),
                    False,
                )
        if device.kind != "alarm" and merged.valve is not None:
            self._publish(
                self._topics.device(dev_id, Channel.TELEMETRY),
                encode(ValveTelemetry(seq=seq_value, ts=device_ts, position=merged.valve)),
                False,
            )
        if reading.valve is not None and (previous is None or previous.valve != reading.valve):
            self._publish(
                self._topics.device(dev_id, Channel.EVENT),
                encode(ValveEvent(seq=seq_value, ts=device_ts, position=reading.valve)),
                False,
            )
        self._availability(device, "online", self._clock())
        try:
            await self._downlink.on_uplink(device)
        except (OSError, asyncpg.PostgresError) as err:
            # The reading is already on the bus; queued commands wait for the next uplink (or alerting's resend).
            _LOGGER.error("queued downlinks for %s not handed over (database): %s", device.device_id, err)  # noqa: TRY400


#: CTWing ``resultCode`` values that mean the command did not reach or was not carried out by the device.
CTWING_FAILED = frozenset({"FAILED", "TIMEOUT", "CANCELED", "CANCELLED", "EXPIRED"})


def ctwing_command_outcome(
    cmd_id: uuid.UUID, status: str, detail: str | None, ts: datetime
) -> tuple[Channel, bytes] | None:
    """The protocol message a CTWing command status stands for, if any.

    ``DELIVERED`` (the device took the command) is an acknowledgement; ``COMPLETED`` (it carried it out and
    answered) a successful result without a position, because a valve is closed only when the valve
    itself reports it; ``FAILED``, ``TIMEOUT`` and the like are a refusal, which alerting escalates.
    ``SENT`` and unknown statuses are only recorded.
    """
    if status == "DELIVERED":
        return Channel.COMMAND_ACK, encode(CommandAck(cmd_id=cmd_id, ts=ts, accepted=True))
    if status == "COMPLETED":
        return Channel.COMMAND_RESULT, encode(CommandResult(cmd_id=cmd_id, ts=ts, ok=True, detail=detail))
    if status in CTWING_FAILED:
        reason = f"CTWing 指令状态 {status}" + (f": {detail}" if detail else "")
        return Channel.COMMAND_ACK, encode(CommandAck(cmd_id=cmd_id, ts=ts, accepted=False, reason=reason))
    return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def decode_ctwing_payload(codec: str, payload: dict[str, Any]) -> NbReading:
    """Transparent mode (base64 ``APPdata`` through the model's frame codec) or profile mode (``serviceData``)."""
    if "APPdata" in payload:
        return decode_app_data(codec, str(payload["APPdata"]))
    if "serviceData" in payload:
        return decode_profile(payload["serviceData"])
    raise CodecError("payload has neither APPdata nor serviceData")


def merge_reading(previous: NbReading | None, new: NbReading) -> NbReading:
    """Fill what an uplink is silent about from the last one (OneNET datapoints carry one field each)."""
    if previous is None:
        return new
    return NbReading(
        state=new.state if new.state is not None else previous.state,
        lel=new.lel if new.lel is not None else previous.lel,
        battery_pct=new.battery_pct if new.battery_pct is not None else previous.battery_pct,
        rsrp=new.rsrp if new.rsrp is not None else previous.rsrp,
        snr=new.snr if new.snr is not None else previous.snr,
        csq=new.csq if new.csq is not None else previous.csq,
        valve=new.valve if new.valve is not None else previous.valve,
        seq=new.seq,
    )


def _ms(value: int | None) -> datetime | None:
    if value is None or value <= 0:
        return None
    return datetime.fromtimestamp(value / 1000, tz=UTC)


def create_app(ingress: NbIotIngress, pool: asyncpg.Pool, *, metrics: Callable[[], str] | None = None) -> FastAPI:
    """The gateway's HTTP app: platform push endpoints plus the quarantine and downlink views."""
    app = FastAPI(title="GasGuard gateway", docs_url=None, redoc_url=None)

    def source(request: Request) -> str:
        return request.client.host if request.client else "?"

    @app.post("/ctwing/push")
    async def ctwing_push(request: Request, token: str | None = Query(default=None)) -> JSONResponse:
        return JSONResponse(await ingress.ctwing(await request.body(), token, source(request)))

    @app.get("/onenet/push")
    async def onenet_verify(request: Request, msg: str, nonce: str, signature: str) -> PlainTextResponse:
        return PlainTextResponse(ingress.onenet_verify(msg, nonce, signature, source(request)))

    @app.post("/onenet/push")
    async def onenet_push(request: Request) -> JSONResponse:
        return JSONResponse(await ingress.onenet(await request.body(), source(request)))

    @app.get("/quarantine")
    async def quarantined(limit: int = Query(default=100, ge=1, le=1000), identity: str | None = None) -> JSONResponse:
        return JSONResponse([e.as_json() for e in await list_quarantine(pool, limit=limit, identity=identity)])

    @app.get("/downlinks")
    async def downlinks(device_id: str | None = None, state: str | None = None) -> JSONResponse:
        entries = await list_downlinks(pool, device_id=device_id, state=state)
        return JSONResponse(
            [
                {
                    "cmd_id": str(e.cmd_id),
                    "device_id": e.device_id,
                    "platform": e.platform,
                    "command": e.command,
                    "state": e.state,
                    "queued_at": e.queued_at.isoformat(),
                    "expires_at": e.expires_at.isoformat(),
                    "expected_delivery_at": e.expected_delivery_at.isoformat() if e.expected_delivery_at else None,
                    "delivered_at": e.delivered_at.isoformat() if e.delivered_at else None,
                }
                for e in entries
            ]
        )

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        text = metrics() if metrics is not None else ""
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"accepted": ingress.accepted, "refused": ingress.refused}

    return app
