"""Webhook to the emergency-management system: a signed JSON POST that never carries a phone number.

Headers ``X-GasGuard-Timestamp`` (Unix seconds) and ``X-GasGuard-Signature`` =
``sha256=`` + hex HMAC-SHA256(secret, timestamp + "." + body). The receiver's 2xx answer is the
delivery receipt. Anything shaped like a mobile number in the parameters is redacted before sending.
The endpoint is the job's recipient when that is a URL (as the escalation engine queues it), else
the configured ``GG_WEBHOOK_URL``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping

import httpx

from alerting.providers.base import Channel, Message, Rejected, Sent, Unavailable

_PHONE_IN_TEXT = re.compile(r"(?<!\d)(?:\+?86)?1[3-9]\d{9}(?!\d)")
_PHONE_KEYS = re.compile(r"phone|mobile|tel|手机|电话", re.IGNORECASE)
REDACTED = "[号码已隐去]"


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value for one request body."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def redact(params: Mapping[str, str]) -> dict[str, str]:
    """Parameters without phone numbers: phone-named keys dropped, number-shaped text blanked."""
    return {k: _PHONE_IN_TEXT.sub(REDACTED, v) for k, v in params.items() if not _PHONE_KEYS.search(k)}


class WebhookProvider:
    """Signed JSON POSTs to the emergency-management system."""

    name = "webhook"
    channel: Channel = "webhook"

    def __init__(self, *, url: str | None, secret: str, client: httpx.AsyncClient) -> None:
        self._url = url
        self._secret = secret
        self._client = client

    def target(self, message: Message) -> str:
        """Where the event goes: the job's recipient when it is a URL, else the configured endpoint."""
        if message.recipient.startswith(("http://", "https://")):
            return message.recipient
        if self._url is None:
            raise Rejected("GasGuard.NoWebhookUrl", f"no URL for webhook recipient {message.recipient!r}")
        return self._url

    async def send(self, message: Message) -> Sent:
        """POST the event; a 2xx answer counts as delivered."""
        url = self.target(message)
        body = json.dumps(
            {
                "event_id": message.out_id,
                "incident_id": message.incident_id,
                "template": message.template,
                "params": redact(message.params),
            },
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "X-GasGuard-Timestamp": stamp,
            "X-GasGuard-Signature": webhook_signature(self._secret, stamp, body),
        }
        try:
            response = await self._client.post(url, content=body, headers=headers)
        except httpx.HTTPError as err:
            raise Unavailable(f"{type(err).__name__}: {err}") from err
        if response.status_code >= 500 or response.status_code == 429:
            raise Unavailable(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise Rejected(f"HTTP {response.status_code}", response.text[:200])
        event_id = message.out_id
        try:
            answer = response.json()
            if isinstance(answer, dict) and answer.get("id"):
                event_id = str(answer["id"])
        except ValueError:
            pass
        return Sent(provider_msg_id=event_id, delivered=True)
