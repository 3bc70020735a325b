"""The one interface every notification provider implements, its errors and its delivery receipts.

Exceptions::

    DeliveryError
     ├── Rejected      the provider answered and refused (bad number, template, flow limit): do not retry as is
     │    └── Limited  the refusal is a per-number flow limit: fall back to another channel
     └── Unavailable   no usable answer (network, timeout, 5xx, throttling): retry later
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

Channel = Literal["sms", "voice", "webhook"]

MAINLAND_MOBILE = re.compile(r"^1[3-9][0-9]{9}$")


class DeliveryError(Exception):
    """Sending a notification failed."""


class Rejected(DeliveryError):
    """The provider refused the message; retrying the same request will not help."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class Limited(Rejected):
    """The provider refused because of a per-number flow limit."""


class Unavailable(DeliveryError):
    """The provider could not be reached or answered with a transient error."""


@dataclass(frozen=True, slots=True)
class Message:
    """One notification to one recipient: a phone number, or an endpoint name for webhooks."""

    channel: Channel
    recipient: str
    template: str
    params: Mapping[str, str]
    out_id: str
    incident_id: int | None = None
    #: The rendered text (signature included) for providers that take content instead of a template.
    text: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Sent:
    """The provider accepted the message; ``delivered`` only when the answer itself is the receipt."""

    provider_msg_id: str
    delivered: bool = False


@dataclass(frozen=True, slots=True)
class Receipt:
    """A delivery report: pushed by the provider or fetched by polling."""

    provider: str
    provider_msg_id: str
    delivered: bool
    code: str
    out_id: str | None = None
    reported_at: datetime | None = None


@runtime_checkable
class Provider(Protocol):
    """Sends one message on one channel and returns the provider's message id.

    Raises `Rejected` (or `Limited`) or `Unavailable`. Example::

        sent = await provider.send(Message(channel="sms", recipient="13800001234",
                                           template="SMS_GG_ALARM_RESIDENT", params={...}, out_id="gg-17-1"))
    """

    name: str
    channel: Channel

    async def send(self, message: Message) -> Sent:
        """Send the message."""
        ...


@runtime_checkable
class ReceiptSource(Protocol):
    """A provider whose delivery reports can be polled (``QuerySendDetails`` style)."""

    name: str

    async def query(self, *, recipient: str, provider_msg_id: str, sent_at: datetime) -> Receipt | None:
        """The final report for one message, or None while it is still pending."""
        ...


def has_phone_number(values: Sequence[str]) -> bool:
    """Whether any value contains something shaped like a mainland mobile number."""
    return any(re.search(r"(?<!\d)1[3-9]\d{9}(?!\d)", v) for v in values)
