"""Settings of the simulator service; built once in ``main`` and passed down, never read at import."""

from __future__ import annotations

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import SettingsConfigDict

from gasguard.protocol import is_valid_device_id
from gasguard.settings import CommonSettings
from simulator.fleet import ConnectionMode
from simulator.scenarios import ScenarioName


def _env(name: str) -> AliasChoices:
    return AliasChoices(f"GG_SIM_{name.upper()}")


class SimulatorSettings(CommonSettings):
    """Simulator settings.

    Simulator-only values are read from ``GG_SIM_*`` variables, so a single ``.env`` shared by every
    service of a one-machine install cannot hand the simulator another service's value. In code they
    are passed by field name (``SimulatorSettings(households=100, scenario="burst")``).
    """

    # Settings configs merge with the parent's: the GG_ prefix and .env still apply.
    model_config = SettingsConfigDict(validate_by_name=True, validate_by_alias=True)

    #: Required: the households to simulate come from the registry tables.
    database_url: str
    #: Names the fleet: MQTT client ids and the gateway availability topic ``<root>/v1/gw/<sim_id>/...``.
    sim_id: str = Field(default="sim", validation_alias=_env("id"))
    mode: ConnectionMode = Field(default=ConnectionMode.MULTIPLEXED, validation_alias=_env("mode"))
    #: Simulate only the first N NG households (by id); all of them when unset.
    households: int | None = Field(default=None, ge=1, validation_alias=_env("households"))
    #: Each device reports once per period (spread evenly over it).
    telemetry_period_s: float = Field(default=60.0, gt=0, validation_alias=_env("telemetry_period_s"))
    #: Time a valve takes from ``closing`` to ``closed`` (motorised ball valves take a few seconds).
    valve_close_s: float = Field(default=2.0, ge=0, le=120, validation_alias=_env("valve_close_s"))
    scenario: ScenarioName = Field(default=ScenarioName.LEAK_EVERY, validation_alias=_env("scenario"))
    #: ``leak_every``: seconds between leaks; ``burst``: seconds before the burst starts.
    leak_interval_s: float = Field(default=300.0, gt=0, validation_alias=_env("leak_interval_s"))
    burst_size: int = Field(default=5, ge=1, validation_alias=_env("burst_size"))
    burst_within_s: float = Field(default=10.0, ge=0, validation_alias=_env("burst_within_s"))
    #: Seeds every random choice of the scenario, so a demo replays identically.
    seed: int = Field(default=0, validation_alias=_env("seed"))
    #: Log the fleet's counters this often.
    stats_every_s: float = Field(default=60.0, gt=0, validation_alias=_env("stats_every_s"))

    @field_validator("sim_id")
    @classmethod
    def _sim_id_is_a_topic_level(cls, value: str) -> str:
        if not is_valid_device_id(value):
            raise ValueError("sim_id must be letters, digits, '_', '.' or '-' (it is a topic level)")
        return value
