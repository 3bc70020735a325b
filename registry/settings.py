"""Settings of the registry HTTP API; built once in ``main`` and passed down, never read at import."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from gasguard.settings import CommonSettings


class RegistrySettings(CommonSettings):
    """Registry API settings.

    Registry-only values are read from ``GG_REGISTRY_*`` variables so that a single ``.env`` shared by
    every service of a one-machine install cannot hand the registry another service's port. In code
    they are passed by field name (``RegistrySettings(host=..., port=...)``).
    """

    # Settings configs merge with the parent's: the GG_ prefix and .env still apply.
    model_config = SettingsConfigDict(validate_by_name=True, validate_by_alias=True)

    #: Required: the registry is the window onto the system of record and has nothing to show without it.
    database_url: str
    host: str = Field(default="127.0.0.1", validation_alias=AliasChoices("GG_REGISTRY_HOST"))
    port: int = Field(default=8000, ge=0, le=65535, validation_alias=AliasChoices("GG_REGISTRY_PORT"))
    #: How long /health and every request wait for a database connection before answering 503.
    db_timeout_s: float = Field(default=2.0, gt=0, le=30, validation_alias=AliasChoices("GG_REGISTRY_DB_TIMEOUT_S"))
    db_pool_max: int = Field(default=10, ge=1, le=100, validation_alias=AliasChoices("GG_REGISTRY_DB_POOL_MAX"))
    #: How long a stop waits for in-flight requests before cancelling them.
    shutdown_timeout_s: float = Field(
        default=5.0, gt=0, validation_alias=AliasChoices("GG_REGISTRY_SHUTDOWN_TIMEOUT_S")
    )
    #: How long a login session lasts (people); bearer tokens for machines carry their own expiry.
    session_ttl_s: int = Field(
        default=12 * 3600, ge=60, le=30 * 86400, validation_alias=AliasChoices("GG_REGISTRY_SESSION_TTL_S")
    )
    #: Mark the session cookie ``Secure`` (HTTPS only); on by default, off for plain-HTTP local use.
    cookie_secure: bool = Field(default=True, validation_alias=AliasChoices("GG_REGISTRY_COOKIE_SECURE"))
