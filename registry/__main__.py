"""``python -m registry``: serve the registry API on GG_REGISTRY_HOST:GG_REGISTRY_PORT (127.0.0.1:8000)."""

from __future__ import annotations

import functools

from pydantic import ValidationError

from gasguard.runtime import run
from registry.app import serve
from registry.settings import RegistrySettings


def main() -> None:
    """Build the settings once and serve until SIGINT/SIGTERM."""
    try:
        settings = RegistrySettings()
    except ValidationError as err:
        raise SystemExit(f"registry: invalid settings (GG_* environment or .env):\n{err}") from err
    run(functools.partial(serve, settings), log_level=settings.log_level)


if __name__ == "__main__":
    main()
