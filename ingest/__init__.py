"""Ingest: the telemetry stream into PostgreSQL, acknowledged only once durable; nothing is lost."""

from ingest.service import Ingest, run, tune_gc
from ingest.settings import IngestSettings
from ingest.stats import IngestStats

__all__ = ["Ingest", "IngestSettings", "IngestStats", "run", "tune_gc"]
