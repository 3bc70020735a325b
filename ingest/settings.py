"""Settings of the ingest service."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from gasguard.protocol import Topics
from gasguard.settings import CommonSettings


class IngestSettings(CommonSettings):
    """Ingest service settings (``GG_*`` environment variables)."""

    #: Fixed MQTT client id: with a persistent session the broker keeps unacknowledged messages for it
    #: across restarts. Every ingest worker needs its own.
    client_id: str = "gasguard-ingest"
    #: MQTT 5 shared-subscription group; when set, workers subscribe to ``$share/<group>/<root>/#``
    #: and the broker spreads messages over them. Each worker's sequence-gap counters then see only
    #: its share of a device's messages (unless the broker routes by topic, as EMQX can).
    share_group: str | None = None
    #: How many unacknowledged messages the broker may push to us at once (MQTT 5 receive maximum).
    #: Must be well above ``batch_size``: every handler waits for its batch, so this bounds how full a
    #: batch can get. Without it mosquitto sends only 20 at a time.
    receive_maximum: int = Field(default=20_000, ge=1, le=65_535)
    #: A batch is written when it holds this many messages ...
    batch_size: int = Field(default=1000, ge=1)
    #: ... or this long after its first message arrived, whichever comes first.
    batch_max_age_s: float = Field(default=0.05, gt=0)
    #: Batches already waiting when the writer is free are merged into one transaction up to this size.
    write_max_rows: int = Field(default=10_000, ge=1)
    #: Journal for batches the database cannot take; replayed in order when it returns.
    spool_dir: str = "var/ingest-spool"
    #: When the journal holds this much, ingest stops acknowledging (the broker holds the rest).
    spool_max_bytes: int = Field(default=1024 * 1024 * 1024, ge=1)
    spool_segment_bytes: int = Field(default=16 * 1024 * 1024, ge=1)
    #: Reload the device registry at least this often, besides LISTEN/NOTIFY.
    directory_refresh_s: float = Field(default=300.0, gt=0)
    #: Upper bound of the jittered backoff between attempts to reach the database during an outage.
    db_retry_max_s: float = Field(default=10.0, gt=0)
    db_connect_timeout_s: float = Field(default=5.0, gt=0)
    #: A write taking longer than this counts as an outage (the batch is spooled).
    db_command_timeout_s: float = Field(default=30.0, gt=0)
    #: On shutdown, how long to keep writing so that what was received can still be acknowledged.
    shutdown_timeout_s: float = Field(default=5.0, ge=0)
    #: Prometheus ``/metrics`` port; 0 (the default) serves no endpoint. Each worker needs its own.
    metrics_port: int = Field(default=0, ge=0, le=65_535)
    metrics_host: str = "127.0.0.1"

    @field_validator("share_group")
    @classmethod
    def _share_group_is_one_level(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(ch in value for ch in "/+#")):
            raise ValueError("share_group must be a single topic level without wildcards")
        return value

    @model_validator(mode="after")
    def _batches_fit_the_window(self) -> IngestSettings:
        if self.write_max_rows < self.batch_size:
            raise ValueError("write_max_rows must be at least batch_size")
        return self

    def subscription(self) -> str:
        """The topic filter ingest subscribes to."""
        topic = Topics(self.topic_root).everything()
        return topic if self.share_group is None else f"$share/{self.share_group}/{topic}"
