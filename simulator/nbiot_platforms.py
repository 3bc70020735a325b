"""Plays CTWing and OneNET: pushes device uplinks to the gateway over HTTP and takes its commands."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from fastapi import FastAPI, Request


def sign_onenet(token: str, nonce: str, msg: str) -> str:
    """OneNET's push signature, computed independently of the gateway: base64(MD5(token + nonce + msg))."""
    return base64.b64encode(hashlib.md5((token + nonce + msg).encode()).digest()).decode()


def encrypt_onenet(aes_key: str, text: str) -> str:
    """OneNET security mode: base64 of AES-128-CBC(PKCS#7) over ``text``, key and IV both the 16-byte key."""
    key = aes_key.encode()
    padder = padding.PKCS7(algorithms.AES.block_size).padder()
    padded = padder.update(text.encode()) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key)).encryptor()
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode()


@dataclass
class ReceivedCommand:
    """A command the gateway handed to a simulated platform."""

    platform: str
    device: str
    body: dict[str, Any]
    #: The id the platform answered with (CTWing ``commandId``, OneNET ``uuid``).
    platform_command_id: str = ""


@dataclass
class PlatformSimulator:
    """Both platforms' command APIs (recording) plus pushers toward the gateway."""

    gateway_url: str
    ctwing_token: str
    onenet_token: str
    #: Set to play a OneNET push instance in security mode (安全模式), with this 16-character key.
    onenet_aes_key: str | None = None
    #: Where `app` is served (set by whoever serves it); the gateway's ``*_api_url`` point here.
    api_url: str = ""
    commands: list[ReceivedCommand] = field(default_factory=list)

    def app(self) -> FastAPI:
        """The command APIs: CTWing ``/ctwing/aep_device_command/command``, OneNET ``/onenet/nbiot/execute``."""
        app = FastAPI()

        @app.post("/ctwing/aep_device_command/command")
        async def ctwing_command(request: Request) -> dict[str, Any]:
            body = await request.json()
            command_id = uuid.uuid4().hex
            self.commands.append(ReceivedCommand("ctwing", str(body.get("deviceId")), body, command_id))
            return {"code": 0, "msg": "ok", "commandId": command_id}

        @app.post("/onenet/nbiot/execute")
        async def onenet_execute(request: Request) -> dict[str, Any]:
            body = await request.json()
            command_id = uuid.uuid4().hex
            self.commands.append(ReceivedCommand("onenet", request.query_params.get("imei", ""), body, command_id))
            return {"errno": 0, "error": "succ", "uuid": command_id}

        return app

    # --- CTWing pushes ------------------------------------------------------------------------------

    async def ctwing_push(
        self, client: httpx.AsyncClient, body: dict[str, Any], *, token: str | None = None
    ) -> httpx.Response:
        """POST a raw CTWing push body."""
        return await client.post(
            self.gateway_url.rstrip("/") + "/ctwing/push", params={"token": token or self.ctwing_token}, json=body
        )

    async def ctwing_profile(
        self,
        client: httpx.AsyncClient,
        *,
        imei: str,
        device_id: str,
        product_id: str,
        service_data: dict[str, Any],
        seq: int = -1,
    ) -> httpx.Response:
        """A profile-mode ``dataReport`` with ``serviceData``."""
        return await self.ctwing_push(
            client,
            {
                "upPacketSN": seq,
                "upDataSN": -1,
                "topic": "v1/up/ad",
                "timestamp": int(time.time() * 1000),
                "tenantId": "2000033629",
                "serviceId": "",
                "protocol": "lwm2m",
                "productId": product_id,
                "payload": {"serviceId": "notification", "serviceData": service_data},
                "messageType": "dataReport",
                "deviceType": "",
                "deviceId": device_id,
                "assocAssetId": "",
                "IMSI": "undefined",
                "IMEI": imei,
            },
        )

    async def ctwing_transparent(
        self, client: httpx.AsyncClient, *, imei: str, device_id: str, product_id: str, frame: bytes
    ) -> httpx.Response:
        """A transparent-mode ``dataReport`` with base64 ``APPdata``."""
        return await self.ctwing_push(
            client,
            {
                "upPacketSN": -1,
                "timestamp": int(time.time() * 1000),
                "productId": product_id,
                "payload": {"APPdata": base64.b64encode(frame).decode()},
                "messageType": "dataReport",
                "deviceId": device_id,
                "IMEI": imei,
            },
        )

    async def ctwing_command_response(
        self,
        client: httpx.AsyncClient,
        *,
        device_id: str,
        product_id: str,
        task_id: str,
        result_code: str,
        result_detail: Any = "",
    ) -> httpx.Response:
        """A ``commandResponse`` push: what became of a command (SENT, DELIVERED, COMPLETED, FAILED, TIMEOUT)."""
        return await self.ctwing_push(
            client,
            {
                "timestamp": int(time.time() * 1000),
                "tenantId": "2000033629",
                "taskId": task_id,
                "result": {"resultDetail": result_detail, "resultCode": result_code},
                "protocol": "lwm2m",
                "productId": product_id,
                "messageType": "commandResponse",
                "deviceId": device_id,
            },
        )

    # --- OneNET pushes ------------------------------------------------------------------------------

    async def onenet_push(
        self, client: httpx.AsyncClient, msg: dict[str, Any] | list[dict[str, Any]], *, forge: bool = False
    ) -> httpx.Response:
        """POST a signed OneNET push (``forge`` signs with a wrong token); encrypted in security mode."""
        nonce = secrets.token_hex(4)
        text = json.dumps(msg, separators=(",", ":"), ensure_ascii=False)
        token = "forged-" + self.onenet_token if forge else self.onenet_token
        if self.onenet_aes_key is not None:
            # Security mode signs the encrypted text, and OneNET Studio names the field ``signature``.
            sealed = encrypt_onenet(self.onenet_aes_key, text)
            body: dict[str, Any] = {"msg": sealed, "nonce": nonce, "signature": sign_onenet(token, nonce, sealed)}
        else:
            body = {"msg": msg, "nonce": nonce, "msg_signature": sign_onenet(token, nonce, text)}
        return await client.post(self.gateway_url.rstrip("/") + "/onenet/push", json=body)

    async def onenet_datapoint(
        self, client: httpx.AsyncClient, *, imei: str, dev_id: int, ds_id: str, value: Any
    ) -> httpx.Response:
        """A type 1 (datapoint) push."""
        msg = {"at": int(time.time() * 1000), "type": 1, "imei": imei, "dev_id": dev_id, "ds_id": ds_id, "value": value}
        return await self.onenet_push(client, msg)

    async def onenet_verify(self, client: httpx.AsyncClient, msg: str, *, forge: bool = False) -> httpx.Response:
        """The URL-verification GET the platform sends when a push URL is configured."""
        nonce = secrets.token_hex(4)
        token = "forged" if forge else self.onenet_token
        return await client.get(
            self.gateway_url.rstrip("/") + "/onenet/push",
            params={"msg": msg, "nonce": nonce, "signature": sign_onenet(token, nonce, msg)},
        )
