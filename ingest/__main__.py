"""``python -m ingest``: run the ingest service with settings from ``GG_*`` environment variables."""

from __future__ import annotations

import functools

from gasguard import runtime
from ingest.service import run, tune_gc
from ingest.settings import IngestSettings


def main() -> None:
    """Build the settings once and run the service until SIGINT/SIGTERM."""
    settings = IngestSettings()
    tune_gc()
    runtime.run(functools.partial(run, settings), log_level=settings.log_level)


if __name__ == "__main__":
    main()
