"""SMS providers: the names earlier code imports, now kept in `alerting.providers`.

``SmsProvider`` is the general `alerting.providers.base.Provider` interface (channel ``sms``); the
Aliyun adapter lives in `alerting.providers.aliyun`, Tencent Cloud in `alerting.providers.tencent`
and the generic gateway in `alerting.providers.generic_gateway`.
"""

from __future__ import annotations

from alerting.providers.aliyun import AliyunSmsProvider, aliyun_signature, percent_encode
from alerting.providers.base import DeliveryError, Limited, Message, Provider, Rejected, Sent, Unavailable
from alerting.providers.generic_gateway import GenericGatewayProvider
from alerting.providers.tencent import TencentSmsProvider

SmsError = DeliveryError
SmsRejected = Rejected
SmsLimited = Limited
SmsUnavailable = Unavailable
SmsProvider = Provider

__all__ = [
    "AliyunSmsProvider",
    "GenericGatewayProvider",
    "Message",
    "Sent",
    "SmsError",
    "SmsLimited",
    "SmsProvider",
    "SmsRejected",
    "SmsUnavailable",
    "TencentSmsProvider",
    "aliyun_signature",
    "percent_encode",
]
