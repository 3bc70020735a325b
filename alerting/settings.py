"""Settings of the alerting service."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from gasguard.settings import CommonSettings


class AlertingSettings(CommonSettings):
    """Alerting service settings (``GG_*`` environment variables)."""

    client_id: str = "gasguard-alerting"
    #: Which parts this process runs. ``engine``: the alarm path (MQTT, directory, command timers, the
    #: recorder), alone in its process so nothing else competes for its event loop and memory. ``notify``:
    #: everything driven by the database (outbox sender, delivery receipts, escalation timers, the
    #: device-health sweep). ``all``: both in one process (the demo, small sites).
    role: Literal["all", "engine", "notify"] = "all"
    #: Resend a close command if the device has not acknowledged it within this many seconds.
    ack_timeout_s: float = Field(default=2.0, gt=0)
    #: Longest gap between resends once the device is slow to answer.
    resend_max_interval_s: float = Field(default=60.0, gt=0)
    #: Used only when the valve's model has no close-confirmation timeout in the catalogue.
    default_close_confirm_timeout_s: float = Field(default=30.0, gt=0)
    #: Messages the broker may have in flight to alerting (MQTT 5 Receive Maximum; each is acknowledged once
    #: handled). Small on purpose: in an alarm storm the backlog then waits at the broker, not as tens of
    #: thousands of tasks in alerting's event loop, where it starved every database round trip (measured:
    #: 95 incidents stored in 140 s) and held transactions — and their row locks — open for seconds.
    receive_maximum: int = Field(default=200, ge=1, le=65535)
    #: Close-command timers and the resident's hold are judged against the time up to which alerting has
    #: read everything the broker had for it (a probe message through the broker measures it), so an alarm
    #: storm that backs up alerting's inbound queue raises no false "valve did not close"; at most this
    #: far behind the clock, so a broker outage still escalates.
    max_inbound_lag_s: float = Field(default=30.0, gt=0)
    #: ... but while messages keep arriving (a storm's backlog being worked through, not an outage), up to
    #: this far behind.
    max_backlog_s: float = Field(default=600.0, gt=0)
    #: How long a close command stays worth delivering (NB-IoT devices may sleep for hours).
    command_ttl_s: float = Field(default=6 * 3600.0, gt=0)
    #: The resident's SMS waits for the valve's own "closed" report at most this long, so its text
    #: can say the valve is closed; it goes out at once when the report arrives.
    resident_sms_hold_s: float = Field(default=10.0, ge=0)
    #: Reload the device directory at least this often, besides LISTEN/NOTIFY.
    directory_refresh_s: float = Field(default=300.0, gt=0)
    #: Directory for the journal of records waiting for the database.
    spool_dir: str = "var/alerting-spool"

    #: Template-SMS provider (Aliyun dysmsapi style).
    sms_endpoint: str = "http://127.0.0.1:8086/"
    sms_access_key_id: str = "gasguard-demo"
    sms_access_key_secret: SecretStr = SecretStr("gasguard-demo-secret")
    sms_sign_name: str = "乌审中燃"
    sms_max_attempts: int = Field(default=5, ge=1)
    #: The number residents are told to call from outside (gas company hotline).
    hotline: str = "0477-7212345"
    #: Duty operators texted when a valve does not confirm closing.
    duty_operator_phones: list[str] = Field(default_factory=list)
    #: Escalation contacts by role (operator A is ``duty_operator_phones``).
    backup_operator_phones: list[str] = Field(default_factory=list)
    supervisor_phones: list[str] = Field(default_factory=list)
    emergency_phones: list[str] = Field(default_factory=list)
    #: Emergency-management system's webhook; escalation steps with that role queue a webhook job.
    emergency_webhook_url: str | None = None
    #: Longest wait between looks at the escalation timers (NOTIFY wakes the loop sooner).
    escalation_poll_s: float = Field(default=1.0, gt=0)
    #: How often the device-health sweep (offline, low battery, mains loss) runs.
    health_sweep_s: float = Field(default=60.0, gt=0)
    #: A community or gateway (Modbus controller) whose devices go silent together is one ``offline`` incident
    #: for the scope to the operators, not one incident per device: at least this many of its devices and this
    #: share of them unknown in one sweep. Each device's state is 'unknown' either way.
    offline_scope_min_devices: int = Field(default=10, ge=2)
    offline_scope_share: float = Field(default=0.5, gt=0, le=1)
    #: Active/standby: the engine holding this PostgreSQL advisory lock acts on alarms.
    leader_lock_key: int = 0x6767_616C  # "ggal"
    #: How often a standby tries to take the lock.
    leader_poll_s: float = Field(default=0.5, gt=0)
    #: Alarms a standby saw this recently are replayed when it takes over.
    standby_replay_s: float = Field(default=10.0, ge=0)
    #: The watchdog (`alerting.watchdog`) calls alerting behind when the active engine has not read its inbound
    #: queue up to this many seconds ago, or the oldest record not yet in the database has waited this long; it
    #: then opens one critical ``alerting_behind`` incident and texts the duty operators. A database unreachable
    #: this long gets one SMS straight through the SMS provider instead.
    behind_alarm_s: float = Field(default=30.0, gt=0)
    #: ... and says it has caught up once neither has held for this long.
    behind_recovered_s: float = Field(default=60.0, ge=0)
    #: How often the watchdog judges.
    watchdog_interval_s: float = Field(default=1.0, gt=0)
    #: Prometheus ``/metrics`` port of this alerting process; 0 (the default) serves no endpoint.
    metrics_port: int = Field(default=0, ge=0, le=65_535)
    metrics_host: str = "127.0.0.1"

    @field_validator("duty_operator_phones", "backup_operator_phones", "supervisor_phones", "emergency_phones")
    @classmethod
    def _phones_are_mobile_numbers(cls, value: list[str]) -> list[str]:
        for phone in value:
            if not (len(phone) == 11 and phone.isdigit() and phone[0] == "1"):
                raise ValueError(f"not a mainland mobile number: {phone!r}")
        return value
