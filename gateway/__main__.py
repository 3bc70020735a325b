"""``python -m gateway``: run the gateway with settings from ``GG_*`` environment variables."""

from __future__ import annotations

import functools

from gasguard import runtime
from gateway.service import run
from gateway.settings import GatewaySettings


def main() -> None:
    """Build the settings once and run the service until SIGINT/SIGTERM."""
    settings = GatewaySettings()
    runtime.run(functools.partial(run, settings), log_level=settings.log_level)


if __name__ == "__main__":
    main()
