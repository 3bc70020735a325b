"""Settings pieces every service shares; each service builds one settings object in its ``main``."""

from __future__ import annotations

from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_TOPIC_ROOT = "gg"


class MqttEndpoint(BaseModel):
    """Where and how to reach the MQTT broker, parsed from ``mqtt://user:pass@host:port``."""

    model_config = ConfigDict(frozen=True)

    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None
    protocol: Literal["5", "3.1.1"] = "5"

    @classmethod
    def from_url(cls, url: str, *, protocol: Literal["5", "3.1.1"] = "5") -> MqttEndpoint:
        """Parse an ``mqtt://`` URL."""
        parts = urlsplit(url)
        if parts.scheme not in {"mqtt", "tcp"} or not parts.hostname:
            raise ValueError(f"expected mqtt://host:port, got {url!r}")
        return cls(
            host=parts.hostname,
            port=parts.port or 1883,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            protocol=protocol,
        )


class CommonSettings(BaseSettings):
    """Settings common to all services, read from ``GG_*`` environment variables or ``.env``."""

    model_config = SettingsConfigDict(env_prefix="GG_", env_file=".env", env_ignore_empty=True, extra="ignore")

    #: ``mqtt://[user:pass@]host[:port]``; empty means "not configured" (the demo then embeds a broker).
    mqtt_url: str | None = None
    mqtt_protocol: Literal["5", "3.1.1"] = "5"
    #: ``postgresql://user@host:port/db``; empty means "not configured" (the demo then embeds one).
    database_url: str | None = None
    #: First topic level; tests give every test its own so they never cross-talk.
    topic_root: str = DEFAULT_TOPIC_ROOT
    log_level: str = "INFO"

    @field_validator("topic_root")
    @classmethod
    def _topic_root_has_no_wildcards(cls, value: str) -> str:
        if not value or any(ch in value for ch in "+#") or value.startswith("/") or value.endswith("/"):
            raise ValueError("topic_root must be a plain topic prefix without wildcards")
        return value

    def mqtt(self) -> MqttEndpoint:
        """The broker endpoint; raises if none is configured."""
        if not self.mqtt_url:
            raise ValueError("GG_MQTT_URL is not set")
        return MqttEndpoint.from_url(self.mqtt_url, protocol=self.mqtt_protocol)

    def dsn(self) -> str:
        """The database DSN; raises if none is configured."""
        if not self.database_url:
            raise ValueError("GG_DATABASE_URL is not set")
        return self.database_url
