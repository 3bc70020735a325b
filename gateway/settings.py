"""Settings of the gateway service."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from gasguard.settings import CommonSettings


class GatewaySettings(CommonSettings):
    """Gateway settings (``GG_*`` environment variables)."""

    client_id: str = "gasguard-gateway"
    #: Names this gateway's own availability topic (``{root}/v1/gw/{gateway_id}/availability``).
    gateway_id: str = "gw-1"
    #: NB-IoT push endpoints (CTWing, OneNET) listen here.
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8090, ge=0, le=65535)
    #: OneNET push token (signature = base64(MD5(token + nonce + msg))).
    onenet_token: SecretStr = SecretStr("gasguard-onenet-token")
    #: OneNET security mode (安全模式): the 16-character AES key OneNET generated for the push instance.
    #: Unset means plaintext mode.
    onenet_aes_key: SecretStr | None = None
    #: CTWing subscription URLs carry ``?token=``; pushes without it are refused.
    ctwing_push_token: SecretStr = SecretStr("gasguard-ctwing-token")
    #: Platform command APIs that the downlink hands commands to.
    ctwing_api_url: str = "http://127.0.0.1:8091/ctwing/"
    onenet_api_url: str = "http://127.0.0.1:8091/onenet/"
    #: A queued PSM command lives at most this long (the command's own expiry wins if sooner).
    downlink_ttl_s: float = Field(default=6 * 3600.0, gt=0)
    downlink_sweep_s: float = Field(default=5.0, gt=0)
    #: Reload devices and controllers from the registry this often.
    identity_refresh_s: float = Field(default=60.0, gt=0)
    #: Modbus: request timeout, reconnect backoff (pymodbus doubles the delay up to the cap).
    modbus_timeout_s: float = Field(default=1.0, gt=0)
    modbus_reconnect_delay_s: float = Field(default=0.5, gt=0)
    modbus_reconnect_delay_max_s: float = Field(default=30.0, gt=0)
    #: Telemetry for every Modbus channel at most this often; state changes go out at once.
    modbus_telemetry_interval_s: float = Field(default=60.0, gt=0)
    #: After a valve write, read back until the output reports closed or this many seconds pass.
    modbus_confirm_timeout_s: float = Field(default=5.0, gt=0)

    @field_validator("onenet_aes_key")
    @classmethod
    def _aes_key_is_16_characters(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) != 16:
            raise ValueError("onenet_aes_key must be the 16-character key OneNET shows for the push instance")
        return value
